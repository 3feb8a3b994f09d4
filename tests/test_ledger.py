"""The ledger driven by hand, no device: probes proposed, outcomes observed, JSON round trips."""

import json

from sweep import config as config_lib
from sweep import targets
from sweep.ledger import Ledger, result_key
from sweep.problems import Probe

RESTARTS = 2


def _target(**overrides):
  config = config_lib.default_config()
  config.update({**dict(dims=(4, 5), restarts=RESTARTS, start_n=6, max_n=40, local_sweep=1,
                        probes_per_search=2), **overrides})
  return targets.CriticalN(config), config


def _record(probe: Probe, success: bool, certified: bool, margin64: float = 0.5,
            stop_reason: str = "success") -> dict:
  return dict(d=probe.d, n=probe.n, k=2, seed=probe.seed, success=success,
              certified=certified, margin64=margin64 if certified else None,
              stop_reason=stop_reason if success else "plateau")


def _boundary(probe: Probe) -> int:
  """The made-up truth the hand-driven outcomes follow: n <= 9 + d trains; of n = 9 + d only
  the first seed."""
  return probe.n < 9 + probe.d or (probe.n == 9 + probe.d and probe.seed == 42)


def _drive(ledger: Ledger, target, config, rounds: int | None = None) -> list[Probe]:
  """Proposes, then observes every queued probe by `_boundary`, round after round; returns
  the probes in the order observed."""
  observed = []
  while rounds is None or rounds > 0:
    ledger.propose(target, [], config.probes_per_search, config.restarts, config.seed)
    if ledger.done([]):
      break
    queue, ledger.queue = ledger.queue, []
    for probe in queue:
      success = _boundary(probe)
      ledger.observe(target, probe, _record(probe, success, success), config.restarts)
      observed.append(probe)
    rounds = None if rounds is None else rounds - 1
  return observed


def test_the_ledger_finds_the_boundary_its_outcomes_define():
  target, config = _target()
  ledger = Ledger.start(target.specs())
  observed = _drive(ledger, target, config)
  rows = {r["d"]: r for r in target.report(ledger)}
  # Any seed's success counts for a point: n = 9 + d succeeds (seed 42), n = 10 + d fails.
  assert {d: (r["critical_n"], r["done"], r["critical_n_certified"]) for d, r in rows.items()} == {
      4: (13, True, 13), 5: (14, True, 14)}
  # Every point was probed with both seeds, queued together, each once.
  points = {(p.d, p.n) for p in observed}
  assert sorted((p.d, p.n, p.seed) for p in observed) == sorted(
      (d, n, config.seed + r) for d, n in points for r in range(RESTARTS))
  assert all(len(ledger.seed_outcomes[point]) == RESTARTS for point in points)
  # The witness of each search is its largest certified n.
  assert ledger.witnesses == {f"d={d}": max(n for e, n in points if e == d and n <= 9 + d)
                              for d in (4, 5)}
  assert len(ledger.records) == len(observed) == len(ledger.results)


def test_a_ledger_restored_from_json_proposes_what_the_original_does():
  target, config = _target()
  original = Ledger.start(target.specs())
  _drive(original, target, config, rounds=2)
  restored = Ledger.from_json(json.loads(json.dumps(original.to_json())))
  restored.results = {result_key(r): r for r in restored.records}
  assert _drive(restored, target, config) == _drive(original, target, config)
  assert restored.to_json() == original.to_json()


def test_a_replayed_configuration_is_counted_but_not_written_twice():
  target, config = _target(dims=(4,))
  ledger = Ledger.start(target.specs())
  probe = Probe(4, 6, 42)
  first = _record(probe, True, True, margin64=0.25)
  ledger.results = {result_key(first): first}  # written before a kill, after the checkpoint
  observed = ledger.observe(target, probe, dict(first, margin64=0.75), RESTARTS)
  assert observed.new_record is None and observed.witness == "d=4"
  assert ledger.records == [first]  # the line as written, not the replay's
  assert ledger.certified == {"d=4": [[6, 0.75]]}
  assert ledger.searches["d=4"].outcomes == ()  # one restart of two is in
  assert ledger.observe(target, Probe(4, 6, 43), _record(Probe(4, 6, 43), False, False),
                        RESTARTS).new_record is not None
  assert ledger.searches["d=4"].outcomes == ((6, True),)


def test_nonfinite_points_are_named():
  target, config = _target(dims=(4,))
  ledger = Ledger.start(target.specs())
  broken = dict(_record(Probe(4, 7, 42), False, False), stop_reason="nonfinite")
  ledger.observe(target, Probe(4, 7, 42), broken, RESTARTS)
  assert ledger.nonfinite() == frozenset({(4, 7)})
