"""The sweep: critical-n searches for every dimension at once, fed by one bucket of slots.

Each chunk boundary: finished slots are harvested (results.jsonl grows, searches learn the
outcome of every n whose restarts are all done), searches propose new n, and free slots
take the queued probes (continuous batching; the bucket grows or shrinks when the probes
need it). Nothing here depends on timing, only on the config and the outcomes, so a
resumed sweep replays exactly what an uninterrupted one does.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable

import jax
import numpy as np
from ml_collections import ConfigDict

from sweep import batching, objective, search
from sweep import trainer as T
from sweep.store import Store

# The paper's fit of its Table 6 (k = 2), used to start each search near its boundary.
PAPER_CUBIC = (-10.5322, 4.0309, 0.0520, 0.0037)


def default_config() -> ConfigDict:
  """Every config field with the reference protocol's values (PROTOCOL.md)."""
  return ConfigDict(dict(
      dims=(4, 5, 6), k=2, restarts=1, seed=42, learning_rate=0.01, temperature=0.1,
      loss="code", optimizer="adam", max_steps=100_000, patience=1000, min_delta=1e-5,
      eval_every=50, num_queries=0, start_n=0, max_n=0, local_sweep=4, probes_per_search=2,
      max_slots=64, chunk_evals=20, memory_budget_mb=2048.0, checkpoint_every_s=60.0,
      label=""))


def _check(ok: bool, field: str, value, allowed: str) -> None:
  if not ok:
    raise ValueError(f"config.{field}={value!r} is out of range: need {allowed}")


def validate_config(config: ConfigDict) -> None:
  """One-line errors for bad values, before any work starts."""
  unknown = sorted(set(config) - set(default_config()))
  if unknown:
    raise ValueError(f"config has unknown fields {unknown}: allowed are {sorted(default_config())}")
  dims = tuple(config.dims)
  _check(len(dims) > 0, "dims", dims, "a non-empty tuple of dimensions")
  _check(all(isinstance(d, int) and d >= 1 for d in dims), "dims", dims, "every d >= 1")
  _check(len(set(dims)) == len(dims), "dims", dims, "distinct dimensions")
  for field, minimum in (("k", 1), ("restarts", 1), ("max_steps", 1), ("patience", 1),
                         ("eval_every", 1), ("probes_per_search", 1), ("max_slots", 1),
                         ("chunk_evals", 1), ("seed", 0), ("num_queries", 0),
                         ("start_n", 0), ("max_n", 0), ("local_sweep", 0)):
    value = config[field]
    _check(isinstance(value, int) and value >= minimum, field, value, f"an integer >= {minimum}")
  for field in ("learning_rate", "temperature", "memory_budget_mb", "checkpoint_every_s"):
    _check(config[field] > 0, field, config[field], "> 0")
  _check(config.min_delta >= 0, "min_delta", config.min_delta, ">= 0")
  _check(config.loss in objective.LOSS_FORMS, "loss", config.loss, f"one of {objective.LOSS_FORMS}")
  _check(config.start_n == 0 or config.start_n > config.k, "start_n", config.start_n,
         "0 (automatic) or > k")
  _check(config.max_n == 0 or config.max_n >= max(config.start_n, config.k + 1), "max_n",
         config.max_n, "0 (automatic) or >= start_n and > k")
  try:
    settings_of(config)
  except ValueError as error:
    raise ValueError(f"config.{error}") from None


def settings_of(config: ConfigDict) -> T.TrainSettings:
  return T.TrainSettings(loss=config.loss, optimizer=config.optimizer, max_steps=config.max_steps,
                         patience=config.patience, min_delta=config.min_delta,
                         eval_every=config.eval_every, chunk_evals=config.chunk_evals)


def start_n(config: ConfigDict, d: int) -> int:
  """config.start_n, or the paper's cubic at d (k = 2, d >= 4), else just above k."""
  if config.start_n:
    return config.start_n
  if config.k == 2 and d >= 4:
    return max(config.k + 1, round(sum(c * d**i for i, c in enumerate(PAPER_CUBIC))))
  return config.k + 1


def max_n(config: ConfigDict, d: int) -> int:
  """config.max_n, or the largest n whose single slot fits memory_budget_mb.

  The ceiling ends a search that never fails (a sampled problem, a d >= 2k protocol that
  keeps succeeding) instead of galloping until memory runs out.
  """
  if config.max_n:
    return config.max_n
  def fits(n):
    probe = T.Configuration(d=d, n=n, k=config.k, num_queries=(
        config.num_queries if 0 < config.num_queries < math.comb(n, config.k) else None))
    return batching.slots_within(batching.shape_class(probe), config.memory_budget_mb) >= 1
  if not fits(config.k + 1):
    raise ValueError(f"config.memory_budget_mb={config.memory_budget_mb} is out of range: "
                     f"too small for one slot at d={d}, n={config.k + 1}")
  lo, hi = config.k + 1, config.k + 2
  while fits(hi):
    lo, hi = hi, 2 * hi
  while hi - lo > 1:
    mid = (lo + hi) // 2
    lo, hi = (mid, hi) if fits(mid) else (lo, mid)
  return lo


@dataclasses.dataclass(frozen=True)
class Probe:
  """One configuration to train: a restart of a search's probe point."""
  d: int
  n: int
  seed: int


@dataclasses.dataclass
class DriverState:
  """Everything the driver decides from; JSON round-trips go into every checkpoint."""
  searches: dict[int, search.SearchState]
  queue: list[Probe]                    # probes waiting for a slot, in order
  slots: list[Probe | None]             # the probe each slot of the bucket trains
  shape: T.BucketShape | None
  seed_outcomes: dict[tuple[int, int], list[bool]]  # (d, n) -> successes of finished restarts
  chunk: int = 0

  def to_json(self) -> dict:
    return dict(
        searches={str(d): s.to_json() for d, s in self.searches.items()},
        queue=[dataclasses.astuple(p) for p in self.queue],
        slots=[None if p is None else dataclasses.astuple(p) for p in self.slots],
        shape=None if self.shape is None else dataclasses.asdict(self.shape),
        seed_outcomes=[[d, n, s] for (d, n), s in self.seed_outcomes.items()],
        chunk=self.chunk)

  @classmethod
  def from_json(cls, data: dict) -> "DriverState":
    return cls(
        searches={int(d): search.SearchState.from_json(s) for d, s in data["searches"].items()},
        queue=[Probe(*p) for p in data["queue"]],
        slots=[None if p is None else Probe(*p) for p in data["slots"]],
        shape=None if data["shape"] is None else T.BucketShape(**data["shape"]),
        seed_outcomes={(d, n): list(s) for d, n, s in data["seed_outcomes"]},
        chunk=data["chunk"])


class Driver:
  """Runs one sweep in one workdir."""

  def __init__(self, config: ConfigDict, store: Store):
    validate_config(config)
    self.config = config
    self.store = store
    self.settings = settings_of(config)
    self.results: dict[tuple, dict] = {}
    self.state = DriverState(
        searches={d: search.new_search(search.SearchSpec(
            start_n=min(start_n(config, d), max_n(config, d)), floor_n=config.k,
            local_sweep=config.local_sweep, ceiling_n=max_n(config, d)))
            for d in config.dims},
        queue=[], slots=[], shape=None, seed_outcomes={})
    self.train_state: T.TrainState | None = None
    self.slot_started: dict[int, float] = {}
    self._last_checkpoint = time.monotonic()
    self.slot_steps_computed = self.slot_steps_useful = 0

  # -- probes and configurations -----------------------------------------------------------

  def configuration(self, probe: Probe) -> T.Configuration:
    c = self.config
    sampled = 0 < c.num_queries < math.comb(probe.n, c.k)  # small n keep all their queries
    return T.Configuration(d=probe.d, n=probe.n, k=c.k, seed=probe.seed,
                           learning_rate=c.learning_rate, temperature=c.temperature,
                           num_queries=c.num_queries if sampled else None)

  def _pack(self, assignment) -> T.Slots:
    return T.pack([None if p is None else self.configuration(p) for p in assignment],
                  self.state.shape)

  def _pending_n(self, d: int) -> set[int]:
    probes = self.state.queue + [p for p in self.state.slots if p is not None]
    return {p.n for p in probes if p.d == d}

  def _fill_queue(self) -> None:
    """Each search proposes up to probes_per_search points in flight; restarts share a point."""
    for d, state in sorted(self.state.searches.items()):
      pending = self._pending_n(d)
      room = self.config.probes_per_search - len(pending)
      if room > 0:
        for n in search.propose(state, pending, room):
          self.state.queue += [Probe(d, n, self.config.seed + r) for r in range(self.config.restarts)]

  # -- the bucket -------------------------------------------------------------------------

  def _fits_budget(self, shape: T.BucketShape) -> bool:
    return batching.slots_within(shape, self.config.memory_budget_mb) >= shape.slots

  def _arrange_bucket(self) -> None:
    """Give free slots the queued probes; resize the bucket when they need it."""
    s = self.state
    running = [p for p in s.slots if p is not None]
    take = s.queue[:max(0, self.config.max_slots - len(running))]
    while True:
      wanted = running + take
      shape = batching.covering([self.configuration(p) for p in wanted],
                                batching.power_of_two_at_least(len(wanted)))
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
    slots = jax.device_put(self._pack(s.slots))  # sent once, not with every chunk
    if self.train_state is None:
      self.train_state = T.init_state(self.settings, s.shape, slots)
    else:
      self.train_state = T.rebuild(self.settings, s.shape, slots, self.train_state,
                                   np.asarray(source, np.int32))
    self._slots = slots

  # -- outcomes ---------------------------------------------------------------------------

  def _harvest(self) -> int:
    """Record every slot that stopped; returns how many did."""
    s = self.state
    stopped = ~T.running(self.train_state)
    finished = [i for i, p in enumerate(s.slots) if p is not None and stopped[i]]
    if not finished:
      return 0
    outcomes = T.outcomes(self.train_state)
    records = []
    for i in finished:
      probe, outcome = s.slots[i], outcomes[i]
      record = dict(d=probe.d, n=probe.n, k=self.config.k, seed=probe.seed, loss=self.config.loss,
                    optimizer=self.config.optimizer, learning_rate=self.config.learning_rate,
                    temperature=self.config.temperature, num_queries=self.configuration(probe).query_count,
                    **outcome, wall_seconds=round(time.time() - self.slot_started.get(i, time.time()), 3))
      key = (probe.d, probe.n, self.config.k, probe.seed)
      if key not in self.results:  # a replay after resume finds what it wrote before
        self.results[key] = record
        records.append(record)
      s.slots[i] = None
      successes = s.seed_outcomes.setdefault((probe.d, probe.n), [])
      successes.append(outcome["success"])
      if len(successes) == self.config.restarts:
        s.searches[probe.d] = search.record(s.searches[probe.d], probe.n, any(successes))
    self.store.append_results(records)
    self.store.write_critical_n(self.summary())
    return len(finished)

  def summary(self) -> list[dict]:
    return [dict(d=d, k=self.config.k, **search.summary(st))
            for d, st in sorted(self.state.searches.items())]

  # -- checkpoints ------------------------------------------------------------------------

  def _abstract_train_state(self, driver_json: dict):
    restored = DriverState.from_json(driver_json)
    shape = restored.shape
    configs = [None if p is None else self.configuration(p) for p in restored.slots]
    return jax.eval_shape(lambda s: T.init_state(self.settings, shape, s), T.pack(configs, shape))

  def checkpoint(self) -> None:
    if self.train_state is not None:
      self.store.save_checkpoint(self.state.chunk, self.train_state, self.state.to_json())
    self._last_checkpoint = time.monotonic()

  def restore(self) -> bool:
    restored = self.store.restore_checkpoint(self._abstract_train_state)
    if restored is None:
      return False
    _, train_state, driver_json = restored
    # Through the host, so the arrays are placed like fresh ones and hit the same compiled
    # programs instead of compiling every bucket shape again.
    self.train_state = jax.device_get(train_state)
    self.state = DriverState.from_json(driver_json)
    self._slots = jax.device_put(self._pack(self.state.slots))
    self.slot_started = {i: time.time() for i, p in enumerate(self.state.slots) if p is not None}
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
      self._arrange_bucket()
      steps_before = np.asarray(self.train_state.step)
      started = time.perf_counter()
      self.train_state = T.train_chunk(self.settings, self._slots, self.train_state)
      advanced = np.asarray(self.train_state.step) - steps_before
      seconds = time.perf_counter() - started
      self._account(advanced)
      steps = advanced.sum()
      self.state.chunk += 1
      self._harvest()
      progress(self._progress_line(steps / max(seconds, 1e-9)))
      if stop_requested():
        self.checkpoint()
        return False
      if time.monotonic() - self._last_checkpoint >= self.config.checkpoint_every_s:
        self.checkpoint()
    self.store.write_critical_n(self.summary())
    self.checkpoint()
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
    brackets = " ".join(
        f"d={row['d']}:{row['critical_n']}" if row["done"] else
        f"d={row['d']}:[{row['lo']},{row['hi'] if row['hi'] is not None else '?'}]"
        for row in self.summary())
    return (f"chunk {s.chunk}: {len(self.results)} done, {running} running, {len(s.queue)} queued, "
            f"{steps_per_second:,.0f} steps/s | {brackets}")
