"""`sweep plan` and measured memory: compiled programs of tiny sweeps, never trained."""

import json
import subprocess
import sys

import pytest

from sweep import memory, plan, pool, search, sizing, targets
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
  # n = 30, past the floor shape, so that each d has a shape of its own.
  config = tiny_config(dims=(4, 6), start_n=30, local_sweep=0, restarts=2)
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
  # Each search starts at its assumed boundary n = 30 with two points a round, so its one
  # round probes 30 (a success) and 31 (a failure) and closes with no sweep (local_sweep=0):
  # its chain is one failure's steps, its work both probes' steps for every restart, each
  # step the roofline of the compiled costs, a chain step never shorter than the launch floor.
  assert plan.SUCCESS_STEPS % config.eval_every == plan.FAILURE_STEPS % config.eval_every == 0
  chain = work = 0.0
  for row in report["dims"]:
    assert row["rounds"] == 1 and row["search"] == "replay"
    step = max(row["step_gflop"] * 1e9 / device.flops[report["precision"]],
               row["step_gb"] * 1e9 / device.bandwidth)
    assert row["roofline_step_ms"] == pytest.approx(step * 1e3)
    assert row["measured_step_ms"] is None and row["compile_s"] is None
    chain = max(chain, plan.FAILURE_STEPS * max(step, device.launch_floor_s))
    work += config.restarts * (plan.SUCCESS_STEPS + plan.FAILURE_STEPS) * step
  roofline = report["roofline"]
  assert roofline["longest_chain_hours"] == pytest.approx(chain / 3600)
  assert roofline["work_hours"] == pytest.approx(work / 3600)
  assert roofline["wall_hours"] == pytest.approx(max(work / device.chips, chain) / 3600)
  assert report["wall_hours"] == roofline["wall_hours"] and report["measured"] is None


def test_measure_times_each_start_shape_here_and_predicts_the_wall_from_it():
  config = tiny_config(dims=(4, 6), start_n=8, local_sweep=0)
  report = plan.plan_sweep(config, plan.device_named("cpu"), measure=True)
  assert report["measured_on"] == plan.local_device_name() == "cpu-1" and report["chips"] == 1
  # One round per search, 8 (a success) and 9 (a failure), each for every restart, spread
  # over the programs this CPU runs at once (one a core), or the chain of the round (a
  # failure's steps) where that is longer; a cold sweep compiles one program for both, their
  # shape class.
  work = compiling = 0.0
  for row in report["dims"]:
    assert row["measured_step_ms"] > 0 and row["compile_s"] > 0 and row["programs"] == 1
    slot_steps = config.restarts * (plan.SUCCESS_STEPS + plan.FAILURE_STEPS)
    assert row["work_minutes"] * 60 == pytest.approx(slot_steps * row["measured_step_ms"] / 1e3)
    work += row["work_minutes"] * 60
    compiling += row["compile_s"]
  measured = report["measured"]
  assert measured["work_hours"] == pytest.approx(work / 3600)
  assert measured["compile_hours"] == pytest.approx(compiling / 3600)
  assert measured["startup_hours"] > 0  # a fresh process's imports, timed
  assert measured["lanes"] == pool.programs_at_once() >= 1
  training = max(work / measured["lanes"], measured["longest_chain_hours"] * 3600)
  assert report["wall_hours"] == measured["wall_hours"] == pytest.approx(
      (training + compiling) / 3600 + measured["startup_hours"])
  text = plan.format_plan(report)
  assert f"predicted wall time {plan._duration(measured['wall_hours'])} = " in text
  assert f"at the roofline's steps: {plan._duration(report['roofline']['wall_hours'])} = " in text
  for row in report["dims"]:
    line = next(line for line in text.splitlines() if line.split()[0] == str(row["d"]))
    assert f"{row['roofline_step_ms']:.3f}" in line and f"{row['measured_step_ms']:.3f}" in line


@pytest.mark.parametrize("name", ["h100", "cpu-2", "tpu-v5e-8"])
def test_measure_refuses_devices_not_at_hand(name):
  with pytest.raises(ValueError, match=f"device={name.split('-')[0]}.* cannot be measured here"):
    plan.plan_sweep(tiny_config(dims=(4,)), plan.device_named(name), measure=True)


def test_calibration_takes_mean_stop_steps_per_outcome_and_dimension():
  records = [dict(d=4, n=8, success=True, stop_step=100),
             dict(d=4, n=9, success=False, stop_step=1000),
             dict(d=5, n=12, success=True, stop_step=300),
             dict(d=5, n=13, success=False, stop_step=2000),
             dict(d=5, n=14, success=False, stop_step=None)]  # a construction: nothing trained
  model = plan.calibrate(records, "runs/x")
  assert (model.success, model.failure) == (200, 1500)
  assert model.steps(4, True, 50) == 100 and model.steps(5, False, 50) == 2000
  assert model.steps(9, True, 150) == 300  # no d = 9 results: the means, whole blocks
  with pytest.raises(ValueError, match="no trained results"):
    plan.calibrate([], "runs/empty")


def test_a_calibrated_dimension_is_costed_by_the_points_it_probed():
  records = [dict(d=4, n=n, seed=seed, success=ok, stop_step=steps) for n, seed, ok, steps in
             [(7, 42, True, 120), (7, 43, True, 30), (8, 42, False, 510), (8, 43, False, 490),
              (6, 42, True, 75), (6, 43, True, 60)]]
  model = plan.calibrate(records, "runs/x")
  config = tiny_config(dims=(4, 5), restarts=2, eval_every=50, probes_per_search=2)
  specs = targets.CriticalN(config).specs()
  probed = plan.planned_search(config, 4, specs["d=4"], model)
  # In the order they finished, two points a round, each seed in whole evaluation blocks.
  assert probed.source == model.source
  assert probed.rounds == (((7, (150, 50)), (8, (550, 500))), ((6, (100, 100)),))
  assert plan.search_seconds(probed, 0.5, 0.0) == ((550 + 100) * 0.5, 1450 * 0.5)
  replayed = plan.planned_search(config, 5, specs["d=5"], model)  # not in the workdir
  assert replayed.source == "replay"
  assert [[n for n, _ in round_] for round_ in replayed.rounds] == [
      [n for n, _ in round_] for round_ in plan.replay(config, 5, specs["d=5"]).rounds]
  assert {seeds for round_ in replayed.rounds for _, seeds in round_} <= {
      (model.steps(5, True, 50),) * 2, (model.steps(5, False, 50),) * 2}


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
  between = min(0.99 * estimate, 1.5 * measured) / 2**20  # one measured slot, no estimated one
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
  row = report["dims"][0]
  assert row["search"] == report["steps_model"]["source"] and row["probes"] == 2
  assert row["work_minutes"] * 60 == pytest.approx((450 + 3000) * row["roofline_step_ms"] / 1e3)
  bad = subprocess.run(command[:-3] + ["--device=gpu"], capture_output=True, text=True, timeout=300)
  assert bad.returncode != 0 and bad.stderr.strip().splitlines()[-1].startswith("error: device=")
  elsewhere = subprocess.run(command + ["--measure"], capture_output=True, text=True, timeout=300)
  assert elsewhere.returncode == 1 and elsewhere.stdout == ""
  assert elsewhere.stderr.strip().splitlines() == [
      "error: device=tpu-v5e-8 cannot be measured here: --measure times the devices at hand, "
      "cpu-1; plan for --device=cpu-1, or drop --measure"]
