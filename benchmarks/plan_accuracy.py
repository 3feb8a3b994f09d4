r"""Does `sweep plan --measure` predict a sweep's wall? The sweep, then the plan calibrated on it.

    python benchmarks/plan_accuracy.py [--dims=12,16,20] [--cold]

Runs `sweep run --config=experiments/paper.py --config.dims='(DIMS)'` in a fresh process and
a fresh workdir and times its whole wall, as a user starts it: with the user's compilation
cache, or with --cold none. Then `sweep plan --measure --calibrate=THAT_WORKDIR` for
the same config, in a fresh process with the same cache, which times each start shape here
and costs each d by the points that sweep probed. Prints the plan and its predicted wall
against the measured one, and the roofline's beside it (goal: within 30%). The sweep's cores
(its CPU seconds over its wall) say whether another job shared the machine: the plan's
chunks, the best of two, are timed at its quietest.
"""

import json
import os
import resource
import pathlib
import subprocess
import sys
import tempfile
import time

from absl import app, flags, logging

from sweep import compilation
from sweep import plan

_DIMS = flags.DEFINE_list("dims", ["12", "16", "20"], "one search per d")
_COLD = flags.DEFINE_bool("cold", False, "no compilation cache for the sweep and the plan")

ROOT = pathlib.Path(__file__).resolve().parents[1]


def child_cpu_seconds() -> float:
  used = resource.getrusage(resource.RUSAGE_CHILDREN)
  return used.ru_utime + used.ru_stime


def sweep(command: str, *args: str, env: dict) -> tuple[float, str]:
  """(wall seconds, stdout) of one `sweep COMMAND` process."""
  start = time.perf_counter()
  done = subprocess.run([sys.executable, "-m", "sweep.cli", command,
                         f"--config={ROOT / 'experiments' / 'paper.py'}",
                         f"--config.dims=({','.join(_DIMS.value)},)", *args],
                        env=env, capture_output=True, text=True, cwd=ROOT)
  if done.returncode:
    sys.exit(f"sweep {command} failed: {done.stderr.strip().splitlines()[-1]}")
  return time.perf_counter() - start, done.stdout


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    # Cold: no cache at all, so that the plan compiles what the sweep compiled, not loads it.
    cache = None if _COLD.value else compilation.cache_dir()
    env = dict(os.environ, SWEEP_COMPILATION_CACHE=str(cache or "off"))
    workdir = tmp / "sweep"
    cpu = child_cpu_seconds()
    measured, stdout = sweep("run", f"--workdir={workdir}", env=env)
    cores = (child_cpu_seconds() - cpu) / measured  # what it got of the machine's cores
    compiled = next(line for line in stdout.splitlines() if line.startswith("slot occupancy"))
    whose = "no" if _COLD.value else "the user's"
    print(f"sweep d={','.join(_DIMS.value)} ({whose} compilation cache): {measured:.1f} s "
          f"wall on {cores:.2f} of {os.cpu_count()} cores; {compiled.split('; ')[-1]}",
          flush=True)
    plan_seconds, stdout = sweep("plan", "--measure", f"--calibrate={workdir}", "--json", env=env)
    report = json.loads(stdout)
  print(plan.format_plan(report))
  predicted, roofline = (report[k]["wall_hours"] * 3600 for k in ("measured", "roofline"))
  print(f"plan ({plan_seconds:.1f} s): predicted {predicted:.1f} s against {measured:.1f} s "
        f"measured, ratio {predicted / measured:.2f}; at the roofline's steps {roofline:.1f} s, "
        f"ratio {roofline / measured:.2f}")


if __name__ == "__main__":
  app.run(main)
