import math

import numpy as np
import pytest

from sweep import construct
from sweep import problems


@pytest.mark.parametrize("n, k", [(60, 2), (20, 3)])
def test_every_topk_set_is_retrievable_in_2k_dimensions(n, k):
  queries, documents = construct.construction(n, k)
  assert queries.shape == (math.comb(n, k), 2 * k) and documents.shape == (n, 2 * k)
  ok, margin = construct.verify(queries, documents, problems.colex_subsets(n, k))
  assert ok and margin > 0


def test_zero_padding_keeps_the_witness():
  queries, documents = construct.construction(30, 2, d=8)
  assert queries.shape == (math.comb(30, 2), 8) and documents.shape == (30, 8)
  assert not queries[:, 4:].any() and not documents[:, 4:].any()
  assert construct.verify(queries, documents, problems.colex_subsets(30, 2))[0]


def test_unit_norm_and_equal_scores_on_the_relevant_set():
  n, k = 25, 3
  queries, documents = construct.construction(n, k)
  np.testing.assert_allclose(np.linalg.norm(documents, axis=1), 1.0, atol=1e-12)
  np.testing.assert_allclose(np.linalg.norm(queries, axis=1), 1.0, atol=1e-12)
  subsets = problems.colex_subsets(n, k)
  i = 1234
  scores = queries[i] @ documents.T
  relevant = scores[subsets[i]]
  others = np.delete(scores, subsets[i])
  assert np.ptp(relevant) < 1e-9
  assert relevant.min() > others.max()


def test_verify_margin_edge_cases():
  queries, documents = construct.construction(3, 3)
  assert construct.verify(queries, documents, problems.colex_subsets(3, 3)) == (True, math.inf)
  queries, documents = construct.construction(6, 2)
  relevance = problems.colex_subsets(6, 2)
  wrong = relevance[::-1]  # another query's set: not its top-2
  ok, margin = construct.verify(queries, documents, wrong)
  assert not ok and margin < 0
  # A padded entry (-1) leaves only the other document relevant, and hides none.
  padded = np.array([[0, problems.PAD]])
  _, docs = construct.construction(6, 2)
  ok, margin = construct.verify(docs[:1], docs, padded)  # query = document 0
  assert ok and margin == pytest.approx(1 - docs[1] @ docs[0])


def test_float32_limit_is_finite_where_float64_still_verifies():
  limit = construct.largest_verified_n(2, np.float32)
  assert 100 <= limit <= 200  # 164 when measured; docs/PROTOCOL.md: around 100 to 200 for d = 4
  relevance = problems.colex_subsets(limit + 1, 2)
  assert construct.verify(*construct.construction(limit, 2, dtype=np.float32),
                          problems.colex_subsets(limit, 2))[0]
  assert not construct.verify(*construct.construction(limit + 1, 2, dtype=np.float32),
                              relevance)[0]
  assert construct.verify(*construct.construction(limit + 1, 2, dtype=np.float64), relevance)[0]


def test_largest_verified_n_is_the_first_failure_of_a_linear_scan():
  limit = construct.largest_verified_n(3, np.float32)
  for n in range(4, limit + 2):
    assert (construct.construction_margin(n, 3, np.float32) > 0) == (n <= limit)


def test_anchored_margin_matches_the_full_one_in_float64():
  for n in (9, 17):
    full = construct.construction_margin(n, 2, np.float64)
    anchored = construct.construction_margin(n, 2, np.float64, anchored=True)
    assert anchored == pytest.approx(full, rel=1e-9)


def test_full_check_refuses_too_many_queries():
  with pytest.raises(ValueError, match="n=50") as error:
    construct.construction_margin(50, 3, np.float64, max_queries=1000)
  assert "\n" not in str(error.value)


def test_too_few_dimensions_raise():
  with pytest.raises(ValueError, match="d=3") as error:
    construct.construction(10, 2, d=3)
  assert "\n" not in str(error.value)


def test_certify_refuses_embeddings_that_are_not_finite_unit_rows():
  # Two unit documents and a zero one: every pair is the strict top-2 of its query, since
  # the zero document's score 0 beats the other's -1/sqrt(2). verify() alone accepts it.
  documents = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
  queries = np.array([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0]]) / np.sqrt(2)
  table = problems.colex_subsets(3, 2)
  assert [sorted(np.argsort(-scores)[:2]) for scores in queries @ documents.T] == table.tolist()
  assert construct.verify(queries, documents, table)[0]
  assert not construct.certify(True, queries, documents, table)[0]
  unit = documents.copy()
  unit[2] = [-1.0, -1.0] / np.sqrt(2)  # the same ranking from a unit document
  assert construct.verify(queries, unit, table)[0] and construct.certify(True, queries, unit, table)[0]
  assert not construct.certify(True, 0.5 * queries, unit, table)[0]  # same ranks, not unit
  for bad in (np.nan, np.inf):
    broken = unit.copy()
    broken[0, 0] = bad
    assert not construct.certify(True, queries, broken, table)[0]
