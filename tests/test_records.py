import json
from pathlib import Path

import pytest

from rlhf.data.records import (DIMENSIONS, RecordError, load_preferences, load_records, load_sft, parse_dimensions,
                          transcript_to_messages, write_jsonl)

FIXTURES = Path(__file__).parent / "fixtures"


def test_good_preference_files():
    jsonl = load_preferences(FIXTURES / "good" / "prefs.jsonl")
    assert [r.dimension for r in jsonl] == [["helpful"], ["honest"]]
    assert jsonl[1].margin == 1.0 and jsonl[1].annotator == "alice"
    csv = load_preferences(FIXTURES / "good" / "prefs.csv")
    assert csv[0].dimension == ["helpful", "harmless"] and csv[0].margin == 0.5


def test_sft_accepts_messages_and_prompt_completion():
    records = load_sft(FIXTURES / "good" / "sft.jsonl")
    assert records[1].messages == [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    assert records[0].prompt_messages == [{"role": "user", "content": "Say hi"}]


def test_dimension_parsing():
    assert parse_dimensions("harmless,helpful") == ["helpful", "harmless"]
    with pytest.raises(RecordError, match="unknown dimension 'kind'"):
        parse_dimensions(["kind"])


def test_mixed_file_reports_every_bad_row_and_keeps_the_good(tmp_path):
    path = tmp_path / "mixed.jsonl"
    rows = [
        {"prompt": "p1", "chosen": "a", "rejected": "b", "dimension": "honest"},
        {"prompt": "p2", "chosen": "a", "dimension": "honest"},
        {"prompt": "p3", "chosen": "a", "rejected": "b", "dimension": "kindness"},
        {"prompt": "p4", "chosen": "a", "rejected": "b", "dimension": ["harmless"]},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = load_records(path)
    assert [(e.line, e.field) for e in result.errors] == [(2, "rejected"), (3, "dimension")]
    assert result.lines == [1, 4]
    with pytest.raises(RecordError) as err:
        load_preferences(path)
    assert str(err.value).startswith(f"{path}:2: field 'rejected'")
    assert [r.prompt for r in load_preferences(path, keep_valid=True)] == ["p1", "p4"]


def test_write_jsonl_round_trip_is_atomic(tmp_path):
    records = load_preferences(FIXTURES / "good" / "prefs.jsonl")
    out = tmp_path / "out.jsonl"
    write_jsonl(records, out)
    assert load_preferences(out) == records
    assert not list(tmp_path.glob(".*.tmp"))


def test_transcript_to_messages():
    text = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how are you?\n\nAssistant:"
    assert transcript_to_messages(text) == [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "how are you?"}]
    assert transcript_to_messages("What is 2+2?") == [{"role": "user", "content": "What is 2+2?"}]


def test_the_hhh_dimensions_are_defined_once():
    """Records, reward-model heads, report columns and the annotation form all use rlhf.data.records.DIMENSIONS."""
    from reward_models.types import HEADS
    from rlhf.evaluation import report
    from rlhf.annotate import app, store

    assert HEADS is DIMENSIONS and report.HEADS is DIMENSIONS
    assert list(app.SHORTCUTS) == list(DIMENSIONS)
    assert all(f"{d} TEXT NOT NULL" in store.SCHEMA for d in DIMENSIONS)


def test_a_key_given_twice_is_refused_with_file_line_and_key(tmp_path):
    """json keeps the last value of a repeated key: a second `chosen` was read as the row's only chosen and then
    misreported as "identical to chosen". Now one error names the file, the line and the key (JSONL and JSON)."""
    good = {"prompt": "p", "chosen": "a", "rejected": "b", "dimension": "helpful"}
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text(json.dumps(good) + "\n" + '{"prompt": "p", "chosen": "a", "rejected": "b", "chosen": "b", '
                     '"dimension": "helpful"}\n')
    with pytest.raises(RecordError) as err:
        load_preferences(jsonl)
    assert (err.value.file, err.value.line, err.value.field) == (str(jsonl), 2, "chosen")
    assert str(err.value).startswith(f"{jsonl}:2: field 'chosen': the key appears twice")
    as_json = tmp_path / "pairs.json"
    as_json.write_text('[\n  {"prompt": "p", "chosen": "a", "rejected": "b", "dimension": "helpful"},\n'
                       '  {"prompt": "q", "chosen": "a",\n   "rejected": "b",\n   "rejected": "c", '
                       '"dimension": "helpful"}\n]\n')
    with pytest.raises(RecordError) as err:
        load_preferences(as_json)
    assert (err.value.line, err.value.field) == (5, "rejected")
    nested = tmp_path / "sft.jsonl"  # a repeat inside a message counts too
    nested.write_text('{"messages": [{"role": "user", "content": "hi", "content": "ho"}, '
                      '{"role": "assistant", "content": "x"}]}\n')
    with pytest.raises(RecordError, match=r"sft.jsonl:1: field 'content'"):
        load_sft(nested)
