"""Where a stage computes and in what precision: one rule for every stage.

``precision`` means the same everywhere: ``fp32``; ``bf16`` (frozen weights stored and multiplied in bf16,
trainable weights kept float32); ``auto`` = bf16 only where bf16 matmuls are native (CUDA with bf16, CPUs
with AVX512-BF16 or AMX). Elsewhere bf16 is emulated: on an AVX2-only EPYC a bf16 matmul measured ~4.5x
*slower* than fp32, so ``auto`` must decide per machine, not per project.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

Precision = Literal["auto", "bf16", "fp32"]


def cpu_has_bf16_matmul() -> bool:
    """Native bf16 dot products on this CPU (AVX512-BF16 or AMX)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    if any(getattr(torch.cpu, name, lambda: False)() for name in checks):
        return True
    try:  # torch builds without those probes: read the flags the kernel reports
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_bf16(precision: Precision, device: torch.device) -> bool:
    """Whether ``precision`` computes in bf16 on ``device``."""
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision: expected auto, bf16 or fp32, got {precision!r}")
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_bf16_matmul()


def resolve_dtype(precision: Precision, device: torch.device) -> torch.dtype:
    """The compute (and frozen-weight) dtype for ``precision`` on ``device``; trainable weights stay float32."""
    return torch.bfloat16 if use_bf16(precision, device) else torch.float32


def fresh_accelerator_state() -> None:
    """Forget the mixed precision an earlier stage of this process gave accelerate, before a stage makes its own.

    accelerate keeps one ``AcceleratorState`` per process. A TRL trainer (SFT, DPO) sets it to ``bf16`` mixed
    precision; an ``Accelerator()`` made later in the same process (``rlhf pipeline`` runs every stage in one
    process, and so do the tests) then silently inherits it, so a stage configured for fp32 ran under bf16
    autocast and left CPU autocast switched on after it. Our stages decide precision themselves
    (``use_bf16``), so each starts from a clean state. The process group (``PartialState``) is kept."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
