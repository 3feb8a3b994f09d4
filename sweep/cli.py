"""`sweep run | fit-qrels | status | plot | verify | plan`: parses flags and wires the modules,
nothing more."""

from __future__ import annotations

import json
import os
import signal
import sys

import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from sweep import config as config_lib
from sweep import construct
from sweep import driver as driver_lib
from sweep.store import Store

USAGE = """usage: sweep COMMAND [flags]
  sweep run --config=experiments/quick.py --workdir=DIR [--config.FIELD=VALUE ...]
  sweep fit-qrels --qrels=PATH --workdir=DIR [--config=FILE] [--config.FIELD=VALUE ...]
  sweep status --workdir=DIR [--json]
  sweep verify WITNESS.npz
  sweep plot --workdir=DIR [--workdir=DIR2 ...] [--degree=3] [--d_min=4] [--out=PATH] [--log]
  sweep plan --config=FILE [--device=NAME] [--calibrate=WORKDIR] [--json]"""

FLAGS = flags.FLAGS


def _fail(error: Exception) -> None:
  sys.exit(f"error: {' '.join(str(error).split())}")


def _draw_figure(workdir: str) -> None:
  from plots import critical_n  # matplotlib only where a figure is drawn
  try:
    critical_n.report([workdir])
  except ValueError as error:
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


def _sweep(config) -> Store | None:
  """Run (or resume) the sweep of `config` in --workdir; None if a signal stopped it."""
  logging.set_verbosity(logging.WARNING)  # progress lines are printed; library chatter is not
  writer = _start_processes()
  stop = []
  for signum in (signal.SIGTERM, signal.SIGINT):
    signal.signal(signum, lambda signum, frame: stop.append(signum))
  store = Store(FLAGS.workdir, writer=writer)
  try:
    driver = driver_lib.Driver(config, store)
    store.claim(config.to_dict())
    finished = driver.run(stop_requested=lambda: bool(stop),
                          progress=print if writer else lambda _: None)
  except (ValueError, FileNotFoundError) as error:
    _fail(error)
  finally:
    store.close()
  if not finished:
    if writer:
      print(f"stopped by signal {stop[0]} after a checkpoint; resume with the same command: "
            f"{' '.join(sys.argv)}")
    return None
  return store if writer else None


def run(argv) -> None:
  del argv
  store = _sweep(FLAGS.config)
  if store is None:
    return
  for r in store.read_critical_n():
    critical = r["critical_n"] or (f"at least {r['lo']} (no failure up to max_n)"
                                   if r["done"] == "true" else "-")
    print(f"d={r['d']}: critical n = {critical} (largest success {r['max_success_n'] or '-'}, "
          f"certified {r['critical_n_certified'] or '-'}, probes {r['probes']})")
  _draw_figure(FLAGS.workdir)


def fit_qrels(argv) -> None:
  del argv
  config = FLAGS.config
  config.qrels = os.path.abspath(FLAGS.qrels)
  store = _sweep(config)
  if store is None:
    return
  report = store.read_critical_d()
  print(f"{report['source']}: {report['queries']} queries x {report['documents']} documents, "
        f"critical d = {report['critical_d']} (d = {report['critical_d']} trains every "
        f"relevant set, d = {report['critical_d'] - 1} does not)")


def status(argv) -> None:
  del argv
  store = Store(FLAGS.workdir)
  try:
    finished = len(store.load_results())
    if (store.workdir / "critical_d.json").exists():
      report = store.read_critical_d()
      print(json.dumps({"configurations_finished": finished, **report}, indent=2))
      return
    rows = store.read_critical_n()
  except (ValueError, FileNotFoundError) as error:
    _fail(error)
  if FLAGS.json:
    print(json.dumps({"configurations_finished": finished, "searches": rows}, indent=2))
    return
  print(f"{store.workdir}: {finished} configurations finished")
  print(f"{'d':>4} {'k':>3} {'bracket':>12} {'critical_n':>10} {'max_success':>11} "
        f"{'probes':>6}  state")
  for r in rows:
    bracket = f"[{r['lo']}, {r['hi'] or '?'}]"
    print(f"{r['d']:>4} {r['k']:>3} {bracket:>12} {r['critical_n'] or '-':>10} "
          f"{r['max_success_n'] or '-':>11} {r['probes']:>6}  "
          f"{'done' if r['done'] == 'true' else 'open'}")


def verify(argv) -> None:
  """Re-check a witness in float64: every query's relevant documents strictly on top."""
  if len(argv) != 2:
    sys.exit("usage: sweep verify WITNESS.npz")
  try:
    with np.load(argv[1]) as witness:
      queries, documents, relevance = (witness[name].astype(np.float64) if name != "relevance"
                                       else witness[name]
                                       for name in ("queries", "documents", "relevance"))
      d, n = int(witness["d"]), int(witness["n"])
  except (OSError, KeyError, ValueError) as error:
    _fail(ValueError(f"{argv[1]} is not a witness file: {error}"))
  ok, margin = construct.verify(queries, documents, relevance)
  print(f"{argv[1]}: d={d}, n={n}, {len(queries)} queries: "
        f"{'verified' if ok else 'NOT verified'} in float64, margin {margin:.3e}")
  sys.exit(0 if ok else 1)


def plan(argv) -> None:
  """Compile the sweep's programs, never train, and print what the sweep will cost."""
  del argv
  from sweep import plan as plan_lib  # compiles; only this command needs it
  logging.set_verbosity(logging.WARNING)
  try:
    device = plan_lib.device_named(FLAGS.device)
    steps = plan_lib.StepModel()
    if FLAGS.calibrate:
      results = Store(FLAGS.calibrate).load_results()
      steps = plan_lib.calibrate(list(results.values()), f"{FLAGS.calibrate}/results.jsonl")
    report = plan_lib.plan_sweep(FLAGS.config, device, steps)
  except (ValueError, FileNotFoundError) as error:
    _fail(error)
  print(json.dumps(report, indent=2) if FLAGS.json else plan_lib.format_plan(report))


COMMANDS = {"run": run, "fit-qrels": fit_qrels, "status": status, "verify": verify, "plan": plan}


def run_main() -> None:
  """Console entry point: the first argument picks the command."""
  if len(sys.argv) < 2 or sys.argv[1] not in (*COMMANDS, "plot"):
    sys.exit(USAGE)
  command = sys.argv.pop(1)
  if command == "plot":
    from plots import critical_n
    critical_n.main([f"{sys.argv[0]} plot", *sys.argv[1:]])
    return
  if command == "verify":
    app.run(verify)
    return
  if command == "plan":
    config_flags.DEFINE_config_file("config", None, "A config file, e.g. experiments/paper.py.",
                                    lock_config=True)
    flags.mark_flag_as_required("config")
    flags.DEFINE_string("device", "cpu", "Where the sweep will run: h100, a100, tpu-v4, tpu-v5e, "
                        "tpu-v5p, tpu-v6e or cpu (measured here), optionally -CHIPS (tpu-v5e-8).")
    flags.DEFINE_string("calibrate", None, "A finished workdir whose results.jsonl sets the "
                        "steps each probe trains.")
    flags.DEFINE_bool("json", False, "Print the plan as JSON.")
    app.run(plan)
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
      flags.DEFINE_string("qrels", None, "Relevance: qrels.jsonl, a BEIR .tsv, or an .npz "
                          "boolean matrix.", required=True)
  app.run(COMMANDS[command])


if __name__ == "__main__":
  run_main()
