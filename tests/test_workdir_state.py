"""A workdir's state is trusted only when it is whole and made by this config: results lines
lost from a finished sweep come back from its checkpoint, another config is refused before
anything is written, and a rerun leaves only the two newest checkpoints. Through the CLI, on
one finished tiny sweep shared by every test here."""

import json
import shutil

import pytest

from helpers import EVERY_CHUNK, sweep, write_config_file

LATE_LINES = slice(2, 4)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  root = tmp_path_factory.mktemp("finished")
  config_file = write_config_file(root / "tiny.py", dims=(2, 3), restarts=1,
                                  **EVERY_CHUNK)  # its newest two checkpoints kept
  workdir = root / "w"
  run = sweep("run", f"--config={config_file}", f"--workdir={workdir}")
  _, err = run.communicate(timeout=300)
  assert run.returncode == 0, err
  return config_file, workdir


def copy_of(finished, tmp_path):
  config_file, workdir = finished
  return config_file, shutil.copytree(workdir, tmp_path / "w")


def rerun(config_file, workdir, *flags):
  process = sweep("run", f"--config={config_file}", f"--workdir={workdir}", *flags)
  out, err = process.communicate(timeout=300)
  return process.returncode, out, err


def thin_and_repeat(path):
  lines = path.read_text().splitlines(keepends=True)
  del lines[LATE_LINES]
  path.write_text("".join(lines * 2))


DAMAGES = {
    "torn last line": lambda path: path.write_text(path.read_text()[:-40]),
    "truncated to 0 bytes": lambda path: path.write_text(""),
    "deleted": lambda path: path.unlink(),
    "lines missing in the middle, the rest repeated": thin_and_repeat,
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_lost_results_lines_are_rebuilt_from_the_checkpoint(finished, tmp_path, damage):
  config_file, workdir = copy_of(finished, tmp_path)
  DAMAGES[damage](workdir / "results.jsonl")
  returncode, _, err = rerun(config_file, workdir)
  assert returncode == 0, err
  original = finished[1]
  assert sorted((workdir / "results.jsonl").read_text().splitlines()) == sorted(
      (original / "results.jsonl").read_text().splitlines())
  assert (workdir / "critical_n.csv").read_text() == (original / "critical_n.csv").read_text()
  said = [line for line in err.splitlines() if "results.jsonl: " in line]
  assert len(said) == 1 and ("rebuilt" in said[0] or "repeated" in said[0]), err


def delete_config_json(workdir):
  (workdir / "config.json").unlink()


def edit_config_json(workdir):
  stored = json.loads((workdir / "config.json").read_text())
  stored["config"]["learning_rate"] = 0.5
  (workdir / "config.json").write_text(json.dumps(stored))


def keep_only_the_results(workdir):
  (workdir / "config.json").unlink()
  shutil.rmtree(workdir / "checkpoints")


@pytest.mark.parametrize("tamper, named", [
    (delete_config_json, "in its checkpoint"),
    (edit_config_json, "in its checkpoint"),
    (keep_only_the_results, "results.jsonl: the line of d=2")])
def test_state_of_another_config_is_refused_before_anything_is_written(finished, tmp_path,
                                                                       tamper, named):
  config_file, workdir = copy_of(finished, tmp_path)
  tamper(workdir)
  before = {p.name: p.read_bytes() for p in workdir.iterdir() if p.is_file()}
  returncode, _, err = rerun(config_file, workdir, "--config.learning_rate=0.5")
  assert returncode != 0
  assert err.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in err
  assert named in err and "learning_rate" in err.strip().splitlines()[-1]
  assert {p.name: p.read_bytes() for p in workdir.iterdir() if p.is_file()} == before


def test_a_run_only_field_may_differ_from_the_checkpoint(finished, tmp_path):
  config_file, workdir = copy_of(finished, tmp_path)
  delete_config_json(workdir)
  returncode, _, err = rerun(config_file, workdir, "--config.label=renamed")
  assert returncode == 0, err
  assert json.loads((workdir / "config.json").read_text())["config"]["label"] == "renamed"


def test_stale_checkpoints_and_temporary_folders_are_cleaned_up(finished, tmp_path):
  """What kills leave: a save cut short (orbax's temporary folder) and a save completed just
  before the older checkpoint was deleted (three steps)."""
  config_file, workdir = copy_of(finished, tmp_path)
  folder = workdir / "checkpoints"
  steps = sorted(int(p.name) for p in folder.iterdir())
  shutil.copytree(folder / str(steps[-1]), folder / f"{steps[-1] + 1}.orbax-checkpoint-tmp-1")
  shutil.copytree(folder / str(steps[0]), folder / str(steps[0] - 1))
  returncode, _, err = rerun(config_file, workdir)
  assert returncode == 0, err
  assert sorted(p.name for p in folder.iterdir()) == sorted(map(str, steps))
