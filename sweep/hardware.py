"""The accelerators a sweep can be planned for, and the TPU chips this machine can compile for.

A device's published peaks and memory turn compiled costs into time and slot counts (plan.py).
A TPU needs no TPU to be compiled for: where libtpu is installed (the `tpu` extra; `dev`
has it too), `jax.experimental.topologies` hands out the devices of any Cloud TPU slice, and
the TPU compiler itself then measures every program's memory and FLOPs (memory.py). On a
TPU VM the same programs are compiled on the real chips, and give the same figures.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
import re

import jax
import jax.numpy as jnp

_GIGA, _TERA = 1e9, 1e12


@dataclasses.dataclass(frozen=True)
class Device:
  """Published peak matmul throughput per training precision, memory bandwidth and size.

  `flops` maps objective.PRECISIONS names to FLOP/s: on a GPU "highest" is float32 on the
  CUDA cores and "high"/"default" TF32 on the tensor cores; on a TPU "default" is one
  bfloat16 pass, "high" three and "highest" six. `launch_floor_s` is the least a training
  step of a bucket takes (kernel launches), however small. A TPU also names its generation
  in topology names (`tpu_generation`, "v5e") and the `device_kind` JAX reports for it.
  """
  name: str
  flops: dict
  bandwidth: float  # bytes/s
  memory: float     # bytes per chip
  launch_floor_s: float
  tile_backend: str  # whose automatic query tile the device's programs use
  chips: int = 1
  tpu_generation: str = ""
  device_kind: str = ""


def _gpu(name, fp32, tf32, bandwidth, memory_gb):
  return Device(name, {"highest": fp32 * _TERA, "high": tf32 * _TERA, "default": tf32 * _TERA},
                bandwidth * _TERA, memory_gb * _GIGA, 3e-5, "gpu")


def _tpu(generation, device_kind, bf16, bandwidth, memory_gib):
  return Device(f"tpu-{generation}", {"highest": bf16 / 6 * _TERA, "high": bf16 / 3 * _TERA,
                                      "default": bf16 * _TERA},
                bandwidth * _TERA, memory_gib * 2**30, 1e-5, "tpu", tpu_generation=generation,
                device_kind=device_kind)


# Vendor data sheets (dense, no sparsity): H100 SXM5 80 GB, H200 SXM 141 GB (HBM3e), A100 SXM4
# 80 GB; Cloud TPU v4 / v5e / v5p / v6e (Trillium) per chip, HBM in GiB.
DEVICES = {d.name: d for d in (
    _gpu("h100", 67.0, 494.7, 3.35, 80), _gpu("h200", 67.0, 494.7, 4.8, 141),
    _gpu("a100", 19.5, 156.0, 2.039, 80),
    _tpu("v4", "TPU v4", 275.0, 1.228, 32), _tpu("v5e", "TPU v5 lite", 197.0, 0.819, 16),
    _tpu("v5p", "TPU v5", 459.0, 2.765, 95), _tpu("v6e", "TPU v6 lite", 918.0, 1.640, 32))}

# The slices Cloud TPU offers, by generation: chips -> topology. Every host of a multi-host
# slice has 4 chips (2x2x1); v5e and v6e also come as single hosts of 1, 4 or 8 chips.
_PODS_2D = {16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
_PODS_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8",
            256: "4x8x8", 512: "8x8x8"}
TPU_SLICES = {
    "v5e": {1: "1x1", 4: "2x2", 8: "2x4", **_PODS_2D},
    "v6e": {1: "1x1", 4: "2x2", 8: "2x4", **_PODS_2D},
    "v4": _PODS_3D,
    "v5p": _PODS_3D,
}
_SINGLE_HOST = {"1x1": (1, 1, 1), "2x4": (2, 4, 1)}  # else 4 chips a host


def libtpu_installed() -> bool:
  return importlib.util.find_spec("libtpu") is not None


def slice_chips(device: Device) -> tuple[int, ...]:
  """The chip counts a TPU of this generation comes in."""
  return tuple(TPU_SLICES[device.tpu_generation])


def topology_name(device: Device) -> str:
  """`device`'s slice as a topology, e.g. "v5e:2x4"; a ValueError names the real ones."""
  slices = TPU_SLICES[device.tpu_generation]
  if device.chips not in slices:
    raise ValueError(f"device={device.name}-{device.chips} is not a Cloud TPU slice: "
                     f"{device.name} comes with {', '.join(map(str, slices))} chips")
  return f"{device.tpu_generation}:{slices[device.chips]}"


def quiet_tpu_runtime() -> None:
  """Where libtpu is installed but no TPU is attached (a laptop that plans for one), name a
  stand-in VM so libtpu's start-up does not print what it could not find on a metadata
  server, and let several processes load it (its lock file guards chips there are none
  of). Must run before JAX starts a backend; on a TPU VM it does nothing."""
  if not libtpu_installed():
    return
  try:
    from jax._src import hardware_utils  # the check JAX itself makes before starting libtpu
    attached, _ = hardware_utils.num_available_tpu_chips_and_device_id()
  except (ImportError, AttributeError, OSError):
    return
  if not attached:
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-8")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def tpu_devices(device: Device) -> tuple[jax.Device, ...]:
  """One JAX device per chip of `device`'s slice, from libtpu, on any machine.

  Across hosts, as the processes of a multi-host VM would hold them. v4 and v5p describe
  each chip as two TensorCores; the first of each stands for the chip (JAX's megacore).
  """
  return _topology_devices(topology_name(device))


@functools.cache
def _topology_devices(name: str) -> tuple[jax.Device, ...]:
  from jax.experimental import topologies
  quiet_tpu_runtime()
  bounds = _SINGLE_HOST.get(name.split(":")[1], (2, 2, 1))
  described = topologies.get_topology_desc(topology_name=name, platform="tpu",
                                           chips_per_host_bounds=bounds).devices
  return tuple(d for d in described if getattr(d, "core_on_chip", 0) == 0)


_OUT_OF_MEMORY = re.compile(r"required for HLO temporaries \(([\d.]+)([KMGT]?)\) exceeds "
                            r"available HBM \(([\d.]+)([KMGT]?)\)")


def out_of_memory(error: Exception) -> tuple[float, float] | None:
  """(bytes of temporaries required, bytes available) from the TPU compiler's refusal to
  compile a program too large for a chip; None for any other error."""
  found = _OUT_OF_MEMORY.search(str(error))
  if not found:
    return None
  size = lambda value, unit: float(value) * 1024 ** " KMGT".index(unit or " ")
  return size(*found.group(1, 2)), size(*found.group(3, 4))


@functools.cache
def _compiler_memory_bytes(device: jax.Device) -> float | None:
  # A program far larger than any chip: the compiler's refusal names the memory it has.
  sharding = jax.sharding.SingleDeviceSharding(device)
  too_large = jax.ShapeDtypeStruct((2**36,), jnp.float32, sharding=sharding)
  try:
    jax.jit(lambda x: jnp.cumsum(jnp.exp(x)) * x).lower(too_large).compile()
  except Exception as error:  # the compiler's own error type
    found = out_of_memory(error)
    if found:
      return found[1]
  return None


def chip_memory_bytes(device: jax.Device) -> float | None:
  """Memory a program may use on a TPU chip this machine compiles for but does not have: as
  its compiler says (what a VM reports as its bytes_limit), else the published figure."""
  published = next((d.memory for d in DEVICES.values() if d.device_kind == device.device_kind),
                   None)
  return _compiler_memory_bytes(device) or published
