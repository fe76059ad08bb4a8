"""Every broken file in tests/fixtures/bad fails `rlhf data validate` with one line naming file, line, field."""
import re
from pathlib import Path

import pytest

from rlhf.cli import main

BAD = Path(__file__).parent / "fixtures" / "bad"

# file -> (line or None for file-level problems, field or None, words the message must contain)
EXPECTED = {
    "missing_field.jsonl": (2, "chosen", "missing"),
    "wrong_type.jsonl": (2, "chosen", "expected a string"),
    "empty_prompt.jsonl": (1, "prompt", "is empty"),
    "empty_response.jsonl": (2, "rejected", "is empty"),
    "chosen_equals_rejected.jsonl": (1, "rejected", "identical to chosen"),
    "unknown_dimension.jsonl": (1, "dimension", "unknown dimension"),
    "dimension_wrong_type.jsonl": (1, "dimension", "expected a string or list"),
    "invalid_utf8.jsonl": (2, None, "invalid UTF-8"),
    "truncated.jsonl.gz": (None, None, "truncated or corrupt"),
    "empty.jsonl": (None, None, "file is empty"),
    "missing_columns.csv": (2, "rejected", "missing"),
    "long_line.jsonl": (2, None, "line longer than"),
    "duplicate_rows.jsonl": (3, None, "duplicate of line 1"),
    "nan_margin.jsonl": (1, "margin", "finite number"),
    "negative_margin.jsonl": (1, "margin", ">= 0"),
    "not_json.jsonl": (2, None, "not valid JSON"),
    "not_an_object.jsonl": (2, None, "expected a JSON object"),
    "sft_bad_role.jsonl": (1, "messages[0].role", "expected one of"),
    "sft_no_assistant.jsonl": (1, "messages", "no assistant turn"),
    "sft_empty_content.jsonl": (1, "messages[1].content", "is empty"),
    "sft_assistant_first.jsonl": (1, "messages[1].role", "must start with a user turn"),
    "huge_margin.jsonl": (2, "margin", "must be <= 1000"),
    "csv_extra_cells.csv": (2, None, "more cells than the header"),
    "neither_kind.jsonl": (1, None, "neither a preference"),
}


def test_every_fixture_is_covered():
    assert sorted(p.name for p in BAD.iterdir()) == sorted(EXPECTED)
    assert len(EXPECTED) >= 15


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_validate_fails_with_one_clear_line(name, capsys):
    line, field, words = EXPECTED[name]
    before = (BAD / name).read_bytes()
    assert main(["data", "validate", str(BAD / name)]) != 0
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    errors = [l for l in out.out.splitlines() if l.startswith("error: ")]
    assert len(errors) == 1, out.out
    where = f"{BAD / name}:{line}:" if line is not None else f"{BAD / name}"
    assert errors[0].startswith(f"error: {where}"), errors[0]
    if field:
        assert f"field '{field}'" in errors[0]
    assert words in errors[0]
    assert (BAD / name).read_bytes() == before  # validation never touches the input


def test_keep_valid_writes_good_rows_elsewhere(tmp_path, capsys):
    out = tmp_path / "kept.jsonl"
    assert main(["data", "validate", str(BAD / "missing_field.jsonl"), "--keep-valid", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 1
    assert main(["data", "validate", str(BAD / "missing_field.jsonl"), "--keep-valid",
                 str(BAD / "missing_field.jsonl")]) == 2  # refuses to overwrite an input
    assert re.search("must not overwrite", capsys.readouterr().out)


@pytest.mark.parametrize("name", ["data.jsonl", "data.csv", "data.json", "data.jsonl.gz"])
def test_a_directory_named_like_a_data_file_is_reported_and_the_next_file_still_checked(tmp_path, capsys, name):
    (tmp_path / name).mkdir()
    good = Path(__file__).parent / "fixtures" / "good" / "prefs.jsonl"
    assert main(["data", "validate", str(tmp_path / name), str(good)]) == 1
    out = capsys.readouterr().out
    assert f"error: {tmp_path / name}: is a directory, not a data file" in out
    assert f"{good}: ok:" in out  # the file after it was still checked


def test_an_unreadable_file_is_named_as_such(tmp_path, capsys, monkeypatch):
    import builtins

    from rlhf.data import records

    locked = tmp_path / "locked.jsonl"
    locked.write_text('{"prompt": "p", "chosen": "a", "rejected": "b", "dimension": "honest"}\n')

    def no_permission(path, *args, **kwargs):  # tests run as root, where chmod 000 still reads
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return builtins.open(path, *args, **kwargs)

    monkeypatch.setattr(records, "open", no_permission, raising=False)
    assert main(["data", "validate", str(locked)]) == 1
    assert f"error: {locked}: cannot be read (Permission denied)" in capsys.readouterr().out
