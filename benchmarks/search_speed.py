r"""Whole-process wall time of a sweep, with a cold and then a warm compilation cache.

    python benchmarks/search_speed.py            # the d = 4 search (goal: <= 3.5 s cold, <= 2 s warm)
    python benchmarks/search_speed.py --main     # the main job, experiments/quick.py (goal: <= 40 s cold)

Each run is `sweep run` in a fresh process and a fresh workdir, as a user starts it; the
cold run gets an empty cache directory, the warm run reuses it. The authors' script takes
346 s for the d = 4 search on a 2-core CPU. Prints each run's wall time, what it compiled,
its efficiency figures and its critical n.
"""

import os
import pathlib
import subprocess
import sys
import tempfile
import time

from absl import app, flags

_MAIN = flags.DEFINE_bool("main", False, "Time the main job instead of the d = 4 search.")
_REPEATS = flags.DEFINE_integer("repeats", 1, "Cold/warm pairs to run.")

ROOT = pathlib.Path(__file__).resolve().parents[1]
D4_SEARCH = ("--config.dims=(4,)", "--config.restarts=1", "--config.local_sweep=4")


def timed_run(workdir: pathlib.Path, cache: pathlib.Path, extra) -> tuple[float, str]:
  env = dict(os.environ, SWEEP_COMPILATION_CACHE=str(cache))
  start = time.perf_counter()
  out = subprocess.run([sys.executable, "-m", "sweep.cli", "run",
                        f"--config={ROOT / 'experiments' / 'quick.py'}", f"--workdir={workdir}",
                        *extra], env=env, capture_output=True, text=True, check=True)
  return time.perf_counter() - start, out.stdout


def main(argv):
  del argv
  extra = () if _MAIN.value else D4_SEARCH
  name = "main job (experiments/quick.py)" if _MAIN.value else "d = 4 search"
  for _ in range(_REPEATS.value):
    with tempfile.TemporaryDirectory() as tmp:
      tmp = pathlib.Path(tmp)
      for label in ("cold", "warm"):
        seconds, stdout = timed_run(tmp / label, tmp / "cache", extra)
        lines = stdout.splitlines()
        summary = next(line for line in lines if line.startswith("slot occupancy"))
        table = " ".join(line.split(" (")[0] for line in lines if line.startswith("d="))
        print(f"{name}, {label} cache: {seconds:6.1f} s wall | {summary} | {table}", flush=True)


if __name__ == "__main__":
  app.run(main)
