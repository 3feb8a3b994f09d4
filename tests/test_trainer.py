"""The trainer on tiny configurations of the real code."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sweep import problems
from sweep import trainer
from helpers import loss_trace


def plain_loss(queries, documents, relevance, temperature, form):
  """The loss of one unpadded configuration, written out directly."""
  logits = queries @ documents.T / temperature
  log_probs = logits - jax.scipy.special.logsumexp(logits, axis=1, keepdims=True)
  picked = jnp.take_along_axis(log_probs, jnp.asarray(relevance), axis=1)
  if form == "code":
    return -picked.mean()
  return -jax.scipy.special.logsumexp(picked, axis=1).mean()


@pytest.mark.parametrize("form", ["code", "paper"])
def test_padded_slot_loss_and_gradient_match_plain_computation(form):
  settings = trainer.TrainSettings(loss=form)
  config = trainer.Configuration(d=3, n=5, temperature=0.2)
  shape = trainer.BucketShape(slots=2, queries=21, documents=7, dims=6, width=2)
  configs = [config, trainer.Configuration(d=6, n=7)]
  slots = trainer.pack(configs, shape)
  state = trainer.init_state(settings, shape, configs)
  slot = jax.tree.map(lambda x: x[0], slots)
  params = dict(queries=state.queries[0], documents=state.documents[0])
  loss, grads = jax.value_and_grad(lambda p: trainer.slot_loss(settings, slot, p))(params)
  grad_q, grad_d = grads["queries"], grads["documents"]

  q, d = params["queries"][:10, :3], params["documents"][:5, :3]
  expected, (exp_q, exp_d) = jax.value_and_grad(
      lambda p: plain_loss(p[0], p[1], config.relevance(), 0.2, form))((q, d))
  np.testing.assert_allclose(loss, expected, atol=1e-5)
  np.testing.assert_allclose(grad_q[:10, :3], exp_q, atol=1e-5)
  np.testing.assert_allclose(grad_d[:5, :3], exp_d, atol=1e-5)
  assert not np.asarray(grad_q[10:]).any() and not np.asarray(grad_q[:, 3:]).any()
  assert not np.asarray(grad_d[5:]).any() and not np.asarray(grad_d[:, 3:]).any()


def test_alone_and_in_a_padded_batch_train_identically():
  config = trainer.Configuration(d=3, n=6, seed=7)
  others = [trainer.Configuration(d=5, n=9, seed=1), trainer.Configuration(d=2, n=4, seed=3)]
  alone, _ = loss_trace([config], trainer.BucketShape.fitting([config]), 200)
  batch = [others[0], config, others[1]]
  together, _ = loss_trace(batch, trainer.BucketShape.fitting(batch, slots=4), 200)
  np.testing.assert_allclose(alone[:, 0], together[:, 1], atol=1e-4)


def test_alone_and_batched_agree_on_success():
  clear = [trainer.Configuration(d=2, n=3), trainer.Configuration(d=4, n=6),
           trainer.Configuration(d=2, n=5)]
  batched = trainer.train(clear)
  for config, result in zip(clear, batched):
    assert trainer.train([config])[0]["success"] == result["success"]
  assert [r["success"] for r in batched] == [True, True, False]


def test_exact_geometry():
  seeds = range(4)
  cases = {(2, 3): [], (2, 4): [], (3, 4): [], (3, 5): [], (4, 8): []}
  configs = [trainer.Configuration(d=d, n=n, seed=s) for (d, n) in cases for s in seeds]
  for config, result in zip(configs, trainer.train(configs)):
    cases[config.d, config.n].append(result["success"])
  assert any(cases[2, 3]) and not any(cases[2, 4])
  assert any(cases[3, 4]) and not any(cases[3, 5])
  assert any(cases[4, 8])


def test_padded_dimensions_and_rows_stay_zero():
  configs = [trainer.Configuration(d=2, n=4), trainer.Configuration(d=5, n=7)]
  shape = trainer.BucketShape.fitting(configs, slots=3)
  _, state = loss_trace(configs, shape, 30)
  assert not np.asarray(state.queries[0, :, 2:]).any()
  assert not np.asarray(state.documents[0, :, 2:]).any()
  assert not np.asarray(state.documents[0, 4:]).any()
  assert not np.asarray(state.queries[0, 6:]).any()
  assert not np.asarray(state.queries[2]).any()  # the empty slot
  norms = np.linalg.norm(np.asarray(state.documents[1]), axis=-1)
  np.testing.assert_allclose(norms, 1.0, atol=1e-5)


def test_each_slot_stops_on_its_own_and_stays_frozen():
  settings = trainer.TrainSettings(max_steps=120, eval_every=50)
  configs = [trainer.Configuration(d=2, n=3), trainer.Configuration(d=2, n=6)]
  results = trainer.train(configs, settings)
  assert results[0]["stop_reason"] == "success" and results[0]["stop_step"] <= 100
  assert results[1]["stop_reason"] == "max_steps" and results[1]["stop_step"] == 120


def test_plateau_stops_after_patience():
  # Only the first step improves on the initial infinite best loss by min_delta.
  settings = trainer.TrainSettings(patience=20, min_delta=100.0)
  result = trainer.train([trainer.Configuration(d=2, n=6)], settings)[0]
  assert result["stop_reason"] == "plateau" and result["stop_step"] == 21


def test_nonfinite_loss_stops_loudly():
  result = trainer.train([trainer.Configuration(d=2, n=4, temperature=1e-45)])[0]
  assert result["stop_reason"] == "nonfinite"
  assert not result["success"]


SHORT = dict(max_steps=400, patience=100, eval_every=25, chunk_evals=4)


@pytest.mark.parametrize("broken, centroid", [
    # Every update ~1e30 overflows x * x: the re-normalisation zeroes the rows at a finite loss.
    (trainer.Configuration(d=4, n=6, learning_rate=1e30), False),
    (trainer.Configuration(d=4, n=6, learning_rate=1e30), True),
    # Gradients ~1e20 overflow Adam's second moment to inf, which zeroes those updates for good.
    (trainer.Configuration(d=4, n=6, temperature=1e-20), False),
    # A warm start whose noise overflows the norm starts with zero rows.
    (trainer.Configuration(d=4, n=6, warm_noise=1e300), False),
    # In one dimension every pair {+x, -x} has a zero centroid: a query without a direction.
    (trainer.Configuration(d=1, n=3), True),
])
def test_a_broken_state_behind_a_finite_loss_stops_as_nonfinite(broken, centroid):
  settings = trainer.TrainSettings(centroid_queries=centroid, **SHORT)
  neighbour = trainer.Configuration(d=2, n=3, seed=2)  # trains to a success beside it
  broken_result, neighbour_result = trainer.train([broken, neighbour], settings)
  assert broken_result["stop_reason"] == "nonfinite" and not broken_result["success"]
  assert broken_result["max_accuracy"] == 0.0 and broken_result["margin"] == -np.inf
  assert neighbour_result["stop_reason"] == "success"


def poisoned(tree, index, value):
  """A host copy of tree with tree[index] set to value."""
  tree = np.array(tree)
  tree[index] = value
  return tree


@pytest.mark.parametrize("poison", [
    lambda s: s.replace(queries=poisoned(s.queries, (0, 0, 0), np.nan)),
    lambda s: s.replace(documents=poisoned(s.documents, (0, 0, 0), np.inf)),
    lambda s: s.replace(documents=poisoned(s.documents, (0, 0), 0.0)),  # a zero row
    # Adam's second moment at inf: the update m / sqrt(v) is 0 there, the loss stays finite.
    lambda s: s.replace(opt_state=jax.tree_util.tree_map_with_path(
        lambda path, x: poisoned(x, (0, 0, 0), np.inf) if ".nu" in jax.tree_util.keystr(path)
        else x, s.opt_state)),
], ids=["nan-query", "inf-document", "zero-document", "inf-second-moment"])
def test_a_slot_poisoned_between_chunks_stops_and_its_neighbours_train_on(poison):
  """Slot 0 is poisoned after a chunk and the empty slot 2 filled with NaN: slot 1 trains
  exactly as it would have, and the empty slot stays empty."""
  settings = trainer.TrainSettings(max_steps=400, patience=100, eval_every=20, chunk_evals=2)
  # Both fail: n > 4.
  configs = [trainer.Configuration(d=3, n=5), trainer.Configuration(d=3, n=5, seed=1)]
  shape = trainer.BucketShape.fitting(configs, slots=3)
  slots = trainer.place(trainer.pack(configs, shape))
  start = trainer.place(trainer.init_state(settings, shape, configs))
  state, _ = trainer.train_chunk(settings, slots, start, False)
  host = trainer.to_host(state)
  assert (host.stop_reason[:2] == trainer.StopReason.RUNNING).all() and host.step[0] == 40
  broken = poison(host)
  broken = broken.replace(queries=poisoned(broken.queries, 2, np.nan))
  healthy, _ = trainer.train_chunk(settings, slots, trainer.place(host), False)
  after, _ = trainer.train_chunk(settings, slots, trainer.place(broken), False)
  after, healthy = trainer.to_host(after), trainer.to_host(healthy)
  assert after.stop_reason[0] == trainer.StopReason.NONFINITE and after.step[0] == 40
  assert after.stop_reason[2] == trainer.StopReason.EMPTY
  assert after.stop_reason[1] == healthy.stop_reason[1] and after.step[1] == 80
  np.testing.assert_array_equal(after.documents[1], healthy.documents[1])
  np.testing.assert_array_equal(after.loss[1], healthy.loss[1])


def test_embeddings_are_returned_unpadded():
  configs = [trainer.Configuration(d=2, n=3), trainer.Configuration(d=4, n=6)]
  result = trainer.train(configs, return_embeddings=True)[0]
  assert result["queries"].shape == (3, 2) and result["documents"].shape == (3, 2)
  scores = result["queries"] @ result["documents"].T
  top2 = np.argsort(-scores, axis=1)[:, :2]
  assert all(set(t) == set(r) for t, r in zip(top2, problems.colex_subsets(3, 2)))


def test_one_bucket_shape_compiles_once_across_batches():
  compiles = []
  jax.monitoring.register_event_duration_secs_listener(
      lambda event, _, **kw: compiles.append(event) if "backend_compile" in event else None)
  settings = trainer.TrainSettings(max_steps=100)
  shape = trainer.BucketShape(slots=2, queries=15, documents=6, dims=4, width=2)
  batches = [[trainer.Configuration(d=2, n=3), trainer.Configuration(d=4, n=6)],
             [trainer.Configuration(d=3, n=5, seed=2)],
             [trainer.Configuration(d=4, n=4, learning_rate=0.1), trainer.Configuration(d=1, n=2)]]
  counts = []
  for configs in batches:
    slots = trainer.place(trainer.pack(configs, shape))
    start = trainer.place(trainer.init_state(settings, shape, configs))
    state, _ = trainer.train_chunk(settings, slots, start, True)
    host = trainer.to_host(state)
    state = trainer.place(trainer.init_state(settings, shape, configs, host, [-1, 1]))
    trainer.train_chunk(settings, slots, state, False)
    counts.append(len(compiles))
  assert counts[0] > 0 and counts[1] == counts[0] and counts[2] == counts[0]


@pytest.mark.parametrize("kwargs, field", [
    (dict(d=0, n=4), "d=0"), (dict(d=2, n=1), "n=1"), (dict(d=2, n=4, k=0), "k=0")])
def test_configuration_validation(kwargs, field):
  with pytest.raises(ValueError, match=field):
    trainer.Configuration(**kwargs)


def test_pack_rejects_configurations_that_do_not_fit():
  with pytest.raises(ValueError, match="does not fit"):
    trainer.pack([trainer.Configuration(d=5, n=4)], trainer.BucketShape(1, 6, 4, 4, 2))


def test_moving_running_slots_into_a_larger_bucket_leaves_them_unchanged():
  settings = trainer.TrainSettings(chunk_evals=2, eval_every=20)
  configs = [trainer.Configuration(d=2, n=5), trainer.Configuration(d=3, n=6)]
  small = trainer.BucketShape.fitting(configs)
  small_slots = trainer.place(trainer.pack(configs, small))
  start = trainer.place(trainer.init_state(settings, small, configs))
  state, _ = trainer.train_chunk(settings, small_slots, start, False)
  state = trainer.to_host(state)
  big = trainer.BucketShape(slots=3, queries=28, documents=8, dims=5, width=2)
  moved_configs = [trainer.Configuration(d=4, n=8), configs[1], configs[0]]
  big_slots = trainer.place(trainer.pack(moved_configs, big))
  moved = trainer.init_state(settings, big, moved_configs, state, [-1, 1, 0])
  np.testing.assert_array_equal(moved.queries[2, :15, :3], state.queries[0])
  assert not moved.queries[2, 15:].any()
  assert int(moved.step[1]) == int(state.step[1]) == 40 and int(moved.step[0]) == 0
  continued, _ = trainer.train_chunk(settings, big_slots, trainer.place(moved), False)
  reference, _ = trainer.train_chunk(settings, small_slots, trainer.place(state), False)
  np.testing.assert_allclose(continued.loss[2], reference.loss[0], atol=1e-5)
  np.testing.assert_allclose(continued.loss[1], reference.loss[1], atol=1e-5)


def test_initialisation_depends_on_the_configuration_alone():
  config = trainer.Configuration(d=3, n=6, seed=5)
  alone = trainer.init_state(trainer.TrainSettings(), trainer.BucketShape.fitting([config]),
                             [config])
  shape = trainer.BucketShape(slots=3, queries=40, documents=9, dims=7, width=2)
  packed = trainer.init_state(trainer.TrainSettings(), shape,
                              [trainer.Configuration(d=4, n=9), None, config])
  np.testing.assert_array_equal(packed.queries[2, :15, :3], alone.queries[0])
  np.testing.assert_array_equal(packed.documents[2, :6, :3], alone.documents[0])
  assert not packed.queries[2, 15:].any() and not packed.queries[2, :, 3:].any()
  assert not packed.queries[1].any() and packed.stop_reason[1] == trainer.StopReason.EMPTY
  other_seed = trainer.init_state(trainer.TrainSettings(), trainer.BucketShape.fitting([config]),
                            [trainer.Configuration(d=3, n=6, seed=6)])
  assert not np.allclose(other_seed.documents, alone.documents)


@pytest.mark.parametrize("table, field", [
    (np.array([[0, 5]]), "entries"), (np.array([[-1, 0]]), "entries"),
    (np.zeros((0, 2), np.int32), "shape")])
def test_explicit_relevance_tables_are_validated(table, field):
  with pytest.raises(ValueError, match=field):
    trainer.Configuration(d=2, n=4, k=2, table=table)
