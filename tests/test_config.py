"""Config files load without JAX: a sweep config, the ledger and the problem data are plain
data until a run validates and trains them."""

import pathlib
import subprocess
import sys

PAPER = pathlib.Path(__file__).parents[1] / "experiments" / "paper.py"
HEAVY = ("jax", "jaxlib", "optax", "flax", "orbax", "matplotlib", "scipy")


def test_the_config_module_and_an_experiment_import_no_jax():
  loaded = subprocess.run(
      [sys.executable, "-c",
       "import runpy, sys\n"
       "import sweep.config, sweep.ledger, sweep.problems\n"
       f"runpy.run_path({str(PAPER)!r})['get_config']()\n"
       f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"],
      capture_output=True, text=True, timeout=60, check=True)
  assert loaded.stdout.strip() == ""
