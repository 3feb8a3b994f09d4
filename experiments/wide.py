r"""The paper's sweep (d = 4 ... 45, k = 2) shaped for a wide accelerator: few sequential rounds.

    sweep run --config=experiments/wide.py --workdir=runs/wide

Each search probes the 17 n nearest the paper's critical n at once (start_window = 8), four seeds
each, so a boundary within 8 of the expected one is bracketed in the first round and the
local sweep is mostly done with it; a boundary further away is galloped to with 17 points a
round and then cut into 18 parts a round. A GPU or TPU computes a step of many slots in about
the time of one, so this spends device width instead of wall time. `sweep plan` shows what
fits first.
"""

from sweep.config import default_config


def get_config():
  config = default_config()
  config.dims = tuple(range(4, 46))
  config.restarts = 4
  config.probes_per_search = 17
  config.start_window = 8
  config.local_sweep = 4
  config.max_slots = 1024
  config.memory_budget_mb = 65536.0
  config.label = "paper protocol, wide (d = 4..45)"
  return config
