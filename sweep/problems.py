"""The retrieval problems: which documents are relevant to which query.

A problem is a relevance table: row i lists the documents relevant to query i, padded with -1
where queries have fewer relevant documents than the table is wide. The top-k problem of the
paper is the table of all k-subsets of n documents. Its rows are in colex order (ordered by
the largest element first), so the queries over n documents are exactly the first C(n, k)
rows of the table built for any larger n: one table serves every n of a padded bucket.
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np

PAD = -1  # marks an unused entry of a relevance table


def validate_problem(d: int, n: int, k: int, num_queries: int | None = None) -> None:
  """Raises a one-line ValueError naming the first bad field and its allowed range."""
  if d < 1:
    raise ValueError(f"d={d} is out of range: need d >= 1")
  if k < 1:
    raise ValueError(f"k={k} is out of range: need k >= 1")
  if n < k:
    raise ValueError(f"n={n} is out of range: need n >= k ({k})")
  if num_queries is not None and not 1 <= num_queries <= math.comb(n, k):
    raise ValueError(
        f"q={num_queries} is out of range: need 1 <= q <= C(n, k) = {math.comb(n, k)}")


def validate_table(table: np.ndarray, d: int, n: int, k: int) -> None:
  """A relevance table over n documents of width k: one-line errors like validate_problem."""
  if d < 1:
    raise ValueError(f"d={d} is out of range: need d >= 1")
  if table.ndim != 2 or table.shape[1] != k or len(table) == 0:
    raise ValueError(f"relevance table of shape {table.shape} is out of range: need "
                     f"[queries >= 1, k = {k}]")
  if table.max() >= n or table.min() < PAD or (table[:, 0] == PAD).any():
    raise ValueError(f"relevance table entries are out of range: need 0 <= index < n = {n} "
                     f"(or {PAD} as padding) and a relevant document in every row")


# Enough for every n a sweep has in flight: a table is rebuilt only when its n is new.
@functools.lru_cache(maxsize=256)
def _colex_table(n: int, k: int) -> np.ndarray:
  combos = np.array(list(itertools.combinations(range(n), k)), dtype=np.int32).reshape(-1, k)
  # np.lexsort sorts by its last key first: the largest element of each subset.
  return combos[np.lexsort(combos.T)]


def colex_subsets(n: int, k: int) -> np.ndarray:
  """All k-subsets of range(n) as an int32 table [C(n, k), k], each row sorted, colex order."""
  validate_problem(1, n, k)
  table = _colex_table(n, k)
  table.flags.writeable = False
  return table


def topk_relevance(n: int, k: int, num_queries: int | None = None, seed: int = 0) -> np.ndarray:
  """The top-k problem over n documents, optionally a seeded sample of num_queries queries.

  The sample keeps colex order, and depends on (seed, n, k) alone, so it is reproducible.
  """
  validate_problem(1, n, k, num_queries)
  table = colex_subsets(n, k)
  if num_queries is None or num_queries == len(table):
    return table
  rng = np.random.default_rng([seed, n, k])
  return table[np.sort(rng.choice(len(table), size=num_queries, replace=False))]


def config_streams(seed: int, d: int, n: int, k: int) -> tuple[np.random.Generator, np.random.Generator]:
  """Independent (query, document) random streams of one configuration: a function of
  (seed, d, n, k) alone.

  Never of a slot or batch position, so outcomes do not depend on how probes were packed.
  """
  queries, documents = np.random.SeedSequence([seed, d, n, k]).spawn(2)
  return np.random.default_rng(queries), np.random.default_rng(documents)
