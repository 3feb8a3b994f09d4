"""`sweep plan` and measured memory: compiled programs of tiny sweeps, never trained."""

import json
import subprocess
import sys

import pytest

from sweep import memory, plan, search, sizing, targets
from sweep import trainer
from sweep.store import Store
from helpers import tiny_config


def test_replay_closes_each_search_at_the_assumed_boundary():
  config = tiny_config(dims=(4,), start_n=6, local_sweep=1, probes_per_search=2)
  spec = targets.CriticalN(config).specs()["d=4"]
  replayed = plan.replay(config, 4, spec)
  state = search.new_search(spec)
  for round_ in replayed.rounds:
    assert 1 <= len(round_) <= 2
    for n, ok in round_:
      state = search.record(state, n, ok)
  assert search.summary(state)["critical_n"] == 6 and search.summary(state)["done"]


def test_plan_reports_compiled_memory_and_cost_per_dimension():
  config = tiny_config(dims=(4, 6), start_n=8, local_sweep=0, restarts=2)
  device = plan.device_named("h100")
  report = plan.plan_sweep(config, device)
  assert [r["d"] for r in report["dims"]] == [4, 6]
  settings = trainer.TrainSettings()
  for row in report["dims"]:
    shape = sizing.shape_class(trainer.Configuration(d=row["d"], n=row["start_n"]))
    assert row["slot_mib"] * 2**20 == memory.measured_slot_bytes(settings, shape)
    assert row["step_gflop"] > 0 and row["step_gb"] > 0 and row["probes"] == 2 * 2
    assert row["slots_fit"] == config.max_slots  # tiny slots: the bucket limit binds
  bigger = [r["step_gflop"] for r in report["dims"]]
  assert bigger[1] > bigger[0]
  # Each search starts at its assumed boundary n = 8 with two points a round, so its one
  # round probes 8 (a success) and 9 (a failure) and closes with no sweep (local_sweep=0):
  # its chain is one failure's steps, its work both probes' steps for every restart, each
  # step the roofline of the compiled costs, a chain step never shorter than the launch floor.
  assert plan.SUCCESS_STEPS % config.eval_every == plan.FAILURE_STEPS % config.eval_every == 0
  chain = work = 0.0
  for row in report["dims"]:
    assert row["rounds"] == 1
    step = max(row["step_gflop"] * 1e9 / device.flops[report["precision"]],
               row["step_gb"] * 1e9 / device.bandwidth)
    chain = max(chain, plan.FAILURE_STEPS * max(step, device.launch_floor_s))
    work += config.restarts * (plan.SUCCESS_STEPS + plan.FAILURE_STEPS) * step
  assert report["longest_chain_hours"] == pytest.approx(chain / 3600)
  assert report["work_hours"] == pytest.approx(work / 3600)
  assert report["wall_hours"] == pytest.approx(max(work / device.chips, chain) / 3600)


def test_calibration_takes_mean_stop_steps_per_outcome_and_dimension():
  records = [dict(d=4, success=True, stop_step=100), dict(d=4, success=False, stop_step=1000),
             dict(d=5, success=True, stop_step=300), dict(d=5, success=False, stop_step=2000),
             dict(d=5, success=False, stop_step=None)]  # a construction: nothing trained
  model = plan.calibrate(records, "runs/x")
  assert (model.success, model.failure) == (200, 1500)
  assert model.steps(4, True, 50) == 100 and model.steps(5, False, 50) == 2000
  assert model.steps(9, True, 150) == 300  # no d = 9 results: the means, whole blocks
  with pytest.raises(ValueError, match="no trained results"):
    plan.calibrate([], "runs/empty")


@pytest.mark.parametrize("name, chips", [("tpu-v5e-8", 8), ("tpu-v4", 4), ("tpu-v6e", 1),
                                         ("h100-2", 2), ("h200", 1)])
def test_device_names_take_a_chip_count(name, chips):
  assert plan.device_named(name).chips == chips  # a TPU's default: its smallest slice


@pytest.mark.parametrize("name", ["tpu-v9", "h100-0", "", "tpu-v5e-2", "tpu-v4-1"])
def test_unknown_devices_are_refused_by_name(name):
  with pytest.raises(ValueError, match="device="):
    plan.device_named(name)


def test_slots_within_measures_only_where_the_estimate_does_not_fit():
  settings = trainer.TrainSettings()
  shape = trainer.BucketShape(slots=1, queries=2016, documents=64, dims=12, width=2)
  measured, estimate = memory.measured_slot_bytes(settings, shape), sizing.slot_bytes(shape)
  assert measured < estimate
  between = (measured + estimate) / 2 / 2**20
  assert sizing.slots_within(shape, between) == 0
  assert sizing.slots_within(shape, between, settings) == 1
  misses = memory.compiled_chunk.cache_info().misses
  small = trainer.BucketShape(slots=1, queries=28, documents=8, dims=4, width=2)
  assert sizing.slots_within(small, 1.0, settings) >= 1  # fits by the estimate: no compile
  assert memory.compiled_chunk.cache_info().misses == misses


def test_cli_plan_calibrated_from_a_workdir(tmp_path):
  store = Store(str(tmp_path))
  store.append_results([dict(d=4, n=8, k=2, seed=42, success=True, stop_reason="success",
                             stop_step=450),
                        dict(d=4, n=9, k=2, seed=42, success=False, stop_reason="patience",
                             stop_step=3000)])
  command = [sys.executable, "-m", "sweep.cli", "plan", "--config=experiments/quick.py",
             "--config.dims=(4,)", "--config.local_sweep=0", "--device=tpu-v5e-8", "--json",
             f"--calibrate={tmp_path}"]
  done = subprocess.run(command, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr
  report = json.loads(done.stdout)
  assert report["chips"] == 8 and report["device"] == "tpu-v5e"
  assert report["steps_model"]["success"] == 450 and report["steps_model"]["failure"] == 3000
  bad = subprocess.run(command[:-3] + ["--device=gpu"], capture_output=True, text=True, timeout=300)
  assert bad.returncode != 0 and bad.stderr.strip().splitlines()[-1].startswith("error: device=")
