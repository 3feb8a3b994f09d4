"""Bucket shapes: coarse padded sizes, the memory a slot needs, and how many slots fit.

Padded sizes come from a coarse grid (at most 25% padding) so that a sweep compiles only a
handful of programs while its searches move n up and down.
"""

from __future__ import annotations

import math

import jax

from sweep import memory
from sweep.trainer import BucketShape, Configuration, TrainSettings

_FLOAT_BYTES = 4
# Live copies per embedding entry (parameters, gradient, two Adam moments, updates, the
# scan carry) and per logit (scores, log-probabilities, their cotangents, masks).
_COPIES_PER_EMBEDDING = 8
_COPIES_PER_LOGIT = 8


def padded(size: int, min_step: int = 4) -> int:
  """The grid value >= size: steps of a quarter of the power of two below (at most 25%
  padding), and at least min_step."""
  step = max(min_step, 2 ** max(0, math.floor(math.log2(max(size - 1, 1))) - 2))
  return -(-size // step) * step


# The grid starts here: below about this many scores a step costs its fixed overhead on any
# device, so finer shapes would only add programs to compile.
MIN_QUERIES, MIN_DOCUMENTS = 128, 16


def shape_class(config: Configuration) -> BucketShape:
  """The single-slot padded shape a configuration trains in: each of its sizes on the grid.

  Queries are padded from the configuration's own count, C(n, k) for a top-k problem, not
  from C(padded n, k): a slot's relevance table is its own, so nothing needs the larger one.
  Dimensions take a finer grid at small d, where one step of 4 would be most of the work.
  """
  return BucketShape(slots=1, queries=padded(max(config.query_count, MIN_QUERIES)),
                     documents=padded(max(config.n, MIN_DOCUMENTS)),
                     dims=padded(config.d, min_step=2), width=config.k)


def slot_bytes(shape: BucketShape) -> int:
  """Device memory one slot of `shape` needs while training: a conservative estimate."""
  embeddings = (shape.queries + shape.documents) * shape.dims * _COPIES_PER_EMBEDDING
  logits = shape.queries * shape.documents * _COPIES_PER_LOGIT
  return _FLOAT_BYTES * (embeddings + logits + shape.queries * shape.width)


def budget_bytes(memory_budget_mb: float) -> float:
  """memory_budget_mb, capped by the devices' own memory where JAX reports it."""
  budget = memory_budget_mb * 2**20
  device = memory.device_memory_bytes()
  return budget if device is None else min(budget, device * jax.device_count())


def slots_within(shape: BucketShape, memory_budget_mb: float,
                 settings: TrainSettings | None = None) -> int:
  """How many slots of `shape` fit the budget (0 if not even one), at least `shape.slots`
  exactly when they fit.

  The conservative estimate decides when it fits anyway (tiny shapes never pay a compile);
  otherwise, given the settings, the compiled program's measured memory does (memory.py,
  cached per shape). Without settings only the estimate is used (the automatic max_n tries
  many shapes).
  """
  budget = budget_bytes(memory_budget_mb)
  fit = int(budget // slot_bytes(shape))
  if fit >= shape.slots or settings is None:
    return fit
  return int(budget // memory.measured_slot_bytes(settings, shape))


def buckets_fit(shapes, memory_budget_mb: float, settings: TrainSettings) -> bool:
  """Whether buckets of these shapes fit the budget together: by the conservative estimate,
  else by each shape's measured memory."""
  budget = budget_bytes(memory_budget_mb)
  return (sum(slot_bytes(s) * s.slots for s in shapes) <= budget or
          sum(memory.measured_slot_bytes(settings, s) * s.slots for s in shapes) <= budget)
