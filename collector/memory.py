"""Giving memory back after a large request.

A request near the size limit (16 MiB, ~50,000 billable spans) makes the receiver allocate a few hundred MiB
for a second or two: the body, the native result, the COPY text, the rows' tuples. CPython frees all of it,
but glibc's malloc keeps freed memory in its per-thread arenas (the gRPC handler threads each have one), so
without help the process stays at its peak: measured on the 2-core machine, three such requests took RSS
from 91 to 322 MiB, and it stayed there. ``release_after(spans)`` asks glibc to return free memory to the
kernel (``malloc_trim(0)``: top-of-heap trimming and ``MADV_DONTNEED`` on free chunks of every arena) after
a request of at least ``LARGE_REQUEST_SPANS`` spans, at most once per ``MIN_INTERVAL_SECONDS``. Elsewhere
than glibc (musl, macOS) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
import time

__all__ = ["LARGE_REQUEST_SPANS", "release_after"]

LARGE_REQUEST_SPANS = 8_192
MIN_INTERVAL_SECONDS = 1.0
TRIM_DELAY_SECONDS = 0.5

_lock = threading.Lock()
_last = float("-inf")


def _load_trim():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_trim = _load_trim()


def _trim_now() -> None:
    global _pending
    with _lock:
        _pending = False
    _trim(0)


_pending = False


def release_after(spans: int) -> bool:
    """After a request of ``spans`` spans: if it was large, give free memory back half a second later (the
    writer thread and gRPC drop their references to the request's buffers only after the handler returns),
    at most once per ``MIN_INTERVAL_SECONDS``. True when a trim was scheduled."""
    global _last, _pending
    if _trim is None or spans < LARGE_REQUEST_SPANS:
        return False
    with _lock:
        now = time.monotonic()
        if _pending or now - _last < MIN_INTERVAL_SECONDS:
            return False
        _last, _pending = now, True
    timer = threading.Timer(TRIM_DELAY_SECONDS, _trim_now)
    timer.daemon = True
    timer.start()
    return True
