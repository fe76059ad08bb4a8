"""Does the helpful head rank sampled summaries of one dialogue as ROUGE-L does? (``rlhf eval-rm --ranking.policy``)

The shipped helpful pairs put the reference summary against degraded copies of it (truncated, entity-swapped,
shuffled) or against another dialogue's summary. A head can be right on those and still be unable to rank two
plausible summaries of the same dialogue, which is what RL asks of it: GRPO and RLOO compare the samples of one
prompt. So a policy samples ``ranking.samples`` summaries of each of ``ranking.dialogues`` DialogSum dialogues of the
report's split. Each summary is scored by the helpful head and by ROUGE-L against the dialogue's reference. Reported:

* **within-dialogue Spearman**: per dialogue, the rank correlation of head score and ROUGE-L over its samples,
  averaged over the dialogues where it is defined (normal interval, n = those dialogues);
* **pooled Spearman**: over all samples at once, with a bootstrap interval that resamples whole dialogues;
* the same two for the head score against response length in words: a head that counts words scores well here
  whenever ROUGE-L also follows length, so both are shown.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

HEAD = "helpful"  # the head this ranks: DialogSum's summaries are the helpful source


@dataclass
class RankingConfig:
    """Sampled summaries ranked by the helpful head and by ROUGE-L (off while policy is empty)."""

    policy: str = field(default="", metadata={
        "help": "policy that samples the summaries: zoo name, hub id, model or adapter folder; empty: no ranking"})
    dialogues: int = field(default=32, metadata={"help": "DialogSum dialogues of the report's split; 0 = all",
                                                 "range": "[0, 1000000]"})
    samples: int = field(default=4, metadata={"help": "summaries sampled per dialogue (a rank needs two)",
                                              "range": "[2, 1000]"})
    max_new_tokens: int = field(default=64, metadata={"help": "tokens per summary at most", "range": "[1, 100000]"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature: spread in quality to rank",
                                                      "range": "(0, inf)"})
    batch_size: int = field(default=8, metadata={"help": "summaries generated together", "range": "[1, 100000]"})
    seed: int = field(default=0, metadata={"help": "seed of the sampling and of the bootstrap",
                                           "range": "[0, 4294967295]"})


@dataclass
class RankedSummary:
    """One sampled summary with what judges it."""

    dialogue: str  # the DialogSum fname
    summary: str
    rouge_l: float  # ROUGE-L F against the dialogue's reference summary
    score: float  # the helpful head's raw score
    words: int


# ---------------------------------------------------------------- the maths (pure)


def by_dialogue(rows: Sequence[RankedSummary]) -> list[list[RankedSummary]]:
    """The rows grouped by dialogue, in first-seen order."""
    groups: dict[str, list[RankedSummary]] = {}
    for row in rows:
        groups.setdefault(row.dialogue, []).append(row)
    return list(groups.values())


def within_dialogue(groups: Sequence[Sequence[RankedSummary]], against: str = "rouge_l") -> list[float]:
    """Each dialogue's Spearman of the head score with ``against`` (NaN where either is constant)."""
    from rlhf.evaluation.metrics import spearman

    return [spearman([r.score for r in g], [getattr(r, against) for r in g]) for g in groups]


def ranking_stats(rows: Sequence[RankedSummary], against: str = "rouge_l", confidence: float = 0.95,
                  seed: int = 0, resamples: int = 1000) -> dict[str, Any]:
    """Spearman of the head score with ``against`` (``rouge_l`` or ``words``): within each dialogue (mean over the
    dialogues where both vary, normal interval) and pooled over every sample (dialogue-bootstrap interval)."""
    from rlhf.evaluation.metrics import cluster_bootstrap_interval, mean_interval, spearman

    groups = by_dialogue(rows)
    within = within_dialogue(groups, against)
    defined = [w for w in within if not math.isnan(w)]
    mean, low, high = mean_interval(defined, confidence)

    def pooled(chosen: list[list[RankedSummary]]) -> float:
        flat = [r for g in chosen for r in g]
        return spearman([r.score for r in flat], [getattr(r, against) for r in flat])

    pooled_low, pooled_high = cluster_bootstrap_interval(groups, pooled, resamples, confidence, seed)
    return {"within": {"mean": mean, "low": low, "high": high, "n": len(defined),
                       "undefined": len(within) - len(defined)},
            "pooled": {"spearman": pooled(groups), "low": pooled_low, "high": pooled_high, "n": len(rows),
                       "dialogues": len(groups)}}


def paired_within(rows: Sequence[RankedSummary], baseline: Sequence[RankedSummary], against: str = "rouge_l",
                  confidence: float = 0.95) -> dict[str, Any]:
    """Two heads' scores of the same summaries: the mean over dialogues of (this head's within-dialogue Spearman
    with ``against``) minus (the baseline head's), with its normal interval; n = dialogues where both are defined."""
    from rlhf.evaluation.metrics import mean_interval

    if [(r.dialogue, r.summary) for r in rows] != [(r.dialogue, r.summary) for r in baseline]:
        raise ValueError("paired_within: the two heads did not score the same summaries in the same order")
    ours, theirs = within_dialogue(by_dialogue(rows), against), within_dialogue(by_dialogue(baseline), against)
    diffs = [d for d in (a - b for a, b in zip(ours, theirs)) if not math.isnan(d)]
    mean, low, high = mean_interval(diffs, confidence)
    return {"mean": mean, "low": low, "high": high, "n": len(diffs)}


def ranking_report(rows: Sequence[RankedSummary], cfg: RankingConfig, confidence: float = 0.95) -> dict[str, Any]:
    """The report's ``ranking`` section: the head against ROUGE-L and against length, and the samples' spread."""
    from rlhf.evaluation.metrics import spearman

    mean = lambda values: sum(values) / len(values) if values else float("nan")  # noqa: E731
    return {"policy": cfg.policy, "head": HEAD, "samples_per_dialogue": cfg.samples, "temperature": cfg.temperature,
            "max_new_tokens": cfg.max_new_tokens, "confidence": confidence,
            "rouge_l": ranking_stats(rows, "rouge_l", confidence, cfg.seed),
            "words": ranking_stats(rows, "words", confidence, cfg.seed),
            "rouge_l_vs_words": spearman([r.rouge_l for r in rows], [r.words for r in rows]),
            "mean_rouge_l": mean([r.rouge_l for r in rows]), "mean_words": mean([r.words for r in rows]),
            "samples": [asdict(r) for r in rows]}  # for re-analysis (rm_report.json)


# ---------------------------------------------------------------- sampling and scoring (models)


def sample_and_score(cfg: RankingConfig, split: str, scorer, device) -> list[RankedSummary]:
    """``cfg.samples`` summaries of each of the first ``cfg.dialogues`` DialogSum dialogues of ``split``, sampled by
    ``cfg.policy`` (seeded, as evaluation samples), each scored by ``scorer``'s helpful head and by ROUGE-L."""
    from rlhf.data.prompts import zero_shot
    from rlhf.data.sources import dialogsum_items
    from rlhf.evaluation.metrics import rouge
    from rlhf.models.generation import GenerationSettings, generate_chat
    from rlhf.models.policies import load_policy

    items = dialogsum_items(split)
    items = items[:cfg.dialogues] if cfg.dialogues else items
    policy = load_policy("ranking", cfg.policy, device=device)
    chats = [zero_shot(item.prompt) for item in items for _ in range(cfg.samples)]
    settings = GenerationSettings(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                  batch_size=cfg.batch_size, seed=cfg.seed)
    summaries = generate_chat(policy.model, policy.tokenizer, chats, settings)
    del policy
    owners = [item for item in items for _ in range(cfg.samples)]
    scores = scorer.score_heads([item.prompt for item in owners], summaries)[HEAD].tolist()
    return [RankedSummary(item.fname, text, rouge([text], [item.summary])["rougeL"], score, len(text.split()))
            for item, text, score in zip(owners, summaries, scores)]


# ---------------------------------------------------------------- the report's table


def ranking_table(section: dict[str, Any]):
    """The markdown table of the ``ranking`` section (:class:`rlhf.evaluation.report.ReportTable`)."""
    from rlhf.evaluation.report import ReportTable, fmt, fmt_interval

    level = f"{section['confidence']:.0%}"
    rows = []
    for against, label in (("rouge_l", "ROUGE-L"), ("words", "length (words)")):
        within, pooled = section[against]["within"], section[against]["pooled"]
        rows.append([label, f"{fmt_interval(within['mean'], within['low'], within['high'])} n={within['n']}",
                     f"{fmt_interval(pooled['spearman'], pooled['low'], pooled['high'])} n={pooled['n']}"])
    return ReportTable(
        "ranking", f"Sampled summaries: {section['head']} head vs ROUGE-L (Spearman, {level} intervals)",
        ["head score against", "within a dialogue (mean)", "pooled (dialogue bootstrap)"], rows,
        f"{section['samples_per_dialogue']} summaries per dialogue sampled by `{section['policy']}` at temperature "
        f"{section['temperature']} (≤ {section['max_new_tokens']} tokens); mean ROUGE-L "
        f"{fmt(section['mean_rouge_l'])}, mean length {fmt(section['mean_words'], 1)} words; ROUGE-L against length: "
        f"Spearman {fmt(section['rouge_l_vs_words'])}. Within: n = dialogues whose scores and ROUGE-L both vary.")
