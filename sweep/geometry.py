"""Exact geometric limits of top-k retrieval with unit-norm documents, and their witnesses.

A query q retrieves the set S of documents x_1..x_n exactly when min_{i in S} q.x_i >
max_{j not in S} q.x_j: a hyperplane (affine, its offset being the threshold) strictly
separates S from the other documents. Which n unit vectors in R^d let every k-subset be
retrieved is convex geometry, not optimisation (docs/geometry.md, "The geometric critical
n"). This module gives that limit G(d, k) for every (d, k), documents and queries that attain
it, an LP that re-checks any documents for every k-subset without being told the queries, and
cheap exact bounds on the dimension a relevance matrix needs. It is numpy and scipy, no JAX.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from sweep import certify, construct, problems

UNBOUNDED = "unbounded"
LP_TOLERANCE = 1e-7  # an LP margin at most this is "no separating hyperplane"


def _check_positive(name: str, value) -> None:
  if not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{name}={value!r} is out of range: need an integer >= 1")


# -- the limit --------------------------------------------------------------------------------


def radon_split(d: int, k: int) -> int | None:
  """The size p of the first part of a d + 2 document witness, or None where none exists.

  d + 2 documents in general position on the sphere have one Radon partition, into parts of
  sizes p and d + 2 - p with 2 <= p <= d, and only those two sets cannot be retrieved; so
  they serve top-k iff p != k and p != d + 2 - k. The most balanced such p is returned.
  """
  allowed = [p for p in range(2, d + 1) if p not in (k, d + 2 - k)]
  return min(allowed, key=lambda p: (abs(2 * p - d - 2), p), default=None)


def critical_n(d: int, k: int) -> int | None:
  """G(d, k): the most unit-norm documents in R^d whose every k-subset some query retrieves.

  None when there is no limit (d >= 2k). Below it, max(A, k + floor(d/2)), where A = d + 2
  if a Radon split of d + 2 documents avoids k, else d + 1 (docs/geometry.md for the proof).
  """
  _check_positive("d", d)
  _check_positive("k", k)
  if d >= 2 * k:
    return None
  simplices = d + 2 if radon_split(d, k) is not None else d + 1
  return max(simplices, k + d // 2)


def critical_n_cell(d: int, k: int) -> int | str:
  """G(d, k) as critical_n.csv writes it: an integer, or "unbounded"."""
  limit = critical_n(d, k)
  return UNBOUNDED if limit is None else limit


# -- witnesses --------------------------------------------------------------------------------


def regular_simplex(p: int, d: int) -> np.ndarray:
  """[p, d] unit vertices of a regular simplex centred at the origin, in the first p - 1
  coordinates (p = 1: the single point e_1)."""
  vertices = np.zeros((p, d))
  if p == 1:
    vertices[0, 0] = 1.0
    return vertices
  centred = np.eye(p) - 1.0 / p  # rows: the vertices of the standard simplex, centred
  basis = np.linalg.svd(centred)[2][:p - 1]  # an orthonormal basis of their (p-1)-space
  coordinates = centred @ basis.T
  vertices[:, :p - 1] = coordinates / np.linalg.norm(coordinates, axis=1, keepdims=True)
  return vertices


def two_simplices(p: int, d: int) -> np.ndarray:
  """[d + 2, d]: regular simplices of p and d + 2 - p unit vertices, both centred at the
  origin, in orthogonal subspaces. Their one Radon partition is the two simplices."""
  q = d + 2 - p
  documents = np.zeros((d + 2, d))
  documents[:p, :p - 1] = regular_simplex(p, p - 1)
  documents[p:, p - 1:] = regular_simplex(q, q - 1)
  return documents


def _members(relevant: np.ndarray) -> np.ndarray:
  """[q, r] the sorted document indices of a bool matrix [q, n] with r relevant per row."""
  return np.nonzero(relevant)[1].reshape(len(relevant), -1)


def curve_queries(relevant: np.ndarray, d: int) -> np.ndarray:
  """[q, d] unit queries for documents_on_curve(n, d // 2, d); relevant is bool [q, n].

  Those documents form a floor(d/2)-neighbourly polytope: a set of at most d // 2 documents
  gets its own query (construct.queries_for_subsets); a larger one the negated query of its
  complement, which then scores lowest, so the set is on top.
  """
  n = relevant.shape[1]
  queries = np.zeros((len(relevant), d))
  sizes = relevant.sum(axis=1)
  for size in np.unique(sizes):
    rows = sizes == size
    if size <= d // 2:
      queries[rows] = construct.queries_for_subsets(_members(relevant[rows]), n, d)
    else:
      queries[rows] = -construct.queries_for_subsets(_members(~relevant[rows]), n, d)
  return queries


def sum_queries(relevant: np.ndarray, documents: np.ndarray) -> np.ndarray:
  """[q, d] unit queries along the sum of each set's documents; relevant is bool [q, n].

  On a regular simplex, or on two centred simplices in orthogonal subspaces, this scores the
  set strictly above the rest, except for the two simplices themselves (docs/geometry.md).
  """
  queries = relevant @ documents
  return queries / np.linalg.norm(queries, axis=1, keepdims=True)


def witness_family(d: int, k: int, n: int) -> str:
  """Which construction witness() uses for n documents in R^d."""
  if n == k:
    return "one query, every document relevant"
  if n <= d + 1:
    return f"regular simplex ({n} vertices)"
  p = radon_split(d, k)
  if n == d + 2 and p is not None:
    return f"two orthogonal simplices ({p} + {d + 2 - p} vertices)"
  return f"trigonometric moment curve ({min(k, d // 2)}-neighbourly)"


def witness(d: int, k: int, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """(queries [C(n, k), d], documents [n, d]) in float64: unit documents, unit queries, query
  i retrieving problems.colex_subsets(n, k)[i]. n defaults to G(d, k); no n above it exists."""
  limit = critical_n(d, k)
  n = limit if n is None else n
  if n is None:
    raise ValueError(f"n is required for d={d} >= 2k={2 * k}: every n has a witness there")
  if n < k or (limit is not None and n > limit):
    allowed = f"n >= k = {k}" if limit is None else f"{k} <= n <= G(d={d}, k={k}) = {limit}"
    raise ValueError(f"n={n} is out of range: need {allowed}")
  subsets = problems.colex_subsets(n, k)
  relevant = np.zeros((len(subsets), n), bool)
  relevant[np.arange(len(subsets))[:, None], subsets] = True
  if n == k:  # nothing competes: any documents, any query
    documents = np.tile(regular_simplex(1, d), (n, 1))
    return sum_queries(relevant, documents), documents
  if n <= d + 1:
    documents = regular_simplex(n, d)
    return sum_queries(relevant, documents), documents
  p = radon_split(d, k)
  if n == d + 2 and p is not None:
    documents = two_simplices(p, d)
    return sum_queries(relevant, documents), documents
  documents = construct.documents_on_curve(n, min(k, d // 2), d)
  if 2 * k <= d:
    return construct.queries_for_subsets(subsets, n, d), documents
  return curve_queries(relevant, d), documents


# -- an exhaustive check that needs no queries ------------------------------------------------


def separation_margin(documents: np.ndarray, subset) -> float:
  """The LP max t with w.x_i - b >= t on the subset, <= -t elsewhere, |w|_inf <= 1.

  Positive iff some hyperplane strictly separates the subset from the other documents, that
  is iff some query retrieves it; 0 otherwise (w = 0 is always feasible). inf if no other
  document is left.
  """
  from scipy import optimize  # a third of a second to import: only the LP checks need it
  documents = np.asarray(documents, np.float64)
  n, d = documents.shape
  inside = np.zeros(n, bool)
  inside[np.asarray(subset)] = True
  if inside.all():
    return math.inf
  sign = np.where(inside, -1.0, 1.0)[:, None]  # rows: -(w.x - b) + t <= 0, or w.x - b + t <= 0
  constraints = np.hstack([sign * documents, -sign, np.ones((n, 1))])
  objective = np.zeros(d + 2)
  objective[-1] = -1.0
  result = optimize.linprog(objective, A_ub=constraints, b_ub=np.zeros(n),
                            bounds=[(-1, 1)] * d + [(None, None)] * 2, method="highs")
  if result.status != 0:
    raise RuntimeError(f"the separation LP failed: {result.message}")
  return float(-result.fun)


def lp_margins(documents: np.ndarray, k: int) -> np.ndarray:
  """[C(n, k)] separation_margin of every k-subset, in colex order (one LP each)."""
  return np.array([separation_margin(documents, s)
                   for s in problems.colex_subsets(len(documents), k)])


def certify_witness(d: int, k: int, n_unbounded: int, lp_max_subsets: int) -> dict:
  """The witness at G(d, k) (at n_unbounded where there is no limit), verified in float64
  with its own queries (certify.margin64) and, when it has at most lp_max_subsets k-subsets,
  by the LP with none: a row of `sweep geometry`."""
  limit = critical_n(d, k)
  n = n_unbounded if limit is None else limit
  queries, documents = witness(d, k, n)
  margin64 = certify.margin64(queries, documents, problems.colex_subsets(n, k))
  verified = margin64 > 0
  subsets = math.comb(n, k)
  lp_margin = float(lp_margins(documents, k).min()) if subsets <= lp_max_subsets else None
  return dict(d=d, k=k, critical_n=critical_n_cell(d, k), n=n, family=witness_family(d, k, n),
              verified=verified, margin64=margin64, subsets=subsets, lp_margin=lp_margin)


# -- relevance matrices -----------------------------------------------------------------------


def relevant_pairs(relevance) -> set[tuple[int, int]]:
  """The pair graph: relevant sets of two documents, and complements of sets of n - 2 (a set
  is retrievable iff its complement is)."""
  matrix = relevance.matrix()
  n = matrix.shape[1]
  pairs = set()
  for row in matrix:
    size = int(row.sum())
    if 2 in (size, n - size):
      pair = np.flatnonzero(row if size == 2 else ~row)
      pairs.add((int(pair[0]), int(pair[1])))
  return pairs


def fits_on_a_line(relevance) -> bool:
  """d = 1: unit documents are +1 or -1, so every relevant set is one set P or its complement."""
  sets = {tuple(row) for row in relevance.matrix()}
  if len(sets) > 2:
    return False
  first, *rest = [np.array(s) for s in sets]
  return not rest or bool((rest[0] == ~first).all())


def pairs_fit_on_a_circle(pairs, n: int) -> bool:
  """d = 2: documents on a circle retrieve only neighbouring pairs, so the pair graph must
  lie in one cycle through every document: degrees <= 2, and a cycle only if it is that one."""
  import networkx as nx  # half a second to import: only a qrels fit's bounds need it
  graph = nx.Graph(pairs)
  if any(degree > 2 for _, degree in graph.degree):
    return False
  cycles = nx.cycle_basis(graph)
  return not cycles or (len(cycles) == 1 and len(cycles[0]) == n)


def pairs_planar(pairs, n: int) -> tuple[bool, str]:
  """d = 3: retrievable pairs are edges of a 3-polytope, a planar graph. (planar, why)."""
  import networkx as nx
  if n >= 3 and len(pairs) > 3 * n - 6:
    return False, f"{len(pairs)} distinct relevant pairs > 3n - 6 = {3 * n - 6}"
  planar, _ = nx.check_planarity(nx.Graph(pairs))
  return planar, f"the {len(pairs)} relevant pairs form a {'' if planar else 'non-'}planar graph"


def forster_bound(relevance) -> int:
  """The paper's sign-rank bound: d >= sign-rank(2A - 1) - 1 (a threshold per query makes
  the score matrix's sign pattern rank d + 1), with Forster's sign-rank >= sqrt(q n) / ||M||
  over the distinct rows of M = 2A - 1."""
  signs = np.unique(2.0 * relevance.matrix() - 1.0, axis=0)
  ratio = math.sqrt(signs.size) / np.linalg.norm(signs, 2)
  return max(1, math.ceil(ratio - 1 - 1e-9))


def lower_bound(relevance) -> tuple[int, str]:
  """(d, why): no unit-norm embedding of fewer dimensions retrieves every relevant set.

  A dimension that fails rules out every smaller one too (R^d sits inside R^(d+1)).
  """
  n = relevance.num_documents
  pairs = relevant_pairs(relevance)
  planar, why_planar = pairs_planar(pairs, n)
  bounds = [(1, "every dimension is at least 1"),
            (forster_bound(relevance), "sign rank (Forster's bound)")]
  if not fits_on_a_line(relevance):
    bounds.append((2, "the relevant sets are not one set and its complement (d = 1)"))
  if not pairs_fit_on_a_circle(pairs, n):
    bounds.append((3, "the relevant pairs do not lie in one cycle (d = 2)"))
  if not planar:
    bounds.append((4, f"{why_planar} (d = 3)"))
  return max(bounds)


@dataclasses.dataclass(frozen=True)
class DimensionBounds:
  """What geometry says about the dimension a relevance matrix needs: lower <= d <= upper,
  the upper bound proven by a float64-certified witness."""
  lower: int
  lower_reason: str
  upper: int
  upper_reason: str
  queries: np.ndarray
  documents: np.ndarray
  margin64: float

  def summary(self, witness_path: str) -> dict:
    return dict(lower_d=self.lower, lower_reason=self.lower_reason, upper_d=self.upper,
                upper_reason=self.upper_reason, exact=self.lower == self.upper,
                witness=witness_path, margin64=self.margin64)


def upper_witness(relevance) -> tuple[int, np.ndarray, np.ndarray, str]:
  """(d, queries, documents, why): a construction retrieving every relevant set.

  With w the largest min(|R|, n - |R|), documents on the trigonometric moment curve in 2w
  dimensions (w-neighbourly), or a regular simplex in n - 1 when that is fewer.
  """
  matrix = relevance.matrix()
  n = relevance.num_documents
  sizes = matrix.sum(axis=1)
  width = int(np.minimum(sizes, n - sizes).max())
  if n - 1 <= 2 * width:
    documents = regular_simplex(n, n - 1)
    return n - 1, sum_queries(matrix, documents), documents, (
        f"a regular simplex of the {n} documents")
  d = 2 * width
  documents = construct.documents_on_curve(n, width, d)
  return d, curve_queries(matrix, d), documents, (
      f"2 x {width} (largest relevant set or complement): the trigonometric moment curve")


def dimension_bounds(relevance) -> DimensionBounds:
  """Both bounds, the upper one's witness verified in float64 (certify.margin64)."""
  lower, lower_reason = lower_bound(relevance)
  upper, queries, documents, upper_reason = upper_witness(relevance)
  margin64 = certify.margin64(queries, documents, relevance.table)
  if not margin64 > 0:
    raise RuntimeError(f"the d = {upper} witness does not verify in float64 "
                       f"(margin {margin64:.3e})")
  return DimensionBounds(lower, lower_reason, upper, upper_reason, queries, documents, margin64)
