"""The sweep: all its searches at once (critical n per d, or critical d of a relevance
matrix; see sweeps.py), fed by one bucket of slots.

Each chunk boundary: finished slots are harvested (results.jsonl grows, searches learn the
outcome of every point whose restarts are all done), searches propose new points, and free slots
take the queued probes (continuous batching; the bucket grows or shrinks when the probes
need it). Nothing here depends on timing, only on the config and the outcomes, so a
resumed sweep replays exactly what an uninterrupted one does.
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

from sweep import batching, construct, objective, search, sweeps
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
  slots: list[Probe | None]             # the probe each slot of the bucket trains
  shape: T.BucketShape | None
  seed_outcomes: dict[tuple[int, int], list[bool]]  # (d, n) -> successes of finished restarts
  chunk: int = 0
  certified: dict[str, list] = dataclasses.field(default_factory=dict)  # key -> [[coord, margin64]]
  witnesses: dict[str, int] = dataclasses.field(default_factory=dict)  # key -> coordinate kept

  def to_json(self) -> dict:
    return dict(
        searches={key: s.to_json() for key, s in self.searches.items()},
        queue=[dataclasses.astuple(p) for p in self.queue],
        slots=[None if p is None else dataclasses.astuple(p) for p in self.slots],
        shape=None if self.shape is None else dataclasses.asdict(self.shape),
        seed_outcomes=[[d, n, s] for (d, n), s in self.seed_outcomes.items()],
        chunk=self.chunk, certified=self.certified, witnesses=self.witnesses)

  @classmethod
  def from_json(cls, data: dict) -> "DriverState":
    return cls(
        searches={key: search.SearchState.from_json(s) for key, s in data["searches"].items()},
        queue=[Probe(*p) for p in data["queue"]],
        slots=[None if p is None else Probe(*p) for p in data["slots"]],
        shape=None if data["shape"] is None else T.BucketShape(**data["shape"]),
        seed_outcomes={(d, n): list(s) for d, n, s in data["seed_outcomes"]},
        chunk=data["chunk"], certified={k: [list(p) for p in v] for k, v in data["certified"].items()},
        witnesses=data["witnesses"])


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
        queue=[], slots=[], shape=None, seed_outcomes={})
    self.train_state: T.TrainState | None = None
    self.slot_started: dict[int, float] = {}
    self._last_checkpoint = time.monotonic()
    self.slot_steps_computed = self.slot_steps_useful = 0

  # -- probes and configurations -----------------------------------------------------------

  def configuration(self, probe: Probe) -> T.Configuration:
    return self.sweep.configuration(probe)

  def _pack(self, assignment) -> T.Slots:
    return T.pack([None if p is None else self.configuration(p) for p in assignment],
                  self.state.shape)

  def _pending(self, key: str) -> set[int]:
    """Search coordinates of `key` whose probes are queued or training."""
    probes = self.state.queue + [p for p in self.state.slots if p is not None]
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

  # -- the bucket -------------------------------------------------------------------------

  def _fits_budget(self, shape: T.BucketShape) -> bool:
    return batching.slots_within(shape, self.config.memory_budget_mb, self.settings) >= shape.slots

  def _arrange_bucket(self) -> None:
    """Give free slots the queued probes; resize the bucket when they need it."""
    s = self.state
    running = [p for p in s.slots if p is not None]
    take = s.queue[:max(0, self.config.max_slots - len(running))]
    while True:
      wanted = running + take
      shape = batching.covering([self.configuration(p) for p in wanted],
                                batching.slot_count(len(wanted), jax.device_count()))
      if self._fits_budget(shape) or len(wanted) <= 1:
        break
      if not take:
        raise ValueError(f"config.memory_budget_mb={self.config.memory_budget_mb} cannot hold "
                         f"the {len(running)} running slots of {shape}")
      take = take[:-1]
    if not self._fits_budget(shape):
      raise ValueError(f"config.memory_budget_mb={self.config.memory_budget_mb} is too small "
                       f"for one slot of {shape}: need >= {batching.slot_bytes(shape) / 2**20:.1f}")
    s.queue = s.queue[len(take):]
    cost = lambda b: batching.slot_bytes(b) * b.slots  # compute scales like memory
    free = [i for i, p in enumerate(s.slots) if p is None]
    in_place = (s.shape is not None and len(take) <= len(free)
                and all(s.shape.holds(self.configuration(p)) for p in take)
                and cost(s.shape) <= 2 * cost(shape))
    if in_place:
      if not take:
        return
      source = list(range(s.shape.slots))
      for i, probe in zip(free, take):
        s.slots[i], source[i] = probe, -1
    else:
      kept = [i for i, p in enumerate(s.slots) if p is not None]
      s.shape = shape
      s.slots = ([s.slots[i] for i in kept] + take + [None] * shape.slots)[:shape.slots]
      source = kept + [-1] * (shape.slots - len(kept))
      self.slot_started = {j: self.slot_started.get(i, time.time()) for j, i in enumerate(kept)}
    for i, p in enumerate(s.slots):
      if p is not None and source[i] == -1:
        self.slot_started[i] = time.time()
    slots = T.place(self._pack(s.slots))  # sent once, not with every chunk
    if self.train_state is None:
      self.train_state = T.init_state(self.settings, s.shape, slots)
    else:
      self.train_state = T.rebuild(self.settings, s.shape, slots, self.train_state,
                                   np.asarray(source, np.int32))
    self._slots = slots

  # -- outcomes ---------------------------------------------------------------------------

  def _harvest(self) -> None:
    """Record every slot that stopped, with its final embeddings for the certificate."""
    s = self.state
    stopped = ~T.running(self.train_state)
    finished = [i for i, p in enumerate(s.slots) if p is not None and stopped[i]]
    if not finished:
      return
    outcomes = T.outcomes(self.train_state)
    done = []
    for i in finished:
      probe = s.slots[i]
      embeddings = T.embeddings(self.train_state, i, self.configuration(probe))
      done.append((probe, outcomes[i], embeddings, time.time() - self.slot_started.get(i, time.time())))
      s.slots[i] = None
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
                     margin=margin)
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
      config = self.configuration(probe)
      table = config.relevance()
      certified, margin64 = construct.certify(outcome["success"], queries, documents, table)
      record = dict(d=probe.d, n=probe.n, k=config.k, seed=probe.seed, protocol=self.config.protocol,
                    loss=self.config.loss, optimizer=self.config.optimizer,
                    learning_rate=config.learning_rate, temperature=config.temperature,
                    num_queries=config.query_count, **outcome, certified=certified,
                    margin64=margin64, wall_seconds=round(seconds, 3))
      if store_lib.result_key(record) not in self.results:  # a replay after resume
        self.results[store_lib.result_key(record)] = record
        records.append(record)
      key, coordinate = self.sweep.locate(probe)
      if certified:
        self._certify(key, coordinate, margin64, probe, queries, documents, table)
      successes = s.seed_outcomes.setdefault((probe.d, probe.n), [])
      successes.append(outcome["success"])
      if len(successes) == self.config.restarts:
        s.searches[key] = search.record(s.searches[key], coordinate, any(successes))
    self.store.append_results(records)
    self.sweep.write(self.store, s.searches, s.certified)

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

  def _abstract_train_state(self, driver_json: dict):
    """The saved state's structure, replicated on this run's devices, whatever their count."""
    restored = DriverState.from_json(driver_json)
    shape = restored.shape
    configs = [None if p is None else self.configuration(p) for p in restored.slots]
    replicated = jax.sharding.NamedSharding(T.slot_mesh(), jax.sharding.PartitionSpec())
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
        jax.eval_shape(lambda s: T.init_state(self.settings, shape, s), T.pack(configs, shape)))

  def checkpoint(self) -> None:
    if self.train_state is not None:
      self.store.save_checkpoint(self.state.chunk, self.train_state, self.state.to_json())
    self._last_checkpoint = time.monotonic()

  def restore(self) -> bool:
    restored = self.store.restore_checkpoint(self._abstract_train_state)
    if restored is None:
      return False
    _, train_state, driver_json = restored
    self.state = s = DriverState.from_json(driver_json)
    # The same bucket, its slots only padded to a multiple of this run's device count (a
    # checkpoint restores on any number of devices); the rebuild copies, so the resumed
    # run computes exactly what an uninterrupted one does.
    devices = jax.device_count()
    extra = -s.shape.slots % devices
    s.shape = dataclasses.replace(s.shape, slots=s.shape.slots + extra)
    s.slots += [None] * extra
    self._slots = T.place(self._pack(s.slots))
    source = np.concatenate([np.arange(s.shape.slots - extra), -np.ones(extra)]).astype(np.int32)
    self.train_state = T.rebuild(self.settings, s.shape, self._slots, train_state, source)
    self.slot_started = {i: time.time() for i, p in enumerate(s.slots) if p is not None}
    return True

  # -- the loop ---------------------------------------------------------------------------

  def run(self, stop_requested: Callable[[], bool] = lambda: False,
          progress: Callable[[str], None] = logging.info) -> bool:
    """Run until every search is done (True) or a stop was requested (False)."""
    self.results = self.store.load_results(repair=True)
    if self.restore():
      progress(f"resumed {self.store.workdir} at chunk {self.state.chunk}")
    while True:
      self._fill_queue()
      if not self.state.queue and not any(self.state.slots):
        break
      if self.config.protocol == "construction":
        self._evaluate_constructions()
        self.state.chunk += 1
        progress(self._progress_line(0.0))
        continue
      self._arrange_bucket()
      steps_before = T.to_host(self.train_state.step)
      started = time.perf_counter()
      self.train_state = T.train_chunk(self.settings, self._slots, self.train_state)
      advanced = T.to_host(self.train_state.step) - steps_before
      seconds = time.perf_counter() - started
      self._account(advanced)
      steps = advanced.sum()
      self.state.chunk += 1
      self._harvest()
      progress(self._progress_line(steps / max(seconds, 1e-9)))
      stop, due = _agreed(stop_requested(),
                          time.monotonic() - self._last_checkpoint >= self.config.checkpoint_every_s)
      if stop:
        self.checkpoint()
        return False
      if due:
        self.checkpoint()
    self.sweep.write(self.store, self.state.searches, self.state.certified)
    self.checkpoint()
    if self.slot_steps_computed:
      progress(f"slot-steps on running configurations: {self.useful_fraction():.0%} of those "
               f"computed (the rest went to finished, empty or padded-out slots)")
    return True

  def _account(self, advanced: np.ndarray) -> None:
    """Every slot computes each step of a block, running or not; count how many were useful."""
    eval_every = self.settings.eval_every
    blocks = -(-int(advanced.max()) // eval_every)
    self.slot_steps_computed += blocks * eval_every * len(advanced)
    self.slot_steps_useful += int(advanced.sum())

  def useful_fraction(self) -> float:
    return self.slot_steps_useful / max(self.slot_steps_computed, 1)

  def _progress_line(self, steps_per_second: float) -> str:
    s = self.state
    running = sum(p is not None for p in s.slots)
    brackets = self.sweep.brackets(s.searches)
    return (f"chunk {s.chunk}: {len(self.results)} done, {running} running, {len(s.queue)} queued, "
            f"{steps_per_second:,.0f} steps/s | {brackets}")
