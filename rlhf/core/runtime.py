"""Where a stage computes and in what precision: one rule for every stage.

Every stage asks this module, and only this module, where it runs: :func:`select_device` (CUDA when there is
one, this process's local GPU under a launcher; ``--run.device cpu|cuda`` forces), :func:`make_accelerator`
and :func:`init_process_group` (accelerate's process group on that device: gloo on CPU, NCCL on CUDA), and
:func:`use_bf16` / :func:`resolve_dtype` / :func:`autocast` for precision. ``tests/test_runtime_devices.py`` checks that no other
module decides a device itself.

``precision`` means the same everywhere: ``fp32``; ``bf16`` (frozen weights stored and multiplied in bf16,
trainable weights kept float32); ``auto`` = bf16 only where bf16 matmuls are native (CUDA with bf16, CPUs
with AVX512-BF16 or AMX). Elsewhere bf16 is emulated: on an AVX2-only EPYC a bf16 matmul measured ~4.5x
*slower* than fp32, so ``auto`` must decide per machine, not per project.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Literal, Mapping

import torch

Precision = Literal["auto", "bf16", "fp32"]
DEVICES = ("auto", "cpu", "cuda")


def cuda_present() -> bool:
    """Whether this process sees a CUDA device (the one place the project asks torch)."""
    return torch.cuda.is_available()


def select_device(requested: str = "auto", key: str = "run.device") -> torch.device:
    """The device a stage computes on: ``auto`` = CUDA when present (this process's ``LOCAL_RANK`` GPU under
    torchrun / accelerate launch), else CPU; ``cpu`` / ``cuda`` force. Asking for CUDA where there is none is
    a config error naming ``key`` (one line, before any model loads), not a crash deep inside a stage."""
    from rlhf.core.config import ConfigError

    if requested not in DEVICES:
        raise ConfigError(f"{key}: expected one of {', '.join(DEVICES)}, got {requested!r}")
    if requested == "cuda" and not cuda_present():
        raise ConfigError(f"{key}: cuda requested, but this machine has no CUDA device (use auto or cpu)")
    if requested == "cpu" or not cuda_present():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def init_process_group(device: torch.device) -> None:
    """Start accelerate's process group under a launcher (a no-op in one process): gloo on CPU, NCCL on CUDA.
    accelerate must be told ``cpu=True`` on a machine without a GPU, or torchrun processes each think they
    run alone."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        PartialState(cpu=device.type == "cpu")


def is_rank_zero() -> bool:
    """This process is rank 0 of the process group (or the only process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def from_rank_zero(value):
    """Rank 0's ``value`` on every rank (a no-op when not distributed): what one process decides for all."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def make_accelerator(device: torch.device | None = None):
    """The Accelerator of a stage's own training loop (reward, RL), on ``device`` (from :func:`select_device`;
    None: ``auto``), with no mixed precision left over from an earlier stage of this process."""
    from accelerate import Accelerator

    device = select_device() if device is None else device
    fresh_accelerator_state()
    return Accelerator(cpu=device.type == "cpu")


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


def autocast(device: torch.device, bf16: bool):
    """The one autocast of every stage: bf16 autocast on ``device`` when ``bf16`` (from :func:`use_bf16`, or a
    compute dtype of :func:`resolve_dtype` that is not float32), else nothing (fp32 needs no autocast, and CPU
    autocast has no float32 mode)."""
    import contextlib

    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


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


# What `accelerate launch` hands every process: the launch config's distributed_type and strategy, as variables.
ZERO_STAGES = ("0", "1", "2", "3")
FSDP_SHARDING = ("FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD", "HYBRID_SHARD_ZERO2")


def _flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "false").lower() in ("true", "1", "yes")


def launch_problem(env: Mapping[str, str] | None = None, cuda: bool | None = None, shards: bool = True) -> str | None:
    """Why the strategy the launcher asked for cannot run here (one line naming the setting), or None.

    Every stage makes its Accelerator with ``cpu=True`` where CUDA is missing (without it accelerate 1.15 sees no
    process group under torchrun), and with ``cpu=True`` accelerate silently ignores ``ACCELERATE_USE_DEEPSPEED``
    and ``ACCELERATE_USE_FSDP``: a ZeRO or FSDP launch on such a machine would train as plain DDP and claim nothing.
    Without ``cpu=True`` it is worse: under DeepSpeed's CPU backend accelerate counts every process as rank 0 of 1
    (measured: accelerate 1.15, deepspeed 0.19.8). So ZeRO is refused here without CUDA, before any model loads.
    FSDP runs everywhere, as FSDP2 only, in the stages that wrap the model with ``rlhf.core.sharding.shard``
    themselves (``shards``: ``rlhf.stages.Stage.shards``); the others leave FSDP to accelerate: CUDA only."""
    env = os.environ if env is None else env
    cuda = cuda_present() if cuda is None else cuda
    if _flag(env, "ACCELERATE_USE_DEEPSPEED"):
        stage = env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
        if stage is not None and stage not in ZERO_STAGES:
            return (f"deepspeed_config.zero_stage (ACCELERATE_DEEPSPEED_ZERO_STAGE={stage}): unknown ZeRO stage; "
                    f"expected one of {', '.join(ZERO_STAGES)}")
        if importlib.util.find_spec("deepspeed") is None:
            return ("distributed_type DEEPSPEED (ACCELERATE_USE_DEEPSPEED=true): deepspeed is not installed "
                    "(pip install -e '.[deepspeed]')")
        if not cuda:
            return "distributed_type DEEPSPEED (ACCELERATE_USE_DEEPSPEED=true): ZeRO needs CUDA here; untested on CPU"
    from rlhf.core.sharding import fsdp_requested

    if fsdp_requested(env):
        strategy = env.get("FSDP_SHARDING_STRATEGY")
        if strategy is not None and strategy.upper() not in FSDP_SHARDING and strategy not in ("1", "2", "3", "4", "5"):
            return (f"fsdp_config.fsdp_sharding_strategy (FSDP_SHARDING_STRATEGY={strategy}): unknown strategy; "
                    f"expected one of {', '.join(FSDP_SHARDING)}")
        # Unset means 1, as accelerate reads it. The stages shard with torch's fully_shard themselves (FSDP2,
        # rlhf/core/sharding.py) on CPU and CUDA alike, so an FSDP1 launch would silently run as something else.
        version = env.get("FSDP_VERSION", "1")
        if version != "2":
            return (f"fsdp_config.fsdp_version (FSDP_VERSION={version}): the stages shard with FSDP2 only; "
                    "set fsdp_version: 2 (pipelines/accelerate/fsdp.yaml)")
        if not shards and not cuda:
            return ("distributed_type FSDP (ACCELERATE_USE_FSDP=true): this stage does not shard on CPU (accelerate "
                    "would silently run gloo DDP); FSDP on CPU: sft, reward, ppo")
    return None
