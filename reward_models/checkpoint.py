"""Training checkpoints of the reward stage, written atomically and read back with ``weights_only=True``.

``<run>/checkpoints/step-000120/``: model.pt (state dict), optimizer.pt, scheduler.pt, rng.pt,
best.pt (the trainable weights of the best epoch so far, if any) and trainer_state.json (step,
epoch, best dev accuracy ...). Under FSDP (a sharded model) model and optimizer go to ``sharded/``
(torch.distributed.checkpoint: each rank writes its own shard, ``rlhf.core.sharding``) and each rank keeps its
RNG in ``rng-rank<R>.pt``; the rest is as above, written by rank 0. A folder is built under a temporary name,
gets its ``manifest.json`` (sizes and sha256, :mod:`rlhf.core.checkpoints`) and is renamed into place, so a run
killed while writing never leaves a checkpoint that looks complete; resuming verifies the manifest and falls
back to the newest intact checkpoint, naming the bad file.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from rlhf.core import checkpoints
from rlhf.core.lifecycle import rng_state, set_rng_state

PREFIX = "step-"


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / checkpoints.CHECKPOINTS / f"{PREFIX}{step:06d}"


def save_checkpoint(run_dir: Path, step: int, model: torch.nn.Module, optimizer, scheduler,
                    trainer_state: dict[str, Any], best_weights: dict[str, torch.Tensor] | None, keep: int = 1,
                    process=None) -> Path:
    """Write checkpoint ``step`` and keep only the ``keep`` most recent ones.

    ``process`` (the accelerator) for a sharded model: every rank calls this and writes its own shard and RNG
    into the same temporary folder; rank 0 writes the rest and renames the folder once all ranks are done.
    Without it only rank 0 calls this, with an unsharded model."""
    final = checkpoint_dir(run_dir, step)
    tmp = final.with_name(f".{final.name}.tmp")
    main = process is None or process.is_main_process
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    if process is not None:
        from rlhf.core.sharding import save_sharded

        process.wait_for_everyone()  # the folder exists before any rank writes into it
        save_sharded(tmp / checkpoints.SHARDED, model, optimizer)
        torch.save(rng_state(), tmp / f"rng-rank{process.process_index}.pt")
        process.wait_for_everyone()  # every shard is written before rank 0 seals the folder
        if not main:
            return final
    else:
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp / "model.pt")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(rng_state(), tmp / "rng.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    if best_weights is not None:
        torch.save(best_weights, tmp / "best.pt")
    (tmp / "trainer_state.json").write_text(json.dumps({"step": step, **trainer_state}, indent=2))
    checkpoints.commit_folder(tmp, final)
    checkpoints.drop_newer(final.parent, PREFIX, step)  # left by a run that resumed from an earlier checkpoint
    checkpoints.rotate(final.parent, PREFIX, max(keep, 1))  # after the new manifest, never before
    return final


def load_checkpoint(folder: Path, model: torch.nn.Module, optimizer, scheduler, rank: int | None = None
                    ) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
    """Restore model, optimizer, scheduler and RNG in place; returns (trainer_state, best weights or None).

    ``rank``: this process's rank when the model is sharded (every rank calls this, and reads its own shard)."""
    def load(name: str):  # a file that will not load is named in the error
        return checkpoints.read_file(folder / name, lambda f: torch.load(f, map_location="cpu", weights_only=True))

    checkpoints.check_same_launch(folder, sharded=rank is not None)
    if rank is not None:
        from rlhf.core.sharding import load_sharded

        checkpoints.read_file(folder / checkpoints.SHARDED, lambda f: load_sharded(f, model, optimizer))
        set_rng_state(load(f"rng-rank{rank}.pt"))
    else:
        model.load_state_dict(load("model.pt"))
        optimizer.load_state_dict(load("optimizer.pt"))
        set_rng_state(load("rng.pt"))
    scheduler.load_state_dict(load("scheduler.pt"))
    best = load("best.pt") if (folder / "best.pt").is_file() else None
    state = checkpoints.read_file(folder / "trainer_state.json", lambda f: json.loads(f.read_text()))
    return state, best
