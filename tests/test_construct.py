import math

import numpy as np
import pytest

from sweep import certify, construct
from sweep import problems
from helpers import curve_witness


@pytest.mark.parametrize("n, k", [(60, 2), (20, 3)])
def test_every_topk_set_is_retrievable_in_2k_dimensions(n, k):
  queries, documents = curve_witness(n, k)
  assert queries.shape == (math.comb(n, k), 2 * k) and documents.shape == (n, 2 * k)
  ok, margin = certify.verify(queries, documents, problems.colex_subsets(n, k))
  assert ok and margin > 0


def test_zero_padding_keeps_the_witness():
  queries, documents = curve_witness(30, 2, d=8)
  assert queries.shape == (math.comb(30, 2), 8) and documents.shape == (30, 8)
  assert not queries[:, 4:].any() and not documents[:, 4:].any()
  assert certify.verify(queries, documents, problems.colex_subsets(30, 2))[0]


def test_unit_norm_and_equal_scores_on_the_relevant_set():
  n, k = 25, 3
  queries, documents = curve_witness(n, k)
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
  queries, documents = curve_witness(3, 3)
  assert certify.verify(queries, documents, problems.colex_subsets(3, 3)) == (True, math.inf)
  queries, documents = curve_witness(6, 2)
  relevance = problems.colex_subsets(6, 2)
  wrong = relevance[::-1]  # another query's set: not its top-2
  ok, margin = certify.verify(queries, documents, wrong)
  assert not ok and margin < 0
  # A padded entry (-1) leaves only the other document relevant, and hides none.
  padded = np.array([[0, problems.PAD]])
  _, docs = curve_witness(6, 2)
  ok, margin = certify.verify(docs[:1], docs, padded)  # query = document 0
  assert ok and margin == pytest.approx(1 - docs[1] @ docs[0])


def test_too_few_dimensions_raise():
  for build in (lambda: construct.documents_on_curve(10, 2, 3),
                lambda: construct.queries_for_subsets(problems.colex_subsets(10, 2), 10, 3)):
    with pytest.raises(ValueError, match="d=3") as error:
      build()
    assert "\n" not in str(error.value)


def test_certify_refuses_embeddings_that_are_not_finite_unit_rows():
  # Two unit documents and a zero one: every pair is the strict top-2 of its query, since
  # the zero document's score 0 beats the other's -1/sqrt(2). verify() alone accepts it.
  documents = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
  queries = np.array([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0]]) / np.sqrt(2)
  table = problems.colex_subsets(3, 2)
  assert [sorted(np.argsort(-scores)[:2]) for scores in queries @ documents.T] == table.tolist()
  assert certify.verify(queries, documents, table)[0]
  assert not certify.success_certificate(True, queries, documents, table)[0]
  unit = documents.copy()
  unit[2] = [-1.0, -1.0] / np.sqrt(2)  # the same ranking from a unit document
  assert certify.verify(queries, unit, table)[0] and certify.success_certificate(True, queries, unit, table)[0]
  assert not certify.success_certificate(True, 0.5 * queries, unit, table)[0]  # same ranks, not unit
  for bad in (np.nan, np.inf):
    broken = unit.copy()
    broken[0, 0] = bad
    assert not certify.success_certificate(True, queries, broken, table)[0]
