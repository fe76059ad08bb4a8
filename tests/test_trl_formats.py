"""TRL's dataset formats read as our records: conversational and implicit-prompt preference rows,
conversational prompt-completion SFT rows, a default dimension, and hub dataset names."""
from __future__ import annotations

import json

import pytest

from rlhf.data.records import (PreferenceRecord, RecordError, SFTRecord, load_preferences, load_records, load_sft,
                          prompt_to_messages)

SKY = [{"role": "user", "content": "What color is the sky?"}]
BLUE = [{"role": "assistant", "content": "It is blue."}]
GREEN = [{"role": "assistant", "content": "It is green."}]


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_conversational_preference_rows_with_and_without_prompt(tmp_path):
    rows = [{"prompt": SKY, "chosen": BLUE, "rejected": GREEN},  # explicit prompt
            {"chosen": SKY + BLUE, "rejected": SKY + GREEN},  # implicit prompt
            {"prompt": "ignored", "chosen": SKY + BLUE, "rejected": SKY + GREEN}]  # TRL ignores a str prompt here
    records = load_preferences(write_rows(tmp_path / "p.jsonl", rows), default_dimension=["helpful"],
                               allow_duplicates=True)
    expected = PreferenceRecord(prompt="What color is the sky?", chosen="It is blue.", rejected="It is green.",
                                dimension=["helpful"])
    assert records == [expected] * 3


def test_multi_turn_prompt_round_trips_through_the_transcript(tmp_path):
    turns = [{"role": "system", "content": "Be brief."}, *SKY, {"role": "assistant", "content": "Blue."},
             {"role": "user", "content": "And at night?"}]
    rows = [{"chosen": turns + [{"role": "assistant", "content": "Black."}],
             "rejected": turns + [{"role": "assistant", "content": "Green."}], "dimension": "honest"}]
    [record] = load_preferences(write_rows(tmp_path / "p.jsonl", rows))
    assert (record.chosen, record.rejected, record.dimension) == ("Black.", "Green.", ["honest"])
    assert prompt_to_messages(record.prompt) == turns


def test_implicit_prompt_text_rows(tmp_path):
    rows = [{"chosen": "The sky is blue.", "rejected": "The sky is green."},
            {"chosen": "\n\nHuman: Hi?\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hi?\n\nAssistant: Go away."}]
    a, b = load_preferences(write_rows(tmp_path / "p.jsonl", rows), default_dimension=["harmless"])
    assert (a.prompt, a.chosen, a.rejected) == ("The sky is", "blue.", "green.")
    assert (b.prompt, b.chosen, b.rejected) == ("\n\nHuman: Hi?\n\nAssistant:", "Hello!", "Go away.")


@pytest.mark.parametrize("row, field, message", [
    ({"chosen": SKY + BLUE, "rejected": [{"role": "user", "content": "What color is grass?"}] + GREEN},
     "rejected", "prompt turns differ from chosen's at turn 0"),
    ({"chosen": SKY + BLUE, "rejected": SKY + GREEN}, "dimension", "missing"),  # no default given
    ({"prompt": SKY, "chosen": SKY + BLUE, "rejected": GREEN, "dimension": "helpful"}, "chosen",
     "only assistant turns"),
    ({"chosen": SKY, "rejected": SKY + GREEN, "dimension": "helpful"}, "chosen", "ends without an assistant answer"),
    ({"chosen": [{"role": "bot", "content": "x"}], "rejected": GREEN, "dimension": "helpful"}, "chosen[0].role",
     "expected one of"),
    ({"chosen": "Yes.", "rejected": "No.", "dimension": "helpful"}, "prompt", "share no beginning"),
])
def test_bad_trl_rows_get_one_line_naming_file_row_and_field(tmp_path, row, field, message):
    path = write_rows(tmp_path / "bad.jsonl", [{"prompt": SKY, "chosen": BLUE, "rejected": GREEN,
                                                 "dimension": "helpful"}, row])
    with pytest.raises(RecordError) as err:
        load_preferences(path)
    assert (err.value.line, err.value.field) == (2, field) and message in err.value.message
    assert str(err.value).startswith(f"{path}:2: field '{field}':") and "\n" not in str(err.value)


def test_conversational_prompt_completion_for_sft(tmp_path):
    rows = [{"prompt": SKY, "completion": BLUE},
            {"prompt": [{"role": "system", "content": "Be brief."}, *SKY], "completion": BLUE},
            {"prompt": "What color is grass?", "completion": [{"role": "assistant", "content": "Green."}]}]
    records = load_sft(write_rows(tmp_path / "s.jsonl", rows))
    assert records[0] == SFTRecord(messages=SKY + BLUE)
    assert records[1].messages[0]["role"] == "system" and records[1].prompt_messages[-1] == SKY[0]
    assert records[2].messages[-1] == {"role": "assistant", "content": "Green."}
    bad = write_rows(tmp_path / "bad.jsonl", [{"prompt": SKY, "completion": SKY}])
    with pytest.raises(RecordError, match=r"bad.jsonl:1: field 'completion': must hold only assistant turns"):
        load_sft(bad)


def test_hub_dataset_name_goes_through_datasets(monkeypatch):
    import datasets

    asked = []

    def fake_load_dataset(name, split):
        asked.append((name, split))
        return datasets.Dataset.from_list([{"chosen": SKY + BLUE, "rejected": SKY + GREEN}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    [record] = load_preferences("trl-lib/some-prefs", default_dimension=["helpful"])
    assert asked == [("trl-lib/some-prefs", "train")] and record.chosen == "It is blue."


def test_unreachable_hub_dataset_is_one_line_naming_it(monkeypatch):
    import datasets

    def offline(name, split):
        raise ConnectionError("Couldn't reach 'owner/missing' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # online, yet unreachable (conftest sets it offline)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    result = load_records("owner/missing", kind="preference")
    [err] = result.errors
    assert str(err) == ("owner/missing: hub dataset could not be reached or read (ConnectionError); "
                        "local files work (.jsonl, .json, .csv, .parquet, a datasets.save_to_disk folder)")


def test_reward_stage_input_check_takes_the_default_dimension(tmp_path):
    from rlhf.core.config import ConfigError
    from rlhf.data.validation import validate_stage_inputs
    from reward_models.config import RewardStageConfig

    path = write_rows(tmp_path / "p.jsonl", [{"prompt": SKY, "chosen": BLUE, "rejected": GREEN}])
    cfg = RewardStageConfig()
    cfg.data.sources, cfg.data.extra_files = [], [str(path)]
    with pytest.raises(ConfigError, match=r"data.extra_files\[0\]: .*p.jsonl:1: field 'dimension': missing"):
        validate_stage_inputs("reward", cfg)
    cfg.data.default_dimension = ["helpful"]
    validate_stage_inputs("reward", cfg)
    cfg.data.default_dimension = ["kind"]
    with pytest.raises(ConfigError, match=r"^data.default_dimension: unknown dimension 'kind'"):
        validate_stage_inputs("reward", cfg)
