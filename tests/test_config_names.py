"""One name per setting across the stages (issue 27): the keys of earlier versions are refused in one line naming
their new name, the shared train settings carry one help each, every config leaf is read by some code, and every
logged metric has a namespace."""
from __future__ import annotations

import dataclasses
import io
import re
import tokenize
import typing
from pathlib import Path

import pytest

from reward_models.config import RewardStageConfig
from rlhf.command import stage_cli
from rlhf.core.config import SHARED_TRAIN_FIELDS, ConfigError, RenamedKeys, load_config
from rlhf.dpo.config import DPOStageConfig
from rlhf.evaluation.evaluate import EvalConfig
from rlhf.rl.config import RLStageConfig
from rlhf.sft.config import SFTStageConfig

ROOT = Path(__file__).resolve().parents[1]
STAGE_CONFIGS = {"sft": SFTStageConfig, "reward": RewardStageConfig, "rl": RLStageConfig, "dpo": DPOStageConfig,
                 "eval": EvalConfig}

# (stage, old flag, a value, the new key the one-line error must name)
RENAMED = [
    ("reward", "train.lr", "1e-4", "train.learning_rate"),
    ("reward", "train.head_lr", "1e-3", "train.head_learning_rate"),
    ("reward", "train.grad_accum_steps", "2", "train.grad_accum"),
    ("reward", "train.checkpoint_every", "0", "train.save_steps"),
    ("reward", "train.keep_checkpoints", "1", "train.save_total_limit"),
    ("reward", "model.backbone", "tiny-bert", "model.name"),
    ("reward", "model.lora.enabled", "true", "lora.enabled"),
    ("rl", "policy.model", "tiny-llama", "model.name"),
    ("rl", "policy.sft_adapter", "x", "model.sft_adapter"),
    ("rl", "policy.critic", "tiny-llama", "model.critic"),
    ("rl", "policy.quantization", "4bit", "model.quantization"),
    ("rl", "policy.precision", "fp32", "train.precision"),
    ("rl", "policy.sampler", "plain", "model.sampler"),
    ("rl", "ppo.batch_size", "4", "update.batch_size"),
    ("rl", "ppo.clip_range", "0.1", "update.clip_range"),
    ("rl", "train.steps", "3", "train.max_steps"),
    ("rl", "train.save_every", "0", "train.save_steps"),
    ("rl", "train.keep_checkpoints", "1", "train.save_total_limit"),
    ("dpo", "policy.model", "tiny-llama", "model.name"),
    ("dpo", "policy.sft_adapter", "x", "model.sft_adapter"),
    ("eval", "policies", "[{name: base, path: tiny-llama}]", "policies[].model"),
]


@pytest.mark.parametrize("stage, old, value, new", RENAMED, ids=[f"{s}:{o}" for s, o, _, _ in RENAMED])
def test_an_old_key_is_refused_in_one_line_naming_its_new_name(stage, old, value, new, capsys):
    started = []
    assert stage_cli(STAGE_CONFIGS[stage], None, lambda cfg, **kw: started.append(cfg), [f"--{old}", value]) == 2
    err = capsys.readouterr().err
    shown = "policies[].path" if stage == "eval" else old
    assert err == f"error: {stage} config: {shown} was renamed to {new}\n" and not started


def test_a_renamed_section_in_a_yaml_file_is_refused_naming_each_key(tmp_path):
    (tmp_path / "old.yaml").write_text("policy:\n  model: tiny-llama\nppo:\n  mini_batch_size: 4\n")
    with pytest.raises(ConfigError, match=r"^rl config: policy\.model was renamed to model\.name$"):
        load_config(RLStageConfig, ["--config", str(tmp_path / "old.yaml")])
    (tmp_path / "old.yaml").write_text("ppo:\n  mini_batch_size: 4\n")
    with pytest.raises(ConfigError, match=r"^rl config: ppo\.mini_batch_size was renamed to update\.mini_batch_size$"):
        load_config(RLStageConfig, ["--config", str(tmp_path / "old.yaml")])


def test_the_new_names_load_and_no_renamed_key_is_a_current_key():
    for name, cls in STAGE_CONFIGS.items():
        renamed = getattr(cls, "renamed_keys", RenamedKeys(name, {}))
        current = set(_leaf_paths(cls))
        assert not current & set(renamed.keys), (name, current & set(renamed.keys))
        assert all(new.split(".")[0].removesuffix("[]") in {f.name for f in dataclasses.fields(cls)}
                   for new in renamed.keys.values()), name
    cfg, _ = load_config(RewardStageConfig, ["--train.learning_rate", "1e-4", "--model.name", "tiny-bert",
                                             "--lora.enabled", "false", "--train.save_steps", "0"])
    assert cfg.train.learning_rate == 1e-4 and cfg.model.name == "tiny-bert" and cfg.train.save_steps == 0


def test_the_shared_train_settings_have_one_help_and_range_in_every_stage():
    """learning_rate, grad_accum, save_steps ... are declared once (rlhf.core.config.SHARED_TRAIN_FIELDS): a stage
    chooses its default, never its own help or range."""
    for name, cls in STAGE_CONFIGS.items():
        if name == "eval":
            continue
        train = typing.get_type_hints(cls)["train"]
        fields = {f.name: f for f in dataclasses.fields(train)}
        for key in ("learning_rate", "max_steps", "save_steps", "save_total_limit", "max_grad_norm",
                    "weight_decay", "precision"):
            assert key in fields, f"{name}: train.{key} missing"
        for key, f in fields.items():
            if key in SHARED_TRAIN_FIELDS:
                assert dict(f.metadata) == SHARED_TRAIN_FIELDS[key], f"{name}: train.{key} re-declares its help"
        assert cls().train.max_steps >= 0  # one "off" value: 0, never TRL's -1


def test_the_stage_defaults_are_those_before_the_renames():
    """Behaviour unchanged: each stage keeps its own defaults under the shared names."""
    sft, reward, rl, dpo = SFTStageConfig().train, RewardStageConfig(), RLStageConfig(), DPOStageConfig().train
    assert (sft.learning_rate, sft.save_steps, sft.save_total_limit, sft.grad_accum) == (2e-4, 50, 2, 1)
    assert (reward.train.learning_rate, reward.train.head_learning_rate, reward.train.grad_accum,
            reward.train.save_steps, reward.train.save_total_limit) == (5e-5, 1e-3, 1, 100, 1)
    assert reward.model.name == "minilm-l6" and not reward.lora.enabled and reward.lora.target_modules == []
    assert (rl.train.max_steps, rl.train.learning_rate, rl.train.save_steps, rl.train.save_total_limit,
            rl.train.precision, rl.model.name, rl.update.batch_size) == (100, 5e-5, 10, 2, "auto",
                                                                       "smollm2-135m-instruct", 8)
    assert (dpo.learning_rate, dpo.save_steps, dpo.save_total_limit) == (1e-4, 50, 2)
    assert DPOStageConfig().model.name == "smollm2-135m-instruct"


def test_the_off_values_reach_trl_as_its_own():
    from rlhf.sft.trainer import ONLY_AT_THE_END, common_training_args

    t = SFTStageConfig().train
    t.max_steps, t.save_steps = 0, 0
    args = common_training_args(t, SFTStageConfig().run, Path("/tmp/x"), bf16=False, eval_on_start=False)
    assert args["max_steps"] == -1 and args["save_steps"] == ONLY_AT_THE_END
    t.max_steps, t.save_steps = 7, 3
    args = common_training_args(t, SFTStageConfig().run, Path("/tmp/x"), bf16=False, eval_on_start=False)
    assert args["max_steps"] == 7 and args["save_steps"] == 3


def test_the_rl_stage_needs_steps():
    with pytest.raises(ConfigError, match="^train.max_steps: the RL stage has no epochs"):
        load_config(RLStageConfig, ["--train.max_steps", "0"])


# ---------------------------------------------------------------- every leaf is read

CODE_DIRS = ("rlhf", "reward_models", "pipelines")
# Modules that only declare configs: their own reads (validation, help text) do not make a setting live.
DECLARATIONS = {"rlhf/core/config.py", "rlhf/sft/config.py", "reward_models/config.py", "rlhf/rl/config.py",
                "rlhf/dpo/config.py"}


def _leaf_paths(cls: type, prefix: str = "") -> list[str]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        inner = [a for a in (tp, *typing.get_args(tp)) if dataclasses.is_dataclass(a)]
        if inner:
            out += _leaf_paths(inner[0], f"{prefix}{f.name}{'[].' if typing.get_origin(tp) is list else '.'}")
        else:
            out.append(prefix + f.name)
    return out


GETATTR = re.compile(r"getattr\(\s*[\w.]+\s*,\s*[\"'](\w+)[\"']")
# Read through a property of the stage config (the property is what code reads).
THROUGH_A_PROPERTY = {"rl: kl.placement": "RLStageConfig.kl_in_loss"}


def _attribute_reads(text: str) -> set[str]:
    """Names read as ``x.name`` in code (strings and comments skipped), or as ``getattr(x, "name", ...)``."""
    tokens = [t for t in tokenize.generate_tokens(io.StringIO(text).readline)
              if t.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT)]
    names = set()
    for before, tok in zip(tokens, tokens[1:]):
        if before.string == "." and tok.type == tokenize.NAME:
            names.add(tok.string)
    return names | set(GETATTR.findall(text))


def test_every_config_leaf_of_every_stage_is_read_by_some_code():
    read: set[str] = set()
    for folder in CODE_DIRS:
        for path in (ROOT / folder).rglob("*.py"):
            if path.relative_to(ROOT).as_posix() not in DECLARATIONS:
                read |= _attribute_reads(path.read_text(encoding="utf-8"))
    dead = [f"{stage}: {leaf}" for stage, cls in STAGE_CONFIGS.items() for leaf in _leaf_paths(cls)
            if leaf.rsplit(".", 1)[-1] not in read and f"{stage}: {leaf}" not in THROUGH_A_PROPERTY]
    assert not dead, f"config keys no code reads: {dead}"


def test_the_leaf_scan_can_fail():
    assert "learning_rate" in _attribute_reads("lr = cfg.train.learning_rate  # .warmup_steps\n")
    assert "warmup_steps" not in _attribute_reads("lr = cfg.train.learning_rate  # .warmup_steps\nx = '.warmup_steps'\n")
    assert "trackers" in _attribute_reads('kinds = getattr(run, "trackers", ["wandb"])\n')
    for stage_key, prop in THROUGH_A_PROPERTY.items():  # the property exists and reads the key
        cls_name, name = prop.split(".")
        assert stage_key.rsplit(".", 1)[-1] in getattr(STAGE_CONFIGS[stage_key.split(":")[0]], name).fget.__code__.co_names


# ---------------------------------------------------------------- namespaced metrics


def test_the_metrics_logger_refuses_a_key_without_a_namespace(tmp_path, run_cfg):
    from rlhf.core.tracking import MetricsLogger, read_metrics

    logger = MetricsLogger(tmp_path, run_cfg, "unit", enabled=True)
    logger.log({"train/lr": 1e-3, "train/grad_norm": 0.5}, step=1)
    for bare in ("lr", "grad_norm", "loss/"):
        with pytest.raises(ValueError, match=f"metric '{bare}' has no namespace"):
            logger.log({"loss/policy": 0.1, bare: 1.0}, step=2)
    quiet = MetricsLogger(tmp_path / "other", run_cfg, "unit", enabled=False)  # a rank that does not write
    with pytest.raises(ValueError, match="has no namespace"):
        quiet.log({"lr": 1.0}, step=1)
    logger.finish()
    assert [sorted(k for k in m if "/" in k) for m in read_metrics(tmp_path / "metrics.jsonl")] == \
        [["train/grad_norm", "train/lr"]]


def test_an_old_key_in_a_pipeline_preset_is_refused_naming_the_stage_and_the_new_name(tmp_path):
    from rlhf import pipeline as pl

    cfg = pl.PipelineConfig()
    cfg.run.output_dir = str(tmp_path)
    cfg.reward = pl.StageSpec(overrides={"train.lr": 2e-4})
    with pytest.raises(ConfigError, match=r"^pipeline stage reward: reward config: train\.lr was renamed to "
                                          r"train\.learning_rate$"):
        pl.resolve_stage(cfg, "reward")
