r"""The reference protocol as a plain PyTorch loop, one configuration at a time.

The baseline that docs/speed.md compares the engine with: the same protocol
(docs/PROTOCOL.md) written the obvious way, with nothing of the engine in it.

- Queries: all C(n, k) k-subsets; queries and documents are free float32 parameters, rows
  drawn standard normal and L2-normalised, and normalised again after every update.
- Loss: InfoNCE at tau = 0.1 in code form, the mean over (query, relevant document) pairs
  of -log softmax over all n documents. Full-batch Adam at 0.01.
- Stops: top-k accuracy 1.0 at an evaluation (every --eval_every steps; the engine
  evaluates every 50), no improvement by 1e-5 for --patience steps, or --max_steps.
- Search for one d: n = 5, then n *= 1.5 (rounded up, at least +1) while runs succeed,
  then bisection between the last success and the first failure. Critical n = the
  largest success whose n + 1 failed.

Needs the `bench` extra, PyTorch's CPU wheel:

    pip install -e '.[bench]' --extra-index-url https://download.pytorch.org/whl/cpu

    python benchmarks/torch_loop.py --dims=4                  # 5 probes, 17,922 steps, n = 9
    python benchmarks/torch_loop.py --dims=4,5,6,7,8,9,10 --json
    python benchmarks/torch_loop.py --step_only=12,50,500     # ms per step at d=12, n=50

Prints each probe (n, success, steps, seconds), then per d the critical n, the probes,
the slot-steps (steps summed over probes), the wall time and the wall time per step.
--json prints one JSON line per d instead of the summary line. PyTorch's thread count is
left at its default unless --threads sets it: on a loaded 2-core machine its two default
threads made a d = 4 step ten times slower than one thread did, so say which was used.
"""

import argparse
import itertools
import json
import math
import sys
import time

try:
  import torch
except ImportError:
  sys.exit("benchmarks/torch_loop.py needs PyTorch: pip install -e '.[bench]' "
           "--extra-index-url https://download.pytorch.org/whl/cpu")

LEARNING_RATE = 0.01
TEMPERATURE = 0.1
MIN_DELTA = 1e-5
START_N = 5


def init(d, n, k, seed):
  """(queries [C(n, k), d], documents [n, d], relevance [C(n, k), k]): unit rows, drawn
  standard normal from `seed`, and every k-subset of the documents as a query."""
  generator = torch.Generator().manual_seed(seed)
  relevance = torch.tensor(list(itertools.combinations(range(n), k)), dtype=torch.long)
  queries = torch.randn(len(relevance), d, generator=generator)
  documents = torch.randn(n, d, generator=generator)
  normalise = torch.nn.functional.normalize
  return normalise(queries, dim=1), normalise(documents, dim=1), relevance


def loss_fn(queries, documents, relevance):
  """InfoNCE, code form: mean over (query, relevant document) pairs of -log softmax."""
  log_probs = torch.log_softmax(queries @ documents.T / TEMPERATURE, dim=1)
  return -log_probs.gather(1, relevance).mean()


@torch.no_grad()
def accuracy(queries, documents, relevance):
  """Relevant documents found in each query's top k, over all relevant documents."""
  top = torch.topk(queries @ documents.T, relevance.shape[1], dim=1).indices
  found = (top[:, :, None] == relevance[:, None, :]).any(dim=2)
  return found.float().mean().item()


def make_step(queries, documents, relevance):
  """(params, one update: Adam, then both tables' rows back to unit norm)."""
  params = [queries.clone().requires_grad_(), documents.clone().requires_grad_()]
  optimizer = torch.optim.Adam(params, lr=LEARNING_RATE)

  def step():
    optimizer.zero_grad()
    loss = loss_fn(*params, relevance)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
      for p in params:
        p.copy_(torch.nn.functional.normalize(p, dim=1))
    return loss.item()

  return params, step


def train_one(d, n, args):
  """(success, steps) of one configuration, trained until one of the protocol's stops."""
  queries, documents, relevance = init(d, n, args.k, args.seed)
  params, step = make_step(queries, documents, relevance)
  best_loss, best_step = math.inf, 0
  for steps in range(1, args.max_steps + 1):
    loss = step()
    if loss < best_loss - MIN_DELTA:
      best_loss, best_step = loss, steps
    stopped = steps - best_step >= args.patience or steps == args.max_steps
    # A run that stops between evaluations is evaluated once more on its final embeddings.
    if steps % args.eval_every == 0 or stopped:
      if accuracy(*params, relevance) >= 1.0:
        return True, steps
    if stopped:
      return False, steps


def search(d, args):
  """The critical n of d, and the probes [(n, success, steps, seconds)] that found it."""
  probes, results = [], {}

  def probe(n):
    start = time.perf_counter()
    success, steps = train_one(d, n, args)
    seconds = time.perf_counter() - start
    probes.append((n, success, steps, seconds))
    results[n] = success
    if not args.json:
      print(f"d={d} n={n:4d} success={success!s:5} steps={steps:6d} {seconds:8.2f} s",
            flush=True)
    return success

  n = START_N
  if not probe(n):
    return None, probes  # even n = 5 fails: no success to report
  while probe(grow := max(n + 1, math.ceil(n * 1.5))):
    n = grow
  low, high = n, grow  # low succeeded, high failed
  while high - low > 1:
    middle = (low + high) // 2
    if probe(middle):
      low = middle
    else:
      high = middle
  return low, probes


def step_only(d, n, steps, args):
  """Milliseconds per plain training step at (d, n), after a warm-up of steps // 10."""
  _, step = make_step(*init(d, n, args.k, args.seed))
  for _ in range(max(1, steps // 10)):
    step()
  start = time.perf_counter()
  for _ in range(steps):
    step()
  return 1e3 * (time.perf_counter() - start) / steps


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--dims", default="4", help="comma-separated dimensions to search")
  parser.add_argument("--k", type=int, default=2)
  parser.add_argument("--seed", type=int, default=42)
  parser.add_argument("--eval_every", type=int, default=1000)
  parser.add_argument("--patience", type=int, default=1000)
  parser.add_argument("--max_steps", type=int, default=100_000)
  parser.add_argument("--threads", type=int, default=0,
                      help="torch.set_num_threads; 0 leaves PyTorch's default")
  parser.add_argument("--json", action="store_true", help="one JSON line per d")
  parser.add_argument("--step_only", metavar="d,n,steps",
                      help="time the training step alone at (d, n), then exit")
  args = parser.parse_args()
  if args.threads:
    torch.set_num_threads(args.threads)

  if args.step_only:
    d, n, steps = map(int, args.step_only.split(","))
    ms = step_only(d, n, steps, args)
    print(f"d={d} n={n} k={args.k}: {ms:.3f} ms/step over {steps} steps "
          f"(torch {torch.__version__}, {torch.get_num_threads()} threads)")
    return

  for d in map(int, args.dims.split(",")):
    start = time.perf_counter()
    critical, probes = search(d, args)
    wall = time.perf_counter() - start
    slot_steps = sum(p[2] for p in probes)
    summary = dict(d=d, critical_n=critical, probes=len(probes), slot_steps=slot_steps,
                   wall_s=round(wall, 3), ms_per_step=round(1e3 * wall / slot_steps, 4),
                   threads=torch.get_num_threads(),
                   runs=[dict(n=n, success=s, steps=t, seconds=round(sec, 3))
                         for n, s, t, sec in probes])
    if args.json:
      print(json.dumps(summary), flush=True)
    else:
      print(f"d={d}: critical n = {critical} | {len(probes)} probes | {slot_steps} slot-steps"
            f" | {wall:.1f} s wall | {1e3 * wall / slot_steps:.3f} ms/step"
            f" | {torch.get_num_threads()} threads", flush=True)


if __name__ == "__main__":
  main()
