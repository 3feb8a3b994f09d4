"""The device memory one slot needs, measured from its compiled program, and what the
devices have.

XLA's buffer assignment knows exactly which arrays of a program are live at once; an
assumed number of copies per array does not (it fitted half the slots that really fit at
d = 45). Compiling a program only to measure it costs about a second, so callers measure
only where a conservative estimate does not already fit (batching.slots_within).
"""

from __future__ import annotations

import dataclasses
import functools

import jax

from sweep import trainer as T


def abstract_bucket(settings: T.TrainSettings, shape: T.BucketShape):
  """Empty slots and the abstract state of `shape`: enough to compile its programs."""
  abstract = lambda tree: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)
  return (abstract(T.pack([None] * shape.slots, shape)),
          abstract(T.init_state(settings, shape, [])))


@functools.cache
def compiled_chunk(settings: T.TrainSettings, shape: T.BucketShape) -> jax.stages.Compiled:
  """The training chunk of `shape` with one slot per device, compiled, never run."""
  shape = dataclasses.replace(shape, slots=jax.device_count())
  return T.train_chunk.lower(settings, *abstract_bucket(settings, shape), True).compile()


def program_bytes(compiled: jax.stages.Compiled) -> int:
  """Peak device memory of a compiled program: its arguments, outputs and temporaries."""
  m = compiled.memory_analysis()
  return (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
          + m.temp_size_in_bytes)


def measured_slot_bytes(settings: T.TrainSettings, shape: T.BucketShape) -> int:
  """Device memory one slot of `shape` needs while training (one slot per device)."""
  return program_bytes(compiled_chunk(settings, shape))


def device_memory_bytes() -> int | None:
  """Memory of each device where JAX reports it (GPU, TPU), else None (CPU)."""
  stats = jax.local_devices()[0].memory_stats()
  return stats.get("bytes_limit") if stats else None
