"""The engine's programs compiled by the TPU compiler for real Cloud TPU slices, on this CPU.

libtpu (the dev extra installs it) describes any slice's chips; nothing here needs a TPU.
"""

import dataclasses
import json
import subprocess
import sys

import jax
import pytest

from sweep import hardware, memory, paper, plan, problems, scheduler, sizing, targets
from sweep import trainer
from sweep.config import settings_of
from helpers import tiny_config

pytestmark = pytest.mark.tpu

# The d = 45 probe of the paper's sweep near its boundary: 196,608 queries x 640 x 48.
PAPER_D45 = trainer.BucketShape(slots=1, queries=196_608, documents=640, dims=48, width=2)
SMALL = trainer.BucketShape(slots=1, queries=2048, documents=64, dims=16, width=2)


def chips(name: str) -> tuple:
  return hardware.tpu_devices(plan.device_named(name))


def test_slices_are_real_topologies_one_device_per_chip():
  assert len(chips("tpu-v5e-8")) == 8 and {d.process_index for d in chips("tpu-v5e-8")} == {0}
  assert len(chips("tpu-v5e-16")) == 16 and {d.process_index for d in chips("tpu-v5e-16")} == {0, 1, 2, 3}
  assert len(chips("tpu-v4-8")) == 8 and len(chips("tpu-v5p")) == 4
  assert {d.device_kind for d in chips("tpu-v6e-8")} == {"TPU v6 lite"}
  with pytest.raises(ValueError, match="not a Cloud TPU slice.*1, 4, 8, 16"):
    plan.device_named("tpu-v5e-2")


def test_the_paper_d45_chunk_compiles_for_v5e_and_fits_a_chip():
  settings = settings_of(tiny_config())
  devices = chips("tpu-v5e-4")
  compiled = memory.compiled_chunk(settings, PAPER_D45, devices)
  used = memory.program_bytes(compiled)
  available = hardware.chip_memory_bytes(devices[0])
  assert 15 * 2**30 < available <= 16 * 2**30  # v5e: 16 GiB of HBM, less what the runtime keeps
  # Its inputs (embeddings, Adam's moments, relevance) alone are a lower bound of its memory.
  assert memory.argument_bytes(settings, PAPER_D45) < used < available
  arguments = compiled.memory_analysis().argument_size_in_bytes  # a TPU pads small arrays
  assert 0 <= arguments - memory.argument_bytes(settings, PAPER_D45) < 2**16


def test_a_program_too_large_for_a_chip_is_measured_not_raised():
  settings = settings_of(tiny_config())
  huge = dataclasses.replace(PAPER_D45, queries=16 * PAPER_D45.queries)
  devices = chips("tpu-v5e")
  needed = memory.measured_slot_bytes(settings, huge, devices)
  assert needed > hardware.chip_memory_bytes(devices[0])
  assert sizing.slots_within(huge, 1e9, settings, devices) == 0


def test_a_multi_host_chunk_splits_its_slots_over_every_chip_of_every_host():
  settings = settings_of(tiny_config())
  pod, host = chips("tpu-v5e-16"), chips("tpu-v5e-4")
  compiled = memory.compiled_chunk(settings, SMALL, pod)
  slots_sharding = jax.tree.leaves(compiled.input_shardings[0])[0]
  assert set(slots_sharding.device_set) == set(pod)
  assert slots_sharding.shard_shape((16, SMALL.queries, 2))[0] == 1
  assert {d.process_index for d in slots_sharding.device_set} == {0, 1, 2, 3}
  # Each chip holds what a chip of one host holds at the same slots per chip.
  assert memory.program_bytes(compiled) == memory.program_bytes(
      memory.compiled_chunk(settings, SMALL, host))


def test_the_plan_and_the_vm_choose_the_same_slots():
  config = tiny_config(dims=(12,), start_n=40, local_sweep=0, restarts=2, max_slots=256)
  device = plan.device_named("tpu-v5e-4")
  slot_mib = plan.plan_sweep(config, device)["dims"][0]["slot_mib"]
  config.memory_budget_mb = 21.5 * slot_mib  # memory binds: 21 slots fit, 8 a bucket
  report = plan.plan_sweep(config, device)
  assert report["compiler"] == "tpu" and report["slots_per_bucket"] == 8
  planned = report["dims"][0]["slots_fit"]
  assert planned == 16

  # The VM: the driver's scheduler with the slice's chips as its devices.
  sweep, settings, devices = targets.CriticalN(config), settings_of(config), chips("tpu-v5e-4")
  probes = [problems.Probe(12, 40, seed) for seed in range(64)]
  shapes = [sizing.shape_class(sweep.configuration(probe)) for probe in probes]
  per_bucket = scheduler.slots_per_bucket(config.bucket_slots, config.restarts,
                                          devices[0].platform, len(devices))
  placements, waiting = scheduler.arrange(
      [], probes, shapes, per_bucket, config.max_slots,
      lambda shapes: sizing.buckets_fit(shapes, config.memory_budget_mb, settings, devices))
  assert sum(len(p.bucket.probes) for p in placements) == planned
  assert len(waiting) == len(probes) - planned


def test_plan_refuses_a_dimension_whose_boundary_cannot_fit_a_chip():
  done = subprocess.run(
      [sys.executable, "-m", "sweep.cli", "plan", "--config=experiments/paper.py",
       "--config.dims=(120,)", "--config.memory_budget_mb=4", "--device=tpu-v5e-1", "--json"],
      capture_output=True, text=True, timeout=600)
  assert done.returncode == 3, done.stderr
  report = json.loads(done.stdout)
  assert report["compiler"] == "tpu" and report["dims"][0]["lower_bound_only"]
  refusal = report["unmeasurable"][0]
  assert refusal["d"] == 120 and refusal["boundary_n"] == round(
      sum(c * 120**i for i, c in enumerate(paper.cubic())))  # the paper's cubic, uncapped
  assert refusal["bytes_needed"] > refusal["chip_bytes"]
  last = done.stderr.strip().splitlines()[-1]
  assert last.startswith("cannot measure d=120") and refusal["shape"] in last
  assert f"{refusal['bytes_needed']:,} bytes" in last and "tpu-v5e chip" in last
