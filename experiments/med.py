r"""The minimal embeddable dimension d(n) of the complete k-subset family: the critical d at
n = 10, 20, 40, 80 (k = 2), for InfoNCE and the sigmoid loss.

    for loss in code sigmoid; do
      for n in 10 20 40 80; do
        sweep fit-qrels --config=experiments/med.py:$loss --qrels=all-subsets:n=$n,k=2 \
          --workdir=runs/med/$loss-n$n
      done
    done

Each fit searches d for one relevance matrix, every pair of n documents a query's relevant
set, under the paper's protocol otherwise (top-k criterion). critical_d.json holds the
trained answer beside the exact one: geometry needs d = 4 = 2k for every n >= 5 (the
trigonometric moment curve holds all pairs; no d = 3 polytope does).
"""

from sweep.config import default_config

LOSSES = ("code", "sigmoid")


def get_config(loss="code"):
  if loss not in LOSSES:
    raise ValueError(f"loss={loss!r} is out of range: need one of {LOSSES}")
  config = default_config()
  config.loss = loss
  config.local_sweep = 1
  config.label = f"{loss}, all pairs"
  return config
