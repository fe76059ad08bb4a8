"""Adapters from the shipped datasets (``data/``) to the common records, and deterministic splits.

| source | preference pairs (dimension) | SFT examples |
| --- | --- | --- |
| HH-RLHF harmless | chosen/rejected final Assistant turn (harmless) | chosen transcripts as chat |
| TruthfulQA | a correct answer preferred to an incorrect one (honest) | question -> best answer |
| DialogSum | reference summary preferred to a worse one (helpful) | "summarize" -> summary |

Splits are by a hash of the prompt, so one prompt never lands in two splits and every run and
machine agrees on them: ``train`` (80 %), ``dev`` (10 %, model selection) and ``test`` (10 %, the
held-out prompts no stage trains on, used by evaluation).
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal, Sequence, TypeVar

from rlhf.records import PreferenceRecord, SFTRecord, load_records, split_last_turn, transcript_to_messages

Split = Literal["train", "dev", "test", "all"]
R = TypeVar("R")

HH_HARMLESS = "hh-rlhf-harmless/pairs.jsonl.gz"
TRUTHFULQA = "truthfulqa/TruthfulQA.csv"
DIALOGSUM = "dialogsum/dialogsum.dev.jsonl"
SUMMARIZE_INSTRUCTION = "Summarize the following dialogue in one or two sentences.\n\n{dialogue}"
SPLIT_BUCKETS = {"train": (0, 80), "dev": (80, 90), "test": (90, 100)}


def data_dir() -> Path:
    """The shipped ``data/`` folder (``$RLHF_DATA_DIR`` to point elsewhere)."""
    return Path(os.environ.get("RLHF_DATA_DIR", Path(__file__).resolve().parents[1] / "data"))


def split_of(key: str) -> str:
    bucket = int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:8], 16) % 100
    return next(name for name, (lo, hi) in SPLIT_BUCKETS.items() if lo <= bucket < hi)


def take_split(items: Iterable[R], split: Split, key=lambda r: r.prompt) -> list[R]:
    items = list(items)
    return items if split == "all" else [r for r in items if split_of(key(r)) == split]


# ---------------------------------------------------------------- HH-RLHF harmless


def hh_harmless_pairs(split: Split = "all", path: str | Path | None = None) -> list[PreferenceRecord]:
    path = Path(path) if path else data_dir() / HH_HARMLESS
    records = []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            prompt, chosen = split_last_turn(row["chosen"])
            rejected_prompt, rejected = split_last_turn(row["rejected"])
            # Pairs whose prompts differ, or whose answers are equal/empty, teach nothing.
            if rejected_prompt != prompt or not chosen or not rejected or chosen == rejected:
                continue
            records.append(PreferenceRecord(prompt=prompt, chosen=chosen, rejected=rejected,
                                            dimension=["harmless"], source="hh-rlhf-harmless"))
    return take_split(records, split)


def hh_harmless_sft(split: Split = "all") -> list[SFTRecord]:
    return [SFTRecord(messages=transcript_to_messages(p.prompt) + [{"role": "assistant", "content": p.chosen}],
                      source="hh-rlhf-harmless") for p in hh_harmless_pairs(split)]


# ---------------------------------------------------------------- TruthfulQA


@dataclass
class TruthfulQAItem:
    question: str
    best_answer: str
    correct: list[str]
    incorrect: list[str]
    category: str

    @property
    def prompt(self) -> str:
        return self.question


def truthfulqa_items(split: Split = "all", path: str | Path | None = None) -> list[TruthfulQAItem]:
    path = Path(path) if path else data_dir() / TRUTHFULQA
    items = []
    with open(path, encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            answers = lambda cell: [a.strip() for a in cell.split("; ") if a.strip()]  # noqa: E731
            items.append(TruthfulQAItem(question=row["Question"].strip(), best_answer=row["Best Answer"].strip(),
                                        correct=answers(row["Correct Answers"]),
                                        incorrect=answers(row["Incorrect Answers"]), category=row["Category"]))
    return take_split(items, split)


def truthfulqa_pairs(split: Split = "all", pairs_per_question: int = 3) -> list[PreferenceRecord]:
    """Correct > incorrect: the best answer first, then other correct answers, each against a different wrong one."""
    records = []
    for item in truthfulqa_items(split):
        correct = [item.best_answer] + [c for c in item.correct if c != item.best_answer]
        for good, bad in list(zip(correct, item.incorrect))[:pairs_per_question]:
            if good != bad:
                records.append(PreferenceRecord(prompt=item.question, chosen=good, rejected=bad,
                                                dimension=["honest"], source="truthfulqa"))
    return records


def truthfulqa_sft(split: Split = "all") -> list[SFTRecord]:
    return [SFTRecord(messages=[{"role": "user", "content": it.question},
                                {"role": "assistant", "content": it.best_answer}], source="truthfulqa")
            for it in truthfulqa_items(split)]


# ---------------------------------------------------------------- DialogSum


@dataclass
class DialogSumItem:
    fname: str
    dialogue: str
    summary: str
    topic: str

    @property
    def prompt(self) -> str:
        return SUMMARIZE_INSTRUCTION.format(dialogue=self.dialogue)


def dialogsum_items(split: Split = "all", path: str | Path | None = None) -> list[DialogSumItem]:
    path = Path(path) if path else data_dir() / DIALOGSUM
    with open(path, encoding="utf-8") as fh:
        items = [DialogSumItem(**{k: json.loads(line)[k] for k in ("fname", "dialogue", "summary", "topic")})
                 for line in fh if line.strip()]
    return take_split(items, split)


def _truncate_summary(summary: str) -> str:
    words = summary.split()
    return " ".join(words[: max(1, len(words) // 3)])


def dialogsum_pairs(split: Split = "all", seed: int = 0) -> list[PreferenceRecord]:
    """Reference summary > (a) the summary of another dialogue, and > (b) a truncated summary."""
    items = dialogsum_items("all")
    rng = random.Random(seed)
    records = []
    for i, item in enumerate(items):
        other = items[(i + 1 + rng.randrange(len(items) - 1)) % len(items)]
        for worse in (other.summary, _truncate_summary(item.summary)):
            if worse.strip() and worse.strip() != item.summary.strip():
                records.append(PreferenceRecord(prompt=item.prompt, chosen=item.summary, rejected=worse,
                                                dimension=["helpful"], source="dialogsum"))
    return take_split(records, split)


def dialogsum_sft(split: Split = "all") -> list[SFTRecord]:
    return [SFTRecord(messages=[{"role": "user", "content": it.prompt},
                                {"role": "assistant", "content": it.summary}], source="dialogsum")
            for it in dialogsum_items(split)]


# ---------------------------------------------------------------- everything together

PREFERENCE_SOURCES = {"hh-rlhf-harmless": hh_harmless_pairs, "truthfulqa": truthfulqa_pairs,
                      "dialogsum": dialogsum_pairs}
SFT_SOURCES = {"hh-rlhf-harmless": hh_harmless_sft, "truthfulqa": truthfulqa_sft, "dialogsum": dialogsum_sft}


def preference_records(sources: Sequence[str], split: Split = "train") -> list[PreferenceRecord]:
    """Shipped source names or paths to preference files (split by prompt like the shipped ones)."""
    out: list[PreferenceRecord] = []
    for source in sources:
        if source in PREFERENCE_SOURCES:
            out.extend(PREFERENCE_SOURCES[source](split))
        else:
            result = load_records(source, kind="preference", log_rows=True)
            if result.errors:
                raise result.errors[0]
            out.extend(take_split(result.records, split))
    return out


def sft_records(source: str, split: Split = "train") -> list[SFTRecord]:
    if source in SFT_SOURCES:
        return SFT_SOURCES[source](split)
    result = load_records(source, kind="sft", log_rows=True)
    if result.errors:
        raise result.errors[0]
    return take_split(result.records, split, key=lambda r: json.dumps(r.prompt_messages))


def shipped_files() -> list[Path]:
    root = data_dir()
    return [root / HH_HARMLESS, root / TRUTHFULQA, root / DIALOGSUM]


@dataclass
class PreferenceSourcesConfig:
    """Where a stage's preference pairs come from: shipped sources and the user's files (reward model, DPO)."""

    sources: list[str] = field(
        default_factory=lambda: ["hh-rlhf-harmless", "truthfulqa", "dialogsum"],
        metadata={"help": "shipped pairs: hh-rlhf-harmless (harmless), truthfulqa (honest), dialogsum (helpful)"})
    extra_files: list[str] = field(
        default_factory=list,
        metadata={"help": "preference files (JSONL/CSV/parquet, TRL formats too) or hub dataset names"})
    default_dimension: list[str] = field(
        default_factory=list,
        metadata={"help": "dimension(s) for extra_files rows without one (TRL datasets have none), e.g. [helpful]"})
    extra_files_split: Literal["hash", "train"] = field(
        default="hash",
        metadata={"help": "hash: split by prompt like shipped data; train: all to train"})
