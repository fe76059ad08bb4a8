"""The four stage configs: their dataclass defaults are the stage's defaults, and the shipped presets load."""
from __future__ import annotations

import importlib
import typing
from pathlib import Path

import pytest

from rlhf import pipeline as pl
from rlhf.config import load_config, stage_cli

CONFIGS = Path(__file__).resolve().parents[1] / "pipelines" / "configs"
PRESETS = {"sft": "sft_tiny.yaml", "reward": "reward_tiny.yaml", "ppo": "ppo_tiny.yaml"}


def stage_class(name: str) -> type:
    return typing.get_type_hints(importlib.import_module(pl.STAGE_MODULES[name]).main)["cfg"]


@pytest.mark.parametrize("name", pl.STAGES)
def test_the_dataclass_defaults_are_what_the_stage_runs(name):
    """No defaults YAML: ``rlhf <stage>`` with no flags hands its main exactly ``Cls()``."""
    module = importlib.import_module(pl.STAGE_MODULES[name])
    assert module.DEFAULTS is None and pl.stage_entry(name)[2] is None
    assert not (CONFIGS / f"{name}.yaml").exists()
    cls = stage_class(name)
    received = []
    assert stage_cli(cls, module.DEFAULTS, lambda cfg, **flags: received.append(cfg), []) == 0
    assert received == [cls()]


def test_values_the_old_defaults_yaml_set_are_the_dataclass_defaults():
    """The values where the deleted YAML files differed from the classes (the files were what ran)."""
    from reward_models.config import RewardStageConfig
    from rlhf.evaluate import EvalConfig
    from rlhf.ppo.config import PPOStageConfig
    from rlhf.sft.config import SFTStageConfig

    sft = SFTStageConfig()
    assert [(s.source, s.max_examples) for s in sft.data.mixture] == [("dialogsum", 0), ("hh-rlhf-harmless", 400)]
    assert sft.data.dev_max_examples == 100 and sft.run.log_every == 5 and not sft.generation.do_sample
    assert RewardStageConfig().run.log_every == 10
    ev = EvalConfig()
    assert [(p.name, p.path) for p in ev.policies] == [("base", "smollm2-135m-instruct")]
    assert [(v.policies, v.shots, v.decoding, v.sources) for v in ev.variants] == [
        ([], 0, "sampled", []), ([], 0, "greedy", ["dialogsum"]), (["base"], 3, "greedy", ["dialogsum"])]
    ppo = PPOStageConfig()
    assert (ppo.kl.adaptive, ppo.kl.target, ppo.kl.horizon, ppo.reward.missing_eos_penalty) == (True, 2.0, 2000, 1.0)
    assert ppo.lora.layers == list(range(-8, 0))


@pytest.mark.parametrize("name, flag, kept", [
    ("ppo", ["--lora.r", "4"], lambda c: c.lora.layers == list(range(-8, 0))),
    ("ppo", ["--generation.temperature", "0.7"], lambda c: c.generation.max_new_tokens == 32),
    ("sft", ["--generation.max_new_tokens", "9"], lambda c: c.generation.do_sample is False),
    ("sft", ["--run.seed", "3"], lambda c: c.run.log_every == 5),
])
def test_a_flag_in_a_section_keeps_the_stage_defaults_of_the_section(name, flag, kept):
    cfg, _ = load_config(stage_class(name), flag)
    assert kept(cfg)


@pytest.mark.parametrize("name", PRESETS)
def test_stage_presets_load_on_the_defaults(name):
    cls = stage_class(name)
    cfg, _ = load_config(cls, ["--config", str(CONFIGS / PRESETS[name])])
    assert cfg != cls()  # the preset changed something, on top of the defaults


@pytest.mark.parametrize("preset", ["pipeline_demo.yaml", "pipeline_tiny.yaml"])
def test_pipeline_presets_resolve_every_stage(preset):
    cfg, _ = load_config(pl.PipelineConfig, [], CONFIGS / preset)
    stages = {name: pl.resolve_stage(cfg, name).config for name in pl.STAGES}
    if preset == "pipeline_demo.yaml":  # the stages' own logging intervals survive the pipeline's run settings
        assert (stages["sft"].run.log_every, stages["reward"].run.log_every) == (5, 10)
        assert stages["sft"].data.mixture[0].source == "dialogsum" and len(stages["sft"].data.mixture) == 1
