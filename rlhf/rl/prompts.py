"""Training prompts for PPO, and the deterministic order in which processes take them.

Sources: the shipped ones by name (HH-RLHF harmless prompts, TruthfulQA questions, DialogSum
summarisation instructions) or files: ``.txt`` (one prompt per line) or JSONL/JSON/CSV rows with a
``prompt`` field. Every source is split by conversation like ``rlhf.data.sources``; RL reads ``train`` and ``dev``
only ("test" is held out for ``rlhf eval``).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import torch

from rlhf.data import sources
from rlhf.data.records import prompts_from_file


def load_prompts(source_names: Sequence[str], split: str = "train") -> list[str]:
    """Prompts of every source, split by conversation, duplicates removed (first occurrence kept)."""
    prompts: list[str] = []
    for source in source_names:
        if source in sources.PROMPT_SOURCES:  # each source's RL prompts, declared in rlhf.data.sources
            prompts += sources.PROMPT_SOURCES[source](split)
        elif Path(source).exists():
            prompts += sources.take_split(prompts_from_file(source, log_rows=True), split, prompt=lambda p: p)
        else:
            raise ValueError(f"data.sources: {source!r} is neither a shipped source "
                             f"({', '.join(sources.PROMPT_SOURCES)}) nor an existing file")
    return list(dict.fromkeys(prompts))


class PromptStream:
    """Step ``s`` of process ``rank`` gets a fixed slice of an endless, per-epoch shuffled prompt order.

    The order is a pure function of (seed, step), so the data position of a run is just its step, and a
    resumed run sees exactly the prompts the uninterrupted run would have seen.
    """

    def __init__(self, prompts: Sequence[str], per_process: int, num_processes: int = 1, rank: int = 0,
                 seed: int = 0, shuffle: bool = True):
        if not prompts:
            raise ValueError("no training prompts (check data.sources, data.split and data.max_prompt_tokens)")
        self.prompts, self.per_process = list(prompts), per_process
        self.num_processes, self.rank, self.seed, self.shuffle = num_processes, rank, seed, shuffle
        self._orders: dict[int, list[int]] = {}

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            n = len(self.prompts)
            if self.shuffle:
                generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                self._orders = {epoch: torch.randperm(n, generator=generator).tolist()}
            else:
                self._orders = {epoch: list(range(n))}
        return self._orders[epoch]

    def batch(self, step: int) -> list[str]:
        first = (step * self.num_processes + self.rank) * self.per_process
        out = []
        for i in range(first, first + self.per_process):
            epoch, pos = divmod(i, len(self.prompts))
            out.append(self.prompts[self._order(epoch)[pos]])
        return out


def held_out_prompts(cfg_data, tokenizer, seed: int) -> list[str]:
    """``data.eval_prompts`` prompts of ``data.eval_split`` (``dev`` by default: monitoring never reads test)."""
    if not cfg_data.eval_prompts:
        return []
    return prepare_prompts(cfg_data, tokenizer, seed, split=cfg_data.eval_split, max_prompts=cfg_data.eval_prompts)


def prepare_prompts(cfg_data, tokenizer, seed: int, split: str | None = None, max_prompts: int | None = None) -> list[str]:
    """Load ``data.sources``, drop prompts longer than ``data.max_prompt_tokens`` as chat, keep ``max_prompts``."""
    from rlhf.models.generation import render_chat
    from rlhf.data.records import prompt_to_messages

    prompts = load_prompts(cfg_data.sources, cfg_data.split if split is None else split)
    max_prompts = cfg_data.max_prompts if max_prompts is None else max_prompts
    rendered = [render_chat(tokenizer, prompt_to_messages(p)) for p in prompts]
    lengths = [len(ids) for ids in tokenizer(rendered, add_special_tokens=False)["input_ids"]]
    kept = [p for p, n in zip(prompts, lengths) if n <= cfg_data.max_prompt_tokens]
    if max_prompts and len(kept) > max_prompts:
        order = torch.randperm(len(kept), generator=torch.Generator().manual_seed(seed)).tolist()
        kept = [kept[i] for i in sorted(order[:max_prompts])]
    return kept
