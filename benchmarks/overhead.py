r"""What a slot-step costs inside a search against the same step alone.

    python benchmarks/overhead.py [--dims=12,20] [--repeats=3]

For each d, the search `sweep run --config=experiments/paper.py --config.dims='(d,)'
--config.restarts=1 --config.local_sweep=0` runs in this process twice, each in a fresh
workdir: the first traces and compiles its programs, and the second is timed, each part of
its loop apart: admitting probes, training rounds, recording results and checkpoints. (A
program's first call also traces and lowers it, about a quarter of a second, which at d = 4
is as long as its training.) Then the step of
every padded shape the search trained is timed alone, in the same process: one slot, a jitted
loop of the trainer's own step, the best of --repeats runs. The search's slot-steps at each
shape times that shape's step time is what the search would cost at the speed of the step;
the ratio of the training wall to it is the overhead (target <= 1.25).
"""

import collections
import pathlib
import runpy
import tempfile
import time

import jax
from absl import app, flags, logging

import step_loop
from sweep import compilation, driver as driver_lib
from sweep.config import settings_of
from sweep.problems import BucketShape, Probe
from sweep.store import Store

_DIMS = flags.DEFINE_list("dims", ["12", "20"], "one search per d")
_REPEATS = flags.DEFINE_integer("repeats", 3, "timed runs of each step alone (the best counts)")
PAPER = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "paper.py"
_STEPS = flags.DEFINE_integer("steps", 500, "steps per timed run of a step alone")


def search_config(d: int):
  config = runpy.run_path(str(PAPER))["get_config"]()
  config.dims, config.restarts, config.local_sweep = (d,), 1, 0
  return config


class Timed:
  """Wall seconds spent in named methods of objects, summed by name."""

  def __init__(self):
    self.seconds = collections.Counter()

  def wrap(self, owner, name: str, label: str) -> None:
    method = getattr(owner, name)

    def timed(*args, **kwargs):
      start = time.perf_counter()
      try:
        return method(*args, **kwargs)
      finally:
        self.seconds[label] += time.perf_counter() - start
    setattr(owner, name, timed)


def run_search(d: int, workdir: pathlib.Path):
  """(wall seconds by part, slot-steps by padded shape, a configuration trained at each
  padded shape, the d's critical-n row)."""
  store = Store(str(workdir))
  driver = driver_lib.Driver(search_config(d), store)
  timed = Timed()
  timed.wrap(driver.pool, "admit", "admit")
  timed.wrap(driver.pool, "train_round", "train rounds")
  timed.wrap(driver, "_record", "results")
  timed.wrap(driver, "checkpoint", "checkpoints")
  compiled_before = compilation.count().seconds
  start = time.perf_counter()
  driver.run(progress=lambda _: None)
  seconds = dict(timed.seconds, total=time.perf_counter() - start,
                 compiling=compilation.count().seconds - compiled_before)
  seconds["training"] = seconds["train rounds"] - seconds["compiling"]  # 0 compiled, warm
  steps, probes = collections.Counter(), {}
  for record in driver.ledger.records:
    padded = tuple(record["padded_shape"])
    steps[padded] += record["stop_step"]
    probes[padded] = driver.target.configuration(Probe(d, record["n"], record["seed"]))
  row = next(r for r in store.read_critical_n() if r["d"] == d)
  store.close()
  return seconds, steps, probes, row


def step_alone_ms(settings, padded: tuple[int, int, int], config) -> float:
  """Milliseconds per step of `config` in one slot of `padded` shape, timed alone (best of
  --repeats)."""
  queries, documents, dims = padded
  shape = BucketShape(slots=1, queries=queries, documents=documents, dims=dims,
                      width=config.k)
  run, _ = step_loop.compiled_steps(settings, config, shape, _STEPS.value)
  best = float("inf")
  for _ in range(_REPEATS.value):
    start = time.perf_counter()
    run()
    best = min(best, time.perf_counter() - start)
  return 1e3 * best / _STEPS.value


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  compilation.enable_cache()
  compilation.count()
  print(f"{jax.devices()[0].device_kind}, {jax.device_count()} device(s)")
  for d in map(int, _DIMS.value):
    with tempfile.TemporaryDirectory() as tmp:
      run_search(d, pathlib.Path(tmp) / "first")
      seconds, steps, probes, row = run_search(d, pathlib.Path(tmp) / "timed")
    settings = settings_of(search_config(d))
    at_step_speed = 0.0
    for padded, count in sorted(steps.items()):
      ms = step_alone_ms(settings, padded, probes[padded])
      at_step_speed += count * ms / 1e3
      print(f"  d={d} shape {'x'.join(map(str, padded))}: {count:,} slot-steps, "
            f"{ms:.3f} ms per step alone")
    parts = ", ".join(f"{name} {s:.2f} s" for name, s in sorted(seconds.items()))
    print(f"d={d}: critical n {row['critical_n']}, {sum(steps.values()):,} slot-steps | {parts}")
    print(f"d={d}: training {seconds['training']:.2f} s against {at_step_speed:.2f} s at the "
          f"speed of the step alone: ratio {seconds['training'] / at_step_speed:.2f} "
          f"(whole loop {(seconds['total'] - seconds['compiling']) / at_step_speed:.2f})",
          flush=True)


if __name__ == "__main__":
  app.run(main)
