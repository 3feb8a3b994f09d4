"""Tests of the critical-n fit, fit.json, figure and CLI errors (plots/critical_n.py)."""

import io
import json
import os
import re
import stat
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest

from plots import critical_n as cn
from sweep import formats, paper
from sweep.store import Store

HEADER = ",".join(formats.CRITICAL_N_COLUMNS) + "\n"


def complete_row(row: str) -> str:
  """A row of its first eight columns (d ... probes), the later ones as a search without
  certificates, geometry or seed statistics leaves them: empty, and its status."""
  d, k, critical_n, max_success_n, lo, hi, done, probes = row.split(",")
  status = "open" if done == "false" else "measured" if critical_n else "ceiling"
  return f"{row},,,{status},,"


def write_workdir(path, rows, results=None, label=None):
  """A fake sweep workdir: critical_n.csv rows as text, optional results.jsonl and config."""
  path.mkdir(parents=True, exist_ok=True)
  (path / "critical_n.csv").write_text(HEADER + "".join(complete_row(r) + "\n" for r in rows))
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
                         status="measured", critical_n_median=None, seed_successes=None)
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
  Store(str(tmp_path)).write_report("critical_n.csv", [])
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
#
# Each figure test reads back what was drawn (the Axes' lines, error bars and patches, by their
# legend label) and compares it with what the inputs say should be there: the rows written to
# critical_n.csv and results.jsonl, the paper's table, and fits computed here with numpy's
# polyfit, independently of cn.fit_polynomial.

SUPERSCRIPT_DIGITS = "⁰¹²³⁴⁵⁶⁷⁸⁹"


@pytest.fixture
def drawn(monkeypatch):
  """Every figure cn.draw returns during the test (plot, report and main all draw through it)."""
  figures, draw = [], cn.draw

  def recording(*args, **kwargs):
    figures.append(draw(*args, **kwargs))
    return figures[-1]

  monkeypatch.setattr(cn, "draw", recording)
  return figures


def artists(fig):
  """(the Axes, {legend label: artist}) of a figure: its lines, error bars and patches."""
  [ax] = fig.axes
  labelled = [a for a in (*ax.get_lines(), *ax.containers, *ax.patches)
              if not a.get_label().startswith("_")]
  by_label = {a.get_label(): a for a in labelled}
  assert len(by_label) == len(labelled), "two artists share a label"
  return ax, by_label


def legend_texts(ax) -> list[str]:
  return [t.get_text() for t in ax.get_legend().get_texts()]


def fit_lines(by_label, name) -> list:
  return [a for label, a in by_label.items() if label.startswith(f"{name} fit: ")]


def bars(container) -> list[tuple[float, float, float]]:
  """(x, low end, high end) of each bar of an errorbar container."""
  return [(float(s[0][0]), float(min(s[0][1], s[1][1])), float(max(s[0][1], s[1][1])))
          for s in container.lines[2][0].get_segments()]


def expected_fit(points, degree=3, d_min=4):
  """(coefficients in ascending powers, r²) of the least-squares polynomial through the
  (d, n) points with d >= d_min, by numpy's polyfit."""
  d, n = np.array([p for p in points if p[0] >= d_min], dtype=float).T
  coefficients = np.polynomial.polynomial.polyfit(d, n, degree)
  residual = n - np.polynomial.polynomial.polyval(d, coefficients)
  return coefficients, 1 - np.sum(residual**2) / np.sum((n - n.mean())**2)


def parse_fit_label(label, name):
  """(coefficients, r²) as a fit's legend label prints them:
  'NAME fit: n ≈ −10.53 + 4.031d + 0.05205d² + 0.003676d³  (r² = 0.9986)'."""
  match = re.fullmatch(rf"{re.escape(name)} fit: n ≈ (.+)  \(r² = ([0-9.]+)\)", label)
  assert match, label
  parts = re.split(r" ([+−]) ", match[1])
  signs = ["−" if parts[0].startswith("−") else "+", *parts[1::2]]
  terms = [parts[0].removeprefix("−"), *parts[2::2]]
  coefficients = []
  for power, (sign, term) in enumerate(zip(signs, terms)):
    variable = "" if power == 0 else "d" if power == 1 else "d" + "".join(
        SUPERSCRIPT_DIGITS[int(c)] for c in str(power))
    assert term.endswith(variable) and term[:len(term) - len(variable)], (power, term)
    coefficients.append(float(term[:len(term) - len(variable)]) * (-1 if sign == "−" else 1))
  return coefficients, float(match[2])


def assert_fit_line(line, name, points, d_to, log=False):
  """`line` is the least-squares cubic of `points` from d = 4 to d_to (a sweep's last fitted d),
  hidden where it is not positive on a log axis, and its label prints that cubic and its r²."""
  coefficients, r2 = expected_fit(points)
  x, y = np.asarray(line.get_xdata()), np.asarray(line.get_ydata(), dtype=float)
  np.testing.assert_allclose(x, np.linspace(4, d_to, 200))
  want = np.polynomial.polynomial.polyval(x, coefficients)
  if log:
    want = np.where(want > 0, want, np.nan)
  np.testing.assert_allclose(y, want, rtol=1e-7, atol=1e-7)  # NaN where NaN is wanted
  printed, printed_r2 = parse_fit_label(line.get_label(), name)
  np.testing.assert_allclose(printed, coefficients, rtol=5e-4, atol=0)  # 4 significant digits
  assert printed_r2 == pytest.approx(r2, abs=5e-5)


def assert_saved(fig, prefix):
  """PREFIX.png is `fig` as plot renders it, and PREFIX.pdf is a PDF."""
  again = io.BytesIO()
  fig.savefig(again, format="png", dpi=150, bbox_inches="tight")
  again.seek(0)
  np.testing.assert_array_equal(plt.imread(f"{prefix}.png"), plt.imread(again))
  assert Path(f"{prefix}.pdf").read_bytes().startswith(b"%PDF-")


def spans_of(results):
  """(d, min, max) over seeds of each seed's largest succeeding n, from results records."""
  best = {}
  for r in results:
    if r["success"]:
      best[r["d"], r["seed"]] = max(best.get((r["d"], r["seed"]), 0), r["n"])
  return sorted((d, min(n for (d_, _), n in best.items() if d_ == d),
                 max(n for (d_, _), n in best.items() if d_ == d)) for d in {d for d, _ in best})


def paper_table():
  return {r["d"]: r["critical_n"] for r in paper.read_table6()}


def test_plot_draws_a_sweep_over_the_paper_table_and_cubic(tmp_path, drawn):
  table = paper_table()
  finished, open_d = range(4, 13), 13  # paper_like_rows' defaults
  results = restart_results(finished)
  workdir = write_workdir(tmp_path / "run", paper_like_rows(finished, (open_d,)), results)
  prefix = tmp_path / "fig" / "critical_n"
  assert cn.plot([workdir], prefix) == [f"{prefix}.png", f"{prefix}.pdf"]
  [fig] = drawn
  assert_saved(fig, prefix)
  ax, by_label = artists(fig)
  d_max = open_d + 2  # the largest d of any row, plus a little

  # The paper: its table up to d_max, its unrounded cubic over d = 4 … d_max.
  paper_points = by_label["paper Table 6 (k = 2)"]
  assert list(paper_points.get_xdata()) == [d for d in table if d <= d_max]
  assert list(paper_points.get_ydata()) == [table[d] for d in table if d <= d_max]
  [paper_line] = fit_lines(by_label, "paper")
  assert_fit_line(paper_line, "paper", table.items(), d_max)
  assert paper_line.get_linestyle() == ":"

  # The sweep: finished points, restart spread, the open bracket and its own fit.
  measured = by_label["run: measured"]
  assert list(measured.get_xdata()) == list(finished)
  assert list(measured.get_ydata()) == [table[d] for d in finished]
  assert bars(by_label["run: min–max over restarts"]) == spans_of(results)
  bracket = by_label["run: open search (lo..hi)"]
  low, high = table[open_d] - 4, table[open_d] + 6  # its lo and hi in paper_like_rows
  assert bars(bracket) == [(open_d, low, high)]
  assert list(bracket.lines[0].get_xdata()) == [open_d]
  assert list(bracket.lines[0].get_ydata()) == [(low + high) / 2]
  [run_line] = fit_lines(by_label, "run")
  assert_fit_line(run_line, "run", [(d, table[d]) for d in finished], max(finished))

  # Geometry, k = 2: no finite limit at d >= 4, so only the band from d = 2k = 4 on.
  band = by_label["geometry (k = 2): no limit from d = 2k = 4"]
  assert (band.get_x(), band.get_x() + band.get_width()) == (4 - 0.5, d_max + 0.5)
  assert not [label for label in by_label if "exact limit" in label]

  assert ax.get_xlabel() == "embedding dimension d"
  assert ax.get_ylabel() == "critical n (documents)"
  assert ax.get_title() == "Critical n of free embeddings, k = 2"
  assert ax.get_yscale() == "linear"
  assert legend_texts(ax) == [
      "paper Table 6 (k = 2)", paper_line.get_label(), "run: measured",
      "run: min–max over restarts", "run: open search (lo..hi)", run_line.get_label(),
      band.get_label()]


def test_plot_overlay_on_a_log_axis(tmp_path, drawn):
  """Three sweeps side by side: each offset from its d, one with too few points for a fit, one
  whose fit dips below zero (hidden there: a log axis cannot show it)."""
  table = paper_table()
  dip = {4: 40, 5: 3, 6: 3, 7: 5, 8: 60}  # its cubic falls to about −4 near d = 6
  workdirs = [
      write_workdir(tmp_path / "a", paper_like_rows(), restart_results(), label="quick"),
      write_workdir(tmp_path / "b", paper_like_rows(range(4, 6), open_dims=(6, 7))),
      write_workdir(tmp_path / "dip", [f"{d},2,{n},{n},{n},{n + 1},true,5" for d, n in dip.items()]),
  ]
  cn.plot(workdirs, tmp_path / "both", log=True)
  [fig] = drawn
  assert_saved(fig, tmp_path / "both")
  ax, by_label = artists(fig)
  assert ax.get_yscale() == "log"
  d_max = 13 + 2
  offset = dict(zip(("quick", "b", "dip"), (-0.12, 0.0, 0.12)))

  [paper_line] = fit_lines(by_label, "paper")
  assert_fit_line(paper_line, "paper", table.items(), d_max, log=True)

  quick = by_label["quick: measured"]
  np.testing.assert_allclose(quick.get_xdata(), np.arange(4, 13) + offset["quick"])
  assert list(quick.get_ydata()) == [table[d] for d in range(4, 13)]
  assert bars(by_label["quick: min–max over restarts"]) == [
      (pytest.approx(d + offset["quick"]), lo, hi) for d, lo, hi in spans_of(restart_results())]
  assert bars(by_label["quick: open search (lo..hi)"]) == [
      (pytest.approx(13 + offset["quick"]), table[13] - 4, table[13] + 6)]
  [quick_line] = fit_lines(by_label, "quick")
  assert_fit_line(quick_line, "quick", [(d, table[d]) for d in range(4, 13)], 12, log=True)

  b = by_label["b: measured"]
  np.testing.assert_allclose(b.get_xdata(), [4 + offset["b"], 5 + offset["b"]])
  assert list(b.get_ydata()) == [table[4], table[5]]
  assert bars(by_label["b: open search (lo..hi)"]) == [
      (pytest.approx(d + offset["b"]), table[d] - 4, table[d] + 6) for d in (6, 7)]
  assert fit_lines(by_label, "b") == []  # two finished dimensions: no cubic

  [dip_line] = fit_lines(by_label, "dip")
  assert_fit_line(dip_line, "dip", dip.items(), max(dip), log=True)
  assert np.isnan(np.asarray(dip_line.get_ydata(), dtype=float)).any()

  labels = legend_texts(ax)
  assert set(labels) == set(by_label)
  sweep_of = [label.split(":")[0].removesuffix(" fit") for label in labels
              if not label.startswith(("paper", "geometry"))]
  assert sweep_of == sorted(sweep_of, key=["quick", "b", "dip"].index)  # each sweep's together
  assert ax.get_title() == "Critical n of free embeddings, k = 2"


def listing(folder):
  """Every file under `folder` with its size and modification time."""
  return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in Path(folder).rglob("*")}


def test_main_writes_fits_and_figures_where_out_points_never_in_the_workdir(
    tmp_path, monkeypatch, capsys, drawn):
  workdir = write_workdir(tmp_path / "run", paper_like_rows(), restart_results())
  before = listing(workdir)
  cn.main(["critical_n", f"--workdir={workdir}", f"--out={tmp_path / 'fig' / 'a'}"])
  fits = json.loads((tmp_path / "fig" / "a.fit.json").read_text())
  [fig] = drawn
  assert_saved(fig, tmp_path / "fig" / "a")
  _, by_label = artists(fig)
  [line] = fit_lines(by_label, "run")
  table = paper_table()
  assert_fit_line(line, "run", [(d, table[d]) for d in range(4, 13)], 12)
  # fit.json holds the fit the figure draws.
  np.testing.assert_allclose(fits[str(workdir)]["coefficients"],
                             expected_fit([(d, table[d]) for d in range(4, 13)])[0], rtol=1e-7)
  assert "r²" in capsys.readouterr().out
  monkeypatch.chdir(tmp_path)  # the default --out: the current directory
  cn.main(["critical_n", f"--workdir={workdir}"])
  assert {p.name for p in tmp_path.iterdir()} >= {"critical_n.png", "critical_n.fit.json"}
  assert_saved(drawn[1], tmp_path / "critical_n")
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
    "too_few_points": HEADER + "".join(complete_row(r) + "\n" for r in paper_like_rows(range(4, 7))),
    "missing_column": "d,k,critical_n\n4,2,10\n",
    "not_an_integer": HEADER + complete_row("4,2,ten,10,10,11,true,5") + "\n",
    "bad_done": HEADER + complete_row("4,2,10,10,10,11,yes,5") + "\n",
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


def test_an_overlay_draws_lower_bounds_without_a_fit(tmp_path, capsys, drawn):
  table = paper_table()
  fitted = write_workdir(tmp_path / "free", paper_like_rows())
  ceiling = 120  # every search of the bounded sweep reached max_n = 120 without a failure
  bounded = write_workdir(tmp_path / "centroid",
                          [f"{d},2,,{ceiling},{ceiling},,true,9" for d in range(4, 13)])
  paths = cn.report([fitted, bounded], tmp_path / "overlay")
  assert paths == [f"{tmp_path / 'overlay'}{ext}" for ext in (".png", ".pdf", ".fit.json")]
  [fig] = drawn
  assert_saved(fig, tmp_path / "overlay")
  ax, by_label = artists(fig)
  bounds = by_label["centroid: no failure up to max_n (a lower bound)"]
  np.testing.assert_allclose(bounds.get_xdata(), np.arange(4, 13) + 0.06)
  assert list(bounds.get_ydata()) == [ceiling] * 9
  assert bounds.get_marker() == "^"
  assert fit_lines(by_label, "centroid") == [] and "centroid: measured" not in by_label
  measured = by_label["free: measured"]
  np.testing.assert_allclose(measured.get_xdata(), np.arange(4, 13) - 0.06)
  assert list(measured.get_ydata()) == [table[d] for d in range(4, 13)]
  [line] = fit_lines(by_label, "free")
  assert_fit_line(line, "free", [(d, table[d]) for d in range(4, 13)], 12)
  assert set(legend_texts(ax)) == set(by_label)
  assert "drawn without a fit" in capsys.readouterr().out
  assert set(json.loads((tmp_path / "overlay.fit.json").read_text())) == {str(fitted)}
  with pytest.raises(ValueError, match="critical_n.csv"):
    cn.report([bounded], tmp_path / "alone")
  assert len(drawn) == 1  # refused before drawing


def test_a_search_whose_loss_went_non_finite_is_marked_and_never_fitted(tmp_path):
  rows = cn.read_critical_n(write_workdir(tmp_path, paper_like_rows()))
  rows.append(dict(d=13, k=2, critical_n=None, max_success_n=None, lo=2, hi=3, done=True,
                   probes=2, critical_n_certified=None, geometric_critical_n="unbounded",
                   status="nonfinite", critical_n_median=None, seed_successes="2:1/1 3:0/1"))
  Store(str(tmp_path)).write_report("critical_n.csv", rows)
  assert 13 not in [d for d, _ in cn.fit_workdir(tmp_path).points]
  fig, ax = plt.subplots()
  handles = cn._draw_workdir(ax, Store(str(tmp_path)), cn.read_critical_n(tmp_path), "C0", 3, 4,
                             log=False)
  marked = [h for h in handles if "NaN/inf" in h.get_label()]
  assert len(marked) == 1 and list(marked[0].get_xdata()) == [13] and list(marked[0].get_ydata()) == [3]
  plt.close(fig)


# --- success rate -----------------------------------------------------------------------------


def test_success_rate_figure_draws_each_probed_n_with_its_band(tmp_path):
  results = restart_results(dims=(4, 5))
  workdir = write_workdir(tmp_path / "run", paper_like_rows(range(4, 8), ()), results)
  paths = cn.main(["critical_n", f"--workdir={workdir}", f"--out={tmp_path / 'fig'}",
                   "--success_rate"])
  assert f"{tmp_path / 'fig'}.success_rate.png" in paths
  ax = cn.draw_success_rate([workdir]).axes[0]
  lines = {line.get_label(): line for line in ax.get_lines() if line.get_label().startswith("d")}
  assert sorted(lines) == ["d = 4", "d = 5"]
  for d in (4, 5):
    counts = {}
    for r in results:
      if r["d"] == d:
        counts.setdefault(r["n"], []).append(r["success"])
    x, y = lines[f"d = {d}"].get_data()
    assert list(x) == sorted(counts)
    assert list(y) == [sum(counts[n]) / len(counts[n]) for n in sorted(counts)]
  bands = [c for c in ax.collections]
  assert len(bands) == 2
  for band, d in zip(bands, (4, 5)):
    upper = band.get_paths()[0].vertices[:, 1]
    assert upper.min() >= 0 and upper.max() <= 1
  # One success of three: the Wilson band holds 1/3 strictly inside, neither 0 nor 1.
  low, high = cn.wilson_interval(1, 3)
  assert 0 < low < 1 / 3 < high < 1
  assert cn.wilson_interval(3, 3)[1] == 1.0 and cn.wilson_interval(0, 3)[0] == 0.0
