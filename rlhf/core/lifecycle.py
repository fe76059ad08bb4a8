"""One run lifecycle for every stage: processes, the run folder all ranks agree on, resume, seed and RNG state.

Every stage (sft, reward and its gold role, the RL algorithms, dpo, eval) starts with :func:`start_run`:

1. the process group under a launcher (gloo on CPU, NCCL on CUDA; nothing in one process). It is started here,
   not by whichever trainer a stage builds later, so that the ranks can agree on a folder before anything else:
   a stage whose trainer started the group only after naming its run (DPO did) split a two-rank run in two.
2. the run folder (:func:`resolve_run`): rank 0 decides, every rank receives its answer; a used run name without
   ``--resume`` is one line, and so is ``--resume`` with nothing intact to continue.
3. the seed (python, numpy, torch on every device): :func:`seed_everything`.

The folder is made by its first writer (the metrics logger), so a stage that refuses its input first leaves no
folder; a folder holding no record of a run (a stage refused its input after its logger opened an empty
``metrics.jsonl``) is not an earlier run: the same name may be used again.

Checkpoints written by our own loops (RL, reward) keep each process's RNG with :func:`rng_state` /
:func:`set_rng_state`; the TRL stages' Trainer writes its own.
"""
from __future__ import annotations

import os
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlhf.core.checkpoints import (CHECKPOINTS, CheckpointError, is_complete, newest_intact, no_intact_checkpoint,
                              numbered, remove_temporary, say_resume, verified)
from rlhf.core.config import ConfigError, RunConfig
from rlhf.core.runtime import cuda_present, from_rank_zero, init_process_group, is_rank_zero, select_device

# What a run that started leaves in its folder; a new run must not write over any of them. (metrics.jsonl only
# once it holds a record: a stage that refused its input after opening it leaves it empty.)
RUN_RECORDS = (CHECKPOINTS, "final", "summary.json")
METRICS = "metrics.jsonl"


@dataclass(frozen=True)
class Run:
    """What :func:`start_run` decided, the same on every rank."""
    dir: Path  # <output_dir>/<name>: made by its first writer
    checkpoint: Path | None  # the intact checkpoint to continue from (--resume), else None
    device: torch.device  # where this process computes (rlhf.core.runtime.select_device of run.device)


def start_run(run: RunConfig, stage: str, resume: bool | str | None = False, prefix: str | None = None) -> Run:
    """Start a stage's run on every rank: the process group, the run folder rank 0 decides, the seed.

    ``stage`` names timestamped folders (``<stage>-YYYYmmdd-HHMMSS``); ``prefix`` is the stage's checkpoint folder
    prefix (``step-``, ``checkpoint-``), None for a stage without checkpoints (then there is no ``--resume``).
    Call before any model loads: every refusal is one line (a ConfigError), raised on every rank."""
    device = select_device(run.device)
    init_process_group(device)
    run_dir, checkpoint = resolve_run(run, stage, resume, prefix)
    seed_everything(run.seed)
    return Run(run_dir, checkpoint, device)


def run_folder(run: RunConfig, stage: str) -> Path:
    """``<output_dir>/<run.run_name or $RLHF_RUN_NAME or stage-YYYYmmdd-HHMMSS>``: read the clock on one rank only."""
    name = run.run_name or os.environ.get("RLHF_RUN_NAME") or f"{stage}-{time.strftime('%Y%m%d-%H%M%S')}"
    return Path(run.output_dir) / name


def holds_a_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds what a run wrote: checkpoints, a final model, a summary or a metrics record."""
    metrics = run_dir / METRICS
    return any((run_dir / entry).exists() for entry in RUN_RECORDS) or (metrics.is_file()
                                                                         and metrics.stat().st_size > 0)


def resolve_run(run: RunConfig, stage: str, resume: bool | str | None, prefix: str | None
                ) -> tuple[Path, Path | None]:
    """(run folder, checkpoint to continue from or None): call on every rank (:func:`start_run` does).

    Without ``--resume``: :func:`run_folder`, refused if an earlier run is there (its metrics would be appended
    to, its checkpoints and final/ replaced). ``--resume``: run.run_name's folder, else the newest ``<stage>-*``
    run with a checkpoint; ``--resume PATH`` a run folder or one ``<prefix>N`` checkpoint in it. The newest intact
    checkpoint is taken (one line per newer one skipped); none intact is one line naming the folder and what was
    wrong with each. Leftover temporary folders of a killed checkpoint write are deleted.

    Rank 0 decides and the others take its answer: a timestamped name read on each rank would split a run in two
    when the ranks straddle a second boundary. A refusal is raised on every rank, so none waits for the others.
    """
    decision: tuple[Path, Path | None] | ConfigError | None = None
    if is_rank_zero():
        try:
            decision = _decide_run(run, stage, resume, prefix)
        except ConfigError as err:
            decision = err
    decision = from_rank_zero(decision)
    if isinstance(decision, ConfigError):
        raise decision
    return decision


def _decide_run(run: RunConfig, stage: str, resume: bool | str | None, prefix: str | None
                ) -> tuple[Path, Path | None]:
    if not resume:
        run_dir = run_folder(run, stage)
        if holds_a_run(run_dir):
            again = "--resume continues it, another" if prefix is not None else "another"
            raise ConfigError(f"run.run_name: {run_dir} holds an earlier run; {again} run.run_name (or none) "
                              "starts a new one")
        return run_dir, None
    if prefix is None:
        raise ConfigError(f"--resume: the {stage} stage writes no checkpoints; run it again under a new run.run_name")
    if isinstance(resume, str):
        path = Path(resume)
        if re.fullmatch(re.escape(prefix) + r"\d+", path.name) and path.is_dir():  # a checkpoint named itself
            return path.parent.parent, verified(path)
        run_dir = path
    elif run.run_name:
        run_dir = Path(run.output_dir) / run.run_name
    else:  # the newest run of this stage that finished writing a checkpoint
        runs = [p for p in Path(run.output_dir).glob(f"{stage}-*")
                if any(is_complete(c) for _, c in numbered(p / CHECKPOINTS, prefix))]
        if not runs:
            raise CheckpointError(f"--resume: no {stage} run with a checkpoint under {run.output_dir}/ (name the run "
                                  "with --run.run_name, or give --resume PATH)")
        run_dir = max(runs, key=lambda p: p.stat().st_mtime)
    checkpoint = newest_intact(run_dir / CHECKPOINTS, prefix)
    if checkpoint is None:
        raise no_intact_checkpoint(run_dir, prefix)
    for leftover in remove_temporary(run_dir / CHECKPOINTS):
        say_resume(f"removed {leftover}, left by a run killed while writing a checkpoint")
    return run_dir, checkpoint


# ---------------------------------------------------------------- seed and RNG state


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's global generators (torch's on every CUDA device too)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """This process's global RNG state, loadable with ``torch.load(weights_only=True)`` (numpy's keys as a list)."""
    np_state = np.random.get_state()
    return {"python": random.getstate(), "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if cuda_present() else []}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`'s state. Older reward checkpoints kept torch's (and CUDA's) only: what is there."""
    if "python" in state:
        random.setstate(state["python"])
    if "numpy" in state:
        kind, keys, *rest = state["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and cuda_present():
        torch.cuda.set_rng_state_all(state["cuda"])
