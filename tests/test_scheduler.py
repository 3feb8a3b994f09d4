"""Buckets sized to their probes: placement, packing, shape reuse, and the work they count."""

import json
import math
import os
import subprocess
import sys

import pytest

from sweep import scheduler, sizing
from sweep import config as config_lib
from sweep import driver as driver_lib
from sweep import trainer
from sweep.store import Store
from sweep.problems import Probe


def shape(q, n, d, slots=1):
  return trainer.BucketShape(slots=slots, queries=q, documents=n, dims=d, width=2)


# Probes of d = 2 take the small shape, of d = 8 the large one.
SHAPES = {2: shape(8, 4, 2), 8: shape(448, 32, 8)}


def arrange(buckets, queue, slots_per_bucket=2, max_slots=64, fits=lambda shapes: True):
  return scheduler.arrange(buckets, queue, [SHAPES[p.d] for p in queue], slots_per_bucket,
                           max_slots, fits)


def test_probes_of_different_sizes_never_share_a_bucket():
  queue = [Probe(2, 4, 0), Probe(8, 30, 0), Probe(2, 4, 1), Probe(2, 3, 0)]
  placements, waiting = arrange([], queue)
  assert not waiting
  buckets = [p.bucket for p in placements]
  assert [b.shape for b in buckets] == [shape(8, 4, 2, 2), shape(448, 32, 8, 2), shape(8, 4, 2, 2)]
  assert buckets[0].slots == [Probe(2, 4, 0), Probe(2, 4, 1)]
  assert buckets[1].slots == [Probe(8, 30, 0), None]
  assert all(p.previous is None and p.source == [None] * 2 for p in placements[:2])


def test_free_slots_are_refilled_in_place_and_full_limits_make_probes_wait():
  bucket = scheduler.Bucket(shape(8, 4, 2, 2), [None, Probe(2, 4, 1)])
  placements, waiting = arrange([bucket], [Probe(2, 3, 0), Probe(2, 3, 1)], max_slots=2)
  assert waiting == [Probe(2, 3, 1)]  # a second bucket would exceed max_slots
  (placed,) = placements
  assert placed.bucket.slots == [Probe(2, 3, 0), Probe(2, 4, 1)]
  assert placed.previous == 0 and placed.source == [None, (0, 1)]
  unchanged, _ = arrange([placed.bucket], [])
  assert unchanged[0].source is None  # nothing moved: the device state stays


def test_half_empty_buckets_of_one_shape_are_packed_into_one():
  buckets = [scheduler.Bucket(shape(8, 4, 2, 2), [Probe(2, 4, 0), None]),
             scheduler.Bucket(shape(448, 32, 8, 2), [Probe(8, 30, 0), None]),
             scheduler.Bucket(shape(8, 4, 2, 2), [None, Probe(2, 4, 1)])]
  placements, _ = arrange(buckets, [])
  assert len(placements) == 2
  packed = placements[0]
  assert packed.bucket.slots == [Probe(2, 4, 0), Probe(2, 4, 1)]
  assert packed.source == [(0, 0), (2, 1)]  # a gather from two old buckets
  assert placements[1].source is None


def test_a_probe_reuses_a_compiled_shape_it_fills_well_enough():
  own = shape(40, 12, 4)
  assert scheduler.target_shape(own, [shape(48, 12, 4)]) == shape(48, 12, 4)
  assert scheduler.target_shape(own, [shape(112, 16, 4)]) == own  # 1920 of 7168 cells
  assert scheduler.target_shape(own, [shape(48, 12, 4), shape(40, 12, 6)]) == shape(48, 12, 4)
  assert scheduler.target_shape(own, [shape(32, 12, 4)]) == own  # does not hold it


def test_a_smaller_probe_shares_the_shape_a_larger_one_of_its_queue_brings():
  small, large = shape(320, 24, 8), shape(384, 28, 8)  # 76% of the larger's cells
  shapes, known = scheduler.target_shapes([small, large], [])
  assert shapes == [large, large] and known == [large]
  tiny = shape(128, 16, 8)  # 19%: its own class
  shapes, known = scheduler.target_shapes([tiny, large, small], [])
  assert shapes == [tiny, large, large] and known == [large, tiny]


@pytest.mark.parametrize("wanted, devices, slots", [(0, 1, 1), (3, 1, 3), (0, 4, 4), (6, 4, 8)])
def test_slots_per_bucket_is_a_multiple_of_the_devices(wanted, devices, slots):
  assert scheduler.slots_per_bucket(wanted, 3, "cpu", devices) == slots
  assert scheduler.slots_per_bucket(0, 3, "gpu", 2) == 6


def test_queries_are_padded_from_their_own_count():
  config = trainer.Configuration(d=5, n=257)
  own = sizing.shape_class(config)
  assert own.queries == sizing.padded(math.comb(257, 2)) < math.comb(own.documents, 2)
  assert own.dims == 6 and own.documents == 320


def test_configurations_within_the_floor_shape_share_it():
  floor = sizing.shape_class(trainer.Configuration(d=2, n=3))
  assert (floor.queries, floor.documents, floor.dims) == (
      sizing.FLOOR_QUERIES, sizing.FLOOR_DOCUMENTS, sizing.FLOOR_DIMS)
  for d, n in [(3, 4), (4, 10), (6, 19), (8, 23)]:
    assert sizing.shape_class(trainer.Configuration(d=d, n=n)) == floor
  # Past the floor in one size, each size takes its own grid: dims 4 stay 4.
  past = sizing.shape_class(trainer.Configuration(d=4, n=24))
  assert (past.queries, past.documents, past.dims) == (sizing.padded(math.comb(24, 2)), 24, 4)
  assert sizing.shape_class(trainer.Configuration(d=10, n=20)).dims == 10
  # Past it in dims alone, the grid's own minimum queries and documents, as below the floor.
  small = sizing.shape_class(trainer.Configuration(d=10, n=5))
  assert (small.queries, small.documents) == (sizing.MIN_QUERIES, sizing.MIN_DOCUMENTS)


def test_outcomes_do_not_depend_on_the_bucket_shape_on_clear_cases():
  clear = [trainer.Configuration(d=2, n=3), trainer.Configuration(d=3, n=4, seed=1),
           trainer.Configuration(d=4, n=6), trainer.Configuration(d=2, n=6),
           trainer.Configuration(d=3, n=8)]
  shared = trainer.train(clear)
  right_sized = [trainer.train([c])[0] for c in clear]
  assert [r["success"] for r in shared] == [r["success"] for r in right_sized]
  assert [r["success"] for r in shared] == [True, True, True, False, False]


def test_efficiency_figures_equal_a_hand_count_from_the_results(tmp_path):
  config = config_lib.default_config()
  config.update(dims=(2, 3), restarts=2, max_steps=2000, patience=200, eval_every=25,
                chunk_evals=4, local_sweep=1, bucket_slots=1)
  store = Store(str(tmp_path))
  driver = driver_lib.Driver(config, store)
  assert driver.run(progress=lambda _: None)
  records = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
  steps = [r["stop_step"] for r in records]
  # One slot per bucket: a bucket computes whole blocks until its only probe stops.
  computed = sum(-(-s // 25) * 25 for s in steps)
  real = sum(r["stop_step"] * r["num_queries"] * r["n"] * r["d"] for r in records)
  padded = sum(r["stop_step"] * math.prod(r["padded_shape"]) for r in records)
  work = driver.pool.work
  assert work == dict(slot_steps_computed=computed, slot_steps_running=sum(steps),
                      cells_real=real, cells_padded=padded)
  stats = store.read_stats()
  assert stats["slot_occupancy"] == round(sum(steps) / computed, 4)
  assert stats["padding_efficiency"] == round(real / padded, 4) < 1


def run_cli(workdir, cache, *extra):
  env = dict(os.environ, SWEEP_COMPILATION_CACHE=str(cache))
  return subprocess.run(
      [sys.executable, "-m", "sweep.cli", "run", f"--config={config_lib.__file__}",
       "--config.dims=(2,)", "--config.max_steps=400", "--config.patience=100",
       "--config.local_sweep=0", f"--workdir={workdir}", *extra],
      env=env, capture_output=True, text=True, timeout=300)


def test_the_compilation_cache_is_used_and_a_second_run_compiles_nothing(tmp_path):
  first = run_cli(tmp_path / "first", tmp_path / "cache")
  assert first.returncode == 0, first.stderr
  assert "compiled 0 program(s)" not in first.stdout and "compiled" in first.stdout
  assert any((tmp_path / "cache").iterdir())
  second = run_cli(tmp_path / "second", tmp_path / "cache")
  assert second.returncode == 0, second.stderr
  assert "compiled 0 program(s)" in second.stdout
  assert (tmp_path / "first" / "critical_n.csv").read_text() == \
      (tmp_path / "second" / "critical_n.csv").read_text()


def test_the_compilation_cache_can_be_turned_off(tmp_path):
  env = dict(os.environ, SWEEP_COMPILATION_CACHE="off")
  out = subprocess.run([sys.executable, "-c", "from sweep import compilation; "
                        "print(compilation.enable_cache())"], env=env, capture_output=True,
                       text=True, timeout=60)
  assert out.stdout.strip() == "None"
  env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path))
  env.pop("SWEEP_COMPILATION_CACHE", None)
  out = subprocess.run([sys.executable, "-c", "from sweep import compilation; "
                        "print(compilation.enable_cache())"], env=env, capture_output=True,
                       text=True, timeout=60)
  assert out.stdout.strip() == str(tmp_path / "critical-n-sweep" / "jax")
