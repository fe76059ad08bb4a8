"""The reward-model report (``rlhf eval-rm``): is each head right, for the right reason, and how sure is it?

On preference pairs of one split (``test`` by default: the held-out prompts reward training never sees):

* **accuracy** per head (on the pairs labelled for it) and per source, with Wilson intervals and counts;
  the composite (weighted standardised heads, no toxicity) on every pair;
* **length control**: pairs binned by len(chosen) - len(rejected) in tokens of the model's tokenizer
  (chosen shorter / similar / chosen longer, "similar" = within ``similar_tokens``), accuracy per bin,
  next to the "longer response wins" and "shorter response wins" baselines and how often the head
  itself picks the longer response: a head that counts tokens scores like a baseline and collapses in
  the bin where length points the wrong way;
* **calibration**: the model's own P(chosen) = sigmoid(r_chosen - r_rejected) (what its Bradley-Terry
  loss trains) binned against the observed frequency, with the expected calibration error (ECE);
  every pair is counted in both orders, (p, 1) and (1 - p, 0), since "chosen" is only the label's side;
* **agreement** between heads: how often two heads prefer the same response, on all pairs;
* with ``ranking.policy``: **sampled summaries** of DialogSum dialogues ranked by the helpful head against
  ROUGE-L, within a dialogue and pooled (:mod:`reward_models.ranking`).

Outputs ``rm_report.json``, ``rm_report.md`` (tables) and ``rm_report.png`` (reliability curves and
length-binned accuracy). The maths are pure functions, tested on hand-computed cases.
"""
from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import torch

from reward_models.config import DataConfig
from reward_models.losses import pairwise_wins
from reward_models.ranking import RankingConfig, ranking_table
from reward_models.types import HEADS
from rlhf.evaluation.metrics import wilson_interval
from rlhf.core.runtime import Precision

COMPOSITE = "composite"
LENGTH_BINS = ("chosen shorter", "similar", "chosen longer")
FILES = ("rm_report.json", "rm_report.md", "rm_report.png")


@dataclass
class RMReportConfig:
    """rlhf eval-rm MODEL: accuracy per head and source, length-controlled accuracy, calibration, head agreement."""

    model: str = field(default="", metadata={"help": "reward model folder, or a reward run folder (its final/)"})
    out: str = field(default="", metadata={"help": "output folder; empty: rm_report/ next to the model folder"})
    split: Literal["train", "dev", "test", "all"] = field(
        default="test", metadata={"help": "split of the pairs (by conversation, as reward training splits them)"})
    sources: list[str] = field(default_factory=lambda: list(DataConfig().sources),
                               metadata={"help": "shipped preference sources"})
    extra_files: list[str] = field(default_factory=list,
                                   metadata={"help": "more preference files (JSONL/CSV records), split by conversation"})
    max_pairs_per_head: int = field(default=0, metadata={"help": "cap on pairs per head (quick runs); 0 = all", "range": "[0, inf)"})
    similar_tokens: int = field(
        default=5, metadata={"help": "length bins: |len(chosen) - len(rejected)| <= this many tokens is 'similar'", "range": "[0, 1000000]"})
    calibration_bins: int = field(default=10, metadata={"help": "equal-width bins of predicted P(chosen)", "range": "[1, 10000]"})
    confidence: float = field(default=0.95, metadata={"help": "level of the Wilson intervals", "range": "(0, 1)"})
    batch_size: int = field(default=64, metadata={"help": "sequences per forward pass", "range": "[1, 100000]"})
    precision: Precision = field(default="auto", metadata={"help": "bf16 autocast or fp32; auto: bf16 where native"})
    device: str = field(default="auto", metadata={"help": "auto (CUDA when present, else CPU), cpu or cuda (rlhf.core.runtime)"})
    ranking: RankingConfig = field(default_factory=RankingConfig)


# ---------------------------------------------------------------- the maths (pure functions)


def accuracy_interval(wins: torch.Tensor, confidence: float = 0.95) -> dict[str, float]:
    """{accuracy, low, high, n} of per-pair wins (1, 0.5 for a tie, 0); NaNs when there are none."""
    n = int(wins.numel())
    correct = float(wins.sum()) if n else 0.0
    low, high = wilson_interval(correct, n, confidence)
    return {"accuracy": correct / n if n else float("nan"), "low": low, "high": high, "n": n}


def length_bins(length_diff: torch.Tensor, similar_tokens: int) -> list[str]:
    """The bin of each pair from len(chosen) - len(rejected): one of :data:`LENGTH_BINS`."""
    return [LENGTH_BINS[1] if abs(d) <= similar_tokens else LENGTH_BINS[0] if d < 0 else LENGTH_BINS[2]
            for d in length_diff.tolist()]


def prefers_longer(score_diff: torch.Tensor, length_diff: torch.Tensor) -> torch.Tensor:
    """Per pair of unequal lengths: 1 if the scores favour the longer response, 0.5 on a tie, 0 else."""
    unequal = length_diff != 0
    toward_longer = score_diff[unequal] * length_diff[unequal].sign().to(score_diff.dtype)
    return pairwise_wins(toward_longer, torch.zeros_like(toward_longer))


def calibration(p_chosen: torch.Tensor, bins: int = 10) -> tuple[float, list[dict[str, float]]]:
    """(ECE, reliability rows) of predicted P(chosen), each pair counted as (p, 1) and as (1 - p, 0).

    Rows are the non-empty equal-width bins of [0, 1]: {low, high, n, predicted (mean p), observed
    (share of outcomes 1)}; ECE = sum over bins of n_bin / N * |predicted - observed|.
    """
    probs = torch.cat([p_chosen, 1 - p_chosen]).double()  # (2n,)
    outcomes = torch.cat([torch.ones_like(p_chosen), torch.zeros_like(p_chosen)]).double()  # (2n,)
    index = (probs * bins).floor().clamp(0, bins - 1).long()  # p = 1 goes in the top bin
    rows, ece = [], 0.0
    for b in range(bins):
        inside = index == b
        n = int(inside.sum())
        if n == 0:
            continue
        predicted, observed = probs[inside].mean().item(), outcomes[inside].mean().item()
        ece += n / len(probs) * abs(predicted - observed)
        rows.append({"low": b / bins, "high": (b + 1) / bins, "n": n, "predicted": predicted, "observed": observed})
    return (ece if len(probs) else float("nan")), rows


def agreement(diff_a: torch.Tensor, diff_b: torch.Tensor) -> float:
    """Share of pairs on which two heads prefer the same response (score differences of equal sign)."""
    return (diff_a.sign() == diff_b.sign()).double().mean().item() if len(diff_a) else float("nan")


# ---------------------------------------------------------------- scoring the pairs and building the report


@dataclass
class ScoredPairs:
    """Every pair of the split scored by every head (and the composite), with response lengths."""

    diff: dict[str, torch.Tensor]  # head or composite -> (pairs,) score(chosen) - score(rejected)
    labelled: dict[str, torch.Tensor]  # head or composite -> (pairs,) bool: the pair is labelled for it
    length_diff: torch.Tensor  # (pairs,) tokens of chosen - tokens of rejected (responses only, untruncated)
    sources: list[str]  # (pairs,) record source


def score_for_report(scorer, pairs: Sequence, batch_size: int) -> ScoredPairs:
    """Score chosen and rejected with a :class:`reward_models.scoring.RewardScorer` (toxicity not used)."""
    from reward_models.data import head_mask, response_tokens
    from reward_models.evaluation import score_pairs
    from reward_models.scoring import composite_reward

    chosen, rejected = score_pairs(scorer.model, scorer.encoder, pairs, batch_size, scorer.bf16)  # (pairs, heads)
    heads = scorer.heads
    cfg = scorer.config
    composite = [composite_reward({h: s[:, i] for i, h in enumerate(heads)}, cfg.weights, cfg.mean, cfg.std)
                 for s in (chosen, rejected)]
    mask = head_mask(pairs)  # (pairs, heads) in HEADS order
    diff = {h: chosen[:, i] - rejected[:, i] for i, h in enumerate(heads)} | {COMPOSITE: composite[0] - composite[1]}
    labelled = {h: mask[:, HEADS.index(h)] for h in heads} | {COMPOSITE: torch.ones(len(pairs), dtype=torch.bool)}
    tokenizer = scorer.encoder.tokenizer
    length_diff = (response_tokens(tokenizer, [p.chosen for p in pairs])
                   - response_tokens(tokenizer, [p.rejected for p in pairs]))
    return ScoredPairs(diff, labelled, length_diff, [p.source or "unknown" for p in pairs])


def build_report(scored: ScoredPairs, cfg: RMReportConfig) -> dict[str, Any]:
    """Every number of the report, as a JSON-ready dict."""
    acc = lambda wins: accuracy_interval(wins, cfg.confidence)  # noqa: E731
    heads = [h for h in scored.diff if h != COMPOSITE]
    report: dict[str, Any] = {"pairs": len(scored.sources), "confidence": cfg.confidence,
                              "similar_tokens": cfg.similar_tokens, "accuracy": {}, "accuracy_by_source": {},
                              "length": {}, "calibration": {}, "agreement": {}}
    bins_of = length_bins(scored.length_diff, cfg.similar_tokens)
    for name, diff in scored.diff.items():
        on = scored.labelled[name]
        if not on.any():
            continue
        wins, lengths = pairwise_wins(diff[on], torch.zeros_like(diff[on])), scored.length_diff[on]
        report["accuracy"][name] = acc(wins)
        for source in sorted(set(scored.sources)):
            from_source = torch.tensor([s == source for s in scored.sources])[on]
            if from_source.any():
                report["accuracy_by_source"].setdefault(source, {})[name] = acc(wins[from_source])
        labels = [b for b, keep in zip(bins_of, on.tolist()) if keep]
        zeros = torch.zeros_like(lengths)
        report["length"][name] = {
            "bins": {b: acc(wins[torch.tensor([label == b for label in labels])]) for b in LENGTH_BINS},
            "longer_wins": acc(pairwise_wins(lengths, zeros)),  # baselines: ties in length count half
            "shorter_wins": acc(pairwise_wins(-lengths, zeros)),
            "picks_longer": acc(prefers_longer(diff[on], lengths))}
        if name != COMPOSITE:  # the composite is not a trained probability
            ece, rows = calibration(torch.sigmoid(diff[on].double()), cfg.calibration_bins)
            report["calibration"][name] = {"ece": ece, "n": int(on.sum()), "bins": rows}
    for a, b in itertools.combinations(heads, 2):
        report["agreement"][f"{a}/{b}"] = {"agreement": agreement(scored.diff[a], scored.diff[b]),
                                           "n": len(scored.sources)}
    return report


# ---------------------------------------------------------------- tables, plot, files


def _cell(entry: dict[str, float] | None, with_n: bool = True) -> str:
    from rlhf.evaluation.report import fmt_interval

    if not entry or not entry["n"]:
        return "—"
    text = fmt_interval(entry["accuracy"], entry["low"], entry["high"])
    return f"{text} n={entry['n']}" if with_n else text


def report_tables(report: dict[str, Any]):
    """The markdown tables of the report (:class:`rlhf.evaluation.report.ReportTable`)."""
    from rlhf.evaluation.report import ReportTable, fmt

    level = f"{report['confidence']:.0%}"
    length = report["length"]
    accuracy = ReportTable(
        "accuracy", "Accuracy per head", ["head", "pairs", f"accuracy ({level} Wilson)", "longer wins", "shorter wins",
                                          "head picks the longer"],
        [[name, str(e["n"]), _cell(e, False), _cell(length[name]["longer_wins"], False),
          _cell(length[name]["shorter_wins"], False), _cell(length[name]["picks_longer"])]
         for name, e in report["accuracy"].items()],
        "Baselines: the longer (shorter) response always wins, ties in length count half. \"Head picks the longer\": "
        "on pairs of unequal length, how often the head scores the longer response higher. The composite is "
        "scored on every pair.")
    names = list(report["accuracy"])
    by_source = ReportTable("accuracy_by_source", "Accuracy per source", ["source", *names],
                            [[source, *(_cell(entries.get(n)) for n in names)]
                             for source, entries in report["accuracy_by_source"].items()])
    bins = ReportTable(
        "length_bins", f"Length-controlled accuracy (similar: within {report['similar_tokens']} tokens)",
        ["head", *LENGTH_BINS], [[name, *(_cell(e["bins"][b]) for b in LENGTH_BINS)] for name, e in length.items()],
        "Bins by len(chosen) - len(rejected) in tokens of the model's tokenizer (responses only).")
    calibration_table = ReportTable(
        "calibration", "Calibration of P(chosen) = sigmoid(r_chosen - r_rejected)", ["head", "pairs", "ECE"],
        [[name, str(e["n"]), fmt(e["ece"])] for name, e in report["calibration"].items()],
        "Each pair counted in both orders; reliability curves in rm_report.png.")
    agreement_table = ReportTable("agreement", "Agreement between heads (all pairs)", ["heads", "pairs", "agreement"],
                                  [[pair, str(e["n"]), fmt(e["agreement"])] for pair, e in report["agreement"].items()])
    ranking = [ranking_table(report["ranking"])] if "ranking" in report else []
    return [accuracy, by_source, bins, calibration_table, agreement_table, *ranking]


def plot_report(report: dict[str, Any], out: Path) -> Path:
    """Two panels: reliability curves per head, and accuracy per length bin per head."""
    from rlhf.evaluation.report import _pyplot

    plt = _pyplot()
    fig, (reliability, by_length) = plt.subplots(1, 2, figsize=(11, 4.2))
    reliability.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfectly calibrated")
    for name, entry in report["calibration"].items():
        rows = entry["bins"]
        reliability.plot([r["predicted"] for r in rows], [r["observed"] for r in rows], marker="o",
                         label=f"{name} (ECE {entry['ece']:.3f})")
    reliability.set(xlabel="predicted P(preferred)", ylabel="observed frequency", xlim=(0, 1), ylim=(0, 1),
                    title="calibration")
    reliability.legend(fontsize=8)
    names = list(report["length"])
    width = 0.8 / max(len(names), 1)
    for k, name in enumerate(names):
        values = [report["length"][name]["bins"][b]["accuracy"] for b in LENGTH_BINS]
        xs = [i + (k - (len(names) - 1) / 2) * width for i in range(len(LENGTH_BINS))]
        by_length.bar(xs, [0 if math.isnan(v) else v for v in values], width, label=name)
    by_length.axhline(0.5, color="grey", linestyle="--", linewidth=1)
    by_length.set_xticks(range(len(LENGTH_BINS)), LENGTH_BINS)
    by_length.set(ylabel="accuracy", ylim=(0, 1), title=f"accuracy by length (similar: ±{report['similar_tokens']} tokens)")
    by_length.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def write_report(report: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """rm_report.json, rm_report.md and rm_report.png in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path, png_path = (out_dir / name for name in FILES)
    json_path.write_text(json.dumps(json_ready(report), indent=2), encoding="utf-8")
    header = (f"# Reward-model report\n\nModel: `{report.get('model', '?')}`; split `{report.get('split', '?')}`, "
              f"{report['pairs']} pairs ({', '.join(report.get('sources', []))}).\n\n![report](rm_report.png)\n\n")
    md_path.write_text(header + "\n".join(t.markdown() for t in report_tables(report)), encoding="utf-8")
    plot_report(report, png_path)
    return [json_path, md_path, png_path]


def json_ready(value: Any) -> Any:
    """NaN (an empty bin) as null: strict JSON readers reject NaN."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_ready(v) for v in value]
    return None if isinstance(value, float) and math.isnan(value) else value


def log_report(logger, scorer, pairs: Sequence, out_dir: str | Path, step: int) -> list[Path]:
    """The report of ``pairs`` written to ``out_dir`` and sent through a :class:`rlhf.core.tracking.MetricsLogger`:
    each table as ``rm_report/<name>`` (W&B table, TensorBoard text, ``rm_report_<name>.jsonl``) and the
    reliability plot as an image. The reward stage calls it for the gold and the proxy run alike."""
    cfg = RMReportConfig()
    report = {"model": "this run", "split": "test", "sources": sorted({p.source or "unknown" for p in pairs})}
    report |= build_report(score_for_report(scorer, pairs, scorer.batch_size), cfg)
    files = write_report(report, out_dir)
    for table in report_tables(report):
        logger.log_table(f"rm_report/{table.name}", table.columns, table.rows, step=step)
    logger.log_images([f for f in files if f.suffix == ".png"], step=step)
    return files
