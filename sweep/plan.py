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

from sweep import batching, memory, objective, search, sweeps
from sweep import trainer as T
from sweep.config import settings_of, validate_config

SUCCESS_STEPS = 2_000
FAILURE_STEPS = 5_000
_GIGA, _TERA = 1e9, 1e12


@dataclasses.dataclass(frozen=True)
class Device:
  """Published peak matmul throughput per training precision, memory bandwidth and size.

  `flops` maps objective.PRECISIONS names to FLOP/s: on a GPU "highest" is float32 on the
  CUDA cores and "high"/"default" TF32 on the tensor cores; on a TPU "default" is one
  bfloat16 pass, "high" three and "highest" six. `launch_floor_s` is the least a training
  step of a bucket takes (kernel launches), however small.
  """
  name: str
  flops: dict
  bandwidth: float  # bytes/s
  memory: float     # bytes per chip
  launch_floor_s: float
  tile_backend: str  # whose automatic query tile the device's programs use
  chips: int = 1


def _gpu(name, fp32, tf32, bandwidth, memory_gb):
  return Device(name, {"highest": fp32 * _TERA, "high": tf32 * _TERA, "default": tf32 * _TERA},
                bandwidth * _TERA, memory_gb * _GIGA, 3e-5, "gpu")


def _tpu(name, bf16, bandwidth, memory_gb):
  return Device(name, {"highest": bf16 / 6 * _TERA, "high": bf16 / 3 * _TERA,
                       "default": bf16 * _TERA}, bandwidth * _TERA, memory_gb * _GIGA, 1e-5, "tpu")


# Vendor data sheets (dense, no sparsity): H100 SXM5 80 GB, A100 SXM4 80 GB, Cloud TPU
# v4 / v5e / v5p / v6e (Trillium) per chip.
DEVICES = {d.name: d for d in (
    _gpu("h100", 67.0, 494.7, 3.35, 80), _gpu("a100", 19.5, 156.0, 2.039, 80),
    _tpu("tpu-v4", 275.0, 1.228, 32), _tpu("tpu-v5e", 197.0, 0.819, 16),
    _tpu("tpu-v5p", 459.0, 2.765, 95), _tpu("tpu-v6e", 918.0, 1.640, 32))}
DEVICE_NAMES = (*DEVICES, "cpu")


def device_named(name: str) -> Device:
  """A DEVICES entry or "cpu" (measured here), with an optional chip count: "tpu-v5e-8"."""
  base, chips = name, 1
  head, _, tail = name.rpartition("-")
  if head and tail.isdigit():
    base, chips = head, int(tail)
  if chips < 1 or base not in DEVICE_NAMES:
    raise ValueError(f"device={name!r} is not allowed: choose one of {DEVICE_NAMES}, "
                     f"optionally with a chip count (tpu-v5e-8)")
  return dataclasses.replace(measured_cpu() if base == "cpu" else DEVICES[base], chips=chips)


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
  shape: T.BucketShape
  slot_bytes: int   # the training chunk's memory per slot (arguments, outputs, temporaries)
  step_flops: float  # one untiled training step of one slot
  step_bytes: float  # bytes it reads and writes


def _step_cost(settings: T.TrainSettings, shape: T.BucketShape) -> tuple[float, float]:
  """FLOPs and bytes of one step, untiled: XLA counts a loop's body once, not per block."""
  untiled = dataclasses.replace(settings, query_tile=shape.queries)
  compiled = jax.jit(T.train_step, static_argnums=0).lower(
      untiled, *memory.abstract_bucket(untiled, shape)).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))


def shape_cost(settings: T.TrainSettings, shape: T.BucketShape, device: Device) -> ShapeCost:
  """Memory per slot and step costs of `shape`, with the query tile the device would pick."""
  tile = objective.query_tile(shape.queries, shape.documents, settings.query_tile,
                              objective.auto_tile_bytes(device.tile_backend))
  settings = dataclasses.replace(settings, query_tile=tile)
  return ShapeCost(shape, memory.measured_slot_bytes(settings, shape), *_step_cost(settings, shape))


def step_seconds(cost: ShapeCost, device: Device, precision: str) -> float:
  """Roofline time of one slot-step: compute- or bandwidth-bound, whichever is slower."""
  return max(cost.step_flops / device.flops[precision], cost.step_bytes / device.bandwidth)


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


def plan_sweep(config, device: Device, steps: StepModel = StepModel(), workers: int = 2) -> dict:
  """Every d's probes, shapes, memory, FLOPs, slots that fit and time; the sweep's wall time."""
  validate_config(config)
  if config.qrels:
    raise ValueError("config.qrels is set: sweep plan covers critical-n sweeps")
  settings = settings_of(config)
  sweep = sweeps.CriticalN(config)
  replays = [replay(config, int(key.removeprefix("d=")), spec) for key, spec in sweep.specs().items()]
  shape_of = lambda d, n: batching.shape_class(sweep.configuration(sweeps.Probe(d, n, config.seed)))
  # Each search's probes lie around its start n, mostly in its shape; compiling only the
  # start shapes keeps the plan to one pair of compiles per distinct shape of the sweep.
  start_shapes = {r.d: shape_of(r.d, r.boundary) for r in replays}
  shapes = sorted(set(start_shapes.values()), key=lambda s: (s.dims, s.documents, s.queries))
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:  # XLA compiles off the GIL
    costs = dict(zip(shapes, pool.map(lambda s: shape_cost(settings, s, device), shapes)))

  bucket_memory = min(config.memory_budget_mb * 2**20, device.memory * device.chips)
  precision = settings.matmul_precision
  rows, total_work, longest_chain = [], 0.0, 0.0
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
    rows.append(dict(
        d=r.d, start_n=r.boundary, probes=config.restarts * sum(map(len, r.rounds)),
        rounds=len(r.rounds),
        shapes=[f"{s.queries}x{s.documents}x{s.dims}" for s in probe_shapes],
        slot_mib=start_cost.slot_bytes / 2**20, step_gflop=start_cost.step_flops / _GIGA,
        step_gb=start_cost.step_bytes / _GIGA,
        slots_fit=min(config.max_slots, int(bucket_memory // start_cost.slot_bytes)),
        step_ms=step * 1e3,
        chain_minutes=chain / 60, work_minutes=work / 60))
  wall = max(total_work / device.chips, longest_chain)
  return dict(
      device=device.name, chips=device.chips, precision=precision,
      peak_tflops=device.flops[precision] / _TERA, bandwidth_tb_s=device.bandwidth / _TERA,
      memory_gb_per_chip=device.memory / _GIGA, bucket_gb=bucket_memory / _GIGA, steps_model=dict(
          success=steps.success, failure=steps.failure, source=steps.source),
      compiled_shapes=len(shapes), dims=rows, work_hours=total_work / 3600,
      longest_chain_hours=longest_chain / 3600, wall_hours=wall / 3600)


def format_plan(plan: dict) -> str:
  """The plan as a table, one line per d, and its totals."""
  lines = [
      f"device {plan['device']} x {plan['chips']}: {plan['peak_tflops']:.1f} TFLOP/s at "
      f"matmul precision {plan['precision']}, {plan['bandwidth_tb_s']:.3f} TB/s, "
      f"{plan['memory_gb_per_chip']:.0f} GB per chip; {plan['compiled_shapes']} shapes compiled; "
      f"a bucket holds at most {plan['bucket_gb']:.1f} GB (memory_budget_mb, all chips)",
      f"steps per probe: success {plan['steps_model']['success']:,.0f}, failure "
      f"{plan['steps_model']['failure']:,.0f} ({plan['steps_model']['source']}); the search "
      f"replayed with its boundary at the start n",
      f"{'d':>3} {'start n':>7} {'probes':>6} {'MiB/slot':>9} {'GFLOP/step':>10} "
      f"{'GB/step':>8} {'slots':>5} {'step ms':>8} {'minutes':>8}  probe shapes (q x n x d)"]
  for r in plan["dims"]:
    lines.append(
        f"{r['d']:>3} {r['start_n']:>7} {r['probes']:>6} {r['slot_mib']:>9.1f} "
        f"{r['step_gflop']:>10.3f} {r['step_gb']:>8.3f} {r['slots_fit']:>5} "
        f"{r['step_ms']:>8.3f} {r['work_minutes']:>8.2f}  {', '.join(r['shapes'])}")
  lines.append(
      f"predicted wall time {plan['wall_hours']:.2f} h = max(all slot-steps over "
      f"{plan['chips']} chip(s): {plan['work_hours'] / plan['chips']:.2f} h, the longest "
      f"search's chain of rounds: {plan['longest_chain_hours']:.2f} h)")
  return "\n".join(lines)
