"""A workdir's checkpoints (orbax), read and written with deadlines, retries and quiet logs.

Every orbax call (listing, reading, saving, closing) runs in a worker thread with a deadline,
so an object store that stops answering ends the run in one line instead of hanging it; a
read also stops at once when a signal asks. A store error is retried; only a checkpoint whose
own bytes fail every try is set aside (never deleted), and the previous one is used. Each
checkpoint holds its config, checked before its train state is read.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import sys
import threading
import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

from etils import epath

from sweep import config as config_lib
from sweep.lock import is_object_store

# orbax (with tensorstore and JAX) takes a second to import, so it is imported where a
# checkpoint is listed, read or saved: a store that only reads results (status, plot) never
# loads it.
if TYPE_CHECKING:
  import orbax.checkpoint as ocp

RESTORE_TRIES = 3
KEEP_CHECKPOINTS = 2
STORE_DEADLINE_S = 300.0  # one checkpoint read, write or listing; a store silent longer is gone
FAILED_CALL_WAIT_S = 5.0  # a failed call's own threads end within this, or are left running
# Loggers of the libraries behind a checkpoint call: one failing read logs a traceback per
# array (asyncio's "Task exception was never retrieved", orbax's errors); the store says what
# happened in one line instead.
_CHECKPOINT_LOGGERS = ("absl", "asyncio", "orbax", "tensorstore", "jax")
# Status codes of errors that say the store, not the checkpoint, failed (tensorstore, gRPC).
_TRANSIENT_CODES = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED",
                    "CANCELLED", "UNAUTHENTICATED", "PERMISSION_DENIED")


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


class _DropUnretrievedCheckpointFailures(logging.Filter):
  """Drops asyncio's report of a task or future that failed after the checkpoint call
  awaiting it had already raised the first error (a full disk fails every write in flight, a
  corrupt checkpoint every read). The run reports that first error in one line; the others
  come whenever their tasks are collected, which can be seconds later or at exit. The project
  runs nothing on asyncio itself, so every such report comes from a checkpoint call."""

  def filter(self, record: logging.LogRecord) -> bool:
    return "exception was never retrieved" not in str(record.msg)


_UNRETRIEVED_CHECKPOINT_FAILURES = _DropUnretrievedCheckpointFailures()


def _wait_for_new_threads(threads_before: set, timeout_s: float) -> None:
  """Polled, not joined: orbax's threads raise their own error again from join()."""
  deadline = time.monotonic() + timeout_s
  while set(threading.enumerate()) - threads_before and time.monotonic() < deadline:
    time.sleep(0.01)


@contextlib.contextmanager
def _quiet_libraries():
  """Only CRITICAL from the checkpoint libraries' loggers while a checkpoint call runs; the
  tasks and coroutines a failed call left are collected (their noise dropped) before the
  levels return (only then: a collection costs about half a second in a JAX process).
  Closed-loop callbacks, failed tasks and coroutines still in flight come later, so their
  filters stay once installed."""
  if not getattr(sys.unraisablehook, "drops_closed_loop_callbacks", False):
    sys.unraisablehook = _drop_closed_loop_callbacks(sys.unraisablehook)
  logging.getLogger("asyncio").addFilter(_UNRETRIEVED_CHECKPOINT_FAILURES)  # once: a set
  loggers = [logging.getLogger(name) for name in _CHECKPOINT_LOGGERS]
  levels = [logger.level for logger in loggers]
  for logger in loggers:
    logger.setLevel(logging.CRITICAL)
  try:
    yield
  except BaseException:
    # The write coroutines a failed call left are never awaited: most are collected here, the
    # rest whenever the error's traceback goes, which can be at exit. The project awaits no
    # coroutine of its own, so the filter stays.
    warnings.filterwarnings("ignore", "coroutine .* was never awaited", RuntimeWarning)
    gc.collect()
    raise
  finally:
    for logger, level in zip(loggers, levels):
      logger.setLevel(level)


def bounded(call: Callable[[], object], what: str, deadline_s: float,
            stop_requested: Callable[[], bool] = lambda: False):
  """call()'s result, computed in a worker thread while this one keeps answering signals.

  Raises StoreUnreachable once `deadline_s` passes and StopRequested as soon as
  `stop_requested()`; the call is then left blocked where it is (inside a library retrying a
  store that is gone, say), in a daemon thread that never keeps the process alive.
  """
  outcome: dict = {}

  def work():
    threads_before = set(threading.enumerate())
    try:
      outcome["value"] = call()
    except BaseException as error:  # handed to the waiting thread, which raises it
      # The threads the call started end first (orbax writes arrays, shardings and metadata
      # side by side, and a full disk fails them all), so they log while the caller's
      # libraries are still quiet.
      _wait_for_new_threads(threads_before, FAILED_CALL_WAIT_S)
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


class Checkpoints:
  """The checkpoints of one workdir (WORKDIR/checkpoints). Every process reads and saves; only
  the writer prunes old steps and sets corrupt ones aside."""

  def __init__(self, workdir, writer: bool = True, deadline_s: float = STORE_DEADLINE_S,
               stop_requested: Callable[[], bool] = lambda: False):
    self.workdir = epath.Path(workdir)
    self.writer = writer
    self.deadline_s = deadline_s  # for each checkpoint call
    self.stop_requested = stop_requested  # a signal came: stop waiting on the store
    self.object_store = is_object_store(workdir)
    self._checkpoints: ocp.CheckpointManager | None = None

  @property
  def manager(self) -> ocp.CheckpointManager:
    if self._checkpoints is None:
      import orbax.checkpoint as ocp
      directory = self.workdir / "checkpoints"
      self._checkpoints = ocp.CheckpointManager(
          directory if self.object_store else directory.resolve(),
          options=ocp.CheckpointManagerOptions(
              max_to_keep=KEEP_CHECKPOINTS, enable_async_checkpointing=False,
              cleanup_tmp_directories=self.writer),  # saves a kill cut short
          item_names=("train", "driver"))
    return self._checkpoints

  def _call(self, call: Callable[[], object], what: str, stoppable: bool = False):
    """A call into orbax, its libraries quiet, bounded by the deadline and, if `stoppable`,
    by the stop signal (a read is; a save or close is how a stopped run ends, so is not)."""
    with _quiet_libraries():
      return bounded(call, f"{what} in {self.workdir}", self.deadline_s,
                     self.stop_requested if stoppable else lambda: False)

  def save(self, step: int, train_state, driver_state: dict) -> None:
    """Save at a chunk boundary; a step already saved holds this same state and is kept.

    Then only the newest KEEP_CHECKPOINTS stay: orbax deletes older ones after a save, so a
    kill between the two, or a run that saved nothing new, would leave more for good.
    """
    import orbax.checkpoint as ocp

    def save():
      if step not in self.manager.all_steps():
        self.manager.save(step, args=ocp.args.Composite(
            train=ocp.args.StandardSave(train_state), driver=ocp.args.JsonSave(driver_state)),
            force=True)
        self.manager.wait_until_finished()
      if self.writer:
        for old in sorted(self.manager.all_steps())[:-KEEP_CHECKPOINTS]:
          self.manager.delete(old)
    self._call(save, f"saving checkpoint {step}")

  def _restore(self, step: int, abstract_train_state, config: dict | None):
    import orbax.checkpoint as ocp
    driver = self.manager.restore(step, args=ocp.args.Composite(
        driver=ocp.args.JsonRestore()))["driver"]
    if config is not None:  # before its train state, which another config's could not fit
      config_lib.refuse_other_config(self.workdir, driver.get("config", {}), config, f"checkpoint {step}")
    train = self.manager.restore(step, args=ocp.args.Composite(
        train=ocp.args.StandardRestore(abstract_train_state(driver))))["train"]
    return step, train, driver

  def _pause(self, seconds: float) -> None:
    """Sleep between tries, but stop at once when a signal asks to."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
      if self.stop_requested():
        raise StopRequested("waiting to retry a checkpoint")
      time.sleep(min(0.1, seconds))

  def restore(self, abstract_train_state, config: dict | None = None,
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
    steps = self._call(self.manager.all_steps, "listing the checkpoints",
                                  stoppable=True)
    set_aside = []
    for step in sorted(steps, reverse=True):
      for attempt in range(RESTORE_TRIES):
        try:
          return self._call(lambda: self._restore(step, abstract_train_state, config),
                                       f"reading checkpoint {step}", stoppable=True)
        except (StopRequested, config_lib.ConfigMismatch):
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
    self._call(self.manager.reload, "listing the checkpoints")
    return aside

  def close(self) -> None:
    if self._checkpoints is not None:
      self._call(self._checkpoints.close, "closing the checkpoints")
