from sweep.config import default_config

def get_config():
  c = default_config()
  c.dims = (2, 3, 4)
  c.restarts = 2
  c.max_steps = 3000
  c.patience = 300
  c.eval_every = 25
  c.chunk_evals = 2
  c.local_sweep = 1
  c.probes_per_search = 2  # the default when these files were written
  return c
