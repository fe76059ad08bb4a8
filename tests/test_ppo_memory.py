"""rlhf.rl.memory: the oneDNN cache cap respects the user's setting; trimming frees heap, never live data."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from rlhf.rl import memory


@pytest.mark.parametrize("variable", [memory.ONEDNN_CACHE_ENV, memory.IDEEP_CACHE_ENV])
def test_kernel_caches_are_capped_at_import_unless_the_user_set_them(variable):
    code = f"import os, rlhf.rl; print(os.environ['{variable}'])"
    env = {k: v for k, v in os.environ.items() if k not in (memory.ONEDNN_CACHE_ENV, memory.IDEEP_CACHE_ENV)}
    capped = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert capped.stdout.strip() == str(memory.ONEDNN_CACHE_CAPACITY)
    mine = subprocess.run([sys.executable, "-c", code], env={**env, variable: "7"},
                          capture_output=True, text=True, check=True)
    assert mine.stdout.strip() == "7"


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))


@pytest.mark.skipif(memory._LIBC is None, reason="malloc_trim is glibc's")
def test_release_freed_memory_returns_freed_heap_and_keeps_live_tensors():
    kept = torch.arange(1000.0)
    # 64 KB tensors, below glibc's smallest mmap threshold, always come from the heap; freed, their pages
    # stay resident until trimmed (the last one pins the heap's top, so only a trim gives them back).
    chunks = [torch.ones(16 * 1024) for _ in range(4096)]  # 256 MB
    chunks = chunks[-1:]
    before = rss_kib()
    assert memory.release_freed_memory() is True
    assert rss_kib() < before - 64 * 1024  # at least 64 of the ~255 freed MB went back
    assert torch.equal(kept, torch.arange(1000.0)) and chunks[0].sum().item() == 16 * 1024
