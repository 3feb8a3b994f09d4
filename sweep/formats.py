"""The workdir's text formats: strict JSON lines of results, and critical_n.csv with typed
cells. Parsing and rendering only; store.py reads and writes the files.
"""

from __future__ import annotations

import csv
import io
import json
import math

CRITICAL_N_COLUMNS = ("d", "k", "critical_n", "max_success_n", "lo", "hi", "done", "probes",
                      "critical_n_certified", "geometric_critical_n", "status",
                      "critical_n_median", "seed_successes")
_INT_COLUMNS = ("d", "k", "critical_n", "max_success_n", "lo", "hi", "critical_n_certified",
                "critical_n_median")
# The fields of a result record that resuming, status, plan and plot read, and their types.
RECORD_FIELDS = {"d": int, "n": int, "k": int, "seed": int, "success": bool,
                 "stop_reason": str, "stop_step": int}
_RECORD_SHAPE = ", ".join(f"{field} ({kind.__name__})" for field, kind in RECORD_FIELDS.items())


def strict_json(value) -> str:
  """One line of strict JSON: NaN and ±inf become null (jq, JSON.parse and Go reject them)."""
  finite = {key: None if isinstance(v, float) and not math.isfinite(v) else v
            for key, v in value.items()}
  return json.dumps(finite, sort_keys=True, allow_nan=False)


def parse_records(text: str, source, torn_tail_ok: bool) -> list[dict]:
  """JSON lines of `source`; a last line without its newline is skipped if `torn_tail_ok`
  (a writer killed mid-line, or one appending right now); any other bad line is an error."""
  lines = text.split("\n")
  records = []
  for number, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as error:
      if number == len(lines) and torn_tail_ok:
        continue
      raise ValueError(f"{source}: line {number}: invalid JSON: {error}") from None
    problem = _record_problem(record)
    if problem:
      raise ValueError(f"{source}: line {number}: {problem}; a result record has "
                       f"{_RECORD_SHAPE}")
    records.append(record)
  return records


def _record_problem(record) -> str | None:
  """What keeps a parsed JSON line from being a result record, or None."""
  if not isinstance(record, dict):
    return f"a JSON {type(record).__name__}, not an object"
  for field, kind in RECORD_FIELDS.items():
    if field not in record:
      return f"field {field!r} is missing"
    value = record[field]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
      return f"field {field!r} is {json.dumps(value)}, not a {kind.__name__}"
  return None


def _typed_cell(source, line: int, column: str, text: str):
  text = (text or "").strip()
  if column == "done":
    if text.lower() not in ("true", "false"):
      raise ValueError(f"{source}: line {line}: column 'done' is not true/false: {text!r}")
    return text.lower() == "true"
  if not text and column not in ("d", "k"):
    return None  # an open search has no answer yet
  if column not in _INT_COLUMNS:
    return text
  try:
    return int(text)
  except ValueError:
    raise ValueError(f"{source}: line {line}: column {column!r} is not an integer: "
                     f"{text!r}") from None


def parse_critical_n(text: str, source) -> list[dict]:
  """critical_n.csv rows with typed values: ints (None where empty), `done` a bool."""
  try:
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None:
      raise ValueError(f"{source}: empty file, expected header {','.join(CRITICAL_N_COLUMNS)}")
    missing = [c for c in CRITICAL_N_COLUMNS if c not in reader.fieldnames]
    if missing:
      raise ValueError(f"{source}: missing column(s) {', '.join(missing)}")
    rows = []
    for raw in reader:
      if None in raw or any(raw[c] is None for c in reader.fieldnames):
        raise ValueError(f"{source}: line {reader.line_num}: wrong number of fields")
      rows.append({c: _typed_cell(source, reader.line_num, c, raw[c]) for c in reader.fieldnames})
  except csv.Error as error:
    raise ValueError(f"{source}: malformed CSV: {error}") from None
  return rows


def critical_n_csv(rows: list[dict]) -> str:
  """critical_n.csv's text: empty cells for None, lower-case booleans."""
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, CRITICAL_N_COLUMNS, lineterminator="\n")
  writer.writeheader()
  for row in rows:
    writer.writerow({key: "" if row[key] is None else
                     str(row[key]).lower() if isinstance(row[key], bool) else row[key]
                     for key in CRITICAL_N_COLUMNS})
  return buffer.getvalue()
