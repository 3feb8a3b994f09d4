"""Which probe trains in which slot of which bucket: several buckets, each sized to its probes.

A probe trains in the shape class of its configuration (shapes.shape_class), or in a shape
the sweep already compiled that it fills well (target_shape): probes of very different sizes
never share one padded shape, and a sweep compiles few. Every bucket has the same slot count,
so each shape is one compiled program however many buckets of it are live; a shape gets more
buckets when its probes need room, and its buckets are packed together when they empty.
Every decision here is a pure function of the buckets, the queue and the shapes compiled so
far, so a resumed sweep makes the same ones as an uninterrupted sweep.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from sweep.problems import BucketShape, Probe


@dataclasses.dataclass
class Bucket:
  """One live bucket: its shape and the probe each slot trains (None: a free slot)."""
  shape: BucketShape
  slots: list[Probe | None]

  @property
  def probes(self) -> list[Probe]:
    return [p for p in self.slots if p is not None]

  def to_json(self) -> dict:
    return dict(shape=dataclasses.asdict(self.shape),
                slots=[None if p is None else dataclasses.astuple(p) for p in self.slots])

  @classmethod
  def from_json(cls, data: dict) -> "Bucket":
    return cls(BucketShape(**data["shape"]),
               [None if p is None else Probe(*p) for p in data["slots"]])


@dataclasses.dataclass(frozen=True)
class Placement:
  """A bucket after an arrangement. source None: its device state stays as it was (it was
  bucket `previous`). Else its state is rebuilt: slot j continues slot source[j] = (bucket,
  slot) of the previous arrangement, or starts its probe fresh where source[j] is None."""
  bucket: Bucket
  previous: int | None
  source: list[tuple[int, int] | None] | None


# A probe may train in a shape the sweep already compiled, instead of its own class, when
# its own cells (queries x documents x dims) fill at least this much of that shape's.
MIN_FILL = 0.7


def cells(shape: BucketShape) -> int:
  return shape.queries * shape.documents * shape.dims


def target_shape(own: BucketShape, known: list[BucketShape]) -> BucketShape:
  """The single-slot shape a probe of class `own` trains in: the smallest shape compiled
  before that holds it at least MIN_FILL full, else its own class (which becomes known)."""
  holding = [s for s in known if s.width == own.width and s.queries >= own.queries
             and s.documents >= own.documents and s.dims >= own.dims
             and cells(own) >= MIN_FILL * cells(s)]
  return min(holding, key=lambda s: (cells(s), known.index(s)), default=own)


def target_shapes(own: list[BucketShape], known: list[BucketShape]):
  """(shapes, known): the single-slot shape each probe of a queue trains in, its class being
  `own`, and the shapes known after them (a new class becomes known).

  The larger classes are placed first, so a smaller probe of the same queue can share a shape
  this admission compiles for a larger one (the main job's first round: d = 7 at n = 24 in
  d = 8's 384 x 28 x 8) instead of compiling its own first.
  """
  known, shapes = list(known), [None] * len(own)
  for i in sorted(range(len(own)), key=lambda i: -cells(own[i])):
    shapes[i] = target_shape(own[i], known)
    if shapes[i] not in known:
      known.append(shapes[i])
  return shapes, known


def slots_per_bucket(bucket_slots: int, restarts: int, platform: str, devices: int) -> int:
  """Slots of every bucket: config.bucket_slots, or automatically one per device on a CPU
  (where single-slot programs run side by side on its cores and no slot ever idles) and
  `restarts` per device on an accelerator (one probe point's seeds fill a bucket); always a
  multiple of the device count, so the slot axis splits evenly."""
  per_device = -(-bucket_slots // devices) if bucket_slots else 1 if platform == "cpu" else restarts
  return per_device * devices


def arrange(buckets: list[Bucket], queue: list[Probe], shapes: list[BucketShape],
            slots_per_bucket: int, max_slots: int, fits: Callable[[list[BucketShape]], bool]):
  """(placements, queue): queued probes placed into the buckets of their shape (`shapes`,
  parallel to the queue: see target_shapes).

  Every bucket has slots_per_bucket slots, so each shape is one compiled program however
  many probes it serves. Probes are taken in queue order into the free slots of their
  shape's buckets, else into a new bucket; one that would push the total slot count over
  max_slots, or the buckets over the memory budget (`fits`), waits, and so do the later
  probes of its shape. Buckets of one shape are then packed into as few as hold their
  probes (a gather, no new program), and empty buckets are dropped.
  """
  arranged = [Bucket(b.shape, list(b.slots)) for b in buckets]
  origin = [[(i, j) if p is not None else None for j, p in enumerate(b.slots)]
            for i, b in enumerate(buckets)]
  waiting, blocked = [], set()
  for probe, shape in zip(queue, shapes):
    shape = dataclasses.replace(shape, slots=slots_per_bucket)
    free = [(b, j) for b in arranged if b.shape == shape for j, p in enumerate(b.slots) if p is None]
    if shape not in blocked and not free:
      shapes = [b.shape for b in arranged if b.probes] + [shape]
      if sum(s.slots for s in shapes) > max_slots or not fits(shapes):
        blocked.add(shape)
      else:
        arranged.append(Bucket(shape, [None] * slots_per_bucket))
        origin.append([None] * slots_per_bucket)
        free = [(arranged[-1], 0)]
    if shape in blocked:
      waiting.append(probe)
      continue
    bucket, j = free[0]
    bucket.slots[j] = probe

  # Pack each shape's probes into its first buckets, keeping every probe's slot where it can.
  for shape in {b.shape for b in arranged}:
    same = [i for i, b in enumerate(arranged) if b.shape == shape]
    needed = -(-sum(len(arranged[i].probes) for i in same) // slots_per_bucket)
    for donor in same[needed:]:
      for j, probe in enumerate(arranged[donor].slots):
        if probe is None:
          continue
        i, k = next((i, k) for i in same[:needed] for k, p in enumerate(arranged[i].slots)
                    if p is None)
        arranged[i].slots[k], origin[i][k] = probe, origin[donor][j]
        arranged[donor].slots[j] = origin[donor][j] = None

  placements = []
  for i, bucket in enumerate(arranged):
    if not bucket.probes:
      continue
    previous = i if i < len(buckets) else None
    source = [origin[i][j] if p is not None else None for j, p in enumerate(bucket.slots)]
    unchanged = previous is not None and bucket.slots == buckets[i].slots
    placements.append(Placement(bucket, previous, None if unchanged else source))
  return placements, waiting
