import math

import numpy as np
import pytest

from sweep import problems


@pytest.mark.parametrize("k", [1, 2, 3])
def test_colex_prefix_property(k):
  big = problems.colex_subsets(9, k)
  assert big.shape == (math.comb(9, k), k)
  for n in range(k, 9):
    np.testing.assert_array_equal(big[:math.comb(n, k)], problems.colex_subsets(n, k))
    assert big[:math.comb(n, k)].max() == n - 1


def test_subsets_are_distinct_sorted_rows():
  table = problems.colex_subsets(7, 3)
  assert (np.diff(table, axis=1) > 0).all()
  assert len({tuple(row) for row in table}) == len(table)


def test_subsample_is_seeded_and_distinct():
  a = problems.topk_relevance(10, 2, num_queries=12, seed=3)
  b = problems.topk_relevance(10, 2, num_queries=12, seed=3)
  c = problems.topk_relevance(10, 2, num_queries=12, seed=4)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  assert len({tuple(r) for r in a}) == 12


def test_config_streams_depend_on_the_configuration_alone():
  draw = lambda *args: [rng.standard_normal(3) for rng in problems.config_streams(*args)]
  np.testing.assert_array_equal(draw(1, 4, 9, 2), draw(1, 4, 9, 2))
  draws = [draw(*args) for args in
           [(1, 4, 9, 2), (2, 4, 9, 2), (1, 5, 9, 2), (1, 4, 10, 2), (1, 4, 9, 3)]]
  assert len({tuple(np.concatenate(d)) for d in draws}) == 5
  assert not np.array_equal(*draws[0])  # queries and documents draw apart


@pytest.mark.parametrize("args, field", [
    (dict(d=0, n=4, k=2), "d=0"),
    (dict(d=2, n=4, k=0), "k=0"),
    (dict(d=2, n=1, k=2), "n=1"),
    (dict(d=2, n=4, k=2, num_queries=7), "q=7"),
    (dict(d=2, n=4, k=2, num_queries=0), "q=0"),
])
def test_validation_names_the_field(args, field):
  with pytest.raises(ValueError, match=field) as error:
    problems.validate_problem(**args)
  assert "\n" not in str(error.value)
