"""A config decides what the code that made tests/data/golden decided: every probe's outcome,
each search's bracket and critical n or d, and the certified witnesses.

The expected files hold results.jsonl without its wall times, critical_n.csv or
critical_d.json, and per witness the digest of each array that is not a float, the shape of
each that is, and its float64 margin. They were written by the layout before the driver was
split into ledger, pool and driver (commit bd499e2), written again when each loss began
computing its gradient in its forward pass, and again when searches began at the paper's
Table 6 instead of its cubic (d = 4 and 5 took 4 probes instead of 6 or 7). Floats are
compared to a tolerance, not bit for bit: XLA's CPU code differs between processor
generations in the last bits of a float, as does a change in how a loss rounds. That moves plateau stops by a few steps, and with them
when a search with two points in flight proposes its next one, so a speculative probe may be
added or left out; what the probes decide may not change. What later versions add (the
success criterion and seed statistics) is compared apart: the old fields must not change, the
new ones must hold what a reference-protocol run implies.
"""

import csv
import hashlib
import io
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
                          "--config.restarts=2", "--config.local_sweep=1",
                          "--config.probes_per_search=2"],
}


# Fields and arrays added since the golden files were made, with their reference values.
NEW_RECORD_FIELDS = {"criterion": "topk"}
NEW_WITNESS_ARRAYS = {"criterion": "topk", "criterion_epsilon": 0.05}


# A probe's decisions, equal for every point both runs probed; a success also stops at the
# same evaluation. Its floats agree to FLOAT_TOLERANCE (a failure's only until its plateau).
DECISIONS = ("success", "certified", "padded_shape", "num_queries", "protocol", "loss")
SUCCESS_DECISIONS = ("stop_reason", "stop_step", "final_accuracy", "max_accuracy")
FLOATS = ("best_loss", "final_loss", "margin", "margin64")
FLOAT_TOLERANCE = dict(rtol=1e-4, atol=1e-5)


def _records(path, written_now=True):
  """results.jsonl by (d, n, seed); one written now has its wall times and NEW_RECORD_FIELDS
  (checked) dropped, as the golden files do."""
  records = {}
  for line in path.read_text().splitlines():
    record = json.loads(line)
    if written_now:
      record.pop("wall_seconds")
      for field, value in NEW_RECORD_FIELDS.items():
        assert record.pop(field) == value
    records[record["d"], record["n"], record["seed"]] = record
  return records


def _assert_same_decisions(records, golden, deciding_points):
  """Every point probed by both decides alike; the points that decide a bracket are in both."""
  for d, n in deciding_points:
    assert {key for key in golden if key[:2] == (d, n)} == {key for key in records
                                                             if key[:2] == (d, n)}, (d, n)
  common = set(records) & set(golden)
  assert len(common) >= len(golden) // 2  # a speculative probe or two may come or go
  for key in sorted(common):
    new, old = records[key], golden[key]
    fields = DECISIONS + (SUCCESS_DECISIONS if old["success"] else ())
    assert {f: new[f] for f in fields} == {f: old[f] for f in fields}, key
    if old["success"]:
      np.testing.assert_allclose(  # None (a construction has no loss) as NaN, equal to NaN
          np.array([new[f] for f in FLOATS], float), np.array([old[f] for f in FLOATS], float),
          err_msg=str(key), **FLOAT_TOLERANCE)


def _old_columns(text, header):
  """critical_n.csv rows cut to the columns of `header`, without the probe count (see above)."""
  return [{k: v for k, v in row.items() if k in header.split(",") and k != "probes"}
          for row in csv.DictReader(io.StringIO(text))]


def _witnesses(directory):
  """Per witness: the digest of each array that is not a float, the shape of each that is,
  and its margin (which sweep verify recomputes in float64 from the arrays)."""
  witnesses = {}
  for path in sorted(directory.glob("*.npz")):
    with np.load(path) as arrays:
      added = {key: arrays[key].item() for key in NEW_WITNESS_ARRAYS if key in arrays.files}
      assert added in ({}, NEW_WITNESS_ARRAYS)  # trained witnesses name their criterion
      kept = sorted(set(arrays.files) - set(added))
      witnesses[path.name] = dict(
          exact={key: hashlib.sha256(np.ascontiguousarray(arrays[key]).tobytes()).hexdigest()
                 for key in kept if arrays[key].dtype.kind != "f"},
          shapes={key: list(arrays[key].shape) for key in kept if arrays[key].dtype.kind == "f"},
          margin64=float(arrays["margin64"]))
  return witnesses


def _seed_successes(records, d):
  """The seed_successes cell a search of d implies: every point with all its restarts."""
  points = {}
  for record in records:
    if record["d"] == d:
      points.setdefault(record["n"], []).append(record["success"])
  return " ".join(f"{n}:{sum(s)}/{len(s)}" for n, s in sorted(points.items()))


@pytest.mark.parametrize("name", sorted(RUNS))
def test_a_sweep_decides_what_the_code_before_the_split_decided(tmp_path, name):
  workdir = tmp_path / "w"
  process = subprocess.run([sys.executable, "-m", "sweep.cli", *RUNS[name](tmp_path),
                            f"--workdir={workdir}"], capture_output=True, text=True, timeout=600)
  assert process.returncode == 0, process.stderr
  expected = GOLDEN / name
  records = _records(workdir / "results.jsonl")
  if name == "qrels":
    report = json.loads((workdir / "critical_d.json").read_text())
    golden = json.loads((expected / "critical_d.json").read_text())
    assert report.pop("source") == str(tmp_path / "pairs.npz")
    golden.pop("source")
    certificate, golden_certificate = report.pop("certificate"), golden.pop("certificate")
    np.testing.assert_allclose(certificate.pop("margin64"), golden_certificate.pop("margin64"),
                               **FLOAT_TOLERANCE)
    assert certificate == golden_certificate
    probes, golden_probes = report.pop("probes"), golden.pop("probes")  # see above
    assert ([p for p in probes if p["d"] in golden["bracket"]]
            == [p for p in golden_probes if p["d"] in golden["bracket"]])
    assert report == golden
    deciding = [(d, golden["documents"]) for d in golden["bracket"]]
  else:
    golden = (expected / "critical_n.csv").read_text()
    written = (workdir / "critical_n.csv").read_text()
    assert _old_columns(written, golden.splitlines()[0]) == _old_columns(
        golden, golden.splitlines()[0])
    for row in csv.DictReader(io.StringIO(written)):
      assert row["seed_successes"] == _seed_successes(records.values(), int(row["d"]))
    deciding = [(int(row["d"]), int(row[end])) for row in csv.DictReader(io.StringIO(golden))
                for end in ("lo", "hi") if row[end]]
  _assert_same_decisions(records, _records(expected / "results.jsonl", written_now=False), deciding)
  witnesses, golden_witnesses = _witnesses(workdir / "witnesses"), json.loads(
      (expected / "witnesses.json").read_text())
  assert sorted(witnesses) == sorted(golden_witnesses)
  for file, witness in witnesses.items():
    margin, golden_margin = witness.pop("margin64"), golden_witnesses[file].pop("margin64")
    np.testing.assert_allclose(margin, golden_margin, **FLOAT_TOLERANCE)
    assert witness == golden_witnesses[file], file
