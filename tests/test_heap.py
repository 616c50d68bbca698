"""Freed memory kept in the process (runtime/heap.py): applied at import on glibc, reported by bench, opt-out."""

import os
import subprocess
import sys

import pytest

from slimformer.measure.bench import cpu_info
from slimformer.runtime import heap

GLIBC = sys.platform.startswith("linux") and os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")


def _state(env: dict) -> str:
    code = "import slimformer.model; from slimformer.runtime import heap; print(heap.STATE)"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, check=True, capture_output=True,
                         text=True)
    return out.stdout.strip()


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_importing_the_model_module_keeps_freed_memory_and_bench_says_so():
    import slimformer.model  # noqa: F401  (applies it)

    assert heap.STATE == "kept"
    assert cpu_info()["freed_memory"] == "kept"
    assert heap.keep_freed_memory() == "kept"  # once: a second call changes nothing


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_the_allocator_is_left_alone_when_asked_and_tuned_otherwise():
    assert _state({heap.ENV: "default"}) == "default"
    assert _state({heap.ENV: ""}) == "kept"
