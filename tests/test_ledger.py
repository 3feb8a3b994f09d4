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


def _drive(ledger: Ledger, target, config, rounds: int | None = None,
           outcome=_boundary) -> list[Probe]:
  """Proposes, then observes every queued probe by `outcome`, round after round; returns
  the probes in the order observed."""
  observed = []
  while rounds is None or rounds > 0:
    ledger.propose(target, [], config.probes_per_search, config.restarts, config.seed,
                   config.restarts_until_success)
    if ledger.done([]):
      break
    queue, ledger.queue = ledger.queue, []
    for probe in queue:
      success = outcome(probe)
      ledger.observe(target, probe, _record(probe, success, success), config.restarts,
                     config.restarts_until_success)
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


def _late_seeds(probe: Probe) -> bool:
  """Outcomes where a point's first seed is not always the one that succeeds: n <= 8 + d
  trains with every seed, n = 9 + d only with the third, n = 10 + d only with the second."""
  return (probe.n <= 8 + probe.d or (probe.n == 9 + probe.d and probe.seed == 44)
          or (probe.n == 10 + probe.d and probe.seed == 43))


def test_restarts_until_success_decide_every_point_as_all_restarts_do():
  every = dict(restarts=3, probes_per_search=1)
  runs = {}
  for until_success in (False, True):
    target, config = _target(**every, restarts_until_success=until_success)
    ledger = Ledger.start(target.specs())
    observed = _drive(ledger, target, config, outcome=_late_seeds)
    runs[until_success] = (target.report(ledger), ledger, observed)
  (all_rows, all_ledger, all_seeds), (rows, ledger, observed) = runs[False], runs[True]
  assert [r["critical_n"] for r in rows] == [r["critical_n"] for r in all_rows] == [14, 15]
  assert ledger.searches == all_ledger.searches  # every point, the same outcome
  assert len(observed) < len(all_seeds)
  # Each point ran its first seed, then its other two only if that failed.
  for point, successes in ledger.seed_outcomes.items():
    expected = all_ledger.seed_outcomes[point]
    assert successes[0] == expected[0]
    assert successes == (expected[:1] if expected[0] else expected)


def test_a_success_drops_its_points_queued_seeds():
  target, config = _target(dims=(4,), restarts=3, probes_per_search=1,
                           restarts_until_success=True)
  ledger = Ledger.start(target.specs())
  ledger.propose(target, [], 1, 3, config.seed, True)
  [first] = ledger.queue
  ledger.queue = []
  ledger.observe(target, first, _record(first, False, False), 3, True)
  assert [p.seed for p in ledger.queue] == [43, 44] and {p.n for p in ledger.queue} == {first.n}
  second = ledger.queue.pop(0)
  ledger.observe(target, second, _record(second, True, True), 3, True)
  assert ledger.queue == [] and dict(ledger.searches["d=4"].outcomes) == {first.n: True}


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
