r"""Is the limit the loss? Critical n of d = 4 ... 12, k = 2, for four (loss, criterion) pairs.

    for v in code_topk sigmoid_topk hinge_topk sigmoid_threshold; do
      sweep run --config=experiments/losses.py:$v --workdir=runs/losses/$v
    done
    sweep plot --workdir=runs/losses/code_topk --workdir=runs/losses/sigmoid_topk \
      --workdir=runs/losses/hinge_topk --workdir=runs/losses/sigmoid_threshold \
      --out=runs/losses/critical_n

code_topk: the paper's protocol (InfoNCE, tau 0.1, per-query top-k). sigmoid: SigLIP's
pairwise logistic loss (arXiv 2303.15343), t' = log 10 and b = -10 trained with the
embeddings, each query's positives and negatives averaged apart. hinge: the mean over every
(relevant, other) pair of max(0, 0.1 - (s_rel - s_other)). threshold: one score separates
every relevant score of every query from every other score. Adam, unit rows, patience and
steps are the paper's for all four. Every search stops at max_n = 64, so a dimension that
reaches it reads "at least 64"; geometry allows any n from d = 2k = 4.
"""

from sweep.config import default_config

VARIANTS = {
    "code_topk": dict(loss="code", criterion="topk", label="InfoNCE (code), top-k"),
    "sigmoid_topk": dict(loss="sigmoid", criterion="topk", label="sigmoid, top-k"),
    "hinge_topk": dict(loss="hinge", criterion="topk", label="hinge, top-k"),
    "sigmoid_threshold": dict(loss="sigmoid", criterion="threshold", label="sigmoid, threshold"),
}


def get_config(variant="code_topk"):
  if variant not in VARIANTS:
    raise ValueError(f"variant={variant!r} is out of range: need one of {tuple(VARIANTS)}")
  config = default_config()
  config.dims = tuple(range(4, 13))
  config.max_n = 64
  config.local_sweep = 0
  config.update(VARIANTS[variant])
  return config
