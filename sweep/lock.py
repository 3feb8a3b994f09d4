"""One writer per workdir: a flock on a local workdir, a conditional lease on an object store.

Local: the workdir directory itself is held with flock. The kernel drops it when its process
dies, so a lock left by a killed run is simply taken over, and no file a user might delete
holds it; WORKDIR/lock.json only names the holder.

Object store (gs://): WORKDIR/lock.json is a lease. It is created only if absent and
renewed, taken over or released only if unchanged since it was read: the store's own
generation preconditions (ifGenerationMatch=0, then =<generation read>) decide, so of two runs
that start at once exactly one holds it. The holder renews it every LEASE_SECONDS / 4; a lease
is taken over when the store's clock (the Date of its answer) is LEASE_SECONDS past the
lease's last write (the store's `updated` time), so no two hosts' clocks are ever compared,
or when its holder is a dead process of this host. Releasing overwrites it with a released
record under the same precondition.
"""

from __future__ import annotations

import dataclasses
import email.utils
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from datetime import datetime
from urllib.parse import quote

from etils import epath

LOCK_NAME = "lock.json"
LEASE_SECONDS = 120.0  # a lease not renewed for this long, by the store's clock, is taken over
_OBJECT_STORES = ("gs://", "s3://")


def is_object_store(path) -> bool:
  return str(path).startswith(_OBJECT_STORES)


class WorkdirLocked(RuntimeError):
  """Another run holds the workdir."""


def holder_text(holder: dict) -> str:
  if not holder:
    return f"its {LOCK_NAME} was removed, so its holder is unknown"
  started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(holder.get("started", 0)))
  text = f"pid {holder.get('pid')} on {holder.get('host')}, started {started}"
  if holder.get("lease_age_s") is not None:
    text += f", lease renewed {holder['lease_age_s']:.0f} s ago by the store's clock"
  return text


def _process_alive(pid) -> bool:
  try:
    os.kill(int(pid), 0)
  except ProcessLookupError:
    return False
  except (PermissionError, TypeError, ValueError):
    return True
  return True


def holder_gone(holder: dict, lease_seconds: float = LEASE_SECONDS) -> bool:
  """A holder that cannot be running: its lease ran out, or its process on this host died."""
  age = holder.get("lease_age_s")
  if age is not None and age > lease_seconds:
    return True
  return holder.get("host") == socket.gethostname() and not _process_alive(holder.get("pid"))


# -- the lease object ---------------------------------------------------------------------


class LeaseChanged(RuntimeError):
  """The lease object was written by someone else since this process read it."""


@dataclasses.dataclass
class _LeaseObject:
  """WORKDIR/lock.json on an object store, read and written with generation preconditions
  through the store's JSON API (gcsfs's session, so its credentials and emulator settings)."""
  path: epath.Path

  def __post_init__(self):
    self.fs = epath.backend.fsspec_backend.fs(str(self.path))
    bucket, _, self.key = str(self.path).removeprefix("gs://").partition("/")
    self.objects = f"{self.fs._location}/storage/v1/b/{quote(bucket, safe='')}/o"
    self.uploads = f"{self.fs._location}/upload/storage/v1/b/{quote(bucket, safe='')}/o"

  def read(self) -> tuple[int, dict | None, float] | None:
    """(generation, holder or None when released, seconds since it was written by the
    store's clock), or None when there is no lease object."""
    try:
      headers, body = self.fs.call("GET", f"{self.objects}/{quote(self.key, safe='')}")
      meta = json.loads(body)
      _, content = self.fs.call("GET", f"{self.objects}/{quote(self.key, safe='')}",
                                alt="media", generation=meta["generation"])
    except FileNotFoundError:
      return None
    now = email.utils.parsedate_to_datetime(headers["Date"])
    written = datetime.fromisoformat(meta["updated"].replace("Z", "+00:00"))
    try:
      holder = json.loads(content)
    except json.JSONDecodeError:
      holder = {}  # written by something else: nobody's, once it expires
    age = max(0.0, (now - written).total_seconds())  # the Date header counts whole seconds
    return int(meta["generation"]), (None if holder.get("released") else holder), age

  def write(self, record: dict, generation: int) -> int:
    """Write `record` if the object's generation is still `generation` (0: absent); the new
    generation, or LeaseChanged."""
    body = (f"--==0==\nContent-Type: application/json; charset=UTF-8\n\n"
            f"{json.dumps({'name': self.key})}\n--==0==\nContent-Type: application/json\n\n"
            f"{json.dumps(record)}\n--==0==--").encode()
    try:
      written = self.fs.call("POST", self.uploads, uploadType="multipart",
                             headers={"Content-Type": 'multipart/related; boundary="==0=="'},
                             data=body, json_out=True, ifGenerationMatch=str(generation))
    except (FileExistsError, FileNotFoundError) as error:  # 412: the precondition failed
      raise LeaseChanged(str(error)) from None
    return int(written["generation"])


def read_lock(path) -> dict | None:
  """The holder recorded in a lock file or lease (a lease's with `lease_age_s`), or None."""
  path = epath.Path(path)
  if is_object_store(path):
    lease = _LeaseObject(path).read()
    if lease is None or lease[1] is None:
      return None
    return {**lease[1], "lease_age_s": lease[2]}
  try:
    text = path.read_text()
  except FileNotFoundError:
    return None
  try:
    return json.loads(text) if text.strip() else None
  except json.JSONDecodeError:
    return None  # half-written by a killed run: holds nothing


# -- the lock -----------------------------------------------------------------------------


@dataclasses.dataclass
class WorkdirLock:
  """One writer per workdir (see the module docstring); `lost` turns True when another run
  took a lease over, and the holder must stop writing."""
  path: epath.Path
  lease_seconds: float = LEASE_SECONDS
  lost: bool = False
  _record: dict = dataclasses.field(default_factory=dict)
  _directory: int | None = None  # the flocked descriptor of a local workdir
  _lease: _LeaseObject | None = None
  _generation: int = 0
  _stop: threading.Event = dataclasses.field(default_factory=threading.Event)
  _renewer: threading.Thread | None = None

  def acquire(self) -> str | None:
    """Hold the lock, or raise WorkdirLocked naming the holder. Returns a note when a lock
    left by a run that is gone was taken over."""
    self.path = epath.Path(self.path)
    self._record = dict(pid=os.getpid(), host=socket.gethostname(), started=time.time(),
                        token=uuid.uuid4().hex)
    if is_object_store(self.path):
      return self._acquire_lease()
    return self._acquire_flock()

  def _refuse(self, holder: dict | None):
    raise WorkdirLocked(f"{self.path.parent} is in use by another run "
                        f"({holder_text(holder or {})}); wait for it to finish or stop it "
                        f"(lock {self.path})")

  def _acquire_flock(self) -> str | None:
    self.path.parent.mkdir(parents=True, exist_ok=True)
    previous = read_lock(self.path)
    directory = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
      fcntl.flock(directory, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      os.close(directory)
      self._refuse(read_lock(self.path))
    self._directory = directory
    temporary = self.path.parent / f".{self.path.name}.tmp"  # replaced at once, never torn
    temporary.write_text(json.dumps(self._record) + "\n")
    temporary.replace(self.path)
    return _taken_over(previous)

  def _acquire_lease(self) -> str | None:
    self._lease = _LeaseObject(self.path)
    previous = None
    try:
      self._generation = self._lease.write(self._record, 0)
    except LeaseChanged:  # a lease exists: take it only if it is released or gone
      generation, previous, age = self._lease.read() or (0, None, 0.0)
      if previous is not None:
        previous = {**previous, "lease_age_s": age}
        if not holder_gone(previous, self.lease_seconds):
          self._refuse(previous)
      try:
        self._generation = self._lease.write(self._record, generation)
      except LeaseChanged:  # another run took it first
        self._refuse(read_lock(self.path))
    self._renewer = threading.Thread(target=self._renew, daemon=True)
    self._renewer.start()
    return _taken_over(previous)

  def _renew(self) -> None:
    while not self._stop.wait(self.lease_seconds / 4):
      try:
        self._generation = self._lease.write(self._record, self._generation)
      except LeaseChanged:
        current = read_lock(self.path)
        taker = "was deleted" if current is None else f"was taken over by {holder_text(current)}"
        logging.error("the lease %s %s; stopping", self.path, taker)
        self.lost = True
        return
      except OSError as error:  # a hiccup: the lease lasts 4 renewals
        logging.warning("could not renew the lease %s: %s", self.path, error)

  def release(self) -> None:
    if self._renewer is not None:
      self._stop.set()
      self._renewer.join()
      if not self.lost:
        try:
          self._lease.write(dict(self._record, released=True), self._generation)
        except LeaseChanged:  # taken over meanwhile: the new holder's lease stays
          pass
    if self._directory is not None:
      current = read_lock(self.path)
      if current and current.get("token") == self._record["token"]:
        self.path.unlink()  # before the flock goes: the next holder writes its own
      os.close(self._directory)
      self._directory = None


def _taken_over(previous: dict | None) -> str | None:
  if previous:
    return f"took over the lock of {holder_text(previous)}, which is no longer running"
  return None
