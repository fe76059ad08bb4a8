"""Reading items files for ``rlhf annotate import``: one row per item, every problem reported.

A row is ``{"prompt", "response_a", "response_b", "id"?, "source"?}`` in any format
:func:`rlhf.data.records.read_rows` reads (JSONL, JSONL.gz, JSON, CSV). Problems are
:class:`rlhf.data.records.RecordError` (``file:line: field 'x': message``), all collected before anything
is stored, so a bad file is fixed in one round and never half-imported.
"""
from __future__ import annotations

from pathlib import Path

from rlhf.annotate.store import NewItem
from rlhf.data.records import RecordError, read_rows

REQUIRED_FIELDS = ("prompt", "response_a", "response_b")
OPTIONAL_FIELDS = ("id", "source")
# Exported records put three texts on one JSONL line, which readers cap at 1 MiB; 50,000 characters
# each keeps a line under it even when every character needs several bytes.
MAX_TEXT_CHARS = 50_000


class ItemFileError(ValueError):
    def __init__(self, errors: list[RecordError]):
        self.errors = errors
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(f"{errors[0]}{more}")


def parse_item(row: dict, path: str | Path, line: int) -> NewItem:
    unknown = sorted(set(row) - set(REQUIRED_FIELDS) - set(OPTIONAL_FIELDS))
    if unknown:
        raise RecordError(path, line, unknown[0],
                          f"unknown field (allowed: {', '.join(REQUIRED_FIELDS + OPTIONAL_FIELDS)})")
    texts = {}
    for name in REQUIRED_FIELDS:
        value = row.get(name)
        if value is None:
            raise RecordError(path, line, name, "missing")
        if not isinstance(value, str):
            raise RecordError(path, line, name, f"expected a string, got {type(value).__name__}")
        if not value.strip():
            raise RecordError(path, line, name, "is empty")
        if len(value) > MAX_TEXT_CHARS:
            raise RecordError(path, line, name, f"longer than {MAX_TEXT_CHARS} characters ({len(value)})")
        texts[name] = value
    if texts["response_a"].strip() == texts["response_b"].strip():
        raise RecordError(path, line, "response_b", "is identical to response_a: there is nothing to compare")
    external_id = row.get("id")
    if external_id is not None:
        # Integers are accepted because many files number their rows; they are stored as text.
        if isinstance(external_id, bool) or not isinstance(external_id, (str, int)):
            raise RecordError(path, line, "id", f"expected a string or integer, got {type(external_id).__name__}")
        external_id = str(external_id).strip()
        if not external_id:
            raise RecordError(path, line, "id", "is empty")
    source = row.get("source")
    if source is not None and not isinstance(source, str):
        raise RecordError(path, line, "source", f"expected a string, got {type(source).__name__}")
    return NewItem(prompt=texts["prompt"], response_a=texts["response_a"], response_b=texts["response_b"],
                   external_id=external_id, source=source or None)


def read_item_file(path: str | Path) -> tuple[list[NewItem], list[int]]:
    """All items of a file and the line each came from; raises ItemFileError listing every problem."""
    items: list[NewItem] = []
    lines: list[int] = []
    errors: list[RecordError] = []
    first_line_of_id: dict[str, int] = {}
    first_line_of_content: dict[str, int] = {}
    try:
        for line, row in read_rows(path):
            try:
                item = parse_item(row, path, line)
            except RecordError as err:
                errors.append(err)
                continue
            if item.external_id is not None and item.external_id in first_line_of_id:
                errors.append(RecordError(path, line, "id", f"{item.external_id!r} is also used on line "
                                                            f"{first_line_of_id[item.external_id]}"))
                continue
            if item.content_key in first_line_of_content:
                errors.append(RecordError(path, line, None, "same prompt and responses as line "
                                                            f"{first_line_of_content[item.content_key]}"))
                continue
            if item.external_id is not None:
                first_line_of_id[item.external_id] = line
            first_line_of_content[item.content_key] = line
            items.append(item)
            lines.append(line)
    except RecordError as err:  # file-level: unreadable, empty, not JSON ...
        errors.append(err)
    if errors:
        raise ItemFileError(errors)
    return items, lines
