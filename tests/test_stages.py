"""The stage registry (rlhf.stages): one table the CLI, the pipeline and the FSDP launch check read."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from rlhf import pipeline as pl
from rlhf.cli import build_parser, main as rlhf
from rlhf.core.config import RunConfig
from rlhf.stages import STAGES, Stage, commands, pipeline_stages

ROOT = Path(__file__).resolve().parents[1]


def test_every_stage_has_a_config_class_a_main_and_registered_upstream_stages():
    order = pipeline_stages()
    for name, stage in STAGES.items():
        assert stage.name == name
        assert dataclasses.is_dataclass(stage.config_class) and callable(stage.main), name
        assert stage.flags in ((), ("resume",)), name  # main(cfg) or main(cfg, resume)
        for upstream in stage.upstream:  # run before it, in the pipeline
            assert upstream in order and order.index(upstream) < order.index(name), (name, upstream)
    assert order == ("sft", "reward", "gold", "ppo", "dpo", "eval")


def test_the_subcommands_are_the_registered_ones_and_unique():
    names = [command for stage in STAGES.values() for command, _ in stage.commands]
    assert len(names) == len(set(names))
    assert set(names) == {"sft", "reward", "rl", "ppo", "dpo", "eval", "compare", "eval-rm"}
    assert commands()["rl"][0] is commands()["ppo"][0] is STAGES["ppo"]


def test_what_shards_is_what_the_stage_configs_of_the_sharding_stages_were():
    """The old table matched these class names as strings (rlhf.core.sharding.SHARDED_STAGES)."""
    sharded = {stage.config_class.__name__ for stage in STAGES.values() if stage.shards}
    assert sharded == {"SFTStageConfig", "RewardStageConfig", "RLStageConfig"}


def test_rlhf_help_imports_no_stage_script_and_no_torch():
    code = ("import sys; from rlhf.cli import main\ntry: main(['--help'])\nexcept SystemExit: pass\n"
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('pipelines')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


# ---------------------------------------------------------------- a stage added by one registry entry


@dataclass
class ToyConfig:
    """A toy stage."""

    run: RunConfig = field(default_factory=RunConfig)
    steps: int = field(default=1, metadata={"help": "how many", "range": "[1, 100]"})


def _toy_script(calls: list) -> types.ModuleType:
    script = types.ModuleType("toy_script")

    def main(cfg: ToyConfig, resume: bool = False) -> Path:
        calls.append((cfg.steps, resume))
        run_dir = Path(cfg.run.output_dir) / cfg.run.run_name
        (run_dir / "final").mkdir(parents=True, exist_ok=True)
        (run_dir / "summary.json").write_text("{}")
        return run_dir

    script.main, script.DEFAULTS = main, None
    return script


@pytest.fixture
def toy(monkeypatch):
    calls: list = []
    script = _toy_script(calls)
    stage = Stage("toy", lambda: script, (("toy", "a toy stage"),), upstream=("sft",))
    monkeypatch.setitem(STAGES, "toy", stage)
    return stage, calls


def test_a_registered_stage_is_a_subcommand_with_its_config_and_flags(toy, tmp_path, capsys):
    stage, calls = toy
    assert "toy" in build_parser().format_help()
    assert rlhf(["toy", "--steps", "3", "--resume", "--run.output_dir", str(tmp_path), "--run.wandb_mode",
                 "disabled"]) == 0
    assert calls == [(3, True)]
    assert rlhf(["toy", "--steps", "0"]) == 2  # its config's ranges, one line
    assert capsys.readouterr().err == "error: steps: 0 is outside its range [1, 100]\n"
    assert rlhf(["toy", "--help"]) == 0 and "--steps 1" in capsys.readouterr().out


def test_a_registered_stage_runs_in_the_pipeline_after_its_upstream_stage(toy, tmp_path):
    _, toy_calls = toy
    assert pipeline_stages()[-1] == "toy"
    calls: list = []

    def sft_main(cfg: ToyConfig) -> Path:
        calls.append("sft")
        return _toy_script([]).main(cfg)

    entries = {"sft": (sft_main, ToyConfig, None), "toy": (STAGES["toy"].main, ToyConfig, None)}
    cfg = pl.PipelineConfig(run=RunConfig(output_dir=str(tmp_path), run_name="p", wandb_mode="disabled"),
                            stages=["toy", "sft"])
    pl.run_pipeline(cfg, entries=entries, log=lambda m: None)
    assert calls == ["sft"] and toy_calls == [(1, False)]
    stage = pl.resolve_stage(cfg, "toy", entries["toy"])
    assert pl.upstream_of(stage) == ("sft",) and pl.forced_stages("toy") == {"toy"}
    record = json.loads((tmp_path / "p" / "pipeline.json").read_text())
    assert list(record["stages"]) == ["sft", "toy"]
    pl.run_pipeline(cfg, force="sft", entries=entries, log=lambda m: None)  # sft reruns: so does what consumes it
    assert calls == ["sft", "sft"] and len(toy_calls) == 2


@pytest.mark.parametrize("shards, refused", [(False, True), (True, False)])
def test_the_fsdp_launch_check_reads_what_shards_from_the_registry(toy, monkeypatch, tmp_path, capsys, shards,
                                                                   refused):
    from rlhf.core import runtime

    stage, calls = toy
    monkeypatch.setitem(STAGES, "toy", dataclasses.replace(stage, shards=shards))
    monkeypatch.setattr(runtime, "cuda_present", lambda: False)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    code = rlhf(["toy", "--run.output_dir", str(tmp_path), "--run.wandb_mode", "disabled"])
    assert (code, bool(calls)) == ((2, False) if refused else (0, True))
    assert ("does not shard on CPU" in capsys.readouterr().err) == refused
