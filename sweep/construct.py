"""Closed-form witnesses that every top-k set of n documents is retrievable in d = 2k dimensions.

The paper's critical n is the largest n its optimiser manages to fit. It is not a limit of
the geometry: in d >= 2k, n documents at equally spaced angles on the trigonometric moment
curve form a k-neighbourly polytope, and for every k-subset S there is a query whose exact
top-k is S, for every n (docs/PROTOCOL.md, "Exact geometry"). The only limit is floating point:
the retrieval margin shrinks like (2*pi/n)^(2k), so in float32 the witnesses stop verifying at
a modest n, and in float64 far later. This module builds the witnesses with numpy alone (no
solver, no training); certify.py checks them.
"""

from __future__ import annotations

import numpy as np


def _check_dimension(d: int, k: int) -> None:
  if d < 2 * k:
    raise ValueError(f"d={d} is out of range: need d >= 2k = {2 * k} for the construction")


def _angles(n: int) -> np.ndarray:
  return 2 * np.pi * np.arange(n) / n


def documents_on_curve(n: int, k: int, d: int) -> np.ndarray:
  """[n, d] float64: (cos t, sin t, ..., cos kt, sin kt)/sqrt(k) at t_j = 2 pi j / n, zero-padded.

  Every row has unit norm since cos^2 + sin^2 = 1 in each of the k planes.
  """
  _check_dimension(d, k)
  m_t = np.arange(1, k + 1)[None, :] * _angles(n)[:, None]  # [n, k]
  documents = np.zeros((n, d))
  documents[:, 0:2 * k:2] = np.cos(m_t)
  documents[:, 1:2 * k:2] = np.sin(m_t)
  return documents / np.sqrt(k)


def queries_for_subsets(subsets: np.ndarray, n: int, d: int) -> np.ndarray:
  """[len(subsets), d] float64 unit queries: one per row of subsets (k document indices).

  The query of S holds the cos/sin coefficients of p_S(t) = -prod_{i in S} (1 - cos(t - t_i)),
  without its constant term, so its score against the document at angle t is
  (p_S(t) - constant) / sqrt(k): the same on S, where p_S = 0, and strictly lower elsewhere,
  where p_S < 0. The coefficients are exact: the product is expanded in the complex
  exponential basis c_m e^{imt}, m = -k..k, one degree-1 factor at a time, for all rows at once.
  """
  subsets = np.asarray(subsets)
  k = subsets.shape[1]
  _check_dimension(d, k)
  # 1 - cos(t - a) = 1 - e^{it} e^{-ia} / 2 - e^{-it} e^{ia} / 2.
  phase = np.exp(-1j * _angles(n)[subsets])  # e^{-i t_i}, [q, k]
  coefficients = np.zeros((len(subsets), 2 * k + 1), np.complex128)  # index m + k
  coefficients[:, k] = 1.0
  for j in range(k):
    # The degree stays <= j + 1 <= k, so nothing is shifted off either end.
    up = np.zeros_like(coefficients)
    down = np.zeros_like(coefficients)
    up[:, 1:] = coefficients[:, :-1]  # times e^{it}
    down[:, :-1] = coefficients[:, 1:]  # times e^{-it}
    p = phase[:, j:j + 1]
    coefficients = coefficients - 0.5 * p * up - 0.5 * np.conj(p) * down
  # A real polynomial: c_{-m} = conj(c_m), so c_m e^{imt} + c.c. = 2 Re c_m cos mt - 2 Im c_m sin mt.
  positive = coefficients[:, k + 1:]  # m = 1..k
  queries = np.zeros((len(subsets), d))
  queries[:, 0:2 * k:2] = -2 * positive.real  # the leading minus of p_S
  queries[:, 1:2 * k:2] = 2 * positive.imag
  return queries / np.linalg.norm(queries, axis=1, keepdims=True)
