"""One slot's training steps alone, compiled as one jitted loop: what the benchmarks time as
"the step" (no evaluation, no chunk, no host work)."""

import jax

from sweep import trainer


def compiled_steps(settings, config, shape, steps: int):
  """(run, compiled): `steps` trainer steps of `config` in one slot of `shape`, compiled and
  run once; run() runs them again from the same start and waits for them."""
  slots = trainer.place(trainer.pack([config], shape))
  state = jax.jit(trainer.start_optimizer, static_argnums=0)(
      settings, slots, trainer.place(trainer.init_state(settings, shape, [config])))
  compiled = jax.jit(lambda slots, state: jax.lax.fori_loop(
      0, steps, lambda _, s: trainer.train_step(settings, slots, s), state)
  ).lower(slots, state).compile()
  jax.block_until_ready(compiled(slots, state))
  return (lambda: jax.block_until_ready(compiled(slots, state))), compiled
