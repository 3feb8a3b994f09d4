"""gs:// workdirs against a real local GCS server: a sweep killed with -9 and resumed, status
and plot through the store, results as one object per batch, and the lease that locks a
workdir."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid

import pytest
from etils import epath

from sweep import driver as driver_lib
from sweep import lock as lock_lib
from sweep.store import Store
from helpers import EVERY_CHUNK, sweep, tiny_config, uninterrupted, wait_for, write_config_file


def without_timing(records):
  for r in records:
    r.pop("wall_seconds")
  return sorted(records, key=lambda r: (r["d"], r["n"], r["seed"]))


def test_a_gs_sweep_killed_and_resumed_equals_a_local_run(tmp_path, gcs_bucket):
  expected_results, expected_table = uninterrupted(tmp_path / "local")
  workdir = f"{gcs_bucket}/run-{uuid.uuid4().hex[:8]}"
  store = Store(workdir, writer=False)
  args = ["run", f"--config={write_config_file(tmp_path / 'tiny.py', **EVERY_CHUNK)}",
          f"--workdir={workdir}"]
  killed = sweep(*args)
  wait_for(lambda: len(store.read_results()) >= 6, killed, timeout=240)
  killed.send_signal(signal.SIGKILL)
  killed.communicate(timeout=60)
  assert not all(r["done"] for r in store.read_critical_n())  # the kill cut the sweep short
  assert lock_lib.read_lock(store.lock_path)["pid"] == killed.pid  # its lease, left behind

  resumed = sweep(*args)
  out, err = resumed.communicate(timeout=300)
  assert resumed.returncode == 0, err[-3000:]
  assert "resumed" in out and "took over the lock" in err
  assert without_timing(store.read_results()) == expected_results
  assert store.critical_n_path.read_text() == expected_table
  parts = list(epath.Path(f"{workdir}/results").iterdir())
  assert len(parts) > 1 and not epath.Path(f"{workdir}/results.jsonl").exists()
  assert store.checkpoints.manager.all_steps() and lock_lib.read_lock(store.lock_path) is None

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


def lease_of_another_run(path):
  """A lease written now by another run, through the same conditional create."""
  lease = lock_lib._LeaseObject(epath.Path(path))
  lease.write(dict(pid=1, host="other-host", started=time.time() - 60, token="theirs"), 0)
  return lease


def test_a_live_lease_refuses_and_an_expired_one_is_taken_over(gcs_bucket):
  store = Store(f"{gcs_bucket}/leased-{uuid.uuid4().hex[:8]}")
  lease_of_another_run(store.lock_path)
  with pytest.raises(lock_lib.WorkdirLocked, match="in use by another run \\(pid 1 on other-host"
                     ".*lease renewed [0-9]+ s ago by the store's clock"):
    store.lock()
  time.sleep(2.5)  # by the store's clock, which counts whole seconds
  lock = lock_lib.WorkdirLock(store.lock_path, lease_seconds=1.0)
  assert "took over the lock of pid 1 on other-host" in lock.acquire()
  held = lock_lib.read_lock(store.lock_path)
  assert held["host"] == socket.gethostname() and held["token"] != "theirs"
  lock.release()
  assert lock_lib.read_lock(store.lock_path) is None  # released: the next run takes it at once
  store.lock().release()


def test_the_holder_renews_its_lease_and_stops_when_it_is_taken(gcs_bucket):
  path = epath.Path(f"{gcs_bucket}/renewed-{uuid.uuid4().hex[:8]}/lock.json")
  lock = lock_lib.WorkdirLock(path, lease_seconds=1.0)
  lock.acquire()
  lease = lock_lib._LeaseObject(path)
  generation = lease.read()[0]
  time.sleep(0.6)
  generation, holder, _ = lease.read()
  assert holder["token"] != "theirs" and not lock.lost
  assert generation != lease.write(dict(pid=1, host="other-host", token="theirs"), generation)
  time.sleep(0.6)  # another run took it over, under the precondition
  assert lock.lost
  lock.release()
  assert lock_lib.read_lock(path)["token"] == "theirs"  # the new holder's lease stays


def test_the_holder_stops_when_its_lease_is_deleted(gcs_bucket):
  path = epath.Path(f"{gcs_bucket}/deleted-{uuid.uuid4().hex[:8]}/lock.json")
  lock = lock_lib.WorkdirLock(path, lease_seconds=1.0)
  lock.acquire()
  path.unlink()  # by hand, or by a cleanup: a second run could take the workdir now
  time.sleep(0.6)
  assert lock.lost
  lock.release()


RACER = """
import sys, time
from sweep import lock
print("ready", flush=True)
start, held = float(sys.stdin.readline()), []
for race in range(int(sys.argv[2])):
  while time.time() < start + 0.3 * race:
    time.sleep(0.001)
  contender = lock.WorkdirLock(f"{sys.argv[1]}/race-{race}/lock.json")
  try:
    contender.acquire()
    held.append(contender)
    print(race, "won", flush=True)
  except lock.WorkdirLocked:
    print(race, "refused", flush=True)
sys.stdin.readline()
for contender in held:
  contender.release()
"""


def test_two_runs_racing_for_a_lease_have_exactly_one_winner_every_time(gcs_bucket):
  """Two processes start for the same gs:// workdir at the same moment, 20 times over; the
  store's conditional create lets exactly one of them in each time. A winner keeps its lease,
  so a late contender is refused too: the count holds however the two are scheduled."""
  base, races = f"{gcs_bucket}/race-{uuid.uuid4().hex[:8]}", 20
  racers = [subprocess.Popen([sys.executable, "-c", RACER, base, str(races)], text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE) for _ in range(2)]
  for racer in racers:
    assert racer.stdout.readline().strip() == "ready"
  start = time.time() + 0.5
  for racer in racers:
    racer.stdin.write(f"{start}\n")
    racer.stdin.flush()
  outcomes = [dict(racer.stdout.readline().split() for _ in range(races)) for racer in racers]
  for racer in racers:
    racer.stdin.write("\n")
    racer.stdin.flush()
    assert racer.wait(timeout=60) == 0
  for race in map(str, range(races)):
    assert sorted(o[race] for o in outcomes) == ["refused", "won"], race


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
  steps = Store(workdir).checkpoints.manager.all_steps()
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
  wait_for(lambda: lock_lib.read_lock(store.lock_path) is not None, waiting, timeout=120)
  time.sleep(3)  # past the lock and config.json, into the checkpoint read
  waiting.send_signal(signal.SIGTERM)
  out, err = waiting.communicate(timeout=30)
  assert "Traceback" not in err
  assert f"stopped by signal 15 while reading checkpoint {max(steps)} in {workdir}" in out
  assert Store(workdir).checkpoints.manager.all_steps() == steps
  assert not list(epath.Path(workdir).glob("checkpoint-*.corrupt"))
