"""Batched free-embedding training: many (d, n, seed) configurations in one compiled program.

Each configuration occupies a slot of a bucket padded to (queries, documents, dims). Padded
queries carry no loss, padded documents never enter a softmax or top-k, padded dimensions
stay exactly zero. One jitted call runs a chunk: up to `chunk_evals` blocks of `eval_every`
steps with an evaluation after each block, entirely on the device. Every slot stops on its
own (success, plateau, step limit, non-finite state) and is frozen from then on.

Static settings (`TrainSettings`, shapes) are jit arguments; per-slot values (`Slots`) are
traced arrays, so one compiled program serves every batch of a bucket shape.
"""

from __future__ import annotations

import enum
import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.experimental import multihost_utils

from sweep import certify, construct, objective, problems
from sweep.problems import BucketShape, Configuration, TrainSettings


class StopReason(enum.IntEnum):
  RUNNING = 0
  SUCCESS = 1  # an evaluation reached top-k accuracy 1.0
  PLATEAU = 2  # the loss did not improve by min_delta for `patience` steps
  MAX_STEPS = 3
  # The loss, a real row or the optimizer state became NaN or inf, or a real row lost its
  # unit norm (it overflowed or vanished in the re-normalisation): nothing was measured,
  # never a silent success or failure.
  NONFINITE = 4
  EMPTY = 5  # the slot holds no configuration


def slot_optimizer(settings: TrainSettings, learning_rate) -> optax.GradientTransformation:
  """The optax optimizer named by the settings (config validates the name), its learning rate
  kept in its state so that each slot has its own."""
  return optax.inject_hyperparams(getattr(optax, settings.optimizer))(learning_rate=learning_rate)


@struct.dataclass
class Slots:
  """Per-slot traced values, leading axis = slot."""
  relevance: jax.Array      # int32 [B, queries, width], -1 padded
  num_queries: jax.Array    # int32 [B]; 0 marks an empty slot
  num_documents: jax.Array  # int32 [B]
  dims: jax.Array           # int32 [B]
  learning_rate: jax.Array  # float32 [B]
  temperature: jax.Array    # float32 [B]


@struct.dataclass
class TrainState:
  """Everything that evolves; a pytree that checkpoints and shards as it is."""
  queries: jax.Array      # float32 [B, queries, dims]
  documents: jax.Array    # float32 [B, documents, dims]
  opt_state: optax.OptState  # zeros until the slot's first chunk initialises it on the device
  step: jax.Array         # int32 [B], updates taken; frozen at the stop
  loss: jax.Array         # float32 [B], loss of the last update
  best_loss: jax.Array
  best_step: jax.Array    # step of the last improvement by more than min_delta
  accuracy: jax.Array     # float32 [B], at the last evaluation
  max_accuracy: jax.Array
  margin: jax.Array       # float32 [B], the criterion's margin at the last evaluation
  stop_reason: jax.Array  # int32 [B], a StopReason
  log_scale: jax.Array    # float32 [B], the sigmoid loss's t' (its logits scale by exp(t'))
  bias: jax.Array         # float32 [B], the sigmoid loss's b


def pack(configs, shape: BucketShape) -> Slots:
  """Host-side: lay configurations into the slots of `shape`; None and unused slots are empty."""
  if len(configs) > shape.slots:
    raise ValueError(f"{len(configs)} configurations do not fit {shape.slots} slots")
  for config in configs:
    if config is not None and not shape.holds(config):
      raise ValueError(f"{config} does not fit the bucket {shape}")
  relevance = np.full((shape.slots, shape.queries, shape.width), problems.PAD, np.int32)
  num_queries, num_documents, dims = (np.zeros(shape.slots, np.int32) for _ in range(3))
  learning_rate, temperature = np.ones(shape.slots, np.float32), np.ones(shape.slots, np.float32)
  for i, c in enumerate(configs):
    if c is None:
      continue
    table = c.relevance()
    relevance[i, :len(table), :table.shape[1]] = table
    num_queries[i], num_documents[i], dims[i] = len(table), c.n, c.d
    learning_rate[i], temperature[i] = c.learning_rate, c.temperature
  return Slots(relevance, num_queries, num_documents, dims, learning_rate, temperature)


# ---------------------------------------------------------------------------------------
# Initialisation, on the host: standard normal rows, L2-normalised, zero outside the real
# block. No program is compiled for it, and moving slots between buckets is a plain gather.
# ---------------------------------------------------------------------------------------

def _unit_rows(x):
  """(x with every row scaled to unit norm, [rows] whether the row had a direction to keep).

  A row whose norm is 0, inf (x * x overflowed) or NaN has none: it comes out as zeros, and
  its flag is False, so that a caller can tell a padded row from a real one that broke.
  """
  xp = jnp if isinstance(x, jax.Array) else np
  norm = xp.linalg.norm(x, axis=-1, keepdims=True)
  usable = (norm > 0) & xp.isfinite(norm)
  return xp.where(usable, x / xp.where(usable, norm, 1.0), 0.0), usable[..., 0]


def _centroids(relevance, documents):
  """(each query as the normalised mean of its relevant documents, [queries] whether that
  mean had a direction: _unit_rows); padded queries come out as zeros."""
  xp = jnp if isinstance(documents, jax.Array) else np
  relevant = xp.where((relevance >= 0)[..., None], documents[xp.maximum(relevance, 0)], 0.0)
  return _unit_rows(relevant.sum(axis=1))


def initial_embeddings(config: Configuration, centroid_queries: bool = False):
  """(queries [q, d], documents [n, d]) float32 of a fresh configuration, unpadded.

  Drawn by numpy from (seed, d, n, k) alone, so a configuration starts the same in any
  bucket, slot or run. A warm start adds the noise to the closed-form construction.
  """
  query_stream, document_stream = problems.config_streams(config.seed, config.d, config.n, config.k)
  table = config.relevance()
  queries = query_stream.standard_normal((len(table), config.d))
  documents = document_stream.standard_normal((config.n, config.d))
  if config.warm_noise is not None:
    queries = construct.queries_for_subsets(table, config.n, config.d) + config.warm_noise * queries
    documents = construct.documents_on_curve(config.n, config.k, config.d) + config.warm_noise * documents
  # A row without a direction (a huge warm_noise overflows its norm) starts as zeros, which
  # the chunk's first check stops as NONFINITE.
  with np.errstate(over="ignore", invalid="ignore"):
    documents = _unit_rows(documents)[0]
    queries = (_centroids(table, documents) if centroid_queries else _unit_rows(queries))[0]
  return queries.astype(np.float32), documents.astype(np.float32)


def trained_params(settings: TrainSettings, state) -> dict:
  """What the optimizer trains, by train-state field: the embeddings, and the sigmoid loss's
  t' and b."""
  trained = ("queries", "documents") + (("log_scale", "bias") if settings.loss == "sigmoid" else ())
  return {name: getattr(state, name) for name in trained}


@functools.cache
def _opt_state_structure(settings: TrainSettings, shape: BucketShape):
  """The optimizer state's shapes and dtypes for a bucket, traced once per bucket shape."""
  rows = lambda r: jax.ShapeDtypeStruct((shape.slots, r, shape.dims), jnp.float32)
  per_slot = jax.ShapeDtypeStruct((shape.slots,), jnp.float32)
  fields = types.SimpleNamespace(queries=rows(shape.queries), documents=rows(shape.documents),
                                 log_scale=per_slot, bias=per_slot)
  return jax.eval_shape(jax.vmap(lambda p, lr: slot_optimizer(settings, lr).init(p)),
                        trained_params(settings, fields), per_slot)


def _opt_state_zeros(settings: TrainSettings, shape: BucketShape):
  """Zeros shaped like the optimizer state of a bucket (its values are set on the device)."""
  return jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), _opt_state_structure(settings, shape))


def init_state(settings: TrainSettings, shape: BucketShape, configs, previous: TrainState | None = None,
               source=None) -> TrainState:
  """Host-side state of `shape`: slot j continues slot source[j] of `previous` where
  source[j] >= 0, else starts configs[j] fresh (None: an empty slot).

  This is how finished slots take the next probes and how a bucket grows or shrinks while its
  running slots go on. A moved slot only gains or loses zero padding (embeddings, optimizer
  moments), which padded dimensions, documents and queries hold anyway, so it trains on
  unchanged.
  """
  configs = list(configs) + [None] * (shape.slots - len(configs))
  source = np.full(shape.slots, -1) if source is None else np.asarray(source)
  fresh = TrainState(
      queries=np.zeros((shape.slots, shape.queries, shape.dims), np.float32),
      documents=np.zeros((shape.slots, shape.documents, shape.dims), np.float32),
      opt_state=_opt_state_zeros(settings, shape), step=np.zeros(shape.slots, np.int32),
      loss=np.full(shape.slots, np.inf, np.float32), best_loss=np.full(shape.slots, np.inf, np.float32),
      best_step=np.zeros(shape.slots, np.int32), accuracy=np.zeros(shape.slots, np.float32),
      max_accuracy=np.zeros(shape.slots, np.float32),
      margin=np.full(shape.slots, -np.inf, np.float32),
      stop_reason=np.full(shape.slots, StopReason.EMPTY, np.int32),
      log_scale=np.zeros(shape.slots, np.float32), bias=np.zeros(shape.slots, np.float32))
  for j, config in enumerate(configs):
    if config is not None and source[j] < 0:
      queries, documents = initial_embeddings(config, settings.centroid_queries)
      fresh.queries[j, :len(queries), :config.d] = queries
      fresh.documents[j, :config.n, :config.d] = documents
      fresh.stop_reason[j] = StopReason.RUNNING
      fresh.log_scale[j], fresh.bias[j] = config.sigmoid_log_scale, config.sigmoid_bias
  moves = np.flatnonzero(source >= 0)
  if not len(moves):
    return fresh

  def move(new, old):
    # Crop what a smaller bucket drops (zeros: the moved configurations fit it), pad the rest.
    old = np.asarray(old)[(source[moves],) + tuple(slice(0, a) for a in new.shape[1:])]
    new[moves] = np.pad(old, [(0, 0)] + [(0, a - b) for a, b in zip(new.shape[1:], old.shape[1:])])
    return new

  return jax.tree.map(move, fresh, previous)


# ---------------------------------------------------------------------------------------
# One step of one slot: loss and gradient, update, re-normalise, stopping bookkeeping.
# ---------------------------------------------------------------------------------------

def slot_loss(settings: TrainSettings, slot: Slots, trained: dict):
  """The configured loss of one slot's trained parameters (`trained_params`)."""
  queries, documents = trained["queries"], trained["documents"]
  if settings.centroid_queries:
    queries = _centroids(slot.relevance, documents)[0]
  problem = (queries, documents, slot.relevance, slot.num_queries, slot.num_documents)
  blocks = dict(tile=settings.query_tile, precision=settings.matmul_precision)
  if settings.loss == "sigmoid":
    return objective.sigmoid_loss(*problem, trained["log_scale"], trained["bias"], **blocks)
  if settings.loss == "hinge":
    return objective.hinge_loss(*problem, settings.hinge_margin, **blocks)
  return objective.infonce_loss(*problem, slot.temperature, settings.loss, **blocks)


def _real_rows(flags, count):
  """[rows] flags, True on padded rows (at and past `count`), which never count."""
  return flags | (jnp.arange(flags.shape[0]) >= count)


def _slot_step(settings: TrainSettings, slot: Slots, state: TrainState) -> TrainState:
  trained = trained_params(settings, state)
  loss, grads = jax.value_and_grad(lambda p: slot_loss(settings, slot, p))(trained)
  if "bias" in grads and not settings.train_bias:
    grads["bias"] = jnp.zeros_like(grads["bias"])  # Adam moves nothing without a gradient
  optimizer = slot_optimizer(settings, slot.learning_rate)
  updates, opt_state = optimizer.update(grads, state.opt_state, trained)
  updated = optax.apply_updates(trained, updates)
  dim_mask = jnp.arange(state.queries.shape[-1]) < slot.dims
  # The mask keeps padded dimensions exactly zero whatever the optimizer does.
  queries, queries_ok = _unit_rows(jnp.where(dim_mask, updated["queries"], 0.0))
  documents, documents_ok = _unit_rows(jnp.where(dim_mask, updated["documents"], 0.0))
  if settings.centroid_queries:
    queries, queries_ok = _centroids(slot.relevance, documents)

  running = state.stop_reason == StopReason.RUNNING
  # A real row with a NaN or inf entry, or whose norm overflowed or vanished, would be zeroed
  # by the re-normalisation and train on at a finite loss, ending as a quiet plateau; the
  # norms are computed anyway, so this check costs a reduction over rows, not over entries.
  finite = (jnp.isfinite(loss) & _real_rows(queries_ok, slot.num_queries).all()
            & _real_rows(documents_ok, slot.num_documents).all())
  take = running & finite
  keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(take, a, b), new, old)
  step = state.step + take
  improved = take & (loss < state.best_loss - settings.min_delta)
  best_step = jnp.where(improved, step, state.best_step)
  reason = state.stop_reason
  reason = jnp.where(running & ~finite, StopReason.NONFINITE, reason)
  reason = jnp.where(take & (step - best_step >= settings.patience), StopReason.PLATEAU, reason)
  reason = jnp.where(take & (step >= settings.max_steps), StopReason.MAX_STEPS, reason)
  updated.update(queries=queries, documents=documents)  # re-normalised
  return state.replace(
      **{name: keep(value, getattr(state, name)) for name, value in updated.items()},
      opt_state=keep(opt_state, state.opt_state), step=step,
      loss=jnp.where(running, loss, state.loss),
      best_loss=jnp.where(improved, loss, state.best_loss), best_step=best_step,
      stop_reason=reason.astype(jnp.int32))


def _healthy(slot: Slots, state: TrainState):
  """Whether a slot's state can still measure anything: its real rows are finite unit
  vectors and its optimizer state is finite. Padded rows are not looked at.

  The step checks only the loss and the rows it writes, which miss an optimizer state
  overflowed to inf (Adam then zeroes those entries' updates for good) and zero start rows.
  """
  def unit(x, count):
    return _real_rows(jnp.abs((x * x).sum(axis=-1) - 1) <= certify.UNIT_TOLERANCE, count).all()
  finite = [jnp.isfinite(leaf).all() for leaf in jax.tree.leaves(state.opt_state)]
  return (unit(state.queries, slot.num_queries) & unit(state.documents, slot.num_documents)
          & jnp.stack(finite).all())


def _slot_check(slot: Slots, state: TrainState, checked) -> TrainState:
  """A checked slot whose state is not healthy stops as NONFINITE."""
  broken = checked & ~_healthy(slot, state)
  return state.replace(stop_reason=jnp.where(broken, StopReason.NONFINITE,
                                             state.stop_reason).astype(jnp.int32))


def _slot_evaluate(settings: TrainSettings, slot: Slots, state: TrainState,
                   evaluated) -> TrainState:
  """Accuracy and margin after a block, for the slots that ran in it.

  A slot that stopped inside the block is evaluated on its final embeddings; if they meet
  the criterion (objective.judge), it is a success, as in the reference (any accuracy
  signal of 1.0, under topk).
  A slot whose state broke in the block stops as NONFINITE instead (_healthy), and its
  metrics, computed from that state, are not kept.
  """
  state = _slot_check(slot, state, evaluated)
  accuracy, query_margin, threshold_gap = objective.retrieval_metrics(
      state.queries, state.documents, slot.relevance, slot.num_queries, slot.num_documents,
      settings.query_tile)
  passed, margin = objective.judge(settings.criterion, settings.criterion_epsilon, accuracy,
                                   query_margin, threshold_gap)
  evaluated &= state.stop_reason != StopReason.NONFINITE
  solved = evaluated & passed
  return state.replace(
      accuracy=jnp.where(evaluated, accuracy, state.accuracy),
      max_accuracy=jnp.where(evaluated, jnp.maximum(accuracy, state.max_accuracy),
                             state.max_accuracy),
      margin=jnp.where(evaluated, margin, state.margin),
      stop_reason=jnp.where(solved, StopReason.SUCCESS, state.stop_reason).astype(jnp.int32))


def _over_slots(fn, *trees):
  """fn of one slot, mapped over the leading slot axis of `trees`.

  One slot (a CPU device holds one) runs unbatched: XLA does not write a [1, q, n] result in
  place of a [q, n] operand (the bitcast between them blocks buffer sharing), which doubled
  the memory of a step at paper scale.
  """
  if jax.tree.leaves(trees)[0].shape[0] == 1:
    return jax.tree.map(lambda x: x[None], fn(*jax.tree.map(lambda x: x[0], trees)))
  return jax.vmap(fn)(*trees)


def train_step(settings: TrainSettings, slots: Slots, state: TrainState) -> TrainState:
  """One update of every running slot; frozen slots are left as they are."""
  return _over_slots(functools.partial(_slot_step, settings), slots, state)


def evaluate(settings: TrainSettings, slots: Slots, state: TrainState, evaluated) -> TrainState:
  return _over_slots(functools.partial(_slot_evaluate, settings), slots, state, evaluated)


# ---------------------------------------------------------------------------------------
# The chunk: blocks of eval_every steps, an evaluation after each, on the device.
# ---------------------------------------------------------------------------------------

SLOT_AXIS = "slots"


@functools.cache
def slot_mesh(devices: tuple | None = None) -> jax.sharding.Mesh:
  """A 1-D mesh over `devices`, by default every device of every process: the slot axis is
  split across it. Other devices (a TPU topology's, see sweep/topology.py) let this machine
  compile the same program for hardware it does not have."""
  devices = devices or tuple(jax.devices())
  # Auto axes: jit moves any input onto the mesh as shard_map needs it.
  return jax.make_mesh((len(devices),), (SLOT_AXIS,), devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,))


def slot_sharding(mesh: jax.sharding.Mesh | None = None) -> jax.sharding.NamedSharding:
  return jax.sharding.NamedSharding(mesh or slot_mesh(), jax.sharding.PartitionSpec(SLOT_AXIS))


def place(tree):
  """Host arrays (the same on every process) as global arrays split along the slot axis."""
  sharding = slot_sharding()
  return jax.tree.map(
      lambda x: jax.make_array_from_callback(x.shape, sharding, lambda index: x[index]), tree)


def to_host(tree):
  """Global arrays as numpy on every process, also where other processes hold parts of them."""
  def leaf(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
      return np.asarray(x)
    return multihost_utils.process_allgather(x, tiled=True)
  return jax.tree.map(leaf, tree)


def start_optimizer(settings: TrainSettings, slots: Slots, state: TrainState) -> TrainState:
  """The optimizer state of every slot that has not stepped yet, from its own learning rate.

  The host lays zeros there (it cannot run an arbitrary optax init without compiling one),
  and this runs at the top of every chunk, so a slot starts the same wherever it was packed.
  """
  def start(slot, slot_state):
    fresh = slot_state.step == 0
    init = slot_optimizer(settings, slot.learning_rate).init(
        trained_params(settings, slot_state))
    return slot_state.replace(opt_state=jax.tree.map(
        lambda a, b: jnp.where(fresh, a, b), init, slot_state.opt_state))
  return _over_slots(start, slots, state)


@functools.partial(jax.jit, static_argnames=("settings", "mesh"), donate_argnums=2)
def train_chunk(settings: TrainSettings, slots: Slots, state: TrainState, end_on_stop,
                mesh: jax.sharding.Mesh | None = None):
  """Up to `chunk_evals` blocks; returns (state, blocks run by each device [devices]).

  The slot axis is split over every device of `mesh` (default slot_mesh()) with shard_map,
  and each device loops only until its own slots have stopped instead of waiting for the
  slowest slot of the whole bucket. With `end_on_stop` (traced, so one program serves both)
  a device also ends after the first block in which one of its slots stopped, so that slot
  can be refilled at once.
  """
  spec = jax.sharding.PartitionSpec(SLOT_AXIS)
  return jax.shard_map(functools.partial(_local_chunk, settings), mesh=mesh or slot_mesh(),
                       in_specs=(spec, spec, jax.sharding.PartitionSpec()),
                       out_specs=(spec, spec))(slots, state, end_on_stop)


def _local_chunk(settings: TrainSettings, slots: Slots, state: TrainState, end_on_stop):
  state = start_optimizer(settings, slots, state)
  # A state that arrives broken (a start with zero rows) stops before it trains.
  state = _over_slots(_slot_check, slots, state, state.stop_reason == StopReason.RUNNING)
  running_at_start = (state.stop_reason == StopReason.RUNNING).sum()

  def block(carry):
    blocks_done, state = carry
    running = state.stop_reason == StopReason.RUNNING
    state, _ = jax.lax.scan(lambda s, _: (train_step(settings, slots, s), None), state,
                            length=settings.eval_every)
    return blocks_done + 1, evaluate(settings, slots, state, running)

  def go_on(carry):
    blocks_done, state = carry
    running = (state.stop_reason == StopReason.RUNNING).sum()
    return ((blocks_done < settings.chunk_evals) & (running > 0)
            & ~(end_on_stop & (running < running_at_start)))

  blocks, state = jax.lax.while_loop(go_on, block, (jnp.zeros((), jnp.int32), state))
  return state, blocks[None]


# ---------------------------------------------------------------------------------------
# Host side: outcomes and a one-call API.
# ---------------------------------------------------------------------------------------

def running(state: TrainState) -> np.ndarray:
  return to_host(state.stop_reason) == StopReason.RUNNING


def outcomes(state: TrainState, count: int | None = None) -> list[dict]:
  """Per-slot results as plain Python values (the first `count` slots)."""
  fields = [to_host(x) for x in (state.stop_reason, state.max_accuracy, state.accuracy,
                                 state.loss, state.best_loss, state.step, state.margin)]
  results = []
  for reason, max_acc, acc, loss, best, step, margin in list(zip(*fields))[:count]:
    results.append(dict(
        success=bool(reason == StopReason.SUCCESS), max_accuracy=float(max_acc), final_accuracy=float(acc),
        final_loss=float(loss), best_loss=float(best), stop_step=int(step),
        stop_reason=StopReason(int(reason)).name.lower(), margin=float(margin)))
  return results


def embeddings(state: TrainState, slot: int, config: Configuration):
  """The final (queries [q, d], documents [n, d]) of one slot of a host state, unpadded."""
  queries, documents = np.asarray(state.queries[slot]), np.asarray(state.documents[slot])
  return queries[:config.query_count, :config.d], documents[:config.n, :config.d]


def train(configs, settings: TrainSettings = TrainSettings(), return_embeddings: bool = False):
  """Train configurations together in one padded bucket until every one has stopped."""
  shape = BucketShape.fitting(configs, devices=jax.device_count())
  slots = place(pack(configs, shape))
  state = place(init_state(settings, shape, configs))
  while running(state).any():
    state, _ = train_chunk(settings, slots, state, False)
  host = to_host(state)
  results = outcomes(host, len(configs))
  if return_embeddings:
    for i, (result, config) in enumerate(zip(results, configs)):
      result["queries"], result["documents"] = embeddings(host, i, config)
  return results
