"""Real retrieval problems: relevance tables read from qrels files.

The sweep measures free embeddings against relevance patterns; a benchmark's qrels (which
documents are relevant to which query) is such a pattern. This module turns the MTEB / BEIR
qrels layouts, or a boolean matrix, into the same padded relevance table that
`problems.topk_relevance` builds, plus the string ids that map rows and indices back to the
benchmark. Only relevance matters here: scores > 0 are relevant, the grade is dropped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.resources
import json
import math
import os
import pathlib
import re
import warnings
import zipfile
import zlib

import numpy as np

from sweep import problems
from sweep.problems import PAD

COLUMNS = ("query-id", "corpus-id", "score")
_NPZ_KEY = "relevance"


@dataclasses.dataclass(frozen=True, eq=False)
class Relevance:
  """A relevance table and the ids its rows and entries stand for.

  table: int32 [num_queries, width], row i the sorted indices (into document_ids) of the
  documents relevant to query_ids[i], padded with PAD; width is the largest relevant set.
  document_ids are every corpus id the qrels mention, relevant or not, in first-seen order.
  """
  table: np.ndarray
  query_ids: tuple[str, ...]
  document_ids: tuple[str, ...]
  source: str

  def __post_init__(self):
    table = np.array(self.table, dtype=np.int32)  # a private copy, so frozen means the table too
    if table.ndim != 2 or table.shape[0] != len(self.query_ids):
      raise ValueError(f"{self.source}: table shape {table.shape} does not match "
                       f"{len(self.query_ids)} query ids")
    table.flags.writeable = False
    object.__setattr__(self, "table", table)

  @property
  def num_queries(self) -> int:
    return len(self.query_ids)

  @property
  def num_documents(self) -> int:
    return len(self.document_ids)

  @property
  def relevant_counts(self) -> np.ndarray:
    """How many documents are relevant to each query, int [num_queries]."""
    return (self.table != PAD).sum(axis=1)

  @property
  def sha256(self) -> str:
    """A hash of the content (ids and table), not of the file: what a workdir is bound to,
    so an edited file is refused under its old name and a copy is accepted under a new one."""
    canonical = json.dumps([self.query_ids, self.document_ids, self.table.tolist()])
    return hashlib.sha256(canonical.encode()).hexdigest()

  def matrix(self) -> np.ndarray:
    """The relevance as a bool matrix [num_queries, num_documents]."""
    out = np.zeros((self.num_queries, self.num_documents), dtype=bool)
    rows, cols = np.nonzero(self.table != PAD)
    out[rows, self.table[rows, cols]] = True
    return out


def _build(relevant: list[list[int]], query_ids, document_ids, source: str) -> Relevance:
  """Pads the per-query index lists into a table; rejects queries that cannot be ranked."""
  n = len(document_ids)
  for query_id, docs in zip(query_ids, relevant):
    if len(docs) == n:
      raise ValueError(f"{source}: query {query_id!r} has all {n} documents relevant, "
                       "so no ranking can separate them; drop it or add documents")
  width = max(len(docs) for docs in relevant)
  table = np.full((len(relevant), width), PAD, dtype=np.int32)
  for i, docs in enumerate(relevant):
    table[i, :len(docs)] = sorted(docs)
  return Relevance(table, tuple(query_ids), tuple(document_ids), source)


def relevance_from_matrix(matrix, source: str = "matrix") -> Relevance:
  """A Relevance from a bool matrix [queries, documents]; ids are the row and column numbers."""
  matrix = np.asarray(matrix)
  if matrix.ndim != 2 or 0 in matrix.shape:
    raise ValueError(f"{source}: need a non-empty 2-D [queries, documents] matrix, "
                     f"got shape {matrix.shape}")
  if matrix.dtype != bool:
    if not (np.issubdtype(matrix.dtype, np.integer) and np.isin(matrix, (0, 1)).all()):
      raise ValueError(f"{source}: need a boolean (or 0/1) matrix, got dtype {matrix.dtype}")
    matrix = matrix.astype(bool)
  empty = np.flatnonzero(~matrix.any(axis=1))
  if empty.size:
    raise ValueError(f"{source}: row {empty[0]} has no relevant document ({empty.size} of "
                     f"{matrix.shape[0]} rows have none); every query needs one")
  relevant = [np.flatnonzero(row).tolist() for row in matrix]
  return _build(relevant, [str(i) for i in range(matrix.shape[0])],
                [str(j) for j in range(matrix.shape[1])], source)


def _check_columns(names, source: str, where: str) -> None:
  missing = [c for c in COLUMNS if c not in names]
  unknown = [c for c in names if c not in COLUMNS]
  if missing or unknown:
    problem = "; ".join(part for part in (
        f"missing {', '.join(missing)}" if missing else "",
        f"unknown {', '.join(map(str, unknown))}" if unknown else "") if part)
    raise ValueError(f"{source}: {where}: columns {problem}; expected {', '.join(COLUMNS)}")


def _score(value) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float, str)):
    raise ValueError(f"score {value!r} is not a number")
  score = float(value)
  if not math.isfinite(score):
    raise ValueError(f"score {value!r} is not finite")
  return score


def _id(value) -> str:
  if isinstance(value, bool) or not isinstance(value, (str, int)):
    raise ValueError(f"id {value!r} is not a string or integer")
  return str(value)


def _jsonl_rows(lines, source: str):
  for lineno, line in lines:
    try:
      record = json.loads(line)
    except json.JSONDecodeError as error:
      raise ValueError(f"{source}: line {lineno} is malformed: {error.msg}") from None
    if not isinstance(record, dict):
      raise ValueError(f"{source}: line {lineno} is malformed: not a JSON object")
    _check_columns(list(record), source, f"line {lineno}")
    try:
      yield lineno, _id(record["query-id"]), _id(record["corpus-id"]), _score(record["score"])
    except ValueError as error:
      raise ValueError(f"{source}: line {lineno} is malformed: {error}") from None


def _tsv_rows(lines, source: str):
  header_lineno, header = next(lines)
  names = header.split("\t")
  _check_columns(names, source, f"header (line {header_lineno})")
  order = [names.index(c) for c in COLUMNS]
  for lineno, line in lines:
    fields = line.split("\t")
    if len(fields) != len(names):
      raise ValueError(f"{source}: line {lineno} is malformed: {len(fields)} tab-separated "
                       f"fields, expected {len(names)}")
    query_id, corpus_id, score = (fields[i] for i in order)
    try:
      yield lineno, query_id, corpus_id, _score(score)
    except ValueError as error:
      raise ValueError(f"{source}: line {lineno} is malformed: {error}") from None


def _from_qrels(path: pathlib.Path, source: str) -> Relevance:
  try:
    with open(path, encoding="utf-8-sig") as f:
      lines = [(i, line.rstrip("\r\n")) for i, line in enumerate(f, start=1) if line.strip()]
  except UnicodeDecodeError as error:
    raise ValueError(f"{source}: not UTF-8 text nor an npz ({error.reason} at byte "
                     f"{error.start})") from None
  if not lines:
    raise ValueError(f"{source}: file is empty")
  is_json = lines[0][1].lstrip().startswith(("{", "["))
  rows = (_jsonl_rows if is_json else _tsv_rows)(iter(lines), source)

  query_index: dict[str, int] = {}
  document_index: dict[str, int] = {}
  relevant: list[list[int]] = []
  seen: set[tuple[str, str]] = set()
  duplicates = 0
  for _, query_id, corpus_id, score in rows:
    if (query_id, corpus_id) in seen:
      duplicates += 1  # the first judgement of a pair wins
      continue
    seen.add((query_id, corpus_id))
    # Non-relevant judged documents still count: they are in the corpus, competing in the ranking.
    doc = document_index.setdefault(corpus_id, len(document_index))
    if score > 0:
      if query_id not in query_index:
        query_index[query_id] = len(relevant)
        relevant.append([])
      relevant[query_index[query_id]].append(doc)
  if duplicates:
    warnings.warn(f"{source}: dropped {duplicates} duplicate (query-id, corpus-id) rows; "
                  "the first of each was kept", stacklevel=3)
  if not relevant:
    raise ValueError(f"{source}: no relevant rows (score > 0)")
  return _build(relevant, list(query_index), list(document_index), source)


# What np.load raises on an archive that is not a readable npz (truncated, corrupt, not a zip,
# a pickled object array, a member that is not an .npy).
_UNREADABLE_NPZ = (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError)


def _from_npz(path: pathlib.Path, source: str) -> Relevance:
  try:
    with np.load(path, allow_pickle=False) as arrays:
      keys = list(arrays.keys())
      if _NPZ_KEY in keys:
        key = _NPZ_KEY
      elif len(keys) == 1:
        key = keys[0]
      else:
        raise ValueError(f"holds arrays {keys}; expected key {_NPZ_KEY!r} or a single array")
      matrix = arrays[key]
  except _UNREADABLE_NPZ as error:
    raise ValueError(f"{source}: not a readable npz relevance matrix: "
                     f"{' '.join(str(error).split()) or type(error).__name__}") from None
  return relevance_from_matrix(matrix, source)


# The complete k-subset family over n documents, generated instead of read: every k-subset of
# n documents is a query's relevant set (the top-k problem of the paper, for a critical d).
ALL_SUBSETS = re.compile(r"all-subsets:n=(\d+),k=(\d+)")


def generated(source: str) -> bool:
  """Whether a qrels source names a generated family, not a file."""
  return str(source).startswith("all-subsets:")


def all_subsets(source: str) -> Relevance:
  """The relevance of `all-subsets:n=N,k=K`: C(N, K) queries, each one K-subset of N documents."""
  match = ALL_SUBSETS.fullmatch(source)
  n, k = (int(x) for x in match.groups()) if match else (0, 0)
  if not 1 <= k < n:
    raise ValueError(f"qrels {source!r} is out of range: need all-subsets:n=N,k=K with "
                     f"1 <= K < N")
  matrix = np.zeros((math.comb(n, k), n), bool)
  np.put_along_axis(matrix, problems.colex_subsets(n, k).astype(np.intp), True, axis=1)
  return relevance_from_matrix(matrix, source)


def load_relevance(path: str | os.PathLike) -> Relevance:
  """Reads qrels.jsonl (MTEB / BEIR), a qrels TSV with header, or an .npz bool matrix, or
  generates a family (`all-subsets:n=N,k=K`).

  The format is read from the content, not the suffix: a zip archive ("PK") is an npz, a
  first line starting with '{' (or '[') is JSON lines, anything else is a TSV whose first line
  is the header. Every file that cannot be read as one of them is a one-line ValueError naming
  it.
  """
  if generated(path):
    return all_subsets(str(path))
  path = pathlib.Path(path)
  source = str(path)
  try:
    with open(path, "rb") as f:
      magic = f.read(2)
    if magic == b"PK":  # how every zip record starts; no qrels text can (the header check)
      return _from_npz(path, source)
    return _from_qrels(path, source)
  except OSError as error:  # missing, a directory, unreadable: the qrels file, not the workdir
    raise ValueError(f"qrels {source}: cannot be read: {error.strerror or error}") from None


def limit_small_path() -> pathlib.Path:
  """The packaged LIMIT-small qrels.jsonl (CC-BY 4.0, Google LLC; see its README.md)."""
  return pathlib.Path(str(importlib.resources.files("sweep") / "data" / "limit-small" /
                          "qrels.jsonl"))
