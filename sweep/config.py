"""The sweep config: every field, its reference default, and one-line validation.

This file is also the default `--config` of the CLI: `get_config()` returns the defaults.
"""

from __future__ import annotations

import json
import math

from ml_collections import ConfigDict

from sweep.problems import CRITERIA, LOSS_FORMS, MATMUL_PRECISIONS, TrainSettings


def default_config() -> ConfigDict:
  """Every config field with the reference protocol's values (docs/PROTOCOL.md)."""
  return ConfigDict(dict(
      dims=(4, 5, 6), k=2, restarts=1, restarts_until_success=False, seed=42, learning_rate=0.01, temperature=0.1,
      loss="code", optimizer="adam", max_steps=100_000, patience=1000, min_delta=1e-5,
      eval_every=50, num_queries=0, start_n=0, max_n=0, local_sweep=4,
      # One point in flight per search: a speculative probe is wasted whenever the pending
      # one decides the search, and on a CPU it takes cores from that one (the d = 20 search
      # took 57 s with 2, 32 s with 1). Width is asked for explicitly (experiments/wide.py).
      probes_per_search=1, start_window=0,
      max_slots=64, bucket_slots=0, chunk_evals=20, memory_budget_mb=2048.0, checkpoint_every_s=60.0,
      store_deadline_s=300.0,  # seconds one checkpoint call may wait on an unanswering store
      protocol="free", warm_noise=0.0, qrels="", qrels_sha256="", start_d=0, label="",
      query_tile=0, matmul_precision="highest",
      # Beyond the reference (docs/losses.md): the loss's own settings and the success rule.
      criterion="topk", criterion_epsilon=0.05, hinge_margin=0.1,
      sigmoid_log_scale=math.log(10), sigmoid_bias=-10.0, sigmoid_train_bias=True))


# free: learn queries and documents (the paper). centroid: learn documents only, each query
# the normalised centroid of its documents. warm: free, started from the closed-form
# construction plus warm_noise. construction: no training, the construction itself (float32).
PROTOCOLS = ("free", "centroid", "warm", "construction")


def get_config() -> ConfigDict:
  return default_config()


def _check(ok: bool, field: str, value, allowed: str) -> None:
  if not ok:
    raise ValueError(f"config.{field}={value!r} is out of range: need {allowed}")


def validate_config(config: ConfigDict) -> None:
  """One-line errors for bad values, before any work starts."""
  unknown = sorted(set(config) - set(default_config()))
  if unknown:
    raise ValueError(f"config has unknown fields {unknown}: allowed are {sorted(default_config())}")
  dims = tuple(config.dims)
  _check(len(dims) > 0, "dims", dims, "a non-empty tuple of dimensions")
  _check(all(isinstance(d, int) and d >= 1 for d in dims), "dims", dims, "every d >= 1")
  _check(len(set(dims)) == len(dims), "dims", dims, "distinct dimensions")
  for field, minimum in (("k", 1), ("restarts", 1), ("max_steps", 1), ("patience", 1),
                         ("eval_every", 1), ("probes_per_search", 1), ("max_slots", 1), ("bucket_slots", 0),
                         ("chunk_evals", 1), ("seed", 0), ("num_queries", 0),
                         ("start_n", 0), ("max_n", 0), ("local_sweep", 0), ("start_d", 0),
                         ("start_window", 0), ("query_tile", 0)):
    value = config[field]
    _check(isinstance(value, int) and value >= minimum, field, value, f"an integer >= {minimum}")
  for field, default in default_config().items():
    if isinstance(default, float):  # inf or NaN would train to nonsense (or never stop)
      value = config[field]
      _check(isinstance(value, (int, float)) and math.isfinite(value), field, value,
             "a finite number")
  for field in ("learning_rate", "temperature", "memory_budget_mb", "checkpoint_every_s",
                "store_deadline_s"):
    _check(config[field] > 0, field, config[field], "> 0")
  _check(config.min_delta >= 0, "min_delta", config.min_delta, ">= 0")
  _check(config.warm_noise >= 0, "warm_noise", config.warm_noise, ">= 0")
  _check(config.protocol in PROTOCOLS, "protocol", config.protocol, f"one of {PROTOCOLS}")
  digest = config.qrels_sha256
  _check(isinstance(digest, str) and (digest == "" or (
      config.qrels and len(digest) == 64 and set(digest) <= set("0123456789abcdef"))),
         "qrels_sha256", digest, "\"\" (set from the qrels file) or, with qrels, 64 lowercase hex "
         "digits (Relevance.sha256 of its content)")
  if config.protocol in ("warm", "construction"):
    _check(not config.qrels, "protocol", config.protocol,
           "free or centroid for a qrels fit (the construction is for top-k sets)")
    _check(min(dims) >= 2 * config.k, "dims", dims,
           f"every d >= 2k = {2 * config.k} for protocol {config.protocol!r}")
  _check(config.loss in LOSS_FORMS, "loss", config.loss, f"one of {LOSS_FORMS}")
  _check(config.criterion in CRITERIA, "criterion", config.criterion, f"one of {CRITERIA}")
  _check(config.criterion_epsilon > 0, "criterion_epsilon", config.criterion_epsilon, "> 0")
  _check(config.hinge_margin > 0, "hinge_margin", config.hinge_margin, "> 0")
  for field in ("sigmoid_train_bias", "restarts_until_success"):
    _check(isinstance(config[field], bool), field, config[field], "True or False")
  _check(config.matmul_precision in MATMUL_PRECISIONS, "matmul_precision",
         config.matmul_precision, f"one of {MATMUL_PRECISIONS}")
  _check(_is_optax_optimizer(config.optimizer), "optimizer", config.optimizer,
         "the name of an optax optimizer that takes learning_rate")
  _check(config.start_n == 0 or config.start_n > config.k, "start_n", config.start_n,
         "0 (automatic) or > k")
  _check(config.max_n == 0 or config.max_n >= max(config.start_n, config.k + 1), "max_n",
         config.max_n, "0 (automatic) or >= start_n and > k")


def _is_optax_optimizer(name) -> bool:
  """Whether optax has an optimizer of this name that takes a learning rate (optax imports
  JAX, so only a run's validation pays for it, never loading a config file)."""
  import inspect
  import optax
  factory = getattr(optax, name, None) if isinstance(name, str) else None
  return callable(factory) and "learning_rate" in inspect.signature(factory).parameters


def settings_of(config: ConfigDict) -> TrainSettings:
  return TrainSettings(loss=config.loss, optimizer=config.optimizer, max_steps=config.max_steps,
                         patience=config.patience, min_delta=config.min_delta,
                         eval_every=config.eval_every, chunk_evals=config.chunk_evals,
                         centroid_queries=config.protocol == "centroid",
                         query_tile=config.query_tile, matmul_precision=config.matmul_precision,
                         criterion=config.criterion, criterion_epsilon=config.criterion_epsilon,
                         hinge_margin=config.hinge_margin, train_bias=config.sigmoid_train_bias)


# Fields that change how a sweep runs but not what it finds; a resumed run may change them.
# qrels is where the relevance file lies; its content is bound by qrels_sha256.
RUN_ONLY_FIELDS = ("checkpoint_every_s", "label", "qrels", "store_deadline_s")


def as_stored(config: dict) -> dict:
  """The config as JSON holds it (tuples are lists there), for comparing."""
  return json.loads(json.dumps(config))


class ConfigMismatch(ValueError):
  """A workdir's config.json, checkpoint or results were made by another config."""


def refuse_other_config(workdir, previous: dict, config: dict, source: str) -> None:
  """Raise ConfigMismatch naming the fields (other than RUN_ONLY_FIELDS) where `previous` is
  not `config`."""
  config = as_stored(config)
  differ = sorted(key for key in set(previous) | set(config)
                  if key not in RUN_ONLY_FIELDS and previous.get(key) != config.get(key))
  if differ:
    values = "; ".join(f"{key} {previous.get(key)!r} in its {source}, {config.get(key)!r} in "
                       f"this run" for key in differ)
    qrels = f" (qrels {config['qrels']})" if "qrels_sha256" in differ else ""
    raise ConfigMismatch(
        f"{workdir} was made by another config: fields {', '.join(differ)} differ: "
        f"{values}{qrels} (use a new --workdir, or the same values)")
