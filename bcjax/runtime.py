"""Process-wide JAX setup, done once before the first computation.

Two things make every run faster without changing a single number it computes:

- XLA flags per platform (`PLATFORM_XLA_FLAGS`). They are XLA `DebugOptions`, known to every
  jaxlib build whatever its platform (checked in jaxlib 0.10.2 and 0.11.2), and each one only
  changes the compiler of its own platform, so all of them are set together: no platform probe,
  which would have to start a backend before the flags are read. A flag the user already put in
  `XLA_FLAGS` keeps the user's value.
- JAX's persistent compilation cache, so that a rerun or a resume loads the compiled steps
  instead of compiling them again (minutes for a ResNet-50 on a CPU, tens of seconds on a GPU).
"""

from __future__ import annotations

import dataclasses
import os

import jax

# Each flag's measurement is in BENCHMARKS.md ("XLA flags").
PLATFORM_XLA_FLAGS: dict[str, tuple[str, ...]] = {
    # Overlaps the data-parallel gradient all-reduce with the backward pass on multi-GPU meshes;
    # off by default in XLA.
    "gpu": ("--xla_gpu_enable_latency_hiding_scheduler=true",),
    "cpu": (),
}


def flag_name(flag: str) -> str:
    """'--xla_foo=1' -> 'xla_foo'."""
    return flag.lstrip("-").split("=", 1)[0]


def with_platform_flags(current: str, defaults: dict[str, tuple[str, ...]] = PLATFORM_XLA_FLAGS) -> str:
    """`current` (an XLA_FLAGS value) plus every default flag it does not set itself."""
    given = {flag_name(f) for f in current.split()}
    added = [f for flags in defaults.values() for f in flags if flag_name(f) not in given]
    return " ".join([*current.split(), *added])


def set_platform_xla_flags() -> str:
    """Adds the platform defaults to `XLA_FLAGS`; returns the value. Call before JAX starts a backend."""
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        raise RuntimeError("set_platform_xla_flags() must run before the first JAX computation")
    os.environ["XLA_FLAGS"] = with_platform_flags(os.environ.get("XLA_FLAGS", ""))
    return os.environ["XLA_FLAGS"]


def default_cache_dir() -> str:
    """JAX_COMPILATION_CACHE_DIR when set, else bcjax's folder under XDG_CACHE_HOME (~/.cache)."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return os.environ["JAX_COMPILATION_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "bcjax", "jax_compilation_cache")


@dataclasses.dataclass
class CacheStats:
    """What the persistent cache did in this process: programs loaded from it and compiled anew."""

    path: str
    hits: int = 0
    misses: int = 0
    seconds_saved: float = 0.0

    def summary(self) -> str:
        return (
            f"XLA compilation cache {self.path}: {self.hits} program(s) loaded "
            f"(~{self.seconds_saved:.0f} s of compiling saved), {self.misses} compiled and stored"
        )


_stats: CacheStats | None = None


def enable_compilation_cache(path: str, min_compile_time_secs: float = 1.0) -> CacheStats:
    """Caches every program that took at least `min_compile_time_secs` to compile in `path`.

    Returns the live counters of this process's cache use.
    """
    global _stats
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_time_secs)
    if _stats is None:
        jax.monitoring.register_event_listener(_on_event)
        jax.monitoring.register_event_duration_secs_listener(_on_duration)
    _stats = CacheStats(path)
    return _stats


def _on_event(event: str, **kwargs) -> None:
    if _stats is not None and event == "/jax/compilation_cache/cache_hits":
        _stats.hits += 1
    elif _stats is not None and event == "/jax/compilation_cache/cache_misses":
        _stats.misses += 1


def _on_duration(event: str, seconds: float, **kwargs) -> None:
    if _stats is not None and event == "/jax/compilation_cache/compile_time_saved_sec":
        _stats.seconds_saved += seconds
