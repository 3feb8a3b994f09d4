"""Everything a sweep writes and reads: config.json, results, tables, witnesses, figures, and
its lock and checkpoints (lock.py, checkpoints.py) behind one front.

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

import functools
import importlib.metadata
import io
import json
import logging
import platform
import sys
import zipfile
import zlib
from collections.abc import Callable

import numpy as np
from etils import epath

from sweep import checkpoints as checkpoints_lib
from sweep import config as config_lib
from sweep import formats
from sweep import lock as lock_lib
from sweep.ledger import result_key
from sweep.lock import is_object_store


def _first_of_each(records: list[dict]) -> list[dict]:
  """`records` without repeats of a configuration, in order (the first one kept)."""
  seen = set()
  return [r for r in records if not (result_key(r) in seen or seen.add(result_key(r)))]


def environment() -> dict:
  """Versions and the device, recorded next to the config so a result can be traced."""
  import jax  # only a run that writes config.json asks: `sweep status` and plots need no JAX
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


def _writer_only(write):
  """A write that only the writer process makes; on the others it does nothing."""
  @functools.wraps(write)
  def guarded(self, *args, **kwargs):
    if self.writer:
      write(self, *args, **kwargs)
  return guarded


class Store:
  """One sweep's workdir (a local path or any epath, e.g. gs://).

  In a multi-process run every process reads and checkpoints, but only the writer
  (process 0) writes results, tables, witnesses and config.json, and holds the lock.
  """

  def __init__(self, workdir: str, writer: bool = True,
               deadline_s: float = checkpoints_lib.STORE_DEADLINE_S,
               stop_requested: Callable[[], bool] = lambda: False):
    self.workdir = epath.Path(workdir)
    self.writer = writer
    self.object_store = is_object_store(workdir)
    self.results_path = self.workdir / "results.jsonl"
    self.results_parts = self.workdir / "results"
    self.critical_n_path = self.workdir / "critical_n.csv"
    self.config_path = self.workdir / "config.json"
    self.lock_path = self.workdir / lock_lib.LOCK_NAME
    self.checkpoints = checkpoints_lib.Checkpoints(workdir, writer, deadline_s, stop_requested)
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
      config_lib.refuse_other_config(self.workdir, self.read_config(), config, "config.json")

  def claim(self, config: dict) -> None:
    """Check that the workdir was made by this same config, then write config.json."""
    self.check_config(config)
    self._write_config(config)

  @_writer_only
  def _write_config(self, config: dict) -> None:
    write_text(self.config_path, json.dumps(
        {"config": config_lib.as_stored(config), "environment": environment()}, indent=2,
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
              for r in formats.parse_records(part.read_text(), part, torn_tail_ok=False)]
    if not self.results_path.exists():
      return []
    return formats.parse_records(self.results_path.read_text(), self.results_path, torn_tail_ok=True)

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
        write_text(self.results_path, "".join(formats.strict_json(r) + "\n" for r in records))
    if changes:
      logging.warning("%s: %s", self.results_parts if self.object_store else self.results_path,
                      "; ".join(changes))

  @_writer_only
  def append_results(self, records: list[dict]) -> None:
    if not records:
      return
    lines = "".join(formats.strict_json(r) + "\n" for r in records)
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
      write_text(self.critical_n_path, formats.critical_n_csv(report))
    else:
      self.write_json(name, report)

  def read_critical_n(self) -> list[dict]:
    """critical_n.csv with typed values (see formats.parse_critical_n)."""
    forget_listings(self.workdir)
    if not self.critical_n_path.exists():
      raise FileNotFoundError(f"{self.critical_n_path}: not found (is {self.workdir} a sweep "
                              f"workdir?)")
    return formats.parse_critical_n(self.critical_n_path.read_text(), self.critical_n_path)

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

  def close(self) -> None:
    self.checkpoints.close()


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
