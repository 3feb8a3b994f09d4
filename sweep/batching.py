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


def padded(size: int) -> int:
  """The grid value >= size: steps of 4 up to 32, then a quarter of the power of two below."""
  step = max(4, 2 ** max(0, math.floor(math.log2(max(size - 1, 1))) - 2))
  return -(-size // step) * step


def shape_class(config: Configuration) -> BucketShape:
  """The single-slot padded shape a configuration trains in."""
  documents = padded(config.n)
  if config.table is not None:  # a dataset's relevance: its own queries
    queries = padded(config.query_count)
  else:
    queries = math.comb(documents, config.k)
    if config.num_queries is not None:  # a sample: its own count, not the padded problem's
      queries = min(queries, padded(config.num_queries))
  return BucketShape(slots=1, queries=queries, documents=documents, dims=padded(config.d),
                     width=config.k)


def covering(configs, slots: int) -> BucketShape:
  """The smallest grid shape holding all configurations, with `slots` slots."""
  classes = [shape_class(c) for c in configs]
  return BucketShape(slots=slots, queries=max(s.queries for s in classes),
                     documents=max(s.documents for s in classes),
                     dims=max(s.dims for s in classes), width=max(s.width for s in classes))


def slot_bytes(shape: BucketShape) -> int:
  """Device memory one slot of `shape` needs while training: a conservative estimate."""
  embeddings = (shape.queries + shape.documents) * shape.dims * _COPIES_PER_EMBEDDING
  logits = shape.queries * shape.documents * _COPIES_PER_LOGIT
  return _FLOAT_BYTES * (embeddings + logits + shape.queries * shape.width)


def slots_within(shape: BucketShape, memory_budget_mb: float,
                 settings: TrainSettings | None = None) -> int:
  """How many slots of `shape` fit the budget (0 if not even one), at least `shape.slots`
  exactly when they fit.

  The budget is capped by the devices' own memory where JAX reports it. The conservative
  estimate decides when it fits anyway (tiny shapes never pay a compile); otherwise, given
  the settings, the compiled program's measured memory does (memory.py, cached per shape).
  Without settings only the estimate is used (the automatic max_n tries many shapes).
  """
  budget = memory_budget_mb * 2**20
  device = memory.device_memory_bytes()
  if device is not None:
    budget = min(budget, device * jax.device_count())
  fit = int(budget // slot_bytes(shape))
  if fit >= shape.slots or settings is None:
    return fit
  return int(budget // memory.measured_slot_bytes(settings, shape))


def slot_count(count: int, devices: int) -> int:
  """Slots for `count` probes: a power of two, so resizing a bucket reuses few compiled
  shapes, and a multiple of the device count, so the slot axis splits evenly."""
  power = 1 << max(0, count - 1).bit_length()
  return -(-power // devices) * devices
