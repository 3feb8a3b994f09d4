"""Critical-n search for one (d, k, protocol) key: gallop, bisect, then a local sweep.

The search is a pure state machine: its whole state is the spec plus the recorded
(n, success) outcomes, so it checkpoints as JSON and its proposals depend only on those
outcomes and on the points the driver still has pending.

Bracket rule ("first failure"): hi is the smallest recorded failure (None until one
exists); lo is the largest recorded success below hi, or floor_n (a known success that is
never probed) when there is none. Every n strictly between lo and hi is unrecorded, so any
probe inside the bracket shrinks it. The bracket is closed when hi == lo + 1, and then
critical_n = lo: lo succeeded (or is floor_n) and lo + 1 is a recorded failure.

Non-monotone outcomes: a success above hi never moves the bracket (it only raises
max_success_n). A failure below lo (e.g. found by the local sweep) becomes the new hi, the
bracket reopens below it, and the search bisects and sweeps there again. Such a move always
lowers hi, and once a failure exists every proposal lies in (floor_n, hi + local_sweep], so
the search terminates unless no failure is ever recorded; a ceiling_n bounds that case
(done with lo = ceiling_n, hi = None and no critical_n).

Phases, all derived from the bracket (after an optional first round over a window of n
around start_n, for devices wide enough to probe it at once):
  * gallop up   (no failure yet): start, start+1, start+2, start+4, ...
  * gallop down (a failure, no success below it): start-1, start-2, start-4, ...,
  clamped to floor_n + 1
  * bisection   (lo, hi both found, hi - lo > 1): cut the bracket into near-equal parts
  * local sweep (bracket closed): every n in [lo - r, lo + r + 1] above floor_n and at
  most ceiling_n
Every proposal lies in [floor_n + 1, ceiling_n]: outside it a coordinate may mean nothing
(critical d reads n backwards, so past its ceiling lies d <= 0).
With max_points == 1 this is the classic sequential gallop + bisection. With more points,
gallops speculate along their sequence, bisection cuts the bracket into m + 1 parts
(pending points count as cuts already), and the sweep asks for all its remaining points.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Iterator


def _check_int(name: str, value: object, minimum: int, allowed: str) -> None:
  """Reject non-ints (bool included) and values below minimum with a one-line message."""
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ValueError(f"{name} must be an int {allowed}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class SearchSpec:
  """Where the search starts, which n is known to succeed, and the local-sweep radius."""

  start_n: int
  floor_n: int
  local_sweep: int
  ceiling_n: int | None = None  # no probe above it; reaching it without a failure ends the search
  # The first round probes every n within this distance of start_n (nearest first), so a wide
  # device brackets a boundary near the start in one round instead of galloping to it.
  window: int = 0

  def __post_init__(self) -> None:
    _check_int("floor_n", self.floor_n, 0, ">= 0")
    _check_int("start_n", self.start_n, self.floor_n + 1, f"> floor_n (= {self.floor_n})")
    _check_int("local_sweep", self.local_sweep, 0, ">= 0")
    _check_int("window", self.window, 0, ">= 0")
    if self.ceiling_n is not None:
      _check_int("ceiling_n", self.ceiling_n, self.start_n, f">= start_n (= {self.start_n})")


@dataclasses.dataclass(frozen=True)
class SearchState:
  """Spec plus recorded (n, success) outcomes sorted by n; everything else is derived."""

  spec: SearchSpec
  outcomes: tuple[tuple[int, bool], ...] = ()

  def to_json(self) -> dict:
    return {
      "spec": dataclasses.asdict(self.spec),
      "outcomes": [[n, ok] for n, ok in self.outcomes],
    }

  @classmethod
  def from_json(cls, data: dict) -> SearchState:
    """Rebuild through record() so a corrupted checkpoint fails validation loudly."""
    state = new_search(SearchSpec(**data["spec"]))
    for n, ok in data["outcomes"]:
      state = record(state, n, ok)
    return state


def new_search(spec: SearchSpec) -> SearchState:
  """Start a search with nothing recorded (the spec validated itself on construction)."""
  return SearchState(spec=spec)


def record(state: SearchState, n: int, success: bool) -> SearchState:
  """Return the state with (n, success) added; a repeat is a no-op, a contradiction an error."""
  _check_int("n", n, state.spec.floor_n + 1, f"> floor_n (= {state.spec.floor_n})")
  if not isinstance(success, bool):
    raise ValueError(f"success must be a bool, got {success!r}")
  previous = dict(state.outcomes).get(n)
  if previous is not None:
    if previous == success:
      return state
    raise ValueError(f"n={n} already recorded as success={previous}, got success={success}")
  return dataclasses.replace(state, outcomes=tuple(sorted((*state.outcomes, (n, success)))))


def _bracket(state: SearchState) -> tuple[int, int | None]:
  """(lo, hi) by the first-failure rule in the module docstring."""
  lo = state.spec.floor_n
  for n, ok in state.outcomes:  # sorted by n
    if not ok:
      return lo, n
    lo = n
  return lo, None


def _gallop_steps() -> Iterator[int]:
  """Offsets from start_n: 0, 1, 2, 4, 8, ..."""
  yield 0
  yield from (2**i for i in itertools.count())


def _gallop_up(spec: SearchSpec) -> Iterator[int]:
  """start, start+1, start+2, start+4, ..., ending at ceiling_n (the clamp) if there is one."""
  for step in _gallop_steps():
    n = spec.start_n + step
    if spec.ceiling_n is not None and n >= spec.ceiling_n:
      yield spec.ceiling_n
      return
    yield n


def _gallop_down(spec: SearchSpec) -> Iterator[int]:
  """start, start-1, start-2, start-4, ..., ending at floor_n + 1 (the clamp)."""
  for step in _gallop_steps():
    n = spec.start_n - step
    yield max(n, spec.floor_n + 1)
    if n <= spec.floor_n + 1:
      return


def _sweep_window(spec: SearchSpec, lo: int) -> range:
  """[lo - r, lo + r + 1], cut to the probeable range [floor_n + 1, ceiling_n]."""
  top = lo + spec.local_sweep + 1
  if spec.ceiling_n is not None:
    top = min(top, spec.ceiling_n)
  return range(max(lo - spec.local_sweep, spec.floor_n + 1), top + 1)


def _split(lo: int, hi: int, cuts: set[int], max_points: int) -> list[int]:
  """Up to max_points new n in (lo, hi) that minimise the largest gap between cuts.

  Points go one at a time to the gap whose widest part is widest (lowest gap on ties),
  then each gap is cut into near-equal parts, so one new point is (lo + hi) // 2.
  """
  edges = sorted({lo, hi, *cuts})
  gaps = list(zip(edges, edges[1:]))
  counts = [0] * len(gaps)

  def widest_part(i: int) -> int:
    a, b = gaps[i]
    return -(-(b - a) // (counts[i] + 1))

  for _ in range(max_points):
    open_gaps = [i for i, (a, b) in enumerate(gaps) if counts[i] < b - a - 1]
    if not open_gaps:
      break
    counts[max(open_gaps, key=lambda i: (widest_part(i), -i))] += 1
  return sorted(
    a + (j * (b - a)) // (count + 1)
    for (a, b), count in zip(gaps, counts)
    for j in range(1, count + 1)
  )


def propose(state: SearchState, pending: Iterable[int], max_points: int) -> list[int]:
  """Up to max_points new n to probe, ascending; [] when done or all useful n are pending."""
  _check_int("max_points", max_points, 0, ">= 0")
  spec = state.spec
  pending = set(pending)
  lo, hi = _bracket(state)
  if hi is not None and hi - lo > 1 and lo > spec.floor_n:
    return _split(lo, hi, {n for n in pending if lo < n < hi}, max_points)
  if not state.outcomes and spec.window:
    window = [n for n in range(spec.start_n - spec.window, spec.start_n + spec.window + 1)
              if spec.floor_n < n <= (spec.ceiling_n or n)]
    pool: Iterable[int] = sorted(window, key=lambda n: (abs(n - spec.start_n), n))
  elif hi is None:
    pool = (n for n in _gallop_up(spec) if n > lo)
  elif hi - lo > 1:
    pool = (n for n in _gallop_down(spec) if n < hi)
  else:
    pool = _sweep_window(spec, lo)
  taken = {n for n, _ in state.outcomes} | pending
  fresh = (n for n in pool if n not in taken)
  return sorted(itertools.islice(fresh, max_points))


def summary(state: SearchState) -> dict:
  """Bracket, critical n (once closed), largest probed success, and whether the search is done."""
  lo, hi = _bracket(state)
  closed = hi == lo + 1
  recorded = {n for n, _ in state.outcomes}
  # Every n up to the ceiling succeeded: the boundary lies beyond what may be probed.
  beyond_ceiling = hi is None and lo == state.spec.ceiling_n
  return {
    "critical_n": lo if closed else None,
    "max_success_n": max((n for n, ok in state.outcomes if ok), default=None),
    "lo": lo,
    "hi": hi,
    "done": beyond_ceiling or (
        closed and all(n in recorded for n in _sweep_window(state.spec, lo))),
    "probes": len(state.outcomes),
  }
