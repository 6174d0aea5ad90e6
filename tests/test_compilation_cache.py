"""The persistent compilation cache (resam_jax.compilation_cache): where it goes, how it is
moved or turned off, and that a second process finds what the first compiled."""

import subprocess
import sys

import pytest

from resam_jax import compilation_cache


def test_default_folder_follows_the_users_cache_directory(monkeypatch, tmp_path):
    monkeypatch.delenv(compilation_cache.ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert compilation_cache.resolve(None) == tmp_path / "resam_jax" / "jax"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert compilation_cache.resolve(None) == tmp_path / "home" / ".cache" / "resam_jax" / "jax"


@pytest.mark.parametrize("value", ["off", "", "none", "OFF"])
def test_the_environment_or_the_flag_turns_it_off(monkeypatch, value):
    monkeypatch.setenv(compilation_cache.ENV, value)
    assert compilation_cache.resolve(None) is None
    monkeypatch.delenv(compilation_cache.ENV)
    assert compilation_cache.resolve(value) is None


def test_the_flag_wins_over_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(compilation_cache.ENV, str(tmp_path / "env"))
    assert compilation_cache.resolve(None) == tmp_path / "env"
    assert compilation_cache.resolve(str(tmp_path / "flag")) == tmp_path / "flag"


_PROGRAM = """
import sys, jax, jax.numpy as jnp
from resam_jax import compilation_cache
print(compilation_cache.enable(sys.argv[1]))
jax.jit(lambda x: jnp.tanh(x @ x.T).sum())(jnp.ones((64, 64))).block_until_ready()
"""


def test_a_second_process_reads_what_the_first_compiled(tmp_path):
    cache = tmp_path / "cache"

    def run():
        out = subprocess.run(
            [sys.executable, "-c", _PROGRAM, str(cache)], capture_output=True, text=True,
            timeout=300, check=True,
        )  # fmt: skip
        return out.stdout.strip()

    assert run() == str(cache)
    entries = sorted(p.name for p in cache.iterdir())
    assert any(name.startswith("jit__lambda") for name in entries)
    stamps = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    assert run() == str(cache)
    # The second process compiled nothing new: it found every program in the cache.
    assert sorted(p.name for p in cache.iterdir()) == entries
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == stamps


def test_an_unwritable_folder_turns_the_cache_off(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert compilation_cache.enable(str(blocker / "cache")) is None
