"""Keeping the RL loop's resident memory near its live tensors on a CPU.

Measured on the GRPO benchmark (benchmarks/README.md): the resident set grew every step while the live
tensors stayed at ~0.5 GiB. Two causes outside our tensors, each handled here behind one function:

* **glibc keeps freed heap.** Tensors of a few MB (activations, a decoding step's logits) are carved from
  malloc's heap; when freed, their pages stay resident until something trims them, and the next phase's
  differently sized tensors do not always fit the holes. ``release_freed_memory`` hands the free pages back
  (``malloc_trim(0)``: a few ms); the trainer calls it between phases, so each phase's transient starts
  from the live tensors instead of from the last phase's leftovers.
* **oneDNN caches a primitive per matmul shape** (1024 by default, each with its buffers). Packed,
  variable-length forwards bring new shapes every step, so the cache only fills. ``limit_onednn_cache``
  caps it; decoding reuses a handful of shapes, which a small cache keeps.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

ONEDNN_CACHE_ENV = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"
# Decoding needs ~6 shapes (q, k/v, o, gate/up, down, LM head at B rows); the rest are one-off packed
# lengths. 64 keeps every repeating shape and bounds the one-off ones.
ONEDNN_CACHE_CAPACITY = 64


def limit_onednn_cache(capacity: int = ONEDNN_CACHE_CAPACITY) -> str:
    """Cap oneDNN's primitive cache unless the user set ``ONEDNN_PRIMITIVE_CACHE_CAPACITY``; returns the value
    in force. oneDNN reads the variable when it builds its first primitive, so this must run before the
    first matmul of the process (``rlhf.ppo.trainer`` calls it on import); later it changes nothing."""
    return os.environ.setdefault(ONEDNN_CACHE_ENV, str(capacity))


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None  # glibc only (musl has no malloc_trim)
    except OSError:
        return None


_LIBC = _libc()


def release_freed_memory() -> bool:
    """Return the heap pages malloc keeps after frees to the OS (glibc ``malloc_trim(0)``). Live memory is
    untouched; True when the call was made (Linux with glibc), False elsewhere (a no-op)."""
    if _LIBC is None:
        return False
    _LIBC.malloc_trim(0)
    return True
