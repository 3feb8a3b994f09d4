r"""The temperature landscape: critical n of d = 4 ... 8, k = 2, at four InfoNCE temperatures.

    for t in 0.1 0.05 0.02 0.01; do
      sweep run --config=experiments/temperature.py:$t --workdir=runs/temperature/tau$t
    done
    sweep plot --workdir=runs/temperature/tau0.1 --workdir=runs/temperature/tau0.05 \
      --workdir=runs/temperature/tau0.02 --workdir=runs/temperature/tau0.01 \
      --out=runs/temperature/critical_n

Every other field is the paper's protocol. Every search stops at max_n = 128, so a
dimension that reaches it reads "at least 128"; every success is certified in float64
(critical_n_certified). Geometry puts no limit at d >= 2k = 4, which the figure draws as its
own series: whatever limit these curves show belongs to the optimiser at that temperature.
"""

from sweep.config import default_config

TEMPERATURES = ("0.1", "0.05", "0.02", "0.01")


def get_config(temperature="0.1"):
  if temperature not in TEMPERATURES:
    raise ValueError(f"temperature={temperature!r} is out of range: need one of {TEMPERATURES}")
  config = default_config()
  config.dims = tuple(range(4, 9))
  config.temperature = float(temperature)
  config.max_n = 128
  config.local_sweep = 0
  config.label = f"free, tau {temperature}"
  return config
