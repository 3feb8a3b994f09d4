"""Start-up: each command imports only what it uses. `sweep status` reads files, so it loads
none of JAX, the checkpoint libraries, scipy, networkx or matplotlib (together seconds of
start-up); the run, plan, geometry and plot commands import theirs when they start."""

import json
import subprocess
import sys

import pytest

from sweep import formats

HEAVY = ("jax", "jaxlib", "optax", "flax", "flax.linen", "orbax", "orbax.checkpoint",
         "tensorstore", "scipy", "networkx", "matplotlib")


def _row(**cells) -> dict:
  return {**dict.fromkeys(formats.CRITICAL_N_COLUMNS), **cells}


def _record(n: int, success: bool) -> dict:
  return {"d": 2, "n": n, "k": 2, "seed": 0, "success": success,
          "stop_reason": "converged" if success else "max_steps", "stop_step": 10}


@pytest.fixture
def workdir(tmp_path):
  """A finished-looking workdir written by hand: no run, no JAX, no checkpoints."""
  (tmp_path / "config.json").write_text(json.dumps({"config": {"dims": [2, 3], "k": 2}}))
  (tmp_path / "results.jsonl").write_text(
      "".join(json.dumps(r) + "\n" for r in (_record(3, True), _record(4, False))))
  (tmp_path / "critical_n.csv").write_text(formats.critical_n_csv([
      _row(d=2, k=2, critical_n=3, max_success_n=3, lo=3, hi=4, done=True, probes=2,
           critical_n_certified=3, geometric_critical_n=3, status="measured"),
      _row(d=3, k=2, max_success_n=5, lo=5, done=False, probes=1, geometric_critical_n=6,
           status="open")]))
  (tmp_path / "run_stats.json").write_text(
      json.dumps({"slot_occupancy": 0.5, "padding_efficiency": 0.25}))
  return tmp_path


def _status(*flags: str) -> tuple[str, list[str]]:
  """`sweep status FLAGS` in a fresh interpreter, as the console script runs it: what it
  printed, and which of HEAVY it had imported by the end."""
  program = (
      "import sys\n"
      "from sweep import cli\n"
      f"sys.argv = ['sweep', 'status', *{list(flags)!r}]\n"
      "try:\n"
      "  cli.run_main()\n"
      "except SystemExit as exit:\n"
      "  assert exit.code in (None, 0), exit.code\n"
      f"print('loaded:', ','.join(m for m in {HEAVY!r} if m in sys.modules))\n")
  done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                        timeout=120)
  assert done.returncode == 0, done.stderr
  *printed, loaded = done.stdout.rstrip("\n").split("\n")
  assert loaded.startswith("loaded:"), done.stdout
  return "\n".join(printed), [m for m in loaded.removeprefix("loaded:").strip().split(",") if m]


def test_status_imports_no_jax_checkpoints_scipy_or_matplotlib(workdir):
  printed, loaded = _status(f"--workdir={workdir}")
  assert f"{workdir}: 2 configurations finished" in printed
  assert "critical n = 3" in printed and "critical n in [5, ?]" in printed
  assert "slot occupancy 50%, padding efficiency 25%" in printed
  assert loaded == []


def test_status_as_json_imports_none_of_them_either(workdir):
  printed, loaded = _status(f"--workdir={workdir}", "--json")
  status = json.loads(printed)
  assert status["configurations_finished"] == 2 and status["lock"] is None
  assert [row["critical_n"] for row in status["searches"]] == [3, None]
  assert loaded == []
