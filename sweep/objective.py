"""Scores, the InfoNCE loss in its two forms, top-k accuracy and the retrieval margin.

Every function sees one configuration, possibly padded: `relevance` [q_pad, r] lists each
query's relevant documents (-1 where unused, no repeats), and only the first `num_queries`
queries and `num_documents` documents are real. Padded documents never enter a softmax or a
top-k, and padded queries carry no loss and no accuracy. The trainer vmaps these over its
slots.

Memory: the q x n score matrix dominates at paper scale (204,480 x 640 at d = 45), so
nothing here holds more than a block of it at a time (XLA keeps about two block-sized
buffers). Queries are cut into blocks of `query_tile` rows (0 = automatic, see
`query_tile`); the loss keeps only each query's log-sum-exp from its forward pass, and its
gradient recomputes the scores block by block (`jax.custom_vjp`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

LOSS_FORMS = ("code", "paper")
# Matmul precision of training, by name: what each computes per device is in the README.
PRECISIONS = {"highest": jax.lax.Precision.HIGHEST, "high": jax.lax.Precision.HIGH,
              "default": jax.lax.Precision.DEFAULT}
# The automatic block: the most query rows whose scores take at most this many bytes. A CPU
# step is fastest when a block stays in cache (blocks of about 1 MiB at d = 32 beat one
# block 2-3x); an accelerator wants large matmuls, and 16 MiB blocks keep a d = 45 step's
# temporaries at 0.1x of one q x n matrix (64 MiB: 0.5x).
AUTO_TILE_BYTES = {"cpu": 2**20}
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
# InfoNCE: forward keeps the log-sum-exp per query; backward recomputes scores per block.
# Both forms have the gradient  d loss / d logit_ij = a_i softmax_ij - t_ij  row by row:
# a dense part weighted by a_i, and a sparse target part on the relevant entries only.
# ---------------------------------------------------------------------------------------

def _block_logits(precision, documents, temperature, block):
  """One block's logits [tile, n], padded documents not yet masked, and its relevant logits
  z [tile, r] read from them (relevant documents are real).

  The readers (log-sum-exp, the gradient's exp pass) apply the document mask themselves;
  z is read before the mask, from real documents only.
  """
  queries, relevance, _ = block
  logits = jnp.matmul(queries, documents.T, precision=precision) / temperature
  relevant = jnp.take_along_axis(logits, jnp.maximum(relevance, 0), axis=-1)
  return logits, relevant


def _masked_logsumexp(scores, document_mask):
  """Row log-sum-exp over real documents; each reduction applies the mask itself."""
  top = jnp.max(jnp.where(document_mask, scores, -jnp.inf), axis=-1)
  top = jnp.where(jnp.isfinite(top), top, 0.0)
  total = jnp.sum(jnp.where(document_mask, jnp.exp(scores - top[:, None]), 0.0), axis=-1)
  return top + jnp.log(total)


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


def _infonce_parts(tile, queries, documents, relevance, num_queries, num_documents):
  """Blocks and counts shared by the forward and the backward pass."""
  rows = queries.shape[0]
  real = jnp.arange(rows) < num_queries
  valid = (relevance >= 0) & real[:, None]
  blocks = (_blocks(queries, tile, 0.0), _blocks(relevance, tile, -1), _blocks(real, tile, False))
  document_mask = jnp.arange(documents.shape[0]) < num_documents
  return blocks, document_mask, valid.sum(), real.sum()


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _infonce(form, tile, precision, queries, documents, relevance, num_queries,
             num_documents, temperature):
  return _infonce_forward(form, tile, precision, queries, documents, relevance, num_queries,
                          num_documents, temperature)[0]


def _infonce_forward(form, tile, precision, queries, documents, relevance, num_queries,
                     num_documents, temperature):
  blocks, document_mask, pairs, counted = _infonce_parts(
      tile, queries, documents, relevance, num_queries, num_documents)

  def body(loss, block):
    logits, relevant = _block_logits(precision, documents, temperature, block)
    _, relevance_block, real = block
    lse = jnp.where(real, _masked_logsumexp(logits, document_mask), 0.0)
    a, _, relevant_term = _pair_weights(form, relevant, (relevance_block >= 0) & real[:, None],
                                        pairs, real, counted)
    return loss + (a * lse - relevant_term).sum(), lse

  # Initial carries are made from inputs, so under shard_map they vary over slots as theirs.
  loss, lse = _over_blocks(body, jnp.zeros_like(temperature), blocks, queries.shape[0])
  return loss, (queries, documents, relevance, num_queries, num_documents, temperature, lse)


def _infonce_backward(form, tile, precision, residuals, cotangent):
  queries, documents, relevance, num_queries, num_documents, temperature, lse = residuals
  blocks, document_mask, pairs, counted = _infonce_parts(
      tile, queries, documents, relevance, num_queries, num_documents)
  blocks = blocks + (_blocks(lse, tile, 0.0),)
  scale = cotangent / temperature

  def body(grad_documents, block):
    block_queries, relevance_block, real, block_lse = block
    logits, relevant = _block_logits(precision, documents, temperature, block[:3])
    valid = (relevance_block >= 0) & real[:, None]
    a, t, _ = _pair_weights(form, relevant, valid, pairs, real, counted)
    # a_i softmax_ij - t_ij in one elementwise pass over the block: padded documents and
    # padded queries (whatever they hold) give exp(-inf) = 0; the targets are placed by
    # comparing column indices, so no [tile, r, d] gather or scatter is needed.
    columns = jnp.arange(documents.shape[0])
    keep = real[:, None] & document_mask
    dense = a[:, None] * jnp.exp(jnp.where(keep, logits - block_lse[:, None], -jnp.inf))
    for r in range(relevance_block.shape[1]):  # a sum of elementwise terms fuses; a reduce would not
      dense -= jnp.where(relevance_block[:, r, None] == columns, t[:, r, None], 0.0)
    grad_queries = jnp.matmul(dense, documents, precision=precision)
    # (Q^T dense)^T contracts dense along its rows without a transposed copy of it.
    grad_documents += jnp.matmul(block_queries.T, dense, precision=precision).T
    return grad_documents, grad_queries * scale

  grad_documents, grad_queries = _over_blocks(body, jnp.zeros_like(documents), blocks,
                                              queries.shape[0])
  return grad_queries, grad_documents * scale, None, None, None, None


_infonce.defvjp(_infonce_forward, _infonce_backward)


def infonce_loss(queries, documents, relevance, num_queries, num_documents, temperature,
                 form: str = "code", tile: int = 0, precision: str = "highest"):
  """InfoNCE over all documents at the given temperature (docs/PROTOCOL.md).

  code form: mean over (query, relevant document) pairs of -log softmax, as the reference
  script computes it. paper form: -log of the summed softmax mass of a query's relevant
  documents, averaged over queries, as the paper writes it. `tile` is the query block
  (0 = automatic) and `precision` the matmul precision by name (PRECISIONS).
  """
  if form not in LOSS_FORMS:
    raise ValueError(f"loss={form!r} is not allowed: choose one of {LOSS_FORMS}")
  if precision not in PRECISIONS:
    raise ValueError(f"precision={precision!r} is not allowed: choose one of {tuple(PRECISIONS)}")
  rows = query_tile(queries.shape[0], documents.shape[0], tile)
  return _infonce(form, rows, PRECISIONS[precision], queries, documents, relevance,
                  num_queries, num_documents, jnp.asarray(temperature, queries.dtype))


# ---------------------------------------------------------------------------------------
# Evaluation, always at full float32 precision: accuracy and margin decide success.
# ---------------------------------------------------------------------------------------

def retrieval_metrics(queries, documents, relevance, num_queries, num_documents,
                      tile: int = 0):
  """(top-k accuracy, minimum margin) of one configuration, block by block, with a partial
  top-k and no sort, at Precision.HIGHEST whatever the training precision.

  Accuracy is the reference's: the relevant documents found in each query's top-|R| over
  all relevant documents. The margin of a query is its lowest relevant score minus its
  highest other score; it is positive exactly when the query retrieves its set strictly.
  The top |R| + 1 scores always hold the highest other one, as |R| <= width.
  """
  queries, documents, relevance = jnp.asarray(queries), jnp.asarray(documents), jnp.asarray(relevance)
  width = relevance.shape[1]
  rows = query_tile(queries.shape[0], documents.shape[0], tile)
  real = jnp.arange(queries.shape[0]) < num_queries
  blocks = (_blocks(queries, rows, 0.0), _blocks(relevance, rows, -1), _blocks(real, rows, False))
  document_mask = jnp.arange(documents.shape[0]) < num_documents

  def body(carry, block):
    block_queries, relevance_block, real_block = block
    relevance_block = jnp.where(real_block[:, None], relevance_block, -1)
    scores = jnp.matmul(block_queries, documents.T, precision=jax.lax.Precision.HIGHEST)
    scores = jnp.where(document_mask, scores, -jnp.inf)  # padded documents never rank
    top_scores, top_indices = jax.lax.top_k(scores, min(width + 1, scores.shape[1]))
    top_relevant = (top_indices[:, :, None] == relevance_block[:, None, :]).any(axis=-1)
    counts = (relevance_block >= 0).sum(axis=-1)
    found = (top_relevant[:, :width] & (jnp.arange(width) < counts[:, None])).sum()
    relevant_scores = jnp.take_along_axis(scores, jnp.maximum(relevance_block, 0), axis=-1)
    lowest_relevant = jnp.where(relevance_block >= 0, relevant_scores, jnp.inf).min(axis=-1)
    highest_other = jnp.where(top_relevant, -jnp.inf, top_scores).max(axis=-1)
    margin = jnp.where(real_block, lowest_relevant - highest_other, jnp.inf).min()
    found_total, relevant_total, margin_min = carry
    return (found_total + found, relevant_total + counts.sum(),
            jnp.minimum(margin_min, margin)), None

  zero = jnp.zeros_like(jnp.asarray(num_queries), jnp.int32)  # varying, as the inputs are
  (found, relevant, margin), _ = _over_blocks(
      body, (zero, zero, jnp.full_like(queries[0, 0], jnp.inf)), blocks, queries.shape[0])
  return found / jnp.maximum(relevant, 1), margin
