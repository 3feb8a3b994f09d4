"""What a sweep will cost before it runs: compile its programs, and time them if asked.

For each d the search is replayed with the real search module on an assumed boundary (the
paper's critical n, where each search also starts), which gives its probes, their padded shapes
and its rounds. The programs of each search's start shape (its probes lie around it) are
compiled on this machine, with the query tile the named device would pick: XLA's memory
analysis of the training chunk gives the memory per slot, its cost analysis of one untiled
step the FLOPs and bytes a step moves. A roofline on the named device turns those into a
step time, and the steps-per-probe model (below) into the wall time of the whole sweep.

`measure` also runs each start shape's real training chunk on the devices at hand (only
those can be timed) and predicts the wall from those step times and compile seconds; the
roofline's wall is still given beside it (on a 2-core CPU its steps were 4-8x too short at
d = 12-20 of the paper config: a lower bound, not a forecast).

Steps per probe: a success stops after SUCCESS_STEPS, a failure after FAILURE_STEPS,
rounded up to whole evaluation blocks; `calibrate` replaces them by the mean stop_step of
each outcome in a finished workdir's results (per d where it has that d), and a d that
workdir searched is costed by the points it probed and the steps each seed took, not by a
replay. Wall time: the larger of (a) all slot-steps spread over every chip and (b) the
longest search's own chain of rounds, each as long as its slowest probe, a step never
shorter than the device's launch floor; measured, plus the compiles.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import math
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from sweep import hardware, memory, objective, pool, problems, scheduler, search, sizing, targets
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


def local_device_name() -> str:
  """The devices JAX runs on here, named as `device_named` takes them ("cpu-1", "h100-8",
  "tpu-v5e-8"); an accelerator the table lacks keeps the name JAX gives its kind."""
  here = jax.devices()[0]
  kind = here.device_kind.lower()
  base = "cpu" if here.platform == "cpu" else next(
      (d.name for d in hardware.DEVICES.values()
       if kind == d.device_kind.lower() or (not d.device_kind and d.name in kind)), kind)
  return f"{base}-{jax.device_count()}"


def check_measurable(device: Device) -> None:
  """A ValueError unless `device` is what JAX runs on here: only the hardware at hand can be
  timed."""
  named, here = f"{device.name}-{device.chips}", local_device_name()
  if named != here:
    raise ValueError(f"device={named} cannot be measured here: --measure times the devices at "
                     f"hand, {here}; plan for --device={here}, or drop --measure")


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
# The searches: replayed on an assumed boundary, or as a finished sweep probed them.
# ---------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Replay:
  """One search replayed: its rounds of probed n (each point x restarts) and outcomes."""
  d: int
  boundary: int
  rounds: tuple[tuple[tuple[int, bool], ...], ...]


def replay(config, d: int, spec: search.SearchSpec) -> Replay:
  """Rounds of `probes_per_search` points until the search is done; n succeeds iff it is at
  most the boundary, assumed to be the start n (the paper's critical n for k = 2)."""
  state, rounds = search.new_search(spec), []
  while points := search.propose(state, set(), config.probes_per_search):
    outcomes = tuple((n, n <= spec.start_n) for n in points)
    for n, ok in outcomes:
      state = search.record(state, n, ok)
    rounds.append(outcomes)
  return Replay(d, spec.start_n, tuple(rounds))


def whole_blocks(steps: float, eval_every: int) -> int:
  """Steps rounded up to whole evaluation blocks: a chunk computes every step of a block,
  also after a slot stopped inside it."""
  return -(-int(math.ceil(steps)) // eval_every) * eval_every


@dataclasses.dataclass(frozen=True)
class StepModel:
  """Steps a probe trains, by outcome; per d where a calibration has that d, and there also
  the points its search probed, in the order they finished, with each seed's stop_step."""
  success: float = SUCCESS_STEPS
  failure: float = FAILURE_STEPS
  per_d: dict = dataclasses.field(default_factory=dict)  # d -> (success, failure)
  source: str = "default"
  probed: dict = dataclasses.field(default_factory=dict)  # d -> ((n, (stop_step, ...)), ...)

  def steps(self, d: int, success: bool, eval_every: int) -> int:
    return whole_blocks(self.per_d.get(d, (self.success, self.failure))[0 if success else 1],
                        eval_every)


def calibrate(records, source: str) -> StepModel:
  """Mean stop_step of successes and failures in a finished sweep's results, and the points
  each of its searches probed."""
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
  seeds = {}  # d -> n -> stop_steps, in the order the results were written
  for r in trained:
    seeds.setdefault(r["d"], {}).setdefault(r["n"], []).append(r["stop_step"])
  probed = {d: tuple((n, tuple(steps)) for n, steps in points.items())
            for d, points in seeds.items()}
  return StepModel(success, failure, per_d, f"{source} ({len(trained)} results)", probed)


@dataclasses.dataclass(frozen=True)
class Search:
  """What one search trains: rounds of points, each its n and the steps each seed trains
  (whole evaluation blocks). `source` is "replay" or the calibration it was probed in."""
  d: int
  start_n: int
  rounds: tuple[tuple[tuple[int, tuple[int, ...]], ...], ...]
  source: str


def planned_search(config, d: int, spec: search.SearchSpec, steps: StepModel) -> Search:
  """d's search as the calibration probed it, where it has d, else replayed.

  The calibration's own points are what that search trained: the replay assumes the boundary
  at the start n and outcomes that are monotone in n, where a real search's boundary lies a
  few n off and a seed may succeed above a failure, which moves the bracket and adds points.
  Its points are taken `probes_per_search` a round, in the order they finished.
  """
  if d in steps.probed:
    points = [(n, tuple(whole_blocks(s, config.eval_every) for s in stops))
              for n, stops in steps.probed[d]]
    width = config.probes_per_search
    return Search(d, spec.start_n, tuple(tuple(points[i:i + width])
                                         for i in range(0, len(points), width)), steps.source)
  def seeds(ok: bool) -> int:  # a success is one seed when restarts stop at the first
    return 1 if ok and config.restarts_until_success else config.restarts
  return Search(d, spec.start_n, tuple(
      tuple((n, (steps.steps(d, ok, config.eval_every),) * seeds(ok)) for n, ok in round_)
      for round_ in replay(config, d, spec).rounds), "replay")


def search_seconds(s: Search, step: float, floor: float) -> tuple[float, float]:
  """(chain, work) of a search at `step` seconds per slot-step: its rounds one after another,
  each as long as its slowest seed at a step no shorter than `floor`; and all its slot-steps."""
  chain = sum(max(max(seeds) for _, seeds in round_) for round_ in s.rounds)
  work = sum(sum(seeds) for round_ in s.rounds for _, seeds in round_)
  return chain * max(step, floor), work * step


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
# Timed on the devices at hand.
# ---------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ChunkTiming:
  """A shape's training chunk, timed on the devices at hand."""
  step_seconds: float     # one slot-step: the bucket's step over the slots each device holds
  compile_seconds: float  # lowering and compiling its program, or loading it from the cache


def time_chunk(settings: trainer.TrainSettings, shape: trainer.BucketShape,
               configurations: list, repeats: int = 2) -> ChunkTiming:
  """One bucket of `shape` holding `configurations`, trained as a sweep trains it: the same
  program, packing and placement as the pool's, evaluations included, one whole chunk
  (end_on_stop off: chunk_evals blocks unless every slot stops sooner).

  The best of `repeats` chunks after a warm-up, each from the same start (the chunk donates
  its state), over the blocks it ran. The compile is timed with the persistent cache as the
  sweep would find it: a program already there costs its load (and a plan before a cold
  sweep leaves its programs there for it).
  """
  slots = trainer.place(trainer.pack(configurations, shape))
  start = trainer.init_state(settings, shape, configurations)
  began = time.perf_counter()
  chunk = trainer.train_chunk.lower(settings, slots, trainer.place(start), False).compile()
  compile_seconds = time.perf_counter() - began

  def bucket_step() -> float:
    state = jax.block_until_ready(trainer.place(start))
    began = time.perf_counter()
    _, blocks = chunk(slots, state, False)
    blocks = int(trainer.to_host(blocks).max())
    return (time.perf_counter() - began) / (blocks * settings.eval_every)

  bucket_step()
  best = min(bucket_step() for _ in range(repeats))
  return ChunkTiming(best / (shape.slots // jax.device_count()), compile_seconds)


def startup_seconds() -> float:
  """Wall of a fresh process that imports what `sweep run` imports and starts the devices:
  what every sweep pays before its first probe (this process has them loaded already)."""
  run = ("from sweep import hardware; hardware.quiet_tpu_runtime(); import jax; "
         "from sweep import cli, driver; jax.devices()")
  began = time.perf_counter()
  subprocess.run([sys.executable, "-c", run], check=True, capture_output=True)
  return time.perf_counter() - began


# ---------------------------------------------------------------------------------------
# The plan.
# ---------------------------------------------------------------------------------------

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


def programs(s: Search, shape_of) -> int:
  """Programs a cold sweep compiles for `s`: one per shape it trains in, where a probe takes
  a shape compiled before it, or in its round, that it fills well (scheduler.target_shapes),
  each round admitted as the pool admits it."""
  known = []
  for round_ in s.rounds:
    _, known = scheduler.target_shapes([shape_of(s.d, n) for n, _ in round_], known)
  return len(known)


def sweep_wall(seconds: list[tuple[float, float]], lanes: int, compile_seconds: float = 0.0,
               startup_seconds: float = 0.0) -> dict:
  """The wall of searches with these (chain, work) seconds: the larger of all slot-steps
  spread over the `lanes` that train at once and the longest chain of rounds, then the
  compiles and the process's start.

  A chip is a lane; so is each core of a CPU measured here, which runs one bucket's program
  (pool.programs_at_once) at the step time measured alone. Compiles are counted in full:
  they take the cores the training needs, or hold up the dispatch on an accelerator. The
  start (about 1-2 s on a 2-core CPU) is most of a small sweep's wall and nothing of a large
  one's; the loop's own host work between chunks is left out (a measured chunk already holds
  its evaluations).
  """
  chains, works = zip(*seconds)
  wall = max(sum(works) / lanes, max(chains)) + compile_seconds + startup_seconds
  return dict(lanes=lanes, work_hours=sum(works) / 3600, longest_chain_hours=max(chains) / 3600,
              compile_hours=compile_seconds / 3600, startup_hours=startup_seconds / 3600,
              wall_hours=wall / 3600)


def plan_sweep(config, device: Device, steps: StepModel = StepModel(), workers: int = 2,
               measure: bool = False) -> dict:
  """Every d's probes, shapes, memory, FLOPs, slots that fit and time; the sweep's wall time
  at the roofline's steps and, with `measure`, at the steps timed on the devices at hand.

  Programs are compiled for the device itself where that can be done here (a TPU, with
  libtpu), else by this process's XLA backend (`compiler` says which).
  """
  validate_config(config)
  if config.qrels:
    raise ValueError("config.qrels is set: sweep plan covers critical-n sweeps")
  if measure:
    check_measurable(device)
  settings = settings_of(config)
  compiler, devices = compile_target(device)
  if devices:  # what the TPU compiler will let a program use, as a VM reports it
    device = dataclasses.replace(device, memory=hardware.chip_memory_bytes(devices[0]))
  sweep = targets.CriticalN(config)
  searches = [planned_search(config, int(key.removeprefix("d=")), spec, steps)
              for key, spec in sweep.specs().items()]
  probe = lambda d, n, seed=config.seed: sweep.configuration(problems.Probe(d, n, seed))
  shape_of = lambda d, n: sizing.shape_class(probe(d, n))
  # Each search's probes lie around its start n, mostly in its shape; compiling only the
  # start shapes keeps the plan to one pair of compiles per distinct shape of the sweep.
  starts = {shape_of(s.d, s.start_n): s for s in reversed(searches)}  # the first d of each
  start_shapes = {s.d: shape_of(s.d, s.start_n) for s in searches}
  shapes = sorted(starts, key=lambda s: (s.dims, s.documents, s.queries))
  # What the scheduler does on the device: buckets of slots_per_bucket slots each, added
  # while they fit the memory and max_slots.
  per_bucket = scheduler.slots_per_bucket(config.bucket_slots, config.restarts,
                                          device.tile_backend, device.chips)
  # Timed first and one at a time, alone on the devices; a bucket of the start n's seeds.
  timings = {shape: time_chunk(settings, dataclasses.replace(shape, slots=per_bucket),
                               [probe(s.d, s.start_n, config.seed + i) for i in range(per_bucket)])
             for shape, s in starts.items()} if measure else {}
  with concurrent.futures.ThreadPoolExecutor(workers) as threads:  # XLA compiles off the GIL
    costs = dict(zip(shapes, threads.map(lambda s: shape_cost(settings, s, device, devices), shapes)))

  bucket_memory = min(config.memory_budget_mb * 2**20, device.memory * device.chips)
  precision, floor = settings.matmul_precision, device.launch_floor_s
  rows, unmeasurable, at_roofline, at_measured, compiling = [], [], [], [], 0.0
  for s in searches:
    probe_shapes = sorted({shape_of(s.d, n) for round_ in s.rounds for n, _ in round_},
                          key=lambda shape: shape.queries)
    start_cost, timing = costs[start_shapes[s.d]], timings.get(start_shapes[s.d])
    roofline, compiled = step_seconds(start_cost, device, precision), programs(s, shape_of)
    at_roofline.append(search_seconds(s, roofline, floor))
    chain, work = at_roofline[-1]
    if timing:
      at_measured.append(search_seconds(s, timing.step_seconds, floor))
      chain, work = at_measured[-1]
      compiling += compiled * timing.compile_seconds
    fit = min(config.max_slots, int(bucket_memory // start_cost.slot_bytes))
    boundary = boundary_check(sweep, settings, s.d, start_cost, device, devices)
    if boundary:
      unmeasurable.append(dict(d=s.d, **boundary))
    rows.append(dict(
        d=s.d, start_n=s.start_n, search=s.source,
        probes=sum(len(seeds) for round_ in s.rounds for _, seeds in round_),
        rounds=len(s.rounds), shapes=[f"{p.queries}x{p.documents}x{p.dims}" for p in probe_shapes],
        programs=compiled,
        slot_mib=start_cost.slot_bytes / 2**20, step_gflop=start_cost.step_flops / _GIGA,
        step_gb=start_cost.step_bytes / _GIGA,
        slots_fit=fit // per_bucket * per_bucket, roofline_step_ms=roofline * 1e3,
        measured_step_ms=timing.step_seconds * 1e3 if timing else None,
        compile_s=timing.compile_seconds if timing else None,
        chain_minutes=chain / 60, work_minutes=work / 60,
        lower_bound_only=boundary is not None))
  roofline = sweep_wall(at_roofline, device.chips)
  measured = (sweep_wall(at_measured, device.chips * pool.programs_at_once(), compiling,
                         startup_seconds()) if measure else None)
  return dict(
      device=device.name, chips=device.chips, compiler=compiler, precision=precision,
      peak_tflops=device.flops[precision] / _TERA, bandwidth_tb_s=device.bandwidth / _TERA,
      memory_gb_per_chip=device.memory / _GIGA, bucket_gb=bucket_memory / _GIGA,
      slots_per_bucket=per_bucket, steps_model=dict(
          success=steps.success, failure=steps.failure, source=steps.source),
      compiled_shapes=len(shapes), dims=rows,
      measured_on=local_device_name() if measure else None, roofline=roofline,
      measured=measured, wall_hours=(measured or roofline)["wall_hours"],
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


def _duration(hours: float) -> str:
  seconds = hours * 3600
  return (f"{hours:.2f} h" if hours >= 1 else f"{seconds / 60:.1f} min" if seconds >= 60
          else f"{seconds:.1f} s")


def _cell(value, width: int, digits: int) -> str:
  return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


def _wall_line(wall: dict) -> str:
  lanes = wall["lanes"]
  return (f"{_duration(wall['wall_hours'])} = max(all slot-steps, {lanes} program(s) at a time: "
          f"{_duration(wall['work_hours'] / lanes)}, the longest search's chain of rounds: "
          f"{_duration(wall['longest_chain_hours'])})")


def format_plan(plan: dict) -> str:
  """The plan as a table, one line per d, and its totals; the last line names any d whose
  boundary cannot be measured."""
  probed = [r["d"] for r in plan["dims"] if r["search"] != "replay"]
  searches = [f"the searches of d={', '.join(map(str, probed))} as probed there"] if probed else []
  if len(probed) < len(plan["dims"]):
    searches.append(f"{'the others' if probed else 'the searches'} replayed with the boundary "
                    f"at the start n")
  lines = [
      f"device {plan['device']} x {plan['chips']}: {plan['peak_tflops']:.1f} TFLOP/s at "
      f"matmul precision {plan['precision']}, {plan['bandwidth_tb_s']:.3f} TB/s, "
      f"{plan['memory_gb_per_chip'] * 1e9 / 2**30:.2f} GiB per chip; {plan['compiled_shapes']} shapes compiled; "
      f"a bucket holds at most {plan['bucket_gb'] * 1e9 / 2**30:.2f} GiB (memory_budget_mb, all chips), "
      f"{plan['slots_per_bucket']} slots a bucket",
      compiler_note(plan),
      f"steps per probe: success {plan['steps_model']['success']:,.0f}, failure "
      f"{plan['steps_model']['failure']:,.0f} ({plan['steps_model']['source']}); "
      + "; ".join(searches),
      f"{'d':>3} {'start n':>7} {'probes':>6} {'MiB/slot':>9} {'GFLOP/step':>10} "
      f"{'GB/step':>8} {'slots':>5} {'roofline ms':>11} {'measured ms':>11} {'compile s':>9} "
      f"{'minutes':>8}  probe shapes (q x n x d)"]
  for r in plan["dims"]:
    lines.append(
        f"{r['d']:>3} {r['start_n']:>7} {r['probes']:>6} {r['slot_mib']:>9.1f} "
        f"{r['step_gflop']:>10.3f} {r['step_gb']:>8.3f} {r['slots_fit']:>5} "
        f"{r['roofline_step_ms']:>11.3f} {_cell(r['measured_step_ms'], 11, 3)} "
        f"{_cell(r['compile_s'], 9, 1)} {r['work_minutes']:>8.2f}  {', '.join(r['shapes'])}"
        + ("  (lower bound only)" if r["lower_bound_only"] else ""))
  roofline, measured = plan["roofline"], plan["measured"]
  if measured:
    lines.append(
        f"predicted wall time {_wall_line(measured)} + compiling "
        f"{sum(r['programs'] for r in plan['dims'])} program(s): "
        f"{_duration(measured['compile_hours'])} + starting the process: "
        f"{_duration(measured['startup_hours'])}; steps measured on {plan['measured_on']}")
    lines.append(f"at the roofline's steps: {_wall_line(roofline)}")
  else:
    lines.append(f"predicted wall time {_wall_line(roofline)} (roofline steps, "
                 f"compiles not counted)")
  lines += [f"cannot measure {u['reason']}" for u in plan["unmeasurable"]]
  return "\n".join(lines)
