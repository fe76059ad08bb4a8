"""Items files: every problem named by file, line and field; a bad file stores nothing."""
from __future__ import annotations

import json

import pytest

from rlhf.annotate.cli import main
from rlhf.annotate.item_files import ItemFileError, read_item_file
from rlhf.annotate.store import Store


def write_jsonl(path, rows):
    lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]  # str rows: written as they are
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


GOOD = {"prompt": "Why is the sky blue?", "response_a": "Rayleigh scattering.", "response_b": "Because it is."}


def test_good_file_with_optional_fields(tmp_path):
    path = write_jsonl(tmp_path / "items.jsonl", [{**GOOD, "id": 7, "source": "demo"},
                                                  {**GOOD, "response_b": "It reflects the sea."}])
    items, lines = read_item_file(path)
    assert lines == [1, 2]
    assert (items[0].external_id, items[0].source) == ("7", "demo")
    assert items[1].external_id is None


def test_every_bad_row_is_reported_with_file_line_and_field(tmp_path):
    path = write_jsonl(tmp_path / "items.jsonl", [
        GOOD,
        {**GOOD, "response_b": None},
        {**GOOD, "prompt": "   "},
        {**GOOD, "response_a": 3},
        {**GOOD, "response_b": "Rayleigh scattering. "},
        {**GOOD, "responce_b": "typo"},
        {**GOOD, "id": True, "response_b": "x"},
        "{not json",
    ])
    with pytest.raises(ItemFileError) as err:
        read_item_file(path)
    messages = [str(e) for e in err.value.errors]
    assert messages[:6] == [
        f"{path}:2: field 'response_b': missing",
        f"{path}:3: field 'prompt': is empty",
        f"{path}:4: field 'response_a': expected a string, got int",
        f"{path}:5: field 'response_b': is identical to response_a: there is nothing to compare",
        f"{path}:6: field 'responce_b': unknown field (allowed: prompt, response_a, response_b, id, source)",
        f"{path}:7: field 'id': expected a string or integer, got bool",
    ]
    assert messages[6].startswith(f"{path}:8: not valid JSON")


def test_duplicates_within_a_file_name_both_lines(tmp_path):
    path = write_jsonl(tmp_path / "items.jsonl", [
        {**GOOD, "id": "a"}, {**GOOD, "id": "a", "response_b": "other"},
        {**GOOD, "id": "b", "response_a": GOOD["response_b"], "response_b": GOOD["response_a"]}])
    with pytest.raises(ItemFileError) as err:
        read_item_file(path)
    assert [str(e) for e in err.value.errors] == [
        f"{path}:2: field 'id': 'a' is also used on line 1",
        f"{path}:3: same prompt and responses as line 1",  # A and B swapped is the same comparison
    ]


def test_cli_import_of_a_bad_file_prints_each_problem_and_stores_nothing(tmp_path, capsys):
    db = tmp_path / "db.sqlite"
    Store(db).add_annotator("alice")
    path = write_jsonl(tmp_path / "items.jsonl", [GOOD, {**GOOD, "prompt": ""}, {**GOOD, "response_a": None}])
    assert main(["import", str(path), "--db", str(db), "--k", "1"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [f"error: {path}:2: field 'prompt': is empty", f"error: {path}:3: field 'response_a': missing"]
    assert Store(db).counts()["items"] == 0


def test_cli_import_conflict_with_stored_item_names_the_line(tmp_path, capsys):
    db = tmp_path / "db.sqlite"
    first = write_jsonl(tmp_path / "first.jsonl", [{**GOOD, "id": "x"}])
    assert main(["import", str(first), "--db", str(db)]) == 0
    second = write_jsonl(tmp_path / "second.jsonl", [{**GOOD, "id": "y", "response_b": "new"},
                                                     {**GOOD, "id": "x", "response_b": "changed"}])
    assert main(["import", str(second), "--db", str(db)]) == 1
    expected = f"error: {second}:2: field 'id': id 'x' is already used by an item with other texts"
    assert expected in capsys.readouterr().err
    assert Store(db).counts()["items"] == 1  # line 1 was valid but the import is all or nothing


def test_missing_and_empty_files(tmp_path, capsys):
    db = str(tmp_path / "db.sqlite")
    assert main(["import", str(tmp_path / "nope.jsonl"), "--db", db]) == 1
    assert "file not found" in capsys.readouterr().err
    (tmp_path / "empty.jsonl").write_text("")
    assert main(["import", str(tmp_path / "empty.jsonl"), "--db", db]) == 1
    assert "file is empty" in capsys.readouterr().err
