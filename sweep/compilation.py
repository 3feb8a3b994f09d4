"""XLA compilation: a persistent cache on by default, and a count of what a sweep compiled.

A sweep compiles one program per bucket shape; on a small sweep that is most of the wall
time, and a rerun (a resume, the same sweep on other dims) needs the same programs again.
JAX's persistent compilation cache keeps them on disk between processes.

SWEEP_COMPILATION_CACHE=DIR moves the cache, SWEEP_COMPILATION_CACHE=off turns it off; by
default it lives in $XDG_CACHE_HOME/critical-n-sweep/jax (~/.cache/... without XDG).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import threading

import jax

CACHE_VARIABLE = "SWEEP_COMPILATION_CACHE"
_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"


def cache_dir() -> pathlib.Path | None:
  """Where compiled programs are kept: the variable's value, the default, or None (off)."""
  chosen = os.environ.get(CACHE_VARIABLE)
  if chosen is not None:
    return None if chosen.strip().lower() in ("", "off", "0", "false", "none") else pathlib.Path(chosen)
  base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
  return pathlib.Path(base) / "critical-n-sweep" / "jax"


def enable_cache() -> pathlib.Path | None:
  """Point JAX's persistent cache at cache_dir(), keeping every program however fast it was
  to compile; returns the directory (None when off)."""
  directory = cache_dir()
  if directory is None:
    return None
  directory.mkdir(parents=True, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", str(directory))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return directory


@dataclasses.dataclass
class CompileCount:
  """Programs this process compiled and the seconds it spent on them; programs loaded from
  the persistent cache are counted apart (their seconds are the load's)."""
  requests: int = 0
  cache_hits: int = 0
  seconds: float = 0.0

  @property
  def compiled(self) -> int:
    return self.requests - self.cache_hits

  def summary(self) -> str:
    return (f"compiled {self.compiled} program(s) in {self.seconds:.1f} s"
            f" ({self.cache_hits} more loaded from the compilation cache)")


_count = CompileCount()
_listening = False
_counting = threading.Lock()  # buckets compile from threads of their own (pool.programs_at_once)


def count() -> CompileCount:
  """The process-wide count, listening to JAX's monitoring events from the first call on."""
  global _listening
  if not _listening:
    def on_duration(event, seconds, **_):
      if event == _COMPILE_EVENT:
        with _counting:
          _count.requests += 1
          _count.seconds += seconds

    def on_event(event, **_):
      if event == _CACHE_HIT_EVENT:
        with _counting:
          _count.cache_hits += 1

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    jax.monitoring.register_event_listener(on_event)
    _listening = True
  return _count
