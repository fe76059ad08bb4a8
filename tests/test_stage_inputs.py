"""The sft, reward and ppo stages check their input files first: a broken file given to
``--data.mixture``, ``--data.extra_files`` or ``--data.sources`` is one line naming key, file, line and
field, exit 2, before any model loads and before the run folder exists."""
from __future__ import annotations

from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
BAD = FIXTURES / "bad"
CONFIGS = Path(__file__).resolve().parents[1] / "pipelines" / "configs"

# Problems of the file as a whole, the same for every kind of record.
FILE_LEVEL = {"empty.jsonl": (None, None, "file is empty")}
# Broken lines after a good first line (a preference row: it is a good PPO prompt row too, not an SFT one).
BROKEN_LINES = {"truncated.jsonl.gz": (None, None, "truncated or corrupt"),
                "not_json.jsonl": (2, None, "not valid JSON"), "invalid_utf8.jsonl": (2, None, "invalid UTF-8"),
                "not_an_object.jsonl": (2, None, "expected a JSON object"),
                "long_line.jsonl": (2, None, "line longer than")}
# Problems in one field, as each stage reads its records.
BY_STAGE = {
    "sft": {"sft_bad_role.jsonl": (1, "messages[0].role", "expected one of"),
            "sft_assistant_first.jsonl": (1, "messages[1].role", "must start with a user turn"),
            "sft_no_assistant.jsonl": (1, "messages", "no assistant turn"),
            "missing_field.jsonl": (1, "completion", "missing")},  # a preference file where SFT records belong
    "reward": {**BROKEN_LINES, "huge_margin.jsonl": (2, "margin", "must be <= 1000"),
               "nan_margin.jsonl": (1, "margin", "finite"), "missing_field.jsonl": (2, "chosen", "missing"),
               "duplicate_rows.jsonl": (3, None, "duplicate of line 1")},
    "ppo": {**BROKEN_LINES, "empty_prompt.jsonl": (1, "prompt", "missing, empty or not a string")},
}


def stage_argv(stage: str, out: Path, file: str) -> tuple[object, list[str], str]:
    """(the stage's cli, its argv with ``file`` as its input, the config key the file lands in)."""
    common = ["--run.output_dir", str(out), "--run.wandb_mode", "disabled"]
    if stage == "sft":
        from rlhf.stages import STAGES
        cli = STAGES["sft"].cli

        return cli, ["--config", str(CONFIGS / "sft_tiny.yaml"), *common,
                     "--data.mixture", f"[{{source: dialogsum}}, {{source: '{file}'}}]"], "data.mixture[1].source"
    if stage == "reward":
        from rlhf.stages import STAGES
        cli = STAGES["reward"].cli

        return cli, ["--config", str(CONFIGS / "reward_tiny.yaml"), *common,
                     "--data.extra_files", f"['{file}']"], "data.extra_files[0]"
    from rlhf.stages import STAGES
    cli = STAGES["ppo"].cli

    return cli, ["--config", str(CONFIGS / "ppo_tiny.yaml"), *common,
                 "--data.sources", f"[truthfulqa, '{file}']"], "data.sources[1]"


@pytest.fixture
def no_models(monkeypatch):
    """Any model load fails the test: the check must come first."""
    import reward_models.train
    import rlhf.rl.policy
    import rlhf.models.zoo

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the inputs were checked")

    for module, name in [(rlhf.models.zoo, "load_causal_lm"), (rlhf.models.zoo, "load_tokenizer"),
                         (reward_models.train, "new_reward_model"), (rlhf.rl.policy, "build_actor_critic"),
                         (rlhf.rl.policy, "load_policy_tokenizer")]:
        monkeypatch.setattr(module, name, refuse)


CASES = [(stage, name, expected) for stage in BY_STAGE
         for name, expected in {**FILE_LEVEL, **BY_STAGE[stage]}.items()]


@pytest.mark.parametrize("stage, name, expected", CASES, ids=[f"{s}-{n}" for s, n, _ in CASES])
def test_a_broken_input_is_one_line_before_any_model_or_run_folder(stage, name, expected, tmp_path, capsys,
                                                                   no_models):
    line, field, words = expected
    cli, argv, key = stage_argv(stage, tmp_path / "runs", str(BAD / name))
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    where = f"{BAD / name}:{line}:" if line is not None else f"{BAD / name}:"
    assert err.startswith(f"error: {key}: {where}"), err
    assert (field is None or f"field '{field}'" in err) and words in err
    assert not (tmp_path / "runs").exists()  # no empty run folder left behind


@pytest.mark.parametrize("stage", sorted(BY_STAGE))
def test_a_directory_or_a_missing_file_is_named(stage, tmp_path, capsys, no_models):
    folder = tmp_path / "exported.jsonl"
    folder.mkdir()
    for value, words in [(folder, f"{folder}: is a directory, not a data file"),
                         (tmp_path / "typo.jsonl", "is neither")]:
        cli, argv, key = stage_argv(stage, tmp_path / "runs", str(value))
        assert cli(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: {key}: ") and words in err and "\n" not in err, err
    assert not (tmp_path / "runs").exists()


def test_good_files_pass_and_unknown_shipped_names_are_named(tmp_path):
    from rlhf.core.config import ConfigError, load_config
    from rlhf.data.validation import validate_stage_inputs
    from reward_models.config import RewardStageConfig

    good = f"[{FIXTURES / 'good' / 'prefs.jsonl'}, {FIXTURES / 'good' / 'prefs.csv'}]"
    cfg, _ = load_config(RewardStageConfig, ["--config", str(CONFIGS / "reward_tiny.yaml"), "--data.extra_files", good])
    validate_stage_inputs("reward", cfg)
    cfg.data.sources = ["truthfulqa", "my_prefs.jsonl"]
    with pytest.raises(ConfigError, match=r"data.sources\[1\]: unknown source 'my_prefs.jsonl' .*data.extra_files"):
        validate_stage_inputs("reward", cfg)
