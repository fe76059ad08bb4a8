"""The two record types every stage reads, and strict validation of user files.

* SFT record: ``{"messages": [{"role": "user"|"assistant"|"system", "content": str}, ...]}`` (TRL's
  conversational format). TRL's prompt-completion rows are accepted and converted, standard
  (``{"prompt": str, "completion": str}``) or conversational (both message lists).
* Preference record: ``{"prompt", "chosen", "rejected", "dimension", "margin"?, "source"?, "annotator"?}``:
  TRL's explicit-prompt preference columns plus the HHH ``dimension`` labels the pair speaks for. TRL's
  other preference rows are accepted too (:func:`preference_texts`): conversational (``chosen``/``rejected``
  as message lists, with or without a ``prompt`` list) and implicit-prompt (no ``prompt``: it is the turns
  both share). A multi-turn prompt is kept as an HH transcript (``prompt_to_messages`` reads it back).
  Rows without ``dimension`` take the caller's ``default_dimension`` (``--data.default_dimension``).
* Besides files, a hub dataset name (``owner/name``) is read through ``datasets.load_dataset``.

Every problem is a :class:`RecordError` naming file, line and field. Reading never writes: a bad
file is reported, and with ``keep_valid`` its good rows can be used, but nothing on disk is changed.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import math
import sys
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

# The HHH dimensions, defined here only: the labels a preference pair speaks for, the reward model's heads
# (reward_models.types.HEADS), the annotation form's questions and the report's columns, in this order.
DIMENSIONS = ("helpful", "honest", "harmless")
ROLES = ("system", "user", "assistant")
MAX_LINE_BYTES = 1 << 20  # 1 MiB: longer lines are almost always a broken export, not a real example
# A margin is in reward units (a difference of scores, i.e. logits): the loss -log sigmoid(diff - margin)
# is flat beyond a few tens, so a margin past 1e3 is a unit mistake (percent, a scale x 1000), and one
# past fp32's 3.4e38 turns every loss into inf.
MAX_MARGIN = 1e3
RecordKind = Literal["preference", "sft"]


@dataclass
class PreferenceRecord:
    prompt: str
    chosen: str
    rejected: str
    dimension: list[str]
    margin: float | None = None
    source: str | None = None
    annotator: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class SFTRecord:
    messages: list[dict[str, str]]
    source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @property
    def prompt_messages(self) -> list[dict[str, str]]:
        """Everything before the last assistant turn (what a policy is asked)."""
        last = max(i for i, m in enumerate(self.messages) if m["role"] == "assistant")
        return self.messages[:last]


class RecordError(ValueError):
    """One problem in one place: ``file:line: field: message``."""

    def __init__(self, file: str, line: int | None, field_name: str | None, message: str):
        self.file, self.line, self.field, self.message = str(file), line, field_name, message
        where = f"{self.file}:{line}" if line is not None else self.file
        what = f" field '{field_name}':" if field_name else ""
        super().__init__(f"{where}:{what} {message}")


@dataclass
class LoadResult:
    kind: RecordKind | None
    records: list[PreferenceRecord | SFTRecord] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)  # source line of each record
    errors: list[RecordError] = field(default_factory=list)
    rows_read: int = 0


# ---------------------------------------------------------------- reading rows


def _decode(raw: bytes, path: Path, line_no: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RecordError(path, line_no, None, f"invalid UTF-8 at byte {err.start}") from None


def _iter_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    opener = gzip.open if path.suffix == ".gz" else open
    line_no = 0
    try:
        with opener(path, "rb") as fh:
            while True:
                raw = fh.readline(MAX_LINE_BYTES + 1)
                if not raw:
                    return
                line_no += 1
                if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                    raise RecordError(path, line_no, None, f"line longer than {MAX_LINE_BYTES} bytes")
                yield line_no, raw
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:  # other OSErrors (unreadable ...): read_rows says so
        raise RecordError(path, line_no + 1, None, f"compressed data is truncated or corrupt ({type(err).__name__}: {err})") from None


def read_rows(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line, row)`` from JSONL(.gz), JSON (a list of objects), CSV, or what ``datasets`` reads.

    File-level problems (unreadable, empty, not UTF-8, not JSON ...) raise RecordError; the caller
    decides whether one bad line ends the read (it does: row-level problems are found later).
    """
    spec = str(path)
    path = Path(path)
    if not path.exists() and "?" in spec:  # owner/name?split=test&name=sub&revision=v1&prompt=question ...
        yield from _read_spec(spec)
        return
    if not path.exists():
        if is_hub_name(str(path)):
            yield from _read_hub(str(path))
            return
        raise RecordError(path, None, None, "file not found")
    if path.is_dir():
        if _is_saved_dataset(path):
            yield from _read_saved(path)
            return
        raise RecordError(path, None, None, "is a directory, not a data file (nor a datasets.save_to_disk folder)")
    if path.stat().st_size == 0:
        raise RecordError(path, None, None, "file is empty")
    name = path.name.lower()
    reader = (_read_jsonl if name.endswith((".jsonl", ".jsonl.gz", ".ndjson")) else
              _read_csv if name.endswith((".csv", ".csv.gz")) else
              _read_json if name.endswith(".json") else _read_with_datasets)
    try:
        yield from reader(path)
    except OSError as err:  # permission denied, a FIFO, an I/O error: named, and the next file is still read
        raise RecordError(path, None, None, f"cannot be read ({err.strerror or err})") from None


def read_prompts(path: str | Path, limit: int | None = None, log_rows: bool = False) -> list[str]:
    """The ``prompt`` field of each row (any file ``read_rows`` reads), the first ``limit`` rows only if given."""
    prompts = []
    for line, row in read_rows(path):
        prompt = row.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise RecordError(path, line, "prompt", "missing, empty or not a string")
        prompts.append(prompt)
        if limit is not None and len(prompts) >= limit:
            break
    if log_rows:
        print(f"[data] {path}: {len(prompts)} prompts read", file=sys.stderr, flush=True)
    return prompts


def prompts_from_file(path: str | Path, log_rows: bool = False) -> list[str]:
    """RL prompts from a file: ``.txt`` (one prompt per line) or rows with a ``prompt`` field (:func:`read_prompts`)."""
    path = Path(path)
    if path.suffix == ".txt":
        if not path.is_file():
            raise RecordError(path, None, None, "file not found")
        prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if log_rows:
            print(f"[data] {path}: {len(prompts)} prompts read", file=sys.stderr, flush=True)
        return prompts
    return read_prompts(path, log_rows=log_rows)


class _DuplicateKey(ValueError):
    """A JSON object that gives one key twice (``json`` would silently keep the last value)."""

    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` that refuses a repeated key: a second ``chosen`` would otherwise replace the first and
    be misreported later (e.g. as "identical to chosen"), or train on a value the author did not mean."""
    row: dict[str, Any] = {}
    for key, value in pairs:
        if key in row:
            raise _DuplicateKey(key)
        row[key] = value
    return row


def _duplicate_key_error(path: Path, line: int, key: str) -> RecordError:
    return RecordError(path, line, key, "the key appears twice in one object (JSON would keep only the last value)")


def _key_line(text: str, start: int, end: int, key: str) -> int:
    """The line of the second ``"key":`` in ``text[start:end]`` (the repeat), else of ``start``."""
    import re

    hits = [m.start() for m in re.finditer(re.escape(json.dumps(key)) + r"\s*:", text[start:end])]
    at = start + hits[1] if len(hits) > 1 else start
    return text.count("\n", 0, at) + 1


def _json_list_items(text: str) -> Iterator[tuple[int, int]]:
    """(start, end) offsets of each item of a top-level JSON list (whose syntax is already known good)."""
    decoder, i = json.JSONDecoder(), text.index("[") + 1
    while True:
        while i < len(text) and text[i] in " \t\r\n,":
            i += 1
        if i >= len(text) or text[i] == "]":
            return
        _, end = decoder.raw_decode(text, i)
        yield i, end
        i = end


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    seen_any = False
    for line_no, raw in _iter_lines(path):
        text = _decode(raw, path, line_no).strip()
        if line_no == 1:
            text = text.lstrip("\ufeff")
        if not text:
            continue
        try:
            row = json.loads(text, object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as err:
            raise RecordError(path, line_no, None, f"not valid JSON ({err.msg} at column {err.colno})") from None
        except _DuplicateKey as dup:
            raise _duplicate_key_error(path, line_no, dup.key) from None
        if not isinstance(row, dict):
            raise RecordError(path, line_no, None, f"expected a JSON object, got {type(row).__name__}")
        seen_any = True
        yield line_no, row
    if not seen_any:
        raise RecordError(path, None, None, "file has no records")


def _read_json(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    text = _decode(path.read_bytes(), path, 1)
    try:
        data = json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as err:
        raise RecordError(path, err.lineno, None, f"not valid JSON ({err.msg})") from None
    except _DuplicateKey as dup:  # find the object that repeats it, to name its line
        spans = list(_json_list_items(text)) if text.lstrip("\ufeff \t\r\n").startswith("[") else [(0, len(text))]
        for start, end in spans:
            try:
                json.loads(text[start:end], object_pairs_hook=_unique_keys)
            except _DuplicateKey:
                raise _duplicate_key_error(path, _key_line(text, start, end, dup.key), dup.key) from None
        raise _duplicate_key_error(path, 1, dup.key) from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not data:
        raise RecordError(path, None, None, "expected a non-empty JSON list of objects")
    for i, row in enumerate(data, start=1):
        if not isinstance(row, dict):
            raise RecordError(path, i, None, f"item {i} is not an object")
        yield i, row


def _read_csv(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    for line_no, line in enumerate(raw.split(b"\n"), start=1):
        _decode(line, path, line_no)  # report the first bad line by number
        if len(line) > MAX_LINE_BYTES:
            raise RecordError(path, line_no, None, f"line longer than {MAX_LINE_BYTES} bytes")
    reader = csv.DictReader(io.StringIO(raw.decode("utf-8-sig"), newline=""))
    if not reader.fieldnames:
        raise RecordError(path, 1, None, "CSV has no header row")
    seen_any = False
    for row in reader:
        seen_any = True
        line_no = reader.line_num
        if None in row:
            raise RecordError(path, line_no, None, "row has more cells than the header")
        yield line_no, {k: v for k, v in row.items()}
    if not seen_any:
        raise RecordError(path, None, None, "CSV has a header but no rows")


def _read_with_datasets(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    import datasets

    builder = {".parquet": "parquet", ".arrow": "arrow", ".txt": "text"}.get(path.suffix.lower())
    if builder is None:
        raise RecordError(path, None, None, "unknown file type (use .jsonl, .jsonl.gz, .json, .csv or .parquet)")
    try:
        table = datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as err:  # datasets raises many types; the message is what matters
        raise RecordError(path, None, None, f"datasets could not read it: {err}") from None
    for i, row in enumerate(table, start=1):
        yield i, dict(row)


def is_hub_name(name: str) -> bool:
    """``owner/name`` (no such local path): what ``datasets.load_dataset`` looks up on the hub. Options after a
    ``?`` (:func:`parse_spec`) are allowed."""
    import re

    name = name.partition("?")[0]
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*", name) is not None and not Path(name).exists()


HUB_OPTIONS = ("name", "split", "revision")  # datasets.load_dataset's subset, split and revision


def _offline() -> bool:
    import os

    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _read_hub(name: str, options: dict[str, str] | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """A split of a hub dataset (``train`` unless ``split`` is given; ``name`` = subset, ``revision``), from the
    datasets cache when offline; rows are numbered from 1."""
    import datasets

    options = {"split": "train", **(options or {})}
    try:
        table = datasets.load_dataset(name, **options)
    except Exception as err:  # offline, no such dataset, no such split: datasets raises many types
        why = ("offline (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE) and not in the datasets cache" if _offline() else
               f"could not be reached or read ({type(err).__name__})")
        raise RecordError(name, None, None, f"hub dataset {why}; local files work (.jsonl, .json, .csv, .parquet, "
                          "a datasets.save_to_disk folder)") from None
    for i, row in enumerate(table, start=1):
        yield i, dict(row)


def _is_saved_dataset(folder: Path) -> bool:
    """What ``datasets.Dataset.save_to_disk`` (state.json) or ``DatasetDict.save_to_disk`` (dataset_dict.json) wrote."""
    return (folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file()


def _read_saved(folder: Path, split: str | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows of a ``save_to_disk`` folder; of a DatasetDict, the ``split`` given (else ``train``)."""
    import datasets

    try:
        data = datasets.load_from_disk(str(folder))
    except Exception as err:
        raise RecordError(folder, None, None, f"datasets.load_from_disk could not read it ({type(err).__name__}: {err})") from None
    if isinstance(data, datasets.DatasetDict):
        split = split or "train"
        if split not in data:
            raise RecordError(folder, None, "split", f"no split {split!r} (it has: {', '.join(data)}); add ?split=NAME")
        data = data[split]
    elif split:
        raise RecordError(folder, None, "split", "a single saved Dataset has no splits; drop ?split=")
    for i, row in enumerate(data, start=1):
        yield i, dict(row)


def parse_spec(spec: str) -> tuple[str, dict[str, str], dict[str, str]]:
    """``SOURCE?key=value&...`` -> (source, load options, column mapping). Options: ``name``, ``split``,
    ``revision`` (hub ids; ``split`` for save_to_disk folders too); any other key renames a column: ``prompt=question``
    reads the source's ``question`` column as ``prompt`` (the mapping ``{prompt: question, chosen: answer_good}``)."""
    from urllib.parse import parse_qsl

    source, _, query = spec.partition("?")
    options: dict[str, str] = {}
    mapping: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        if not value:
            raise RecordError(spec, None, key, "empty value (write key=value)")
        (options if key in HUB_OPTIONS else mapping)[key] = value
    return source, options, mapping


def _read_spec(spec: str) -> Iterator[tuple[int, dict[str, Any]]]:
    source, options, mapping = parse_spec(spec)
    folder = Path(source).expanduser()
    if folder.is_dir() and _is_saved_dataset(folder):
        unknown = set(options) - {"split"}
        if unknown:
            raise RecordError(spec, None, sorted(unknown)[0], "only split= applies to a save_to_disk folder")
        rows = _read_saved(folder, options.get("split"))
    elif folder.is_file():
        if options:
            raise RecordError(spec, None, sorted(options)[0], "applies to hub ids and save_to_disk folders, not files")
        rows = read_rows(folder)
    elif is_hub_name(source):
        rows = _read_hub(source, options)
    else:
        raise RecordError(source, None, None, "neither a file, a datasets.save_to_disk folder nor a hub id (owner/name)")
    for line, row in rows:
        missing = [column for column in mapping.values() if column not in row]
        if missing:
            raise RecordError(spec, line, missing[0], f"no such column to map (it has: {', '.join(row)})")
        renamed = {field_name: row[column] for field_name, column in mapping.items()}
        yield line, {**{k: v for k, v in row.items() if k not in mapping.values()}, **renamed}


# ---------------------------------------------------------------- TRL's conversational and implicit-prompt rows

_SPEAKERS = {"system": "System", "user": "Human", "assistant": "Assistant"}


def _messages(value: Any, path, line: int, key: str) -> list[dict[str, str]]:
    """A validated copy of a list of ``{role, content}`` messages (other keys dropped)."""
    if not isinstance(value, list) or not value:
        raise RecordError(path, line, key, "expected a non-empty list of {role, content}")
    for i, msg in enumerate(value):
        where = f"{key}[{i}]"
        if not isinstance(msg, dict):
            raise RecordError(path, line, where, "expected an object with role and content")
        if msg.get("role") not in ROLES:
            raise RecordError(path, line, f"{where}.role", f"expected one of {', '.join(ROLES)}, got {msg.get('role')!r}")
        if not isinstance(msg.get("content"), str):
            raise RecordError(path, line, f"{where}.content", "missing or not a string")
        if not msg["content"].strip():
            raise RecordError(path, line, f"{where}.content", "is empty")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def messages_to_prompt(messages: list[dict[str, str]]) -> str:
    """Prompt turns as a preference prompt: one user turn is its text; more turns an HH transcript ending in
    ``"\n\nAssistant:"``, which :func:`prompt_to_messages` turns back into the same messages."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    return "".join(f"\n\n{_SPEAKERS[m['role']]}: {m['content']}" for m in messages) + "\n\nAssistant:"


def split_last_turn(transcript: str) -> tuple[str, str]:
    """An HH transcript -> (prompt up to and including the last "\n\nAssistant:", final assistant response)."""
    cut = transcript.rfind("\n\nAssistant:")
    if cut < 0:
        raise ValueError("no Assistant turn")
    head = cut + len("\n\nAssistant:")
    return transcript[:head], transcript[head:].strip()


def _split_conversation(messages: list[dict[str, str]], path, line: int, key: str):
    """(prompt turns, the answer's text): the answer is the assistant turns after the last other turn."""
    start = max(i for i, m in enumerate(messages) if m["role"] != "assistant") + 1 if any(
        m["role"] != "assistant" for m in messages) else 0
    if start == len(messages):
        raise RecordError(path, line, key, "ends without an assistant answer")
    return messages[:start], "\n\n".join(m["content"] for m in messages[start:])


def _first_difference(a: list, b: list) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def preference_texts(row: dict[str, Any], path="<record>", line: int = 0) -> tuple[str, str, str]:
    """(prompt, chosen, rejected) texts of any TRL preference row; see the module docstring."""
    if isinstance(row.get("chosen"), list) or isinstance(row.get("rejected"), list):
        chosen_msgs = _messages(row.get("chosen"), path, line, "chosen")
        rejected_msgs = _messages(row.get("rejected"), path, line, "rejected")
        if isinstance(row.get("prompt"), list):  # explicit conversational prompt: the pair holds answers only
            prompt_msgs = _messages(row["prompt"], path, line, "prompt")
            for key, msgs in (("chosen", chosen_msgs), ("rejected", rejected_msgs)):
                if any(m["role"] != "assistant" for m in msgs):
                    raise RecordError(path, line, key, "with a conversational prompt it must hold only assistant turns")
            answers = ["\n\n".join(m["content"] for m in msgs) for msgs in (chosen_msgs, rejected_msgs)]
        else:  # implicit prompt (a string `prompt` beside conversational pairs is ignored, as TRL does)
            prompt_msgs, chosen = _split_conversation(chosen_msgs, path, line, "chosen")
            rejected_prompt, rejected = _split_conversation(rejected_msgs, path, line, "rejected")
            if rejected_prompt != prompt_msgs:
                turn = _first_difference(prompt_msgs, rejected_prompt)
                raise RecordError(path, line, "rejected", f"its prompt turns differ from chosen's at turn {turn} "
                                  "(an implicit-prompt pair shares every turn before the answer)")
            answers = [chosen, rejected]
        if not prompt_msgs:
            raise RecordError(path, line, "prompt", "missing: no turn before the answer")
        return messages_to_prompt(prompt_msgs), answers[0], answers[1]
    if row.get("prompt") is None and isinstance(row.get("chosen"), str) and isinstance(row.get("rejected"), str):
        return _implicit_text_prompt(row, path, line)
    return _text(row, "prompt", path, line), _text(row, "chosen", path, line), _text(row, "rejected", path, line)


def _implicit_text_prompt(row: dict[str, Any], path, line: int) -> tuple[str, str, str]:
    """Standard implicit-prompt rows: HH transcripts split at their last Assistant turn, other texts at the
    end of their common beginning (TRL's ``extract_prompt``)."""
    chosen, rejected = row["chosen"], row["rejected"]
    if "\n\nAssistant:" in chosen and "\n\nAssistant:" in rejected:
        (prompt, chosen), (rejected_prompt, rejected) = split_last_turn(chosen), split_last_turn(rejected)
        if prompt != rejected_prompt:
            raise RecordError(path, line, "rejected", "its transcript's turns before the last Assistant turn differ "
                              "from chosen's (an implicit-prompt pair shares them)")
    else:
        cut = _first_difference(list(chosen), list(rejected))
        prompt, chosen, rejected = chosen[:cut].rstrip(), chosen[cut:].strip(), rejected[cut:].strip()
    if not prompt.strip():
        raise RecordError(path, line, "prompt", "missing, and chosen and rejected share no beginning to take it from")
    return prompt, chosen, rejected


# ---------------------------------------------------------------- validating rows


def detect_kind(row: dict[str, Any]) -> RecordKind | None:
    # a KTO row (prompt, completion, label) is detected as SFT; parse_sft refuses it naming 'label'
    if "messages" in row or "completion" in row:
        return "sft"
    if "chosen" in row or "rejected" in row:
        return "preference"
    return None


def _text(row: dict[str, Any], key: str, path, line: int, required: bool = True) -> str | None:
    if key not in row or row[key] is None:
        if required:
            raise RecordError(path, line, key, "missing")
        return None
    value = row[key]
    if not isinstance(value, str):
        raise RecordError(path, line, key, f"expected a string, got {type(value).__name__}")
    if required and not value.strip():
        raise RecordError(path, line, key, "is empty")
    return value


def parse_dimensions(value: Any, path="<record>", line: int = 0) -> list[str]:
    """``"harmless"``, ``"helpful,honest"``, ``["honest"]`` -> a list of known HHH dimensions."""
    if isinstance(value, str):
        items = [v.strip() for v in value.replace(";", ",").replace("|", ",").split(",") if v.strip()]
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        items = [v.strip() for v in value]
    else:
        raise RecordError(path, line, "dimension", f"expected a string or list of strings, got {value!r}")
    if not items:
        raise RecordError(path, line, "dimension", "is empty")
    unknown = [v for v in items if v not in DIMENSIONS]
    if unknown:
        raise RecordError(path, line, "dimension", f"unknown dimension {unknown[0]!r} (known: {', '.join(DIMENSIONS)})")
    return sorted(set(items), key=DIMENSIONS.index)


def _margin(value: Any, path, line: int) -> float | None:
    if value is None or value == "":
        return None
    try:
        margin = float(value)
    except (TypeError, ValueError):
        raise RecordError(path, line, "margin", f"expected a number, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(margin):
        raise RecordError(path, line, "margin", f"must be a finite number, got {value!r}")
    if margin < 0:
        raise RecordError(path, line, "margin", f"must be >= 0 (swap chosen and rejected instead), got {margin}")
    if margin > MAX_MARGIN:
        raise RecordError(path, line, "margin",
                          f"must be <= {MAX_MARGIN:g} (a difference of reward scores), got {value!r}")
    return margin


def parse_preference(row: dict[str, Any], path="<record>", line: int = 0,
                     default_dimension: list[str] | None = None) -> PreferenceRecord:
    _refuse_unpaired(row, path, line)
    prompt, chosen, rejected = preference_texts(row, path, line)
    for key, value in (("chosen", chosen), ("rejected", rejected)):
        if not value.strip():
            raise RecordError(path, line, key, "is empty")
    if chosen.strip() == rejected.strip():
        raise RecordError(path, line, "rejected", "is identical to chosen")
    if "dimension" in row and row["dimension"] not in (None, ""):
        dims = parse_dimensions(row["dimension"], path, line)
    elif default_dimension:
        dims = list(default_dimension)
    else:
        raise RecordError(path, line, "dimension", f"missing (one or more of {', '.join(DIMENSIONS)})")
    return PreferenceRecord(
        prompt=prompt, chosen=chosen, rejected=rejected, dimension=dims,
        margin=_margin(row.get("margin"), path, line),
        source=_text(row, "source", path, line, required=False) or None,
        annotator=_text(row, "annotator", path, line, required=False) or None,
    )


def _refuse_unpaired(row: dict[str, Any], path, line: int) -> None:
    """TRL's unpaired preference rows (KTO: one completion with ``label: true/false``) are neither an SFT example
    (read as one, a ``label: false`` completion would be imitated) nor a pair. Refused: the reward model and DPO
    learn from pairs."""
    if "label" in row and ("completion" in row or "chosen" not in row):
        raise RecordError(path, line, "label", "an unpaired (KTO) row: one completion judged good or bad is not an SFT "
                          "example nor a preference pair; write pairs as prompt/chosen/rejected")


def parse_sft(row: dict[str, Any], path="<record>", line: int = 0) -> SFTRecord:
    _refuse_unpaired(row, path, line)
    if "messages" not in row and not any(isinstance(row.get(k), list) for k in ("prompt", "completion")):
        prompt = _text(row, "prompt", path, line)
        completion = _text(row, "completion", path, line)
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
    else:
        if "messages" in row:
            messages = _messages(row["messages"], path, line, "messages")
        else:  # conversational prompt-completion; a plain string on either side is one user / assistant turn
            prompt_msgs, completion_msgs = (
                [{"role": role, "content": _text(row, key, path, line)}] if isinstance(row.get(key), str)
                else _messages(row.get(key), path, line, key) for key, role in (("prompt", "user"), ("completion", "assistant")))
            if any(m["role"] != "assistant" for m in completion_msgs):
                raise RecordError(path, line, "completion", "must hold only assistant turns")
            messages = prompt_msgs + completion_msgs
        if not any(m["role"] == "assistant" for m in messages):
            raise RecordError(path, line, "messages", "has no assistant turn to learn from")
        first = next(i for i, m in enumerate(messages) if m["role"] != "system")
        if messages[first]["role"] != "user":  # an assistant turn nobody asked for cannot be trained as an answer
            raise RecordError(path, line, f"messages[{first}].role",
                              "the chat must start with a user turn (after any system turns), got 'assistant'")
    return SFTRecord(messages=messages, source=_text(row, "source", path, line, required=False) or None)


def _row_key(record: PreferenceRecord | SFTRecord) -> str:
    return json.dumps(record.to_dict(), sort_keys=True, ensure_ascii=False)


def load_records(path: str | Path, kind: RecordKind | None = None, default_dimension: list[str] | None = None,
                 allow_duplicates: bool = False, log_rows: bool = False) -> LoadResult:
    """Validate every row of a file. File-level problems give one error and no records.

    Row-level problems are collected (one per bad row) so a report can list them all, and the valid
    rows are returned next to them: callers decide whether errors are fatal (they are by default).
    """
    path = Path(path)
    result = LoadResult(kind=kind)
    seen: dict[str, int] = {}
    try:
        for line_no, row in read_rows(path):
            result.rows_read += 1
            row_kind = result.kind or detect_kind(row)
            if row_kind is None:
                result.errors.append(RecordError(path, line_no, None,
                                                 "neither a preference (chosen/rejected) nor an SFT (messages) record"))
                continue
            result.kind = row_kind
            try:
                record = (parse_preference(row, path, line_no, default_dimension) if row_kind == "preference"
                          else parse_sft(row, path, line_no))
            except RecordError as err:
                result.errors.append(err)
                continue
            key = _row_key(record)
            if key in seen and not allow_duplicates:
                result.errors.append(RecordError(path, line_no, None, f"duplicate of line {seen[key]}"))
                continue
            seen.setdefault(key, line_no)
            result.records.append(record)
            result.lines.append(line_no)
    except RecordError as err:
        result.errors.append(err)
    # Stages say what each of the user's files gave: a short read is seen, not guessed. A file with errors says
    # nothing here: its first error is the one line the user gets.
    if log_rows and not result.errors:
        log_rows_read(path, result)
    return result


def log_rows_read(path, result: LoadResult) -> None:
    print(rows_line(path, result), file=sys.stderr, flush=True)


def rows_line(path, result: LoadResult) -> str:
    return (f"[data] {path}: {result.rows_read} rows read, {len(result.records)} {result.kind or ''} records"
            + (f", {len(result.errors)} errors" if result.errors else ""))


def load_preferences(path: str | Path, keep_valid: bool = False, **kwargs) -> list[PreferenceRecord]:
    """Read a preference file for training; any bad row is an error unless ``keep_valid``."""
    result = load_records(path, kind="preference", **kwargs)
    if result.errors and not (keep_valid and result.records):
        raise result.errors[0]
    return result.records  # type: ignore[return-value]


def load_sft(path: str | Path, keep_valid: bool = False, **kwargs) -> list[SFTRecord]:
    result = load_records(path, kind="sft", **kwargs)
    if result.errors and not (keep_valid and result.records):
        raise result.errors[0]
    return result.records  # type: ignore[return-value]


def write_jsonl(records, path: str | Path) -> None:
    """Write records atomically (temp file + rename): an existing file is never half-overwritten."""
    import os

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for record in records:
            data = record.to_dict() if hasattr(record, "to_dict") else record
            fh.write(json.dumps(data, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------- chat transcripts


def transcript_to_messages(text: str) -> list[dict[str, str]]:
    """``"\\n\\nHuman: hi\\n\\nAssistant: hello"`` -> chat messages. Plain text -> one user message."""
    import re

    parts = re.split(r"\n\n(Human|Assistant|System):", "\n\n" + text.strip() if not text.startswith("\n\n") else text)
    if len(parts) < 3:
        return [{"role": "user", "content": text.strip()}]
    messages = []
    roles = {speaker: role for role, speaker in _SPEAKERS.items()}
    for speaker, content in zip(parts[1::2], parts[2::2]):
        role = roles[speaker]
        content = content.strip()
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"] += "\n\n" + content
        elif content or role == "assistant":
            messages.append({"role": role, "content": content})
    # A transcript that ends with an open "Assistant:" is a prompt: drop the empty final turn.
    if messages and messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
        messages.pop()
    return messages


def prompt_to_messages(prompt: str) -> list[dict[str, str]]:
    """A preference prompt as chat messages for a chat policy."""
    return transcript_to_messages(prompt)
