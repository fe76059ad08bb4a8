"""Keeping the RL loop's resident memory near its live tensors on a CPU.

Measured on the GRPO benchmark (benchmarks/README.md): the resident set grew every step while the live
tensors stayed at ~0.5 GiB. Three causes outside our tensors, each handled here behind one function:

* **glibc keeps freed heap.** Tensors of a few MB (activations, a decoding step's logits) are carved from
  malloc's heap; when freed, their pages stay resident until something trims them, and the next phase's
  differently sized tensors do not always fit the holes. ``release_freed_memory`` hands the free pages back
  (``malloc_trim(0)``: a few ms); the trainer calls it between phases, so each phase's transient starts
  from the live tensors instead of from the last phase's leftovers.
* **oneDNN caches a primitive per matmul shape** (1024 by default, each with its buffers). Packed,
  variable-length forwards bring new shapes every step, so the cache only fills. ``limit_onednn_cache``
  caps it; decoding reuses a handful of shapes, which a small cache keeps.
* **PyTorch's ideep layer keeps its own cache of oneDNN computations** (``LRU_CACHE_CAPACITY``, 1024 by
  default), one per bf16 matmul shape, each with its JIT-compiled kernel in fresh executable pages: ~100
  new mappings and +0.05 GiB of RSS per GRPO step, with the oneDNN cache above at 0 or 64 alike (found by
  counting ``/proc/self/maps`` per step). ``limit_onednn_cache`` caps it too: with both at 64 the RSS after
  each step stays flat (0.95 GiB over 8 steps, against 0.98 -> 1.30 GiB) and the peak falls 1.79 -> 1.48
  GiB, at the same speed (benchmarks/README.md, GRPO vs TRL 1.16).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

ONEDNN_CACHE_ENV = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"  # oneDNN's primitive cache
IDEEP_CACHE_ENV = "LRU_CACHE_CAPACITY"  # PyTorch's ideep computation cache (bf16/mkldnn matmuls)
# Decoding needs ~6 shapes (q, k/v, o, gate/up, down, LM head at B rows); the rest are one-off packed
# lengths. 64 keeps every repeating shape and bounds the one-off ones.
ONEDNN_CACHE_CAPACITY = 64


def limit_onednn_cache(capacity: int = ONEDNN_CACHE_CAPACITY) -> dict[str, str]:
    """Cap oneDNN's primitive cache and ideep's computation cache, each unless the user set its variable;
    returns the values in force. Both are read when the first primitive is built, so this must run before
    the first matmul of the process (``import rlhf.rl`` calls it); later it changes nothing."""
    return {name: os.environ.setdefault(name, str(capacity)) for name in (ONEDNN_CACHE_ENV, IDEEP_CACHE_ENV)}


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
