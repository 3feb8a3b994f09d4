"""Critical-n search: driven to completion against plain oracle functions."""

import itertools
import json
import random
from collections.abc import Callable

import pytest

from sweep.search import SearchSpec, SearchState, new_search, propose, record, summary

FLOOR = 2


Rounds = list[list[int]]


def _on_gallop_up(spec: SearchSpec, n: int) -> bool:
  """Whether n is start, start+1, start+2, start+4, ... (or the ceiling, its clamp)."""
  step = n - spec.start_n
  return step == 0 or (step > 0 and step & (step - 1) == 0) or n == spec.ceiling_n


def drive(spec: SearchSpec, oracle: Callable[[int], bool], m: int) -> tuple[SearchState, Rounds]:
  """Run the search to done, one propose per round; return the final state and the rounds.

  Each round must propose only n not yet recorded: before any failure, points of the gallop
  up (after a first-round window); after one, n up to the smallest failure + local_sweep
  (module docstring). So the loop ends once the oracle fails on the gallop, or at the ceiling.
  """
  s = new_search(spec)
  rounds = []
  while not summary(s)["done"]:
    pts = propose(s, pending=[], max_points=m)
    assert pts and len(pts) <= m and pts == sorted(set(pts))
    assert all(n > spec.floor_n and n not in dict(s.outcomes) for n in pts)
    assert spec.ceiling_n is None or max(pts) <= spec.ceiling_n
    failures = [n for n, ok in s.outcomes if not ok]
    if failures:
      assert max(pts) <= min(failures) + spec.local_sweep
    elif rounds or not spec.window:
      assert all(_on_gallop_up(spec, n) for n in pts)
    rounds.append(pts)
    for n in pts:
      s = record(s, n, oracle(n))
  return s, rounds


def expected_rounds(spec: SearchSpec, c: int, m: int) -> Rounds:
  """The rounds of the module docstring's phases against the oracle n <= c, for a spec
  without window or ceiling: gallop up from start_n, m points a round, until one fails;
  gallop down below it until one succeeds; cut the bracket into m + 1 near-equal parts
  until it closes; then the rest of the local sweep, m points a round, in ascending order."""
  rounds, lo, hi = [], spec.floor_n, None

  def probe(points):
    nonlocal lo, hi
    rounds.append(sorted(points))
    lo = max([lo, *(n for n in points if n <= c)])
    hi = min([n for n in points if n > c] + ([] if hi is None else [hi]), default=None)

  up = (spec.start_n + step for step in itertools.chain([0], (2**i for i in itertools.count())))
  while hi is None:
    probe([next(up) for _ in range(m)])
  down, step = [], 1
  while not down or down[-1] > spec.floor_n + 1:
    down.append(max(spec.start_n - step, spec.floor_n + 1))
    step *= 2
  down = iter([n for n in down if n < hi])
  while lo == spec.floor_n and hi > spec.floor_n + 1:
    probe(list(itertools.islice(down, m)))
  while hi - lo > 1:
    parts = min(m, hi - lo - 1) + 1
    probe([lo + j * (hi - lo) // parts for j in range(1, parts)])
  probed = {n for r in rounds for n in r}
  window = range(max(lo - spec.local_sweep, spec.floor_n + 1), lo + spec.local_sweep + 2)
  sweep = [n for n in window if n not in probed]
  return rounds + [sweep[i:i + m] for i in range(0, len(sweep), m)]


@pytest.mark.parametrize("m", [1, 2, 5])
@pytest.mark.parametrize(
  ("c", "start"), [(FLOOR, 10), (FLOOR + 1, 10), (13, 10), (1000, 10), (5, 100)]
)
def test_monotone_oracle_finds_boundary_and_sweeps_around_it(c: int, start: int, m: int) -> None:
  spec = SearchSpec(start_n=start, floor_n=FLOOR, local_sweep=4)
  s, rounds = drive(spec, lambda n: n <= c, m)
  assert rounds == expected_rounds(spec, c, m)
  out = summary(s)
  assert (out["critical_n"], out["lo"], out["hi"], out["done"]) == (c, c, c + 1, True)
  assert {n for n in range(c - 4, c + 6) if n > FLOOR} <= dict(s.outcomes).keys()
  assert out["probes"] == len(s.outcomes)


@pytest.mark.parametrize(
  ("c", "expected"),
  [(13, [10, 11, 12, 14, 13]), (4, [10, 9, 8, 6, 3, 4, 5]), (FLOOR, [10, 9, 8, 6, 3])],
)
def test_single_point_is_classic_gallop_then_bisection(c: int, expected: list[int]) -> None:
  _, rounds = drive(SearchSpec(start_n=10, floor_n=FLOOR, local_sweep=0), lambda n: n <= c, 1)
  assert [n for (n,) in rounds] == expected


def test_multi_point_needs_fewer_rounds_for_a_far_boundary() -> None:
  spec = SearchSpec(start_n=10, floor_n=FLOOR, local_sweep=0)
  _, sequential = drive(spec, lambda n: n <= 1000, 1)
  _, parallel = drive(spec, lambda n: n <= 1000, 5)
  assert len(parallel) < len(sequential) / 2


def test_multi_point_cuts_bracket_into_equal_parts() -> None:
  s = record(record(new_search(SearchSpec(10, FLOOR, 0)), 10, True), 70, False)
  assert propose(s, [], 1) == [40]
  assert propose(s, [], 2) == [30, 50]
  assert propose(s, [], 5) == [20, 30, 40, 50, 60]


@pytest.mark.parametrize("m", [1, 2, 5])
def test_success_above_boundary_shows_only_in_max_success(m: int) -> None:
  spec = SearchSpec(start_n=10, floor_n=FLOOR, local_sweep=4)
  s, _ = drive(spec, lambda n: n <= 20 or n == 23, m)
  out = summary(s)
  ok = dict(s.outcomes)
  assert ok[out["critical_n"]] and not ok[out["critical_n"] + 1]
  assert (out["critical_n"], out["max_success_n"]) == (20, 23)


def test_failure_found_by_sweep_below_boundary_rebrackets() -> None:
  # Gallop from 15 lands on 23 and closes (23, 24); the sweep then hits 21 and moves down.
  spec = SearchSpec(start_n=15, floor_n=FLOOR, local_sweep=4)
  s, _ = drive(spec, lambda n: n <= 20 or n == 23, 1)
  out = summary(s)
  assert (out["critical_n"], out["hi"], out["max_success_n"], out["done"]) == (20, 21, 23, True)
  assert {n for n in range(16, 26)} <= dict(s.outcomes).keys()


def test_pending_points_are_not_reproposed() -> None:
  s = new_search(SearchSpec(start_n=10, floor_n=FLOOR, local_sweep=0))
  assert propose(s, pending=[10], max_points=2) == [11, 12]
  s = record(record(s, 18, True), 26, False)
  assert propose(s, pending=[22], max_points=1) == [20]
  assert propose(s, pending=range(19, 26), max_points=3) == []


def test_recording_twice() -> None:
  s = record(new_search(SearchSpec(10, FLOOR, 0)), 10, True)
  assert record(s, 10, True) == s
  with pytest.raises(ValueError, match="n=10"):
    record(s, 10, False)


@pytest.mark.parametrize(
  ("kwargs", "field"),
  [
    ({"start_n": FLOOR, "floor_n": FLOOR, "local_sweep": 0}, "start_n"),
    ({"start_n": 10, "floor_n": -1, "local_sweep": 0}, "floor_n"),
    ({"start_n": 10, "floor_n": FLOOR, "local_sweep": -1}, "local_sweep"),
  ],
)
def test_invalid_spec_names_the_field(kwargs: dict, field: str) -> None:
  with pytest.raises(ValueError, match=field):
    new_search(SearchSpec(**kwargs))


def test_json_round_trip_keeps_state_and_proposals() -> None:
  s = new_search(SearchSpec(start_n=10, floor_n=FLOOR, local_sweep=4))
  for n, ok in [(10, True), (11, True), (12, True), (14, True), (18, True), (26, False)]:
    s = record(s, n, ok)
  back = SearchState.from_json(json.loads(json.dumps(s.to_json())))
  assert back == s
  assert propose(back, [22], 3) == propose(s, [22], 3)


@pytest.mark.parametrize("m", [1, 3])
def test_ceiling_ends_a_search_that_never_fails(m):
  s, _ = drive(SearchSpec(start_n=5, floor_n=FLOOR, local_sweep=2, ceiling_n=40), lambda n: True, m)
  out = summary(s)
  assert out["done"] and out["critical_n"] is None and out["hi"] is None
  assert out["lo"] == out["max_success_n"] == 40
  assert max(n for n, _ in s.outcomes) == 40


def test_ceiling_does_not_change_a_boundary_below_it():
  s, _ = drive(SearchSpec(start_n=5, floor_n=FLOOR, local_sweep=0, ceiling_n=40), lambda n: n <= 17, 1)
  assert summary(s)["critical_n"] == 17


def test_ceiling_below_start_is_rejected():
  with pytest.raises(ValueError, match="ceiling_n"):
    SearchSpec(start_n=10, floor_n=FLOOR, local_sweep=0, ceiling_n=9)


def test_a_window_brackets_a_boundary_near_the_start_in_one_round() -> None:
  spec = SearchSpec(start_n=10, floor_n=FLOOR, local_sweep=2, window=4)
  s, rounds = drive(spec, lambda n: n <= 12, 9)
  assert rounds[0] == list(range(6, 15)) and len(rounds) == 2  # then the rest of the sweep
  assert summary(s)["critical_n"] == 12
  assert propose(new_search(spec), pending=[], max_points=3) == [9, 10, 11]
  far, _ = drive(spec, lambda n: n <= 40, 9)
  assert summary(far)["critical_n"] == 40


def test_every_proposal_stays_in_range_and_every_search_ends() -> None:
  # Critical d reads n backwards (d = num_documents - n), so a probe past ceiling_n is a
  # d <= 0; a probe at floor_n or below is an n <= k. Any boundary, start, radius, window and
  # width, monotone or not, must keep every proposal in [floor_n + 1, ceiling_n].
  rng = random.Random(0)
  for floor, span, radius, window, m in itertools.product((0, 2), range(1, 7), (0, 1, 4),
                                                          (0, 2), (1, 2, 4)):
    ceiling = floor + span
    for start in range(floor + 1, ceiling + 1):
      spec = SearchSpec(start_n=start, floor_n=floor, local_sweep=radius, ceiling_n=ceiling,
                        window=window)
      for c in range(floor, ceiling + 1):
        out = summary(drive(spec, lambda n: n <= c, m)[0])
        expected = (None, ceiling) if c == ceiling else (c, c)
        assert (out["critical_n"], out["lo"]) == expected, (spec, c, m)
      outcomes = {n: rng.random() < 0.5 for n in range(floor + 1, ceiling + 1)}
      assert summary(drive(spec, outcomes.__getitem__, m)[0])["done"]
