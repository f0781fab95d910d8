"""`limit_malloc_arenas`: the gateway caps glibc's malloc arenas unless told not to."""

from __future__ import annotations

import ctypes.util
import platform
import subprocess
import sys

import pytest

from gateway.app import limit_malloc_arenas

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or not ctypes.util.find_library("c"),
                           reason="mallopt(M_ARENA_MAX) is a glibc option")


@glibc
def test_the_cap_is_set_by_default_and_by_a_number() -> None:
    assert limit_malloc_arenas({}) is True
    assert limit_malloc_arenas({"FIELDLINK_MALLOC_ARENAS": "4"}) is True
    assert limit_malloc_arenas({"FIELDLINK_MALLOC_ARENAS": "not a number"}) is True  # → 2


def test_zero_leaves_the_allocator_alone() -> None:
    assert limit_malloc_arenas({"FIELDLINK_MALLOC_ARENAS": "0"}) is False
    assert limit_malloc_arenas({"FIELDLINK_MALLOC_ARENAS": "-1"}) is False


@glibc
def test_threads_of_a_capped_process_share_two_arenas() -> None:
    """Eight threads allocating at once: without the cap glibc gives them arenas of their
    own (`malloc_info` lists each); with it there are at most two."""
    probe = """
import ctypes, ctypes.util, os, sys, threading, tempfile
from gateway.app import limit_malloc_arenas
if sys.argv[1] == "cap":
    assert limit_malloc_arenas({})
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.fdopen.restype = ctypes.c_void_p
libc.fdopen.argtypes = [ctypes.c_int, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
go = threading.Barrier(8)
def work():
    go.wait()
    # above pymalloc's 512 B, below glibc's 128 KB mmap threshold: from an arena
    keep = [bytearray(50_000) for _ in range(20)]
    go.wait()
ts = [threading.Thread(target=work) for _ in range(8)]
for t in ts: t.start()
for t in ts: t.join()
with tempfile.TemporaryFile("w+") as f:
    stream = libc.fdopen(os.dup(f.fileno()), b"w")
    libc.malloc_info(0, stream)
    libc.fclose(stream)
    f.seek(0)
    print(f.read().count("<heap nr="))
"""
    counts = {}
    for mode in ("cap", "free"):
        out = subprocess.run([sys.executable, "-c", probe, mode], capture_output=True,
                             text=True, timeout=60, check=True)
        counts[mode] = int(out.stdout.strip())
    assert counts["cap"] <= 2 < counts["free"]
