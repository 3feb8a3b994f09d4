"""The workdir's store: the local lock, strict JSON lines, and which restore errors are the
store's (retried, reported, nothing moved) and which are the checkpoint's own (set aside)."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from sweep import lock as lock_lib
from sweep import checkpoints as checkpoints_lib
from sweep import formats
from sweep.store import Store


def test_a_held_lock_refuses_a_second_holder_naming_the_first(tmp_path):
  first = Store(str(tmp_path)).lock()
  with pytest.raises(lock_lib.WorkdirLocked, match=f"in use by another run \\(pid {os.getpid()} on "):
    Store(str(tmp_path)).lock()
  first.release()
  assert lock_lib.read_lock(tmp_path / "lock.json") is None
  Store(str(tmp_path)).lock().release()  # free again once released


def test_the_lock_of_a_killed_process_is_taken_over(tmp_path):
  holder = subprocess.Popen([sys.executable, "-c", (
      "import sys, time; from sweep.store import Store; lock = Store(sys.argv[1]).lock(); "
      "print('held', flush=True); time.sleep(600)"), str(tmp_path)],
      stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline().strip() == "held"
  with pytest.raises(lock_lib.WorkdirLocked, match=f"pid {holder.pid} on "):
    Store(str(tmp_path)).lock()
  assert Store(str(tmp_path)).holder()["running"]
  holder.kill()
  holder.wait()
  assert not Store(str(tmp_path)).holder()["running"]
  lock = lock_lib.WorkdirLock(tmp_path / "lock.json")
  assert f"took over the lock of pid {holder.pid}" in lock.acquire()
  assert lock_lib.read_lock(tmp_path / "lock.json")["pid"] == os.getpid()
  lock.release()


def test_results_lines_are_strict_json():
  line = formats.strict_json(dict(d=4, n=9, best_loss=float("-inf"), margin=float("nan"),
                                    final_loss=0.5))
  refuse = lambda token: pytest.fail(f"not strict JSON: {token}")
  assert json.loads(line, parse_constant=refuse) == dict(d=4, n=9, best_loss=None, margin=None,
                                                         final_loss=0.5)


@pytest.mark.parametrize("error, transient", [
    (ConnectionRefusedError("refused"), True), (TimeoutError("timed out"), True),
    (OSError(5, "Input/output error"), True),
    (ValueError("UNAVAILABLE: HTTP response code: 503"), True),
    (ValueError("DATA_LOSS: Error reading local file: corrupted manifest"), False),
    (FileNotFoundError("checkpoints/7/train/manifest.ocdbt"), False),
    (KeyError("params"), False)])
def test_store_errors_are_retried_checkpoint_errors_set_aside(error, transient):
  assert checkpoints_lib._is_transient(error) is transient


def test_a_store_error_while_restoring_is_retried_then_reported_and_nothing_is_moved(tmp_path):
  store = Store(str(tmp_path))
  state = {"x": np.arange(4.0)}
  store.checkpoints.save(3, state, {"chunk": 3})
  failures = []

  def flaky(driver):  # the store fails twice, then answers
    if len(failures) < 2:
      failures.append(driver["chunk"])
      raise ConnectionError("the store is unreachable")
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)

  step, restored, driver = store.checkpoints.restore(flaky, retry_seconds=0.01)
  assert (step, driver, failures) == (3, {"chunk": 3}, [3, 3])
  np.testing.assert_array_equal(restored["x"], state["x"])

  def unreachable(driver):
    raise ConnectionError("the store is unreachable")

  with pytest.raises(checkpoints_lib.CheckpointUnreadable, match="nothing was moved or deleted"):
    store.checkpoints.restore(unreachable, retry_seconds=0.01)
  assert store.checkpoints.manager.all_steps() == [3] and not list(tmp_path.glob("checkpoint-*"))
  store.close()
