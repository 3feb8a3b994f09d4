"""`sweep run | fit-qrels | status | plot | verify | plan`: parses flags and wires the modules,
nothing more."""

from __future__ import annotations

import gc
import json
import logging as std_logging
import math
import os
import shlex
import signal
import sys
import time

import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

# Only what every command needs is imported here: each command imports its own machinery
# (the driver and JAX, the compiler, scipy), so `sweep status` starts in a fraction of a second.
from sweep import config as config_lib
from sweep import checkpoints as checkpoints_lib
from sweep import lock as lock_lib
from sweep import qrels as qrels_lib
from sweep import store as store_lib
from sweep import targets
from sweep.problems import CRITERIA
from sweep.store import Store

USAGE = """usage: sweep COMMAND [flags]
  sweep run --config=experiments/quick.py --workdir=DIR [--config.FIELD=VALUE ...]
  sweep fit-qrels --qrels=PATH|all-subsets:n=N,k=K --workdir=DIR [--config=FILE] [--config.FIELD=VALUE ...]
  sweep status --workdir=DIR [--json]
  sweep verify WITNESS.npz
  sweep geometry --k=K --dims=D1,D2,... [--n_unbounded=32] [--lp_max_subsets=2000]
  sweep plot --workdir=DIR [--workdir=DIR2 ...] [--degree=3] [--d_min=4] [--out=critical_n] [--log]
  sweep plan --config=FILE [--device=NAME] [--measure] [--calibrate=WORKDIR] [--json]"""

FLAGS = flags.FLAGS
_command_line: list[str] = []  # the command as typed, subcommand included, for "resume with"


def _fail(error: Exception) -> None:
  sys.exit(f"error: {' '.join(str(error).split())}")


def _draw_figure(store: Store) -> None:
  """The run's figure and fit, in its own workdir (the run is that workdir's writer)."""
  from plots import critical_n  # matplotlib only where a figure is drawn
  try:
    critical_n.report([str(store.workdir)], store.workdir / critical_n.DEFAULT_OUT)
  except (ValueError, OSError) as error:
    print(f"no figure yet: {error}")


def _start_processes() -> bool:
  """Join JAX's distributed runtime when asked (--multihost or SWEEP_MULTIHOST=1); True on
  the process that writes files and prints (process 0)."""
  if FLAGS.multihost or os.environ.get("SWEEP_MULTIHOST") == "1":
    import jax
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                               num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
    return jax.process_index() == 0
  return True


def _hold_workdir(store: Store, writer: bool) -> lock_lib.WorkdirLock | None:
  """The writer (process 0) locks the workdir for the whole run; the other processes only
  learn whether it did, so a refused run stops everywhere with one line."""
  import jax
  lock, refusal = None, None
  if writer:
    try:
      lock = store.lock()
    except lock_lib.WorkdirLocked as error:
      refusal = error
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    held = multihost_utils.broadcast_one_to_all(np.int32(lock is not None))
    if not held and refusal is None:
      refusal = lock_lib.WorkdirLocked(f"process 0 could not lock {store.workdir}")
  if refusal is not None:
    _fail(refusal)
  return lock


def resume_command() -> str:
  """The command that started this run, runnable as printed (`python -m` runs included)."""
  main = sys.modules["__main__"]
  spec = getattr(main, "__spec__", None)
  program = [sys.executable, "-m", spec.name] if spec is not None else [_command_line[0]]
  return shlex.join(program + _command_line[1:])


def _release(store: Store, lock: lock_lib.WorkdirLock | None) -> Exception | None:
  """Close the checkpoints and release the lock, each tried; the first error, if any."""
  errors = []
  for cleanup in (store.close, lock.release if lock is not None else lambda: None):
    try:
      cleanup()
    except Exception as error:  # reported in one line by the caller
      errors.append(error)
  return errors[0] if errors else None


def _sweep(config) -> Store | None:
  """Run (or resume) the sweep of `config` in --workdir; None if a signal stopped it.

  Any error of the run or of its cleanup ends in one `error:` line; the run's own error wins
  over one its cleanup raised after it.
  """
  from sweep import compilation
  from sweep import driver as driver_lib
  # The objects JAX and its libraries made at import live as long as the process: frozen,
  # the collector stops walking them at every full collection while the loop traces,
  # gathers and records (the main job's warm wall -13% on a 2-core CPU).
  gc.freeze()
  logging.set_verbosity(logging.WARNING)  # progress lines are printed; library chatter is not
  writer = _start_processes()
  stop = []
  for signum in (signal.SIGTERM, signal.SIGINT):
    signal.signal(signum, lambda signum, frame: stop.append(signum))
  store = Store(FLAGS.workdir, writer=writer, deadline_s=config.store_deadline_s,
                stop_requested=lambda: bool(stop))
  compilation.enable_cache()
  compiles = compilation.count()
  lock, failure, finished = None, None, False
  lost = lambda: lock is not None and lock.lost
  try:
    driver = driver_lib.Driver(config, store)
    lock = _hold_workdir(store, writer)
    finished = driver.run(stop_requested=lambda: bool(stop) or lost(),
                          progress=print if writer else lambda _: None)
    stats = driver.stats()
    if writer and finished and stats["slot_steps_computed"]:  # nothing trained, nothing to say
      print(f"slot occupancy {stats['slot_occupancy']:.0%} (slot-steps of running configurations "
            f"/ slot-steps computed), padding efficiency {stats['padding_efficiency']:.0%} (real / "
            f"padded cells of those steps); {compiles.summary()}")
  except checkpoints_lib.StopRequested as error:  # raised only once a signal came
    if writer:
      print(f"stopped by signal {stop[0]} while {error} (nothing was moved or deleted); resume "
            f"with the same command: {resume_command()}")
    failure = error
  except OSError as error:  # e.g. an object store that cannot be reached
    failure = OSError(f"workdir {FLAGS.workdir}: {error}")
  except (ValueError, checkpoints_lib.CheckpointUnreadable) as error:
    failure = error
  cleanup_error = _release(store, lock)
  if isinstance(failure, checkpoints_lib.StopRequested):
    return None
  if failure is not None or cleanup_error is not None:
    _fail(failure or OSError(f"workdir {FLAGS.workdir}: while closing: {cleanup_error}"))
  if not finished:
    if lost():
      _fail(RuntimeError(f"another run took over {store.workdir}; this one stopped after a "
                         f"checkpoint"))
    if writer:
      print(f"stopped by signal {stop[0]} after a checkpoint; resume with the same command: "
            f"{resume_command()}")
    return None
  return store if writer else None


def run(argv) -> None:
  del argv
  store = _sweep(FLAGS.config)
  if store is None:
    return
  for r in store.read_critical_n():
    print(f"d={r['d']}: {targets.critical_n_text(r)}" + (
        "" if r["status"] == "nonfinite" else
        f" (largest success {r['max_success_n'] or '-'}, certified "
        f"{r['critical_n_certified'] or '-'}, probes {r['probes']}); geometry: "
        f"{r['geometric_critical_n']}"))
  _draw_figure(store)


def fit_qrels(argv) -> None:
  del argv
  config = FLAGS.config
  config.qrels = FLAGS.qrels if qrels_lib.generated(FLAGS.qrels) else os.path.abspath(FLAGS.qrels)
  store = _sweep(config)
  if store is None:
    return
  report = store.read_critical_d()
  shape = f"{report['source']}: {report['queries']} queries x {report['documents']} documents"
  if report.get("status") == "nonfinite":
    print(f"{shape}, no critical d: the deciding probe d={report['bracket'][0]} ended with "
          f"NaN, inf or zero-norm values, so nothing was measured")
    return
  critical = report["critical_d"]
  why = (f"d = {critical} trains every relevant set" if report["critical_d_trained"] else
         f"d = {critical} needs no training: {critical} orthonormal documents, each query the "
         f"sum of its relevant ones")
  print(f"{shape}, critical d = {critical} ({why}, d = {critical - 1} does not)")
  bounds = report["geometry"]
  span = (f"exactly d = {bounds['lower_d']}" if bounds["exact"] else
          f"{bounds['lower_d']} <= d <= {bounds['upper_d']}")
  print(f"geometry: {span} (d >= {bounds['lower_d']}: {bounds['lower_reason']}; "
        f"d <= {bounds['upper_d']}: {bounds['upper_reason']}, witness {bounds['witness']} "
        f"certified in float64, margin {bounds['margin64']:.3e})")


def status(argv) -> None:
  del argv
  store = Store(FLAGS.workdir, writer=False)  # reads only: works while a run holds the lock
  try:
    finished = len(store.load_results())
    holder = store.holder()
    if store.has_critical_d():
      report = store.read_critical_d()
      print(json.dumps({"configurations_finished": finished, "lock": holder, **report},
                       indent=2))
      return
    started = holder is not None or store.config_path.exists()
    rows = store.read_critical_n() if store.critical_n_path.exists() or not started else None
  except (ValueError, OSError) as error:
    _fail(error)
  if rows is None:  # the first seconds of a run: locked, or config.json written, no table yet
    who = f" by pid {holder['pid']} on {holder['host']}" if holder else ""
    done = (f"{finished} configuration(s) finished, no critical_n.csv yet" if finished
            else "no results yet")
    print(json.dumps({"configurations_finished": finished, "lock": holder, "searches": []},
                     indent=2) if FLAGS.json else
          f"{store.workdir}: a run has started{who}; {done}")
    return
  if FLAGS.json:
    print(json.dumps({"configurations_finished": finished, "lock": holder,
                      "efficiency": store.read_stats(), "searches": rows}, indent=2))
    return
  print(f"{store.workdir}: {finished} configurations finished")
  if holder is not None:
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(holder["started"]))
    print(f"locked by pid {holder['pid']} on {holder['host']} since {since}"
          + ("" if holder["running"] else " (no longer running: the next run takes it over)"))
  stats = store.read_stats()
  if stats:
    print(f"slot occupancy {stats['slot_occupancy']:.0%}, padding efficiency "
          f"{stats['padding_efficiency']:.0%}")
  print(f"{'d':>4} {'k':>3} {'max_success':>11} {'probes':>6}  answer")
  for r in rows:
    print(f"{r['d']:>4} {r['k']:>3} {r['max_success_n'] or '-':>11} {r['probes']:>6}  "
          f"{targets.critical_n_text(r)}")


def verify(argv) -> None:
  """Re-check a witness in float64 from its arrays alone, under the criterion it names (topk
  when it names none): d, n and the queries are read off the arrays; stored d and n must
  agree."""
  if len(argv) != 2:
    sys.exit("usage: sweep verify WITNESS.npz")
  path = argv[1]
  from sweep import certify
  try:
    arrays = store_lib.read_witness(path)
    missing = [name for name in ("queries", "documents", "relevance") if name not in arrays]
    if missing:
      raise ValueError(f"no {', '.join(missing)} array (holds {sorted(arrays)})")
    queries, documents, relevance = (arrays[name] for name in ("queries", "documents",
                                                               "relevance"))
    criterion = str(arrays.get("criterion", "topk"))
    if criterion not in CRITERIA:
      raise ValueError(f"it names criterion {criterion!r}: need one of {CRITERIA}")
    epsilon = arrays.get("criterion_epsilon", np.float64(0.0))
    if epsilon.shape != () or epsilon.dtype.kind != "f":
      raise ValueError(f"criterion_epsilon is {epsilon.tolist()!r}: need one float")
    epsilon = float(epsilon)
    margin = certify.margin64(queries, documents, relevance, criterion)
    d, n = queries.shape[1], documents.shape[0]
    for name, actual in (("d", d), ("n", n)):
      stored = arrays.get(name)
      if stored is not None and not (stored.shape == () and stored.dtype.kind in "iu"
                                     and int(stored) == actual):
        raise ValueError(f"it says {name}={stored.tolist()!r}, its arrays have {name}={actual}")
  except ValueError as error:
    _fail(ValueError(f"{path}: not a witness: {error}"))
  verified = certify.passes(criterion, epsilon, margin)
  rule = "" if criterion == "topk" else (
      " (criterion threshold)" if criterion == "threshold" else
      f" (criterion margin >= {epsilon:g})")
  verdict = (f"verified in float64{rule}, margin {margin:.3e}" if verified else
             "NOT verified in float64: an embedding is NaN or inf" if math.isnan(margin) else
             f"NOT verified in float64{rule}, margin {margin:.3e}")
  print(f"{path}: d={d}, n={n}, {len(queries)} queries: {verdict}")
  sys.exit(0 if verified else 1)


def geometry_table(argv) -> None:
  """The geometric critical n of each --dims for --k, each witness certified."""
  del argv
  from sweep import geometry
  try:
    dims = [int(d) for d in FLAGS.dims]
  except ValueError:
    _fail(ValueError(f"--dims={','.join(FLAGS.dims)} is out of range: need integers >= 1"))
  try:
    rows = [geometry.certify_witness(d, FLAGS.k, FLAGS.n_unbounded, FLAGS.lp_max_subsets)
            for d in dims]
  except ValueError as error:
    _fail(error)
  print(f"{'d':>3} {'k':>3} {'geometric critical n':>20} {'witness n':>9} "
        f"{'margin (float64)':>16}  {'LP, every k-subset':<30} witness")
  for r in rows:
    lp = ("skipped (%d subsets)" % r["subsets"] if r["lp_margin"] is None else
          "all %d separable" % r["subsets"] if r["lp_margin"] > geometry.LP_TOLERANCE else
          "NOT all separable")
    margin = f"{r['margin64']:.3e}" if r["verified"] else "NOT verified"
    print(f"{r['d']:>3} {r['k']:>3} {r['critical_n']:>20} {r['n']:>9} {margin:>16}  {lp:<30} "
          f"{r['family']}")
  failed = [r for r in rows if not r["verified"] or
            (r["lp_margin"] is not None and r["lp_margin"] <= geometry.LP_TOLERANCE)]
  sys.exit(1 if failed else 0)



def plan(argv) -> None:
  """Compile the sweep's programs (and with --measure time them here) and print what the
  sweep will cost."""
  del argv
  from sweep import plan as plan_lib  # compiles; only this command needs it
  logging.set_verbosity(logging.WARNING)
  try:
    device = plan_lib.device_named(FLAGS.device)
    steps = plan_lib.StepModel()
    if FLAGS.calibrate:
      results = Store(FLAGS.calibrate).load_results()
      steps = plan_lib.calibrate(list(results.values()), f"{FLAGS.calibrate}/results.jsonl")
    if FLAGS.measure:  # compiles cost what they will cost the sweep, which uses the cache
      from sweep import compilation
      compilation.enable_cache()
    report = plan_lib.plan_sweep(FLAGS.config, device, steps, measure=FLAGS.measure)
  except (ValueError, FileNotFoundError) as error:
    _fail(error)
  print(json.dumps(report, indent=2) if FLAGS.json else plan_lib.format_plan(report))
  if report["unmeasurable"]:  # a preflight: refuse what could only end as a lower bound
    if FLAGS.json:  # the table's last lines say it; JSON readers get it on stderr
      print("\n".join(f"cannot measure {u['reason']}" for u in report["unmeasurable"]),
            file=sys.stderr)
    sys.exit(3)


def _unknown_overrides(argv: list[str]) -> list[str]:
  """--config.FIELD overrides of fields no sweep config has."""
  fields = config_lib.default_config()
  return sorted({a[len("--config."):].split("=")[0].split(".")[0] for a in argv
                 if a.startswith("--config.")} - set(fields))


def _load_error(error: BaseException) -> str:
  """The root cause of a config file's loading error in one line (ml_collections wraps a
  missing file in two errors, the reason on the last line)."""
  while error.__cause__ is not None:
    error = error.__cause__
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  return f"{type(error).__name__}: {lines[-1] if lines else ''}"


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with the config file loaded here: a file that is missing, does not
  compile, has no get_config or whose get_config raises, and an override of a field no
  config has, each end in one line naming it."""
  unknown = _unknown_overrides(argv)
  if unknown:
    sys.exit(f"error: --config.{unknown[0]}: config has unknown fields {unknown}: allowed are "
             f"{sorted(config_lib.default_config())}")
  try:
    rest = app.parse_flags_with_usage(argv)  # loads the config file
    if "config" in FLAGS:
      FLAGS.config.keys()  # ml_collections defers some loading errors to the first use
  except Exception as error:  # anything the config file raised: it, not this, is at fault
    files = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    name = files[-1] if files else FLAGS["config"].default
    sys.exit(f"error: --config={name}: cannot load: {_load_error(error)}")
  return rest


COMMANDS = {"run": run, "fit-qrels": fit_qrels, "status": status, "verify": verify,
            "geometry": geometry_table, "plan": plan}


def run_main() -> None:
  """Console entry point: the first argument picks the command."""
  if len(sys.argv) < 2 or sys.argv[1] not in (*COMMANDS, "plot"):
    sys.exit(USAGE)
  _command_line[:] = sys.argv
  # gcsfs logs a traceback when a request runs out of retries; the command says it in one line.
  std_logging.getLogger("gcsfs").setLevel(std_logging.CRITICAL)
  command = sys.argv.pop(1)
  if command in ("run", "fit-qrels", "plan"):  # the commands that start JAX
    from sweep import hardware
    hardware.quiet_tpu_runtime()
  if command == "plot":
    from plots import critical_n
    critical_n.main([f"{sys.argv[0]} plot", *sys.argv[1:]])
    return
  if command == "verify":
    app.run(verify)
    return
  if command == "geometry":
    flags.DEFINE_integer("k", None, "Relevant documents per query.", required=True)
    flags.DEFINE_list("dims", None, "Dimensions, e.g. 2,3,4,5.", required=True)
    flags.DEFINE_integer("n_unbounded", 32, "Documents of the witness where d >= 2k (no limit).")
    flags.DEFINE_integer("lp_max_subsets", 2000, "Run the LP check where C(n, k) is at most this.")
    app.run(geometry_table)
  if command == "plan":
    config_flags.DEFINE_config_file("config", None, "A config file, e.g. experiments/paper.py.",
                                    lock_config=True)
    flags.mark_flag_as_required("config")
    flags.DEFINE_string("device", "cpu", "Where the sweep will run: h100, h200, a100, tpu-v4, "
                        "tpu-v5e, tpu-v5p, tpu-v6e or cpu (measured here), optionally -CHIPS "
                        "(tpu-v5e-8; a TPU's chips must be one of its slices).")
    flags.DEFINE_string("calibrate", None, "A finished workdir whose results.jsonl sets the "
                        "steps each probe trains, and the points of each d it searched.")
    flags.DEFINE_bool("measure", False, "Also time each start shape's training chunk on the "
                      "devices at hand (--device must name them) and predict the wall from it.")
    flags.DEFINE_bool("json", False, "Print the plan as JSON.")
    app.run(plan, flags_parser=_parse_flags)
    return
  flags.DEFINE_string("workdir", None, "The sweep's directory (results, checkpoints, figure).",
                      required=True)
  if command == "status":
    flags.DEFINE_bool("json", False, "Print the status as JSON.")
  else:
    # fit-qrels defaults to the reference protocol's config (sweep/config.py).
    default = config_lib.__file__ if command == "fit-qrels" else None
    config_flags.DEFINE_config_file("config", default, "A config file, e.g. experiments/quick.py.",
                                    lock_config=True)
    flags.DEFINE_bool("multihost", False, "Join JAX's distributed runtime first (every "
                      "worker of a multi-host TPU VM runs the same command).")
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multihost; "
                        "detected on TPU VMs).")
    flags.DEFINE_integer("num_processes", None, "Processes in all (multihost; detected on TPU VMs).")
    flags.DEFINE_integer("process_id", None, "This process's index (multihost; detected on TPU VMs).")
    if command == "run":
      flags.mark_flag_as_required("config")
    else:
      flags.DEFINE_string("qrels", None, "Relevance: qrels.jsonl, a BEIR .tsv, an .npz "
                          "boolean matrix, or all-subsets:n=N,k=K (every K-subset of N "
                          "documents).", required=True)
  app.run(COMMANDS[command], flags_parser=_parse_flags)


if __name__ == "__main__":
  run_main()
