"""The four stage configs: their dataclass defaults are the stage's defaults, and the shipped presets load."""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest

from rlhf import pipeline as pl
from rlhf.command import stage_cli
from rlhf.core.config import _flow, _plain, field_help, load_config
from rlhf.stages import STAGES, pipeline_stages

CONFIGS = Path(__file__).resolve().parents[1] / "pipelines" / "configs"
PRESETS = {"sft": "sft_tiny.yaml", "reward": "reward_tiny.yaml", "ppo": "ppo_tiny.yaml"}


def stage_class(name: str) -> type:
    return STAGES[name].config_class


@pytest.mark.parametrize("name", pipeline_stages())
def test_the_dataclass_defaults_are_what_the_stage_runs(name):
    """No defaults YAML: ``rlhf <stage>`` with no flags hands its main exactly ``Cls()``."""
    module = STAGES[name].script()
    assert module.DEFAULTS is None and STAGES[name].defaults is None
    assert not (CONFIGS / f"{name}.yaml").exists()
    cls = stage_class(name)
    received = []
    assert stage_cli(cls, module.DEFAULTS, lambda cfg, **flags: received.append(cfg), []) == 0
    assert received == [cls()]


def test_values_the_old_defaults_yaml_set_are_the_dataclass_defaults():
    """The values where the deleted YAML files differed from the classes (the files were what ran)."""
    from reward_models.config import RewardStageConfig
    from rlhf.evaluation.evaluate import EvalConfig
    from rlhf.rl.config import PPOStageConfig
    from rlhf.sft.config import SFTStageConfig

    sft = SFTStageConfig()
    assert [(s.source, s.max_examples) for s in sft.data.mixture] == [("dialogsum", 0), ("hh-rlhf-harmless", 400)]
    assert sft.data.dev_max_examples == 100 and sft.run.log_every == 5 and not sft.generation.do_sample
    assert RewardStageConfig().run.log_every == 10
    ev = EvalConfig()
    assert [(p.name, p.model) for p in ev.policies] == [("base", "smollm2-135m-instruct")]
    assert [(v.policies, v.shots, v.decoding, v.sources) for v in ev.variants] == [
        ([], 0, "sampled", []), ([], 0, "greedy", ["dialogsum"]), (["base"], 3, "greedy", ["dialogsum"])]
    ppo = PPOStageConfig()
    assert (ppo.kl.adaptive, ppo.kl.target, ppo.kl.horizon, ppo.reward.missing_eos_penalty) == (True, 2.0, 2000, 0.0)
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
    stages = {name: pl.resolve_stage(cfg, name).config for name in pipeline_stages()}
    if preset == "pipeline_demo.yaml":  # the stages' own logging intervals survive the pipeline's run settings
        assert (stages["sft"].run.log_every, stages["reward"].run.log_every) == (5, 10)
        assert stages["sft"].data.mixture[0].source == "dialogsum" and len(stages["sft"].data.mixture) == 1


def config_classes(cls: type, seen: dict[str, type] | None = None) -> dict[str, type]:
    """``cls`` and every dataclass reachable from its fields (sections, and items of lists such as data.mixture)."""
    seen = {} if seen is None else seen
    seen[cls.__qualname__ + "@" + cls.__module__] = cls
    for tp in typing.get_type_hints(cls).values():
        for candidate in (tp, *typing.get_args(tp)):
            if dataclasses.is_dataclass(candidate) and candidate.__qualname__ + "@" + candidate.__module__ not in seen:
                config_classes(candidate, seen)
    return seen


ALL_CONFIGS = [*pipeline_stages(), "pipeline"]


def config_of(name: str) -> type:
    return pl.PipelineConfig if name == "pipeline" else stage_class(name)


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_every_field_has_a_one_line_help(name):
    missing = []
    for cls in config_classes(config_of(name)).values():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            text = field_help(f, hints[f.name])
            if not text or "\n" in text:
                missing.append(f"{cls.__qualname__}.{f.name}")
    assert not missing, f"fields without a one-line help: {missing}"


def leaf_keys(cfg, prefix=""):
    """(dotted key, value, field, type) of every non-section field of a resolved config."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            yield from leaf_keys(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", value, f, hints[f.name]


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_help_prints_every_key_with_its_resolved_value_and_help(name, capsys):
    cls = config_of(name)
    defaults = None if name != "pipeline" else CONFIGS / "pipeline_demo.yaml"
    ran = []
    flag = {"sft": ["--lora.r", "4"], "reward": ["--train.learning_rate", "0.5"], "ppo": ["--kl.coef", "0.25"],
            "eval": ["--data.seed", "7"], "pipeline": ["--threads", "1"], "dpo": ["--train.beta", "0.25"],
            "compare": ["--prompts_per_source", "3"], "eval_rm": ["--split", "dev"]}
    flag = flag["reward" if name == "gold" else name]  # the gold stage is a reward-stage run
    assert stage_cli(cls, defaults, ran.append, ["--help", *flag]) == 0 and ran == []  # help runs nothing
    out = capsys.readouterr().out
    cfg, _ = load_config(cls, flag, defaults)
    lines = out.splitlines()
    for key, value, f, tp in leaf_keys(cfg):
        shown = f"  --{key} {_flow(_plain(value))}"
        assert shown in lines, shown
        assert lines[lines.index(shown) + 1].strip() == field_help(f, tp)
    assert f"  {flag[0]} {flag[1]}" in lines  # the flag given with --help


def test_help_reports_a_bad_key_instead_of_printing(capsys):
    from rlhf.sft.config import SFTStageConfig

    assert stage_cli(SFTStageConfig, None, print, ["--help", "--lora.rank", "4"]) == 2
    assert "unknown config key lora.rank" in capsys.readouterr().err
