"""Tests of the paper's Table 6 and cubic (sweep/paper.py), the one source of both."""

import subprocess
import sys

import numpy as np
from ml_collections import ConfigDict

from sweep import paper

# Weller et al. 2025, Table 6's fit as the paper prints it (ascending powers of d).
PRINTED = (-10.5322, 4.0309, 0.0520, 0.0037)


def test_table6_is_k2_for_d_4_to_45_growing_with_d():
  rows = paper.read_table6()
  assert [r["d"] for r in rows] == list(range(4, 46))
  assert {r["k"] for r in rows} == {2}
  n = [r["critical_n"] for r in rows]
  assert n[0] == 10 and all(a < b for a, b in zip(n, n[1:]))


def test_fit_is_least_squares_over_the_table():
  rows = [r for r in paper.read_table6() if r["d"] >= paper.D_MIN]
  d = np.array([r["d"] for r in rows], dtype=float)
  n = np.array([r["critical_n"] for r in rows], dtype=float)
  expected = np.linalg.lstsq(np.vander(d, paper.DEGREE + 1, increasing=True), n, rcond=None)[0]
  np.testing.assert_allclose(paper.fit_coefficients(), expected, rtol=1e-9)


def test_cubic_is_the_fit_to_the_printed_precision():
  assert paper.cubic() == PRINTED
  np.testing.assert_allclose(paper.fit_coefficients(), PRINTED, atol=0.5e-4, rtol=0)


def test_searches_start_at_the_table_then_where_the_printed_cubic_puts_them():
  """CriticalN.start_n is Table 6's critical n for d = 4 … 45, then the rounded cubic at d:
  the same start for every d = 46 … 200 as the printed coefficients give (the unrounded fit
  would move most of them); k = 2 only, and config.start_n before both."""
  from sweep import targets  # imports JAX
  sweep = targets.CriticalN(ConfigDict(dict(k=2, start_n=0)))
  table = {row["d"]: row["critical_n"] for row in paper.read_table6()}
  assert [sweep.start_n(d) for d in range(4, 46)] == [table[d] for d in range(4, 46)]
  assert sweep.start_n(12) == 47 and sweep.start_n(45) == 626
  printed = lambda d: max(3, round(sum(c * d**i for i, c in enumerate(PRINTED))))
  assert [sweep.start_n(d) for d in range(46, 201)] == [printed(d) for d in range(46, 201)]
  assert sweep.start_n(100) == 4613
  unrounded = lambda d: round(sum(c * d**i for i, c in enumerate(paper.fit_coefficients())))
  assert sum(printed(d) != unrounded(d) for d in range(46, 201)) > 100
  # Every d = 1 … 200 rounds the same, so any caller of the cubic sees the old values.
  assert ([round(sum(c * d**i for i, c in enumerate(paper.cubic()))) for d in range(1, 201)]
          == [round(sum(c * d**i for i, c in enumerate(PRINTED))) for d in range(1, 201)])
  assert [targets.CriticalN(ConfigDict(dict(k=k, start_n=0))).start_n(12) for k in (3, 4)] == [4, 5]
  assert targets.CriticalN(ConfigDict(dict(k=2, start_n=30))).start_n(12) == 30


def test_reading_the_paper_imports_no_jax():
  code = "import sys, sweep.paper as p; p.cubic(); print('jax' in sys.modules)"
  done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert done.stdout.strip() == "False"
