"""The device memory one slot needs, measured from its compiled program, and what the
devices have.

Measured, since only XLA's buffer assignment knows which arrays of a program are live at
once. The program is compiled for the devices it will run on: this process's own, or the
chips of a TPU slice this machine does not have (hardware.tpu_devices), so that a plan made
anywhere sees what the TPU compiler sees.
Compiling only to measure costs seconds, so on a CPU callers measure only where a
conservative estimate does not already fit (sizing.slots_within).
"""

from __future__ import annotations

import dataclasses
import functools

import jax

from sweep import hardware, objective
from sweep import trainer


def abstract_bucket(settings: trainer.TrainSettings, shape: trainer.BucketShape, mesh=None):
  """Empty slots and the abstract state of `shape`, split over `mesh` when given: enough to
  compile its programs."""
  sharding = None if mesh is None else trainer.slot_sharding(mesh)
  abstract = lambda tree: jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
  return (abstract(trainer.pack([None] * shape.slots, shape)),
          abstract(trainer.init_state(settings, shape, [])))


@functools.cache
def compiled_chunk(settings: trainer.TrainSettings, shape: trainer.BucketShape,
                   devices: tuple | None = None, slots_per_device: int = 1):
  """The training chunk of `shape` with `slots_per_device` slots on each of `devices`
  (default: this process's), compiled, never run; or, where a TPU compiler refuses it as
  too large for a chip, (temporaries required, memory available) in bytes."""
  mesh = trainer.slot_mesh(devices)
  shape = dataclasses.replace(shape, slots=slots_per_device * mesh.size)
  # The automatic query tile of the devices compiled for, not of this process's backend.
  platform = mesh.devices.flat[0].platform
  settings = dataclasses.replace(settings, query_tile=objective.query_tile(
      shape.queries, shape.documents, settings.query_tile, objective.auto_tile_bytes(platform)))
  lowered = trainer.train_chunk.lower(settings, *abstract_bucket(settings, shape, mesh), True,
                                     mesh=mesh)
  try:
    return lowered.compile()
  except Exception as error:  # the compiler's own error type; only running out of memory is ours
    too_large = hardware.out_of_memory(error)
    if too_large is None:
      raise
    return too_large


def argument_bytes(settings: trainer.TrainSettings, shape: trainer.BucketShape) -> int:
  """Bytes of one slot's inputs (relevance, embeddings, optimizer state): exact, and a lower
  bound of its memory that needs no compile."""
  one = dataclasses.replace(shape, slots=1)
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract_bucket(settings, one)))


def program_bytes(compiled: jax.stages.Compiled) -> int:
  """Peak memory of a compiled program on each device: arguments, outputs, temporaries."""
  m = compiled.memory_analysis()
  return (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
          + m.temp_size_in_bytes)


def measured_slot_bytes(settings: trainer.TrainSettings, shape: trainer.BucketShape,
                        devices: tuple | None = None) -> int:
  """Device memory one slot of `shape` needs while training (one slot per device); for a
  program the compiler refused as too large, its arguments and the temporaries it named."""
  compiled = compiled_chunk(settings, shape, devices)
  if isinstance(compiled, tuple):
    return argument_bytes(settings, shape) + int(compiled[0])
  return program_bytes(compiled)


def device_memory_bytes(devices: tuple | None = None) -> float | None:
  """Memory of each device: as JAX reports it (GPU, TPU), as the compiler of a TPU chip that
  is compiled for but not attached says, else None (CPU)."""
  device = (devices or jax.local_devices())[0]
  if device.platform == "cpu":
    return None
  if device not in jax.local_devices():
    return hardware.chip_memory_bytes(device)
  stats = device.memory_stats()
  return stats.get("bytes_limit") if stats else None
