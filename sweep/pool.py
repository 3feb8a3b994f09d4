"""The live buckets on the devices: which probe trains in which slot, their device states, the
shapes compiled so far and the work done.

`admit` places queued probes into free or new slots (the scheduler decides, a pure function);
`train_round` runs one chunk of every bucket, all at once (programs_at_once), and hands back the
probes that stopped, with their outcomes and final embeddings. The `construction` protocol has a pool
of its own with the same two calls: it evaluates the closed-form embeddings of every admitted
probe, training nothing.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import time
from collections.abc import Callable

import jax
import numpy as np

from sweep import construct, objective, scheduler, sizing
from sweep import trainer
from sweep.problems import BucketShape, Configuration, Probe, TrainSettings

# Slot-steps computed (every slot of a bucket, running or not), slot-steps of running
# configurations, and the cells (queries x documents x dims) of those steps, real and padded.
WORK_COUNTERS = ("slot_steps_computed", "slot_steps_running", "cells_real", "cells_padded")


def efficiency(work: dict) -> dict:
  """slot occupancy: slot-steps of running configurations / slot-steps computed.
  padding efficiency: real cells / padded cells over the slot-steps of running configurations.
  Their product is the fraction of the computed work that was real."""
  occupancy = work["slot_steps_running"] / max(work["slot_steps_computed"], 1)
  padding = work["cells_real"] / max(work["cells_padded"], 1)
  return dict(slot_occupancy=round(occupancy, 4), padding_efficiency=round(padding, 4),
              **{k: int(v) for k, v in work.items()})


def programs_at_once() -> int:
  """How many bucket programs this process runs at the same time.

  A CPU runs one per core: a chunk's step runs on one thread at the shapes a CPU trains, and
  XLA's CPU client runs the programs that one thread dispatches one after another (two
  chunks dispatched together took twice as long as one), so each chunk runs, and is waited
  for, in a thread of its own. An accelerator runs one program at a time, and processes that
  share programs must launch them in one order: one thread dispatches every chunk.
  """
  if jax.default_backend() != "cpu" or jax.process_count() > 1:
    return 1
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclasses.dataclass
class Finished:
  """A probe that stopped: its outcome (trainer.outcomes, plus its padded shape), its final
  embeddings (queries, documents) and the wall seconds since it was admitted."""
  probe: Probe
  outcome: dict
  embeddings: tuple[np.ndarray, np.ndarray]
  seconds: float


class TrainingPool:
  """Buckets of slots training on this process's devices."""

  def __init__(self, settings: TrainSettings, configuration: Callable[[Probe], Configuration],
               slots_per_bucket: int, max_slots: int, memory_budget_mb: float):
    self.settings = settings
    self.configuration = configuration
    self.slots_per_bucket = slots_per_bucket
    self.max_slots = max_slots
    self.memory_budget_mb = memory_budget_mb
    self.buckets: list[scheduler.Bucket] = []
    # Per live bucket, parallel to `buckets`: (slots, train state) on the device.
    self.device: list[tuple[trainer.Slots, trainer.TrainState]] = []
    self.shapes: list[BucketShape] = []  # single-slot shapes, in order of first use
    self.work = dict.fromkeys(WORK_COUNTERS, 0)
    self.started: dict[Probe, float] = {}
    self._hosts: dict[int, trainer.TrainState] = {}  # host copies fetched by the last round
    at_once = programs_at_once()
    self._lanes = concurrent.futures.ThreadPoolExecutor(at_once) if at_once > 1 else None

  @property
  def training(self) -> list[Probe]:
    return [p for b in self.buckets for p in b.probes]

  def efficiency(self) -> dict:
    return efficiency(self.work)

  # -- placing probes ---------------------------------------------------------------------

  def _configurations(self, bucket: scheduler.Bucket) -> list[Configuration | None]:
    return [None if p is None else self.configuration(p) for p in bucket.slots]

  def _fits_budget(self, shapes) -> bool:
    return sizing.buckets_fit(shapes, self.memory_budget_mb, self.settings)

  def admit(self, queue: list[Probe]) -> list[Probe]:
    """Place queued probes into free or new slots of the buckets of their shape class;
    returns the probes that wait. A bucket that changes is rebuilt on the host (a plain
    gather from the copies the last round fetched) and sent to the device."""
    own = [sizing.shape_class(self.configuration(p)) for p in queue]
    shapes, self.shapes = scheduler.target_shapes(own, self.shapes)
    placements, waiting = scheduler.arrange(
        self.buckets, queue, shapes, self.slots_per_bucket, self.max_slots, self._fits_budget)
    if waiting and not placements:
      raise ValueError(f"config.memory_budget_mb={self.memory_budget_mb} is too small for one "
                       f"slot of {own[0]}: need >= {sizing.slot_bytes(own[0]) / 2**20:.1f}")
    hosts, device = self._hosts, []
    for placed in placements:
      bucket, source = placed.bucket, placed.source
      if source is None:
        device.append(self.device[placed.previous])
        continue
      donors = sorted({i for i, _ in filter(None, source)})
      for i in donors:
        if i not in hosts:
          hosts[i] = trainer.to_host(self.device[i][1])
      # Donors share the bucket's shape: one concatenation, then a plain gather.
      offsets = {i: k * bucket.shape.slots for k, i in enumerate(donors)}
      previous = (jax.tree.map(lambda *x: np.concatenate(x), *[hosts[i] for i in donors])
                  if donors else None)
      configs = self._configurations(bucket)
      state = trainer.init_state(self.settings, bucket.shape, configs, previous,
                                 [-1 if o is None else offsets[o[0]] + o[1] for o in source])
      device.append((trainer.place(trainer.pack(configs, bucket.shape)), trainer.place(state)))
      for probe, o in zip(bucket.slots, source):
        if probe is not None and o is None:
          self.started[probe] = time.time()
    self.buckets, self.device = [p.bucket for p in placements], device
    return waiting

  # -- training ---------------------------------------------------------------------------

  def train_round(self) -> list[Finished]:
    """One chunk of every bucket, all at once; the probes that stopped, in bucket and slot
    order, their slots freed."""
    steps_before = [trainer.to_host(state.step) for _, state in self.device]
    if self._lanes is None:
      chunks = [self._chunk(slots, state, wait=False) for slots, state in self.device]
    else:
      chunks = list(self._lanes.map(lambda device: self._chunk(*device, wait=True), self.device))
    self.device = [(slots, state) for (slots, _), (state, _) in zip(self.device, chunks)]
    blocks = [ran for _, ran in chunks]
    self._hosts, finished = {}, []
    for i, (bucket, (_, state), ran) in enumerate(zip(self.buckets, self.device, blocks)):
      self._account(bucket, trainer.to_host(state.step) - steps_before[i], trainer.to_host(ran))
      stopped = trainer.to_host(state.stop_reason) != trainer.StopReason.RUNNING
      if any(p is not None and stopped[j] for j, p in enumerate(bucket.slots)):
        self._hosts[i] = trainer.to_host(state)
        finished += self._harvest(bucket, self._hosts[i])
    return finished

  def _chunk(self, slots: trainer.Slots, state: trainer.TrainState, wait: bool):
    """(state, blocks run) of one chunk of a bucket; with `wait`, once it has run."""
    state, ran = trainer.train_chunk(self.settings, slots, state, True)
    return (jax.block_until_ready(state), ran) if wait else (state, ran)

  def _account(self, bucket: scheduler.Bucket, advanced: np.ndarray, blocks: np.ndarray) -> None:
    """Every slot computes each step of the blocks its device ran, running or not."""
    work, shape = self.work, bucket.shape
    per_device = shape.slots // len(blocks)
    work["slot_steps_computed"] += int(blocks.sum()) * self.settings.eval_every * per_device
    work["slot_steps_running"] += int(advanced.sum())
    for probe, steps in zip(bucket.slots, advanced):
      if probe is not None and steps:
        c = self.configuration(probe)
        work["cells_real"] += int(steps) * c.query_count * c.n * c.d
        work["cells_padded"] += int(steps) * shape.queries * shape.documents * shape.dims

  def _harvest(self, bucket: scheduler.Bucket, host: trainer.TrainState) -> list[Finished]:
    outcomes = trainer.outcomes(host)
    shape = bucket.shape
    finished = []
    for i, probe in enumerate(bucket.slots):
      if probe is None or outcomes[i]["stop_reason"] == "running":
        continue
      embeddings = trainer.embeddings(host, i, self.configuration(probe))
      outcome = dict(outcomes[i], padded_shape=[shape.queries, shape.documents, shape.dims])
      started = self.started.pop(probe, time.time())
      finished.append(Finished(probe, outcome, embeddings, time.time() - started))
      bucket.slots[i] = None
    return finished

  # -- checkpoints ------------------------------------------------------------------------

  def to_json(self) -> dict:
    return dict(buckets=[b.to_json() for b in self.buckets], work=self.work,
                shapes=[dataclasses.asdict(shape) for shape in self.shapes])

  def states(self) -> dict[str, trainer.TrainState]:
    return {str(i): state for i, (_, state) in enumerate(self.device)}

  def abstract_states(self, saved: dict) -> dict:
    """The structure of the states `saved` (to_json) describes, replicated on this run's
    devices, whatever their count: the target of a checkpoint read."""
    replicated = jax.sharding.NamedSharding(trainer.slot_mesh(), jax.sharding.PartitionSpec())
    return {str(i): jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
        trainer.init_state(self.settings, scheduler.Bucket.from_json(b).shape, []))
        for i, b in enumerate(saved["buckets"])}

  def restore(self, saved: dict, states: dict) -> None:
    """The buckets of `saved` with their states, each bucket's slots padded to a multiple of
    this run's device count (a checkpoint restores on any number of devices); the copy is
    exact, so the resumed run computes what an uninterrupted one does."""
    self.buckets = [scheduler.Bucket.from_json(b) for b in saved["buckets"]]
    self.work = saved["work"]
    self.shapes = [BucketShape(**shape) for shape in saved["shapes"]]
    devices = jax.device_count()
    self.device = []
    for i, bucket in enumerate(self.buckets):
      extra = -bucket.shape.slots % devices
      bucket.shape = dataclasses.replace(bucket.shape, slots=bucket.shape.slots + extra)
      bucket.slots += [None] * extra
      configs = self._configurations(bucket)
      source = list(range(bucket.shape.slots - extra)) + [-1] * extra
      state = trainer.init_state(self.settings, bucket.shape, configs,
                                 trainer.to_host(states[str(i)]), source)
      self.device.append((trainer.place(trainer.pack(configs, bucket.shape)), trainer.place(state)))
    self.started = {p: time.time() for p in self.training}


class ConstructionPool:
  """The `construction` protocol: each admitted probe's closed-form embeddings (float32),
  evaluated at the next round, no training; nothing to checkpoint."""

  def __init__(self, configuration: Callable[[Probe], Configuration], criterion: str,
               epsilon: float):
    self.configuration = configuration
    self.criterion, self.epsilon = criterion, epsilon
    self.training: list[Probe] = []
    self.buckets: list[scheduler.Bucket] = []  # never any: nothing trains
    self.work = dict.fromkeys(WORK_COUNTERS, 0)

  def efficiency(self) -> dict:
    return efficiency(self.work)

  def admit(self, queue: list[Probe]) -> list[Probe]:
    self.training += queue
    return []

  def train_round(self) -> list[Finished]:
    finished = [self._evaluate(probe) for probe in self.training]
    self.training = []
    return finished

  def _evaluate(self, probe: Probe) -> Finished:
    started = time.time()
    config = self.configuration(probe)
    table = config.relevance()
    queries = construct.queries_for_subsets(table, config.n, config.d).astype(np.float32)
    documents = construct.documents_on_curve(config.n, config.k, config.d).astype(np.float32)
    accuracy, query_margin, threshold_gap = objective.retrieval_metrics(
        queries, documents, table, len(table), config.n)
    passed, margin = (x.item() for x in objective.judge(
        self.criterion, self.epsilon, accuracy, query_margin, threshold_gap))
    accuracy = accuracy.item()
    outcome = dict(success=passed, max_accuracy=accuracy, final_accuracy=accuracy,
                   final_loss=None, best_loss=None, stop_step=0, stop_reason="construction",
                   margin=margin, padded_shape=None)
    return Finished(probe, outcome, (queries, documents), time.time() - started)

  def to_json(self) -> dict:
    return {}

  def states(self) -> dict:
    return {}
