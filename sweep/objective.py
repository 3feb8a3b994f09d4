"""Scores, the InfoNCE loss in its two forms, top-k accuracy and the retrieval margin.

Every function sees one configuration, possibly padded: `relevance` [q_pad, r] lists each
query's relevant documents (-1 where unused, no repeats), and only the first `num_queries`
queries and `num_documents` documents are real. Padded documents never enter a softmax or a
top-k, and padded queries carry no loss and no accuracy. The trainer maps these over its
slots.

Memory: the q x n score matrix dominates at paper scale (204,480 x 640 at d = 45), so
nothing here holds more than one block of it at a time, and every pass over a block reads
it or overwrites it in place (see _block_logits). Queries are cut into blocks of
`query_tile` rows (0 = automatic, see `query_tile`), and each block's gradient is computed
with its loss, in the same pass (`_loss_of_blocks`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from sweep.problems import MATMUL_PRECISIONS

# Matmul precision of training, by name: what each computes per device is in
# docs/planning-and-tpu.md, "What each device computes".
PRECISIONS = {name: jax.lax.Precision[name.upper()] for name in MATMUL_PRECISIONS}
# The automatic block: the most query rows whose scores take at most this many bytes. A CPU
# is fastest on blocks near its L2 cache size, an accelerator on large matmuls; the sizes
# are measured in docs/planning-and-tpu.md ("Memory of the loss").
AUTO_TILE_BYTES = {"cpu": 2 * 2**20}
AUTO_TILE_BYTES_ACCELERATOR = 16 * 2**20
_FLOAT_BYTES = 4


def auto_tile_bytes(backend: str | None = None) -> int:
  """The automatic block size on `backend` (default: the one JAX runs on)."""
  return AUTO_TILE_BYTES.get(backend or jax.default_backend(), AUTO_TILE_BYTES_ACCELERATOR)


def query_tile(num_queries: int, num_documents: int, tile: int = 0,
               tile_bytes: int | None = None) -> int:
  """Rows per query block for a padded [num_queries, num_documents] score matrix.

  `tile` > 0 is taken as given (capped at num_queries). The automatic tile keeps a block's
  scores within `tile_bytes` (default auto_tile_bytes()) and prefers a divisor of num_queries (padded query counts
  have large power-of-two factors), so blocks need no padding copy of the queries.
  """
  if tile:
    return min(tile, num_queries)
  target = max(1, (tile_bytes or auto_tile_bytes()) // (_FLOAT_BYTES * num_documents))
  if target >= num_queries:
    return num_queries
  divisor = next(t for t in range(target, 0, -1) if num_queries % t == 0)
  if 2 * divisor >= target:
    return divisor
  blocks = -(-num_queries // target)
  return -(-num_queries // blocks)


def _blocks(x, tile: int, fill):
  """x [rows, ...] as [blocks, tile, ...], its last block padded with `fill` if needed."""
  pad = -x.shape[0] % tile
  if pad:
    x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1), constant_values=fill)
  return x.reshape((-1, tile) + x.shape[1:])


def _over_blocks(body, carry, blocks, rows: int):
  """scan `body` over query blocks, or call it once when one block holds every row.

  Returns the final carry and the per-row outputs cropped to `rows`.
  """
  if blocks[0].shape[0] == 1:
    carry, out = body(carry, jax.tree.map(lambda x: x[0], blocks))
    return carry, jax.tree.map(lambda x: x[:rows], out)
  carry, out = jax.lax.scan(body, carry, blocks)
  return carry, jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:])[:rows], out)


# ---------------------------------------------------------------------------------------
# A loss and its gradient in one pass over the blocks.
# ---------------------------------------------------------------------------------------

@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _loss_of_blocks(blocks, *args):
  """blocks(False, *args)'s loss; its gradient comes from blocks(True, *args).

  Training always asks for both, and the loss is a scalar, so its backward pass is the
  gradient times the cotangent: the forward computes the gradient block by block as it
  computes the loss, and the backward only scales it. No block's scores are computed twice
  (a backward pass that recomputed them cost a fifth of the step at d = 20 on a CPU) and
  none are kept (the gradient accumulates per block), on every backend and shape.
  `blocks(gradient, *args)` returns (loss, gradients by argument, None where none).
  """
  return blocks(False, *args)[0]


def _loss_and_gradient(blocks, *args):
  return blocks(True, *args)


def _scaled_gradient(blocks, gradients, cotangent):
  return tuple(None if g is None else g * cotangent for g in gradients)


_loss_of_blocks.defvjp(_loss_and_gradient, _scaled_gradient)


# ---------------------------------------------------------------------------------------
# InfoNCE. Both forms have the gradient  d loss / d logit_ij = a_i softmax_ij - t_ij  row by
# row: a dense part weighted by a_i, and a sparse target part on the relevant entries only.
# ---------------------------------------------------------------------------------------

# Padded documents score this much lower than any real one (scores are at most 1/tau):
# finite, so that no matmul or subtraction meets inf - inf, and exp() of it is 0.
_PADDED_SCORE = -1e30


def _document_penalty(documents, num_documents):
  """[n]: 0 for real documents, _PADDED_SCORE for padded ones."""
  padded = jnp.arange(documents.shape[0]) >= num_documents
  return jnp.where(padded, _PADDED_SCORE, 0.0).astype(documents.dtype)


def _block_logits(precision, scaled_documents, document_penalty, block):
  """(logits [tile, n], relevant logits [tile, r], penalty [n]) of one block.

  The logits are unmasked: readers add the penalty (0, or _PADDED_SCORE on padded
  documents) and cut padded queries themselves. They are the block's one [tile, n] buffer,
  which the gradient overwrites in place, so the relevant logits must be read first: the
  penalty returned carries a zero-weighted term of them, which makes that order a data
  dependency XLA keeps (it drops optimization barriers on the CPU). 1/temperature scales
  the documents: applied to the logits, it would be one more pass over them.
  """
  queries, relevance = block[:2]
  logits = jnp.matmul(queries, scaled_documents.T, precision=precision)
  relevant = jnp.take_along_axis(logits, jnp.maximum(relevance, 0), axis=-1)
  return logits, relevant, document_penalty + 0.0 * relevant.sum()


def _logsumexp(logits):
  """Row log-sum-exp; padded documents add exp(_PADDED_SCORE - top) = 0.

  Not jax.nn.logsumexp: its guards against infinite maxima are passes of their own, which
  keep a second score buffer alive.
  """
  top = jnp.max(logits, axis=-1)
  return top + jnp.log(jnp.sum(jnp.exp(logits - top[:, None]), axis=-1))


def _pair_weights(form, relevant, valid, pairs, real, counted):
  """(a [tile], t [tile, r], relevant term [tile]) of one block's queries.

  code: every (query, relevant document) pair weighs 1 / pairs. paper: every query weighs
  1 / counted queries, spread over its relevant documents by their softmax.
  """
  if form == "code":
    t = valid / jnp.maximum(pairs, 1)
    return t.sum(axis=-1), t, (t * jnp.where(valid, relevant, 0.0)).sum(axis=-1)
  weight = real / jnp.maximum(counted, 1)
  masked = jnp.where(valid, relevant, -jnp.inf)
  top = jnp.where(valid.any(axis=-1), masked.max(axis=-1), 0.0)
  mass = jnp.where(valid, jnp.exp(masked - top[:, None]), 0.0)
  total = mass.sum(axis=-1)
  share = mass / jnp.where(total > 0, total, 1.0)[:, None]
  relevant_lse = jnp.where(total > 0, top + jnp.log(jnp.where(total > 0, total, 1.0)), 0.0)
  return weight, weight[:, None] * share, weight * relevant_lse


def _lifted_logits(precision, queries, lifted_documents):
  """[tile, n] logits with padded documents at _PADDED_SCORE, from one matmul: each query
  gets a last entry 1 against the documents' last column, their penalty. A penalty added
  to the logits would be a [tile, n] broadcast of its own, a second score buffer, where the
  reductions read it."""
  lifted = jnp.concatenate([queries, jnp.ones_like(queries[:, :1])], axis=1)
  return jnp.matmul(lifted, lifted_documents.T, precision=precision)


def _infonce_parts(tile, queries, documents, relevance, num_queries, num_documents,
                   temperature):
  """Blocks, score operands and counts of the loss.

  The padded documents' penalty is a last column of the scaled documents (_lifted_logits).
  """
  rows = queries.shape[0]
  real = jnp.arange(rows) < num_queries
  valid = (relevance >= 0) & real[:, None]
  blocks = (_blocks(queries, tile, 0.0), _blocks(relevance, tile, -1), _blocks(real, tile, False))
  scaled = jnp.concatenate([documents / temperature,
                            _document_penalty(documents, num_documents)[:, None]], axis=1)
  return blocks, scaled, valid.sum(), real.sum()


def _infonce_blocks(form, tile, precision, gradient, queries, documents, relevance,
                    num_queries, num_documents, temperature):
  """(loss, gradients): with `gradient`, by queries and by documents (None for the rest).

  Each block's scores are one [tile, n] buffer: written by the matmul, read by the
  log-sum-exp, overwritten in place by a_i softmax_ij - t_ij, read by the two gradient
  matmuls.
  """
  blocks, scaled, pairs, counted = _infonce_parts(
      tile, queries, documents, relevance, num_queries, num_documents, temperature)
  columns = jnp.arange(documents.shape[0])

  def body(carry, block):
    loss, grad_documents = carry
    block_queries, relevance_block, real = block
    logits = _lifted_logits(precision, block_queries, scaled)
    relevant = jnp.take_along_axis(logits, jnp.maximum(relevance_block, 0), axis=-1)
    valid = (relevance_block >= 0) & real[:, None]
    lse = _logsumexp(logits)
    a, t, relevant_term = _pair_weights(form, relevant, valid, pairs, real, counted)
    loss = loss + (a * jnp.where(real, lse, 0.0) - relevant_term).sum()
    if not gradient:
      return (loss, grad_documents), None
    # exp() is 0 on padded documents, and a is 0 on padded queries. Each target is placed
    # by comparing column indices inside the select that uses it, since a float target
    # matrix would be constant in code form, and XLA would hoist it out of the training
    # loop and keep it alive.
    # The zero-weighted term of the relevant logits makes reading them before this pass
    # overwrites the logits in place a data dependency XLA keeps (it drops optimization
    # barriers on the CPU).
    dense = a[:, None] * jnp.exp(logits - (lse + 0.0 * relevant.sum())[:, None])
    for r in range(relevance_block.shape[1]):
      dense = jnp.where(relevance_block[:, r, None] == columns, dense - t[:, r, None], dense)
    grad_queries = jnp.matmul(dense, documents, precision=precision)
    # Q^T dense is kept [d, n] until the end, with the transposed queries as a masked copy
    # (padded queries are 0 in dense anyway): the CPU multiplies that form fastest.
    grad_documents += jnp.matmul(jnp.where(real, block_queries.T, 0.0), dense,
                                 precision=precision)
    return (loss, grad_documents), grad_queries

  # Initial carries are made from inputs, so under shard_map they vary over slots as theirs.
  (loss, grad_documents), grad_queries = _over_blocks(
      body, (jnp.zeros_like(temperature), jnp.zeros_like(documents.T) if gradient else None),
      blocks, queries.shape[0])
  if not gradient:
    return loss, None
  return loss, (grad_queries / temperature, grad_documents.T / temperature, None, None, None,
                None)


def infonce_loss(queries, documents, relevance, num_queries, num_documents, temperature,
                 form: str = "code", tile: int = 0, precision: str = "highest"):
  """InfoNCE over all documents at the given temperature (docs/PROTOCOL.md).

  code form: mean over (query, relevant document) pairs of -log softmax, as the reference
  script computes it. paper form: -log of the summed softmax mass of a query's relevant
  documents, averaged over queries, as the paper writes it. `tile` is the query block
  (0 = automatic) and `precision` the matmul precision by name (PRECISIONS).
  """
  rows = query_tile(queries.shape[0], documents.shape[0], tile)
  return _loss_of_blocks(
      functools.partial(_infonce_blocks, form, rows, PRECISIONS[precision]), queries,
      documents, relevance, num_queries, num_documents, jnp.asarray(temperature, queries.dtype))


# ---------------------------------------------------------------------------------------
# Pairwise losses (sigmoid, hinge): each query block's loss with its gradient by the block's
# scores and the loss's scalars, in the forward pass (_loss_of_blocks), so no block's scores
# outlive it. The sigmoid's gradient is written out; the hinge's comes from autodiff.
# ---------------------------------------------------------------------------------------

def _relevant_mask(relevance_block, num_documents):
  """[tile, n] True where a document is relevant to the block's query (padding never is)."""
  columns = jnp.arange(num_documents)
  mask = jnp.zeros((relevance_block.shape[0], num_documents), bool)
  for r in range(relevance_block.shape[1]):
    mask |= relevance_block[:, r, None] == columns
  return mask


def _pairwise_blocks(block_terms, tile, precision, gradient, queries, documents, relevance,
                     num_queries, num_documents, *scalars):
  """(loss, gradients): the loss summed over real queries from block_terms(scores, relevant,
  real documents, relevance block, real queries, *scalars) -> (the block's loss, its
  gradient by the scores, by the scalars); with `gradient`, by queries, documents and the
  scalars. Padded queries and documents never count."""
  rows = queries.shape[0]
  real = jnp.arange(rows) < num_queries
  real_documents = jnp.arange(documents.shape[0]) < num_documents
  blocks = (_blocks(queries, tile, 0.0), _blocks(relevance, tile, -1), _blocks(real, tile, False))

  def body(carry, block):
    block_queries, relevance_block, real_block = block
    scores = jnp.matmul(block_queries, documents.T, precision=precision)
    relevant = _relevant_mask(relevance_block, documents.shape[0])
    total, grad_scores, grad_block_scalars = block_terms(
        scores, relevant, real_documents, relevance_block, real_block, *scalars)
    if not gradient:
      return carry + total, None
    loss, grad_documents, grad_scalars = carry
    # Q^T G is kept [d, n] until the end, as InfoNCE keeps it: the CPU multiplies that form
    # fastest. Padded queries' rows of G are 0.
    grad_documents += jnp.matmul(block_queries.T, grad_scores, precision=precision)
    return ((loss + total, grad_documents, jax.tree.map(jnp.add, grad_scalars, grad_block_scalars)),
            jnp.matmul(grad_scores, documents, precision=precision))

  zero = jnp.zeros_like(queries[0, 0])  # from an input: under shard_map it varies over slots
  if not gradient:
    return _over_blocks(body, zero, blocks, rows)[0], None
  (total, grad_documents, grad_scalars), grad_queries = _over_blocks(
      body, (zero, jnp.zeros_like(documents.T), jax.tree.map(jnp.zeros_like, scalars)), blocks,
      rows)
  return total, (grad_queries, grad_documents.T, None, None, None, *grad_scalars)


def _pairwise(block_terms, tile, precision, queries, documents, relevance, num_queries,
              num_documents, *scalars):
  """The mean over real queries of the loss of block_terms (_pairwise_blocks)."""
  total = _loss_of_blocks(functools.partial(_pairwise_blocks, block_terms, tile, precision),
                          queries, documents, relevance, num_queries, num_documents, *scalars)
  return total / jnp.maximum(num_queries, 1)


def _sigmoid_terms(scores, relevant, real_documents, relevance_block, real, log_scale, bias):
  """Block terms of the sigmoid loss: each query's mean logistic loss over its relevant
  documents (label +1) plus its mean over the others (label -1), on logits
  t * score + bias, t = exp(log_scale). The two groups weigh alike, so the n - k negatives
  cannot outweigh the k positives by their count.

  With z the label times the logit, an entry's loss is w softplus(-z) and its gradient by the
  logit -w label sigmoid(-z), w its query's weight (1 / group size, 0 on padding): one pass
  over the scores gives both. Relevant documents are real, so the group sizes come from the
  relevance table and the document count, not from a pass over the [tile, n] masks.
  """
  scale = jnp.exp(log_scale)
  logits = scale * scores + bias
  positives = jnp.maximum((relevance_block >= 0).sum(axis=-1), 1)
  negatives = jnp.maximum(real_documents.sum() - positives, 1)
  label = jnp.where(relevant, 1.0, -1.0)
  weight = jnp.where(real[:, None] & real_documents,
                     jnp.where(relevant, 1.0 / positives[:, None], 1.0 / negatives[:, None]), 0.0)
  signed = label * logits
  total = (weight * jax.nn.softplus(-signed)).sum()
  grad_logits = -weight * label * jax.nn.sigmoid(-signed)
  return total, scale * grad_logits, ((grad_logits * scores).sum() * scale, grad_logits.sum())


def _autodiff_terms(per_query_loss):
  """Block terms of a loss given per query, its gradients by the scores and its scalars from
  autodiff."""
  def terms(scores, relevant, real_documents, relevance_block, real, *scalars):
    def total(scores, *scalars):
      per_query = per_query_loss(scores, relevant, real_documents, relevance_block, *scalars)
      return jnp.where(real, per_query, 0.0).sum()
    value, grads = jax.value_and_grad(total, argnums=tuple(range(1 + len(scalars))))(
        scores, *scalars)
    return value, grads[0], grads[1:]
  return terms


def _hinge_per_query(scores, relevant, real_documents, relevance_block, margin):
  """Each query's mean over (relevant r, other j) pairs of max(0, margin - (s_r - s_j))."""
  relevant_scores = jnp.take_along_axis(scores, jnp.maximum(relevance_block, 0), axis=-1)
  is_relevant = relevance_block >= 0
  negative = ~relevant & real_documents
  gaps = margin - relevant_scores[:, :, None] + scores[:, None, :]  # [tile, width, n]
  pairs = is_relevant[:, :, None] & negative[:, None, :]
  total = jnp.where(pairs, jax.nn.relu(gaps), 0.0).sum(axis=(1, 2))
  return total / jnp.maximum(pairs.sum(axis=(1, 2)), 1)


def sigmoid_loss(queries, documents, relevance, num_queries, num_documents, log_scale, bias,
                 tile: int = 0, precision: str = "highest"):
  """The pairwise logistic loss of SigLIP (arXiv 2303.15343) over every (query, document)
  pair, its scale t = exp(log_scale) and bias trained with the embeddings, each query's
  positives and negatives averaged apart (_sigmoid_terms)."""
  rows = query_tile(queries.shape[0], documents.shape[0], tile)
  return _pairwise(_sigmoid_terms, rows, PRECISIONS[precision], queries, documents,
                   relevance, num_queries, num_documents, log_scale, bias)


def hinge_loss(queries, documents, relevance, num_queries, num_documents, margin,
               tile: int = 0, precision: str = "highest"):
  """The margin loss over every (relevant, other) document pair of each query, averaged over
  a query's pairs, then over queries."""
  width = max(relevance.shape[1], 1)
  rows = query_tile(queries.shape[0], documents.shape[0] * width, tile)
  return _pairwise(_autodiff_terms(functools.partial(_hinge_per_query, margin=margin)), rows,
                   PRECISIONS[precision], queries, documents, relevance, num_queries,
                   num_documents)


# ---------------------------------------------------------------------------------------
# Evaluation, always at full float32 precision: accuracy and margin decide success.
# ---------------------------------------------------------------------------------------

def retrieval_metrics(queries, documents, relevance, num_queries, num_documents,
                      tile: int = 0):
  """(top-k accuracy, minimum margin, threshold gap) of one configuration, block by block,
  with a partial top-k and no sort, at Precision.HIGHEST whatever the training precision.

  Accuracy is the reference's: the relevant documents found in each query's top-|R| over
  all relevant documents. The margin of a query is its lowest relevant score minus its
  highest other score; it is positive exactly when the query retrieves its set strictly.
  The threshold gap is the lowest relevant score of any query minus the highest other score
  of any query: positive exactly when one number separates them all. The top |R| + 1 scores
  always hold the highest other one, as |R| <= width.
  """
  queries, documents, relevance = jnp.asarray(queries), jnp.asarray(documents), jnp.asarray(relevance)
  width = relevance.shape[1]
  rows = query_tile(queries.shape[0], documents.shape[0], tile)
  real = jnp.arange(queries.shape[0]) < num_queries
  blocks = (_blocks(queries, rows, 0.0), _blocks(relevance, rows, -1), _blocks(real, rows, False))
  penalty = _document_penalty(documents, num_documents)

  def body(carry, block):
    _, relevance_block, real_block = block
    relevance_block = jnp.where(real_block[:, None], relevance_block, -1)
    # Padded documents score _PADDED_SCORE: they rank last and are never "other" documents.
    scores, relevant_scores, penalty_after = _block_logits(
        jax.lax.Precision.HIGHEST, documents, penalty, (block[0], relevance_block))
    scores = scores + penalty_after
    top_scores, top_indices = jax.lax.top_k(scores, min(width + 1, scores.shape[1]))
    top_relevant = (top_indices[:, :, None] == relevance_block[:, None, :]).any(axis=-1)
    counts = (relevance_block >= 0).sum(axis=-1)
    found = (top_relevant[:, :width] & (jnp.arange(width) < counts[:, None])).sum()
    lowest_relevant = jnp.where(relevance_block >= 0, relevant_scores, jnp.inf).min(axis=-1)
    other = ~top_relevant & (top_scores > _PADDED_SCORE / 2)
    highest_other = jnp.where(other, top_scores, -jnp.inf).max(axis=-1)
    margin = jnp.where(real_block, lowest_relevant - highest_other, jnp.inf).min()
    lowest = jnp.where(real_block, lowest_relevant, jnp.inf).min()
    highest = jnp.where(real_block, highest_other, -jnp.inf).max()
    found_total, relevant_total, margin_min, lowest_min, highest_max = carry
    return (found_total + found, relevant_total + counts.sum(), jnp.minimum(margin_min, margin),
            jnp.minimum(lowest_min, lowest), jnp.maximum(highest_max, highest)), None

  zero = jnp.zeros_like(jnp.asarray(num_queries), jnp.int32)  # varying, as the inputs are
  inf = jnp.full_like(queries[0, 0], jnp.inf)
  (found, relevant, margin, lowest, highest), _ = _over_blocks(
      body, (zero, zero, inf, inf, -inf), blocks, queries.shape[0])
  return found / jnp.maximum(relevant, 1), margin, lowest - highest


def judge(criterion: str, epsilon, accuracy, margin, threshold_gap):
  """(passed, the criterion's margin) from retrieval_metrics: topk, every query's relevant
  set on top (its margin the smallest query margin); threshold, one score separates every
  relevant score from every other (its margin the threshold gap); margin, every query's
  margin at least epsilon."""
  if criterion == "topk":
    return accuracy >= 1.0, margin
  if criterion == "threshold":
    return threshold_gap > 0, threshold_gap
  return margin >= epsilon, margin
