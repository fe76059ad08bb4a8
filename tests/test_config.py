from dataclasses import dataclass, field

import pytest
import yaml

from rlhf.command import stage_cli
from rlhf.core.config import ConfigError, RunConfig, load_config, parse_overrides


@dataclass
class PPOSection:
    kl_coef: float = 0.1
    epochs: int = 1
    target_modules: list[str] = field(default_factory=lambda: ["q_proj"])
    estimator: str = "k1"
    adaptive: bool = False
    horizon: int | None = None


@dataclass
class StageConfig:
    ppo: PPOSection = field(default_factory=PPOSection)
    run: RunConfig = field(default_factory=RunConfig)
    model: str = "smollm2-135m-instruct"


def write_yaml(path, data):
    path.write_text(yaml.safe_dump(data))
    return path


def test_defaults_then_yaml_then_flags(tmp_path):
    defaults = write_yaml(tmp_path / "d.yaml", {"ppo": {"kl_coef": 0.2, "epochs": 2}})
    user = write_yaml(tmp_path / "u.yaml", {"ppo": {"epochs": 3}})
    cfg, flags = load_config(StageConfig, ["--config", str(user), "--ppo.kl_coef", "0.05",
                                           "--ppo.target_modules", "[q_proj,v_proj]", "--ppo.adaptive"],
                             defaults_file=defaults)
    assert cfg.ppo.kl_coef == 0.05  # flag beats both files
    assert cfg.ppo.epochs == 3  # user file beats defaults file
    assert cfg.ppo.target_modules == ["q_proj", "v_proj"]
    assert cfg.ppo.adaptive is True  # bare flag means true
    assert cfg.model == "smollm2-135m-instruct" and flags == {}


def test_equals_form_and_int_to_float():
    cfg, _ = load_config(StageConfig, ["--ppo.kl_coef=1", "--ppo.horizon=null"])
    assert cfg.ppo.kl_coef == 1.0 and isinstance(cfg.ppo.kl_coef, float)
    assert cfg.ppo.horizon is None


def test_scientific_notation_without_a_dot_is_a_number():
    # YAML 1.1 leaves "1e-4" a string; as a float field's value it must still read as 0.0001.
    cfg, _ = load_config(StageConfig, ["--ppo.kl_coef", "1e-4"])
    assert cfg.ppo.kl_coef == pytest.approx(1e-4) and isinstance(cfg.ppo.kl_coef, float)
    with pytest.raises(ConfigError, match="^ppo.kl_coef: expected a number"):
        load_config(StageConfig, ["--ppo.kl_coef", "1e-4x"])


@pytest.mark.parametrize("argv, key", [
    (["--ppo.kl_coeff", "0.1"], "ppo.kl_coeff"),
    (["--learning_rate", "1"], "learning_rate"),
    (["--run.nope", "1"], "run.nope"),
])
def test_unknown_key_names_the_key(argv, key):
    with pytest.raises(ConfigError, match=f"unknown config key {key}"):
        load_config(StageConfig, argv)


@pytest.mark.parametrize("argv, key", [
    (["--ppo.epochs", "two"], "ppo.epochs"),
    (["--ppo.epochs", "1.5"], "ppo.epochs"),
    (["--ppo.kl_coef", "high"], "ppo.kl_coef"),
    (["--ppo.adaptive", "maybe"], "ppo.adaptive"),
    (["--ppo.target_modules", "q_proj"], "ppo.target_modules"),
    (["--ppo", "3"], "ppo"),
])
def test_wrong_type_names_the_key(argv, key):
    with pytest.raises(ConfigError, match=f"^{key}: expected"):
        load_config(StageConfig, argv)


def test_unknown_key_in_yaml_file(tmp_path):
    bad = write_yaml(tmp_path / "bad.yaml", {"ppo": {"epoch": 3}})
    with pytest.raises(ConfigError, match="ppo.epoch"):
        load_config(StageConfig, ["--config", str(bad)])


def test_extra_flags_are_not_config_keys():
    cfg, flags = load_config(StageConfig, ["--resume", "--ppo.epochs", "4"], extra_flags=("resume",))
    assert flags == {"resume": True} and cfg.ppo.epochs == 4


def test_parse_overrides_rejects_positional():
    with pytest.raises(ConfigError, match="unexpected argument"):
        load_config(StageConfig, ["stray"])
    assert parse_overrides(["--a-b", "1"])[1] == {"a_b": 1}


def test_stage_cli_prints_one_line_on_error(capsys):
    called = []
    assert stage_cli(StageConfig, None, called.append, ["--ppo.nope", "1"]) == 2
    assert called == []
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ppo.nope" in err[0]
    assert stage_cli(StageConfig, None, called.append, ["--ppo.epochs", "5"]) == 0
    assert called[0].ppo.epochs == 5


@dataclass
class StageWithSectionDefaults:
    ppo: PPOSection = field(default_factory=lambda: PPOSection(epochs=4, target_modules=["q_proj", "v_proj"]))
    weights: dict[str, float] = field(default_factory=lambda: {"a": 1.0, "b": 1.0})


def test_a_section_given_in_part_keeps_the_stage_defaults_of_its_other_keys(tmp_path):
    # The stage's default for a section (PPOSection(epochs=4, ...)) is the base, not PPOSection()'s own defaults.
    cfg, _ = load_config(StageWithSectionDefaults, ["--ppo.kl_coef", "0.3"])
    assert cfg.ppo == PPOSection(kl_coef=0.3, epochs=4, target_modules=["q_proj", "v_proj"])
    preset = write_yaml(tmp_path / "p.yaml", {"ppo": {"estimator": "k3"}, "weights": {"b": 2.0}})
    cfg, _ = load_config(StageWithSectionDefaults, ["--config", str(preset)])
    assert cfg.ppo.epochs == 4 and cfg.ppo.estimator == "k3"
    assert cfg.weights == {"a": 1.0, "b": 2.0}  # a mapping default is added to, as a YAML of defaults would be
    cfg, _ = load_config(StageWithSectionDefaults, ["--ppo.target_modules", "[o_proj]"])
    assert cfg.ppo.target_modules == ["o_proj"]  # lists are replaced, never appended to


def test_a_section_override_keeps_the_stage_defaults_of_its_other_keys():
    """RL's generation section defaults to 32 new tokens and its LoRA to the last 8 layers (default instances that
    differ from the classes' defaults): overriding one key of the section must keep the others."""
    from rlhf.rl.config import RLStageConfig

    cfg, _ = load_config(RLStageConfig, ["--generation.batch_size", "16", "--lora.r", "8"])
    assert cfg.generation.batch_size == 16 and cfg.generation.max_new_tokens == 32
    assert cfg.lora.r == 8 and cfg.lora.layers == list(range(-8, 0))
