"""Tests of the critical-n fit, fit.json, figure and CLI errors (plots/critical_n.py)."""

import json
import os
import re
import stat
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest

from plots import critical_n as cn
from sweep import paper
from sweep.store import Store

HEADER = "d,k,critical_n,max_success_n,lo,hi,done,probes\n"


def write_workdir(path, rows, results=None, label=None):
  """A fake sweep workdir: critical_n.csv rows as text, optional results.jsonl and config."""
  path.mkdir(parents=True, exist_ok=True)
  (path / "critical_n.csv").write_text(HEADER + "".join(r + "\n" for r in rows))
  if results is not None:
    (path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))
  if label is not None:
    (path / "config.json").write_text(json.dumps({"config": {"label": label}}))
  return path


def paper_like_rows(dims=range(4, 13), open_dims=(13,)):
  """Finished rows on the paper's numbers plus open searches with a bracket."""
  table = {r["d"]: r["critical_n"] for r in paper.read_table6()}
  rows = [f"{d},2,{table[d]},{table[d]},{table[d]},{table[d] + 1},true,5" for d in dims]
  rows += [f"{d},2,,{table[d] - 4},{table[d] - 4},{table[d] + 6},false,3" for d in open_dims]
  return rows


def restart_results(dims=range(4, 13)):
  """Three seeds per d whose largest succeeding n differ by a few documents."""
  table = {r["d"]: r["critical_n"] for r in paper.read_table6()}
  results = []
  for d in dims:
    for seed, shift in enumerate((-2, 0, 1)):
      best = table[d] + shift
      results.append(dict(d=d, n=best, k=2, seed=seed, success=True, stop_reason="success",
                          stop_step=10))
      results.append(dict(d=d, n=best + 1, k=2, seed=seed, success=False,
                          stop_reason="patience", stop_step=10))
  return results


# --- fit --------------------------------------------------------------------------------------


def test_paper_fit_reproduces_published_coefficients():
  fit = cn.paper_fit()
  assert [round(c, 4) for c in fit.coefficients] == [-10.5322, 4.0309, 0.0520, 0.0037]
  assert fit.coefficients == paper.fit_coefficients()  # searches start from it rounded
  assert fit.r2 >= 0.998
  assert fit.d_min == 4 and fit.degree == 3 and len(fit.points) == 42
  assert cn.extrapolate(fit)[1024] == pytest.approx(4.0e6, rel=0.01)


def test_fit_recovers_noisy_cubic():
  rng = np.random.default_rng(0)
  true = np.array([5.0, 2.0, 0.1, 0.004])
  d = np.arange(4, 80)
  n = np.polynomial.polynomial.polyval(d, true) + rng.normal(0, 1.0, d.size)
  fit = cn.fit_polynomial(d, np.round(n).astype(int), degree=3)
  np.testing.assert_allclose(fit.coefficients[:2], true[:2], atol=1.0)
  # Each higher coefficient within 5% of its own size (an absolute tolerance would swallow them).
  np.testing.assert_allclose(fit.coefficients[2:], true[2:], rtol=0.05, atol=0)
  assert fit.r2 > 0.999


def test_fit_ignores_dimensions_below_d_min():
  d = np.arange(1, 20)
  n = 3 * d + 7
  n[:3] = 1000  # junk below d_min must not bend the line
  fit = cn.fit_polynomial(d, n, degree=1, d_min=4)
  np.testing.assert_allclose(fit.coefficients, [7, 3], atol=1e-8)
  assert fit.points[0] == (4, 19)


def test_format_fit_table_lists_coefficients_r2_and_extrapolations():
  table = cn.format_fit_table(cn.paper_fit())
  for text in ("d^3", "r²", "4096", "4,005,322"):
    assert text in table


# --- files ------------------------------------------------------------------------------------


def test_read_critical_n_types_rows(tmp_path):
  rows = cn.read_critical_n(write_workdir(tmp_path, paper_like_rows()))
  assert rows[0] == dict(d=4, k=2, critical_n=10, max_success_n=10, lo=10, hi=11, done=True,
                         probes="5", critical_n_certified=None, geometric_critical_n=None,
                         status="measured")
  assert rows[-1]["status"] == "open"
  assert rows[-1]["critical_n"] is None and rows[-1]["done"] is False


def test_restart_spread_is_min_max_of_per_seed_best(tmp_path):
  spread = cn.restart_spread(restart_results(dims=[10]))
  assert spread == {(10, 2): (34, 37)}


def test_read_results_skips_a_half_written_last_line_only(tmp_path):
  record = json.dumps(dict(d=4, n=10, k=2, seed=0, success=True, stop_reason="success",
                           stop_step=50))
  (tmp_path / "results.jsonl").write_text(f"{record}\n{record}\n{{\"d\": 4, \"n")
  assert len(Store(str(tmp_path), writer=False).read_results()) == 2
  (tmp_path / "results.jsonl").write_text(f"{record}\n{{oops\n{record}\n")
  with pytest.raises(ValueError, match="results.jsonl: line 2"):
    Store(str(tmp_path), writer=False).read_results()


def test_write_fit_json(tmp_path):
  write_workdir(tmp_path, paper_like_rows())
  fit = cn.fit_workdir(tmp_path)
  path = cn.write_fit_json(tmp_path / "figure", {"w": fit})
  assert path == f"{tmp_path / 'figure'}.fit.json"
  [data] = json.loads(Path(path).read_text()).values()
  assert set(data) == {"degree", "coefficients", "r2", "d_min", "measured_d", "points",
                       "extrapolation", "extrapolation_refused", "paper_extrapolation"}
  assert set(data["extrapolation"]) == {"512", "768", "1024", "3072", "4096"}
  assert data["degree"] == 3 and len(data["coefficients"]) == 4 and len(data["points"]) == 9
  assert data["measured_d"] == [4, 12] and data["extrapolation_refused"] is None
  assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_fit_json_has_the_file_mode_of_the_other_outputs(tmp_path):
  write_workdir(tmp_path, paper_like_rows())
  cn.write_fit_json(tmp_path / "figure", {"w": cn.fit_workdir(tmp_path)})
  Store(str(tmp_path)).write_critical_n([])
  mode = lambda name: stat.S_IMODE(os.stat(tmp_path / name).st_mode)
  assert mode("figure.fit.json") == mode("critical_n.csv") == 0o666 & ~current_umask()


def current_umask():
  mask = os.umask(0)
  os.umask(mask)
  return mask


def test_a_fit_that_falls_is_not_extrapolated(tmp_path, capsys):
  """The quick job's shape: d = 4 … 10 bending over, so the cubic term comes out negative."""
  measured = {4: 9, 5: 13, 6: 19, 7: 25, 8: 30, 9: 33, 10: 35}
  write_workdir(tmp_path, [f"{d},2,{n},{n},{n},{n + 1},true,5" for d, n in measured.items()])
  fit = cn.fit_workdir(tmp_path)
  assert fit.coefficients[3] < 0
  reason = cn.extrapolation_refusal(fit)
  assert reason and "decreases" in reason
  cn.main(["critical_n", f"--workdir={tmp_path}", f"--out={tmp_path / 'figure'}"])
  out = capsys.readouterr().out
  assert "measured d = 4 … 10" in out and "not extrapolated" in out
  assert "4,005,322" in out  # the paper fit's d = 1024 beside it
  assert not re.search(r"-\d{1,3},\d{3}", out)  # no negative predicted n anywhere
  data = json.loads((tmp_path / "figure.fit.json").read_text())[str(tmp_path)]
  assert data["extrapolation"] is None and "decreases" in data["extrapolation_refused"]
  assert data["paper_extrapolation"]["1024"] == pytest.approx(4.0e6, rel=0.01)


# --- figure -----------------------------------------------------------------------------------


def test_plot_one_workdir(tmp_path):
  workdir = write_workdir(tmp_path / "run", paper_like_rows(), restart_results())
  paths = [Path(p) for p in cn.plot([workdir], tmp_path / "fig" / "critical_n")]
  assert [p.suffix for p in paths] == [".png", ".pdf"]
  assert all(p.stat().st_size > 0 for p in paths)


def test_plot_two_workdirs_log_axis(tmp_path):
  a = write_workdir(tmp_path / "a", paper_like_rows(), restart_results(), label="quick")
  b = write_workdir(tmp_path / "b", paper_like_rows(range(4, 6), open_dims=(6, 7)))
  paths = cn.plot([a, b], tmp_path / "both", log=True)  # b has too few points for a curve
  assert all(os.path.getsize(p) > 0 for p in paths)


def listing(folder):
  """Every file under `folder` with its size and modification time."""
  return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in Path(folder).rglob("*")}


def test_main_writes_fits_and_figures_where_out_points_never_in_the_workdir(
    tmp_path, monkeypatch, capsys):
  workdir = write_workdir(tmp_path / "run", paper_like_rows(), restart_results())
  before = listing(workdir)
  cn.main(["critical_n", f"--workdir={workdir}", f"--out={tmp_path / 'fig' / 'a'}"])
  assert json.loads((tmp_path / "fig" / "a.fit.json").read_text())[str(workdir)]["degree"] == 3
  assert (tmp_path / "fig" / "a.png").stat().st_size > 0
  assert (tmp_path / "fig" / "a.pdf").stat().st_size > 0
  assert "r²" in capsys.readouterr().out
  monkeypatch.chdir(tmp_path)  # the default --out: the current directory
  cn.main(["critical_n", f"--workdir={workdir}"])
  assert {p.name for p in tmp_path.iterdir()} >= {"critical_n.png", "critical_n.fit.json"}
  assert listing(workdir) == before


def test_plot_on_bad_results_writes_nothing(tmp_path):
  workdir = write_workdir(tmp_path / "run", paper_like_rows(), restart_results())
  with (workdir / "results.jsonl").open("a") as f:
    f.write(json.dumps(dict(d=4, n=10, k=2, seed=0, success="yes", stop_reason="success",
                            stop_step=5)) + "\n")
  before = listing(tmp_path)
  with pytest.raises(SystemExit) as info:
    cn.main(["critical_n", f"--workdir={workdir}", f"--out={tmp_path / 'fig'}"])
  assert str(info.value.code).startswith(f"error: {workdir / 'results.jsonl'}: line ")
  assert "field 'success' is \"yes\", not a bool" in str(info.value.code)
  assert listing(tmp_path) == before


# --- errors -----------------------------------------------------------------------------------

BAD_CSV = {  # case -> critical_n.csv text (None: no file at all)
    "missing": None,
    "too_few_points": HEADER + "".join(r + "\n" for r in paper_like_rows(range(4, 7))),
    "missing_column": "d,k,critical_n\n4,2,10\n",
    "not_an_integer": HEADER + "4,2,ten,10,10,11,true,5\n",
    "bad_done": HEADER + "4,2,10,10,10,11,yes,5\n",
    "short_row": HEADER + "4,2,10\n",
    "empty": "",
}


def make_bad_workdir(tmp_path, case):
  workdir = tmp_path / case
  workdir.mkdir()
  if BAD_CSV[case] is not None:
    (workdir / "critical_n.csv").write_text(BAD_CSV[case])
  return workdir


@pytest.mark.parametrize("case", sorted(BAD_CSV))
def test_errors_name_the_file(tmp_path, case):
  workdir = make_bad_workdir(tmp_path, case)
  with pytest.raises((FileNotFoundError, ValueError), match="critical_n.csv") as info:
    cn.fit_workdir(workdir)
  assert "\n" not in str(info.value)


@pytest.mark.parametrize("case", sorted(BAD_CSV))
def test_main_exits_with_one_line(tmp_path, case):
  workdir = make_bad_workdir(tmp_path, case)
  with pytest.raises(SystemExit) as info:
    cn.main(["critical_n", f"--workdir={workdir}"])
  message = str(info.value.code)
  assert message.startswith("error: ") and "critical_n.csv" in message and "\n" not in message


def test_main_requires_workdir():
  with pytest.raises(SystemExit) as info:
    cn.main(["critical_n"])
  assert str(info.value.code).startswith("error: ") and "workdir" in str(info.value.code)


def test_an_overlay_draws_lower_bounds_without_a_fit(tmp_path, capsys):
  fitted = write_workdir(tmp_path / "free", paper_like_rows())
  bounded = write_workdir(tmp_path / "centroid", [f"{d},2,,120,120,,true,9" for d in range(4, 13)])
  paths = cn.report([fitted, bounded], tmp_path / "overlay")
  assert all(os.path.getsize(p) > 0 for p in paths)
  assert "drawn without a fit" in capsys.readouterr().out
  assert set(json.loads((tmp_path / "overlay.fit.json").read_text())) == {str(fitted)}
  with pytest.raises(ValueError, match="critical_n.csv"):
    cn.report([bounded], tmp_path / "alone")


def test_a_search_whose_loss_went_non_finite_is_marked_and_never_fitted(tmp_path):
  rows = cn.read_critical_n(write_workdir(tmp_path, paper_like_rows()))
  rows.append(dict(d=13, k=2, critical_n=None, max_success_n=None, lo=2, hi=3, done=True,
                   probes=2, critical_n_certified=None, geometric_critical_n="unbounded",
                   status="nonfinite"))
  Store(str(tmp_path)).write_critical_n(rows)
  assert 13 not in [d for d, _ in cn.fit_workdir(tmp_path).points]
  fig, ax = plt.subplots()
  handles = cn._draw_workdir(ax, Store(str(tmp_path)), cn.read_critical_n(tmp_path), "C0", 3, 4,
                             log=False)
  marked = [h for h in handles if "NaN/inf" in h.get_label()]
  assert len(marked) == 1 and list(marked[0].get_xdata()) == [13] and list(marked[0].get_ydata()) == [3]
  plt.close(fig)
