r"""The main job: critical n of d = 2 ... 10 for k = 2 under the reference protocol.

    sweep run --config=experiments/quick.py --workdir=runs/quick

Finishes in a few minutes on a laptop CPU and ends with critical_n.csv and the figure.
d = 2 and 3 are exact geometry (critical n 3 and 4); d >= 4 is the paper's curve.
"""

from sweep.config import default_config


def get_config():
  config = default_config()
  config.dims = tuple(range(2, 11))
  # Up to three seeds per probe: single seeds sometimes stall in a local minimum (seed 42
  # misses n = 4 at d = 3, an exact-geometry case). A probe's second and third seeds train
  # only where its first fails: the same outcomes as all three, without training the seeds
  # of a point that one success already decided. The local sweep is left to the paper config.
  config.restarts = 3
  config.restarts_until_success = True
  config.local_sweep = 0
  config.label = "quick (d = 2..10)"
  return config
