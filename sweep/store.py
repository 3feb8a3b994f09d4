"""Everything a sweep writes and reads: config.json, results, tables, figures, the lock and
checkpoints.

The only module that touches the disk or an object store (a workdir may be any epath, e.g.
gs://). Results are appended one batch of lines per harvest: to results.jsonl on a local disk,
as one object per batch under results/ on an object store (objects cannot be appended to,
and rewriting the whole file per batch would grow quadratically); readers merge either form.
Tables and figures are replaced atomically; checkpoints are orbax's (the last two kept). Every
JSON line is strict JSON: a non-finite float is written as null. A resumed sweep replays from
its checkpoint, so a configuration already in the results is not written again; each checkpoint
also holds its config and every record it counted, so a results line lost since (a torn tail,
a truncated or deleted file) is rebuilt from it, and another config is refused.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import gc
import importlib.metadata
import io
import json
import logging
import math
import os
import platform
import sys
import threading
import time
import zipfile
import zlib
import warnings
from collections.abc import Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from sweep import lock as lock_lib
from sweep.ledger import result_key
from sweep.lock import is_object_store

CRITICAL_N_COLUMNS = ("d", "k", "critical_n", "max_success_n", "lo", "hi", "done", "probes",
                      "critical_n_certified", "geometric_critical_n", "status")
_INT_COLUMNS = ("d", "k", "critical_n", "max_success_n", "lo", "hi", "critical_n_certified")
# The fields of a result record that resuming, status, plan and plot read, and their types.
RECORD_FIELDS = {"d": int, "n": int, "k": int, "seed": int, "success": bool,
                 "stop_reason": str, "stop_step": int}
_RECORD_SHAPE = ", ".join(f"{field} ({kind.__name__})" for field, kind in RECORD_FIELDS.items())
# Fields that change how a sweep runs but not what it finds; a resumed run may change them.
# qrels is where the relevance file lies; its content is bound by qrels_sha256.
RUN_ONLY_FIELDS = ("checkpoint_every_s", "label", "qrels", "store_deadline_s")
RESTORE_TRIES = 3
KEEP_CHECKPOINTS = 2
STORE_DEADLINE_S = 300.0  # one checkpoint read, write or listing; a store silent longer is gone
# Loggers of the libraries behind a checkpoint call: one failing read logs a traceback per
# array (asyncio's "Task exception was never retrieved", orbax's errors); the store says what
# happened in one line instead.
_CHECKPOINT_LOGGERS = ("absl", "asyncio", "orbax", "tensorstore", "jax")
# Status codes of errors that say the store, not the checkpoint, failed (tensorstore, gRPC).
_TRANSIENT_CODES = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED",
                    "CANCELLED", "UNAUTHENTICATED", "PERMISSION_DENIED")


def _first_of_each(records: list[dict]) -> list[dict]:
  """`records` without repeats of a configuration, in order (the first one kept)."""
  seen = set()
  return [r for r in records if not (result_key(r) in seen or seen.add(result_key(r)))]


def environment() -> dict:
  """Versions and the device, recorded next to the config so a result can be traced."""
  versions = {name: importlib.metadata.version(name)
              for name in ("jax", "jaxlib", "optax", "orbax-checkpoint", "flax")}
  device = jax.devices()[0]
  return {"python": sys.version.split()[0], "platform_system": platform.platform(),
          "versions": versions, "backend": device.platform, "device_kind": device.device_kind,
          "device_count": jax.device_count()}


# -- files --------------------------------------------------------------------------------


def forget_listings(path) -> None:
  """Drop this process's cached object-store listings (gcsfs keeps them): another process,
  the writer or a run that holds the lease, may have written since."""
  if is_object_store(path):
    epath.backend.fsspec_backend.fs(str(path)).invalidate_cache()


def write_bytes(path, data: bytes) -> None:
  """Replace `path` at once: a reader sees the old file or the new one, never half of one.

  An object write is atomic by itself; a local file is written beside and renamed (with the
  process's usual file mode, like every other output).
  """
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  if is_object_store(path):
    path.write_bytes(data)
    return
  temporary = path.parent / f".{path.name}.tmp"
  temporary.write_bytes(data)
  temporary.replace(path)


def write_text(path, text: str) -> None:
  write_bytes(path, text.encode())


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
  if column not in _INT_COLUMNS:
    return text
  if not text and column not in ("d", "k"):
    return None  # an open search has no answer yet
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


# -- configs ----------------------------------------------------------------------------


def _as_stored(config: dict) -> dict:
  """The config as JSON holds it (tuples are lists there), for comparing."""
  return json.loads(json.dumps(config))


class ConfigMismatch(ValueError):
  """A workdir's config.json, checkpoint or results were made by another config."""


def refuse_other_config(workdir, previous: dict, config: dict, source: str) -> None:
  """Raise ConfigMismatch naming the fields (other than RUN_ONLY_FIELDS) where `previous` is
  not `config`."""
  config = _as_stored(config)
  differ = sorted(key for key in set(previous) | set(config)
                  if key not in RUN_ONLY_FIELDS and previous.get(key) != config.get(key))
  if differ:
    values = "; ".join(f"{key} {previous.get(key)!r} in its {source}, {config.get(key)!r} in "
                       f"this run" for key in differ)
    qrels = f" (qrels {config['qrels']})" if "qrels_sha256" in differ else ""
    raise ConfigMismatch(
        f"{workdir} was made by another config: fields {', '.join(differ)} differ: "
        f"{values}{qrels} (use a new --workdir, or the same values)")


# -- checkpoints --------------------------------------------------------------------------


def _is_transient(error: Exception) -> bool:
  """An error of the store (network, quota, permission), not of the checkpoint's bytes."""
  if isinstance(error, (OSError, TimeoutError)) and not isinstance(
      error, (FileNotFoundError, IsADirectoryError, NotADirectoryError)):
    return True
  return any(code in str(error) for code in _TRANSIENT_CODES)


def first_line(error: Exception) -> str:
  return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"


class CheckpointUnreadable(RuntimeError):
  """A checkpoint could not be read for a reason other than its own bytes."""


class StoreUnreachable(OSError):
  """A store call ran past its deadline (an OSError: the store failed, not the data)."""


class StopRequested(RuntimeError):
  """A signal asked the run to stop while a store call was waiting; nothing was changed."""


def _drop_closed_loop_callbacks(default_hook):
  """An unraisable hook that drops tensorstore completing a read for an asyncio loop orbax
  already closed (one failed read ends a restore while the others are in flight; each prints
  a traceback, seconds later), and passes everything else on."""
  def hook(unraisable):
    if not (isinstance(unraisable.exc_value, RuntimeError)
            and str(unraisable.exc_value) == "Event loop is closed"):
      default_hook(unraisable)
  hook.drops_closed_loop_callbacks = True
  return hook


@contextlib.contextmanager
def _quiet_libraries():
  """Only CRITICAL from the checkpoint libraries' loggers while a checkpoint call runs; the
  tasks and coroutines a failed call left are collected (their noise dropped) before the
  levels return (only then: a collection costs about half a second in a JAX process).
  Closed-loop callbacks come later, so their filter stays once installed."""
  if not getattr(sys.unraisablehook, "drops_closed_loop_callbacks", False):
    sys.unraisablehook = _drop_closed_loop_callbacks(sys.unraisablehook)
  loggers = [logging.getLogger(name) for name in _CHECKPOINT_LOGGERS]
  levels = [logger.level for logger in loggers]
  for logger in loggers:
    logger.setLevel(logging.CRITICAL)
  try:
    yield
  except BaseException:
    with warnings.catch_warnings():  # the coroutines a failed call left never awaited
      warnings.filterwarnings("ignore", "coroutine .* was never awaited", RuntimeWarning)
      gc.collect()
    raise
  finally:
    for logger, level in zip(loggers, levels):
      logger.setLevel(level)


def _writer_only(write):
  """A write that only the writer process makes; on the others it does nothing."""
  @functools.wraps(write)
  def guarded(self, *args, **kwargs):
    if self.writer:
      write(self, *args, **kwargs)
  return guarded


def bounded(call: Callable[[], object], what: str, deadline_s: float,
            stop_requested: Callable[[], bool] = lambda: False):
  """call()'s result, computed in a worker thread while this one keeps answering signals.

  Raises StoreUnreachable once `deadline_s` passes and StopRequested as soon as
  `stop_requested()`; the call is then left blocked where it is (inside a library retrying a
  store that is gone, say), in a daemon thread that never keeps the process alive.
  """
  outcome: dict = {}

  def work():
    try:
      outcome["value"] = call()
    except BaseException as error:  # handed to the waiting thread, which raises it
      outcome["error"] = error

  worker = threading.Thread(target=work, name=what, daemon=True)
  worker.start()
  deadline = time.monotonic() + deadline_s
  while worker.is_alive():
    if stop_requested():
      raise StopRequested(what)
    if time.monotonic() >= deadline:
      raise StoreUnreachable(f"{what}: no answer within {deadline_s:g} s")
    worker.join(0.1)
  if "error" in outcome:
    raise outcome["error"]
  return outcome["value"]


class Store:
  """One sweep's workdir (a local path or any epath, e.g. gs://).

  In a multi-process run every process reads and checkpoints, but only the writer
  (process 0) writes results, tables, witnesses and config.json, and holds the lock.
  """

  def __init__(self, workdir: str, writer: bool = True, deadline_s: float = STORE_DEADLINE_S,
               stop_requested: Callable[[], bool] = lambda: False):
    self.workdir = epath.Path(workdir)
    self.writer = writer
    self.deadline_s = deadline_s  # for each checkpoint call
    self.stop_requested = stop_requested  # a signal came: stop waiting on the store
    self.object_store = is_object_store(workdir)
    self.results_path = self.workdir / "results.jsonl"
    self.results_parts = self.workdir / "results"
    self.critical_n_path = self.workdir / "critical_n.csv"
    self.config_path = self.workdir / "config.json"
    self.lock_path = self.workdir / lock_lib.LOCK_NAME
    self._checkpoints: ocp.CheckpointManager | None = None
    self._next_part: int | None = None

  # -- the lock ---------------------------------------------------------------------------

  def lock(self) -> lock_lib.WorkdirLock:
    """The workdir's lock, held (raises lock.WorkdirLocked naming the holder otherwise)."""
    lock = lock_lib.WorkdirLock(self.lock_path)
    note = lock.acquire()
    if note:
      logging.warning("%s", note)
    return lock

  def holder(self) -> dict | None:
    """Who holds the lock now, with `running` False for a lock its holder left behind."""
    holder = lock_lib.read_lock(self.lock_path)
    if holder is None:
      return None
    return {**holder, "running": not lock_lib.holder_gone(holder)}

  # -- config -----------------------------------------------------------------------------

  def check_config(self, config: dict) -> None:
    """Refuse a workdir whose config.json was made by another config (its checkpoint is
    checked as it is restored)."""
    if self.config_path.exists():
      refuse_other_config(self.workdir, self.read_config(), config, "config.json")

  def claim(self, config: dict) -> None:
    """Check that the workdir was made by this same config, then write config.json."""
    self.check_config(config)
    self._write_config(config)

  @_writer_only
  def _write_config(self, config: dict) -> None:
    write_text(self.config_path, json.dumps(
        {"config": _as_stored(config), "environment": environment()}, indent=2,
        sort_keys=True) + "\n")

  def read_config(self) -> dict:
    if not self.config_path.exists():
      raise FileNotFoundError(f"{self.config_path} does not exist: not a sweep workdir")
    try:
      return json.loads(self.config_path.read_text())["config"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
      raise ValueError(f"{self.config_path}: not a sweep config: {error}") from None

  def label(self) -> str:
    """The series name in figures: config.json's label when set, else the workdir's name."""
    label = self.read_config().get("label") if self.config_path.exists() else None
    if isinstance(label, str) and label:
      return label
    return (self.workdir if self.object_store else self.workdir.resolve()).name

  # -- results ----------------------------------------------------------------------------

  def _parts(self) -> list[epath.Path]:
    forget_listings(self.workdir)
    if not self.results_parts.exists():
      return []
    return sorted(p for p in self.results_parts.iterdir() if p.name.endswith(".jsonl"))

  def read_results(self) -> list[dict]:
    """Every finished configuration's record, in the order written (either form)."""
    if self.object_store:
      return [r for part in self._parts()
              for r in parse_records(part.read_text(), part, torn_tail_ok=False)]
    if not self.results_path.exists():
      return []
    return parse_records(self.results_path.read_text(), self.results_path, torn_tail_ok=True)

  def load_results(self) -> dict[tuple, dict]:
    """Finished configurations by (d, n, k, seed); a torn last line (a kill mid-write, or a
    writer appending right now) is skipped. Reads only: `sweep status` runs beside a writer."""
    return {result_key(r): r for r in self.read_results()}

  def reconcile_results(self, counted: list[dict]) -> dict[tuple, dict]:
    """Make the results hold every record a checkpoint `counted`, once, then the lines
    written after it, once; returns them by (d, n, k, seed).

    Whatever a kill or a user removed (a torn tail, a truncated, deleted or thinned file) is
    rebuilt from the checkpoint, and duplicate lines are dropped, saying so in one line. A
    local results.jsonl is replaced at once (written beside and renamed); on an object store
    the missing records go into one new part (repeated records are left there: readers key
    records by configuration).
    """
    present = self.read_results()
    records = _first_of_each(counted + present)
    self._repair_results(present, records)
    return {result_key(r): r for r in records}

  @_writer_only
  def _repair_results(self, present: list[dict], records: list[dict]) -> None:
    """Write what `records` hold and `present` (the results as read) lacks."""
    written = {result_key(r) for r in present}
    missing = [r for r in records if result_key(r) not in written]
    repeats = len(present) - len(_first_of_each(present))
    changes = [f"rebuilt {len(missing)} line(s) from the checkpoint"] if missing else []
    if self.object_store:
      self.append_results(missing)
    else:
      text = self.results_path.read_text() if self.results_path.exists() else ""
      if text and not text.endswith("\n"):
        changes.append("dropped a partial last line")
      if repeats:
        changes.append(f"dropped {repeats} repeated line(s)")
      if changes:
        write_text(self.results_path, "".join(strict_json(r) + "\n" for r in records))
    if changes:
      logging.warning("%s: %s", self.results_parts if self.object_store else self.results_path,
                      "; ".join(changes))

  @_writer_only
  def append_results(self, records: list[dict]) -> None:
    if not records:
      return
    lines = "".join(strict_json(r) + "\n" for r in records)
    if self.object_store:
      if self._next_part is None:
        self._next_part = 1 + max((int(p.name.split(".")[0]) for p in self._parts()), default=-1)
      write_text(self.results_parts / f"{self._next_part:08d}.jsonl", lines)
      self._next_part += 1
      return
    with self.results_path.open("a") as f:
      f.write(lines)
      f.flush()

  # -- tables, reports, witnesses, figures ------------------------------------------------

  @_writer_only
  def write_report(self, name: str, report) -> None:
    """A target's report (targets.py): critical_n.csv, its rows; critical_d.json, one object."""
    if name == self.critical_n_path.name:
      write_text(self.critical_n_path, critical_n_csv(report))
    else:
      self.write_json(name, report)

  def read_critical_n(self) -> list[dict]:
    """critical_n.csv with typed values (see parse_critical_n)."""
    forget_listings(self.workdir)
    if not self.critical_n_path.exists():
      raise FileNotFoundError(f"{self.critical_n_path}: not found (is {self.workdir} a sweep "
                              f"workdir?)")
    return parse_critical_n(self.critical_n_path.read_text(), self.critical_n_path)

  def read_critical_d(self) -> dict:
    path = self.workdir / "critical_d.json"
    if not path.exists():
      raise FileNotFoundError(f"{path} does not exist: no qrels fit has run there")
    return json.loads(path.read_text())

  def has_critical_d(self) -> bool:
    return (self.workdir / "critical_d.json").exists()

  def write_json(self, name: str, data: dict) -> epath.Path:
    """WORKDIR/NAME as indented strict JSON, replaced at once."""
    path = self.workdir / name
    write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")
    return path

  @_writer_only
  def write_witness(self, name: str, arrays: dict) -> None:
    """witnesses/NAME.npz: embeddings that retrieve every relevant set, for `sweep verify`."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_bytes(self.workdir / "witnesses" / f"{name}.npz", buffer.getvalue())

  @_writer_only
  def write_stats(self, stats: dict) -> None:
    """run_stats.json: the sweep's efficiency figures so far (slot occupancy, padding)."""
    self.write_json("run_stats.json", stats)

  def read_stats(self) -> dict | None:
    forget_listings(self.workdir)
    path = self.workdir / "run_stats.json"
    return json.loads(path.read_text()) if path.exists() else None

  # -- checkpoints ------------------------------------------------------------------------

  @property
  def checkpoints(self) -> ocp.CheckpointManager:
    if self._checkpoints is None:
      directory = self.workdir / "checkpoints"
      self._checkpoints = ocp.CheckpointManager(
          directory if self.object_store else directory.resolve(),
          options=ocp.CheckpointManagerOptions(
              max_to_keep=KEEP_CHECKPOINTS, enable_async_checkpointing=False,
              cleanup_tmp_directories=self.writer),  # saves a kill cut short
          item_names=("train", "driver"))
    return self._checkpoints

  def _checkpoint_call(self, call: Callable[[], object], what: str, stoppable: bool = False):
    """A call into orbax, its libraries quiet, bounded by the deadline and, if `stoppable`,
    by the stop signal (a read is; a save or close is how a stopped run ends, so is not)."""
    with _quiet_libraries():
      return bounded(call, f"{what} in {self.workdir}", self.deadline_s,
                     self.stop_requested if stoppable else lambda: False)

  def save_checkpoint(self, step: int, train_state, driver_state: dict) -> None:
    """Save at a chunk boundary; a step already saved holds this same state and is kept.

    Then only the newest KEEP_CHECKPOINTS stay: orbax deletes older ones after a save, so a
    kill between the two, or a run that saved nothing new, would leave more for good.
    """
    def save():
      if step not in self.checkpoints.all_steps():
        self.checkpoints.save(step, args=ocp.args.Composite(
            train=ocp.args.StandardSave(train_state), driver=ocp.args.JsonSave(driver_state)),
            force=True)
        self.checkpoints.wait_until_finished()
      if self.writer:
        for old in sorted(self.checkpoints.all_steps())[:-KEEP_CHECKPOINTS]:
          self.checkpoints.delete(old)
    self._checkpoint_call(save, f"saving checkpoint {step}")

  def _restore(self, step: int, abstract_train_state, config: dict | None):
    driver = self.checkpoints.restore(step, args=ocp.args.Composite(
        driver=ocp.args.JsonRestore()))["driver"]
    if config is not None:  # before its train state, which another config's could not fit
      refuse_other_config(self.workdir, driver.get("config", {}), config, f"checkpoint {step}")
    train = self.checkpoints.restore(step, args=ocp.args.Composite(
        train=ocp.args.StandardRestore(abstract_train_state(driver))))["train"]
    return step, train, driver

  def _pause(self, seconds: float) -> None:
    """Sleep between tries, but stop at once when a signal asks to."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
      if self.stop_requested():
        raise StopRequested("waiting to retry a checkpoint")
      time.sleep(min(0.1, seconds))

  def restore_checkpoint(self, abstract_train_state, config: dict | None = None,
                         retry_seconds: float = 1.0):
    """(step, train_state, driver_state) of the newest readable checkpoint, or None.

    `abstract_train_state(driver_state)` gives the target structure (and sharding) for the
    train state, which depends on the bucket recorded in the driver state. A checkpoint made
    by another config than `config` raises ConfigMismatch naming the fields. Nothing good is
    ever deleted: an error of the store (network, quota, no answer within the deadline) is
    retried RESTORE_TRIES times and then raised as CheckpointUnreadable; only a checkpoint
    whose own bytes fail every try is proven corrupt, moved aside to
    WORKDIR/checkpoint-STEP.corrupt, and the previous one used. A stop signal raises
    StopRequested at once, with nothing moved.
    """
    steps = self._checkpoint_call(self.checkpoints.all_steps, "listing the checkpoints",
                                  stoppable=True)
    set_aside = []
    for step in sorted(steps, reverse=True):
      for attempt in range(RESTORE_TRIES):
        try:
          return self._checkpoint_call(lambda: self._restore(step, abstract_train_state, config),
                                       f"reading checkpoint {step}", stoppable=True)
        except (StopRequested, ConfigMismatch):
          raise
        except Exception as error:  # classified below: transient, or this checkpoint's bytes
          last = error
          if attempt + 1 < RESTORE_TRIES:
            self._pause(retry_seconds * 2**attempt)
      if _is_transient(last):
        raise CheckpointUnreadable(
            f"checkpoint {step} in {self.workdir} could not be read after {RESTORE_TRIES} tries "
            f"({first_line(last)}); nothing was moved or deleted, rerun when the store is "
            f"reachable") from last
      if self.writer:
        set_aside.append(self._set_aside(step, last))
    if set_aside:
      logging.warning("every checkpoint of %s was unreadable; set aside as %s; starting the "
                      "sweep over (the results already written are kept)",
                      self.workdir, ", ".join(str(path) for path in set_aside))
    return None

  def _set_aside(self, step: int, error: Exception) -> epath.Path:
    aside = self.workdir / f"checkpoint-{step}.corrupt"
    if aside.exists():
      aside = self.workdir / f"checkpoint-{step}.corrupt-{int(time.time())}"
    logging.warning("checkpoint %d in %s is corrupt (%s); moved to %s, trying the previous one",
                    step, self.workdir, first_line(error), aside)
    (self.workdir / "checkpoints" / str(step)).rename(aside)
    self._checkpoint_call(self.checkpoints.reload, "listing the checkpoints")
    return aside

  def close(self) -> None:
    if self._checkpoints is not None:
      self._checkpoint_call(self._checkpoints.close, "closing the checkpoints")


def read_witness(path: str) -> dict[str, np.ndarray]:
  """The arrays of a witness .npz (never unpickled), or a one-line ValueError saying why not."""
  try:
    data = epath.Path(path).read_bytes()
    if not data.startswith(b"PK"):  # np.load would read a .npy, or try to unpickle
      raise ValueError("not a zip archive")
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
      return {name: archive[name] for name in archive.files}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
    raise ValueError(f"not a readable .npz: {' '.join(str(error).split())}") from None
