r"""Critical d of LIMIT-small's qrels (1000 queries x 46 documents, 2 relevant each).

    sweep fit-qrels --qrels=sweep/data/limit-small/qrels.jsonl --config=experiments/limit_small.py --workdir=runs/limit_small

The paper reports that free embeddings fit this relevance matrix exactly at d = 12. The
search runs over d with the reference protocol; several d probes and their restarts train
together.
"""

from sweep.config import default_config


def get_config():
  config = default_config()
  config.restarts = 2
  config.probes_per_search = 3
  config.local_sweep = 0
  config.label = "LIMIT-small"
  return config
