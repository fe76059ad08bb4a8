"""Issue 25.2: data in every usual shape. `rlhf data validate --default-dimension`; KTO rows refused naming
`label`; datasets.save_to_disk folders; SOURCE?split=&name=&revision= with a column mapping; a hub id offline fails
in one line; each stage's reader says how many rows each file gave."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf.data.records import RecordError, load_preferences, load_records, load_sft, parse_spec

ROOT = Path(__file__).resolve().parents[1]
TRL_PAIR = {"prompt": "Is the sky green?", "chosen": "No, blue.", "rejected": "Yes."}


def _jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_validate_takes_a_default_dimension_for_trl_rows(tmp_path, capsys):
    from rlhf.cli import main

    pairs = _jsonl(tmp_path / "trl.jsonl", [TRL_PAIR])
    assert main(["data", "validate", str(pairs)]) == 1  # no dimension: what the stages refuse too
    assert main(["data", "validate", str(pairs), "--default-dimension", "honest"]) == 0
    assert f"{pairs}: ok: 1 valid preference records" in capsys.readouterr().out
    assert main(["data", "validate", str(pairs), "--default-dimension", "witty"]) == 2
    assert "error: --default-dimension: unknown dimension 'witty'" in capsys.readouterr().out


@pytest.mark.parametrize("loader", [load_sft, load_preferences])
def test_kto_rows_are_refused_naming_label(tmp_path, loader):
    """Before: `label: false` rows were read as SFT examples, so the model would imitate the bad completion."""
    kto = _jsonl(tmp_path / "kto.jsonl", [{"prompt": "Hi", "completion": "Go away.", "label": False}])
    with pytest.raises(RecordError) as err:
        loader(kto)
    assert (err.value.line, err.value.field) == (1, "label") and "unpaired (KTO)" in str(err.value)
    assert len(str(err.value).splitlines()) == 1


def test_a_save_to_disk_folder_is_read_as_a_dataset_and_a_dataset_dict(tmp_path):
    import datasets

    rows = [{**TRL_PAIR, "dimension": "honest"}, {"prompt": "2+2?", "chosen": "4", "rejected": "5", "dimension": "honest"}]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "single"))
    assert [r.chosen for r in load_preferences(tmp_path / "single")] == ["No, blue.", "4"]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:1]),
                          "test": datasets.Dataset.from_list(rows[1:])}).save_to_disk(str(tmp_path / "dict"))
    assert [r.chosen for r in load_preferences(tmp_path / "dict")] == ["No, blue."]
    assert [r.chosen for r in load_preferences(f"{tmp_path / 'dict'}?split=test")] == ["4"]
    with pytest.raises(RecordError, match="no split 'dev' \\(it has: train, test\\)"):
        load_preferences(f"{tmp_path / 'dict'}?split=dev")


def test_a_column_mapping_renames_the_source_columns(tmp_path):
    import datasets

    datasets.Dataset.from_list([{"question": "Is the sky green?", "answer_good": "No, blue.", "answer_bad": "Yes.",
                                 "dimension": "honest"}]).save_to_disk(str(tmp_path / "qa"))
    spec = f"{tmp_path / 'qa'}?prompt=question&chosen=answer_good&rejected=answer_bad"
    [record] = load_preferences(spec)
    assert (record.prompt, record.chosen, record.rejected) == ("Is the sky green?", "No, blue.", "Yes.")
    csv = tmp_path / "qa.csv"  # a local file takes a mapping too
    csv.write_text("question,answer_good,answer_bad,dimension\nIs the sky green?,\"No, blue.\",Yes.,honest\n")
    assert load_preferences(f"{csv}?prompt=question&chosen=answer_good&rejected=answer_bad")[0].chosen == "No, blue."
    with pytest.raises(RecordError, match="field 'answer_best': no such column"):
        load_preferences(f"{tmp_path / 'qa'}?chosen=answer_best")
    assert parse_spec("me/pairs?name=sub&split=test&revision=v1&prompt=question") == (
        "me/pairs", {"name": "sub", "split": "test", "revision": "v1"}, {"prompt": "question"})


def test_a_hub_id_with_options_goes_to_load_dataset(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, **options):  # datasets.load_dataset(path, name=None, split=None, revision=None ...)
        calls.append((path, options))
        return datasets.Dataset.from_list([{"q": "Hi?", "good": "Hello.", "bad": "No.", "dimension": "helpful"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    [record] = load_preferences("me/pairs?name=sub&split=test&revision=v1&prompt=q&chosen=good&rejected=bad")
    assert calls == [("me/pairs", {"split": "test", "name": "sub", "revision": "v1"})]
    assert (record.prompt, record.chosen) == ("Hi?", "Hello.")


def test_a_hub_id_offline_fails_in_one_line(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "rlhf.cli", "data", "validate", "nobody/no-such-pairs?split=test"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 1
    errors = [line for line in done.stdout.splitlines() if line.startswith("error:")]
    assert errors == ["error: nobody/no-such-pairs?split=test: hub dataset offline (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE)"
                      " and not in the datasets cache; local files work (.jsonl, .json, .csv, .parquet, a "
                      "datasets.save_to_disk folder)"] or errors[0].startswith("error: nobody/no-such-pairs: hub dataset offline")
    assert "Traceback" not in done.stdout + done.stderr


def test_stage_readers_say_how_many_rows_each_file_gave(tmp_path, capsys):
    from rlhf.data.sources import preference_records

    pairs = _jsonl(tmp_path / "pairs.jsonl", [{**TRL_PAIR, "dimension": "honest"}] * 1 +
                   [{"prompt": f"q{i}", "chosen": "a", "rejected": "b", "dimension": "helpful"} for i in range(4)])
    preference_records([str(pairs)])
    assert f"[data] {pairs}: 5 rows read, 5 preference records" in capsys.readouterr().err
    load_records(pairs)  # validation and tests stay quiet
    assert capsys.readouterr().err == ""


def test_reward_stage_reads_and_logs_each_file_once_for_all_its_splits(tmp_path, capsys):
    """The reward stage needs train, dev and test: one read of each file (one '[data] ... rows read' line), the
    same pairs per split as reading it once per split."""
    from reward_models.config import RewardStageConfig
    from reward_models.data import load_pairs
    from reward_models.train import capped_splits

    pairs = _jsonl(tmp_path / "pairs.jsonl", [{"prompt": f"question {i}?", "chosen": "a", "rejected": "b",
                                               "dimension": "helpful"} for i in range(30)])
    cfg = RewardStageConfig()
    cfg.data.sources, cfg.data.extra_files, cfg.data.partition = [], [str(pairs)], "all"
    splits = capped_splits(cfg, {"train": 0, "dev": 0, "test": 0})
    assert capsys.readouterr().err.count("rows read") == 1
    assert sum(map(len, splits.values())) == 30 and all(splits.values())
    for split, got in splits.items():
        assert got == load_pairs([], [str(pairs)], split)
