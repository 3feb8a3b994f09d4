r"""The engine against a plain PyTorch loop of the same protocol, side by side in one run.

    python benchmarks/versus_torch.py [--torch_python=PATH] [--jobs=d12,d20,main]

Each job runs in fresh processes, one after another, on the same machine:
  d12   the d = 12 search: `sweep run --config=experiments/paper.py --config.dims='(12,)'
        --config.restarts=1 --config.local_sweep=0`, against torch_loop.py --dims=12;
  d20   the same at d = 20;
  main  the main job (experiments/quick.py, d = 2 ... 10, three seeds a probe), against the
        loop's searches for d = 4 ... 10 one after another (d = 2 and 3 are exact geometry,
        which the loop does not know).
The engine runs twice, with an empty compilation cache (cold) and again with it (warm);
the loop once. Prints each run's wall time and critical n, and the loop's wall over the
engine's. --torch_python is an interpreter with torch installed (the `bench` extra); it
defaults to this one.
"""

import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time

from absl import app, flags

_TORCH_PYTHON = flags.DEFINE_string("torch_python", sys.executable,
                                    "a Python with torch installed (the bench extra)")
_JOBS = flags.DEFINE_list("jobs", ["d12", "d20", "main"], "which comparisons to run")
_THREADS = flags.DEFINE_integer("threads", 0, "the loop's torch threads (0: torch's default)")

ROOT = pathlib.Path(__file__).resolve().parents[1]
SEARCH = ("--config=experiments/paper.py", "--config.restarts=1", "--config.local_sweep=0")
JOBS = {  # name: (the engine's flags, the loop's dims)
    "d12": ((*SEARCH, "--config.dims=(12,)"), "12"),
    "d20": ((*SEARCH, "--config.dims=(20,)"), "20"),
    "main": (("--config=experiments/quick.py",), "4,5,6,7,8,9,10"),
}


def timed(command, env=None) -> tuple[float, str]:
  start = time.perf_counter()
  done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
  return time.perf_counter() - start, done.stdout


def engine(flags_, workdir: pathlib.Path, cache: pathlib.Path) -> tuple[float, str]:
  """(wall seconds, "d=..: n, ...") of one `sweep run` process."""
  env = dict(os.environ, SWEEP_COMPILATION_CACHE=str(cache))
  seconds, stdout = timed([sys.executable, "-m", "sweep.cli", "run", f"--workdir={workdir}",
                           *flags_], env)
  found = re.findall(r"^d=(\d+): critical n = (\S+)", stdout, re.M)
  return seconds, ", ".join(f"d={d}: {n}" for d, n in found)


def loop(dims: str) -> tuple[float, str]:
  """(wall seconds, "d=..: n, ...") of the PyTorch loop's searches, one after another."""
  seconds, stdout = timed([_TORCH_PYTHON.value, "benchmarks/torch_loop.py", f"--dims={dims}",
                           f"--threads={_THREADS.value}", "--json"])
  rows = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
  return seconds, ", ".join(f"d={r['d']}: {r['critical_n']}" for r in rows)


def main(argv):
  del argv
  print(f"{os.cpu_count()} CPU(s), {time.strftime('%Y-%m-%d %H:%M')}")
  for name in _JOBS.value:
    flags_, dims = JOBS[name]
    with tempfile.TemporaryDirectory() as tmp:
      tmp = pathlib.Path(tmp)
      cold = engine(flags_, tmp / "cold", tmp / "cache")
      warm = engine(flags_, tmp / "warm", tmp / "cache")
    baseline = loop(dims)
    for label, (seconds, found) in (("engine, cold cache", cold), ("engine, warm cache", warm),
                                    ("PyTorch loop", baseline)):
      print(f"{name} {label:>18}: {seconds:7.1f} s | {found}")
    print(f"{name} loop / engine: {baseline[0] / cold[0]:.1f}x cold, "
          f"{baseline[0] / warm[0]:.1f}x warm", flush=True)


if __name__ == "__main__":
  app.run(main)
