"""The host allocator setting: freed memory is reused without page faults, and can be opted out
of. Each case runs in a fresh interpreter (the setting is process-wide)."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import pytest

from mtrl_sparse.host_memory import SYSTEM_MALLOC_ENV

# Allocates, touches and frees a 64 MiB block through the C allocator (as XLA's CPU runtime
# allocates its buffers) five times after a first round; prints whether the setting was applied
# and the minor page faults of the five rounds.
CHILD = """
import ctypes, resource, sys
from mtrl_sparse.host_memory import reuse_freed_memory
applied = reuse_freed_memory() if sys.argv[1] == "tuned" else None
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
size = 64 << 20
def round_trip():
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
round_trip()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    round_trip()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def glibc() -> bool:
    try:
        ctypes.CDLL(None).gnu_get_libc_version  # noqa: B018
    except AttributeError:
        return False
    return True


def run_child(mode: str, **env: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True,
                         check=True, env={**os.environ, **env}).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not glibc(), reason="the setting exists for glibc only")
def test_freed_memory_is_reused_without_page_faults():
    _, default_faults = run_child("default")
    applied, tuned_faults = run_child("tuned")
    assert applied == "True"
    assert default_faults >= 5 * 16  # each round maps fresh pages (2 MiB ones at the least)
    assert tuned_faults * 10 <= default_faults


def test_the_system_allocator_can_be_kept():
    applied, _ = run_child("tuned", **{SYSTEM_MALLOC_ENV: "1"})
    assert applied == "False"
