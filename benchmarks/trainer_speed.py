"""Batched trainer versus the reference's way: one configuration at a time, host loop.

    python benchmarks/trainer_speed.py [--dims=8] [--ns=22,24,...,36]

The batched side trains every configuration in one padded bucket with the whole loop on the
device (compilation included in its time). The host side trains them one after another with
one jitted update dispatched per step and the top-k evaluation on the host every
`eval_every` steps, as the reference script does. Both use the reference defaults.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from sweep import objective
from sweep import trainer

_DIMS = flags.DEFINE_integer("dims", 8, "embedding dimension d")
_NS = flags.DEFINE_list("ns", [str(n) for n in range(22, 37, 2)], "document counts n")


def host_loop(config: trainer.Configuration, settings: trainer.TrainSettings) -> bool:
  """One configuration, one dispatch per step, evaluation on the host."""
  table = config.relevance()
  params = tuple(jnp.asarray(x) for x in trainer.initial_embeddings(config))
  optimizer = optax.adam(config.learning_rate)

  @jax.jit
  def update(params, opt_state):
    loss, grads = jax.value_and_grad(lambda p: objective.infonce_loss(
        p[0], p[1], jnp.asarray(table), len(table), config.n, config.temperature))(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    params = tuple(x / jnp.linalg.norm(x, axis=1, keepdims=True) for x in params)
    return params, opt_state, loss

  opt_state, best, since_best = optimizer.init(params), np.inf, 0
  for step in range(settings.max_steps):
    params, opt_state, loss = update(params, opt_state)
    loss = float(loss)
    best, since_best = (loss, 0) if loss < best - settings.min_delta else (best, since_best + 1)
    if since_best >= settings.patience:
      return False
    if step % settings.eval_every == 0:
      queries, documents = jax.device_get(params)
      top = np.argsort(-(queries @ documents.T), axis=1)[:, :config.k]
      if all(set(t) == set(r) for t, r in zip(top, table)):
        return True
  return False


def main(argv):
  del argv
  settings = trainer.TrainSettings()
  configs = [trainer.Configuration(d=_DIMS.value, n=int(n)) for n in _NS.value]
  print(f"{len(configs)} configurations, d={_DIMS.value}, n={_NS.value}, on {jax.devices()[0].platform}")

  start = time.perf_counter()
  batched = trainer.train(configs, settings)
  batched_seconds = time.perf_counter() - start

  start = time.perf_counter()
  hosted = [host_loop(c, settings) for c in configs]
  host_seconds = time.perf_counter() - start

  print("n        " + " ".join(f"{c.n:>5}" for c in configs))
  print("batched  " + " ".join(f"{str(r['success']):>5}" for r in batched))
  print("host     " + " ".join(f"{str(s):>5}" for s in hosted))
  print(f"batched, whole loop on the device: {batched_seconds:7.2f} s (compilation included)")
  print(f"one at a time, host loop:          {host_seconds:7.2f} s")
  print(f"speed-up:                          {host_seconds / batched_seconds:7.1f}x")


if __name__ == "__main__":
  app.run(main)
