"""Sharded sweeps: several local devices, several processes, checkpoints across device counts.

Each case runs the real CLI in subprocesses, since a process fixes its device count once.
"""

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from sweep.lock import read_lock
from sweep.store import Store
from helpers import uninterrupted, wait_for, write_config_file

DIMS = (2, 3, 4)


def outcomes(workdir):
  """What must not depend on the devices: every configuration's success, and the table."""
  records = [json.loads(line) for line in (workdir / "results.jsonl").read_text().splitlines()]
  successes = sorted((r["d"], r["n"], r["seed"], r["success"]) for r in records)
  return successes, (workdir / "critical_n.csv").read_text()


def sweep(args, devices=1, **kwargs):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  return subprocess.Popen([sys.executable, "-m", "sweep.cli", "run", *args], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def finish(process, timeout=300):
  out, err = process.communicate(timeout=timeout)
  assert process.returncode == 0, err[-3000:]
  return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """The single-device, single-process outcome every case must reproduce."""
  workdir = tmp_path_factory.mktemp("reference")
  uninterrupted(workdir, dims=DIMS)
  return outcomes(workdir)


def test_four_devices_find_what_one_device_finds(tmp_path, reference):
  config = write_config_file(tmp_path / "tiny.py", dims=DIMS)
  finish(sweep([f"--config={config}", f"--workdir={tmp_path / 'four'}"], devices=4))
  assert outcomes(tmp_path / "four") == reference


def test_two_processes_write_one_results_file(tmp_path, reference):
  config = write_config_file(tmp_path / "tiny.py", dims=DIMS)
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  workdir = tmp_path / "two"
  processes = [sweep([f"--config={config}", f"--workdir={workdir}", "--multihost",
                      f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                      f"--process_id={i}"]) for i in range(2)]
  wait_for(lambda: (workdir / "results.jsonl").exists(), processes[0])
  assert read_lock(workdir / "lock.json")["pid"] == processes[0].pid  # process 0 holds it
  outs = [finish(p) for p in processes]
  assert "critical n" in outs[0] and "critical n" not in outs[1]  # process 0 alone reports
  assert outcomes(workdir) == reference


def test_a_checkpoint_of_four_devices_resumes_on_one(tmp_path):
  """The checkpoint moves across device counts and the sweep ends. Its outcomes are not
  compared with a one-device run: a program partitioned over four devices rounds differently
  from one on a single device (~1e-6 a step), so a probe at the very edge of its boundary may
  end the other way, depending on when the stop came (docs/planning-and-tpu.md,
  "Every device, every host")."""
  config = write_config_file(tmp_path / "tiny.py", dims=DIMS)
  workdir = tmp_path / "moved"
  args = [f"--config={config}", f"--workdir={workdir}"]
  first = sweep(args, devices=4)
  wait_for(lambda: (workdir / "results.jsonl").exists(), first)
  first.send_signal(signal.SIGTERM)
  assert "resume" in finish(first)
  before = (workdir / "results.jsonl").read_text().splitlines()
  assert "resumed" in finish(sweep(args, devices=1))
  lines = (workdir / "results.jsonl").read_text().splitlines()
  assert before and lines[:len(before)] == before  # what four devices found is kept as it was
  keys = [tuple(json.loads(line)[f] for f in ("d", "n", "k", "seed")) for line in lines]
  assert len(set(keys)) == len(keys) > len(before)
  rows = Store(str(workdir), writer=False).read_critical_n()
  assert [row["d"] for row in rows] == list(DIMS)
  assert all(row["status"] in ("measured", "ceiling") for row in rows)
