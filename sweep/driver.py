"""The sweep: all its searches at once (critical n per d, or critical d of a relevance
matrix; see sweeps.py), fed by several buckets of slots (scheduler.py).

Each round: every live bucket trains a chunk (dispatched together), finished slots are
harvested (results.jsonl grows, searches learn the outcome of every point whose restarts are
all done), searches propose new points, and free slots take the queued probes (continuous
batching; buckets are added, packed and dropped as the probes need). Nothing here depends on
timing, only on the config and the outcomes, so a resumed sweep replays exactly what an
uninterrupted one does.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

import jax
import numpy as np
from jax.experimental import multihost_utils
from ml_collections import ConfigDict

from sweep import batching, construct, objective, scheduler, search, sweeps
from sweep import trainer as T
from sweep.config import settings_of, validate_config
from sweep import store as store_lib
from sweep.store import Store
from sweep.sweeps import Probe

@dataclasses.dataclass
class DriverState:
  """Everything the driver decides from; JSON round-trips go into every checkpoint."""
  searches: dict[str, search.SearchState]  # by the sweep's search key, e.g. "d=4"
  queue: list[Probe]                    # probes waiting for a slot, in order
  buckets: list[scheduler.Bucket]       # the live buckets and the probe of each slot
  seed_outcomes: dict[tuple[int, int], list[bool]]  # (d, n) -> successes of finished restarts
  chunk: int = 0
  certified: dict[str, list] = dataclasses.field(default_factory=dict)  # key -> [[coord, margin64]]
  witnesses: dict[str, int] = dataclasses.field(default_factory=dict)  # key -> coordinate kept
  work: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(WORK_COUNTERS, 0))
  shapes: list[T.BucketShape] = dataclasses.field(default_factory=list)  # single-slot, in order of first use
  # The results line of every configuration counted above, so a lost line can be rebuilt.
  records: list[dict] = dataclasses.field(default_factory=list)

  def to_json(self) -> dict:
    return dict(
        searches={key: s.to_json() for key, s in self.searches.items()},
        queue=[dataclasses.astuple(p) for p in self.queue],
        buckets=[b.to_json() for b in self.buckets],
        seed_outcomes=[[d, n, s] for (d, n), s in self.seed_outcomes.items()],
        chunk=self.chunk, certified=self.certified, witnesses=self.witnesses, work=self.work,
        shapes=[dataclasses.asdict(shape) for shape in self.shapes], records=self.records)

  @classmethod
  def from_json(cls, data: dict) -> "DriverState":
    return cls(
        searches={key: search.SearchState.from_json(s) for key, s in data["searches"].items()},
        queue=[Probe(*p) for p in data["queue"]],
        buckets=[scheduler.Bucket.from_json(b) for b in data["buckets"]],
        seed_outcomes={(d, n): list(s) for d, n, s in data["seed_outcomes"]},
        chunk=data["chunk"], certified={k: [list(p) for p in v] for k, v in data["certified"].items()},
        witnesses=data["witnesses"], work=data["work"],
        shapes=[T.BucketShape(**shape) for shape in data["shapes"]],
        records=data.get("records", []))  # a checkpoint of an older version has none


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


def _agreed(*decisions: bool) -> tuple[bool, ...]:
  """Each decision taken if any process takes it: every process must checkpoint and stop
  at the same chunk, or the others would wait for it forever."""
  if jax.process_count() == 1:
    return decisions
  votes = multihost_utils.process_allgather(np.asarray(decisions))
  return tuple(bool(v) for v in np.asarray(votes).any(axis=0))


class Driver:
  """Runs one sweep in one workdir."""

  def __init__(self, config: ConfigDict, store: Store):
    validate_config(config)
    self.config = config
    self.store = store
    self.settings = settings_of(config)
    self.sweep = sweeps.for_config(config)
    self.results: dict[tuple, dict] = {}
    self.state = DriverState(
        searches={key: search.new_search(spec) for key, spec in self.sweep.specs().items()},
        queue=[], buckets=[], seed_outcomes={})
    # Per live bucket, parallel to state.buckets: (slots, train state) on the device.
    self.device: list[tuple[T.Slots, T.TrainState]] = []
    self.started: dict[Probe, float] = {}
    self._last_checkpoint = time.monotonic()
    self.slots_per_bucket = scheduler.slots_per_bucket(
        config.bucket_slots, config.restarts, jax.devices()[0].platform, jax.device_count())

  # -- probes and configurations -----------------------------------------------------------

  def configuration(self, probe: Probe) -> T.Configuration:
    return self.sweep.configuration(probe)

  def _configurations(self, bucket: scheduler.Bucket) -> list[T.Configuration | None]:
    return [None if p is None else self.configuration(p) for p in bucket.slots]

  def _training(self) -> list[Probe]:
    return [p for b in self.state.buckets for p in b.probes]

  def _pending(self, key: str) -> set[int]:
    """Search coordinates of `key` whose probes are queued or training."""
    probes = self.state.queue + self._training()
    return {coordinate for k, coordinate in map(self.sweep.locate, probes) if k == key}

  def _fill_queue(self) -> None:
    """Each search proposes up to probes_per_search points in flight; restarts share a point."""
    for key, state in self.state.searches.items():
      pending = self._pending(key)
      room = self.config.probes_per_search - len(pending)
      if room > 0:
        for coordinate in search.propose(state, pending, room):
          self.state.queue += [self.sweep.probe(key, coordinate, self.config.seed + r)
                               for r in range(self.config.restarts)]

  # -- the buckets ------------------------------------------------------------------------

  def _fits_budget(self, shapes) -> bool:
    return batching.buckets_fit(shapes, self.config.memory_budget_mb, self.settings)

  def _shape_of(self, probe: Probe) -> T.BucketShape:
    """The shape a probe trains in (scheduler.target_shape); a new class is remembered."""
    own = batching.shape_class(self.configuration(probe))
    shape = scheduler.target_shape(own, self.state.shapes)
    if shape not in self.state.shapes:
      self.state.shapes.append(shape)
    return shape

  def _arrange(self, hosts: dict[int, T.TrainState]) -> None:
    """Queued probes into free or new slots of the buckets of their shape class.

    `hosts` holds the host copy of every bucket state already fetched this round; a bucket
    that changes is rebuilt from it on the host (a plain gather) and sent to the device.
    """
    s = self.state
    placements, s.queue = scheduler.arrange(
        s.buckets, s.queue, self._shape_of, self.slots_per_bucket, self.config.max_slots,
        self._fits_budget)
    if s.queue and not placements:
      shape = batching.shape_class(self.configuration(s.queue[0]))
      raise ValueError(f"config.memory_budget_mb={self.config.memory_budget_mb} is too small "
                       f"for one slot of {shape}: need >= {batching.slot_bytes(shape) / 2**20:.1f}")
    device = []
    for placed in placements:
      bucket, source = placed.bucket, placed.source
      if source is None:
        device.append(self.device[placed.previous])
        continue
      donors = sorted({i for i, _ in filter(None, source)})
      for i in donors:
        if i not in hosts:
          hosts[i] = T.to_host(self.device[i][1])
      # Donors share the bucket's shape: one concatenation, then a plain gather.
      offsets = {i: k * bucket.shape.slots for k, i in enumerate(donors)}
      previous = jax.tree.map(lambda *x: np.concatenate(x), *[hosts[i] for i in donors]) if donors else None
      configs = self._configurations(bucket)
      state = T.init_state(self.settings, bucket.shape, configs, previous,
                           [-1 if o is None else offsets[o[0]] + o[1] for o in source])
      device.append((T.place(T.pack(configs, bucket.shape)), T.place(state)))
      for probe, o in zip(bucket.slots, source):
        if probe is not None and o is None:
          self.started[probe] = time.time()
    s.buckets, self.device = [p.bucket for p in placements], device

  def _train_round(self) -> dict[int, T.TrainState]:
    """One chunk of every bucket, dispatched together, then harvested; returns the host copies
    of the bucket states fetched for the harvest."""
    s = self.state
    steps_before = [T.to_host(state.step) for _, state in self.device]
    blocks = []
    for i, (slots, state) in enumerate(self.device):
      state, ran = T.train_chunk(self.settings, slots, state, True)
      self.device[i] = (slots, state)
      blocks.append(ran)
    hosts = {}
    for i, (bucket, (_, state), ran) in enumerate(zip(s.buckets, self.device, blocks)):
      advanced = T.to_host(state.step) - steps_before[i]
      self._account(bucket, advanced, T.to_host(ran))
      stopped = T.to_host(state.stop_reason) != T.StopReason.RUNNING
      if any(p is not None and stopped[j] for j, p in enumerate(bucket.slots)):
        hosts[i] = T.to_host(state)
        self._harvest(bucket, hosts[i])
    return hosts

  def _account(self, bucket: scheduler.Bucket, advanced: np.ndarray, blocks: np.ndarray) -> None:
    """Every slot computes each step of the blocks its device ran, running or not."""
    work, shape = self.state.work, bucket.shape
    per_device = shape.slots // len(blocks)
    work["slot_steps_computed"] += int(blocks.sum()) * self.settings.eval_every * per_device
    work["slot_steps_running"] += int(advanced.sum())
    for probe, steps in zip(bucket.slots, advanced):
      if probe is not None and steps:
        c = self.configuration(probe)
        work["cells_real"] += int(steps) * c.query_count * c.n * c.d
        work["cells_padded"] += int(steps) * shape.queries * shape.documents * shape.dims

  # -- outcomes ---------------------------------------------------------------------------

  def _harvest(self, bucket: scheduler.Bucket, host: T.TrainState) -> None:
    """Record every slot that stopped, with its final embeddings for the certificate."""
    outcomes = T.outcomes(host)
    done = []
    for i, probe in enumerate(bucket.slots):
      if probe is None or outcomes[i]["stop_reason"] == "running":
        continue
      embeddings = T.embeddings(host, i, self.configuration(probe))
      shape = bucket.shape
      outcome = dict(outcomes[i], padded_shape=[shape.queries, shape.documents, shape.dims])
      done.append((probe, outcome, embeddings, time.time() - self.started.pop(probe, time.time())))
      bucket.slots[i] = None
    self._record(done)

  def _evaluate_constructions(self) -> None:
    """The `construction` protocol: each queued probe's closed-form embeddings, no training."""
    done = []
    for probe in self.state.queue:
      started = time.time()
      config = self.configuration(probe)
      table = config.relevance()
      queries = construct.queries_for_subsets(table, config.n, config.d).astype(np.float32)
      documents = construct.documents_on_curve(config.n, config.k, config.d).astype(np.float32)
      accuracy, margin = (float(x) for x in objective.retrieval_metrics(
          queries, documents, table, len(table), config.n))
      outcome = dict(success=accuracy >= 1.0, max_accuracy=accuracy, final_accuracy=accuracy,
                     final_loss=None, best_loss=None, stop_step=0, stop_reason="construction",
                     margin=margin, padded_shape=None)
      done.append((probe, outcome, (queries, documents), time.time() - started))
    self.state.queue = []
    self._record(done)

  def _record(self, done) -> None:
    """Results, certificates, witnesses and search outcomes of finished configurations.

    Every success is re-checked in float64 from its final embeddings: certified when all
    relevant documents of every query strictly outrank all others.
    """
    s = self.state
    records = []
    for probe, outcome, (queries, documents), seconds in done:
      table = self.configuration(probe).relevance()
      certified, margin64 = construct.certify(outcome["success"], queries, documents, table)
      record = dict(self._made_by(probe), **outcome, certified=certified, margin64=margin64,
                    wall_seconds=round(seconds, 3))
      key = store_lib.result_key(record)
      if key not in self.results:  # else a replay after resume: its line is written
        self.results[key] = record
        records.append(record)
      s.records.append(self.results[key])
      key, coordinate = self.sweep.locate(probe)
      if certified:
        self._certify(key, coordinate, margin64, probe, queries, documents, table)
      successes = s.seed_outcomes.setdefault((probe.d, probe.n), [])
      successes.append(outcome["success"])
      if len(successes) == self.config.restarts:
        s.searches[key] = search.record(s.searches[key], coordinate, any(successes))
    self.store.append_results(records)
    self.sweep.write(self.store, s.searches, s.certified, self._nonfinite())

  def _made_by(self, probe: Probe) -> dict:
    """The fields of a probe's results line that say which configuration made it."""
    config = self.configuration(probe)
    return dict(d=probe.d, n=probe.n, k=config.k, seed=probe.seed, protocol=self.config.protocol,
                loss=self.config.loss, optimizer=self.config.optimizer,
                learning_rate=config.learning_rate, temperature=config.temperature,
                num_queries=config.query_count)

  def _refuse_foreign(self, records, source) -> None:
    """Raise if a results line was not made by this config (a workdir whose config.json was
    removed or edited, or results copied from another sweep)."""
    for record in records:
      made_by = self._made_by(Probe(record["d"], record["n"], record["seed"]))
      differ = sorted(f for f, value in made_by.items() if record.get(f) != value)
      if differ:
        raise store_lib.ConfigMismatch(
            f"{source}: the line of d={record['d']}, n={record['n']}, seed={record['seed']} was "
            f"made by another config: fields {', '.join(differ)} differ (use a new --workdir, "
            f"or the same values)")

  def _nonfinite(self) -> frozenset[tuple[int, int]]:
    """(d, n) of every point with a restart that stopped as nonfinite (a NaN or inf loss, row
    or optimizer state, or a row without a direction): not a measured failure."""
    return frozenset((r["d"], r["n"]) for r in self.results.values()
                     if r["stop_reason"] == "nonfinite")

  def _certify(self, key, coordinate, margin64, probe, queries, documents, table) -> None:
    """Note a certified success; the search's most demanding one is kept as its witness."""
    s = self.state
    proven = dict(s.certified.get(key, []))
    proven[coordinate] = max(margin64, proven.get(coordinate, -np.inf))
    s.certified[key] = [[c, m] for c, m in sorted(proven.items())]
    if coordinate > s.witnesses.get(key, -1):
      s.witnesses[key] = coordinate
      self.store.write_witness(key, dict(
          queries=queries, documents=documents, relevance=table, d=probe.d, n=probe.n,
          seed=probe.seed, margin64=margin64))

  # -- checkpoints ------------------------------------------------------------------------

  def _abstract_train_states(self, driver_json: dict):
    """The saved states' structure, replicated on this run's devices, whatever their count."""
    replicated = jax.sharding.NamedSharding(T.slot_mesh(), jax.sharding.PartitionSpec())
    return {str(i): jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
        T.init_state(self.settings, bucket.shape, []))
        for i, bucket in enumerate(DriverState.from_json(driver_json).buckets)}

  def checkpoint(self) -> None:
    if self.device:  # the construction protocol trains nothing, so has nothing to resume
      states = {str(i): state for i, (_, state) in enumerate(self.device)}
      self.store.save_checkpoint(self.state.chunk, states,
                                 dict(self.state.to_json(), config=self.config.to_dict()))
    self.store.write_stats(self.stats())
    self._last_checkpoint = time.monotonic()

  def restore(self) -> bool:
    restored = self.store.restore_checkpoint(self._abstract_train_states, self.config.to_dict())
    if restored is None:
      return False
    _, states, driver_json = restored
    self.state = s = DriverState.from_json(driver_json)
    # The same buckets, their slots only padded to a multiple of this run's device count (a
    # checkpoint restores on any number of devices); the copy is exact, so the resumed run
    # computes what an uninterrupted one does.
    devices = jax.device_count()
    self.device = []
    for i, bucket in enumerate(s.buckets):
      extra = -bucket.shape.slots % devices
      bucket.shape = dataclasses.replace(bucket.shape, slots=bucket.shape.slots + extra)
      bucket.slots += [None] * extra
      configs = self._configurations(bucket)
      source = list(range(bucket.shape.slots - extra)) + [-1] * extra
      state = T.init_state(self.settings, bucket.shape, configs, T.to_host(states[str(i)]), source)
      self.device.append((T.place(T.pack(configs, bucket.shape)), T.place(state)))
    self.started = {p: time.time() for p in self._training()}
    return True

  # -- the loop ---------------------------------------------------------------------------

  def _start(self) -> bool:
    """Take over the workdir's state, if it is this config's: its checkpoint, its results made
    whole again against that checkpoint, then config.json. Nothing is written before every
    check passed. True when a checkpoint was resumed."""
    config = self.config.to_dict()
    self.store.check_config(config)
    resumed = self.restore()
    self._refuse_foreign(self.store.read_results(), self.store.results_path)
    self.results = self.store.reconcile_results(self.state.records)
    self.store.claim(config)
    return resumed

  def run(self, stop_requested: Callable[[], bool] = lambda: False,
          progress: Callable[[str], None] = logging.info) -> bool:
    """Run until every search is done (True) or a stop was requested (False)."""
    resumed = self._start()
    if resumed:
      progress(f"resumed {self.store.workdir} at chunk {self.state.chunk}")
    hosts: dict[int, T.TrainState] = {}
    while True:
      self._fill_queue()
      if not self.state.queue and not self._training():
        break
      if self.config.protocol == "construction":
        self._evaluate_constructions()
        self.state.chunk += 1
        progress(self._progress_line(0.0))
        continue
      self._arrange(hosts)
      steps_before = self.state.work["slot_steps_running"]
      started = time.perf_counter()
      hosts = self._train_round()
      seconds = time.perf_counter() - started
      self.state.chunk += 1
      steps = self.state.work["slot_steps_running"] - steps_before
      progress(self._progress_line(steps / max(seconds, 1e-9)))
      stop, due = _agreed(stop_requested(),
                          time.monotonic() - self._last_checkpoint >= self.config.checkpoint_every_s)
      if stop:
        self.checkpoint()
        return False
      if due:
        self.checkpoint()
    self.sweep.write(self.store, self.state.searches, self.state.certified, self._nonfinite())
    self.checkpoint()
    return True

  def stats(self) -> dict:
    """The sweep's efficiency figures (see `efficiency`), for run_stats.json and the console."""
    return efficiency(self.state.work)

  def _progress_line(self, steps_per_second: float) -> str:
    s = self.state
    brackets = self.sweep.brackets(s.searches)
    return (f"chunk {s.chunk}: {len(self.results)} done, {len(self._training())} running in "
            f"{len(s.buckets)} bucket(s), {len(s.queue)} queued, {steps_per_second:,.0f} steps/s "
            f"| {brackets}")
