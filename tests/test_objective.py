"""The blocked InfoNCE loss, its custom gradient, blocked evaluation and matmul precision."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sweep import config as config_lib
from sweep import memory, objective, problems
from sweep import trainer
from test_trainer import plain_loss

# Blocks of 4 rows cut the 21 padded queries unevenly (the last block is padded too); 0 is
# the automatic tile, one block at this size.
TILES = [0, 4, 7]
INFONCE_FORMS = ("code", "paper")


def padded_slot(form, tile, temperature=0.2):
  """A padded slot holding d=3, n=5 in a (21, 7, 6) bucket, its state, and its real config."""
  settings = trainer.TrainSettings(loss=form, query_tile=tile)
  config = trainer.Configuration(d=3, n=5, temperature=temperature)
  shape = trainer.BucketShape(slots=2, queries=21, documents=7, dims=6, width=2)
  configs = [config, trainer.Configuration(d=6, n=7)]
  slots = trainer.pack(configs, shape)
  # The same for every loss setting, its optimizer started as a chunk starts it.
  state = jax.jit(trainer.start_optimizer, static_argnums=0)(
      trainer.TrainSettings(), slots, trainer.init_state(trainer.TrainSettings(), shape, configs))
  return settings, config, jax.tree.map(lambda x: x[0], slots), jax.tree.map(lambda x: x[0], state)


@pytest.mark.parametrize("form", INFONCE_FORMS)
@pytest.mark.parametrize("tile", TILES)
def test_blocked_loss_and_gradient_equal_the_plain_formula(form, tile):
  settings, config, slot, state = padded_slot(form, tile)
  # Random padded queries: whatever they hold, they carry no loss and get no gradient.
  queries = state.queries.at[10:].set(jax.random.normal(jax.random.key(0), (11, 6)))
  params = dict(queries=queries, documents=state.documents)
  loss, grads = jax.jit(jax.value_and_grad(lambda p: trainer.slot_loss(settings, slot, p)))(params)
  grad_q, grad_d = grads["queries"], grads["documents"]
  q, d = queries[:10, :3], state.documents[:5, :3]
  expected, (exp_q, exp_d) = jax.jit(jax.value_and_grad(
      lambda p: plain_loss(p[0], p[1], config.relevance(), config.temperature, form)))((q, d))
  np.testing.assert_allclose(loss, expected, atol=1e-5)
  np.testing.assert_allclose(grad_q[:10, :3], exp_q, atol=1e-5)
  np.testing.assert_allclose(grad_d[:5, :3], exp_d, atol=1e-5)
  assert not np.asarray(grad_q[10:]).any() and not np.asarray(grad_d[5:]).any()


def plain_pairwise(loss, queries, documents, relevance, *scalars):
  """A pairwise loss on the whole real score matrix, as its docstring defines it."""
  scores = queries @ documents.T
  relevant = jnp.zeros(scores.shape, bool).at[jnp.arange(len(relevance))[:, None],
                                              relevance].set(True)
  if loss == "sigmoid":
    logits = jnp.exp(scalars[0]) * scores + scalars[1]
    per_query = (jnp.where(relevant, jax.nn.softplus(-logits), 0.0).sum(1) / relevant.sum(1)
                 + jnp.where(relevant, 0.0, jax.nn.softplus(logits)).sum(1) / (~relevant).sum(1))
  else:
    relevant_scores = jnp.take_along_axis(scores, relevance, axis=1)  # [q, k]
    gaps = scalars[0] - relevant_scores[:, :, None] + scores[:, None, :]
    pairs = ~relevant[:, None, :] & jnp.ones(relevant_scores.shape, bool)[:, :, None]
    per_query = jnp.where(pairs, jax.nn.relu(gaps), 0.0).sum((1, 2)) / pairs.sum((1, 2))
  return per_query.mean()


@pytest.mark.parametrize("loss", ["sigmoid", "hinge"])
@pytest.mark.parametrize("tile", TILES)
def test_pairwise_loss_and_gradient_equal_the_plain_formula(loss, tile):
  """The sigmoid's written-out gradient (and the hinge's, by autodiff through the scores),
  by queries, documents and the sigmoid's scale and bias, on a padded slot."""
  _, config, _, state = padded_slot("code", tile)
  queries = state.queries.at[10:].set(jax.random.normal(jax.random.key(0), (11, 6)))
  documents = state.documents.at[5:].set(jax.random.normal(jax.random.key(1), (2, 6)))
  relevance = jnp.full((21, 2), -1, jnp.int32).at[:10].set(config.relevance())
  scalars = (jnp.float32(0.7), jnp.float32(-1.5)) if loss == "sigmoid" else ()
  blocked = (lambda q, d, *c: objective.sigmoid_loss(q, d, relevance, 10, 5, *c, tile=tile)
             ) if loss == "sigmoid" else (
             lambda q, d: objective.hinge_loss(q, d, relevance, 10, 5, 0.3, tile=tile))
  arguments = tuple(range(2 + len(scalars)))
  value, grads = jax.jit(jax.value_and_grad(blocked, arguments))(queries, documents, *scalars)
  q, d = queries[:10, :3], documents[:5, :3]
  plain = lambda q, d, *c: plain_pairwise(loss, q, d, config.relevance(), *(c or (0.3,)))
  expected, expected_grads = jax.jit(jax.value_and_grad(plain, arguments))(q, d, *scalars)
  np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(grads[0][:10, :3], expected_grads[0], atol=1e-5)
  np.testing.assert_allclose(grads[1][:5, :3], expected_grads[1], atol=1e-5)
  for grad, expected_grad in zip(grads[2:], expected_grads[2:]):
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-6)
  assert not np.asarray(grads[0][10:]).any() and not np.asarray(grads[1][5:]).any()


@pytest.mark.parametrize("form", INFONCE_FORMS)
def test_200_step_trajectory_matches_the_plain_formula(form):
  settings, config, slot, state = padded_slot(form, tile=4)
  slots = jax.tree.map(lambda x: x[None], slot)
  step = jax.jit(trainer.train_step, static_argnums=0)
  batched = jax.tree.map(lambda x: x[None], state)

  optimizer = optax.adam(config.learning_rate)
  params = (state.queries[:10, :3], state.documents[:5, :3])
  opt_state = optimizer.init(params)

  @jax.jit
  def plain_step(params, opt_state):
    loss, grads = jax.value_and_grad(
        lambda p: plain_loss(p[0], p[1], config.relevance(), config.temperature, form))(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return tuple(x / jnp.linalg.norm(x, axis=1, keepdims=True) for x in params), opt_state, loss

  blocked, plain = [], []
  for _ in range(200):
    batched = step(settings, slots, batched)
    params, opt_state, loss = plain_step(params, opt_state)
    blocked.append(float(batched.loss[0]))
    plain.append(float(loss))
  np.testing.assert_allclose(blocked, plain, atol=1e-4)
  np.testing.assert_allclose(batched.documents[0, :5, :3], params[1], atol=1e-4)
  assert plain[-1] < plain[0] - 0.1  # it trained: the comparison is not of two constants


@pytest.mark.parametrize("loss", ["code", "sigmoid", "hinge"])
def test_blocked_chunks_train_as_one_block(loss):
  configs = [trainer.Configuration(d=2, n=3), trainer.Configuration(d=4, n=7),
             trainer.Configuration(d=3, n=6)]
  blocked = trainer.train(configs, trainer.TrainSettings(loss=loss, query_tile=4, max_steps=400))
  whole = trainer.train(configs, trainer.TrainSettings(loss=loss, max_steps=400))
  assert [r["success"] for r in blocked] == [r["success"] for r in whole]
  np.testing.assert_allclose([r["final_loss"] for r in blocked],
                             [r["final_loss"] for r in whole], atol=1e-4)


def plain_metrics(queries, documents, table):
  """Top-|R| accuracy and minimum margin by a full sort, unpadded, in float64."""
  scores = np.asarray(queries, np.float64) @ np.asarray(documents, np.float64).T
  order = np.argsort(-scores, axis=1, kind="stable")[:, :table.shape[1]]
  found = sum(len(set(o) & set(r)) for o, r in zip(order, table))
  others = np.ones(scores.shape, bool)
  np.put_along_axis(others, table, False, axis=1)
  relevant = np.take_along_axis(scores, table, axis=1).min(axis=1)
  return found / table.size, (relevant - np.where(others, scores, -np.inf).max(axis=1)).min()


@pytest.mark.parametrize("tile", [0, 3, 8])
def test_blocked_metrics_equal_a_full_sort(tile):
  n, rows, d = 9, 40, 4
  table = problems.colex_subsets(n, 2)[:30]
  rng = np.random.default_rng(1)
  queries = rng.normal(size=(rows, d)).astype(np.float32)  # 10 padded rows of noise
  documents = np.zeros((12, d), np.float32)
  documents[:n] = rng.normal(size=(n, d))
  relevance = np.full((rows, 2), problems.PAD, np.int32)
  relevance[:30] = table
  accuracy, margin, _ = objective.retrieval_metrics(queries, documents, relevance, 30, n, tile)
  expected_accuracy, expected_margin = plain_metrics(queries[:30], documents[:n], table)
  assert 0 < expected_accuracy < 1
  np.testing.assert_allclose(accuracy, expected_accuracy, atol=1e-6)
  np.testing.assert_allclose(margin, expected_margin, atol=1e-5)


def near_tie(gap=2e-4):
  """One query whose relevant pair {1, 2} outscores document 0 by `gap` in float32; rounded
  to bfloat16 (what a single-pass bfloat16 matmul, a TPU's default, multiplies), document 0
  ties them, and a top-k takes the lower index first."""
  other = 0.5 - gap
  documents = np.array([[other, other], [1.0, 0.0], [0.0, 1.0]], np.float32)
  return np.array([[0.5, 0.5]], np.float32), documents, np.array([[1, 2]], np.int32)


def test_evaluation_decides_a_near_tie_at_highest_precision():
  queries, documents, relevance = near_tie()
  accuracy, margin, _ = objective.retrieval_metrics(queries, documents, relevance, 1, 3)
  assert accuracy == 1.0 and margin > 0
  # The same evaluation on bfloat16-rounded inputs, as a single-pass bfloat16 matmul sees
  # them, misses a relevant document: the case is decided only at full precision.
  rounded = [x.astype(jnp.bfloat16).astype(np.float32) for x in (queries, documents)]
  accuracy16, margin16, _ = objective.retrieval_metrics(*rounded, relevance, 1, 3)
  assert accuracy16 < 1.0 and margin16 <= 0
  # And the compiled evaluation asks XLA for full precision, whatever the device's default.
  lowered = jax.jit(objective.retrieval_metrics, static_argnums=(3, 4)).lower(
      queries, documents, relevance, 1, 3).as_text()
  assert set(dot_precisions(lowered)) == {"HIGHEST"}


def dot_precisions(lowered: str) -> list[str]:
  """The operand precisions of every matmul in a lowered program."""
  return [p for pair in re.findall(r"precision = \[(\w+), (\w+)\]", lowered) for p in pair]


@pytest.mark.parametrize("name", list(objective.PRECISIONS))
def test_training_matmuls_use_the_configured_precision(name):
  _, _, slot, state = padded_slot("code", 0)
  settings = trainer.TrainSettings(matmul_precision=name)
  lowered = jax.jit(jax.value_and_grad(lambda p: trainer.slot_loss(settings, slot, p))).lower(
      dict(queries=state.queries, documents=state.documents)).as_text()
  precisions = dot_precisions(lowered)
  assert len(precisions) >= 6 and set(precisions) == {name.upper()}  # forward and backward


def step_temporaries(shape: trainer.BucketShape, **settings) -> float:
  """XLA's temporaries of one compiled step, in q x n float32 matrices."""
  settings = trainer.TrainSettings(**settings)
  compiled = jax.jit(trainer.train_step, static_argnums=0).lower(
      settings, *memory.abstract_bucket(settings, shape)).compile()
  return compiled.memory_analysis().temp_size_in_bytes / (shape.queries * shape.documents * 4)


@pytest.mark.parametrize("form", INFONCE_FORMS)
def test_step_holds_one_score_matrix_or_one_block_of_it(form):
  # d = 45 at the paper's n, compiled only: the step's temporaries are one q x n matrix
  # untiled (XLA writes every pass over it in place) and one q x (d + 1) array (the queries
  # with the column that masks padded documents, or their gradient), and a fraction of that
  # in blocks.
  shape = trainer.BucketShape(slots=1, queries=204_480, documents=640, dims=48, width=2)
  query_sized = (shape.dims + 1) / shape.documents  # in q x n matrices
  assert step_temporaries(shape, loss=form, query_tile=shape.queries) <= 1.01 + query_sized
  assert step_temporaries(shape, loss=form) <= 0.25


def test_query_tile_prefers_a_divisor_and_bounds_the_block():
  assert objective.query_tile(100, 8, tile=30) == 30
  assert objective.query_tile(100, 8, tile=300) == 100
  rows = objective.query_tile(204_480, 640)
  assert rows * 640 * 4 <= objective.auto_tile_bytes() and 204_480 % rows == 0
  prime = 100_003  # no useful divisor: even blocks, the last one padded
  rows = objective.query_tile(prime, 640)
  assert rows * 640 * 4 <= objective.auto_tile_bytes() and -(-prime // rows) * rows - prime < rows


@pytest.mark.parametrize("field, value", [("query_tile", -1), ("matmul_precision", "bf16")])
def test_bad_settings_name_the_field(field, value):
  config = config_lib.default_config()
  config[field] = value
  with pytest.raises(ValueError, match=f"config.{field}=.*out of range"):
    config_lib.validate_config(config)
