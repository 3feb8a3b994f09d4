"""What a sweep searches: how search coordinates become probes, configurations and reports
(data only; the driver writes them).

The search module always sees a coordinate in which success lies below failure, starting
from a known success (its floor). For the paper's experiment the coordinate is n, one search
per d (`CriticalN`). For a fixed relevance matrix it is the dimension read backwards,
num_documents − d, because success lies at large d; d = num_documents always succeeds
(orthonormal documents, each query the sum of its relevant ones), so the floor is 0
(`CriticalD`). One search module serves both; the direction lives in this mapping.
"""

from __future__ import annotations

import math

from ml_collections import ConfigDict

from sweep import geometry, paper, qrels, search
from sweep.problems import Configuration, Probe

def _training(config: ConfigDict) -> dict:
  return dict(learning_rate=config.learning_rate, temperature=config.temperature,
              sigmoid_log_scale=config.sigmoid_log_scale, sigmoid_bias=config.sigmoid_bias)


class CriticalN:
  """The paper's experiment: for each d, the largest n whose every top-k set trains."""

  REPORT = "critical_n.csv"

  def __init__(self, config: ConfigDict):
    self.config = config

  def start_n(self, d: int) -> int:
    """config.start_n, or the paper's critical n at d (k = 2: its Table 6 for d = 4 ... 45,
    its cubic beyond), else just above k.

    A search that starts on the boundary needs only the two probes that decide it, and the
    table lies nearer the boundary than its cubic does (at d = 12, 47 against 52: four
    failures, each about three times the steps of a success, before the gallop down).
    """
    if self.config.start_n:
      return self.config.start_n
    if self.config.k == 2 and d >= 4:
      published = paper.critical_n(d) or round(
          sum(c * d**i for i, c in enumerate(paper.cubic())))
      return max(self.config.k + 1, published)
    return self.config.k + 1

  def max_n(self, d: int) -> int:
    """config.max_n, or the largest n whose single slot fits memory_budget_mb.

    The ceiling ends a search that never fails (a sampled problem, a d >= 2k protocol that
    keeps succeeding) instead of galloping until memory runs out.
    """
    if self.config.max_n:
      return self.config.max_n
    from sweep import sizing  # JAX, optax and flax: `sweep status` reads rows without them
    k = self.config.k
    fits = lambda n: sizing.slot_fits_device(
        sizing.shape_class(self.configuration(Probe(d, n, 0))), self.config.memory_budget_mb)
    if not fits(k + 1):
      raise ValueError(f"config.memory_budget_mb={self.config.memory_budget_mb} is out of "
                       f"range: too small for one slot at d={d}, n={k + 1}")
    lo, hi = k + 1, k + 2
    while fits(hi):
      lo, hi = hi, 2 * hi
    while hi - lo > 1:
      mid = (lo + hi) // 2
      lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo

  def specs(self) -> dict[str, search.SearchSpec]:
    specs = {}
    for d in self.config.dims:
      ceiling = self.max_n(d)
      specs[f"d={d}"] = search.SearchSpec(
          start_n=min(self.start_n(d), ceiling), floor_n=self.config.k,
          local_sweep=self.config.local_sweep, ceiling_n=ceiling, window=self.config.start_window)
    return specs

  def probe(self, key: str, coordinate: int, seed: int) -> Probe:
    return Probe(d=int(key.removeprefix("d=")), n=coordinate, seed=seed)

  def locate(self, probe: Probe) -> tuple[str, int]:
    return f"d={probe.d}", probe.n

  def configuration(self, probe: Probe) -> Configuration:
    c = self.config
    sampled = 0 < c.num_queries < math.comb(probe.n, c.k)  # small n keep all their queries
    return Configuration(d=probe.d, n=probe.n, k=c.k, seed=probe.seed,
                         num_queries=c.num_queries if sampled else None,
                         warm_noise=c.warm_noise if c.protocol == "warm" else None,
                         **_training(c))

  def rows(self, searches: dict[str, search.SearchState], certified: dict,
           nonfinite: frozenset = frozenset(), seed_outcomes: dict | None = None) -> list[dict]:
    """critical_n.csv: one row per d.

    critical_n_certified is the largest n whose success a float64 re-check certified and
    whose n + 1 failed; geometric_critical_n is what geometry allows at that d (G(d, k)).
    status: open, measured, ceiling (no failure up to max_n), or nonfinite: the failure that
    decides the boundary had a restart that stopped as nonfinite (NaN or inf values or a
    zero-norm row; trainer.StopReason), so nothing was measured and no critical n is given.
    seed_successes: each probed n's successful restarts out of all, "n:s/R" apart by spaces;
    critical_n_median: the largest probed n that, with every probed n below it, succeeded in
    at least half of its restarts (seed_statistics).
    """
    rows = []
    for key, state in searches.items():
      d = int(key.removeprefix("d="))
      failed = {n for n, ok in state.outcomes if not ok}
      proven = [n for n, _ in certified.get(key, []) if n + 1 in failed]
      seeds = {n: (seed_outcomes or {}).get((d, n), []) for n, _ in state.outcomes}
      row = dict(d=d, k=self.config.k, **search.summary(state),
                 critical_n_certified=max(proven, default=None),
                 geometric_critical_n=geometry.critical_n_cell(d, self.config.k),
                 **seed_statistics(seeds))
      row["status"] = ("open" if not row["done"] else
                       "ceiling" if row["hi"] is None else
                       "nonfinite" if (d, row["hi"]) in nonfinite else "measured")
      if row["status"] == "nonfinite":
        row["critical_n"] = row["critical_n_certified"] = None
      rows.append(row)
    return rows

  def report(self, ledger) -> list[dict]:
    return self.rows(ledger.searches, ledger.certified, ledger.nonfinite(), ledger.seed_outcomes)

  def progress(self, ledger) -> str:
    return " ".join(f"d={r['d']}: {critical_n_text(r)}" for r in self.report(ledger))

  def fixed_witnesses(self) -> dict[str, dict]:
    return {}


class CriticalD:
  """A fixed relevance matrix (a dataset's qrels): the smallest d at which it trains."""

  KEY = "qrels"
  REPORT = "critical_d.json"
  GEOMETRY_WITNESS = "geometry"  # witnesses/geometry.npz: the upper bound's construction

  def __init__(self, config: ConfigDict):
    """Reads the relevance once and binds config.qrels_sha256 to what was read: the workdir's
    config.json then refuses a file whose content changed under the same name (store.claim),
    and a hash given up front pins the content a run may use."""
    self.config = config
    self.relevance = qrels.load_relevance(config.qrels)
    digest = self.relevance.sha256
    if config.qrels_sha256 and config.qrels_sha256 != digest:
      raise ValueError(f"qrels {config.qrels}: content sha256 {digest} is not "
                       f"config.qrels_sha256 {config.qrels_sha256}: the file changed")
    config.qrels_sha256 = digest
    self.num_documents = self.relevance.num_documents
    if self.num_documents < 2:
      raise ValueError(f"{config.qrels}: needs at least 2 documents to search a dimension")
    self.geometric_bounds = geometry.dimension_bounds(self.relevance)

  def _d(self, coordinate: int) -> int:
    return self.num_documents - coordinate

  def specs(self) -> dict[str, search.SearchSpec]:
    width = self.relevance.table.shape[1]
    start_d = self.config.start_d or 2 * width  # 2k dimensions suffice for top-k sets
    start_d = min(max(start_d, 1), self.num_documents - 1)
    return {self.KEY: search.SearchSpec(
        start_n=self.num_documents - start_d, floor_n=0, local_sweep=self.config.local_sweep,
        ceiling_n=self.num_documents - 1)}

  def probe(self, key: str, coordinate: int, seed: int) -> Probe:
    return Probe(d=self._d(coordinate), n=self.num_documents, seed=seed)

  def locate(self, probe: Probe) -> tuple[str, int]:
    return self.KEY, self.num_documents - probe.d

  def configuration(self, probe: Probe) -> Configuration:
    return Configuration(d=probe.d, n=probe.n, k=self.relevance.table.shape[1],
                         seed=probe.seed, table=self.relevance.table, **_training(self.config))

  def report(self, ledger) -> dict:
    """critical_d.json: the relevance source and shape, critical d, every probe, the
    float64 certificate of the success at critical d (its witness file and margin), the
    geometric bounds on d (sweep/geometry.py), and the status: open, measured, or nonfinite
    (the failure that decides the bracket had a restart that stopped as nonfinite)."""
    searches, certified, nonfinite = ledger.searches, ledger.certified, ledger.nonfinite()
    state = searches[self.KEY]
    summary = search.summary(state)
    to_d = lambda c: None if c is None else self._d(c)
    margins = dict(certified.get(self.KEY, []))
    critical = summary["critical_n"]
    probed = {c for c, _ in state.outcomes}
    report = dict(
        source=self.config.qrels, queries=self.relevance.num_queries,
        documents=self.num_documents, max_relevant=int(self.relevance.relevant_counts.max()),
        critical_d=to_d(summary["critical_n"]), smallest_success_d=to_d(summary["max_success_n"]),
        # The search's floor, d = documents, is never trained: it holds by construction.
        critical_d_trained=critical is not None and critical in probed,
        bracket=[to_d(summary["hi"]), to_d(summary["lo"])], done=summary["done"],
        probes=[dict(d=self._d(c), success=ok) for c, ok in sorted(state.outcomes, reverse=True)],
        certificate=None if critical not in margins else dict(
            witness=f"witnesses/{self.KEY}.npz", margin64=margins[critical]),
        geometry=self.geometric_bounds.summary(f"witnesses/{self.GEOMETRY_WITNESS}.npz"))
    report["status"] = "measured" if report["done"] else "open"
    deciding = report["bracket"][0]  # the largest d that failed
    if report["done"] and deciding is not None and (deciding, self.num_documents) in nonfinite:
      report.update(critical_d=None, certificate=None, status="nonfinite")
    return report

  def progress(self, ledger) -> str:
    r = self.report(ledger)
    return (f"critical d = {r['critical_d']}" if r["done"] else
            f"d in [{r['bracket'][0] or '?'}, {r['bracket'][1]}]")

  def fixed_witnesses(self) -> dict[str, dict]:
    """The geometric upper bound's construction: it depends on the relevance alone."""
    bounds = self.geometric_bounds
    return {self.GEOMETRY_WITNESS: dict(
        queries=bounds.queries, documents=bounds.documents, relevance=self.relevance.table,
        d=bounds.upper, n=self.num_documents, margin64=bounds.margin64)}


def for_config(config: ConfigDict):
  """The sweep a config asks for: a qrels file's critical d, else critical n per d."""
  return CriticalD(config) if config.qrels else CriticalN(config)


def seed_statistics(seeds: dict[int, list[bool]]) -> dict:
  """critical_n_median and seed_successes of one search's probed points (n -> the successes
  of its restarts)."""
  median = None
  for n in sorted(seeds):
    if 2 * sum(seeds[n]) < len(seeds[n]):
      break
    median = n
  return dict(critical_n_median=median, seed_successes=" ".join(
      f"{n}:{sum(seeds[n])}/{len(seeds[n])}" for n in sorted(seeds)) or None)


def critical_n_text(row: dict) -> str:
  """A critical_n.csv row's answer in words, as progress lines, `sweep run` and `sweep
  status` print it."""
  if row["status"] == "nonfinite":
    return (f"no critical n: the deciding probe n={row['hi']} ended with NaN, inf or zero-norm "
            f"values (stop_reason nonfinite in results.jsonl), so nothing was measured")
  if row["status"] == "ceiling":
    return f"critical n >= {row['lo']} (no failure up to max_n)"
  if row["status"] == "open":
    return f"critical n in [{row['lo']}, {row['hi'] if row['hi'] is not None else '?'}]"
  return f"critical n = {row['critical_n']}"
