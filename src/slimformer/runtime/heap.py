"""Keep freed activation memory in the process instead of handing it back to the OS after every op.

glibc serves a request above its mmap threshold (128 KiB at first, raised as big blocks are freed, up to 32 MiB)
with a fresh mmap, and gives heap memory above its trim threshold back on free. A forward at 8x128 allocates and
frees tens of (1024, 1536) float temporaries (6 MiB each); each fresh mapping is zero-filled page by page on first
touch, and in a VM a page fault costs more than the arithmetic of a cheap pass. Whether glibc's own adaptation
catches up depends on the order of calls: after a compress in the same process it had; in a serving flow (load a
saved int8 MiniLM, run forwards) 45 forwards at 8x128 took 0.19-0.55 million page faults and int8 ran 1.4-1.6x
slower than with this (benchmarks/heap.py, the README's "int8 on every CPU").
This is what the jemalloc / tcmalloc LD_PRELOAD that CPU inference guides recommend buys, without a preload; the
cost is that the process keeps its peak memory instead of returning it.

Applied once, when slimformer's model module is imported; SLIMFORMER_MALLOC=default leaves the allocator as it is.
A libc without mallopt (musl, macOS, Windows) is left as it is too.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

ENV = "SLIMFORMER_MALLOC"
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (glibc's malloc.h)
MMAP_THRESHOLD = 32 << 20  # glibc's largest: requests up to 32 MiB come from the heap
TRIM_THRESHOLD = 1 << 30  # free memory at the heap's top is kept up to 1 GiB

STATE = "not applied"  # what bench reports: "kept" (tuned here), "default" (opted out), "not glibc"


def keep_freed_memory() -> str:
    global STATE
    if STATE != "not applied":
        return STATE
    if os.environ.get(ENV, "").strip().lower() == "default":
        STATE = "default"
        return STATE
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    except (OSError, AttributeError):
        ok = False
    STATE = "kept" if ok else "not glibc"
    return STATE
