"""The paper's Table 6 and its cubic fit (Weller et al. 2025, k = 2), from the one shipped file.

sweep/data/paper_table6.csv holds critical n for d = 4 … 45. The paper fits a cubic by least
squares over d >= 4 and prints its coefficients to four decimals; `cubic()` is that printed
fit, recomputed from the table. Searches start at the table's critical n where it has one, and
at the printed cubic beyond it (targets.CriticalN.start_n).
The figure and the fit table use the unrounded fit (`fit_coefficients()`). No JAX here:
reading the table must stay cheap for the plotting and benchmark code.
"""

from __future__ import annotations

import csv
import functools
import importlib.resources

import numpy as np
from numpy.polynomial import Polynomial

TABLE = "paper_table6.csv"
DEGREE, D_MIN = 3, 4  # the paper's fit: a cubic over d >= 4
PRINTED_DECIMALS = 4  # the precision the paper prints its coefficients to


def read_table6() -> list[dict]:
  """The paper's Table 6 (k = 2) as rows {d, k, critical_n} of ints, in the file's order."""
  resource = importlib.resources.files("sweep") / "data" / TABLE
  with resource.open(newline="") as f:
    return [{key: int(value) for key, value in row.items()} for row in csv.DictReader(f)]


@functools.cache
def fit_coefficients() -> tuple[float, ...]:
  """The least-squares cubic of Table 6 over d >= D_MIN, ascending powers of d, unrounded."""
  rows = [r for r in read_table6() if r["d"] >= D_MIN]
  d = np.array([r["d"] for r in rows], dtype=float)
  n = np.array([r["critical_n"] for r in rows], dtype=float)
  return tuple(float(c) for c in Polynomial.fit(d, n, DEGREE).convert().coef)


@functools.cache
def cubic() -> tuple[float, ...]:
  """The paper's cubic as printed: fit_coefficients() rounded to PRINTED_DECIMALS.

  The rounding matters: searches past the table start at round(cubic at d), which the
  unrounded fit moves from d = 7 on (4,613 -> 4,589 at d = 100).
  """
  return tuple(round(c, PRINTED_DECIMALS) for c in fit_coefficients())



@functools.cache
def _critical_n_by_d() -> dict[int, int]:
  return {row["d"]: row["critical_n"] for row in read_table6()}


def critical_n(d: int) -> int | None:
  """The table's critical n at d (k = 2), or None where it has none."""
  return _critical_n_by_d().get(d)
