r"""The paper's sweep: d = 4 ... 45, k = 2, the reference protocol; meant for an accelerator.

    sweep run --config=experiments/paper.py --workdir=runs/paper

At d = 45 the critical n is about 626, so one configuration holds about 195k queries and a
195k x 626 logit matrix: give it a GPU or TPU and a memory budget that fits the device.
"""

from sweep.config import default_config


def get_config():
  config = default_config()
  config.dims = tuple(range(4, 46))
  config.memory_budget_mb = 16384.0
  config.label = "paper protocol (d = 4..45)"
  return config
