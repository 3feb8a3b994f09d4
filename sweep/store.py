"""Everything a sweep writes: config.json, results.jsonl, critical_n.csv and checkpoints.

The only module that touches the disk. Results are appended and flushed one line per
finished configuration; tables are replaced atomically; checkpoints are orbax's (atomic,
the last two kept). A resumed sweep replays from its checkpoint, so a configuration whose
line is already in results.jsonl is not written again.
"""

from __future__ import annotations

import csv
import importlib.metadata
import io
import json
import logging
import platform
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

CRITICAL_N_COLUMNS = ("d", "k", "critical_n", "max_success_n", "lo", "hi", "done", "probes",
                      "critical_n_certified", "geometric_critical_n")
RESULT_KEY = ("d", "n", "k", "seed")
_OBJECT_STORES = ("gs://", "s3://")
# Fields that change how a sweep runs but not what it finds; a resumed run may change them.
RUN_ONLY_FIELDS = ("checkpoint_every_s", "label")


def result_key(record: dict) -> tuple:
  return tuple(record[field] for field in RESULT_KEY)


def environment() -> dict:
  """Versions and the device, recorded next to the config so a result can be traced."""
  versions = {name: importlib.metadata.version(name)
              for name in ("jax", "jaxlib", "optax", "orbax-checkpoint", "flax")}
  device = jax.devices()[0]
  return {"python": sys.version.split()[0], "platform_system": platform.platform(),
          "versions": versions, "backend": device.platform, "device_kind": device.device_kind,
          "device_count": jax.device_count()}


def _atomic_write_text(path: epath.Path, text: str) -> None:
  temporary = path.parent / f".{path.name}.tmp"
  temporary.write_text(text)
  temporary.replace(path)


class Store:
  """One sweep's workdir (a local path or any epath, e.g. gs://).

  In a multi-process run every process reads and checkpoints, but only the writer
  (process 0) writes results, tables, witnesses and config.json.
  """

  def __init__(self, workdir: str, writer: bool = True):
    self.workdir = epath.Path(workdir)
    self.writer = writer
    self.results_path = self.workdir / "results.jsonl"
    self.critical_n_path = self.workdir / "critical_n.csv"
    self.config_path = self.workdir / "config.json"
    self._checkpoints: ocp.CheckpointManager | None = None

  # -- config -----------------------------------------------------------------------------

  def claim(self, config: dict) -> None:
    """Write config.json, or check that the workdir was made by this same config."""
    config = json.loads(json.dumps(config))  # compare as stored: tuples are lists there
    if self.config_path.exists():
      previous = json.loads(self.config_path.read_text())["config"]
      differ = sorted(key for key in set(previous) | set(config)
                      if key not in RUN_ONLY_FIELDS and previous.get(key) != config.get(key))
      if differ:
        raise ValueError(
            f"{self.workdir} was made by another config: fields {', '.join(differ)} differ "
            f"(use a new --workdir, or the same values)")
    if not self.writer:
      return
    self.workdir.mkdir(parents=True, exist_ok=True)
    _atomic_write_text(self.config_path, json.dumps(
        {"config": config, "environment": environment()}, indent=2, sort_keys=True) + "\n")

  def read_config(self) -> dict:
    if not self.config_path.exists():
      raise FileNotFoundError(f"{self.config_path} does not exist: not a sweep workdir")
    return json.loads(self.config_path.read_text())["config"]

  # -- results ----------------------------------------------------------------------------

  def load_results(self, repair: bool = False) -> dict[tuple, dict]:
    """Finished configurations by (d, n, k, seed).

    A torn last line (a kill mid-write) is skipped; the run that resumes (repair=True) also
    cuts it from the file. Readers such as `sweep status` never write.
    """
    if not self.results_path.exists():
      return {}
    text = self.results_path.read_text()
    lines = text.split("\n")
    complete, torn = lines[:-1], lines[-1]
    if torn and repair and self.writer:
      logging.warning("dropping a partial last line of %s", self.results_path)
      self.results_path.write_text("".join(line + "\n" for line in complete))
    return {result_key(r): r for r in map(json.loads, filter(None, complete))}

  def append_results(self, records: list[dict]) -> None:
    if not (records and self.writer):
      return
    lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
    if str(self.workdir).startswith(_OBJECT_STORES):
      # Object stores cannot append; a whole-object write replaces the file at once.
      previous = self.results_path.read_text() if self.results_path.exists() else ""
      self.results_path.write_text(previous + lines)
      return
    with self.results_path.open("a") as f:
      f.write(lines)
      f.flush()

  def write_critical_n(self, rows: list[dict]) -> None:
    if not self.writer:
      return
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, CRITICAL_N_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
      writer.writerow({key: "" if row[key] is None else
                       str(row[key]).lower() if isinstance(row[key], bool) else row[key]
                       for key in CRITICAL_N_COLUMNS})
    _atomic_write_text(self.critical_n_path, buffer.getvalue())

  def write_critical_d(self, report: dict) -> None:
    if self.writer:
      _atomic_write_text(self.workdir / "critical_d.json", json.dumps(report, indent=2) + "\n")

  def read_critical_d(self) -> dict:
    path = self.workdir / "critical_d.json"
    if not path.exists():
      raise FileNotFoundError(f"{path} does not exist: no qrels fit has run there")
    return json.loads(path.read_text())

  def write_witness(self, name: str, arrays: dict) -> None:
    """witnesses/NAME.npz: embeddings that retrieve every relevant set, for `sweep verify`."""
    if not self.writer:
      return
    folder = self.workdir / "witnesses"
    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / f".{name}.tmp.npz"
    with temporary.open("wb") as f:
      np.savez(f, **arrays)
    temporary.replace(folder / f"{name}.npz")

  def write_stats(self, stats: dict) -> None:
    """run_stats.json: the sweep's efficiency figures so far (slot occupancy, padding)."""
    if self.writer:
      _atomic_write_text(self.workdir / "run_stats.json", json.dumps(stats, indent=2) + "\n")

  def read_stats(self) -> dict | None:
    path = self.workdir / "run_stats.json"
    return json.loads(path.read_text()) if path.exists() else None

  def read_critical_n(self) -> list[dict]:
    if not self.critical_n_path.exists():
      raise FileNotFoundError(f"{self.critical_n_path} does not exist: no sweep has run there")
    return list(csv.DictReader(io.StringIO(self.critical_n_path.read_text())))

  # -- checkpoints ------------------------------------------------------------------------

  @property
  def checkpoints(self) -> ocp.CheckpointManager:
    if self._checkpoints is None:
      self._checkpoints = ocp.CheckpointManager(
          (self.workdir / "checkpoints").resolve(),
          options=ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=False),
          item_names=("train", "driver"))
    return self._checkpoints

  def save_checkpoint(self, step: int, train_state, driver_state: dict) -> None:
    """Save at a chunk boundary; a step already saved holds this same state and is kept."""
    if step in self.checkpoints.all_steps():
      return
    self.checkpoints.save(step, args=ocp.args.Composite(
        train=ocp.args.StandardSave(train_state), driver=ocp.args.JsonSave(driver_state)),
        force=True)
    self.checkpoints.wait_until_finished()

  def restore_checkpoint(self, abstract_train_state):
    """(step, train_state, driver_state) of the newest readable checkpoint, or None.

    `abstract_train_state(driver_state)` gives the target structure (and sharding) for the
    train state, which depends on the bucket recorded in the driver state. A corrupt or
    partial newest checkpoint is reported and the previous one is used.
    """
    for step in sorted(self.checkpoints.all_steps(), reverse=True):
      try:
        driver = self.checkpoints.restore(step, args=ocp.args.Composite(
            driver=ocp.args.JsonRestore()))["driver"]
        train = self.checkpoints.restore(step, args=ocp.args.Composite(
            train=ocp.args.StandardRestore(abstract_train_state(driver))))["train"]
        return step, train, driver
      except Exception as error:  # any unreadable checkpoint: fall back to the previous one
        logging.warning("checkpoint %d in %s is unreadable (%s: %s); deleting it and trying "
                        "the previous one", step, self.workdir, type(error).__name__,
                        str(error).split("\n")[0])
        self.checkpoints.delete(step)
    return None

  def close(self) -> None:
    if self._checkpoints is not None:
      self._checkpoints.close()
