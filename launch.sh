#!/usr/bin/env bash
# Launch a critical-n sweep on this machine or on every worker of a Cloud TPU VM slice.
# Run `./launch.sh --help` for the modes. With --dry-run, each command is printed (shell-quoted,
# one per line, ready to copy and paste) and nothing is executed.
set -euo pipefail

readonly PROG=launch.sh
# Paths on the workers, where the remote shell expands ~.
# shellcheck disable=SC2088
readonly REMOTE_DIR='~/critical-n-sweep'
# shellcheck disable=SC2088
readonly REMOTE_TARBALL='~/critical-n-sweep.tar.gz'
# shellcheck disable=SC2088
readonly REMOTE_VENV='~/sweep-venv'

usage_short() {
  printf '%s\n' \
    "usage: ./launch.sh [--dry-run] [local] [CONFIG] [WORKDIR] [-- SWEEP_FLAGS...]" \
    "       ./launch.sh [--dry-run] plan DEVICE [CONFIG] [-- SWEEP_FLAGS...]" \
    "       ./launch.sh [--dry-run] tpu NAME ZONE [CONFIG] [WORKDIR] [-- SWEEP_FLAGS...]" \
    "       ./launch.sh [--dry-run] tpu-create NAME ZONE TYPE [VERSION] [-- GCLOUD_FLAGS...]" \
    "       ./launch.sh --help"
}

usage() {
  usage_short
  printf '%s\n' \
    "" \
    "modes:" \
    "  local       create or reuse .venv in the repository (python3 -m venv; pip install -e ." \
    "              only if sweep is not installed there), then run" \
    "              sweep run --config=CONFIG --workdir=WORKDIR SWEEP_FLAGS..." \
    "              defaults: CONFIG=experiments/quick.py WORKDIR=runs/quick. The default mode." \
    "  plan        the preflight, on this machine: .venv as for local but with .[tpu]" \
    "              (libtpu compiles for any TPU slice without one), then" \
    "              sweep plan --config=CONFIG --device=DEVICE SWEEP_FLAGS..., e.g. DEVICE" \
    "              tpu-v5e-8. It exits 3 when a d cannot be measured on DEVICE (its boundary" \
    "              does not fit a chip): run it before tpu-create." \
    "              default: CONFIG=experiments/paper.py." \
    "  tpu         on every worker of the TPU VM NAME in ZONE: copy this repository to" \
    "              ~/critical-n-sweep, create or reuse ~/sweep-venv with .[tpu], then run" \
    "              sweep run --multihost (with SWEEP_MULTIHOST=1) on all workers at once." \
    "              defaults: CONFIG=experiments/paper.py WORKDIR=runs/paper." \
    "              On a multi-host slice WORKDIR must be shared by all workers, e.g." \
    "              gs://BUCKET/runs/paper; a relative path is inside ~/critical-n-sweep on" \
    "              each worker. Running the same command again resumes from the latest" \
    "              checkpoint in WORKDIR." \
    "  tpu-create  gcloud compute tpus tpu-vm create NAME --zone=ZONE --accelerator-type=TYPE" \
    "              --version=VERSION GCLOUD_FLAGS... (e.g. --spot, --project=P). Default" \
    "              VERSION from TYPE: v6e-* v2-alpha-tpuv6e, v5p-* v2-alpha-tpuv5," \
    "              v5litepod-* v2-alpha-tpuv5-lite, otherwise tpu-ubuntu2204-base." \
    "" \
    "CONFIG and WORKDIR are relative to the repository root (to ~/critical-n-sweep on TPU" \
    "workers). Flags after -- go to sweep run (local, tpu), sweep plan (plan) or gcloud" \
    "(tpu-create), e.g." \
    "  ./launch.sh tpu my-tpu us-central2-b -- --config.dims='(4,5,6)'" \
    "" \
    "options:" \
    "  --dry-run   print each command instead of running it (accepted anywhere)" \
    "  -h, --help  show this help" \
    "" \
    "environment: PYTHON (local mode, default python3) is the interpreter for a new .venv."
}

die() {
  printf '%s: %s\n' "$PROG" "$1" >&2
  usage_short >&2
  exit 2
}

dry_run=0

# quote ARGS...: the arguments joined by spaces, each one that needs it in single quotes, so that
# bash or any POSIX shell (here or on a worker) reads them back unchanged.
quote() {
  local out='' arg sq="'"
  for arg in "$@"; do
    if [[ -z "$arg" || "$arg" == *[!A-Za-z0-9_./=:@%+,-]* ]]; then
      arg="'${arg//$sq/$sq\\$sq$sq}'"
    fi
    out+="${out:+ }$arg"
  done
  printf '%s' "$out"
}

# run CMD ARGS...: execute, or with --dry-run print the command, quoted, on one line.
run() {
  if (( dry_run )); then
    printf '%s\n' "$(quote "$@")"
  else
    "$@"
  fi
}

# ---- arguments ---------------------------------------------------------------------------
positional=()
extra=()
seen_dashdash=0
for arg in "$@"; do
  if [[ "$arg" == --dry-run ]]; then
    dry_run=1                      # honoured even after --, so it can never run by accident
  elif (( seen_dashdash )); then
    extra+=("$arg")
  elif [[ "$arg" == -- ]]; then
    seen_dashdash=1
  elif [[ "$arg" == -h || "$arg" == --help ]]; then
    usage
    exit 0
  elif [[ "$arg" == -* ]]; then
    die "unknown option '$arg' (flags for sweep go after --)"
  else
    positional+=("$arg")
  fi
done

mode=local
if (( ${#positional[@]} > 0 )); then
  mode=${positional[0]}
  positional=("${positional[@]:1}")
fi

# need COUNT NAME...: the first COUNT positional arguments are required and non-empty.
need() {
  local count=$1 i
  shift
  for (( i = 0; i < count; i++ )); do
    if (( i >= ${#positional[@]} )); then
      die "$mode: missing argument $1"
    fi
    [[ -n "${positional[i]}" ]] || die "$mode: argument $1 is empty"
    shift
  done
}

at_most() {
  (( ${#positional[@]} <= $1 )) || die "$mode: too many arguments: ${positional[*]:$1}"
}

case "$mode" in
  local)
    at_most 2
    config=${positional[0]:-experiments/quick.py}
    workdir=${positional[1]:-runs/quick}
    ;;
  plan)
    need 1 DEVICE
    at_most 2
    device=${positional[0]}
    config=${positional[1]:-experiments/paper.py}
    ;;
  tpu)
    need 2 NAME ZONE
    at_most 4
    name=${positional[0]}
    zone=${positional[1]}
    config=${positional[2]:-experiments/paper.py}
    workdir=${positional[3]:-runs/paper}
    ;;
  tpu-create)
    need 3 NAME ZONE TYPE
    at_most 4
    name=${positional[0]}
    zone=${positional[1]}
    accelerator_type=${positional[2]}
    # Cloud TPU "TPU software versions" (cloud.google.com/tpu/docs/runtimes) recommends, for
    # JAX: v6e -> v2-alpha-tpuv6e, v5p -> v2-alpha-tpuv5, v5e -> v2-alpha-tpuv5-lite, and
    # v4 and older -> tpu-ubuntu2204-base.
    case "$accelerator_type" in
      v6e-*) default_version=v2-alpha-tpuv6e ;;
      v5p-*) default_version=v2-alpha-tpuv5 ;;
      v5litepod-* | v5e-*) default_version=v2-alpha-tpuv5-lite ;;
      *) default_version=tpu-ubuntu2204-base ;;
    esac
    version=${positional[3]:-$default_version}
    ;;
  *)
    die "unknown mode '$mode' (expected local, plan, tpu or tpu-create)"
    ;;
esac

if [[ "$mode" == tpu* ]] && (( ! dry_run )) && ! command -v gcloud >/dev/null 2>&1; then
  die "gcloud not found on PATH; install the Google Cloud CLI (https://cloud.google.com/sdk)"
fi

case "${BASH_SOURCE[0]}" in
  */*) script_dir=${BASH_SOURCE[0]%/*} ;;
  *) script_dir=. ;;
esac
repo=$(cd "$script_dir" && pwd -P)

# ---- modes -------------------------------------------------------------------------------
venv=$repo/.venv

# local_venv: .venv in the repository, created once.
local_venv() {
  run cd "$repo"
  if [[ ! -x "$venv/bin/python" ]]; then
    run "${PYTHON:-python3}" -m venv "$venv"
  fi
}

launch_local() {
  local_venv
  if [[ ! -x "$venv/bin/sweep" ]]; then
    run "$venv/bin/python" -m pip install -e "$repo"
  fi
  run "$venv/bin/sweep" run --config="$config" --workdir="$workdir" ${extra[@]+"${extra[@]}"}
}

launch_plan() {
  local_venv
  if ! "$venv/bin/python" -c "import libtpu, sweep" >/dev/null 2>&1; then
    run "$venv/bin/python" -m pip install -e "${repo}[tpu]"
  fi
  run "$venv/bin/sweep" plan --config="$config" --device="$device" ${extra[@]+"${extra[@]}"}
}

launch_tpu() {
  local target=(--zone="$zone" --worker=all) tarball tmp
  if (( dry_run )); then
    tarball=${TMPDIR:-/tmp}/critical-n-sweep.tar.gz
  else
    tmp=$(mktemp -d)
    # shellcheck disable=SC2064  # expand $tmp now: it is local to this function
    trap "rm -rf -- '$tmp'" EXIT
    tarball=$tmp/critical-n-sweep.tar.gz
  fi

  # 1. The code, without virtual environments, runs, caches or git metadata, onto every worker.
  #    Files are unpacked over the previous copy: a relative WORKDIR inside it survives.
  run env COPYFILE_DISABLE=1 tar -czf "$tarball" \
    --exclude=./.git --exclude=./.venv --exclude=./runs --exclude=./.ci/venv --exclude=./build \
    --exclude=__pycache__ --exclude=.pytest_cache --exclude='*.egg-info' \
    -C "$repo" .
  run gcloud compute tpus tpu-vm scp "$tarball" "$name:$REMOTE_TARBALL" "${target[@]}"
  run gcloud compute tpus tpu-vm ssh "$name" "${target[@]}" --command \
    "set -e; mkdir -p $REMOTE_DIR; tar -xzf $REMOTE_TARBALL -C $REMOTE_DIR; rm -f $REMOTE_TARBALL"

  # 2. A virtual environment with .[tpu] on every worker. The project needs Python >= 3.11 and
  #    tpu-ubuntu2204-base ships 3.10, so take the newest python3.1x >= 3.11 there is, else
  #    install python3.11 from Ubuntu's archive (TPU VMs have passwordless sudo).
  local pick_python
  # shellcheck disable=SC2016  # expanded by the workers' shell, not here
  pick_python='py=; for c in python3.13 python3.12 python3.11 python3; do'
  # shellcheck disable=SC2016
  pick_python+=' if command -v "$c" >/dev/null && "$c" -c "import sys; sys.exit(sys.version_info < (3, 11))"; then py=$c; break; fi; done;'
  # shellcheck disable=SC2016
  pick_python+=' if [ -z "$py" ]; then sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3.11 python3.11-venv; py=python3.11; fi;'
  run gcloud compute tpus tpu-vm ssh "$name" "${target[@]}" --command \
    "set -e; if [ ! -x $REMOTE_VENV/bin/python ]; then $pick_python \"\$py\" -m venv $REMOTE_VENV; fi; $REMOTE_VENV/bin/python -m pip install --quiet --upgrade pip; $REMOTE_VENV/bin/python -m pip install --quiet -e \"\$HOME/critical-n-sweep[tpu]\""

  # 3. The sweep on all workers at once; every process calls jax.distributed.initialize().
  #    The same command again resumes from the latest checkpoint in WORKDIR.
  local sweep_args
  sweep_args=$(quote --multihost --config="$config" --workdir="$workdir" ${extra[@]+"${extra[@]}"})
  run gcloud compute tpus tpu-vm ssh "$name" "${target[@]}" --command \
    "cd $REMOTE_DIR && SWEEP_MULTIHOST=1 $REMOTE_VENV/bin/sweep run $sweep_args"
}

launch_tpu_create() {
  run gcloud compute tpus tpu-vm create "$name" --zone="$zone" \
    --accelerator-type="$accelerator_type" --version="$version" ${extra[@]+"${extra[@]}"}
}

case "$mode" in
  local) launch_local ;;
  plan) launch_plan ;;
  tpu) launch_tpu ;;
  tpu-create) launch_tpu_create ;;
esac
