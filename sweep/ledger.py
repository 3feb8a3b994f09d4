"""The host's bookkeeping of a sweep: its searches, the probes queued for them, the outcome of
every restart, the certified points and witnesses, and the results line of every finished
configuration. Plain data, no JAX, no files: it is tested without a device, and its JSON goes
into every checkpoint.

`propose` queues the probes each search asks for next; `observe` takes a finished
configuration's results line and tells the searches once all restarts of its point are in.
Nothing here depends on timing or packing, so a resumed sweep proposes what an uninterrupted
one does.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from sweep import search
from sweep.problems import Probe

# The fields that name a configuration's results line: one line per configuration.
RESULT_KEY = ("d", "n", "k", "seed")


def result_key(record: dict) -> tuple:
  return tuple(record[field] for field in RESULT_KEY)


@dataclasses.dataclass
class Observed:
  """What one observed configuration asks the driver to write."""
  new_record: dict | None  # its results line, unless a replay after resume already wrote it
  witness: str | None      # the search key whose witness it becomes, if it does


@dataclasses.dataclass
class Ledger:
  """The searches of one sweep (by key, e.g. "d=4") and everything they have learnt."""
  searches: dict[str, search.SearchState]
  queue: list[Probe] = dataclasses.field(default_factory=list)  # waiting for a slot, in order
  seed_outcomes: dict[tuple[int, int], list[bool]] = dataclasses.field(default_factory=dict)
  certified: dict[str, list] = dataclasses.field(default_factory=dict)  # key -> [[coord, margin64]]
  witnesses: dict[str, int] = dataclasses.field(default_factory=dict)  # key -> coordinate kept
  # The results line of every configuration counted, in order: a lost line is rebuilt from it.
  records: list[dict] = dataclasses.field(default_factory=list)
  # Every results line known, counted or only written (the workdir's), by result_key; set
  # from the store at the start, never saved.
  results: dict[tuple, dict] = dataclasses.field(default_factory=dict)

  @classmethod
  def start(cls, specs: dict[str, search.SearchSpec]) -> "Ledger":
    return cls(searches={key: search.new_search(spec) for key, spec in specs.items()})

  def propose(self, target, training: list[Probe], probes_per_search: int, restarts: int,
              seed: int, until_success: bool = False) -> None:
    """Each search proposes up to probes_per_search points in flight (queued or among
    `training`); the restarts of a point (seeds seed, seed + 1, ...) queue together, or with
    `until_success` its first seed alone (observe queues the others if it fails)."""
    pending: dict[str, set[int]] = {}
    for key, coordinate in map(target.locate, self.queue + training):
      pending.setdefault(key, set()).add(coordinate)
    for key, state in self.searches.items():
      room = probes_per_search - len(pending.get(key, ()))
      if room > 0:
        for coordinate in search.propose(state, pending.get(key, set()), room):
          first = 1 if until_success else restarts
          self.queue += [target.probe(key, coordinate, seed + r) for r in range(first)]

  def observe(self, target, probe: Probe, record: dict, restarts: int,
              until_success: bool = False) -> Observed:
    """Count a finished configuration: its results line, its certificate (record["certified"],
    record["margin64"]) and, once all `restarts` of its point are in, the search's outcome
    (a point succeeds if any restart does).

    With `until_success` a success decides its point at once, and the point's seeds still
    queued are dropped; the point's first seed failing queues the others. A point's outcome
    is the same as with every seed run: any seed succeeding, which the later seeds cannot
    change.
    """
    known = result_key(record)
    new = known not in self.results
    if new:
      self.results[known] = record
    self.records.append(self.results[known])
    key, coordinate = target.locate(probe)
    witness = None
    if record["certified"]:
      proven = dict(self.certified.get(key, []))
      proven[coordinate] = max(record["margin64"], proven.get(coordinate, -np.inf))
      self.certified[key] = [[c, m] for c, m in sorted(proven.items())]
      if coordinate > self.witnesses.get(key, -1):  # the most demanding success is kept
        self.witnesses[key] = coordinate
        witness = key
    successes = self.seed_outcomes.setdefault((probe.d, probe.n), [])
    successes.append(record["success"])
    if len(successes) == restarts or (until_success and record["success"]):
      self.searches[key] = search.record(self.searches[key], coordinate, any(successes))
      self.queue = [p for p in self.queue if target.locate(p) != (key, coordinate)]
    elif until_success and len(successes) == 1:
      self.queue += [target.probe(key, coordinate, probe.seed + r) for r in range(1, restarts)]
    return Observed(record if new else None, witness)

  def nonfinite(self) -> frozenset[tuple[int, int]]:
    """(d, n) of every point with a restart that stopped as nonfinite (a NaN or inf loss, row
    or optimizer state, or a row without a direction): not a measured failure."""
    return frozenset((r["d"], r["n"]) for r in self.results.values()
                     if r["stop_reason"] == "nonfinite")

  def done(self, training: list[Probe]) -> bool:
    return not self.queue and not training

  def to_json(self) -> dict:
    return dict(
        searches={key: s.to_json() for key, s in self.searches.items()},
        queue=[dataclasses.astuple(p) for p in self.queue],
        seed_outcomes=[[d, n, s] for (d, n), s in self.seed_outcomes.items()],
        certified=self.certified, witnesses=self.witnesses, records=self.records)

  @classmethod
  def from_json(cls, data: dict) -> "Ledger":
    return cls(
        searches={key: search.SearchState.from_json(s) for key, s in data["searches"].items()},
        queue=[Probe(*p) for p in data["queue"]],
        seed_outcomes={(d, n): list(s) for d, n, s in data["seed_outcomes"]},
        certified={k: [list(p) for p in v] for k, v in data["certified"].items()},
        witnesses=data["witnesses"], records=data["records"])
