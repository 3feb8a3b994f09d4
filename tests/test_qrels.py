import json

import numpy as np
import pytest

from sweep import problems, qrels
from helpers import sweep

# Mixed sizes of relevant sets: 2, 3 and 1 of 5 documents. Read query by query, documents
# first appear in column order, so qrels files of it number documents as the npz does.
MATRIX = np.array([[1, 1, 0, 0, 0],
                   [1, 0, 1, 1, 0],
                   [0, 0, 0, 0, 1]], dtype=bool)


def _qrels_rows(matrix):
  """Query-major (query, document) pairs of a matrix, ids as the npz form names them."""
  return [(str(i), str(j)) for i, j in zip(*np.nonzero(matrix))]


def write_jsonl(path, rows):
  path.write_text("".join(json.dumps({"query-id": q, "corpus-id": d, "score": s}) + "\n"
                          for q, d, s in rows))
  return path


def write_tsv(path, rows):
  path.write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{s}\n" for q, d, s in rows))
  return path


def test_limit_small_loads():
  relevance = qrels.load_relevance(qrels.limit_small_path())
  assert relevance.table.shape == (1000, 2)
  assert relevance.table.dtype == np.int32
  assert (relevance.table != problems.PAD).all()
  assert (relevance.relevant_counts == 2).all()
  assert (relevance.num_queries, relevance.num_documents) == (1000, 46)
  assert relevance.query_ids[0] == "query_0"
  assert (np.diff(relevance.table, axis=1) > 0).all()
  assert relevance.matrix().sum() == 2000


def test_three_forms_agree(tmp_path):
  rows = [(q, d, 1) for q, d in _qrels_rows(MATRIX)]
  np.savez(tmp_path / "m.npz", relevance=MATRIX)
  loaded = [qrels.load_relevance(write_jsonl(tmp_path / "qrels.jsonl", rows)),
            qrels.load_relevance(write_tsv(tmp_path / "test.tsv", rows)),
            qrels.load_relevance(tmp_path / "m.npz")]
  for relevance in loaded[1:]:
    np.testing.assert_array_equal(relevance.table, loaded[0].table)
  assert {r.query_ids for r in loaded} == {("0", "1", "2")}
  assert {r.document_ids for r in loaded} == {("0", "1", "2", "3", "4")}
  assert loaded[2].source.endswith("m.npz")


def test_ids_follow_first_seen_order(tmp_path):
  rows = [(q, d, 1) for q, d in reversed(_qrels_rows(MATRIX))]
  relevance = qrels.load_relevance(write_jsonl(tmp_path / "qrels.jsonl", rows))
  assert relevance.query_ids == ("2", "1", "0")
  assert relevance.document_ids == ("4", "3", "2", "0", "1")
  rows_back = [int(q) for q in relevance.query_ids]
  cols_back = [int(d) for d in relevance.document_ids]
  np.testing.assert_array_equal(relevance.matrix(), MATRIX[rows_back][:, cols_back])
  assert (np.diff(relevance.table[1]) > 0).all()


def test_npz_single_array_under_any_key(tmp_path):
  np.savez(tmp_path / "m.npz", qrels=MATRIX.astype(np.int8))
  np.testing.assert_array_equal(qrels.load_relevance(tmp_path / "m.npz").matrix(), MATRIX)


def test_mixed_sizes_pad_and_round_trip():
  relevance = qrels.relevance_from_matrix(MATRIX)
  np.testing.assert_array_equal(relevance.table, [[0, 1, -1], [0, 2, 3], [4, -1, -1]])
  np.testing.assert_array_equal(relevance.relevant_counts, [2, 3, 1])
  np.testing.assert_array_equal(relevance.matrix(), MATRIX)
  assert relevance.source == "matrix"
  with pytest.raises(ValueError):
    relevance.table[0, 0] = 2


def test_nonrelevant_rows_ignored_but_documents_kept(tmp_path):
  rows = [("a", "x", 1), ("a", "y", 0), ("b", "y", 2), ("c", "z", 0), ("b", "w", -1)]
  relevance = qrels.load_relevance(write_jsonl(tmp_path / "qrels.jsonl", rows))
  assert relevance.query_ids == ("a", "b")
  assert relevance.document_ids == ("x", "y", "z", "w")
  np.testing.assert_array_equal(relevance.table, [[0], [1]])


def test_integer_ids_and_tsv_column_order(tmp_path):
  path = tmp_path / "test.tsv"
  path.write_text("score\tcorpus-id\tquery-id\r\n1\t7\t3\r\n1.0\t8\t3\r\n\r\n0\t9\t3\r\n")
  relevance = qrels.load_relevance(path)
  assert relevance.query_ids == ("3",) and relevance.document_ids == ("7", "8", "9")
  np.testing.assert_array_equal(relevance.table, [[0, 1]])


def test_duplicates_warn_once_and_drop(tmp_path):
  rows = [("a", "x", 1), ("a", "x", 1), ("a", "y", 0), ("b", "y", 1), ("b", "y", 1)]
  with pytest.warns(UserWarning, match="dropped 2 duplicate") as record:
    relevance = qrels.load_relevance(write_jsonl(tmp_path / "qrels.jsonl", rows))
  assert len(record) == 1
  np.testing.assert_array_equal(relevance.table, [[0], [1]])


@pytest.mark.parametrize("name, text, match", [
    ("empty.jsonl", "", "empty"),
    ("blank.tsv", "\n  \n", "empty"),
    ("zero.jsonl", '{"query-id": "a", "corpus-id": "x", "score": 0}\n', "no relevant rows"),
    ("header.tsv", "query-id\tcorpus-id\tscore\n", "no relevant rows"),
    ("cols.tsv", "qid\tdocid\tscore\nq\td\t1\n",
     "header.*missing query-id, corpus-id; unknown qid, docid; "
     "expected query-id, corpus-id, score"),
    ("cols.jsonl", '{"query-id": "a", "corpus-id": "x", "score": 1}\n'
     '{"query-id": "a", "doc": "y"}\n',
     "line 2: columns missing corpus-id, score; unknown doc; expected"),
    ("bad.jsonl", '{"query-id": "a", "corpus-id": "x", "score": 1}\n{"query-id": "a",\n',
     "line 2 is malformed"),
    ("list.jsonl", '[1, 2]\n', "line 1 is malformed: not a JSON object"),
    ("id.jsonl", '{"query-id": null, "corpus-id": "x", "score": 1}\n', "line 1 is malformed"),
    ("bad.tsv", "query-id\tcorpus-id\tscore\na\tx\t1\na\ty\n", "line 3 is malformed"),
    ("score.tsv", "query-id\tcorpus-id\tscore\na\tx\t1\na\ty\thigh\n", "line 3 is malformed"),
    ("all.tsv", "query-id\tcorpus-id\tscore\na\tx\t1\nb\tx\t1\nb\ty\t1\n",
     "query 'b' has all 2 documents relevant"),
])
def test_file_errors(tmp_path, name, text, match):
  path = tmp_path / name
  path.write_text(text)
  with pytest.raises(ValueError, match=match) as error:
    qrels.load_relevance(path)
  message = str(error.value)
  assert str(path) in message and "\n" not in message


def test_npz_errors(tmp_path):
  np.savez(tmp_path / "none.npz", relevance=np.array([[1, 0, 0], [0, 0, 0]], dtype=bool))
  with pytest.raises(ValueError, match=r"none\.npz: row 1 has no relevant document"):
    qrels.load_relevance(tmp_path / "none.npz")
  np.savez(tmp_path / "all.npz", relevance=np.array([[1, 0], [1, 1]], dtype=bool))
  with pytest.raises(ValueError, match="query '1' has all 2 documents relevant"):
    qrels.load_relevance(tmp_path / "all.npz")
  np.savez(tmp_path / "two.npz", a=MATRIX, b=MATRIX)
  with pytest.raises(ValueError, match="expected key 'relevance' or a single array"):
    qrels.load_relevance(tmp_path / "two.npz")
  np.savez(tmp_path / "float.npz", relevance=MATRIX * 0.5)
  with pytest.raises(ValueError, match="boolean"):
    qrels.load_relevance(tmp_path / "float.npz")
  with pytest.raises(ValueError, match="2-D"):
    qrels.relevance_from_matrix(np.ones(3, dtype=bool))


def _fit(qrels_path, workdir, *flags):
  """`sweep fit-qrels` with the reference config: (exit code, stdout, stderr)."""
  process = sweep("fit-qrels", f"--qrels={qrels_path}", f"--workdir={workdir}", *flags)
  out, err = process.communicate(timeout=300)
  return process.returncode, out, err


ONE_EACH = "".join(f'{{"query-id": "{q}", "corpus-id": "{doc}", "score": 1}}\n'
                   for q, doc in (("a", "x"), ("b", "y"), ("c", "z")))


def test_fit_qrels_finishes_where_the_critical_d_is_below_the_local_sweep(tmp_path):
  # Three documents, each the only relevant one of its query: d = 1 cannot (the middle of
  # three points on a line is never on top), d = 2 can. The default sweep radius (4) reaches
  # past d = 1; no probe may be proposed there.
  (tmp_path / "q.jsonl").write_text(ONE_EACH)
  code, out, err = _fit(tmp_path / "q.jsonl", tmp_path / "w")
  assert code == 0, err
  assert "critical d = 2 (d = 2 trains every relevant set, d = 1 does not)" in out
  probes = {r["d"] for r in map(json.loads, (tmp_path / "w" / "results.jsonl").open())}
  assert probes == {1, 2}


def test_a_critical_d_at_the_number_of_documents_is_never_called_trained(tmp_path):
  # Two documents, one relevant each: d = 1 is the only d below the search's floor (d = n,
  # which holds by construction and is never trained). Its failure leaves critical d = 2.
  (tmp_path / "q.jsonl").write_text("".join(ONE_EACH.splitlines(keepends=True)[:2]))
  code, out, err = _fit(tmp_path / "q.jsonl", tmp_path / "w")
  assert code == 0, err
  probes = {r["d"] for r in map(json.loads, (tmp_path / "w" / "results.jsonl").open())}
  assert probes == {1}
  assert "critical d = 2 (d = 2 needs no training: 2 orthonormal documents" in out
  assert "trains every" not in out
  assert not json.loads((tmp_path / "w" / "critical_d.json").read_text())["critical_d_trained"]


def test_a_workdir_is_bound_to_the_content_of_its_qrels(tmp_path):
  path = tmp_path / "q.jsonl"
  path.write_text(ONE_EACH)
  assert _fit(path, tmp_path / "w")[0] == 0
  bound = json.loads((tmp_path / "w" / "config.json").read_text())["config"]["qrels_sha256"]
  assert bound == qrels.load_relevance(path).sha256
  results = (tmp_path / "w" / "results.jsonl").read_text()

  path.write_text(ONE_EACH + '{"query-id": "d", "corpus-id": "x", "score": 1}\n')  # in place
  code, out, err = _fit(path, tmp_path / "w")
  changed = qrels.load_relevance(path).sha256
  assert code == 1 and out == "" and len(err.strip().splitlines()) == 1
  assert bound in err and changed in err and str(path) in err and "qrels_sha256" in err
  assert (tmp_path / "w" / "results.jsonl").read_text() == results

  # The same content under another name (and in another form) is the same relevance.
  np.savez(tmp_path / "copy.npz", relevance=np.eye(3, dtype=bool))
  assert qrels.load_relevance(tmp_path / "copy.npz").sha256 != bound  # ids differ: 0, 1, 2
  (tmp_path / "copy.jsonl").write_text(ONE_EACH)
  code, out, err = _fit(tmp_path / "copy.jsonl", tmp_path / "w")
  assert code == 0 and "copy.jsonl: 3 queries x 3 documents, critical d = 2" in out, err

  # A hash given up front pins the content a fresh workdir may use.
  code, _, err = _fit(path, tmp_path / "pinned", f"--config.qrels_sha256={bound}")
  assert code == 1 and f"content sha256 {changed} is not config.qrels_sha256 {bound}" in err
  assert not (tmp_path / "pinned" / "config.json").exists()


@pytest.mark.parametrize("name, content, match", [
    ("zip.jsonl", b"PK\x03\x04garbage", "not a readable npz"),
    ("empty-archive.npz", b"PK\x05\x06" + bytes(18), "holds arrays \\[\\]"),
    ("text.npz", b"hello\n", "columns missing"),
    ("junk.bin", bytes(range(256)), "not UTF-8 text nor an npz"),
    ("latin1.tsv", "query-id\tcorpus-id\tscore\nq\t\xe9\t1\n".encode("latin-1"), "not UTF-8"),
    ("empty.tsv", b"", "file is empty"),
])
def test_malformed_bytes_are_one_line_naming_the_file(tmp_path, name, content, match):
  path = tmp_path / name
  path.write_bytes(content)
  with pytest.raises(ValueError, match=match) as error:
    qrels.load_relevance(path)
  assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_malformed_npz_archives_are_one_line_naming_the_file(tmp_path):
  np.savez(tmp_path / "good.npz", relevance=MATRIX)
  whole = (tmp_path / "good.npz").read_bytes()
  corrupt = bytearray(whole)
  corrupt[whole.index(b"\x93NUMPY") + 80] ^= 0xFF  # a member whose CRC fails
  cases = {"truncated.npz": whole[:len(whole) // 2], "corrupt.npz": bytes(corrupt)}
  for name, content in cases.items():
    (tmp_path / name).write_bytes(content)
  np.savez(tmp_path / "pickled.npz", relevance=np.array([[True, None]], dtype=object))
  for name in (*cases, "pickled.npz"):
    with pytest.raises(ValueError, match="not a readable npz") as error:
      qrels.load_relevance(tmp_path / name)
    assert str(tmp_path / name) in str(error.value) and "\n" not in str(error.value)


def test_a_missing_qrels_file_is_a_qrels_error(tmp_path):
  code, out, err = _fit(tmp_path / "nowhere.jsonl", tmp_path / "w")
  assert code == 1 and len(err.strip().splitlines()) == 1
  assert err.startswith(f"error: qrels {tmp_path / 'nowhere.jsonl'}: cannot be read")
  with pytest.raises(ValueError, match="cannot be read: Is a directory"):
    qrels.load_relevance(tmp_path)


def test_the_complete_k_subset_family_is_generated_not_read():
  relevance = qrels.load_relevance("all-subsets:n=6,k=2")
  assert relevance.num_queries == 15 and relevance.num_documents == 6
  assert {tuple(row) for row in relevance.table} == {
      tuple(row) for row in problems.colex_subsets(6, 2)}
  for bad in ("all-subsets:n=3,k=3", "all-subsets:n=6", "all-subsets:k=2,n=6"):
    with pytest.raises(ValueError, match="need all-subsets:n=N,k=K with 1 <= K < N"):
      qrels.load_relevance(bad)


def test_critical_d_of_the_complete_family_beside_its_geometry(tmp_path):
  # Every pair of 5 documents: 10 pairs exceed 3n - 6 = 9 (no d = 3 polytope holds them), and
  # the d = 4 moment curve retrieves them all; the optimiser finds d = 4 too.
  code, out, err = _fit("all-subsets:n=5,k=2", tmp_path / "w", "--config.local_sweep=0")
  assert code == 0, err
  assert "all-subsets:n=5,k=2: 10 queries x 5 documents, critical d = 4" in out
  assert "geometry: exactly d = 4" in out
