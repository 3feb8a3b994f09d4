"""The same config gives the same results, byte for byte, as the code that made tests/data/golden.

The expected files were written by the layout before the driver was split into ledger, pool and
driver (commit bd499e2): results.jsonl without its wall times, critical_n.csv or critical_d.json,
and a digest of every array of every witness.
"""

import hashlib
import itertools
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

GOLDEN = pathlib.Path(__file__).parent / "data" / "golden"
CONFIG = GOLDEN / "config.py"


def _all_pairs(path):
  pairs = list(itertools.combinations(range(4), 2))
  relevance = np.zeros((len(pairs), 4), bool)
  for row, pair in enumerate(pairs):
    relevance[row, list(pair)] = True
  np.savez(path, relevance=relevance)
  return path


RUNS = {
    "run": lambda tmp: ["run", f"--config={CONFIG}"],
    "warm": lambda tmp: ["run", f"--config={CONFIG}", "--config.dims=(4,5)",
                         "--config.protocol=warm", "--config.warm_noise=0.05"],
    "construction": lambda tmp: ["run", f"--config={CONFIG}", "--config.dims=(4,)",
                                 "--config.protocol=construction", "--config.max_n=30"],
    "qrels": lambda tmp: ["fit-qrels", f"--qrels={_all_pairs(tmp / 'pairs.npz')}",
                          "--config.restarts=2", "--config.local_sweep=1"],
}


def _results_without_wall_times(path):
  lines = []
  for line in path.read_text().splitlines():
    record = json.loads(line)
    record.pop("wall_seconds")
    lines.append(json.dumps(record, sort_keys=True))
  return "\n".join(lines) + "\n"


def _witness_digests(directory):
  digests = {}
  for path in sorted(directory.glob("*.npz")):
    with np.load(path) as arrays:
      digests[path.name] = {key: hashlib.sha256(np.ascontiguousarray(arrays[key]).tobytes()).hexdigest()
                            for key in sorted(arrays.files)}
  return digests


@pytest.mark.parametrize("name", sorted(RUNS))
def test_a_sweep_writes_what_the_code_before_the_split_wrote(tmp_path, name):
  workdir = tmp_path / "w"
  process = subprocess.run([sys.executable, "-m", "sweep.cli", *RUNS[name](tmp_path),
                            f"--workdir={workdir}"], capture_output=True, text=True, timeout=600)
  assert process.returncode == 0, process.stderr
  expected = GOLDEN / name
  assert _results_without_wall_times(workdir / "results.jsonl") == (
      expected / "results.jsonl").read_text()
  if name == "qrels":
    report = json.loads((workdir / "critical_d.json").read_text())
    golden = json.loads((expected / "critical_d.json").read_text())
    assert report.pop("source") == str(tmp_path / "pairs.npz")
    golden.pop("source")
    assert report == golden
  else:
    assert (workdir / "critical_n.csv").read_bytes() == (expected / "critical_n.csv").read_bytes()
  assert _witness_digests(workdir / "witnesses") == json.loads(
      (expected / "witnesses.json").read_text())
