"""Critical-n figure, polynomial fit and extrapolation table for finished sweeps.

Reads each workdir's critical_n.csv, results and config label through `sweep.store` (the one
reader of those files, local or gs://), fits critical n(d) with a least-squares polynomial as
in Weller et al. 2025 (Table 6, cubic over d >= 4), writes the fits beside the figure
(OUT.fit.json) and draws the measured points against the paper's. Nothing is written into a
workdir: reading one never changes it. A fit that falls anywhere up to the largest
extrapolated d is not extrapolated.

  python -m plots.critical_n --workdir=/tmp/sweep [--workdir=/tmp/other] [--out=critical_n] [--log]
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence

import numpy as np
from absl import flags
from numpy.polynomial import Polynomial

from sweep import geometry, paper
from sweep import store as store_lib
from sweep.store import Store

CSV_NAME = "critical_n.csv"
FIT_SUFFIX = ".fit.json"
DEFAULT_OUT = "critical_n"  # in the current directory: a workdir is only read
EXTRAPOLATION_DIMS = (512, 768, 1024, 3072, 4096)
SUPERSCRIPTS = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")


@dataclasses.dataclass(frozen=True)
class Fit:
  """A least-squares polynomial critical_n(d); coefficients in ascending powers of d."""

  degree: int
  coefficients: tuple[float, ...]
  r2: float
  d_min: int
  points: tuple[tuple[int, int], ...]  # the (d, critical_n) pairs the fit used

  def __call__(self, d):
    return np.polynomial.polynomial.polyval(np.asarray(d, dtype=float), self.coefficients)


# ---------------------------------------------------------------------------------------------
# Reading a workdir (through sweep.store, the one reader of each of its files)
# ---------------------------------------------------------------------------------------------


def read_critical_n(workdir) -> list[dict]:
  """Typed rows of WORKDIR/critical_n.csv (local or gs://)."""
  return Store(str(workdir), writer=False).read_critical_n()


def restart_spread(records: Iterable[dict]) -> dict[tuple[int, int], tuple[int, int]]:
  """(d, k) -> (min, max) over seeds of each seed's largest succeeding n.

  This is how far the answer moves between random restarts; seeds that never succeeded at a
  given d say nothing about it and are left out.
  """
  best: dict[tuple[int, int, object], int] = {}
  for r in records:
    if r["success"]:
      key = (int(r["d"]), int(r["k"]), r["seed"])
      best[key] = max(best.get(key, 0), int(r["n"]))
  per_dim = defaultdict(list)
  for (d, k, _), n in best.items():
    per_dim[(d, k)].append(n)
  return {key: (min(ns), max(ns)) for key, ns in per_dim.items()}


def finished_points(rows: Iterable[dict]) -> tuple[np.ndarray, np.ndarray]:
  """(d, critical_n) arrays of the dimensions whose search is done."""
  done = sorted(
      (r["d"], r["critical_n"]) for r in rows if r["done"] and r["critical_n"] is not None)
  d = np.array([p[0] for p in done], dtype=int)
  n = np.array([p[1] for p in done], dtype=int)
  return d, n


# ---------------------------------------------------------------------------------------------
# Fitting
# ---------------------------------------------------------------------------------------------


def fit_polynomial(d, critical_n, degree: int = 3, d_min: int = 4, source: str = CSV_NAME) -> Fit:
  """Least-squares polynomial of critical n over d >= d_min (the paper: cubic, d >= 4).

  `source` names the data in the error raised when there are too few points to fit.
  """
  d = np.asarray(d, dtype=int)
  critical_n = np.asarray(critical_n, dtype=int)
  keep = d >= d_min
  d, critical_n = d[keep], critical_n[keep]
  if len(np.unique(d)) < degree + 1:
    raise ValueError(
        f"{source}: {len(np.unique(d))} finished dimension(s) with d >= {d_min}, "
        f"a degree-{degree} fit needs at least {degree + 1}"
    )
  poly = Polynomial.fit(d, critical_n, degree).convert()
  coefficients = np.zeros(degree + 1)
  coefficients[: len(poly.coef)] = poly.coef
  residual = np.sum((critical_n - poly(d)) ** 2)
  total = np.sum((critical_n - critical_n.mean()) ** 2)
  r2 = 1.0 - residual / total if total > 0 else 1.0
  return Fit(
      degree=degree,
      coefficients=tuple(float(c) for c in coefficients),
      r2=float(r2),
      d_min=d_min,
      points=tuple((int(x), int(y)) for x, y in zip(d, critical_n)),
  )


def fit_workdir(workdir, degree: int = 3, d_min: int = 4) -> Fit:
  """Fit of a workdir's finished dimensions; errors name its critical_n.csv."""
  d, n = finished_points(read_critical_n(workdir))
  return fit_polynomial(d, n, degree=degree, d_min=d_min,
                        source=str(Store(str(workdir)).critical_n_path))


def paper_fit() -> Fit:
  """The paper's own cubic over its Table 6, the reference every sweep is compared to
  (unrounded: paper.fit_coefficients(), with its r² and points)."""
  rows = paper.read_table6()
  return fit_polynomial(
      [r["d"] for r in rows], [r["critical_n"] for r in rows], paper.DEGREE, paper.D_MIN,
      source=paper.TABLE,
  )


def measured_range(fit: Fit) -> tuple[int, int]:
  return fit.points[0][0], fit.points[-1][0]


def extrapolation_refusal(fit: Fit, dims: Sequence[int] = EXTRAPOLATION_DIMS) -> str | None:
  """Why `fit` must not be extrapolated to `dims`, or None when it may be.

  Critical n grows with d, so a fit that falls anywhere between its last measured d and the
  largest d asked for predicts nonsense there (a negative cubic term gives negative n).
  """
  d_max = measured_range(fit)[1]
  grid = np.arange(d_max, max(dims) + 1)
  falling = grid[1:][np.diff(fit(grid)) <= 0]
  if not len(falling):
    return None
  return (f"the fit decreases from d = {falling[0] - 1} on (d^{fit.degree} coefficient "
          f"{fit.coefficients[-1]:.3g}), so its values at d = {min(dims)} … {max(dims)} "
          f"would be nonsense")


def extrapolate(fit: Fit, dims: Sequence[int] = EXTRAPOLATION_DIMS) -> dict[int, float]:
  """Predicted critical n at embedding sizes of real models (the paper's headline numbers)."""
  return {int(d): float(fit(d)) for d in dims}


# ---------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------


def fit_to_dict(fit: Fit, dims: Sequence[int] = EXTRAPOLATION_DIMS) -> dict:
  """JSON-ready form of a fit with its extrapolations (keys are strings, as JSON needs).

  `extrapolation` is null when the fit may not be extrapolated (`extrapolation_refused` says
  why); `paper_extrapolation` is the paper's fit at the same d, for comparison.
  """
  refusal = extrapolation_refusal(fit, dims)
  as_json = lambda f: {str(d): n for d, n in extrapolate(f, dims).items()}
  return {
      "degree": fit.degree,
      "coefficients": list(fit.coefficients),
      "r2": fit.r2,
      "d_min": fit.d_min,
      "measured_d": list(measured_range(fit)),
      "points": [list(p) for p in fit.points],
      "extrapolation": None if refusal else as_json(fit),
      "extrapolation_refused": refusal,
      "paper_extrapolation": as_json(paper_fit()),
  }


def write_fit_json(out_prefix, fits: dict[str, Fit]) -> str:
  """OUT.fit.json: each fitted workdir's fit by its name, replaced at once (through the store,
  so a gs:// prefix works too)."""
  path = f"{out_prefix}{FIT_SUFFIX}"
  store_lib.write_text(path, json.dumps({workdir: fit_to_dict(fit) for workdir, fit in
                                         fits.items()}, indent=2, allow_nan=False) + "\n")
  return path


def format_equation(fit: Fit) -> str:
  """'n ≈ −10.53 + 4.031d + 0.05205d² + 0.003676d³' (4 significant digits)."""
  text = ""
  for power, c in enumerate(fit.coefficients):
    variable = "d" + str(power).translate(SUPERSCRIPTS) if power > 1 else "d" * power
    term = f"{abs(c):.4g}{variable}"
    if not text:
      text = ("−" if c < 0 else "") + term
    else:
      text += (" − " if c < 0 else " + ") + term
  return "n ≈ " + text


def format_fit_table(fit: Fit, dims: Sequence[int] = EXTRAPOLATION_DIMS) -> str:
  """Coefficients, r² and extrapolations beside the paper fit's, for the terminal."""
  low, high = measured_range(fit)
  lines = [
      f"degree-{fit.degree} fit over {len(fit.points)} finished dimensions, measured "
      f"d = {low} … {high}",
      f"  {'term':<6}{'coefficient':>16}",
  ]
  for power, c in enumerate(fit.coefficients):
    lines.append(f"  {'d^' + str(power):<6}{c:>16.6g}")
  lines.append(f"  {'r²':<6}{fit.r2:>16.6f}")
  paper = extrapolate(paper_fit(), dims)
  refusal = extrapolation_refusal(fit, dims)
  if refusal:
    lines.append(f"  not extrapolated: {refusal}")
    lines.append(f"  {'d':<6}{'paper fit':>16}")
    lines += [f"  {d:<6}{paper[d]:>16,.0f}" for d in paper]
  else:
    lines.append(f"  {'d':<6}{'predicted n':>16}{'paper fit':>16}")
    lines += [f"  {d:<6}{n:>16,.0f}{paper[d]:>16,.0f}" for d, n in extrapolate(fit, dims).items()]
  return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Figure
# ---------------------------------------------------------------------------------------------


def _draw_fit(ax, fit: Fit, d_max: int, log: bool, name: str, **style) -> list:
  """Fitted curve from d_min to d_max; non-positive values are hidden on a log axis."""
  d = np.linspace(fit.d_min, d_max, 200)
  n = fit(d)
  if log:
    n = np.where(n > 0, n, np.nan)
  return ax.plot(d, n, label=f"{name} fit: {format_equation(fit)}  (r² = {fit.r2:.4f})", **style)


def _open_brackets(rows: Iterable[dict]) -> list[tuple[int, int, int]]:
  """(d, lo, hi) of open searches; a one-sided bracket collapses onto its known end."""
  return sorted(
      (r["d"], r["hi"] if r["lo"] is None else r["lo"], r["lo"] if r["hi"] is None else r["hi"])
      for r in rows
      if not r["done"] and (r["lo"] is not None or r["hi"] is not None)
  )


def _draw_workdir(ax, store: Store, rows: list[dict], color, degree: int, d_min: int,
                  log: bool, offset: float = 0.0) -> list:
  """One sweep: finished points, their spread over restarts, open brackets, searches whose
  deciding probe went non-finite (at that probe's n, no critical n) and its fit.

  Markers sit `offset` to the side of their d, so overlaid sweeps with equal values stay
  visible. Returns the legend handles in that order, so each sweep's entries stay together.
  """
  label = store.label()
  handles = []
  d, n = finished_points(rows)
  if len(d):
    handles += ax.plot(d + offset, n, "o", color=color, markersize=4, label=f"{label}: measured", zorder=3)

  ks = {r["k"] for r in rows}
  spread = restart_spread(store.read_results())
  spans = sorted((d_, lo, hi) for (d_, k), (lo, hi) in spread.items() if k in ks and hi > lo)
  if spans:
    sd, slo, shi = (np.array(v, dtype=float) for v in zip(*spans))
    handles.append(ax.errorbar(sd + offset, (slo + shi) / 2, yerr=(shi - slo) / 2, fmt="none", ecolor=color,
                               alpha=0.7, capsize=2, elinewidth=1,
                               label=f"{label}: min–max over restarts"))

  bounds = sorted((r["d"], r["lo"]) for r in rows if r["status"] == "ceiling")
  if bounds:
    bd, bn = (np.array(v, dtype=float) for v in zip(*bounds))
    handles += ax.plot(bd + offset, bn, "^", color=color, mfc="white", markersize=6, zorder=3,
                       label=f"{label}: no failure up to max_n (a lower bound)")

  unmeasured = sorted((r["d"], r["hi"]) for r in rows if r["status"] == "nonfinite")
  if unmeasured:
    ud, un = (np.array(v, dtype=float) for v in zip(*unmeasured))
    handles += ax.plot(ud + offset, un, "X", color="red", mec=color, markersize=7, zorder=3,
                       label=f"{label}: training went NaN/inf at this n, no critical n")

  brackets = _open_brackets(rows)
  if brackets:
    bd, blo, bhi = (np.array(v, dtype=float) for v in zip(*brackets))
    bars = ax.errorbar(bd + offset, (blo + bhi) / 2, yerr=(bhi - blo) / 2, fmt="s", mfc="white", mec=color,
                       markersize=4, ecolor=color, capsize=3, elinewidth=1.2,
                       label=f"{label}: open search (lo..hi)")
    bars[-1][0].set_linestyle("--")
    handles.append(bars)

  try:
    fit = fit_polynomial(d, n, degree=degree, d_min=d_min)
  except ValueError:
    return handles  # too few finished dimensions yet: the points speak for themselves
  # Over the dimensions it was fitted on only: a cubic through a few points says nothing
  # beyond them (a ceiling or an open search is no point of the fit).
  return handles + _draw_fit(ax, fit, int(d.max()), log, label, color=color, linewidth=1.5)


def _draw_geometric_limit(ax, k: int, d_lo: int, d_hi: int) -> list:
  """Geometry's own series for top-k: the exact G(d, k) where it is finite (d < 2k), and a
  band from d = 2k on, where no n is too many. The measured curves sit below it."""
  handles = []
  finite = [(d, geometry.critical_n(d, k)) for d in range(max(d_lo, 1), min(d_hi, 2 * k - 1) + 1)]
  if finite:
    handles += ax.plot(*zip(*finite), "D--", color="black", markersize=4, linewidth=1,
                       label=f"geometry (k = {k}): exact limit G(d, k)", zorder=2)
  if d_hi >= 2 * k:
    handles.append(ax.axvspan(max(2 * k, d_lo) - 0.5, d_hi + 0.5, color="0.85", alpha=0.5,
                              zorder=0, label=f"geometry (k = {k}): no limit from d = 2k = {2 * k}"))
  return handles


def draw(
    workdirs: Sequence[str | os.PathLike],
    degree: int = 3,
    d_min: int = 4,
    log: bool = False,
):
  """The figure of `plot`, drawn and returned (a matplotlib Figure outside pyplot, so nothing
  needs closing); it reads the workdirs and writes nothing.

  Each sweep's fit is drawn only over its own dimensions; the paper's table and cubic are
  drawn over the measured range of d (plus a little), so small sweeps stay readable.
  """
  stores = [Store(str(w), writer=False) for w in workdirs]
  all_rows = [store.read_critical_n() for store in stores]
  d_max = max(r["d"] for rows in all_rows for r in rows) + 2
  table = [r for r in paper.read_table6() if r["d"] <= d_max]
  ks = sorted({r["k"] for rows in all_rows for r in rows})

  import matplotlib  # only where a figure is drawn: importing it is slow
  from matplotlib.figure import Figure

  fig = Figure(figsize=(9, 6))
  ax = fig.subplots()
  handles = ax.plot([r["d"] for r in table], [r["critical_n"] for r in table], "x", color="0.5",
                    markersize=5, label="paper Table 6 (k = 2)")
  handles += _draw_fit(ax, paper_fit(), d_max, log, "paper", color="0.6", linestyle=":",
                       linewidth=1.5)
  colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
  for i, (store, rows) in enumerate(zip(stores, all_rows)):
    offset = 0.12 * (i - (len(stores) - 1) / 2)
    handles += _draw_workdir(ax, store, rows, colors[i % len(colors)], degree, d_min, log,
                             offset)
  d_lo = min(r["d"] for rows in all_rows for r in rows)
  for k in ks:
    handles += _draw_geometric_limit(ax, k, d_lo, d_max)

  if log:
    ax.set_yscale("log")
  ax.set_xlabel("embedding dimension d")
  ax.set_ylabel("critical n (documents)")
  ax.set_title(f"Critical n of free embeddings, k = {', '.join(map(str, ks)) or '?'}")
  ax.grid(True, alpha=0.3)
  ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.12), fontsize=8,
            frameon=False)
  fig.tight_layout()
  return fig


def success_rates(records: Iterable[dict]) -> dict[int, list[tuple[int, int, int]]]:
  """Per d, (n, successful restarts, restarts) of every probed n, in order of n."""
  points: dict[tuple[int, int], list[bool]] = {}
  for r in records:
    points.setdefault((r["d"], r["n"]), []).append(bool(r["success"]))
  rates: dict[int, list[tuple[int, int, int]]] = {}
  for (d, n), successes in sorted(points.items()):
    rates.setdefault(d, []).append((n, sum(successes), len(successes)))
  return rates


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
  """The Wilson score interval of a success rate (95% by default): honest at 0 and 1 of few
  trials, where the normal approximation collapses to a point."""
  rate = successes / trials
  centre = (rate + z * z / (2 * trials)) / (1 + z * z / trials)
  half = z * np.sqrt(rate * (1 - rate) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
  return max(0.0, centre - half), min(1.0, centre + half)


def draw_success_rate(workdirs: Sequence[str | os.PathLike]):
  """The fraction of restarts that succeeded at each probed n, one line per (sweep, d), with
  its 95% Wilson band: where the any-seed and the median critical n part ways."""
  from matplotlib.figure import Figure

  fig = Figure(figsize=(9, 6))
  ax = fig.subplots()
  for workdir in workdirs:
    store = Store(str(workdir), writer=False)
    name = store.label() if len(workdirs) > 1 else ""
    for d, points in success_rates(store.read_results()).items():
      n = [p[0] for p in points]
      rate = [p[1] / p[2] for p in points]
      low, high = zip(*(wilson_interval(p[1], p[2]) for p in points))
      (line,) = ax.plot(n, rate, "o-", markersize=3, label=f"{name} d = {d}".strip())
      ax.fill_between(n, low, high, color=line.get_color(), alpha=0.15, linewidth=0)
  ax.axhline(0.5, color="0.5", linestyle=":", linewidth=1)
  ax.set_xlabel("documents n")
  ax.set_ylabel("restarts that succeeded")
  ax.set_ylim(-0.02, 1.02)
  ax.set_title("Success rate per probed n, with 95% Wilson bands")
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=8, ncol=2)
  fig.tight_layout()
  return fig


def _save(fig, out_prefix) -> list[str]:
  """fig as OUT.png and OUT.pdf, through the store (a gs:// prefix works too)."""
  paths = [f"{out_prefix}{ext}" for ext in (".png", ".pdf")]
  for path in paths:
    image = io.BytesIO()
    fig.savefig(image, format=path.rsplit(".", 1)[1], dpi=150, bbox_inches="tight")
    store_lib.write_bytes(path, image.getvalue())
  return paths


def plot(
    workdirs: Sequence[str | os.PathLike],
    out_prefix: str | os.PathLike,
    degree: int = 3,
    d_min: int = 4,
    log: bool = False,
) -> list[str]:
  """Measured critical n per d for each workdir over the paper's Table 6 (`draw`); writes
  .png and .pdf."""
  return _save(draw(workdirs, degree=degree, d_min=d_min, log=log), out_prefix)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def define_flags(flag_values: flags.FlagValues) -> flags.FlagValues:
  """The CLI's flags on `flag_values`, kept off the global FLAGS so importers never clash."""
  flags.DEFINE_multi_string(
      "workdir", None, "Sweep workdir(s) holding critical_n.csv.", flag_values=flag_values)
  flags.DEFINE_integer("degree", 3, "Degree of the fitted polynomial.", flag_values=flag_values)
  flags.DEFINE_integer("d_min", 4, "Fit only dimensions d >= d_min.", flag_values=flag_values)
  flags.DEFINE_string(
      "out", DEFAULT_OUT, "Path prefix of the figure (.png, .pdf) and the fits (.fit.json).",
      flag_values=flag_values)
  flags.DEFINE_bool("log", False, "Log-scale y axis.", flag_values=flag_values)
  flags.DEFINE_bool("success_rate", False, "Also draw the success rate of the restarts against "
                    "n per d, with its band (OUT.success_rate.png, .pdf).",
                    flag_values=flag_values)
  flags.mark_flag_as_required("workdir", flag_values=flag_values)
  return flag_values


def report(
    workdirs: Sequence[str | os.PathLike],
    out_prefix: str | os.PathLike = DEFAULT_OUT,
    degree: int = 3,
    d_min: int = 4,
    log: bool = False,
    success_rate: bool = False,
) -> list[str]:
  """Fit each workdir and print its table, draw them all together, then write the fits (and,
  with `success_rate`, the figure of draw_success_rate).

  A single sweep must have enough finished dimensions for its fit; in an overlay, a sweep
  without them (one whose searches hit max_n, say) is drawn without a fit. Every input is
  read before anything is written, so bad input leaves no file behind.
  """
  fits = {}
  for workdir in workdirs:
    try:
      fit = fit_workdir(workdir, degree=degree, d_min=d_min)
    except ValueError as error:
      if len(workdirs) == 1:
        raise
      print(f"{Store(str(workdir)).label()} ({workdir}): drawn without a fit: {error}")
      continue
    print(f"{Store(str(workdir)).label()} ({workdir})")
    print(format_fit_table(fit))
    fits[str(workdir)] = fit
  rates = draw_success_rate(workdirs) if success_rate else None
  paths = plot(workdirs, out_prefix, degree=degree, d_min=d_min, log=log)
  if rates is not None:
    paths += _save(rates, f"{out_prefix}.success_rate")
  if fits:
    paths.append(write_fit_json(out_prefix, fits))
  for path in paths:
    print(f"wrote {path}")
  return paths


def main(argv: Sequence[str]) -> list[str]:
  """CLI: argv[0] is the program name, the rest are flags; errors exit with one line."""
  flag_values = define_flags(flags.FlagValues())
  if any(a in ("-h", "--help", "-help") for a in argv[1:]):
    print(f"usage: {argv[0]} --workdir=DIR [--workdir=DIR ...] [flags]\n{flag_values.get_help()}")
    sys.exit(0)
  try:
    extra = flag_values(list(argv))[1:]
    if extra:
      raise flags.Error(f"unexpected arguments: {' '.join(extra)}")
    return report(flag_values.workdir, flag_values.out, flag_values.degree, flag_values.d_min,
                  flag_values.log, flag_values.success_rate)
  except (flags.Error, OSError, ValueError) as e:
    sys.exit(f"error: {' '.join(str(e).split())}")


if __name__ == "__main__":
  main(sys.argv)
