"""Helpers shared by the test modules: tiny sweep configurations, and sweeps run through the
driver in this process or through the CLI in a subprocess."""

import json
import subprocess
import sys
import time

import jax
import numpy as np

from sweep import config as config_lib
from sweep import construct, problems
from sweep import driver as driver_lib
from sweep import trainer
from sweep.store import Store

TINY = dict(dims=(2, 3), restarts=2, max_steps=3000, patience=300, eval_every=25,
            chunk_evals=2, local_sweep=1,
            probes_per_search=2)  # several probes in flight: more buckets live at a kill
# A checkpoint after every chunk, for the tests whose kill must find one wherever it lands
# (a tiny sweep otherwise saves at its end and when a signal stops it; each save costs about
# 0.4 s, seven times the tiny sweep's own training).
EVERY_CHUNK = dict(checkpoint_every_s=0.001)


def tiny_config(**overrides):
  config = config_lib.default_config()
  config.update({**TINY, **overrides})
  return config


def write_config_file(path, **overrides):
  fields = {**TINY, **overrides}
  body = "".join(f"  c.{k} = {v!r}\n" for k, v in fields.items())
  path.write_text("from sweep.config import default_config\n\ndef get_config():\n"
                  f"  c = default_config()\n{body}  return c\n")
  return path


def sweep(*args, **kwargs):
  return subprocess.Popen([sys.executable, "-m", "sweep.cli", *args], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, **kwargs)


def refuse_non_finite(token):
  raise ValueError(f"not strict JSON: {token}")


def strict_records(workdir):
  """results.jsonl parsed as jq or JSON.parse would: NaN and Infinity are errors."""
  lines = (workdir / "results.jsonl").read_text().splitlines()
  return [json.loads(line, parse_constant=refuse_non_finite) for line in lines]


def results_without_timing(workdir):
  records = strict_records(workdir)
  for r in records:
    r.pop("wall_seconds")
  return sorted(records, key=lambda r: (r["d"], r["n"], r["seed"]))


def uninterrupted(workdir, **overrides):
  store = Store(str(workdir))
  assert driver_lib.Driver(tiny_config(**overrides), store).run(progress=lambda _: None)
  store.close()
  return results_without_timing(workdir), (workdir / "critical_n.csv").read_text()


def wait_for(predicate, process, timeout=120):
  deadline = time.monotonic() + timeout
  while not predicate():
    assert process.poll() is None, process.communicate()
    assert time.monotonic() < deadline
    time.sleep(0.05)


def curve_witness(n, k, d=None, dtype=np.float64):
  """(queries [C(n, k), d], documents [n, d]) of the closed-form d = 2k witness, zero-padded
  to d, query i for colex_subsets(n, k)[i]; built in float64 and cast to dtype, as the
  driver's construction protocol builds its embeddings."""
  d = 2 * k if d is None else d
  queries = construct.queries_for_subsets(problems.colex_subsets(n, k), n, d)
  return queries.astype(dtype), construct.documents_on_curve(n, k, d).astype(dtype)


def loss_trace(configs, shape, steps, settings=trainer.TrainSettings()):
  """(the loss of every slot after each of `steps` jitted steps [steps, slots], the host
  state after the last)."""
  slots = trainer.pack(configs, shape)
  state = jax.jit(trainer.start_optimizer, static_argnums=0)(
      settings, slots, trainer.init_state(settings, shape, configs))
  step = jax.jit(trainer.train_step, static_argnums=0)
  losses = []
  for _ in range(steps):
    state = step(settings, slots, state)
    losses.append(np.asarray(state.loss))
  return np.stack(losses), trainer.to_host(state)
