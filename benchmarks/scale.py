"""One slot at paper scale: the loss as one block against automatic blocks, and the plan.

    python benchmarks/scale.py [--dims=8,16,24,32] [--steps=50] [--repeats=5] [--device=cpu]
                               [--loss=code|paper|sigmoid|hinge]

For each d at the paper's critical n (Table 6), one slot of its padded shape trains a fixed
number of steps with the trainer's own step, once with the loss over the whole q x n score
matrix in one block (TrainSettings.query_tile = the shape's queries) and once with the
automatic blocks a sweep uses (query_tile = 0); the two are timed interleaved in one
process. Where the automatic tile (its rows are printed) already holds every query, the two
are the same program. It prints steps/s of each, the passes over the score matrix of an
automatic step (score_passes: reads and writes by XLA's kernels, from the compiled
program), the automatic blocks' achieved GFLOP/s (XLA's FLOPs of a step), the memory one
slot of the real training chunk took (peak device memory where JAX reports it, else the peak
of the C heap in a fresh process), and the plan's prediction for it (sweep/plan.py: memory
per slot from XLA, roofline step time on --device).

The benchmark measures whatever `sweep` it imports: with PYTHONPATH set to a checkout of an
earlier commit it measures that commit's step, which is how docs/speed.md compares the step
before and after a change, in one run on one machine.
"""

import ctypes
import dataclasses
import functools
import json
import os
import re
import subprocess
import sys
import threading
import time

import jax
import numpy as np
from absl import app, flags

import step_loop
from sweep import objective, paper, plan, sizing
from sweep import trainer

_DIMS = flags.DEFINE_list("dims", ["8", "16", "24", "32"], "dimensions (45 needs an accelerator)")
_STEPS = flags.DEFINE_integer("steps", 50, "training steps per timed run")
_REPEATS = flags.DEFINE_integer("repeats", 5, "timed runs of each loss (the best counts)")
_DEVICE = flags.DEFINE_string("device", "cpu", "device of the plan's roofline (plan.DEVICES)")
_MEASURE = flags.DEFINE_integer("measure_memory_of", 0, "internal: measure one d and exit")
_LOSS = flags.DEFINE_enum("loss", "code", ["code", "paper", "sigmoid", "hinge"],
                          "the loss of the timed steps")


def slot_of(d: int):
  config = trainer.Configuration(d=d, n=paper.critical_n(d))
  return config, sizing.shape_class(config)


_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.-]+) = (\w+\[[\d,]*\])\S* ([\w-]+)\((.*?)\)")
_FREE = {"bitcast", "get-tuple-element", "tuple", "parameter", "constant"}


def score_passes(hlo: str, rows: int, documents: int) -> tuple[int, int]:
  """(reads, writes) of score-sized arrays in one step of an optimized program: arrays
  whose shape holds a block's rows and the documents (a [rows, n] block, or the hinge loss's
  [rows, width, n]), read as operands or written as results by the program's kernels (a
  fusion counts once, not its fused ops; a block loop's body counts once, as each pass over
  every block is one pass over the score matrix)."""
  fused = set(re.findall(r"calls=%([\w.-]+)", hlo))
  shapes, kernels, computation = {}, [], None
  for line in hlo.splitlines():
    header = re.match(r"^(?:ENTRY )?%([\w.-]+) .*\{$", line)
    if header:
      computation = header.group(1)
      continue
    match = _INSTRUCTION.match(line)
    if not match:
      continue
    name, shape, opcode, operands = match.groups()
    dims = tuple(int(x) for x in shape[shape.index("[") + 1:-1].split(",") if x)
    shapes[name] = dims
    if computation not in fused and opcode not in _FREE:
      kernels.append((dims, re.findall(r"%([\w.-]+)", operands)))

  def scores(dims):
    return rows in dims and documents in dims and dims.index(rows) < dims.index(documents)
  reads = sum(scores(shapes.get(operand, ())) for _, operands in kernels for operand in operands)
  writes = sum(scores(dims) for dims, _ in kernels)
  return reads, writes


def timed_steps(settings, config, shape):
  """(a run of --steps trainer steps of one slot, ready to time; its score passes)."""
  run, compiled = step_loop.compiled_steps(settings, config, shape, _STEPS.value)
  rows = objective.query_tile(shape.queries, shape.documents * (
      config.k if settings.loss == "hinge" else 1), settings.query_tile)
  return run, score_passes(compiled.as_text(), rows, shape.documents)


class _MallInfo2(ctypes.Structure):
  _fields_ = [(name, ctypes.c_size_t) for name in (
      "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
      "fordblks", "keepcost")]


@functools.cache
def _mallinfo2():
  libc = ctypes.CDLL("libc.so.6")
  libc.mallinfo2.restype = _MallInfo2
  return libc.mallinfo2


def heap_bytes() -> int:
  """Bytes the C heap has handed out and not taken back (glibc), else the resident set.

  XLA's CPU buffers come from the heap, so this sees them come and go; the resident set
  also holds one-time allocations and pages that malloc keeps after a free.
  """
  try:
    info = _mallinfo2()()
    return info.uordblks + info.hblkhd
  except (OSError, AttributeError):
    with open("/proc/self/statm") as f:
      return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def chunk_runner(settings, config, shape):
  """A compiled training chunk of one slot and a call that runs it on freshly placed inputs."""
  slots, state = trainer.pack([config], shape), trainer.init_state(settings, shape, [config])
  chunk = trainer.train_chunk.lower(settings, slots, state, True).compile()
  return lambda: jax.block_until_ready(chunk(trainer.place(slots), trainer.place(state), True))


def measure_memory(d: int) -> int:
  """Peak memory of one slot's real training chunk (its inputs placed, its temporaries,
  its outputs), in this fresh process.

  A tiny chunk runs first, so that what the runtime sets up once (thread pools, kernel
  state) is not counted as the slot's.
  """
  settings = trainer.TrainSettings(max_steps=_STEPS.value, eval_every=_STEPS.value, chunk_evals=1)
  tiny = trainer.Configuration(d=2, n=4)
  chunk_runner(settings, tiny, trainer.BucketShape.fitting([tiny]))()
  run = chunk_runner(settings, *slot_of(d))
  device = jax.local_devices()[0]
  if device.memory_stats():
    before = device.memory_stats()["bytes_in_use"]
    run()
    return device.memory_stats()["peak_bytes_in_use"] - before
  peak, done = [heap_bytes()], threading.Event()
  before = peak[0]

  def sample():
    while not done.is_set():
      peak[0] = max(peak[0], heap_bytes())
      time.sleep(0.0002)

  sampler = threading.Thread(target=sample)
  sampler.start()
  run()
  done.set()
  sampler.join()
  return peak[0] - before


def measured_in_child(d: int) -> int:
  command = [sys.executable, __file__, f"--measure_memory_of={d}", f"--steps={_STEPS.value}"]
  done = subprocess.run(command, capture_output=True, text=True, check=True)
  return json.loads(done.stdout.strip().splitlines()[-1])["bytes"]


def main(argv):
  del argv
  if _MEASURE.value:
    print(json.dumps({"bytes": measure_memory(_MEASURE.value)}))
    return
  device = plan.device_named(_DEVICE.value)
  settings = trainer.TrainSettings(max_steps=_STEPS.value, eval_every=_STEPS.value, chunk_evals=1,
                                   loss=_LOSS.value)
  print(f"one slot, loss {_LOSS.value}, {_STEPS.value} steps per run, best of {_REPEATS.value}, "
        f"on {jax.devices()[0].device_kind}; plan roofline on {device.name}; passes: reads + "
        f"writes of the score matrix per automatic step")
  print(f"{'d':>3} {'n':>4} {'shape q x n x d':>18} {'auto rows':>9} {'1blk st/s':>9} "
        f"{'auto st/s':>9} {'ms/step':>8} {'passes':>7} "
        f"{'speed-up':>8} {'GFLOP/s':>8} {'measured MiB':>12} {'plan MiB':>9} {'plan/meas':>9} "
        f"{'plan ms/step':>12}")
  for d in map(int, _DIMS.value):
    config, shape = slot_of(d)
    one_block = dataclasses.replace(settings, query_tile=shape.queries)
    compiled = {name: timed_steps(tiled, config, shape)
                for name, tiled in (("one block", one_block), ("automatic", settings))}
    runs = {name: run for name, (run, _) in compiled.items()}
    reads, writes = compiled["automatic"][1]
    best = {name: np.inf for name in runs}
    for _ in range(_REPEATS.value):
      for name, run in runs.items():  # interleaved: both see the same machine load
        start = time.perf_counter()
        run()
        best[name] = min(best[name], time.perf_counter() - start)
    rate = {name: _STEPS.value / seconds for name, seconds in best.items()}
    cost = plan.shape_cost(settings, shape, plan.device_named("cpu") if jax.default_backend() == "cpu"
                           else device)
    predicted = plan.shape_cost(settings, shape, device)
    measured = measured_in_child(d)
    print(f"{d:>3} {config.n:>4} {f'{shape.queries}x{shape.documents}x{shape.dims}':>18} "
          f"{objective.query_tile(shape.queries, shape.documents):>9} "
          f"{rate['one block']:>9.1f} {rate['automatic']:>9.1f} "
          f"{1e3 / rate['automatic']:>8.3f} {f'{reads}r+{writes}w':>7} "
          f"{rate['automatic'] / rate['one block']:>7.2f}x "
          f"{cost.step_flops * rate['automatic'] / 1e9:>8.1f} {measured / 2**20:>12.1f} "
          f"{cost.slot_bytes / 2**20:>9.1f} {cost.slot_bytes / measured:>9.2f} "
          f"{plan.step_seconds(predicted, device, settings.matmul_precision) * 1e3:>12.3f}",
          flush=True)


if __name__ == "__main__":
  app.run(main)
