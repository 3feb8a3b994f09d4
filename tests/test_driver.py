"""The sweep driver, store and CLI end to end on tiny configurations."""

import json
import math
import os
import shlex
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

from sweep import config as config_lib
from sweep import certify
from sweep import problems
from sweep import driver as driver_lib
from sweep import targets
from sweep.store import Store
from helpers import (EVERY_CHUNK, results_without_timing, strict_records, sweep, tiny_config,
                     uninterrupted, wait_for, write_config_file)


def test_exact_geometry_sweep_reports_3_and_4(tmp_path):
  store = Store(str(tmp_path))
  driver = driver_lib.Driver(tiny_config(restarts=3, max_steps=20_000, patience=1000,
                                         eval_every=50, chunk_evals=20), store)
  assert driver.run(progress=lambda _: None)
  rows = {r["d"]: r for r in store.read_critical_n()}
  assert rows[2]["critical_n"] == 3 and rows[3]["critical_n"] == 4
  assert rows[2]["geometric_critical_n"] == "3" and rows[3]["geometric_critical_n"] == "4"
  assert all(r["done"] and r["status"] == "measured" for r in rows.values())


def interrupt(tmp_path, signum, finished_lines, **overrides):
  """Run the tiny sweep (with `overrides`) in a subprocess and send `signum` once
  results.jsonl has enough lines. Returns the workdir, the run's arguments, return code and
  stdout, and whether its critical_n.csv still had an open search when it stopped."""
  workdir = tmp_path / "interrupted"
  config_file = write_config_file(tmp_path / "tiny.py", **overrides)
  args = ["run", f"--config={config_file}", f"--workdir={workdir}"]
  results = workdir / "results.jsonl"
  process = sweep(*args)
  wait_for(lambda: results.exists() and len(results.read_text().splitlines()) >= finished_lines,
           process)
  process.send_signal(signum)
  out, _ = process.communicate(timeout=120)
  unfinished = "false" in (workdir / "critical_n.csv").read_text()
  return workdir, args, process.returncode, out, unfinished


@pytest.mark.parametrize("loss", ["code", "sigmoid"])
def test_sigkill_at_any_moment_then_resume_equals_uninterrupted(tmp_path, loss):
  expected = uninterrupted(tmp_path / "reference", loss=loss)
  workdir, args, returncode, _, unfinished = interrupt(tmp_path, signal.SIGKILL, finished_lines=6,
                                                       loss=loss, **EVERY_CHUNK)
  assert returncode == -signal.SIGKILL and unfinished  # the kill cut a running sweep short
  checkpointed = driver_lib.Driver(tiny_config(loss=loss), Store(str(workdir)))
  assert checkpointed.restore() and len(checkpointed.pool.buckets) >= 2  # several live buckets
  resumed = sweep(*args)
  out, err = resumed.communicate(timeout=300)
  assert resumed.returncode == 0, err
  assert "resumed" in out
  assert "took over the lock of pid" in err  # the killed run's lock
  assert (results_without_timing(workdir), (workdir / "critical_n.csv").read_text()) == expected
  checkpoints = [p.name for p in (workdir / "checkpoints").iterdir()]
  assert len(checkpoints) == 2 and all(name.isdigit() for name in checkpoints)


def test_sigterm_prints_a_resume_command_that_runs(tmp_path):
  expected = uninterrupted(tmp_path / "reference")
  workdir, _, returncode, out, unfinished = interrupt(tmp_path, signal.SIGTERM, finished_lines=1)
  assert returncode == 0 and unfinished
  command = out.split("resume with the same command: ")[1].strip()
  assert " run " in command
  resumed = subprocess.run(shlex.split(command), capture_output=True, text=True, timeout=300)
  assert resumed.returncode == 0, resumed.stderr
  assert "resumed" in resumed.stdout
  assert (results_without_timing(workdir), (workdir / "critical_n.csv").read_text()) == expected


@pytest.mark.parametrize("lock_deleted", [False, True])
def test_a_second_run_on_a_busy_workdir_is_refused_naming_the_holder(tmp_path, lock_deleted):
  config_file = write_config_file(tmp_path / "tiny.py")
  workdir = tmp_path / "w"
  first = sweep("run", f"--config={config_file}", f"--workdir={workdir}")
  wait_for(lambda: (workdir / "critical_n.csv").exists(), first)  # written after the results
  first.send_signal(signal.SIGSTOP)  # paused mid-run, so it surely holds the lock meanwhile
  if lock_deleted:  # the lock is the workdir's own: lock.json only names its holder
    (workdir / "lock.json").unlink()
  second = sweep("run", f"--config={config_file}", f"--workdir={workdir}")
  _, err = second.communicate(timeout=120)
  status = sweep("status", f"--workdir={workdir}")
  status_out, status_err = status.communicate(timeout=120)
  assert first.poll() is None
  first.send_signal(signal.SIGCONT)
  _, first_err = first.communicate(timeout=300)
  assert first.returncode == 0, first_err
  assert second.returncode != 0
  assert err.strip().splitlines() == [err.strip()] and err.startswith("error: ")
  assert status.returncode == 0, status_err
  if not lock_deleted:
    assert f"in use by another run (pid {first.pid} on " in err
    assert f"locked by pid {first.pid}" in status_out
  else:
    assert "in use by another run (its lock.json was removed" in err
  keys = [(r["d"], r["n"], r["seed"]) for r in strict_records(workdir)]
  assert len(keys) == len(set(keys))


def test_workdir_of_another_config_is_refused_naming_the_fields(tmp_path):
  config_file = write_config_file(tmp_path / "tiny.py", dims=(2,), max_steps=200)
  workdir = tmp_path / "w"
  first = sweep("run", f"--config={config_file}", f"--workdir={workdir}")
  first.communicate(timeout=300)
  assert first.returncode == 0
  second = sweep("run", f"--config={config_file}", f"--workdir={workdir}",
                 "--config.k=3", "--config.temperature=0.05")
  _, err = second.communicate(timeout=120)
  assert second.returncode != 0
  assert err.strip().splitlines()[-1].startswith("error:")
  assert "k, temperature" in err and "Traceback" not in err


@pytest.mark.parametrize("field, value", [
    ("k", 0), ("dims", ()), ("dims", (0, 3)), ("max_steps", -5), ("loss", "triplet"),
    ("restarts", 0), ("learning_rate", 0.0), ("optimizer", "nope"), ("start_n", 2),
    ("memory_budget_mb", -1.0), ("learning_rate", math.inf), ("temperature", math.nan),
    ("min_delta", math.inf), ("warm_noise", math.nan), ("checkpoint_every_s", math.inf),
    ("memory_budget_mb", math.inf), ("patience", -1), ("eval_every", 0), ("min_delta", -1.0),
    ("matmul_precision", "fp8"), ("protocol", "oracle")])
def test_bad_config_values_fail_in_one_line_before_work(field, value):
  config = tiny_config(**{field: value})
  with pytest.raises(ValueError, match=field) as error:
    config_lib.validate_config(config)
  assert "\n" not in str(error.value)


@pytest.mark.parametrize("flag, line", [
    ("--config.k=0", "error: config.k=0 is out of range: need an integer >= 1"),
    ("--config.learning_rate=inf",
     "error: config.learning_rate=inf is out of range: need a finite number")])
def test_bad_value_on_the_command_line(tmp_path, flag, line):
  config_file = write_config_file(tmp_path / "tiny.py")
  process = sweep("run", f"--config={config_file}", f"--workdir={tmp_path / 'w'}", flag)
  _, err = process.communicate(timeout=60)
  assert process.returncode != 0
  assert err.strip().splitlines() == [line]
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("flags", [
    ["--config.temperature=1e-44"],  # the logits overflow: the loss is NaN or inf
    # Updates of ~1e30 overflow every row's norm: the re-normalisation zeroes the rows and
    # the loss stays a finite ln n, which used to end as a plateau and a critical n of 2.
    ["--config.learning_rate=1e30"],
    # A warm start whose noise overflows the norm starts with zero rows.
    ["--config.protocol=warm", "--config.warm_noise=1e300", "--config.dims=(4,)"],
], ids=["loss", "rows", "warm-start"])
def test_non_finite_training_is_reported_never_a_critical_n(tmp_path, flags):
  config_file = write_config_file(tmp_path / "tiny.py", dims=(2,), restarts=1)
  workdir = tmp_path / "w"
  process = sweep("run", f"--config={config_file}", f"--workdir={workdir}", *flags)
  out, err = process.communicate(timeout=300)
  assert process.returncode == 0, err
  records = strict_records(workdir)
  assert records and all(r["stop_reason"] == "nonfinite" for r in records)
  assert not any(r["success"] or r["certified"] for r in records)
  assert all(r["best_loss"] is None for r in records)  # null, not -Infinity
  row = Store(str(workdir)).read_critical_n()[0]
  assert row["status"] == "nonfinite" and row["critical_n"] is None and row["done"]
  assert (f"d={row['d']}: no critical n: the deciding probe n={row['hi']} ended with NaN, inf "
          f"or zero-norm values") in out
  assert "critical n =" not in out


def test_corrupt_latest_checkpoint_falls_back_to_the_previous(tmp_path, caplog):
  config = tiny_config(dims=(2,))
  store = Store(str(tmp_path))
  driver = driver_lib.Driver(config, store)
  driver.run(progress=lambda _: None)
  first_state = driver.state_json()
  driver.chunk += 1
  driver.checkpoint()
  latest = store.checkpoints.manager.latest_step()
  for path in (tmp_path / "checkpoints" / str(latest) / "train").rglob("*"):
    if path.is_file():
      path.write_bytes(b"garbage")
  store.close()
  fresh = driver_lib.Driver(config, Store(str(tmp_path)))
  assert fresh.restore()
  assert fresh.state_json() == first_state
  assert "is corrupt" in caplog.text
  aside = tmp_path / f"checkpoint-{latest}.corrupt"
  assert (aside / "train").is_dir() and any(aside.rglob("*"))  # set aside, not deleted
  assert latest not in fresh.store.checkpoints.manager.all_steps()


def test_status_prints_brackets(tmp_path):
  store = Store(str(tmp_path))
  driver = driver_lib.Driver(tiny_config(dims=(2,)), store)
  driver.run(progress=lambda _: None)
  store.close()
  process = sweep("status", f"--workdir={tmp_path}", "--json")
  out, err = process.communicate(timeout=60)
  assert process.returncode == 0, err
  status = json.loads(out)
  assert status["searches"][0]["d"] == 2 and status["searches"][0]["done"] is True
  assert status["searches"][0]["status"] == "measured" and status["lock"] is None
  assert status["configurations_finished"] == len((tmp_path / "results.jsonl").read_text().splitlines())
  assert status["efficiency"] == driver.stats() and 0 < status["efficiency"]["slot_occupancy"] <= 1


def test_sampled_queries_cap_at_the_full_problem(tmp_path):
  store = Store(str(tmp_path))
  config = tiny_config(dims=(4,), restarts=1, num_queries=12, start_n=5, max_n=24, max_steps=300)
  assert driver_lib.Driver(config, store).run(progress=lambda _: None)
  store.close()
  records = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
  for record in records:
    assert record["num_queries"] == min(12, record["n"] * (record["n"] - 1) // 2)
  assert max(r["n"] for r in records) <= 24


def test_automatic_ceiling_follows_the_memory_budget():
  small, large = (targets.CriticalN(tiny_config(memory_budget_mb=mb)).max_n(4) for mb in (1.0, 64.0))
  assert 3 <= small < large
  with pytest.raises(ValueError, match="memory_budget_mb"):
    targets.CriticalN(tiny_config(memory_budget_mb=1e-4)).max_n(4)


def fit_matrix(tmp_path, matrix, **overrides):
  """Critical d of a boolean relevance matrix, through the real driver."""
  path = tmp_path / "relevance.npz"
  np.savez(path, relevance=np.asarray(matrix, bool))
  store = Store(str(tmp_path / "w"))
  config = tiny_config(qrels=str(path), restarts=3, max_steps=20_000, patience=1000,
                       eval_every=50, chunk_evals=20, local_sweep=0, probes_per_search=3,
                       **overrides)
  assert driver_lib.Driver(config, store).run(progress=lambda _: None)
  store.close()
  return store.read_critical_d()


def all_pairs(n):
  matrix = np.zeros((n * (n - 1) // 2, n), bool)
  for row, pair in enumerate(problems.colex_subsets(n, 2)):
    matrix[row, pair] = True
  return matrix


@pytest.mark.parametrize("n, critical_d", [(4, 3), (5, 4)])
def test_critical_d_of_all_pairs_is_exact_geometry(tmp_path, n, critical_d):
  report = fit_matrix(tmp_path, all_pairs(n))
  assert report["done"] and report["critical_d"] == critical_d
  assert {p["d"]: p["success"] for p in report["probes"]}[critical_d - 1] is False
  assert (report["queries"], report["documents"], report["max_relevant"]) == (len(all_pairs(n)), n, 2)


def test_relevant_sets_of_mixed_sizes_train(tmp_path):
  sets = [[0], [1, 2], [3, 4, 5], [0, 5]]
  matrix = np.zeros((4, 6), bool)
  for row, docs in enumerate(sets):
    matrix[row, docs] = True
  # Exact geometry: d = 1 cannot retrieve four different sets (unit documents are +-1), and
  # d = 2 can: with the documents on a regular hexagon in the order 1, 2, 3, 4, 5, 0, each
  # set is an arc, retrieved by the unit query through its centre.
  angles = 2 * np.pi * np.array([5, 0, 1, 2, 3, 4]) / 6
  documents = np.stack([np.cos(angles), np.sin(angles)], axis=1)
  queries = np.stack([documents[docs].sum(axis=0) for docs in sets])
  queries /= np.linalg.norm(queries, axis=1, keepdims=True)
  table = np.array([docs + [problems.PAD] * (3 - len(docs)) for docs in sets])
  assert certify.verify(queries, documents, table)[0]
  report = fit_matrix(tmp_path, matrix, start_d=4)
  assert report["geometry"]["lower_d"] == 2
  assert report["done"] and report["critical_d"] == 2
  assert {p["d"]: p["success"] for p in report["probes"]}[1] is False
  records = [json.loads(line) for line in (tmp_path / "w" / "results.jsonl").read_text().splitlines()]
  assert {r["k"] for r in records} == {3} and all(r["num_queries"] == 4 for r in records)
  assert any(r["success"] for r in records if r["d"] == report["critical_d"])


def test_fit_qrels_command_prints_critical_d(tmp_path):
  path = tmp_path / "pairs.npz"
  np.savez(path, relevance=all_pairs(4))
  process = sweep("fit-qrels", f"--qrels={path}", f"--workdir={tmp_path / 'w'}",
                  "--config.restarts=3", "--config.local_sweep=0")
  out, err = process.communicate(timeout=300)
  assert process.returncode == 0, err
  assert "6 queries x 4 documents, critical d = 3" in out
  assert "geometry: exactly d = 3" in out  # K4 is not a cycle; a tetrahedron fits it
  status = sweep("status", f"--workdir={tmp_path / 'w'}")
  report = json.loads(status.communicate(timeout=60)[0])
  assert report["critical_d"] == 3 and report["geometry"]["upper_d"] == 3
  verify = sweep("verify", str(tmp_path / "w" / report["geometry"]["witness"]))
  assert "d=3, n=4, 6 queries: verified in float64" in verify.communicate(timeout=60)[0]


def test_fit_qrels_rejects_a_bad_file_in_one_line(tmp_path):
  path = tmp_path / "empty.jsonl"
  path.write_text("")
  process = sweep("fit-qrels", f"--qrels={path}", f"--workdir={tmp_path / 'w'}")
  _, err = process.communicate(timeout=60)
  assert process.returncode != 0
  assert len(err.strip().splitlines()) == 1 and "empty.jsonl" in err


def garble(folder):
  """Flip bits through every array file and manifest of a checkpoint: its own bytes are bad."""
  for path in folder.rglob("*"):
    if path.is_file() and (path.name.endswith(".ocdbt") or path.parent.name == "d"):
      data = bytearray(path.read_bytes())
      data[8::7] = bytes(b ^ 0x5A for b in data[8::7])
      path.write_bytes(bytes(data))


def test_every_checkpoint_corrupt_is_one_line_each_and_the_sweep_starts_over(tmp_path):
  workdir = tmp_path / "w"
  uninterrupted(workdir, dims=(2,), restarts=1, **EVERY_CHUNK)  # the newest two kept
  steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir())
  for step in steps:
    garble(workdir / "checkpoints" / str(step) / "train")
  config_file = write_config_file(tmp_path / "tiny.py", dims=(2,), restarts=1)
  process = sweep("run", f"--config={config_file}", f"--workdir={workdir}")
  out, err = process.communicate(timeout=300)
  assert process.returncode == 0, err
  lines = err.strip().splitlines()
  assert len(lines) <= len(steps) + 2, err  # one per checkpoint, one to say so
  assert f"every checkpoint of {workdir} was unreadable; set aside as" in lines[-1]
  assert "starting the sweep over" in lines[-1] and "resumed" not in out
  assert all((workdir / f"checkpoint-{step}.corrupt" / "train").is_dir() for step in steps)


@pytest.mark.parametrize("body, flag, reason", [
    (None, "", "OSError: [Errno 2] No such file or directory"),
    ("def get_config(:\n", "", "SyntaxError: invalid syntax"),
    ("x = 1\n", "", "AttributeError: module 'config_config' has no attribute 'get_config'"),
    ("def get_config():\n  raise RuntimeError('no config today')\n", "",
     "RuntimeError: no config today"),
    ("from sweep.config import get_config\n", "--config.nosuchfield=3", None)])
def test_a_config_that_cannot_load_is_one_line_naming_it(tmp_path, body, flag, reason):
  config_file = tmp_path / "c.py"
  if body is not None:
    config_file.write_text(body)
  process = sweep("run", f"--config={config_file}", f"--workdir={tmp_path / 'w'}",
                  *([flag] if flag else []))
  _, err = process.communicate(timeout=60)
  assert process.returncode != 0
  [line] = err.strip().splitlines()
  if reason is None:
    assert line.startswith("error: --config.nosuchfield: config has unknown fields "
                           "['nosuchfield']: allowed are ['bucket_slots',")
  else:
    assert line.startswith(f"error: --config={config_file}: cannot load: {reason}")
  assert not (tmp_path / "w").exists()


def test_status_in_the_first_seconds_of_a_run_says_it_started(tmp_path):
  """Before critical_n.csv exists: the lock held, then config.json written too, then the
  first results line (written just before the table)."""
  store = Store(str(tmp_path))
  lock = store.lock()
  try:
    for step, said in (("locked", "no results yet"), ("claimed", "no results yet"),
                       ("a result", "1 configuration(s) finished, no critical_n.csv yet")):
      if step == "claimed":
        store.claim(tiny_config().to_dict())
      if step == "a result":
        store.append_results([dict(d=2, n=3, k=2, seed=42, success=True, stop_reason="success",
                                   stop_step=50)])
      done = subprocess.run([sys.executable, "-m", "sweep.cli", "status", f"--workdir={tmp_path}"],
                            capture_output=True, text=True, timeout=60)
      assert done.returncode == 0, done.stderr
      assert done.stdout.strip() == (f"{tmp_path}: a run has started by pid {os.getpid()} on "
                                     f"{socket.gethostname()}; {said}"), step
  finally:
    lock.release()


@pytest.mark.parametrize("line", [
    '{"d": 2, "n": 3, "k": 2, "seed": 42, "success": true, "stop_step": 50}',
    '{"d": 2, "n": "3", "k": 2, "seed": 42, "success": true, "stop_reason": "x", "stop_step": 5}',
    '[2, 3, 2, 42]'])
def test_a_results_line_that_is_not_a_record_is_one_line_naming_it(tmp_path, line):
  workdir = tmp_path / "w"
  workdir.mkdir()
  (workdir / "results.jsonl").write_text(line + "\n")
  config_file = write_config_file(tmp_path / "tiny.py", dims=(2,), restarts=1)
  for args in (["run", f"--config={config_file}"], ["status"]):
    done = subprocess.run([sys.executable, "-m", "sweep.cli", *args, f"--workdir={workdir}"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    [error] = done.stderr.strip().splitlines()
    assert error.startswith(f"error: {workdir / 'results.jsonl'}: line 1: "), args
    assert "a result record has d (int), n (int)" in error


@pytest.mark.parametrize("size", ["200k", "275k", "325k"])
def test_a_full_disk_is_one_line(tmp_path, size):
  """A workdir on a small tmpfs fills at one of the first checkpoints, while other writes are
  in flight (needs root to mount); where it fills varies with the size."""
  disk = tmp_path / "disk"
  disk.mkdir()
  if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)],
                    capture_output=True).returncode != 0:
    pytest.skip("cannot mount a tmpfs here")
  try:
    config_file = write_config_file(tmp_path / "tiny.py", dims=(2,), restarts=1, **EVERY_CHUNK)
    process = sweep("run", f"--config={config_file}", f"--workdir={disk / 'w'}")
    _, err = process.communicate(timeout=300)
    assert process.returncode != 0
    [line] = err.strip().splitlines()
    assert line.startswith("error: ") and "No space left on device" in line
  finally:
    subprocess.run(["umount", str(disk)], check=True)
