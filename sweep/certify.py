"""Float64 certificates: whether embeddings retrieve every relevant set under a success
criterion, recomputed from the arrays alone (witnesses, trained embeddings, constructions).

A float32 run can "succeed" on ties or rounding; a certificate is the same check in float64
arithmetic on the same embeddings, with the criterion's margin (problems.CRITERIA).
"""

from __future__ import annotations

import math

import numpy as np

from sweep import problems

_BLOCK_SCORES = 1 << 22  # scores per block of verify: bounds its memory to ~32 MB in float64


def query_margins(queries, documents, relevance) -> np.ndarray:
  """[q] margins in the dtype of the inputs: lowest relevant minus highest other score.

  relevance is a table [q, r] of document indices, -1 where unused. +inf for a query whose
  every document is relevant.
  """
  lowest, highest = query_extremes(queries, documents, relevance)
  return lowest - highest


def query_extremes(queries, documents, relevance) -> tuple[np.ndarray, np.ndarray]:
  """([q] lowest relevant score, [q] highest other score) in the dtype of the inputs, -inf
  where every document is relevant. Scores are computed in blocks of queries to bound memory.
  """
  queries = np.asarray(queries)
  documents = np.asarray(documents)
  relevance = np.asarray(relevance)
  dtype = np.result_type(queries, documents)
  queries, documents = queries.astype(dtype, copy=False), documents.astype(dtype, copy=False)
  n = documents.shape[0]
  valid = relevance != problems.PAD
  gather = np.where(valid, relevance, n)  # padded entries point at a dummy column of -inf
  lowest, highest = np.empty(len(queries), dtype), np.empty(len(queries), dtype)
  block = max(1, _BLOCK_SCORES // max(n, 1))
  for start in range(0, len(queries), block):
    stop = min(start + block, len(queries))
    scores = np.full((stop - start, n + 1), -np.inf, dtype)
    scores[:, :n] = queries[start:stop] @ documents.T  # in dtype
    rows = np.arange(stop - start)[:, None]
    columns = gather[start:stop]
    lowest[start:stop] = np.where(valid[start:stop], scores[rows, columns], np.inf).min(axis=1)
    scores[rows, columns] = -np.inf
    highest[start:stop] = scores.max(axis=1)
  return lowest, highest


def verify(queries, documents, relevance) -> tuple[bool, float]:
  """(ok, margin): margin = min over queries of lowest relevant minus highest other score.

  Computed in the dtype of the inputs; ok means every query retrieves its set strictly.
  The margin is +inf where every document is relevant (n == k).
  """
  margins = query_margins(queries, documents, relevance)
  margin = float(margins.min()) if len(margins) else math.inf
  return margin > 0, margin


# How far a row's squared norm may be from 1 and still count as a unit vector: rows
# normalised in float32 are within ~1e-6 of it; a zero, NaN or inf row is nowhere near.
UNIT_TOLERANCE = 1e-3


def unit_rows(x) -> bool:
  """Whether every row of x is a finite unit vector, as the protocol's embeddings are."""
  x = np.asarray(x, np.float64)
  with np.errstate(over="ignore", invalid="ignore"):
    return bool(np.all(np.abs((x * x).sum(axis=-1) - 1) <= UNIT_TOLERANCE))


def _embeddings(name: str, array) -> np.ndarray:
  array = np.asarray(array)
  if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
    raise ValueError(f"{name} are not real numbers (dtype {array.dtype})")
  if array.ndim != 2 or 0 in array.shape:
    raise ValueError(f"{name} need a non-empty 2-D array, got shape {array.shape}")
  return array.astype(np.float64)


def check_witness(queries, documents, relevance) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(queries, documents) in float64 and the relevance table, once they state a problem a
  margin can certify; else a one-line ValueError saying what is wrong.

  The table is how witnesses are written: row i the distinct indices of query i's relevant
  documents, then PAD; every query needs a relevant document and a non-relevant one, or its
  margin (+inf, or none at all) would certify nothing.
  """
  queries, documents = _embeddings("queries", queries), _embeddings("documents", documents)
  relevance = np.asarray(relevance)
  if queries.shape[1] != documents.shape[1]:
    raise ValueError(f"queries have {queries.shape[1]} dimensions, documents "
                     f"{documents.shape[1]}")
  if not np.issubdtype(relevance.dtype, np.integer):
    raise ValueError(f"relevance needs integer document indices, got dtype {relevance.dtype}")
  if relevance.ndim != 2 or relevance.shape[0] != len(queries) or relevance.shape[1] == 0:
    raise ValueError(f"relevance needs shape ({len(queries)} queries, >= 1), got "
                     f"{relevance.shape}")
  n = len(documents)
  valid = relevance != problems.PAD
  counts = valid.sum(axis=1)
  ordered = np.sort(relevance, axis=1)
  flagged = (
      (valid & ((relevance < 0) | (relevance >= n))).any(axis=1),
      (~valid[:, :-1] & valid[:, 1:]).any(axis=1),
      ((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] != problems.PAD)).any(axis=1),
      counts == 0, counts >= n)
  reasons = (f"an index outside 0..{n - 1} (or {problems.PAD}, padding)",
             "an index after padding", "a repeated index", "no relevant document",
             f"all {n} documents relevant")
  for bad, reason in zip(flagged, reasons):
    if bad.any():
      row = int(np.flatnonzero(bad)[0])
      raise ValueError(f"relevance row {row} has {reason}: {relevance[row].tolist()} "
                       f"({int(bad.sum())} of {len(bad)} rows)")
  return queries, documents, relevance


def margin64(queries, documents, relevance, criterion: str = "topk") -> float:
  """The float64 margin of embeddings under a success criterion (problems.CRITERIA): the
  smallest query margin (topk, margin), or the lowest relevant score of any query minus the
  highest other score of any query (threshold). NaN when an embedding is NaN or inf (an
  infinite score could fake any margin). Raises (check_witness) where the arrays state no
  problem to certify."""
  queries, documents, relevance = check_witness(queries, documents, relevance)
  if not (np.isfinite(queries).all() and np.isfinite(documents).all()):
    return math.nan
  with np.errstate(over="ignore", invalid="ignore"):  # huge finite rows: an inf score, no margin
    lowest, highest = query_extremes(queries, documents, relevance)
    margin = (lowest.min() - highest.max() if criterion == "threshold" else
              (lowest - highest).min())
  return float(margin) if math.isfinite(margin) else math.nan


def passes(criterion: str, epsilon: float, margin: float) -> bool:
  """Whether a criterion's margin (margin64) meets it: > 0, or >= epsilon for margin."""
  return margin >= epsilon if criterion == "margin" else margin > 0


def success_certificate(success: bool, queries, documents, relevance, criterion: str = "topk",
                        epsilon: float = 0.0) -> tuple[bool, float]:
  """(certified, margin64): a success re-checked in float64 from its final embeddings, under
  the criterion it was found under.

  A float32 run can "succeed" on ties or rounding (top-k breaks ties by index); the
  certificate asks that every relevant document strictly outranks every other one, in
  float64 arithmetic on the same (float32) embeddings, and that the embeddings are what the
  protocol trains: finite unit rows. A zero row scores 0 against everything, which can
  outrank negative scores; a NaN or inf row proves nothing at all.
  """
  margin = margin64(queries, documents, relevance, criterion)
  return bool(success and passes(criterion, epsilon, margin) and unit_rows(queries)
              and unit_rows(documents)), margin

