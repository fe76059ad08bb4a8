"""Preference pairs for the reward model: where they come from, and the order they are seen in.

* Shipped sources (``rlhf.data.sources``): harmless <- HH-RLHF harmless, honest <- TruthfulQA,
  helpful <- DialogSum; splits by conversation: ``train`` to learn, ``dev`` to select the model and
  measure normalisation statistics, ``test`` for the final held-out accuracy only.
* Annotated files (``data.extra_files``) in the preference-record schema, read with
  :func:`rlhf.data.records.load_records` (any bad row is an error naming file, line and field), split
  by conversation like the shipped data, or used whole for training (``extra_files_split: train``; a row
  whose conversation is in a shipped test split is then an error naming file and line).
* Proxy and gold: ``train`` pairs are halved by conversation (``data.partition``, :func:`rlhf.data.sources.partition_of`);
  the proxy learns from one half, the gold judge from the other, so the gold never saw a prompt the proxy saw.
* Ties: the record schema cannot hold one (chosen == rejected is rejected when a file is read); a
  pair that appears both ways round for the same dimension is a tie in disguise, and both copies are
  dropped (:func:`drop_contradictions`).
* Balance: every epoch draws the same number of pairs from each dimension (smaller sets are cycled),
  so the largest source does not drown the others (:func:`balanced_batches`).
"""
from __future__ import annotations

import random
from typing import Literal, Sequence

import torch

from reward_models.types import HEADS
from rlhf.data import sources
from rlhf.data.records import PreferenceRecord, load_records, log_rows_read

Split = Literal["train", "dev", "test"]


def load_pairs(shipped: Sequence[str], extra_files: Sequence[str], split: Split,
               extra_files_split: Literal["hash", "train"] = "hash",
               default_dimension: Sequence[str] = (), partition: sources.Partition = "all") -> list[PreferenceRecord]:
    """Pairs of one split from shipped source names and annotated preference files; ``partition``: the proxy's
    or the gold's half of them (``all``: every pair)."""
    return load_splits(shipped, extra_files, (split,), extra_files_split, default_dimension, {split: partition})[split]


def load_splits(shipped: Sequence[str], extra_files: Sequence[str], splits: Sequence[Split],
                extra_files_split: Literal["hash", "train"] = "hash", default_dimension: Sequence[str] = (),
                partitions: dict[str, sources.Partition] | None = None) -> dict[str, list[PreferenceRecord]]:
    """split -> its pairs, as :func:`load_pairs` gives them, with each annotated file read, checked and logged
    once for all the splits (a stage needs train, dev and test; reading a file per split logged it thrice)."""
    unknown = [s for s in shipped if s not in sources.PREFERENCE_SOURCES]
    if unknown:
        raise ValueError(f"unknown data source {unknown[0]!r} (shipped: {', '.join(sources.PREFERENCE_SOURCES)}; "
                         f"put your own files in data.extra_files)")
    files = []
    for path in extra_files:
        result = load_records(path, kind="preference", default_dimension=list(default_dimension) or None)
        if result.errors:
            raise result.errors[0]
        if extra_files_split == "train":
            sources.check_train_file(path, result.records, result.lines)
        log_rows_read(path, result)  # after its checks: a refused file gives its one error line only
        files.append(result.records)
    out: dict[str, list[PreferenceRecord]] = {}
    for split in splits:
        records: list[PreferenceRecord] = []
        for name in shipped:
            records.extend(sources.PREFERENCE_SOURCES[name](split))
        for rows in files:
            if extra_files_split == "train":
                records.extend(rows if split == "train" else [])
            else:
                records.extend(sources.take_split(rows, split))
        out[split] = sources.take_partition(records, (partitions or {}).get(split, "all"))
    return out


def drop_contradictions(records: Sequence[PreferenceRecord]) -> tuple[list[PreferenceRecord], int]:
    """Drop pairs that also appear reversed for a shared dimension (a tie); returns (kept, n dropped)."""
    seen = {(r.prompt, r.chosen, r.rejected, d) for r in records for d in r.dimension}
    kept = [r for r in records if not any((r.prompt, r.rejected, r.chosen, d) in seen for d in r.dimension)]
    return kept, len(records) - len(kept)


def head_mask(records: Sequence[PreferenceRecord]) -> torch.Tensor:
    """(pairs, heads) bool: which heads each pair is labelled for."""
    return torch.tensor([[head in r.dimension for head in HEADS] for r in records], dtype=torch.bool)


def response_tokens(tokenizer, texts: Sequence[str]) -> torch.Tensor:
    """(texts,) tokens of each response alone, untruncated: the length the length remedies and report bin by."""
    return torch.tensor([len(ids) for ids in tokenizer(list(texts), add_special_tokens=False,
                                                       verbose=False)["input_ids"]], dtype=torch.long)


def margins(records: Sequence[PreferenceRecord]) -> torch.Tensor:
    """(pairs,) the annotated margin of each pair, 0 where none was given."""
    return torch.tensor([r.margin or 0.0 for r in records], dtype=torch.float32)


def pools_by_head(records: Sequence[PreferenceRecord]) -> dict[str, list[int]]:
    """Indices of the pairs labelled for each head (a pair labelled twice is in two pools)."""
    return {head: [i for i, r in enumerate(records) if head in r.dimension] for head in HEADS}


def balanced_batches(pools: dict[str, list[int]], per_head: int, batch_size: int, seed: int, epoch: int,
                     lengths: Sequence[int] | None = None, bucket: int = 8,
                     chosen_longer: Sequence[bool] | None = None) -> list[list[int]]:
    """One epoch of batches: ``per_head`` pairs from every non-empty pool, in single-head batches.

    A pool smaller than ``per_head`` is cycled through fresh shuffles, so every pair is seen before
    any is repeated. Batches hold one head's pairs (similar lengths: little padding, and every step
    has a clean signal for that head) and the heads' batches are interleaved in a random order.
    With ``lengths`` (tokens per pair), each run of ``bucket`` batches is sorted by length first, so
    a batch pads to a length close to its pairs' own.
    With ``chosen_longer`` (per pair: is the chosen response the longer one?), each head draws half its pairs
    from those whose chosen is longer and half from the others (each half cycled like a small pool), so length
    alone predicts nothing on the training stream (``data.length_balance``).
    The order depends only on (seed, epoch), which is what makes ``--resume`` exact.
    """
    rng = random.Random(f"{seed}-{epoch}")
    batches: list[list[int]] = []
    for head in HEADS:
        pool = pools.get(head, [])
        if not pool:
            continue
        halves = [[i for i in pool if chosen_longer[i]], [i for i in pool if not chosen_longer[i]]] \
            if chosen_longer is not None else []
        if halves and all(halves):
            drawn = _cycled(rng, halves[0], per_head // 2) + _cycled(rng, halves[1], per_head - per_head // 2)
            rng.shuffle(drawn)
        else:  # no length balance asked, or one side has no pair to balance with
            drawn = _cycled(rng, pool, per_head)
        if lengths is not None:
            window = batch_size * bucket
            drawn = [i for s in range(0, len(drawn), window) for i in sorted(drawn[s:s + window], key=lengths.__getitem__)]
        batches.extend(drawn[i:i + batch_size] for i in range(0, len(drawn), batch_size))
    rng.shuffle(batches)
    return batches


def _cycled(rng: random.Random, pool: Sequence[int], n: int) -> list[int]:
    """``n`` indices from ``pool``: whole fresh shuffles of it, repeated as needed, the last one cut."""
    drawn: list[int] = []
    while len(drawn) < n:
        drawn.extend(rng.sample(list(pool), len(pool)))
    return drawn[:n]


def subsample(records: Sequence[PreferenceRecord], per_head: int, seed: int = 0) -> list[PreferenceRecord]:
    """At most ``per_head`` pairs per head (0 = all), the same ones on every run."""
    if per_head <= 0:
        return list(records)
    rng = random.Random(seed)
    keep: set[int] = set()
    for indices in pools_by_head(records).values():
        keep.update(rng.sample(indices, min(per_head, len(indices))))
    return [r for i, r in enumerate(records) if i in keep]
