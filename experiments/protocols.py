r"""Is the limit geometry or optimisation? d = 4 ... 12, k = 2, under four protocols.

    for p in free free_t001 centroid construction; do
      sweep run --config=experiments/protocols.py:$p --workdir=runs/protocols/$p
    done
    sweep plot --workdir=runs/protocols/free --workdir=runs/protocols/free_t001 \
      --workdir=runs/protocols/centroid --workdir=runs/protocols/construction \
      --out=runs/protocols/critical_n

free: the paper's protocol. free_t001: the same at temperature 0.01. centroid: documents
learned, each query the normalised centroid of its two documents (arXiv 2601.20844).
construction: no training, the closed-form d = 2k witness evaluated in float32. Every
search stops at max_n = 64, so a dimension that reaches it reads "at least 64".
"""

from sweep.config import default_config

VARIANTS = {
    "free": dict(protocol="free", label="free (paper protocol, tau 0.1)"),
    "free_t001": dict(protocol="free", temperature=0.01, label="free, tau 0.01"),
    "centroid": dict(protocol="centroid", label="centroid queries"),
    "construction": dict(protocol="construction", label="construction (float32)"),
}


def get_config(variant="free"):
  config = default_config()
  config.dims = tuple(range(4, 13))
  config.max_n = 64
  config.local_sweep = 0
  config.update(VARIANTS[variant])
  return config
