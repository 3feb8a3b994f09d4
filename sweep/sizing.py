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


# The grid starts here, and every configuration whose grid sizes fit the floor shape trains
# in it. Below about that many scores a step costs its fixed overhead (on a 2-core CPU,
# 11 us at 128 x 16 x 2 to 18 us at 256 x 24 x 8, one slot; an accelerator's floor is higher
# still), so finer shapes would only add programs to compile: a small sweep's d = 2 ... 6
# share one.
MIN_QUERIES, MIN_DOCUMENTS = 128, 16
FLOOR_QUERIES, FLOOR_DOCUMENTS, FLOOR_DIMS = 256, 24, 8


def shape_class(config: Configuration) -> BucketShape:
  """The single-slot padded shape a configuration trains in: each of its sizes on the grid,
  or the floor shape where that holds them all.

  Queries are padded from the configuration's own count, C(n, k) for a top-k problem, not
  from C(padded n, k): a slot's relevance table is its own, so nothing needs the larger one.
  Dimensions take a finer grid at small d, where one step of 4 would be most of the work.
  """
  sizes = (padded(max(config.query_count, MIN_QUERIES)), padded(max(config.n, MIN_DOCUMENTS)),
           padded(config.d, min_step=2))
  floor = (FLOOR_QUERIES, FLOOR_DOCUMENTS, FLOOR_DIMS)
  if all(size <= least for size, least in zip(sizes, floor)):
    sizes = floor
  queries, documents, dims = sizes
  return BucketShape(slots=1, queries=queries, documents=documents, dims=dims, width=config.k)


def slot_bytes(shape: BucketShape) -> int:
  """Device memory one slot of `shape` needs while training: a conservative estimate."""
  embeddings = (shape.queries + shape.documents) * shape.dims * _COPIES_PER_EMBEDDING
  logits = shape.queries * shape.documents * _COPIES_PER_LOGIT
  return _FLOAT_BYTES * (embeddings + logits + shape.queries * shape.width)


def budget_bytes(memory_budget_mb: float, devices: tuple | None = None) -> float:
  """memory_budget_mb, capped by the devices' own memory where it is known (default: this
  process's devices)."""
  budget = memory_budget_mb * 2**20
  device = memory.device_memory_bytes(devices)
  count = len(devices) if devices else jax.device_count()
  return budget if device is None else min(budget, device * count)


def slot_fits_device(shape: BucketShape, memory_budget_mb: float) -> bool:
  """Whether one slot of `shape` fits memory_budget_mb and one device, by the estimate."""
  device = memory.device_memory_bytes()
  return slot_bytes(shape) <= min(memory_budget_mb * 2**20, device or math.inf)


def compiler_decides(devices: tuple | None = None) -> bool:
  """On an accelerator the compiled program alone says what fits: its compiler lays buffers
  out its own way (a TPU needs up to 3x what XLA's CPU backend does). On a CPU, memory is
  plentiful and a compile is a cost, so the conservative estimate decides where it fits."""
  return (devices or jax.devices())[0].platform != "cpu"


def slots_within(shape: BucketShape, memory_budget_mb: float,
                 settings: TrainSettings | None = None, devices: tuple | None = None) -> int:
  """How many slots of `shape` fit the budget on `devices` (0 if not even one).

  Given the settings, the compiled program's measured memory decides (memory.py, cached per
  shape), except on a CPU where the estimate already fits `shape.slots`; without settings
  only the estimate is used (the automatic max_n tries many shapes).
  """
  budget = budget_bytes(memory_budget_mb, devices)
  fit = int(budget // slot_bytes(shape))
  if settings is None or (fit >= shape.slots and not compiler_decides(devices)):
    return fit
  return int(budget // memory.measured_slot_bytes(settings, shape, devices))


def buckets_fit(shapes, memory_budget_mb: float, settings: TrainSettings,
                devices: tuple | None = None) -> bool:
  """Whether buckets of these shapes fit the budget together: by each shape's measured
  memory, or on a CPU by the conservative estimate where that fits."""
  budget = budget_bytes(memory_budget_mb, devices)
  if not compiler_decides(devices) and sum(slot_bytes(s) * s.slots for s in shapes) <= budget:
    return True
  return sum(memory.measured_slot_bytes(settings, s, devices) * s.slots for s in shapes) <= budget
