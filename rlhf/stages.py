"""The stages, in one table: what ``rlhf <stage>``, ``rlhf pipeline`` and the FSDP launch check know of each.

A stage is a script in ``pipelines/`` with a ``main(cfg)``: its config class is ``main``'s ``cfg`` annotation,
its flags besides the config (``--resume``) are ``main``'s other parameters. The scripts import torch and the
trainers, so each entry names its script through a small loader that runs on first use: ``rlhf --help`` and
``rlhf models list`` import none of them.

A new stage is one entry in :data:`STAGES`: ``rlhf`` gets its subcommands, ``rlhf pipeline`` its step (table
order is run order; its upstream stages come before it), and the launch check whether it may shard under FSDP
on a CPU machine. This module is the composition root: the one library module that imports ``pipelines/``.
"""
from __future__ import annotations

import inspect
import typing
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Callable, Sequence

from rlhf.command import stage_cli


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline, or one tool with a stage's shape (a ``main(cfg)`` script)."""

    name: str  # in `rlhf pipeline`: its config section, its folder <run_dir>/<name>, its {name} placeholder
    script: Callable[[], ModuleType]  # imports pipelines/<script>.py (torch and trainers), so only when used
    commands: tuple[tuple[str, str], ...] = ()  # (`rlhf` subcommand, its help); none: a pipeline-only stage
    upstream: tuple[str, ...] = ()  # the stages whose outputs it always consumes (they run before it)
    shards: bool = False  # wraps its model with rlhf.core.sharding.shard under an FSDP launch, so FSDP runs on CPU too
    pipeline: bool = True  # a step of `rlhf pipeline`
    shorthand: Callable[[list[str]], list[str]] | None = None  # the CLI's short forms, rewritten as --key flags

    @property
    def main(self) -> Callable[..., Path]:
        return self.script().main

    @property
    def config_class(self) -> type:
        return typing.get_type_hints(self.main)["cfg"]

    @property
    def defaults(self) -> Path | None:
        """The YAML layered on the dataclass defaults (None: the dataclass defaults are the stage's)."""
        defaults = self.script().DEFAULTS
        return Path(defaults) if defaults else None

    @property
    def flags(self) -> tuple[str, ...]:
        """``main``'s parameters besides ``cfg``: the stage's flags that are no config keys (``--resume``)."""
        return tuple(inspect.signature(self.main).parameters)[1:]

    def cli(self, argv: Sequence[str]) -> int:
        """``rlhf <command> ARGS`` (and ``python pipelines/<script>.py ARGS``)."""
        argv = list(argv)
        return stage_cli(self.config_class, self.defaults, self.main, self.shorthand(argv) if self.shorthand else argv,
                         self.flags, shards=self.shards)


def _algo_flag(argv: list[str]) -> list[str]:
    """``--algo X`` is short for ``--rl.algo X``."""
    return ["--rl.algo" if a == "--algo" else "--rl.algo=" + a[len("--algo="):] if a.startswith("--algo=") else a
            for a in argv]


def _model_first(argv: list[str]) -> list[str]:
    """``rlhf eval-rm MODEL ...``: the first bare argument is ``--model``."""
    return ["--model", argv[0], *argv[1:]] if argv and not argv[0].startswith("-") else argv


# One loader per script: a plain import inside a function, so a script loads only when its stage is used.
def _sft() -> ModuleType:
    import pipelines.sft as script
    return script


def _reward() -> ModuleType:
    import pipelines.reward as script
    return script


def _rl() -> ModuleType:
    import pipelines.ppo as script
    return script


def _dpo() -> ModuleType:
    import pipelines.dpo as script
    return script


def _evaluate() -> ModuleType:
    import pipelines.evaluate as script
    return script


def _compare() -> ModuleType:
    import pipelines.compare as script
    return script


def _eval_rm() -> ModuleType:
    import pipelines.eval_rm as script
    return script


# In pipeline order. The pipeline's "ppo" is the RL stage (`rlhf rl --algo ppo|grpo|rloo|reinforce_pp`).
STAGES: dict[str, Stage] = {stage.name: stage for stage in (
    Stage("sft", _sft, (("sft", "stage 1: supervised fine-tuning (full or LoRA)"),), shards=True),
    Stage("reward", _reward, (("reward", "stage 2: train the HHH reward model"),), shards=True),
    # A second reward-stage run, role gold, that only evaluation reads (rlhf.pipeline.resolve_stage marks it).
    Stage("gold", _reward, shards=True),
    Stage("ppo", _rl, (("rl", "stage 3: online RL (--algo ppo|grpo|rloo|reinforce_pp) with a KL penalty"),
                       ("ppo", "stage 3 with PPO (the same as rlhf rl --algo ppo)")),
          upstream=("sft", "reward"), shards=True, shorthand=_algo_flag),
    Stage("dpo", _dpo, (("dpo", "stage 3, offline: DPO/IPO (TRL DPOTrainer) with LoRA on the SFT policy"),),
          upstream=("sft",)),
    Stage("eval", _evaluate, (("eval", "stage 4: compare policies and write a report"),),
          upstream=("sft", "reward", "gold", "ppo", "dpo")),
    Stage("compare", _compare, (("compare", "which method aligns best: SFT, best-of-n, RL checkpoints, DPO; "
                                             "proxy and gold"),), pipeline=False),
    Stage("eval-rm", _eval_rm, (("eval-rm", "reward-model report: accuracy, length control, calibration, "
                                            "agreement"),), pipeline=False, shorthand=_model_first),
)}


def pipeline_stages() -> tuple[str, ...]:
    """The stages of ``rlhf pipeline``, in the order they run."""
    return tuple(name for name, stage in STAGES.items() if stage.pipeline)


def commands() -> dict[str, tuple[Stage, str]]:
    """``rlhf`` subcommand -> (its stage, its help)."""
    return {command: (stage, help_text) for stage in STAGES.values() for command, help_text in stage.commands}
