"""Atomic checkpoints of a PPO run, and finding the one to resume from.

A checkpoint is a folder ``<run>/checkpoints/step-000010/`` holding everything needed to continue:
trainable weights (LoRA + value head, ``trainable.safetensors``; the LoRA also as a PEFT ``adapter/``),
``optimizer.pt``, ``scheduler.pt``, ``trainer_state.json`` (step = data position, KL controller, reward
moments, Lagrange multipliers) and one ``rng-rank<r>.pt`` per process. It is written into a temporary folder and renamed into
place, and ``checkpoints/latest`` is replaced atomically afterwards, so a run killed at any moment leaves
either the previous checkpoint or the new one, never half of one. Its ``manifest.json`` (sizes and
sha256, :mod:`rlhf.core.checkpoints`) is written before the rename; resuming verifies it and falls back to
the newest intact checkpoint, naming the bad file.

Under FSDP (``RLTrainer.sharded``) the optimizer state lives in shards: every rank writes its own into
``sharded/`` (torch.distributed.checkpoint, with the trainable weights) instead of ``optimizer.pt``, and a
resume reads it back the same way; ``trainable.safetensors`` and ``adapter/`` still hold the whole
(gathered) trainable weights, written by rank 0.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from rlhf.core import checkpoints
from rlhf.core.lifecycle import rng_state, set_rng_state
from rlhf.core.runtime import from_rank_zero

LATEST = "latest"
PREFIX = "step-"
STATE = "trainer_state.json"
TRAINABLE = "trainable.safetensors"


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


def prepare_dir(run_dir: str | Path, step: int) -> Path:
    """A fresh temporary folder next to the final one (same filesystem, so the rename is atomic)."""
    root = checkpoint_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{step_dir_name(step)}-", dir=root))


def write_rank_files(tmp: Path, rank: int) -> None:
    torch.save(rng_state(), tmp / f"rng-rank{rank}.pt")


def commit(run_dir: str | Path, tmp: Path, step: int, keep: int) -> Path:
    """Rename ``tmp`` into place, point ``latest`` at it, and drop old checkpoints beyond ``keep``."""
    root = checkpoint_root(run_dir)
    final = checkpoints.commit_folder(tmp, root / step_dir_name(step))
    checkpoints.drop_newer(root, PREFIX, step)  # left by a run that resumed from an earlier checkpoint
    checkpoints.write_text_atomic(root / LATEST, final.name)
    checkpoints.rotate(root, PREFIX, keep)  # after the new manifest, never before
    return final


def save_main_files(tmp: Path, trainable: dict[str, torch.Tensor], optimizer_state: dict | None,
                    scheduler_state: dict, trainer_state: dict[str, Any],
                    save_adapter: Callable[[Path], None] | None = None) -> None:
    """``optimizer_state`` None: the optimizer was saved sharded (FSDP)."""
    from safetensors.torch import save_file

    save_file({k: v.contiguous().cpu() for k, v in trainable.items()}, str(tmp / TRAINABLE))
    if optimizer_state is not None:
        torch.save(optimizer_state, tmp / "optimizer.pt")
    torch.save(scheduler_state, tmp / "scheduler.pt")
    (tmp / STATE).write_text(json.dumps(trainer_state, indent=2), encoding="utf-8")
    if save_adapter is not None:
        save_adapter(tmp / "adapter")


def find_checkpoint(run_dir_or_checkpoint: str | Path) -> Path | None:
    """A checkpoint folder itself (CheckpointError naming the bad file unless intact), or a run folder's
    newest intact checkpoint (one line per newer one skipped); None when the run has none."""
    path = Path(run_dir_or_checkpoint)
    if (path / STATE).is_file() or (path / checkpoints.MANIFEST).is_file():
        return checkpoints.verified(path)
    return checkpoints.newest_intact(checkpoint_root(path), PREFIX)


def load_checkpoint(path: Path, rank: int, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Everything a checkpoint holds, loaded safely (tensors only, no arbitrary pickled objects)."""
    from safetensors.torch import load_file

    read = checkpoints.read_file  # a file that will not load is named in the error
    rng_file = path / f"rng-rank{rank}.pt"
    sharded = (path / checkpoints.SHARDED).is_dir()  # the optimizer state is there, read by rlhf.core.sharding.load_sharded
    device = torch.device(map_location)
    # accelerate's device under torchrun on CPU is "cpu:0", which neither safetensors nor torch.load restores to
    device = "cpu" if device.type == "cpu" else str(device)
    return {
        "trainable": read(path / TRAINABLE, lambda f: load_file(str(f), device=device)),
        "optimizer": None if sharded else read(path / "optimizer.pt",
                                               lambda f: torch.load(f, map_location=device, weights_only=True)),
        "scheduler": read(path / "scheduler.pt", lambda f: torch.load(f, weights_only=True)),
        "trainer_state": read(path / STATE, lambda f: json.loads(f.read_text(encoding="utf-8"))),
        "rng": read(rng_file, lambda f: torch.load(f, weights_only=True)) if rng_file.is_file() else None,
    }


# ---------------------------------------------------------------- a trainer's checkpoints


def save(trainer) -> Path | None:
    """Write ``<run>/checkpoints/step-N`` of an ``RLTrainer`` atomically (every process writes its RNG state)."""
    acc = trainer.accelerator
    if trainer.run_dir is None:
        raise ValueError("RLTrainer(run_dir=...) is needed to write checkpoints")
    tmp = from_rank_zero(prepare_dir(trainer.run_dir, trainer.step_count) if acc.is_main_process else None)
    write_rank_files(tmp, acc.process_index)
    sharded = getattr(trainer, "sharded", False)
    if sharded:  # collectives: every rank writes its shard, and gathers the whole trainable weights
        from rlhf.core.sharding import full_state_dict, save_sharded

        save_sharded(tmp / checkpoints.SHARDED, trainer.unwrapped, trainer.optimizer, trainable_only=True)
        trainable = full_state_dict(trainer.unwrapped, trainable_only=True)
    acc.wait_for_everyone()
    final = None
    if acc.is_main_process:
        if sharded:
            gathered = lambda path: save_adapter(trainer.unwrapped, path, trainable)  # noqa: E731
            save_main_files(tmp, trainable, None, trainer.scheduler.state_dict(), trainer.state_dict(),
                            save_adapter=checkpoint_adapter(gathered, trainer.cfg.model, trainer.tokenizer))
        else:
            save_main_files(tmp, trainer.unwrapped.trainable_state_dict(), trainer.optimizer.state_dict(),
                            trainer.scheduler.state_dict(), trainer.state_dict(),
                            save_adapter=checkpoint_adapter(trainer.unwrapped.policy.save_pretrained,
                                                            trainer.cfg.model, trainer.tokenizer))
        final = commit(trainer.run_dir, tmp, trainer.step_count, trainer.cfg.train.save_total_limit)
    acc.wait_for_everyone()
    return final


def resume(trainer, path: str | Path) -> None:
    """Continue an ``RLTrainer`` from a checkpoint folder (or a run folder's latest checkpoint)."""
    found = find_checkpoint(path)
    if found is None:
        raise FileNotFoundError(f"--resume: no checkpoint under {path}")
    sharded = getattr(trainer, "sharded", False)
    checkpoints.check_same_launch(found, sharded)
    state = load_checkpoint(found, trainer.accelerator.process_index, map_location=trainer.accelerator.device)
    if sharded:  # each rank reads its own shard of the trainable weights and of the optimizer state
        from rlhf.core.sharding import load_sharded

        checkpoints.read_file(found / checkpoints.SHARDED,
                              lambda f: load_sharded(f, trainer.unwrapped, trainer.optimizer, trainable_only=True))
    else:
        trainer.unwrapped.load_trainable_state_dict(state["trainable"])
        trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    trainer.load_state_dict(state["trainer_state"])
    if state["rng"] is not None:
        set_rng_state(state["rng"])
    if trainer.accelerator.is_main_process:
        print(f"[{trainer.cfg.rl.algo}] resumed from {found} at step {trainer.step_count}")


SFT_BASE = "sft-base"  # in final/: the SFT start as full weights, when it existed only as base + SFT adapter


def sft_start(model_cfg) -> str:
    """What the RL (or DPO) LoRA was trained on, as one loadable name: the SFT adapter folder (an adapter whose base
    is an adapter: ``rlhf.models.policies`` merges the chain), or the SFT model (zoo name, hub id, folder or adapter)."""
    return model_cfg.sft_adapter or model_cfg.name


def sft_start_folder(model_cfg) -> str | None:
    """The folder (or hub id) whose weights are exactly the RL LoRA's base, or None when that base was made in
    memory by merging an SFT adapter (then only a saved copy can stand for it)."""
    from rlhf.models.policies import adapter_folder
    from rlhf.models.zoo import resolve_model

    path = resolve_model(model_cfg.name)
    if model_cfg.sft_adapter or adapter_folder(path) is not None:
        return None
    return str(Path(path).resolve()) if Path(path).is_dir() else path


def point_adapter_at_sft(adapter_dir: Path, model_cfg, tokenizer) -> str:
    """Make ``AutoPeftModelForCausalLM.from_pretrained(adapter_dir)`` give the trained policy: peft writes the
    raw base's name into ``adapter_config.json``, which would silently drop the SFT weights. The base becomes
    the SFT model, or a merged copy saved beside the adapter in ``../sft-base`` when the SFT was an adapter,
    named portably (``rlhf.models.policies.portable_base``: a zoo name, a hub id, or a folder relative to the adapter,
    which peft reads from the working directory and our loaders from the adapter folder). The RL and DPO stages'
    ``final/adapter``. Returns the base written."""
    from rlhf.models.policies import load_weights, set_adapter_base

    base = sft_start_folder(model_cfg)
    if base is None:
        folder = adapter_dir.parent / SFT_BASE
        load_weights(model_cfg.name, torch.float32, adapter=model_cfg.sft_adapter).save_pretrained(folder)  # as on disk
        tokenizer.save_pretrained(folder)
        base = str(folder.resolve())
    return set_adapter_base(adapter_dir, base)


def checkpoint_adapter(save: Callable[[Path], None], model_cfg, tokenizer) -> Callable[[Path], None]:
    """``save`` (which writes the PEFT adapter into a folder), then the folder named portably on the SFT start
    (:func:`sft_start`; no merged copy per checkpoint) with the tokenizer beside it, so it loads on its own."""
    from rlhf.models.policies import set_adapter_base

    def write(folder: Path) -> None:
        save(folder)
        set_adapter_base(folder, sft_start(model_cfg))
        tokenizer.save_pretrained(folder)

    return write


def save_adapter(model, folder: Path, trainable: dict[str, torch.Tensor]) -> None:
    """The policy's PEFT adapter from whole (gathered) trainable weights named as ``model``'s: a sharded model's
    own state dict holds only this rank's shard."""
    prefix = "policy."
    model.policy.save_pretrained(folder, state_dict={k[len(prefix):]: v for k, v in trainable.items()
                                                     if k.startswith(prefix)})


def save_final(trainer, out_dir: str | Path, merged: bool = True) -> Path:
    """``out_dir/adapter`` (PEFT LoRA whose base is the SFT model, see :func:`point_adapter_at_sft`),
    ``value_head.safetensors`` (PPO) and, with ``merged``, the policy with SFT + RL weights merged as a plain
    HF folder (what evaluation loads; not for a quantized base, whose final/ loads through its adapter).
    Merging consumes the adapters: call this last."""
    from safetensors.torch import save_file

    from rlhf.models.policies import merged_as_trained

    out_dir = Path(out_dir)
    acc, model = trainer.accelerator, trainer.unwrapped
    acc.wait_for_everyone()
    sharded = getattr(trainer, "sharded", False)
    if sharded:  # a collective: the whole trainable weights on every rank; rank 0 writes them
        from rlhf.core.sharding import full_state_dict

        trainable = full_state_dict(model, trainable_only=True)
    if acc.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        if sharded:
            save_adapter(model, out_dir / "adapter", trainable)
        else:
            model.policy.save_pretrained(out_dir / "adapter")
        point_adapter_at_sft(out_dir / "adapter", trainer.cfg.model, trainer.tokenizer)
        trainer.tokenizer.save_pretrained(out_dir / "adapter")  # the adapter folder loads on its own
        if model.value_head is not None:
            head = ({k[len("value_head."):]: v for k, v in trainable.items() if k.startswith("value_head.")}
                    if sharded else model.value_head.state_dict())
            save_file({k: v.contiguous().cpu() for k, v in head.items()}, str(out_dir / "value_head.safetensors"))
        if merged and not model.quantized:  # merged into 4-/8-bit weights the RL update would be rounded away
            if sharded:  # the sharded model cannot merge into weights it does not hold whole: merge from the saved
                # adapter, in this one process, on its base as the adapter names it (a zoo name, ../sft-base)
                merged_as_trained(out_dir / "adapter", trainer.maker.compute_dtype).save_pretrained(out_dir)
            else:
                model.policy.merge_and_unload().save_pretrained(out_dir)
        trainer.tokenizer.save_pretrained(out_dir)
    acc.wait_for_everyone()
    return out_dir
