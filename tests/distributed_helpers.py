"""What the multi-process PPO tests share: a driver script that trains the tiny PPO config for a few steps and
saves each rank's view (trainable parameters, prompts, metrics), and the assertions that those views agree.

Used by ``test_multinode.py`` (two torchrun "nodes" on the loopback address); the one-machine runs are the
equivalence tests ``test_two_process_*.py``, which share ``STRATEGY_ENV``, ``worker_env`` and the Adam tolerance."""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

# argv: output folder, number of steps. Each rank saves rank<R>.pt with what the assertions below compare.
PPO_DRIVER = textwrap.dedent('''
    import os, sys, torch
    from rlhf.core.config import RunConfig, load_config
    from rlhf.rl.config import PPOStageConfig
    from rlhf.rl.policy import build_actor_critic, load_policy_tokenizer
    from rlhf.rl.prompts import prepare_prompts
    from rlhf.rl.scorers import TokenCountScorer
    from rlhf.rl.trainer import PPOTrainer, make_accelerator

    out, steps = sys.argv[1], int(sys.argv[2])
    cfg, _ = load_config(PPOStageConfig, ["--config", "pipelines/configs/ppo_tiny.yaml", "--update.batch_size", "4",
                                          "--update.mini_batch_size", "2", "--update.micro_batch_size", "1"])
    accelerator = make_accelerator()
    # Different seeds per rank before building: DDP must still start every rank from rank 0's weights.
    torch.manual_seed(accelerator.process_index)
    tokenizer = load_policy_tokenizer(cfg.model)
    model = build_actor_critic(cfg.model, cfg.lora, torch.float32)
    class CharScorer:
        def score(self, prompts, responses):
            from reward_models.types import RewardScores
            c = torch.tensor([sum(ch in "aeiou" for ch in r) / max(len(r), 1) for r in responses])
            return RewardScores(c, {"helpful": c})
    trainer = PPOTrainer(cfg, model, tokenizer, CharScorer(), prepare_prompts(cfg.data, tokenizer, 0),
                         accelerator=accelerator)
    initial = trainer.unwrapped.trainable_state_dict()
    prompts = [trainer.stream.batch(s) for s in range(steps)]
    history = trainer.train(steps=steps)
    torch.save({"params": trainer.unwrapped.trainable_state_dict(), "initial": initial, "prompts": prompts,
                "history": history, "world": accelerator.num_processes,
                "node": os.environ.get("GROUP_RANK")},  # torchrun's node rank (the agent's rank)
               f"{out}/rank{accelerator.process_index}.pt")
''')


# What `accelerate launch` sets for each launch config the equivalence tests run (pipelines/accelerate/*.yaml):
# DDP is a plain torchrun (rlhf.core.runtime gives each process its gloo group on CPU); FSDP2 adds fsdp.yaml's flags.
STRATEGY_ENV = {"ddp": {}, "fsdp2": {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}}


def worker_env() -> dict[str, str]:
    """One thread per process (the processes share the cores) and no tokenizer thread pool."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def write_driver(folder: Path) -> Path:
    driver = folder / "driver.py"
    driver.write_text(PPO_DRIVER)
    return driver


def free_port() -> int:
    """A TCP port nothing listens on now (the OS picks it), for a rendezvous endpoint."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def load_ranks(folder: Path, world: int) -> list[dict]:
    return [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(world)]


def assert_ranks_agree(ranks: list[dict]) -> None:
    """Every rank saw the whole world, trained, and ended with rank 0's exact parameters; each generated for its
    own prompts; the reduced metrics are the same on every rank."""
    first = ranks[0]
    assert [r["world"] for r in ranks] == [len(ranks)] * len(ranks)
    for other in ranks[1:]:
        assert other["params"].keys() == first["params"].keys()
        for name, tensor in first["params"].items():
            torch.testing.assert_close(other["params"][name], tensor, rtol=0, atol=0)
    assert any(not torch.equal(first["initial"][n], p) for n, p in first["params"].items())
    for step in range(len(first["prompts"])):  # each process generated for its own share of prompts
        seen = [set(r["prompts"][step]) for r in ranks]
        assert sum(map(len, seen)) == len(set().union(*seen))
    for other in ranks[1:]:  # metrics are reduced across processes
        assert other["history"][-1]["reward/composite"] == pytest.approx(first["history"][-1]["reward/composite"])


def assert_adam_weights_close(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], lr: float) -> None:
    """Weights after Adam updates computed in two layouts (one process / sharded): Adam moves each element by
    about ``lr`` per update whatever its gradient's size, so where a gradient is ~0 the summation-order rounding of
    the layouts becomes a visible part of a step (measured: up to 3% of one). So every element within lr / 30
    (rtol 1e-4), and at least 99% of them within 1e-6."""
    close = total = 0
    assert got.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=1e-4, atol=lr / 30, msg=lambda m: f"{name}: {m}")
        close += int(((got[name] - tensor).abs() <= 1e-6).sum())
        total += tensor.numel()
    assert close >= 0.99 * total, (close, total)


def killed_after(run_dir: Path, dest: Path, step: int) -> Path:
    """A copy of a finished run as it would be had it been killed right after its step-``step`` checkpoint: the
    later checkpoints, ``final/``, ``summary.json`` and the later steps' metrics gone. Resuming it must redo
    those steps. (One launch fewer than a run stopped there: launches dominate these tests' time, and a stop
    after a checkpoint writes exactly this.)"""
    shutil.copytree(run_dir, dest)
    for checkpoint in (dest / "checkpoints").iterdir():
        number = re.search(r"(\d+)$", checkpoint.name)
        if number and int(number.group(1)) > step:
            shutil.rmtree(checkpoint)
    shutil.rmtree(dest / "final", ignore_errors=True)
    (dest / "summary.json").unlink(missing_ok=True)
    metrics = dest / "metrics.jsonl"
    kept = [line for line in metrics.read_text().splitlines() if json.loads(line).get("step", 0) <= step]
    metrics.write_text("".join(f"{line}\n" for line in kept))
    return dest


def grouped(prefix: str, runs: list[tuple[str, ...]], key=None) -> list:
    """``runs`` as pytest params, each in an xdist group: under ``make test``'s ``--dist loadgroup`` the tests of
    one group land on one worker, so the launches they share (cached by a module fixture) are made once, while
    different groups spread over the workers. ``key(run)``: the group's name within ``prefix`` (default: the whole
    run), e.g. the SFT method, so the DDP and FSDP2 runs of one method share its one-process run."""
    def group(run: tuple[str, ...]) -> str:
        return f"{prefix}-{key(run) if key else '-'.join(run)}"
    return [pytest.param(*run, id="-".join(run), marks=pytest.mark.xdist_group(group(run))) for run in runs]
