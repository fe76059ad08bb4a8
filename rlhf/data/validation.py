"""``rlhf data validate`` and ``rlhf data stats``: check user files and describe datasets."""
from __future__ import annotations

import statistics
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

from rlhf.core.config import ConfigError
from rlhf.data.records import (DIMENSIONS, LoadResult, PreferenceRecord, RecordError, SFTRecord, is_hub_name, load_records,
                          parse_dimensions, prompts_from_file, write_jsonl)


def validate(files: Sequence[str], keep_valid: str | None = None, kind: str | None = None, out=None,
             default_dimension: Sequence[str] = ()) -> int:
    """Print one line per problem (``file:line: field 'x': message``); exit status 1 if any.

    With ``keep_valid=OUT.jsonl`` the valid rows of all files are written to OUT (never over an input).
    ``default_dimension``: the dimensions of preference rows without one (TRL's formats), as the reward and DPO
    stages' ``data.default_dimension`` reads them.
    """
    out = out or sys.stdout
    status = 0
    kept: list = []
    if default_dimension:
        try:
            default_dimension = parse_dimensions(list(default_dimension), "--default-dimension")
        except RecordError as err:
            print(f"error: --default-dimension: {err.message}", file=out)
            return 2
    for file in files:
        if keep_valid and Path(keep_valid).resolve() == Path(file).resolve():
            print(f"{file}: --keep-valid must not overwrite an input file", file=out)
            return 2
        result = load_records(file, kind=kind, default_dimension=list(default_dimension) or None)  # type: ignore[arg-type]
        for err in result.errors:
            print(f"error: {err}", file=out)
        valid = len(result.records)
        state = "ok" if not result.errors else "INVALID"
        print(f"{file}: {state}: {valid} valid {result.kind or ''} records, {len(result.errors)} errors", file=out)
        if result.errors:
            status = 1
        kept.extend(result.records)
    if keep_valid:
        write_jsonl(kept, keep_valid)
        print(f"kept {len(kept)} valid records in {keep_valid}", file=out)
        status = 0 if kept else status
    return status


def _length_stats(lengths: list[int]) -> str:
    if not lengths:
        return "-"
    lengths = sorted(lengths)
    return (f"mean {statistics.mean(lengths):.0f}, median {statistics.median(lengths):.0f}, "
            f"p95 {lengths[int(0.95 * (len(lengths) - 1))]}, max {lengths[-1]} chars")


def describe(name: str, result: LoadResult) -> str:
    records = result.records
    lines = [f"== {name}: {len(records)} {result.kind or 'record'}s"]
    if result.kind == "preference":
        prefs: list[PreferenceRecord] = records  # type: ignore[assignment]
        dims = Counter(d for r in prefs for d in r.dimension)
        lines.append("  per dimension: " + ", ".join(f"{d} {dims.get(d, 0)}" for d in DIMENSIONS))
        lines.append("  per source: " + ", ".join(f"{s} {n}" for s, n in Counter(r.source or "-" for r in prefs).items()))
        lines.append(f"  prompt length: {_length_stats([len(r.prompt) for r in prefs])}")
        lines.append(f"  chosen length: {_length_stats([len(r.chosen) for r in prefs])}")
        lines.append(f"  rejected length: {_length_stats([len(r.rejected) for r in prefs])}")
        lines.append(f"  distinct prompts: {len({r.prompt for r in prefs})}")
        margins = [r.margin for r in prefs if r.margin is not None]
        if margins:
            lines.append(f"  with margin: {len(margins)}")
    elif result.kind == "sft":
        sft: list[SFTRecord] = records  # type: ignore[assignment]
        lines.append("  per source: " + ", ".join(f"{s} {n}" for s, n in Counter(r.source or "-" for r in sft).items()))
        lines.append(f"  turns: {_length_stats([len(r.messages) for r in sft]).replace(' chars', '')}")
        lines.append(f"  assistant length: {_length_stats([len(r.messages[-1]['content']) for r in sft])}")
    dupes = [e for e in result.errors if "duplicate of line" in e.message]
    lines.append(f"  duplicates: {len(dupes)}; other errors: {len(result.errors) - len(dupes)}")
    return "\n".join(lines)


def stats(files: Sequence[str], out=None) -> int:
    """Counts per dimension and source, lengths and duplicates, for user files or shipped sources.

    A shipped file is read through its adapter (HH-RLHF transcripts, TruthfulQA CSV, DialogSum), so
    its stats are those of the records the stages train on.
    """
    from rlhf.data import sources

    out = out or sys.stdout
    status = 0
    for file in files:
        shipped = [s for s in sources.SOURCES.values()
                   if Path(file).resolve() == (sources.data_dir() / s.file).resolve()]
        for source in shipped:  # one file can feed two sources (truthfulqa, truthfulqa-informative)
            named = f"{source.name}, " if len(shipped) > 1 else ""
            for kind, adapter in (("preference", source.pairs), ("sft", source.sft)):
                for split in ("train", "dev", "test"):
                    result = LoadResult(kind=kind, records=adapter(split))  # type: ignore[arg-type]
                    print(describe(f"{file} [{named}{kind}, {split}]", result), file=out)
        if shipped:
            continue
        result = load_records(file)
        if result.errors and not result.records:
            print(f"error: {result.errors[0]}", file=out)
            status = 1
            continue
        print(describe(file, result), file=out)
    return status


def format_error(err: RecordError) -> str:
    return f"error: {err}"


# ---------------------------------------------------------------- a stage's inputs, checked before it starts


@dataclass(frozen=True)
class StageInput:
    key: str  # the config key it comes from, e.g. data.extra_files[0]
    value: str  # a shipped source name or a file
    kind: Literal["sft", "preference", "prompt"]  # what a file must hold (prompt: rows with a prompt field, or .txt)
    shipped: Sequence[str]  # the source names the key accepts
    files: bool = True  # whether the key also accepts a file (or a hub dataset name)
    default_dimension: Sequence[str] = ()  # preference rows without `dimension` take these
    train_only: bool = False  # used whole for training: no row may hold a shipped test conversation


def _sft_inputs(cfg) -> list[StageInput]:
    from rlhf.data.sources import SFT_SOURCES

    return [StageInput(f"data.mixture[{i}].source", s.source, "sft", list(SFT_SOURCES))
            for i, s in enumerate(cfg.data.mixture)]


def _reward_inputs(cfg) -> list[StageInput]:
    from rlhf.data.sources import PREFERENCE_SOURCES

    names = list(PREFERENCE_SOURCES)
    return ([StageInput(f"data.sources[{i}]", name, "preference", names, files=False)  # files go in extra_files
             for i, name in enumerate(cfg.data.sources)]
            + [StageInput(f"data.extra_files[{i}]", path, "preference", [],
                          default_dimension=tuple(cfg.data.default_dimension),
                          train_only=cfg.data.extra_files_split == "train")
               for i, path in enumerate(cfg.data.extra_files)])


def _ppo_inputs(cfg) -> list[StageInput]:
    from rlhf.data.sources import PROMPT_SOURCES

    return [StageInput(f"data.sources[{i}]", source, "prompt", list(PROMPT_SOURCES))
            for i, source in enumerate(cfg.data.sources)]


STAGE_INPUTS: dict[str, Callable[[Any], list[StageInput]]] = {
    "sft": _sft_inputs, "reward": _reward_inputs, "ppo": _ppo_inputs,
    "dpo": _reward_inputs}  # DPO reads the reward model's inputs: data.sources + data.extra_files


def input_problems(item: StageInput) -> list[str]:
    """Every problem of one stage input, worded as ``rlhf data validate`` words them (file:line: field ...)."""
    if item.value in item.shipped:
        return []
    if not item.files:
        return [f"unknown source {item.value!r} (shipped: {', '.join(item.shipped)}; put your own files in "
                "data.extra_files)"]
    if not Path(item.value.partition("?")[0]).exists() and not (item.kind != "prompt" and is_hub_name(item.value)):
        shipped = f"a shipped source ({', '.join(item.shipped)}) nor " if item.shipped else ""
        return [f"{item.value!r} is neither {shipped}an existing file nor a hub dataset name (owner/name)"]
    if item.kind == "prompt":

        try:
            prompts_from_file(item.value)
        except RecordError as err:
            return [str(err)]
        return []
    result = load_records(item.value, kind=item.kind, default_dimension=list(item.default_dimension) or None)
    if item.train_only and not result.errors:
        from rlhf.data.sources import check_train_file

        try:
            check_train_file(item.value, result.records, result.lines)
        except RecordError as err:
            return [str(err)]
    return [str(err) for err in result.errors]


def validate_stage_inputs(stage: str, cfg) -> None:
    """Step 1 of the sft, reward, ppo and dpo stages: every input they will read, checked before any model loads
    and before the run folder exists. A bad one raises ConfigError: one line naming the config key, then
    file, line and field (``stage_cli`` prints it and exits 2)."""
    default_dimension = getattr(cfg.data, "default_dimension", None)
    if default_dimension:
        try:
            parse_dimensions(list(default_dimension), "data.default_dimension")
        except RecordError as err:
            raise ConfigError(f"data.default_dimension: {err.message}") from None
    for item in STAGE_INPUTS[stage](cfg):
        problems = input_problems(item)
        if problems:
            more = (f" (and {len(problems) - 1} more: `rlhf data validate {item.value}` lists them)"
                    if len(problems) > 1 else "")
            raise ConfigError(f"{item.key}: {problems[0]}{more}")
