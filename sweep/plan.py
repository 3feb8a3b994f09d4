"""What a sweep will cost before it runs: compile its programs, never train.

For each d the search is replayed with the real search module on an assumed boundary (the
paper's cubic, where each search also starts), which gives its probes, their padded shapes
and its rounds. The programs of each search's start shape (its probes lie around it) are
compiled on this machine, with the query tile the named device would pick: XLA's memory
analysis of the training chunk gives the memory per slot, its cost analysis of one untiled
step the FLOPs and bytes a step moves. A roofline on the named device turns those into a
step time, and the steps-per-probe model (below) into the wall time of the whole sweep.

Steps per probe: a success stops after SUCCESS_STEPS, a failure after FAILURE_STEPS,
rounded up to whole evaluation blocks; `calibrate` replaces them by the mean stop_step of
each outcome in a finished workdir's results (per d where it has that d). Wall time: the
larger of (a) all slot-steps spread over every chip and (b) the longest search's own chain
of rounds, each as long as its slowest probe, a step never shorter than the device's
launch floor.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from sweep import hardware, memory, objective, problems, scheduler, search, sizing, targets
from sweep import trainer
from sweep.config import settings_of, validate_config

SUCCESS_STEPS = 2_000
FAILURE_STEPS = 5_000
_GIGA, _TERA = 1e9, 1e12
Device = hardware.Device
DEVICE_NAMES = (*hardware.DEVICES, "cpu")


def device_named(name: str) -> Device:
  """A hardware.DEVICES entry or "cpu" (measured here), with an optional chip count:
  "tpu-v5e-8". A TPU's count must be one of its slices (its smallest by default)."""
  base, chips = name, None
  head, _, tail = name.rpartition("-")
  if head and tail.isdigit():
    base, chips = head, int(tail)
  if base not in DEVICE_NAMES or (chips is not None and chips < 1):
    raise ValueError(f"device={name!r} is not allowed: choose one of {DEVICE_NAMES}, "
                     f"optionally with a chip count (tpu-v5e-8)")
  device = measured_cpu() if base == "cpu" else hardware.DEVICES[base]
  if device.tpu_generation:
    device = dataclasses.replace(device, chips=chips or hardware.slice_chips(device)[0])
    hardware.topology_name(device)  # a ValueError for a chip count no slice has
    return device
  return dataclasses.replace(device, chips=chips or 1)


def _seconds(fn, repeats: int = 5) -> float:
  jax.block_until_ready(fn())
  best = math.inf
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - start)
  return best


@functools.cache
def measured_cpu() -> Device:
  """This machine: a float32 matmul's FLOP/s, a large reduction's bytes/s, and the time of
  a tiny on-device loop step as the launch floor."""
  a = jnp.ones((1024, 1024), jnp.float32)
  matmul = jax.jit(lambda a: jnp.matmul(a, a, precision=jax.lax.Precision.HIGHEST))
  flops = 2 * 1024**3 / _seconds(lambda: matmul(a))
  big = jnp.ones((64 * 2**20 // 4,), jnp.float32)
  bandwidth = big.nbytes / _seconds(jax.jit(lambda: big.sum()))
  steps = 1000
  loop = jax.jit(lambda x: jax.lax.fori_loop(0, steps, lambda i, x: x * 0.5 + 1.0, x))
  floor = _seconds(lambda: loop(jnp.ones(8))) / steps
  host_memory = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
  return Device("cpu", {name: flops for name in objective.PRECISIONS}, bandwidth, host_memory,
                floor, "cpu")


# ---------------------------------------------------------------------------------------
# The searches, replayed on an assumed boundary.
# ---------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Replay:
  """One search replayed: its rounds of probed n (each point x restarts) and outcomes."""
  d: int
  boundary: int
  rounds: tuple[tuple[tuple[int, bool], ...], ...]


def replay(config, d: int, spec: search.SearchSpec) -> Replay:
  """Rounds of `probes_per_search` points until the search is done; n succeeds iff it is at
  most the boundary, assumed to be the start n (the paper's cubic for k = 2)."""
  state, rounds = search.new_search(spec), []
  while points := search.propose(state, set(), config.probes_per_search):
    outcomes = tuple((n, n <= spec.start_n) for n in points)
    for n, ok in outcomes:
      state = search.record(state, n, ok)
    rounds.append(outcomes)
  return Replay(d, spec.start_n, tuple(rounds))


# ---------------------------------------------------------------------------------------
# Compiled costs of one shape.
# ---------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ShapeCost:
  shape: trainer.BucketShape
  slot_bytes: int   # the training chunk's memory per slot (arguments, outputs, temporaries)
  step_flops: float  # one untiled training step of one slot
  step_bytes: float  # bytes it reads and writes


# Query counts at which one step is compiled: every term of a step's cost is linear in its
# queries (scores, softmax, the query updates) or independent of them (the documents').
_COST_QUERIES = (32768, 65536)


def _step_cost(settings: trainer.TrainSettings, shape: trainer.BucketShape,
               devices: tuple | None) -> tuple[float, float]:
  """FLOPs and bytes of one step of `shape`.

  XLA's cost analysis counts a loop's body once, not per block, so the step is compiled
  untiled; a large shape at two small query counts, extended along that line (an untiled
  paper-scale step would take the compiler minutes).
  """
  mesh = None if devices is None else trainer.slot_mesh(devices[:1])

  def cost(queries: int) -> np.ndarray:
    sized = dataclasses.replace(shape, queries=queries)
    untiled = dataclasses.replace(settings, query_tile=queries)
    compiled = jax.jit(trainer.train_step, static_argnums=0).lower(
        untiled, *memory.abstract_bucket(untiled, sized, mesh)).compile()
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    return np.array([analysis.get("flops", 0.0), analysis.get("bytes accessed", 0.0)])

  small, large = _COST_QUERIES
  if shape.queries <= large:
    return tuple(map(float, cost(shape.queries)))
  at_small, at_large = cost(small), cost(large)
  return tuple(map(float, at_small + (at_large - at_small) * (shape.queries - small) / (large - small)))


def shape_cost(settings: trainer.TrainSettings, shape: trainer.BucketShape, device: Device,
               devices: tuple | None = None) -> ShapeCost:
  """Memory per slot and step costs of `shape`, compiled for `devices` (a TPU slice's chips;
  default this process's), with the query tile the device would pick."""
  tile = objective.query_tile(shape.queries, shape.documents, settings.query_tile,
                              objective.auto_tile_bytes(device.tile_backend))
  settings = dataclasses.replace(settings, query_tile=tile)
  return ShapeCost(shape, memory.measured_slot_bytes(settings, shape, devices),
                   *_step_cost(settings, shape, devices))


def step_seconds(cost: ShapeCost, device: Device, precision: str) -> float:
  """Roofline time of one slot-step: compute- or bandwidth-bound, whichever is slower."""
  return max(cost.step_flops / device.flops[precision], cost.step_bytes / device.bandwidth)


def compile_target(device: Device) -> tuple[str, tuple | None]:
  """("tpu", the slice's chips) where a TPU is planned for and libtpu can compile for it;
  else ("cpu", None): this process's XLA backend stands in for the device."""
  if device.tpu_generation and hardware.libtpu_installed():
    return "tpu", hardware.tpu_devices(device)
  return "cpu", None


# ---------------------------------------------------------------------------------------
# The plan.
# ---------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class StepModel:
  """Steps a probe trains, by outcome; per d where a calibration has that d."""
  success: float = SUCCESS_STEPS
  failure: float = FAILURE_STEPS
  per_d: dict = dataclasses.field(default_factory=dict)  # d -> (success, failure)
  source: str = "default"

  def steps(self, d: int, success: bool, eval_every: int) -> int:
    steps = self.per_d.get(d, (self.success, self.failure))[0 if success else 1]
    return -(-int(math.ceil(steps)) // eval_every) * eval_every


def calibrate(records, source: str) -> StepModel:
  """Mean stop_step of successes and failures in a finished sweep's results."""
  trained = [r for r in records if r.get("stop_step")]
  if not trained:
    raise ValueError(f"{source} has no trained results to calibrate from")
  def mean(rows, success, default):
    steps = [r["stop_step"] for r in rows if r["success"] == success]
    return float(np.mean(steps)) if steps else default
  success, failure = mean(trained, True, SUCCESS_STEPS), mean(trained, False, FAILURE_STEPS)
  per_d = {d: (mean(rows, True, success), mean(rows, False, failure))
           for d in sorted({r["d"] for r in trained})
           for rows in [[r for r in trained if r["d"] == d]]}
  return StepModel(success, failure, per_d, f"{source} ({len(trained)} results)")


def boundary_check(sweep: targets.CriticalN, settings: trainer.TrainSettings, d: int,
                   start_cost: ShapeCost, device: Device, devices: tuple | None) -> dict | None:
  """Where d's expected boundary (the search's start n before any memory cap) cannot be
  trained, what stops it: one slot of its shape, one slot per chip, beyond the chip's memory,
  or beyond memory_budget_mb. None where it fits."""
  config = sweep.config
  boundary = sweep.start_n(d)
  shape = sizing.shape_class(sweep.configuration(problems.Probe(d, boundary, config.seed)))
  budget = config.memory_budget_mb * 2**20
  limit = min(device.memory, budget)
  # Its inputs alone may not fit (exact, no compile); else the compiled program decides.
  needed = memory.argument_bytes(settings, shape)
  at_least = needed > limit
  if not at_least:
    needed = (start_cost if shape == start_cost.shape else
              shape_cost(settings, shape, device, devices)).slot_bytes
  if needed <= limit:
    return None
  where = (f"the {device.memory / 2**30:.2f} GiB of one {device.name} chip"
           if needed > device.memory else f"memory_budget_mb={config.memory_budget_mb:g}")
  return dict(boundary_n=boundary, shape=f"{shape.queries}x{shape.documents}x{shape.dims}",
              bytes_needed=needed, chip_bytes=device.memory, budget_bytes=budget,
              reason=f"d={d}: the expected boundary n={boundary} (shape "
                     f"{shape.queries}x{shape.documents}x{shape.dims}) needs "
                     f"{'at least ' if at_least else ''}{needed / 2**30:.2f} GiB "
                     f"({needed:,} bytes) for one slot, more than {where}; this d can only "
                     f"give a lower bound")


def plan_sweep(config, device: Device, steps: StepModel = StepModel(), workers: int = 2) -> dict:
  """Every d's probes, shapes, memory, FLOPs, slots that fit and time; the sweep's wall time.

  Programs are compiled for the device itself where that can be done here (a TPU, with
  libtpu), else by this process's XLA backend (`compiler` says which).
  """
  validate_config(config)
  if config.qrels:
    raise ValueError("config.qrels is set: sweep plan covers critical-n sweeps")
  settings = settings_of(config)
  compiler, devices = compile_target(device)
  if devices:  # what the TPU compiler will let a program use, as a VM reports it
    device = dataclasses.replace(device, memory=hardware.chip_memory_bytes(devices[0]))
  sweep = targets.CriticalN(config)
  replays = [replay(config, int(key.removeprefix("d=")), spec) for key, spec in sweep.specs().items()]
  shape_of = lambda d, n: sizing.shape_class(sweep.configuration(problems.Probe(d, n, config.seed)))
  # Each search's probes lie around its start n, mostly in its shape; compiling only the
  # start shapes keeps the plan to one pair of compiles per distinct shape of the sweep.
  start_shapes = {r.d: shape_of(r.d, r.boundary) for r in replays}
  shapes = sorted(set(start_shapes.values()), key=lambda s: (s.dims, s.documents, s.queries))
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:  # XLA compiles off the GIL
    costs = dict(zip(shapes, pool.map(lambda s: shape_cost(settings, s, device, devices), shapes)))

  bucket_memory = min(config.memory_budget_mb * 2**20, device.memory * device.chips)
  # What the scheduler does on the device: buckets of slots_per_bucket slots each, added
  # while they fit the memory and max_slots.
  per_bucket = scheduler.slots_per_bucket(config.bucket_slots, config.restarts,
                                          device.tile_backend, device.chips)
  precision = settings.matmul_precision
  rows, unmeasurable, total_work, longest_chain = [], [], 0.0, 0.0
  for r in replays:
    probe_shapes = sorted({shape_of(r.d, n) for round_ in r.rounds for n, _ in round_},
                          key=lambda s: s.queries)
    start_cost = costs[start_shapes[r.d]]
    step = step_seconds(start_cost, device, precision)
    chain = work = 0.0
    for round_ in r.rounds:
      round_steps = [steps.steps(r.d, ok, config.eval_every) for _, ok in round_]
      chain += max(round_steps) * max(step, device.launch_floor_s)
      work += config.restarts * sum(round_steps) * step
    total_work += work
    longest_chain = max(longest_chain, chain)
    fit = min(config.max_slots, int(bucket_memory // start_cost.slot_bytes))
    boundary = boundary_check(sweep, settings, r.d, start_cost, device, devices)
    if boundary:
      unmeasurable.append(dict(d=r.d, **boundary))
    rows.append(dict(
        d=r.d, start_n=r.boundary, probes=config.restarts * sum(map(len, r.rounds)),
        rounds=len(r.rounds),
        shapes=[f"{s.queries}x{s.documents}x{s.dims}" for s in probe_shapes],
        slot_mib=start_cost.slot_bytes / 2**20, step_gflop=start_cost.step_flops / _GIGA,
        step_gb=start_cost.step_bytes / _GIGA,
        slots_fit=fit // per_bucket * per_bucket, step_ms=step * 1e3,
        chain_minutes=chain / 60, work_minutes=work / 60,
        lower_bound_only=boundary is not None))
  wall = max(total_work / device.chips, longest_chain)
  return dict(
      device=device.name, chips=device.chips, compiler=compiler, precision=precision,
      peak_tflops=device.flops[precision] / _TERA, bandwidth_tb_s=device.bandwidth / _TERA,
      memory_gb_per_chip=device.memory / _GIGA, bucket_gb=bucket_memory / _GIGA,
      slots_per_bucket=per_bucket, steps_model=dict(
          success=steps.success, failure=steps.failure, source=steps.source),
      compiled_shapes=len(shapes), dims=rows, work_hours=total_work / 3600,
      longest_chain_hours=longest_chain / 3600, wall_hours=wall / 3600,
      unmeasurable=unmeasurable)


def compiler_note(plan: dict) -> str:
  """Which compiler measured the plan's memory and FLOPs, and how to get the device's own."""
  if plan["compiler"] == "tpu":
    return (f"memory and FLOPs: the TPU compiler (libtpu), for {plan['chips']} chip(s) of "
            f"{plan['device']}")
  if plan["device"].startswith("tpu-"):
    return ("memory and FLOPs: CPU-backend estimates (libtpu is not installed); for the TPU "
            "compiler's own: pip install 'critical-n-sweep[tpu]' and plan again")
  return f"memory and FLOPs: this machine's XLA backend ({jax.default_backend()})"


def format_plan(plan: dict) -> str:
  """The plan as a table, one line per d, and its totals; the last line names any d whose
  boundary cannot be measured."""
  lines = [
      f"device {plan['device']} x {plan['chips']}: {plan['peak_tflops']:.1f} TFLOP/s at "
      f"matmul precision {plan['precision']}, {plan['bandwidth_tb_s']:.3f} TB/s, "
      f"{plan['memory_gb_per_chip'] * 1e9 / 2**30:.2f} GiB per chip; {plan['compiled_shapes']} shapes compiled; "
      f"a bucket holds at most {plan['bucket_gb'] * 1e9 / 2**30:.2f} GiB (memory_budget_mb, all chips), "
      f"{plan['slots_per_bucket']} slots a bucket",
      compiler_note(plan),
      f"steps per probe: success {plan['steps_model']['success']:,.0f}, failure "
      f"{plan['steps_model']['failure']:,.0f} ({plan['steps_model']['source']}); the search "
      f"replayed with its boundary at the start n",
      f"{'d':>3} {'start n':>7} {'probes':>6} {'MiB/slot':>9} {'GFLOP/step':>10} "
      f"{'GB/step':>8} {'slots':>5} {'step ms':>8} {'minutes':>8}  probe shapes (q x n x d)"]
  for r in plan["dims"]:
    lines.append(
        f"{r['d']:>3} {r['start_n']:>7} {r['probes']:>6} {r['slot_mib']:>9.1f} "
        f"{r['step_gflop']:>10.3f} {r['step_gb']:>8.3f} {r['slots_fit']:>5} "
        f"{r['step_ms']:>8.3f} {r['work_minutes']:>8.2f}  {', '.join(r['shapes'])}"
        + ("  (lower bound only)" if r["lower_bound_only"] else ""))
  lines.append(
      f"predicted wall time {plan['wall_hours']:.2f} h = max(all slot-steps over "
      f"{plan['chips']} chip(s): {plan['work_hours'] / plan['chips']:.2f} h, the longest "
      f"search's chain of rounds: {plan['longest_chain_hours']:.2f} h)")
  lines += [f"cannot measure {u['reason']}" for u in plan["unmeasurable"]]
  return "\n".join(lines)
