"""Every numeric setting of every stage declares its valid values, and the config loader enforces them: a value
outside is one line naming the key and the range, exit 2, before any model loads or a run folder exists."""
from __future__ import annotations

import dataclasses
import importlib
import math
import types
import typing

import pytest

from rlhf import pipeline as pl
from rlhf.core import config
from rlhf.command import stage_cli
from rlhf.core.config import ConfigError, from_dict, load_config
from rlhf.stages import STAGES, pipeline_stages


def stage_class(name: str) -> type:
    return STAGES[name].config_class


def _dataclass_in(tp) -> type | None:
    """The dataclass a field holds: itself, the X of ``X | None``, or the item of ``list[X]``."""
    if dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType, list):
        inner = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        return inner[0] if inner else None
    return None


def _is_number(tp) -> bool:
    if tp in (int, float):
        return True
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and bool(args) and all(a in (int, float)
                                                                                         for a in args)


def numeric_fields(cls: type, prefix: str = ""):
    """(dotted key, field, default) of every int/float field under ``cls``, sections included."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, key = hints[f.name], f"{prefix}{f.name}"
        section = _dataclass_in(tp)
        if section is not None:
            yield from numeric_fields(section, f"{key}.")
        elif _is_number(tp):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            yield key, f, default


# The commands beside the stages read their configs through the same loader: their settings are checked too.
COMMAND_CONFIGS = {"compare": "pipelines.compare:CompareConfig", "plan": "rlhf.plan:PlanConfig",
                   "pipeline": "rlhf.pipeline:PipelineConfig", "eval-rm": "reward_models.report:RMReportConfig"}


def command_class(name: str) -> type:
    module, _, cls = COMMAND_CONFIGS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


ALL_FIELDS = ([(name, key, f, default) for name in pipeline_stages() for key, f, default in numeric_fields(stage_class(name))]
              + [(name, key, f, default) for name in COMMAND_CONFIGS
                 for key, f, default in numeric_fields(command_class(name))])


def test_the_walk_finds_the_fields_it_must():
    keys = {(name, key) for name, key, _, _ in ALL_FIELDS}
    assert {("reward", "train.learning_rate"), ("ppo", "kl.coef"), ("ppo", "generation.max_new_tokens"),
            ("sft", "data.mixture.weight"), ("eval", "confidence"), ("dpo", "train.beta"),
            ("compare", "prompts_per_source"), ("plan", "train.micro_batch"), ("eval-rm", "confidence")} <= keys
    assert len(ALL_FIELDS) > 100


@pytest.mark.parametrize("name, key, f, default", ALL_FIELDS, ids=[f"{n}:{k}" for n, k, _, _ in ALL_FIELDS])
def test_every_numeric_field_declares_a_range_that_holds_its_default(name, key, f, default):
    assert "range" in f.metadata, f"{name} {key}: no metadata range"
    config.parse_range(f.metadata["range"])
    if default is not None:
        assert config.in_range(default, f.metadata["range"]), f"{name} {key}: {default} outside {f.metadata['range']}"


@pytest.mark.parametrize("text, inside, outside", [
    ("(0, inf)", [1e-12, 5, 1e300], [0, -1, math.inf]),
    ("[0, inf)", [0, 3], [-1e-9]),
    ("[1, 10]", [1, 10], [0, 11]),
    ("(0, 1)", [0.5], [0, 1]),
    ("[-1, 10000000]", [-1, 0, 10_000_000], [-2, 99999999999999999999]),
])
def test_interval_notation(text, inside, outside):
    assert all(config.in_range(v, text) for v in inside)
    assert not any(config.in_range(v, text) for v in outside)


@pytest.mark.parametrize("text", ["0, 1", "[1, 0]", "[a, 1]", "{0, 1}", "[0 1]"])
def test_a_malformed_range_is_refused(text):
    with pytest.raises(ValueError):
        config.parse_range(text)


@pytest.mark.parametrize("stage, flag, value, message", [
    ("reward", "train.learning_rate", "-1", "train.learning_rate: -1.0 is outside its range (0, inf)"),
    ("ppo", "kl.coef", "-1", "kl.coef: -1.0 is outside its range [0, inf)"),
    ("sft", "train.learning_rate", "0", "train.learning_rate: 0.0 is outside its range (0, inf)"),
    ("ppo", "train.learning_rate", "0", "train.learning_rate: 0.0 is outside its range (0, inf)"),
    ("sft", "train.batch_size", "0", "train.batch_size: 0 is outside its range [1, 1000000]"),
    ("ppo", "update.batch_size", "0", "update.batch_size: 0 is outside its range [1, 1000000]"),
    ("ppo", "generation.max_new_tokens", "0", "generation.max_new_tokens: 0 is outside its range [1, 1000000]"),
    ("ppo", "train.max_steps", "99999999999999999999",
     "train.max_steps: 99999999999999999999 is outside its range [0, 10000000]"),
    ("sft", "train.max_steps", "99999999999999999999",
     "train.max_steps: 99999999999999999999 is outside its range [0, 10000000]"),
    ("reward", "train.learning_rate", ".nan", "train.learning_rate: nan is outside its range (0, inf)"),
])
def test_a_value_outside_its_range_is_one_line_before_the_stage_starts(stage, flag, value, message, capsys,
                                                                         tmp_path):
    started = []
    cls = stage_class(stage)
    rc = stage_cli(cls, None, lambda cfg, **kw: started.append(cfg),
                   [f"--{flag}", value, "--run.output_dir", str(tmp_path / "runs")], extra_flags=("resume",))
    err = capsys.readouterr().err
    assert rc == 2 and not started and not (tmp_path / "runs").exists()
    assert err == f"error: {message}\n"


def test_the_cli_refuses_before_any_model_loads(tmp_path, capsys, no_model_loads):
    from rlhf.stages import STAGES
    cli = STAGES["reward"].cli

    assert cli(["--train.learning_rate", "-1", "--run.output_dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "error: train.learning_rate: -1.0 is outside its range (0, inf)\n"
    assert list(tmp_path.iterdir()) == []


def test_a_range_is_checked_in_a_list_of_sections_and_in_a_yaml_file(tmp_path):
    from rlhf.sft.config import SFTStageConfig

    with pytest.raises(ConfigError, match=r"^data.mixture\[0\].weight: -1.0 is outside its range \(0, inf\)$"):
        load_config(SFTStageConfig, ["--data.mixture", "[{source: dialogsum, weight: -1}]"])
    preset = tmp_path / "p.yaml"
    preset.write_text("kl: {coef: -0.5}\n")
    from rlhf.rl.config import RLStageConfig

    with pytest.raises(ConfigError, match=r"^kl.coef: -0.5 is outside its range \[0, inf\)$"):
        load_config(RLStageConfig, ["--config", str(preset)])


def test_help_shows_the_range(capsys):
    from rlhf.rl.config import RLStageConfig

    assert stage_cli(RLStageConfig, None, lambda cfg: None, ["--help"]) == 0
    out = capsys.readouterr().out
    assert "initial (or fixed) coefficient (range [0, inf))" in out


def test_from_dict_checks_only_numbers():
    from rlhf.core.config import RunConfig

    assert from_dict(RunConfig, {"seed": 7}).seed == 7
    with pytest.raises(ConfigError, match="run.seed: -1 is outside its range"):
        from_dict(RunConfig, {"seed": -1}, prefix="run.")


def test_a_command_setting_outside_its_range_is_one_line_before_any_model(capsys):
    from pipelines.compare import CompareConfig

    with pytest.raises(ConfigError, match=r"^prompts_per_source: 0 is outside its range \[1, 100000\]$"):
        load_config(CompareConfig, ["--prompts_per_source", "0"])
    with pytest.raises(ConfigError, match=r"^confidence: 1\.5 is outside its range \(0, 1\)$"):
        load_config(command_class("eval-rm"), ["--confidence", "1.5"])


def test_a_stage_config_built_in_code_is_range_checked_as_a_loaded_one():
    """One range check for configs from files and flags (from_dict) and for those built in code (each stage's
    __post_init__ calls check_ranges): the same one line naming the key."""
    from reward_models.config import RewardStageConfig, TrainConfig as RewardTrain
    from rlhf.core.config import ConfigError
    from rlhf.dpo.config import DPOStageConfig, TrainConfig as DPOTrain
    from rlhf.rl.config import RewardSection, RLStageConfig
    from rlhf.sft.config import PromptTuningConfig, SFTStageConfig

    cases = [(lambda: RewardStageConfig(train=RewardTrain(length_decorrelation=-1.0)), "train.length_decorrelation"),
             (lambda: RLStageConfig(reward=RewardSection(uwo_lambda=-0.5)), "reward.uwo_lambda"),
             (lambda: SFTStageConfig(prompt_tuning=PromptTuningConfig(num_virtual_tokens=0)),
              "prompt_tuning.num_virtual_tokens"),
             (lambda: DPOStageConfig(train=DPOTrain(learning_rate=-1.0)), "train.learning_rate")]
    for build, key in cases:
        with pytest.raises(ConfigError, match=rf"^{key}: .* is outside its range"):
            build()
