"""DPO data: our preference records, filtered by dimension, as TRL's conversational prompt/chosen/rejected rows.

The prompt becomes chat messages (an HH transcript its turns, other prompts one user turn) and each answer
one assistant message, so ``DPOTrainer`` applies the policy's chat template itself, the way it renders at
inference. Every problem a stage input can have is found here, before any model loads: one line naming
the config key and file (``ConfigError``, exit 2).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Sequence

from rlhf.core.config import ConfigError
from rlhf.dpo.config import DataConfig
from rlhf.data.records import DIMENSIONS, PreferenceRecord, RecordError, load_records, log_rows_read, prompt_to_messages


@dataclass
class Pairs:
    train: list[PreferenceRecord]
    dev: list[PreferenceRecord]


def check_dimensions(dimensions: Sequence[str]) -> None:
    unknown = [d for d in dimensions if d not in DIMENSIONS]
    if unknown:
        raise ConfigError(f"data.dimensions: unknown dimension {unknown[0]!r} (known: {', '.join(DIMENSIONS)})")


def keep(records: Sequence[PreferenceRecord], dimensions: Sequence[str]) -> list[PreferenceRecord]:
    """The pairs labelled with at least one of ``dimensions`` (all of them when empty)."""
    return [r for r in records if not dimensions or set(r.dimension) & set(dimensions)]


def _labelled(dimensions: Sequence[str]) -> str:
    return f" labelled {', '.join(dimensions)}" if dimensions else ""


def load_pairs(cfg: DataConfig, seed: int) -> Pairs:
    """Train and dev pairs from the shipped sources and the extra files (train split; dev capped, seeded).

    A file with no pairs left after the dimension filter, or no training pair at all, is a ConfigError
    naming the key and file; the files' own row errors are found earlier by ``validate_stage_inputs``."""
    from rlhf.data.sources import check_train_file, preference_records, take_partition, take_split

    check_dimensions(cfg.dimensions)
    train = keep(preference_records(cfg.sources, "train"), cfg.dimensions)
    dev = keep(preference_records(cfg.sources, "dev"), cfg.dimensions)
    for i, path in enumerate(cfg.extra_files):
        result = load_records(path, kind="preference", default_dimension=list(cfg.default_dimension) or None)
        if result.errors:  # validate_stage_inputs normally reports these first, with the key
            raise ConfigError(f"data.extra_files[{i}]: {result.errors[0]}")
        records = keep(result.records, cfg.dimensions)
        if not records:
            raise ConfigError(f"data.extra_files[{i}]: {path}: no preference pairs{_labelled(cfg.dimensions)} "
                              f"({result.rows_read} rows read)")
        if cfg.extra_files_split == "train":
            try:
                check_train_file(path, result.records, result.lines)
            except RecordError as err:
                raise ConfigError(f"data.extra_files[{i}]: {err}") from None
            log_rows_read(path, result)  # after its checks: a refused file gives its one error line only
            train += records
        else:
            log_rows_read(path, result)
            train += take_split(records, "train")
            dev += take_split(records, "dev")
    # The proxy's half by default: a gold judge trained on the other half never saw DPO's prompts either.
    train = take_partition(train, "proxy" if cfg.partition == "auto" else cfg.partition)
    if not train:
        where = ", ".join([*cfg.sources, *cfg.extra_files]) or "no sources"
        raise ConfigError(f"data: no training pairs{_labelled(cfg.dimensions)} in {where} "
                          "(data.sources, data.extra_files, data.dimensions)")
    rng = random.Random(seed)
    if cfg.max_train_pairs and len(train) > cfg.max_train_pairs:
        train = rng.sample(train, cfg.max_train_pairs)
    dev = rng.sample(dev, min(len(dev), cfg.dev_max_pairs))
    return Pairs(train=train, dev=dev)


def to_conversational(record: PreferenceRecord) -> dict[str, Any]:
    """TRL's conversational preference row: prompt messages, chosen and rejected as one assistant message each."""
    return {"prompt": prompt_to_messages(record.prompt),
            "chosen": [{"role": "assistant", "content": record.chosen}],
            "rejected": [{"role": "assistant", "content": record.rejected}]}


def pair_tokens(tokenizer, row: dict[str, Any]) -> int:
    """Tokens of the prompt with its longer answer, rendered by the chat template (what the trainer feeds)."""
    from rlhf.models.generation import render_chat

    return max(len(tokenizer(render_chat(tokenizer, row["prompt"] + row[answer], add_generation_prompt=False),
                             add_special_tokens=False)["input_ids"]) for answer in ("chosen", "rejected"))


def to_dataset(tokenizer, records: Sequence[PreferenceRecord], max_length: int):
    """(``datasets.Dataset`` of conversational rows, pairs dropped as longer than ``max_length``).

    Dropped, not cut: TRL would cut the answers' ends, and the preference may lie in what is cut."""
    import datasets

    rows = [to_conversational(r) for r in records]
    kept = [row for row in rows if pair_tokens(tokenizer, row) <= max_length]
    return datasets.Dataset.from_list(kept), len(rows) - len(kept)
