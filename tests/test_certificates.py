"""Float64 certificates, witnesses, and the protocols beyond the paper's."""

import json
import subprocess
import sys

import numpy as np
import pytest

from sweep import certify, cli, construct, driver as driver_lib, objective, problems
from sweep import trainer
from sweep.store import Store
from helpers import curve_witness, tiny_config


def test_a_float32_success_that_float64_refutes_is_uncertified():
  # Past the float32 limit of the d = 4 construction, some query is still ranked right by
  # float32 top-k although in float64 its relevant pair does not strictly lead.
  n = 500
  table = problems.colex_subsets(n, 2)
  table = table[np.random.default_rng(0).choice(len(table), 2000, replace=False)]
  queries = construct.queries_for_subsets(table, n, 4).astype(np.float32)
  documents = construct.documents_on_curve(n, 2, 4).astype(np.float32)
  margins64 = certify.query_margins(queries.astype(np.float64), documents.astype(np.float64), table)
  for row in np.flatnonzero(margins64 <= 0):
    one = table[row:row + 1]
    accuracy, _, _ = objective.retrieval_metrics(queries[row:row + 1], documents, one, 1, n)
    if accuracy == 1.0:
      break
  else:
    raise AssertionError("no float32-only success in the sample")
  certified, margin64 = certify.success_certificate(True, queries[row:row + 1], documents, one)
  assert not certified and margin64 <= 0
  assert certify.success_certificate(True, queries[:1], documents, table[:1])[0] == (margins64[0] > 0)


def test_sweep_certifies_ordinary_successes_and_keeps_a_witness(tmp_path):
  store = Store(str(tmp_path))
  assert driver_lib.Driver(tiny_config(dims=(4,), restarts=1, max_steps=5000, patience=500,
                                       start_n=6, local_sweep=0), store).run(progress=lambda _: None)
  store.close()
  records = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
  assert any(r["success"] for r in records)
  for r in records:
    assert r["certified"] == r["success"] == (r["margin64"] > 0)
  row = store.read_critical_n()[0]
  assert row["critical_n_certified"] == row["critical_n"]
  witness = tmp_path / "witnesses" / "d=4.npz"
  with np.load(witness) as w:
    assert int(w["n"]) == max(r["n"] for r in records if r["certified"])
  out = subprocess.run([sys.executable, "-m", "sweep.cli", "verify", str(witness)],
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 0 and "verified in float64" in out.stdout


def test_centroid_queries_reach_n_20_at_d_8():
  settings = trainer.TrainSettings(centroid_queries=True)
  result = trainer.train([trainer.Configuration(d=8, n=20)], settings, return_embeddings=True)[0]
  assert result["success"]
  table = problems.colex_subsets(20, 2)
  centroids = result["documents"][table].sum(axis=1)
  centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
  np.testing.assert_allclose(result["queries"], centroids, atol=1e-5)


def test_warm_start_begins_at_the_construction():
  config = trainer.Configuration(d=4, n=12, warm_noise=0.0)
  state = trainer.init_state(trainer.TrainSettings(), trainer.BucketShape.fitting([config]),
                             [config])
  queries, documents = curve_witness(12, 2, 4, np.float32)
  np.testing.assert_allclose(state.queries[0], queries, atol=1e-6)
  np.testing.assert_allclose(state.documents[0], documents, atol=1e-6)


def test_construction_protocol_needs_no_training(tmp_path):
  store = Store(str(tmp_path))
  assert driver_lib.Driver(tiny_config(dims=(4,), protocol="construction", restarts=1,
                                       max_n=60, local_sweep=0), store).run(progress=lambda _: None)
  store.close()
  records = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
  assert all(r["stop_step"] == 0 and r["stop_reason"] == "construction" for r in records)
  assert all(r["success"] and r["certified"] for r in records)
  row = store.read_critical_n()[0]
  assert row["done"] is True and row["critical_n"] is None and row["lo"] == 60
  assert row["status"] == "ceiling"


def _witness(**changes):
  """A valid witness of the d = 4 construction at n = 5 (as the driver writes one), changed."""
  queries, documents = curve_witness(5, 2)
  arrays = dict(queries=queries.astype(np.float32), documents=documents.astype(np.float32),
                relevance=problems.colex_subsets(5, 2), d=4, n=5, seed=0, margin64=0.1)
  arrays.update(changes)
  return {name: value for name, value in arrays.items() if value is not None}


def _verify(path, capsys):
  """`sweep verify PATH` in this process: (exit code, stdout, stderr)."""
  with pytest.raises(SystemExit) as stop:
    cli.verify(["sweep verify", str(path)])
  code = stop.value.code
  out, err = capsys.readouterr()
  return (code, out, err) if isinstance(code, int) else (1, out, err + code)


def test_verify_recomputes_what_it_prints_from_the_arrays(tmp_path, capsys):
  np.savez(tmp_path / "w.npz", **_witness())
  code, out, _ = _verify(tmp_path / "w.npz", capsys)
  assert code == 0 and "d=4, n=5, 10 queries: verified in float64" in out
  np.savez(tmp_path / "meta.npz", **_witness(d=None, n=None, seed=None, margin64=None))
  assert _verify(tmp_path / "meta.npz", capsys)[:2] == (0, out.replace("w.npz", "meta.npz"))
  # Two queries swapped: the arrays are well formed and their margin is negative.
  np.savez(tmp_path / "wrong.npz", **_witness(relevance=problems.colex_subsets(5, 2)[::-1]))
  code, out, _ = _verify(tmp_path / "wrong.npz", capsys)
  assert code == 1 and "NOT verified in float64, margin -" in out


def _relevance(rows):
  return np.array(rows, dtype=np.int32)


MALFORMED = {
    "all padding": dict(relevance=np.full((10, 2), -1, np.int32)),
    "edited d": dict(d=7),
    "edited n": dict(n=50),
    "index out of range": dict(relevance=np.where(problems.colex_subsets(5, 2) == 4, 5,
                                                  problems.colex_subsets(5, 2))),
    "short relevance": dict(relevance=problems.colex_subsets(5, 2)[:3]),
    "float indices": dict(relevance=problems.colex_subsets(5, 2).astype(np.float64)),
    "zero rows": dict(queries=np.zeros((0, 4)), relevance=np.zeros((0, 2), np.int32)),
    "mismatched dims": dict(documents=np.eye(5)),
    "a query with every document": dict(relevance=np.tile(np.arange(5), (10, 1))),
    "an index after padding": dict(relevance=_relevance([[-1, 0]] * 10)),
    "a repeated index": dict(relevance=_relevance([[0, 0]] * 10)),
    "no queries array": dict(queries=None),
    "string embeddings": dict(documents=np.array([["a"] * 4] * 5)),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_verify_refuses_a_malformed_witness_in_one_line(tmp_path, capsys, case):
  np.savez(tmp_path / "w.npz", **_witness(**MALFORMED[case]))
  code, out, err = _verify(tmp_path / "w.npz", capsys)
  assert code == 1 and out == "" and "verified" not in err
  assert err.startswith(f"error: {tmp_path / 'w.npz'}: not a witness: ")
  assert len(err.strip().splitlines()) == 1


def test_verify_refuses_unreadable_files_in_one_line(tmp_path, capsys):
  (tmp_path / "text.npz").write_text("not an archive\n")
  (tmp_path / "zip.npz").write_bytes(b"PK\x03\x04garbage")
  np.savez(tmp_path / "empty.npz")
  np.save(tmp_path / "plain.npy", np.eye(3))
  np.savez(tmp_path / "pickled.npz", **_witness(relevance=np.array([[0, None]], dtype=object)))
  for name in ("text.npz", "zip.npz", "empty.npz", "plain.npy", "pickled.npz", "missing.npz"):
    code, out, err = _verify(tmp_path / name, capsys)
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 1, (name, err)
    assert err.startswith(f"error: {tmp_path / name}: not a witness: "), err


def test_verify_refuses_non_finite_embeddings(tmp_path, capsys):
  for value in (np.nan, np.inf):
    documents = curve_witness(5, 2)[1]
    documents[0, 0] = value  # an infinite score of a relevant document could fake any margin
    np.savez(tmp_path / "w.npz", **_witness(documents=documents))
    code, out, _ = _verify(tmp_path / "w.npz", capsys)
    assert code == 1 and "NOT verified in float64: an embedding is NaN or inf" in out


def test_certificates_refuse_arrays_that_certify_nothing():
  queries, documents = curve_witness(5, 2)
  with pytest.raises(ValueError, match="row 0 has no relevant document"):
    certify.success_certificate(True, queries, documents, np.full((10, 2), -1))
  assert np.isnan(certify.margin64(queries * np.inf, documents, problems.colex_subsets(5, 2)))
  assert certify.success_certificate(True, queries, documents, problems.colex_subsets(5, 2))[0]
