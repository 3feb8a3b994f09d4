"""Kill -9 a small sweep at random moments, resume it each time, and compare with a run that
was never interrupted.

  python benchmarks/kill_stress.py [--kills=20] [--seed=0] [--workdir=/tmp/kill_stress]

The kill points (KILL_POINTS) take turns: a random moment of the training loop (0 to 2 s
after the run's first progress line); the moment orbax's temporary checkpoint directory
appears, inside a checkpoint save (the config checkpoints after every chunk; a kill landed
inside the save when it left that directory behind); the moment results.jsonl grows, before
the checkpoint that follows every append (a single small write() is too short to hit, so the
last line is then cut in half, which is what a kill inside the append leaves, only when no
checkpoint completed after the append, so the state is one a kill can leave); the moment a
resume rewrites results.jsonl after half its lines were removed (the rebuild from the
checkpoint); and a resume after config.json was deleted. Then one resume against a checkpoint
store that does not answer: a file of the newest checkpoint is replaced by a named pipe, whose
reads block as a network store that is gone does; with store_deadline_s = 2 the run must end
by itself, in one line, and move nothing. At the end results.jsonl (without wall times) and
critical_n.csv must equal the uninterrupted run's, and the checkpoints folder must hold two
checkpoints and nothing else. Several minutes on a 2-core CPU: each resume imports JAX and
compiles again.
"""


from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

CONFIG = """from sweep.config import default_config

def get_config():
  c = default_config()
  c.dims = (2, 3)
  c.restarts = 2
  c.max_steps = 3000
  c.patience = 300
  c.eval_every = 25
  c.chunk_evals = 2
  c.local_sweep = 1
  c.checkpoint_every_s = 0.001
  return c
"""


def start(config: Path, workdir: Path) -> tuple[subprocess.Popen, threading.Event]:
  """The sweep in a subprocess, and an event set once it is in its training loop."""
  process = subprocess.Popen([sys.executable, "-m", "sweep.cli", "run", f"--config={config}",
                              f"--workdir={workdir}"], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
  looping = threading.Event()

  def watch():
    for line in process.stdout:
      if line.startswith(("chunk", "resumed")):
        looping.set()
    looping.set()  # the run ended

  threading.Thread(target=watch, daemon=True).start()
  return process, looping


def checkpoint_names(workdir: Path) -> set[str]:
  folder = workdir / "checkpoints"
  return set(os.listdir(folder)) if folder.is_dir() else set()


def saving(workdir: Path) -> bool:
  """orbax writes a checkpoint into a temporary directory and renames it when complete."""
  return any("tmp" in name for name in checkpoint_names(workdir))


def results_size(workdir: Path) -> int:
  path = workdir / "results.jsonl"
  return path.stat().st_size if path.exists() else 0


def torn(workdir: Path) -> bool:
  path = workdir / "results.jsonl"
  return path.exists() and path.stat().st_size > 0 and not path.read_text().endswith("\n")


def cut_last_line(workdir: Path) -> None:
  """Leave what a kill inside a results append leaves: the last line half written."""
  path = workdir / "results.jsonl"
  text = path.read_text()
  last = text.rstrip("\n").rsplit("\n", 1)[-1]
  path.write_text(text[:len(text) - 1 - len(last) // 2])


def wait_until(condition, process, seconds: float = 10.0) -> None:
  deadline = time.monotonic() + seconds
  while not condition() and time.monotonic() < deadline and process.poll() is None:
    time.sleep(0.0005)


def outcome(workdir: Path) -> tuple[list[dict], str]:
  records = [json.loads(line) for line in (workdir / "results.jsonl").read_text().splitlines()]
  for r in records:
    r.pop("wall_seconds")
  return (sorted(records, key=lambda r: (r["d"], r["n"], r["seed"])),
          (workdir / "critical_n.csv").read_text())


def random_moment(workdir: Path, process, rng: random.Random) -> str | None:
  time.sleep(rng.uniform(0, 2))
  return None


def inside_save(workdir: Path, process, rng: random.Random) -> str | None:
  wait_until(lambda: saving(workdir), process)
  return "landed inside a checkpoint save" if saving(workdir) else None


def inside_append(workdir: Path, process, rng: random.Random):
  """Waits for an append; returns what to do once the run is killed."""
  size, names = results_size(workdir), checkpoint_names(workdir)

  def appended():  # the checkpoints complete just before the append was seen
    nonlocal names
    names = checkpoint_names(workdir)
    return results_size(workdir) > size
  wait_until(appended, process)

  def after_kill() -> str | None:
    completed_since = {n for n in checkpoint_names(workdir) - names if "tmp" not in n}
    if results_size(workdir) > size and not completed_since:
      cut_last_line(workdir)
    return "left a half-written results line" if torn(workdir) else None
  return after_kill


def halve_results(workdir: Path) -> None:
  """Remove every other results line: the resume must rebuild them from its checkpoint."""
  path = workdir / "results.jsonl"
  if path.exists():
    path.write_text("".join(path.read_text().splitlines(keepends=True)[::2]))


def inside_rebuild(workdir: Path, process, rng: random.Random) -> str | None:
  path = workdir / "results.jsonl"
  before = path.stat().st_ino if path.exists() else None
  rewritten = lambda: (workdir / ".results.jsonl.tmp").exists() or (
      path.exists() and path.stat().st_ino != before)
  wait_until(rewritten, process, seconds=60)
  return "landed inside a results rebuild" if (workdir / ".results.jsonl.tmp").exists() else None


def delete_config_json(workdir: Path) -> None:
  (workdir / "config.json").unlink(missing_ok=True)


@dataclasses.dataclass
class KillPoint:
  """What is done to the workdir before a run starts, and how long the run lives after it
  is in its loop (or rebuilding): `wait` returns a note to count, None, or a function that
  returns one after the kill."""
  name: str
  wait: Callable
  before: Callable[[Path], None] = lambda workdir: None
  wait_for_loop: bool = True  # False: the kill point lies before the first progress line


KILL_POINTS = [
    KillPoint("a random moment of the training loop", random_moment),
    KillPoint("inside a checkpoint save", inside_save),
    KillPoint("inside a results append", inside_append),
    KillPoint("inside the rebuild of removed results lines", inside_rebuild,
              before=halve_results, wait_for_loop=False),
    KillPoint("a resume without config.json", random_moment, before=delete_config_json),
]


def unanswering_store(config: Path, workdir: Path, deadline_s: float = 2.0) -> tuple[bool, str]:
  """Resume while the newest checkpoint's driver state cannot be read (its file a named pipe
  that nobody writes: every read waits forever). (passed, what happened): the run must exit
  non-zero within its tries' deadlines, its last line saying so and no traceback, and leave
  the checkpoints as they were."""
  newest = max((n for n in checkpoint_names(workdir) if n.isdigit()), key=int)
  item = workdir / "checkpoints" / newest / "driver" / "metadata"
  aside = item.with_name("metadata.aside")
  item.rename(aside)
  os.mkfifo(item)
  before = checkpoint_names(workdir)
  started = time.monotonic()
  try:
    done = subprocess.run([sys.executable, "-m", "sweep.cli", "run", f"--config={config}",
                           f"--workdir={workdir}", f"--config.store_deadline_s={deadline_s}"],
                          capture_output=True, text=True, timeout=300)
  finally:
    item.unlink()
    aside.rename(item)
  seconds = time.monotonic() - started
  lines = done.stderr.strip().splitlines()
  passed = (done.returncode != 0 and "Traceback" not in done.stderr and bool(lines)
            and "could not be read after 3 tries" in lines[-1]
            and checkpoint_names(workdir) == before)
  return passed, f"exit {done.returncode} after {seconds:.0f} s: {lines[-1] if lines else ''}"


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--kills", type=int, default=20)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--workdir", default="/tmp/kill_stress")
  args = parser.parse_args()
  rng = random.Random(args.seed)
  root = Path(args.workdir)
  shutil.rmtree(root, ignore_errors=True)
  root.mkdir(parents=True)
  config = root / "tiny.py"
  config.write_text(CONFIG)

  reference, _ = start(config, root / "reference")
  reference.wait()
  expected = outcome(root / "reference")

  workdir = root / "killed"
  tried, notes, finished_early = 0, collections.Counter(), 0
  started = time.monotonic()
  for kill in range(args.kills):
    point = KILL_POINTS[kill % len(KILL_POINTS)]
    if workdir.exists():
      point.before(workdir)
    process, looping = start(config, workdir)
    if point.wait_for_loop:
      looping.wait(timeout=300)
    note = point.wait(workdir, process, rng)
    if process.poll() is not None:
      finished_early = args.kills - kill  # the sweep ended before this kill point
      break
    process.send_signal(signal.SIGKILL)
    process.wait()
    tried += 1
    notes[point.name] += 1
    note = note() if callable(note) else note
    if note:
      notes[note] += 1
  store_ok, store_note = unanswering_store(config, workdir)
  final, _ = start(config, workdir)
  final.wait()
  same = outcome(workdir) == expected
  tidy = sorted(checkpoint_names(workdir))
  print(f"kill points tried: {tried} (the sweep finished before {finished_early} more), "
        f"{time.monotonic() - started:.0f} s; " + "; ".join(f"{name}: {count}"
                                                            for name, count in notes.items()))
  print(f"a resume while the checkpoint store does not answer (deadline 2 s): "
        f"{'as promised' if store_ok else 'NOT as promised'}, {store_note}")
  print(f"results.jsonl and critical_n.csv equal the uninterrupted run's: {same}; "
        f"checkpoints left: {tidy}")
  return 0 if store_ok and same and len(tidy) == 2 and all(n.isdigit() for n in tidy) else 1


if __name__ == "__main__":
  sys.exit(main())
