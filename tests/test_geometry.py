"""The geometric critical n G(d, k), its witnesses, and the bounds on a relevance matrix's d.

Every value is checked against geometry built here, not against a table: the witness at
G(d, k) must let an LP separate every k-subset (no queries given), and G + 1 documents must
leave some k-subset that no hyperplane separates.
"""

import itertools
import math
import subprocess
import sys

import matplotlib.pyplot as plt
import numpy as np
import pytest

from plots import critical_n
from sweep import certify, geometry, problems, qrels

SMALL_CASES = [(d, k) for k in range(1, 5) for d in range(1, 2 * k)]


def circle(angles):
  return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def random_sphere(rng, n, d):
  points = rng.normal(size=(n, d))
  return points / np.linalg.norm(points, axis=1, keepdims=True)


@pytest.mark.parametrize("d, k", SMALL_CASES)
def test_every_k_subset_of_the_witness_at_g_is_separable(d, k):
  n = geometry.critical_n(d, k)
  queries, documents = geometry.witness(d, k)
  assert documents.shape == (n, d) and queries.shape == (math.comb(n, k), d)
  np.testing.assert_allclose(np.linalg.norm(documents, axis=1), 1.0, atol=1e-12)
  np.testing.assert_allclose(np.linalg.norm(queries, axis=1), 1.0, atol=1e-12)
  ok, margin = certify.verify(queries, documents, problems.colex_subsets(n, k))
  assert ok and margin > 1e-3
  assert geometry.lp_margins(documents, k).min() > geometry.LP_TOLERANCE


@pytest.mark.parametrize("k", [2, 3, 4])
def test_at_d_2_every_cyclic_order_of_g_plus_one_documents_fails(k):
  """On a circle only the cyclic order matters; every order of G + 1 documents (at random
  angles) leaves a k-subset no line separates, and every order of G documents leaves none."""
  n = geometry.critical_n(2, k)
  rng = np.random.default_rng(k)
  for size, separable in ((n, True), (n + 1, False)):
    for rest in itertools.permutations(range(1, size)):
      order = (0, *rest)
      angles = np.empty(size)
      angles[list(order)] = np.sort(rng.uniform(0, 2 * np.pi, size))
      margins = geometry.lp_margins(circle(angles), k)
      assert (margins.min() > geometry.LP_TOLERANCE) == separable, order


@pytest.mark.parametrize("d, k", [(3, 2), (3, 3), (4, 3), (5, 3), (4, 4), (4, 5)])
def test_random_configurations_of_g_plus_one_documents_fail(d, k):
  n = geometry.critical_n(d, k) + 1
  rng = np.random.default_rng(d * 10 + k)
  for _ in range(5):
    assert geometry.lp_margins(random_sphere(rng, n, d), k).min() <= geometry.LP_TOLERANCE


@pytest.mark.parametrize("p, d", [(2, 2), (2, 4), (3, 4), (3, 5)])
def test_two_simplices_fail_exactly_at_their_radon_partition(p, d):
  """Of all 2^(d+2) subsets of the d + 2 witness, only the two simplices are inseparable."""
  documents = geometry.two_simplices(p, d)
  np.testing.assert_allclose(np.linalg.norm(documents, axis=1), 1.0, atol=1e-12)
  inseparable = {subset for size in range(1, d + 2)
                 for subset in itertools.combinations(range(d + 2), size)
                 if geometry.separation_margin(documents, subset) <= geometry.LP_TOLERANCE}
  assert inseparable == {tuple(range(p)), tuple(range(p, d + 2))}


def test_no_limit_from_2k_on():
  assert all(geometry.critical_n(d, k) is None for k in (1, 2, 3) for d in range(2 * k, 2 * k + 3))
  assert geometry.critical_n_cell(4, 2) == geometry.UNBOUNDED and geometry.critical_n_cell(3, 2) == 4
  queries, documents = geometry.witness(5, 2, n=12)
  assert certify.verify(queries, documents, problems.colex_subsets(12, 2))[0]
  assert geometry.lp_margins(documents, 2).min() > geometry.LP_TOLERANCE


@pytest.mark.parametrize("call, match", [
    (lambda: geometry.critical_n(0, 2), "d=0 is out of range"),
    (lambda: geometry.critical_n(3, 0), "k=0 is out of range"),
    (lambda: geometry.witness(3, 2, n=5), r"n=5 is out of range: need 2 <= n <= G\(d=3, k=2\) = 4"),
    (lambda: geometry.witness(4, 2), "n is required for d=4"),
])
def test_bad_input_is_one_line(call, match):
  with pytest.raises(ValueError, match=match) as error:
    call()
  assert "\n" not in str(error.value)


# -- relevance matrices -------------------------------------------------------------------------


def pair_relevance(pairs, n):
  matrix = np.zeros((len(pairs), n), bool)
  for row, pair in enumerate(pairs):
    matrix[row, list(pair)] = True
  return qrels.relevance_from_matrix(matrix)


def test_a_cycle_of_pairs_fits_on_a_circle():
  pairs = [(i, (i + 1) % 7) for i in range(7)]
  bounds = geometry.dimension_bounds(pair_relevance(pairs, 7))
  assert bounds.lower == 2 and bounds.upper == 4
  # The lower bound is attained: seven documents on a circle in cycle order.
  documents = circle(2 * np.pi * np.arange(7) / 7)
  assert all(geometry.separation_margin(documents, p) > geometry.LP_TOLERANCE for p in pairs)


def test_a_planar_pair_graph_leaves_d_3_open():
  octahedron = [(i, j) for i, j in itertools.combinations(range(6), 2) if (i, j) not in
                ((0, 1), (2, 3), (4, 5))]
  assert len(octahedron) == 12 == 3 * 6 - 6
  bounds = geometry.dimension_bounds(pair_relevance(octahedron, 6))
  assert bounds.lower == 3 and bounds.upper == 4
  # And d = 3 does fit it: the octahedron's vertices, whose edges are exactly these pairs.
  documents = np.concatenate([np.eye(3), -np.eye(3)])[[0, 3, 1, 4, 2, 5]]
  assert all(geometry.separation_margin(documents, p) > geometry.LP_TOLERANCE for p in octahedron)


@pytest.mark.parametrize("pairs, n, reason", [
    (list(itertools.combinations(range(5), 2)), 5, "10 distinct relevant pairs > 3n - 6 = 9"),
    ([(i, j) for i in range(3) for j in range(3, 6)], 6, "non-planar"),  # K3,3: 9 <= 12 pairs
])
def test_a_non_planar_pair_graph_needs_d_4(pairs, n, reason):
  bounds = geometry.dimension_bounds(pair_relevance(pairs, n))
  assert bounds.lower == bounds.upper == 4 and reason in bounds.lower_reason
  relevance = pair_relevance(pairs, n)
  assert certify.verify(bounds.queries, bounds.documents, relevance.table) == (True, bounds.margin64)


def test_limit_small_needs_exactly_four_dimensions():
  relevance = qrels.load_relevance(qrels.limit_small_path())
  bounds = geometry.dimension_bounds(relevance)
  assert (bounds.lower, bounds.upper) == (4, 4) and bounds.margin64 > 0
  assert bounds.documents.shape == (46, 4)


def test_complements_count_and_a_simplex_caps_the_upper_bound():
  # Sets of n - 2 documents are retrievable iff their complementary pairs are.
  matrix = ~pair_relevance(list(itertools.combinations(range(5), 2)), 5).matrix()
  bounds = geometry.dimension_bounds(qrels.relevance_from_matrix(matrix))
  assert bounds.lower == bounds.upper == 4
  # Four documents, all pairs: a tetrahedron (d = 3), and the pair graph K4 rules out d = 2.
  bounds = geometry.dimension_bounds(pair_relevance(list(itertools.combinations(range(4), 2)), 4))
  assert (bounds.lower, bounds.upper) == (3, 3) and "simplex" in bounds.upper_reason


def test_forster_bound_on_a_hadamard_pattern():
  hadamard = np.array([[1]])
  for _ in range(4):
    hadamard = np.block([[hadamard, hadamard], [hadamard, -hadamard]])
  relevance = qrels.relevance_from_matrix(hadamard[1:] > 0)  # row 0 is all relevant
  assert geometry.forster_bound(relevance) == math.ceil(math.sqrt(15 * 16) / 4 - 1) == 3
  bounds = geometry.dimension_bounds(relevance)
  assert 3 <= bounds.lower <= bounds.upper


def test_d_1_fits_one_set_and_its_complement():
  one = qrels.relevance_from_matrix(np.array([[1, 1, 0], [0, 0, 1], [1, 1, 0]]))
  assert geometry.fits_on_a_line(one)
  assert geometry.lower_bound(one)[0] == 1
  two = qrels.relevance_from_matrix(np.array([[1, 0, 0], [0, 1, 0]]))
  assert not geometry.fits_on_a_line(two) and geometry.lower_bound(two)[0] >= 2


# -- the command and the figure -----------------------------------------------------------------


def sweep_cli(*args):
  return subprocess.run([sys.executable, "-m", "sweep.cli", *args], capture_output=True,
                        text=True, timeout=120)


def test_geometry_command_certifies_each_witness():
  out = sweep_cli("geometry", "--k=3", "--dims=2,4,6", "--n_unbounded=10")
  assert out.returncode == 0, out.stderr
  rows = {line.split()[0]: line.split() for line in out.stdout.splitlines()[1:]}
  assert rows["2"][2:4] == ["4", "4"] and rows["4"][2:4] == ["6", "6"]
  assert rows["6"][2:4] == [geometry.UNBOUNDED, "10"]
  assert "all 20 separable" in out.stdout and "all 120 separable" in out.stdout


@pytest.mark.parametrize("args, message", [
    (("--k=0", "--dims=2"), "error: k=0 is out of range: need an integer >= 1"),
    (("--k=2", "--dims=2,x"), "error: --dims=2,x is out of range: need integers >= 1"),
    (("--k=2", "--dims=4", "--n_unbounded=1"), "error: n=1 is out of range: need n >= k = 2"),
])
def test_geometry_command_refuses_bad_input_in_one_line(args, message):
  out = sweep_cli("geometry", *args)
  assert out.returncode != 0 and out.stderr.strip() == message


def test_the_figure_draws_the_geometric_limit_as_its_own_series():
  figure, ax = plt.subplots()
  line, band = critical_n._draw_geometric_limit(ax, 3, 2, 9)
  assert list(line.get_xdata()) == [2, 3, 4, 5]
  assert list(line.get_ydata()) == [geometry.critical_n(d, 3) for d in (2, 3, 4, 5)]
  assert "no limit from d = 2k = 6" in band.get_label()
  plt.close(figure)
