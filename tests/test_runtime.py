"""Per-platform XLA flags and the persistent compilation cache (bcjax/runtime.py)."""

import os
import subprocess
import sys

from bcjax import runtime

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_platform_flags_are_added_and_the_users_value_wins():
    defaults = {"gpu": ("--xla_gpu_a=true",), "cpu": ("--xla_cpu_b=1", "--xla_cpu_c=2")}
    assert runtime.with_platform_flags("", defaults) == "--xla_gpu_a=true --xla_cpu_b=1 --xla_cpu_c=2"
    mine = "--xla_force_host_platform_device_count=8 --xla_cpu_b=7"
    combined = runtime.with_platform_flags(mine, defaults)
    assert combined == mine + " --xla_gpu_a=true --xla_cpu_c=2"
    assert runtime.with_platform_flags(combined, defaults) == combined  # applying twice changes nothing


def test_every_default_flag_is_known_to_this_jaxlib():
    """XLA aborts the process on an unknown flag, so a typo here would stop every run."""
    code = (
        "from bcjax import runtime; runtime.set_platform_xla_flags(); import jax, jax.numpy as jnp; "
        "print(jax.jit(lambda x: x + 1)(jnp.ones(2)).sum())"
    )
    env = {**os.environ, "XLA_FLAGS": ""}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "4.0"


_PROGRAM = """
import sys
from bcjax import phases, runtime
stats = runtime.enable_compilation_cache(sys.argv[1], min_compile_time_secs=0)
clock = phases.PhaseClock()
import jax, jax.numpy as jnp
jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((64, 64))).block_until_ready()
timings = clock.to_json()
print(stats.hits, stats.misses, timings["compiled_programs"], timings["loaded_programs"])
"""


def test_a_rerun_loads_the_compiled_program_from_the_cache(tmp_path):
    """...and timings.json's counts (bcjax.phases) tell the compiled programs from the loaded ones."""

    def run() -> tuple[int, int]:
        done = subprocess.run(
            [sys.executable, "-c", _PROGRAM, str(tmp_path / "cache")],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        hits, misses, compiled, loaded = map(int, done.stdout.split())
        assert (compiled, loaded) == (misses, hits)
        return hits, misses

    hits, compiled = run()
    assert hits == 0 and compiled >= 1  # jnp.ones and the jitted function
    assert any((tmp_path / "cache").iterdir())
    assert run() == (compiled, 0)


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert runtime.default_cache_dir() == str(tmp_path / "bcjax" / "jax_compilation_cache")
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/somewhere")
    assert runtime.default_cache_dir() == "/somewhere"
