"""gs:// workdirs against a real local GCS server: a sweep killed with -9 and resumed, status
and plot through the store, results as one object per batch, and the lease that locks a
workdir."""

import json
import os
import signal
import socket
import time
import uuid

import pytest
from etils import epath

from sweep import driver as driver_lib
from sweep import store as store_lib
from sweep.store import Store
from test_driver import sweep, tiny_config, uninterrupted, wait_for, write_config_file


def without_timing(records):
  for r in records:
    r.pop("wall_seconds")
  return sorted(records, key=lambda r: (r["d"], r["n"], r["seed"]))


def test_a_gs_sweep_killed_and_resumed_equals_a_local_run(tmp_path, gcs_bucket):
  expected_results, expected_table = uninterrupted(tmp_path / "local")
  workdir = f"{gcs_bucket}/run-{uuid.uuid4().hex[:8]}"
  store = Store(workdir, writer=False)
  args = ["run", f"--config={write_config_file(tmp_path / 'tiny.py')}", f"--workdir={workdir}"]
  killed = sweep(*args)
  wait_for(lambda: len(store.read_results()) >= 6, killed, timeout=240)
  killed.send_signal(signal.SIGKILL)
  killed.communicate(timeout=60)
  assert not all(r["done"] for r in store.read_critical_n())  # the kill cut the sweep short
  assert store_lib.read_lock(store.lock_path)["pid"] == killed.pid  # its lease, left behind

  resumed = sweep(*args)
  out, err = resumed.communicate(timeout=300)
  assert resumed.returncode == 0, err[-3000:]
  assert "resumed" in out and "took over the lock" in err
  assert without_timing(store.read_results()) == expected_results
  assert store.critical_n_path.read_text() == expected_table
  parts = list(epath.Path(f"{workdir}/results").iterdir())
  assert len(parts) > 1 and not epath.Path(f"{workdir}/results.jsonl").exists()
  assert store.checkpoints.all_steps() and store_lib.read_lock(store.lock_path) is None

  status = sweep("status", f"--workdir={workdir}", "--json")
  status_out, err = status.communicate(timeout=120)
  assert status.returncode == 0, err
  assert json.loads(status_out)["configurations_finished"] == len(expected_results)
  plot = sweep("plot", f"--workdir={workdir}", "--degree=1", "--d_min=2",
               f"--out={workdir}-figure/critical_n")
  plot_out, err = plot.communicate(timeout=120)
  assert plot.returncode == 0, err
  for name in ("critical_n.fit.json", "critical_n.png", "critical_n.pdf"):
    assert epath.Path(f"{workdir}-figure/{name}").stat().length > 0, name


def lease(path, host, expires_in):
  epath.Path(path).write_text(json.dumps(dict(pid=1, host=host, started=time.time() - 60,
                                              token="theirs", expires=time.time() + expires_in)))


def test_a_live_lease_refuses_and_an_expired_one_is_taken_over(gcs_bucket):
  store = Store(f"{gcs_bucket}/leased-{uuid.uuid4().hex[:8]}")
  lease(store.lock_path, "other-host", expires_in=100)
  with pytest.raises(store_lib.WorkdirLocked, match="in use by another run \\(pid 1 on other-host"):
    store.lock()
  lease(store.lock_path, "other-host", expires_in=-1)
  lock = store.lock()
  held = store_lib.read_lock(store.lock_path)
  assert held["host"] == socket.gethostname() and held["token"] != "theirs"
  lock.release()
  assert store_lib.read_lock(store.lock_path) is None


def test_the_holder_renews_its_lease_and_stops_when_it_is_taken(gcs_bucket):
  path = epath.Path(f"{gcs_bucket}/renewed-{uuid.uuid4().hex[:8]}/lock.json")
  lock = store_lib.WorkdirLock(path, lease_seconds=1.0)
  lock.acquire()
  first = store_lib.read_lock(path)["expires"]
  time.sleep(0.6)
  assert store_lib.read_lock(path)["expires"] > first and not lock.lost
  lease(path, "other-host", expires_in=100)  # another run decided this one was gone
  time.sleep(0.6)
  assert lock.lost
  lock.release()
  assert store_lib.read_lock(path)["token"] == "theirs"  # the new holder's lease stays


def test_the_holder_stops_when_its_lease_is_deleted(gcs_bucket):
  path = epath.Path(f"{gcs_bucket}/deleted-{uuid.uuid4().hex[:8]}/lock.json")
  lock = store_lib.WorkdirLock(path, lease_seconds=1.0)
  lock.acquire()
  path.unlink()  # by hand, or by a cleanup: a second run could take the workdir now
  time.sleep(0.6)
  assert lock.lost
  lock.release()


def closed_port_url() -> str:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return f"http://127.0.0.1:{s.getsockname()[1]}"  # closed once the socket is


def test_a_store_that_stops_answering_at_resume_ends_in_one_line(tmp_path, gcs_bucket):
  """Checkpoints written, then tensorstore pointed at a closed port: each read try ends at the
  deadline, three tries end in one line; a SIGTERM stops the wait at once. Nothing moves."""
  workdir = f"{gcs_bucket}/unreachable-{uuid.uuid4().hex[:8]}"
  store = Store(workdir)
  assert driver_lib.Driver(tiny_config(dims=(2,), restarts=1), store).run(progress=lambda _: None)
  store.close()
  steps = Store(workdir).checkpoints.all_steps()
  config_file = write_config_file(tmp_path / "tiny.py", dims=(2,), restarts=1)
  args = ["run", f"--config={config_file}", f"--workdir={workdir}"]
  env = {**os.environ, "TENSORSTORE_GCS_HTTP_URL": closed_port_url()}

  started = time.monotonic()
  unreachable = sweep(*args, "--config.store_deadline_s=2", env=env)
  out, err = unreachable.communicate(timeout=240)
  assert unreachable.returncode != 0 and "Traceback" not in err
  assert err.strip().splitlines()[-1] == (
      f"error: checkpoint {max(steps)} in {workdir} could not be read after 3 tries "
      f"(StoreUnreachable: reading checkpoint {max(steps)} in {workdir}: no answer within 2 s); "
      f"nothing was moved or deleted, rerun when the store is reachable")
  assert time.monotonic() - started < 200

  waiting = sweep(*args, env=env)  # the default deadline: minutes
  wait_for(lambda: store_lib.read_lock(store.lock_path) is not None, waiting, timeout=120)
  time.sleep(3)  # past the lock and config.json, into the checkpoint read
  waiting.send_signal(signal.SIGTERM)
  out, err = waiting.communicate(timeout=30)
  assert "Traceback" not in err
  assert f"stopped by signal 15 while reading checkpoint {max(steps)} in {workdir}" in out
  assert Store(workdir).checkpoints.all_steps() == steps
  assert not list(epath.Path(workdir).glob("checkpoint-*.corrupt"))
