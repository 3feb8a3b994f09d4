"""The sweep's loop: ledger -> pool -> results -> store -> checkpoint.

Each round the ledger's searches propose probes, the pool admits them into slots and trains
one chunk of every bucket, and every probe that stopped is certified in float64, written to
the results and observed by the ledger. The checkpoint holds the ledger, the pool and the
config. Nothing here depends on timing, only on the config and the outcomes, so a resumed
sweep replays exactly what an uninterrupted one does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import jax
import numpy as np
from jax.experimental import multihost_utils
from ml_collections import ConfigDict

from sweep import certify, scheduler, targets
from sweep.config import settings_of, validate_config
from sweep.ledger import Ledger
from sweep.pool import ConstructionPool, Finished, TrainingPool
from sweep.problems import Probe
from sweep.config import ConfigMismatch
from sweep.store import Store


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
    self.target = targets.for_config(config)
    self.ledger = Ledger.start(self.target.specs())
    self.pool = self._new_pool()
    self.chunk = 0
    self._last_checkpoint = time.monotonic()

  def _new_pool(self):
    c = self.config
    if c.protocol == "construction":
      return ConstructionPool(self.target.configuration, c.criterion, c.criterion_epsilon)
    slots = scheduler.slots_per_bucket(c.bucket_slots, c.restarts, jax.devices()[0].platform,
                                       jax.device_count())
    return TrainingPool(settings_of(c), self.target.configuration, slots, c.max_slots,
                        c.memory_budget_mb)

  # -- results ----------------------------------------------------------------------------

  def _made_by(self, probe: Probe) -> dict:
    """The fields of a probe's results line that say which configuration made it."""
    config = self.target.configuration(probe)
    return dict(d=probe.d, n=probe.n, k=config.k, seed=probe.seed, protocol=self.config.protocol,
                loss=self.config.loss, criterion=self.config.criterion,
                optimizer=self.config.optimizer,
                learning_rate=config.learning_rate, temperature=config.temperature,
                num_queries=config.query_count)

  def _record(self, finished: list[Finished]) -> None:
    """Results, certificates and witnesses of finished configurations, then the report.

    Every success is re-checked in float64 from its final embeddings: certified when all
    relevant documents of every query strictly outrank all others.
    """
    lines = []
    for done in finished:
      queries, documents = done.embeddings
      table = self.target.configuration(done.probe).relevance()
      certified, margin64 = certify.success_certificate(done.outcome["success"], queries, documents, table,
                                              self.config.criterion, self.config.criterion_epsilon)
      record = dict(self._made_by(done.probe), **done.outcome, certified=certified,
                    margin64=margin64, wall_seconds=round(done.seconds, 3))
      observed = self.ledger.observe(self.target, done.probe, record, self.config.restarts,
                                     self.config.restarts_until_success)
      if observed.new_record is not None:
        lines.append(observed.new_record)
      if observed.witness is not None:
        self.store.write_witness(observed.witness, dict(
            queries=queries, documents=documents, relevance=table, d=done.probe.d,
            n=done.probe.n, seed=done.probe.seed, margin64=margin64,
            criterion=self.config.criterion, criterion_epsilon=self.config.criterion_epsilon))
    self.store.append_results(lines)
    self._write_report()

  def _write_report(self) -> None:
    self.store.write_report(self.target.REPORT, self.target.report(self.ledger))

  def _refuse_foreign(self, records, source) -> None:
    """Raise if a results line was not made by this config (a workdir whose config.json was
    removed or edited, or results copied from another sweep)."""
    for record in records:
      made_by = self._made_by(Probe(record["d"], record["n"], record["seed"]))
      differ = sorted(f for f, value in made_by.items() if record.get(f) != value)
      if differ:
        raise ConfigMismatch(
            f"{source}: the line of d={record['d']}, n={record['n']}, seed={record['seed']} was "
            f"made by another config: fields {', '.join(differ)} differ (use a new --workdir, "
            f"or the same values)")

  # -- checkpoints ------------------------------------------------------------------------

  def state_json(self) -> dict:
    """What a checkpoint holds besides the device states: ledger, pool, chunk and config."""
    return dict(ledger=self.ledger.to_json(), pool=self.pool.to_json(), chunk=self.chunk,
                config=self.config.to_dict())

  def checkpoint(self) -> None:
    states = self.pool.states()
    if states:  # the construction protocol trains nothing, so has nothing to resume
      self.store.checkpoints.save(self.chunk, states, self.state_json())
    self.store.write_stats(self.stats())
    self._last_checkpoint = time.monotonic()

  def restore(self) -> bool:
    """Continue from the workdir's newest readable checkpoint, if it has one of this config."""
    restored = self.store.checkpoints.restore(
        lambda saved: self.pool.abstract_states(saved["pool"]), self.config.to_dict())
    if restored is None:
      return False
    _, states, saved = restored
    self.ledger = Ledger.from_json(saved["ledger"])
    self.pool.restore(saved["pool"], states)
    self.chunk = saved["chunk"]
    return True

  def _start(self) -> bool:
    """Take over the workdir's state, if it is this config's: its checkpoint, its results made
    whole again against that checkpoint, then config.json and the fixed witnesses. Nothing is
    written before every check passed. True when a checkpoint was resumed."""
    config = self.config.to_dict()
    self.store.check_config(config)
    resumed = self.restore()
    self._refuse_foreign(self.store.read_results(), self.store.results_path)
    self.ledger.results = self.store.reconcile_results(self.ledger.records)
    self.store.claim(config)
    for name, arrays in self.target.fixed_witnesses().items():
      self.store.write_witness(name, arrays)
    return resumed

  # -- the loop ---------------------------------------------------------------------------

  def run(self, stop_requested: Callable[[], bool] = lambda: False,
          progress: Callable[[str], None] = logging.info) -> bool:
    """Run until every search is done (True) or a stop was requested (False)."""
    if self._start():
      progress(f"resumed {self.store.workdir} at chunk {self.chunk}")
    c, ledger, pool = self.config, self.ledger, self.pool
    while True:
      ledger.propose(self.target, pool.training, c.probes_per_search, c.restarts, c.seed,
                     c.restarts_until_success)
      if ledger.done(pool.training):
        break
      ledger.queue = pool.admit(ledger.queue)
      steps_before = pool.work["slot_steps_running"]
      started = time.perf_counter()
      self._record(pool.train_round())
      seconds = time.perf_counter() - started
      self.chunk += 1
      steps = pool.work["slot_steps_running"] - steps_before
      progress(self._progress_line(steps / max(seconds, 1e-9)))
      stop, due = _agreed(stop_requested(),
                          time.monotonic() - self._last_checkpoint >= c.checkpoint_every_s)
      if stop or due:
        self.checkpoint()
      if stop:
        return False
    self._write_report()
    self.checkpoint()
    return True

  def stats(self) -> dict:
    """The sweep's efficiency figures (pool.efficiency), for run_stats.json and the console."""
    return self.pool.efficiency()

  def _progress_line(self, steps_per_second: float) -> str:
    pool = self.pool
    return (f"chunk {self.chunk}: {len(self.ledger.results)} done, {len(pool.training)} running "
            f"in {len(pool.buckets)} bucket(s), {len(self.ledger.queue)} queued, "
            f"{steps_per_second:,.0f} steps/s | {self.target.progress(self.ledger)}")
