"""``rlhf data validate`` and ``rlhf data stats``: check user files and describe datasets."""
from __future__ import annotations

import statistics
import sys
from collections import Counter
from pathlib import Path
from typing import Sequence

from rlhf.records import DIMENSIONS, LoadResult, PreferenceRecord, RecordError, SFTRecord, load_records, write_jsonl


def validate(files: Sequence[str], keep_valid: str | None = None, kind: str | None = None, out=None) -> int:
    """Print one line per problem (``file:line: field 'x': message``); exit status 1 if any.

    With ``keep_valid=OUT.jsonl`` the valid rows of all files are written to OUT (never over an input).
    """
    out = out or sys.stdout
    status = 0
    kept: list = []
    for file in files:
        if keep_valid and Path(keep_valid).resolve() == Path(file).resolve():
            print(f"{file}: --keep-valid must not overwrite an input file", file=out)
            return 2
        result = load_records(file, kind=kind)  # type: ignore[arg-type]
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
    from rlhf import sources

    out = out or sys.stdout
    adapters = {
        sources.HH_HARMLESS: [("preference", sources.hh_harmless_pairs), ("sft", sources.hh_harmless_sft)],
        sources.TRUTHFULQA: [("preference", sources.truthfulqa_pairs), ("sft", sources.truthfulqa_sft)],
        sources.DIALOGSUM: [("preference", sources.dialogsum_pairs), ("sft", sources.dialogsum_sft)],
    }
    status = 0
    for file in files:
        shipped = next((key for key in adapters if Path(file).resolve() == (sources.data_dir() / key).resolve()), None)
        if shipped:
            for kind, adapter in adapters[shipped]:
                for split in ("train", "dev", "test"):
                    result = LoadResult(kind=kind, records=adapter(split))  # type: ignore[arg-type]
                    print(describe(f"{file} [{kind}, {split}]", result), file=out)
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
