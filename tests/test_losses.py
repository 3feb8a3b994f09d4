"""The losses beyond InfoNCE, the success criteria and the seed statistics, on tiny problems."""

import json
import math

import jax
import numpy as np
import pytest

from sweep import config as config_lib
from sweep import certify, objective, targets
from sweep import trainer
from sweep.ledger import Ledger
from sweep.problems import LOSS_FORMS, Probe
from sweep.store import Store
from helpers import loss_trace

LOSSES = LOSS_FORMS


def _loss_at(settings, configs, shape, state, slot=0):
  slots = trainer.pack(configs, shape)
  one = lambda tree: jax.tree.map(lambda x: x[slot], tree)
  trained = trainer.trained_params(settings, one(state))
  return float(trainer.slot_loss(settings, one(slots), trained))


@pytest.mark.parametrize("loss", LOSSES)
def test_each_loss_lowers_its_own_value_on_a_solvable_problem(loss):
  settings = trainer.TrainSettings(loss=loss, max_steps=300, patience=300, eval_every=50)
  config = trainer.Configuration(d=4, n=6, seed=3)
  shape = trainer.BucketShape.fitting([config])
  start = _loss_at(settings, [config], shape, trainer.init_state(settings, shape, [config]))
  result = trainer.train([config], settings)[0]
  assert math.isfinite(start) and result["best_loss"] < 0.9 * start


@pytest.mark.parametrize("loss", LOSSES)
def test_padded_slots_and_documents_change_nothing(loss):
  settings = trainer.TrainSettings(loss=loss)
  config = trainer.Configuration(d=3, n=6, seed=7)
  others = [trainer.Configuration(d=5, n=9, seed=1), trainer.Configuration(d=2, n=4, seed=3)]
  alone, alone_state = loss_trace([config], trainer.BucketShape.fitting([config]), 60, settings)
  batch = [others[0], config, others[1]]
  together, state = loss_trace(batch, trainer.BucketShape.fitting(batch, slots=4), 60, settings)
  np.testing.assert_allclose(alone[:, 0], together[:, 1], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(trainer.embeddings(alone_state, 0, config)[1],
                             trainer.embeddings(state, 1, config)[1], atol=1e-4)
  assert (state.stop_reason[3] == trainer.StopReason.EMPTY) and not state.queries[3].any()


def test_sigmoid_scale_and_bias_are_per_slot():
  settings = trainer.TrainSettings(loss="sigmoid")
  plain = trainer.Configuration(d=3, n=6, seed=7)
  shifted = trainer.Configuration(d=3, n=6, seed=7, sigmoid_log_scale=math.log(3.0),
                                  sigmoid_bias=-2.0)
  shape = trainer.BucketShape.fitting([plain, shifted])
  losses, state = loss_trace([plain, shifted], shape, 40, settings)
  assert state.log_scale[0] != state.log_scale[1] and state.bias[0] != state.bias[1]
  assert not np.allclose(state.documents[0], state.documents[1])
  for slot, config in enumerate((plain, shifted)):  # each as it trains alone
    alone, alone_state = loss_trace([config], trainer.BucketShape.fitting([config]), 40, settings)
    np.testing.assert_allclose(alone[:, 0], losses[:, slot], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(alone_state.bias[0], state.bias[slot], rtol=1e-5)
  frozen = trainer.TrainSettings(loss="sigmoid", train_bias=False)
  _, frozen_state = loss_trace([shifted], trainer.BucketShape.fitting([shifted]), 40, frozen)
  assert frozen_state.bias[0] == np.float32(-2.0) and frozen_state.log_scale[0] != np.float32(
      math.log(3.0))


def _unit(rows):
  rows = np.asarray(rows, np.float64)
  return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _angles(*degrees):
  return _unit([[math.cos(math.radians(a)), math.sin(math.radians(a))] for a in degrees])


# Three documents on a circle at 0, 60 and 120 degrees, each the one relevant document of
# its query (k = 1); every case below retrieves every set (topk passes).
DOCUMENTS = _angles(0, 60, 120)
RELEVANCE = np.array([[0], [1], [2]])
CASES = {
    # Each query on its document: margins 0.5, relevant scores 1 above other scores 0.5.
    "all": _angles(0, 60, 120),
    # Query 1 at 89 degrees, almost between documents 1 and 2: its margin is cos 29 - cos 31
    # = 0.018 (fails margin 0.3), yet its relevant score 0.875 is above every other score.
    "narrow": _angles(0, 89, 120),
    # Query 0 at -70 degrees: its relevant score cos 70 = 0.34 is below the other score 0.5
    # that queries 1 and 2 give document 0 and 1 (fails threshold), with a margin of 0.98.
    "shifted": _angles(-70, 60, 120),
}


def _numpy_criteria(queries, documents, relevance):
  """(top-k all correct, smallest query margin, threshold gap) by a direct float64 count."""
  scores = queries @ documents.T
  relevant = np.zeros_like(scores, bool)
  np.put_along_axis(relevant, relevance, True, axis=1)
  lowest = np.where(relevant, scores, np.inf).min(axis=1)
  highest = np.where(relevant, -np.inf, scores).max(axis=1)
  topk = all(set(np.argsort(-row)[:relevance.shape[1]]) == set(r) for row, r in
             zip(scores, relevance))
  return topk, (lowest - highest).min(), lowest.min() - highest.max()


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("criterion", ["topk", "threshold", "margin"])
def test_each_criterion_agrees_with_a_float64_count(case, criterion):
  queries, epsilon = CASES[case], 0.3
  topk, query_margin, threshold_gap = _numpy_criteria(queries, DOCUMENTS, RELEVANCE)
  expected = {"topk": topk, "threshold": threshold_gap > 0, "margin": query_margin >= epsilon}
  accuracy, margin, gap = objective.retrieval_metrics(
      queries.astype(np.float32), DOCUMENTS.astype(np.float32), RELEVANCE, 3, 3)
  passed, value = objective.judge(criterion, epsilon, accuracy, margin, gap)
  assert bool(passed) == expected[criterion]
  margin64 = certify.margin64(queries, DOCUMENTS, RELEVANCE, criterion)
  assert certify.passes(criterion, epsilon, margin64) == expected[criterion]
  np.testing.assert_allclose(float(value), margin64, atol=1e-6)


def test_the_cases_pass_topk_but_fail_threshold_and_margin_apart():
  verdicts = {case: _numpy_criteria(q, DOCUMENTS, RELEVANCE) for case, q in CASES.items()}
  assert all(topk for topk, _, _ in verdicts.values())
  _, narrow_margin, narrow_gap = verdicts["narrow"]
  assert narrow_gap > 0 and narrow_margin < 0.3  # passes threshold, fails margin
  _, shifted_margin, shifted_gap = verdicts["shifted"]
  assert shifted_gap <= 0 and shifted_margin >= 0.3  # fails threshold, passes margin


# (n, seeds that succeeded) of a d = 4 search with three restarts, in the order finished.
OUTCOMES = [(8, (True, True, False)), (10, (True, False, False)), (9, (False, False, True)),
            (11, (False, False, False))]


def test_critical_n_median_from_a_hand_built_results_file(tmp_path):
  lines = [json.dumps(dict(d=4, n=n, k=2, seed=42 + i, success=ok, certified=ok,
                           margin64=0.1 if ok else -0.1, stop_step=50 if ok else 900,
                           stop_reason="success" if ok else "plateau"))
           for n, seeds in OUTCOMES for i, ok in enumerate(seeds)]
  (tmp_path / "results.jsonl").write_text("\n".join(lines) + "\n")
  config = config_lib.default_config()
  config.update(dims=(4,), restarts=3, max_n=40)
  target = targets.CriticalN(config)
  ledger = Ledger.start(target.specs())
  for record in Store(str(tmp_path), writer=False).read_results():
    ledger.observe(target, Probe(record["d"], record["n"], record["seed"]), record, 3)
  row = target.report(ledger)[0]
  # Any seed: 8, 9 and 10 succeed, 11 fails. Half the seeds: 8 (2/3) does, 9 (1/3) does not.
  assert row["critical_n"] == 10 and row["critical_n_median"] == 8
  assert row["seed_successes"] == "8:2/3 9:1/3 10:1/3 11:0/3"
