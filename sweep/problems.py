"""The retrieval problems: which documents are relevant to which query.

A problem is a relevance table: row i lists the documents relevant to query i, padded with -1
where queries have fewer relevant documents than the table is wide. The top-k problem of the
paper is the table of all k-subsets of n documents. Its rows are in colex order (ordered by
the largest element first), so the queries over n documents are exactly the first C(n, k)
rows of the table built for any larger n: one table serves every n of a padded bucket.

Also the plain data that names what is trained, with no JAX: a search's Probe, a slot's
Configuration, a bucket's padded BucketShape and the static TrainSettings of the protocol.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math

import numpy as np

PAD = -1  # marks an unused entry of a relevance table
# InfoNCE as the reference script (code) and the paper (paper) write it, SigLIP's pairwise
# logistic loss (sigmoid) and a pairwise margin loss (hinge): sweep/objective.py.
LOSS_FORMS = ("code", "paper", "sigmoid", "hinge")
# What counts as a success: every query's set in its top k (topk), one score separating every
# relevant score from every other (threshold), every query's margin at least epsilon (margin).
CRITERIA = ("topk", "threshold", "margin")
MATMUL_PRECISIONS = ("highest", "high", "default")  # names of jax.lax.Precision values


def validate_problem(d: int, n: int, k: int, num_queries: int | None = None) -> None:
  """Raises a one-line ValueError naming the first bad field and its allowed range."""
  if d < 1:
    raise ValueError(f"d={d} is out of range: need d >= 1")
  if k < 1:
    raise ValueError(f"k={k} is out of range: need k >= 1")
  if n < k:
    raise ValueError(f"n={n} is out of range: need n >= k ({k})")
  if num_queries is not None and not 1 <= num_queries <= math.comb(n, k):
    raise ValueError(
        f"q={num_queries} is out of range: need 1 <= q <= C(n, k) = {math.comb(n, k)}")


def validate_table(table: np.ndarray, d: int, n: int, k: int) -> None:
  """A relevance table over n documents of width k: one-line errors like validate_problem."""
  if d < 1:
    raise ValueError(f"d={d} is out of range: need d >= 1")
  if table.ndim != 2 or table.shape[1] != k or len(table) == 0:
    raise ValueError(f"relevance table of shape {table.shape} is out of range: need "
                     f"[queries >= 1, k = {k}]")
  if table.max() >= n or table.min() < PAD or (table[:, 0] == PAD).any():
    raise ValueError(f"relevance table entries are out of range: need 0 <= index < n = {n} "
                     f"(or {PAD} as padding) and a relevant document in every row")


# Enough for every n a sweep has in flight: a table is rebuilt only when its n is new.
@functools.lru_cache(maxsize=256)
def _colex_table(n: int, k: int) -> np.ndarray:
  combos = np.array(list(itertools.combinations(range(n), k)), dtype=np.int32).reshape(-1, k)
  # np.lexsort sorts by its last key first: the largest element of each subset.
  return combos[np.lexsort(combos.T)]


def colex_subsets(n: int, k: int) -> np.ndarray:
  """All k-subsets of range(n) as an int32 table [C(n, k), k], each row sorted, colex order."""
  validate_problem(1, n, k)
  table = _colex_table(n, k)
  table.flags.writeable = False
  return table


def topk_relevance(n: int, k: int, num_queries: int | None = None, seed: int = 0) -> np.ndarray:
  """The top-k problem over n documents, optionally a seeded sample of num_queries queries.

  The sample keeps colex order, and depends on (seed, n, k) alone, so it is reproducible.
  """
  validate_problem(1, n, k, num_queries)
  table = colex_subsets(n, k)
  if num_queries is None or num_queries == len(table):
    return table
  rng = np.random.default_rng([seed, n, k])
  return table[np.sort(rng.choice(len(table), size=num_queries, replace=False))]


def config_streams(seed: int, d: int, n: int, k: int) -> tuple[np.random.Generator, np.random.Generator]:
  """Independent (query, document) random streams of one configuration: a function of
  (seed, d, n, k) alone.

  Never of a slot or batch position, so outcomes do not depend on how probes were packed.
  """
  queries, documents = np.random.SeedSequence([seed, d, n, k]).spawn(2)
  return np.random.default_rng(queries), np.random.default_rng(documents)


@dataclasses.dataclass(frozen=True)
class Probe:
  """One configuration a search asks for: a restart (seed) of a point (d, n)."""
  d: int
  n: int
  seed: int


@dataclasses.dataclass(frozen=True)
class TrainSettings:
  """The static part of the protocol; defaults are the reference's (docs/PROTOCOL.md)."""
  loss: str = "code"
  optimizer: str = "adam"
  max_steps: int = 100_000
  patience: int = 1000
  min_delta: float = 1e-5
  eval_every: int = 50
  chunk_evals: int = 20  # evaluation blocks per device call
  # Learn documents only; each query is the normalised centroid of its relevant documents
  # (the protocol of arXiv 2601.20844), instead of a free vector.
  centroid_queries: bool = False
  # Query rows per block of the loss and the evaluation (0 = automatic, objective.query_tile).
  query_tile: int = 0
  # The training matmul's precision (MATMUL_PRECISIONS); evaluation is always "highest".
  matmul_precision: str = "highest"
  criterion: str = "topk"  # CRITERIA
  criterion_epsilon: float = 0.05  # the margin criterion's epsilon
  hinge_margin: float = 0.1  # the hinge loss's margin gamma, on cosine scores
  train_bias: bool = True  # the sigmoid loss trains b (else b keeps its initial value)


@dataclasses.dataclass(frozen=True)
class Configuration:
  """One training job: the top-k problem over n documents in d dimensions.

  `num_queries` subsamples the C(n, k) queries (seeded); None takes them all. `table`, a
  relevance table over the n documents (a dataset's qrels), replaces the top-k problem;
  k is then its width, the largest number of relevant documents of a query.
  """
  d: int
  n: int
  k: int = 2
  seed: int = 42
  learning_rate: float = 0.01
  temperature: float = 0.1
  num_queries: int | None = None
  table: np.ndarray | None = dataclasses.field(default=None, compare=False, repr=False)
  # Start from the closed-form construction (sweep/construct.py) plus this much Gaussian
  # noise, instead of from noise alone: does the optimiser keep a solution it is handed?
  warm_noise: float | None = None
  # The sigmoid loss's initial t' and b (SigLIP's: t' = log 10, b = -10), per slot.
  sigmoid_log_scale: float = math.log(10)
  sigmoid_bias: float = -10.0

  def __post_init__(self):
    if self.table is None:
      validate_problem(self.d, self.n, self.k, self.num_queries)
    else:
      validate_table(self.table, self.d, self.n, self.k)
    if self.warm_noise is not None and (self.warm_noise < 0 or self.d < 2 * self.k):
      raise ValueError(f"warm_noise={self.warm_noise} at d={self.d} is out of range: need "
                       f"warm_noise >= 0 and d >= 2k = {2 * self.k} (the construction's dimension)")

  @property
  def query_count(self) -> int:
    if self.table is not None:
      return len(self.table)
    return self.num_queries or math.comb(self.n, self.k)

  def relevance(self) -> np.ndarray:
    if self.table is not None:
      return self.table
    return topk_relevance(self.n, self.k, self.num_queries, self.seed)


@dataclasses.dataclass(frozen=True)
class BucketShape:
  """The padded shape of a bucket: slots x (queries, documents, dims); width = max |R|."""
  slots: int
  queries: int
  documents: int
  dims: int
  width: int

  @classmethod
  def fitting(cls, configs, slots: int | None = None, devices: int = 1) -> "BucketShape":
    """The smallest shape holding every configuration, its slots a multiple of `devices`."""
    return cls(slots=slots or -(-len(configs) // devices) * devices,
               queries=max(c.query_count for c in configs),
               documents=max(c.n for c in configs),
               dims=max(c.d for c in configs),
               width=max(c.k for c in configs))

  def holds(self, config: Configuration) -> bool:
    return (config.query_count <= self.queries and config.n <= self.documents
            and config.d <= self.dims and config.k <= self.width)
