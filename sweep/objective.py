"""Scores, the InfoNCE loss in its two forms, top-k accuracy and the retrieval margin.

Every function sees one configuration, possibly padded: `relevance` [q_pad, r] lists each
query's relevant documents (-1 where unused), and only the first `num_queries` queries and
`num_documents` documents are real. Padded documents never enter a softmax or a top-k, and
padded queries carry no loss and no accuracy. The trainer vmaps these over its slots.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

LOSS_FORMS = ("code", "paper")


def masks(relevance: jax.Array, num_queries: jax.Array, num_documents: jax.Array,
          num_padded_documents: int):
  """(query_mask [q], document_mask [n], relevance_mask [q, n]) of one padded configuration."""
  query_mask = jnp.arange(relevance.shape[0]) < num_queries
  document_mask = jnp.arange(num_padded_documents) < num_documents
  relevance_mask = (relevance[:, :, None] == jnp.arange(num_padded_documents)).any(axis=1)
  relevance_mask &= query_mask[:, None]
  return query_mask, document_mask, relevance_mask


def masked_scores(queries, documents, document_mask):
  """Dot-product scores, -inf for padded documents so they never rank or carry probability."""
  return jnp.where(document_mask, queries @ documents.T, -jnp.inf)


def infonce_loss(queries, documents, relevance, num_queries, num_documents, temperature,
                 form: str = "code"):
  """InfoNCE over all documents at the given temperature (docs/PROTOCOL.md).

  code form: mean over (query, relevant document) pairs of -log softmax, as the reference
  script computes it. paper form: -log of the summed softmax mass of a query's relevant
  documents, averaged over queries, as the paper writes it.
  """
  query_mask, document_mask, relevance_mask = masks(
      relevance, num_queries, num_documents, documents.shape[0])
  logits = masked_scores(queries, documents, document_mask) / temperature
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  if form == "code":
    pair_log_probs = jnp.where(relevance_mask, log_probs, 0.0)
    return -pair_log_probs.sum() / jnp.maximum(relevance_mask.sum(), 1)
  if form == "paper":
    # Padded queries sum over every document instead of none, so no -inf (and no NaN
    # gradient) appears; their term is dropped right after.
    summed = relevance_mask | ~query_mask[:, None]
    relevant_mass = jax.nn.logsumexp(jnp.where(summed, log_probs, -jnp.inf), axis=-1)
    relevant_mass = jnp.where(query_mask, relevant_mass, 0.0)
    return -relevant_mass.sum() / jnp.maximum(query_mask.sum(), 1)
  raise ValueError(f"loss={form!r} is not allowed: choose one of {LOSS_FORMS}")


def retrieval_metrics(queries, documents, relevance, num_queries, num_documents):
  """(top-k accuracy, minimum margin) of one configuration, with a partial top-k, no sort.

  Accuracy is the reference's: the relevant documents found in each query's top-|R| over
  all relevant documents. The margin of a query is its lowest relevant score minus its
  highest other score; it is positive exactly when the query retrieves its set strictly.
  """
  query_mask, document_mask, relevance_mask = masks(
      relevance, num_queries, num_documents, documents.shape[0])
  scores = masked_scores(queries, documents, document_mask)
  relevant_counts = relevance_mask.sum(axis=-1)
  _, top_indices = jax.lax.top_k(scores, relevance.shape[1])
  within_count = jnp.arange(relevance.shape[1]) < relevant_counts[:, None]
  found = jnp.take_along_axis(relevance_mask, top_indices, axis=-1) & within_count
  accuracy = found.sum() / jnp.maximum(relevant_counts.sum(), 1)

  lowest_relevant = jnp.where(relevance_mask, scores, jnp.inf).min(axis=-1)
  highest_other = jnp.where(relevance_mask, -jnp.inf, scores).max(axis=-1)
  margin = jnp.where(query_mask, lowest_relevant - highest_other, jnp.inf).min()
  return accuracy, margin
