"""The evaluation report: ``report.md``, PNG plots and the tables that also go to W&B.

Inputs are files, so a report can be rebuilt at any time: the evaluation's ``results.json`` (aggregated
numbers, see :mod:`rlhf.evaluation.evaluate`), its per-sample ``samples.jsonl``, and the ``metrics.jsonl`` /
``summary.json`` of each training stage (SFT, reward model, PPO) for the training curves.

Plots (matplotlib, Agg backend, no display needed): training curves per stage, a before/after bar chart per
reward head (proxy, and gold when a gold judge is set), reward and KL distributions, ROUGE per policy, and
proxy and gold score vs sqrt(KL) (best-of-n; other methods can add points to the same axes). Model outputs
are escaped before they enter markdown (HTML entities for ``< > & | * _ ` [ ]``; newlines as ``<br>``), so a
generation can never break a table or inject markup.
"""
from __future__ import annotations

import html
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from rlhf.data.records import DIMENSIONS as HEADS  # the reward model's heads
from rlhf.core.tracking import read_metrics

ALL = "all"
_MD_SPECIALS = {"|": "&#124;", "*": "&#42;", "`": "&#96;", "[": "&#91;", "]": "&#93;",
                "\\": "&#92;", "~": "&#126;"}


# ---------------------------------------------------------------- escaping and formatting


def _clip(text: str, max_chars: int) -> str:
    return text if len(text) <= max_chars else text[: max_chars - 1].rstrip() + "…"


def _clip_middle(text: str, max_chars: int) -> str:
    """Keep the start and the end (a long prompt's instruction and its last question)."""
    if len(text) <= max_chars:
        return text
    head = max_chars // 3
    return text[:head].rstrip() + " … " + text[len(text) - (max_chars - head - 3):].lstrip()


def escape_cell(text: Any) -> str:
    """Text safe inside a markdown table cell: HTML-escaped, markdown specials as entities, newlines as <br>."""
    text = html.escape(str(text), quote=False)
    text = "".join(_MD_SPECIALS.get(ch, ch) for ch in text)
    text = re.sub(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])", "&#95;", text)  # emphasis marks; snake_case stays readable
    return re.sub(r"\r\n|\r|\n", "<br>", text)


def fmt(value: Any, digits: int = 3) -> str:
    """A number for a table: fixed digits; missing or NaN as an em dash."""
    if isinstance(value, (bool, int)):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.{digits}f}"
    return "—"


def fmt_interval(mean: Any, low: Any, high: Any, digits: int = 3) -> str:
    if not all(isinstance(x, (int, float)) and math.isfinite(x) for x in (low, high)):
        return fmt(mean, digits)
    return f"{fmt(mean, digits)} ({fmt(low, digits)}, {fmt(high, digits)})"


@dataclass
class ReportTable:
    name: str  # W&B table name and anchor
    title: str
    columns: list[str]
    rows: list[list[str]]  # formatted cells, raw text (W&B gets them as they are; markdown() escapes them)
    note: str = ""  # markdown below the table

    def markdown(self) -> str:
        head = f"| {' | '.join(escape_cell(c) for c in self.columns)} |\n|{'|'.join(['---'] * len(self.columns))}|\n"
        body = "".join(f"| {' | '.join(escape_cell(c) for c in row)} |\n" for row in self.rows)
        note = f"\n{self.note}\n" if self.note else ""
        return f"### {self.title}\n\n{head}{body}{note}"


# ---------------------------------------------------------------- reading results


def variant_key(policy: str, shots: int, decoding: str) -> str:
    return f"{policy}/{shots}-shot/{decoding}"


def _variants(results: dict[str, Any]) -> list[dict[str, Any]]:
    return results.get("variants", [])


def _metrics(results: dict[str, Any], key: str, group: str = ALL) -> dict[str, Any]:
    return results.get("metrics", {}).get(key, {}).get(group, {})


def _main_variant(results: dict[str, Any], policy: str, decoding: str, fallback: bool = False) -> str | None:
    """The policy's variant with the fewest shots at ``decoding`` (its plain zero-shot run).

    With ``fallback``, a policy run only with another decoding gives that run (plots label it).
    """
    plain = [v for v in _variants(results) if not v.get("best_of")]  # best-of-n runs are not the policy itself
    found = [v for v in plain if v["policy"] == policy and v["decoding"] == decoding]
    if not found and fallback:
        found = [v for v in plain if v["policy"] == policy]
    return min(found, key=lambda v: v["shots"])["key"] if found else None


def _label(results: dict[str, Any], key: str, decoding: str) -> str:
    """A policy's name in plots, with its decoding when it differs from the one plotted."""
    v = next(v for v in _variants(results) if v["key"] == key)
    return v["policy"] if v["decoding"] == decoding else f"{v['policy']} ({v['decoding']})"


def _paired_verdict(m: dict[str, Any], key: str, better: str, level: str) -> str:
    """'not worse' unless the paired difference's interval lies wholly on the bad side."""
    delta, low, high = m.get(f"{key}_delta"), m.get(f"{key}_delta_low"), m.get(f"{key}_delta_high")
    if delta is None:
        return "(no paired difference)."
    clearly_worse = (high is not None and high < 0) if better == "higher" else (low is not None and low > 0)
    return (f"difference {fmt(delta, 4)} ({level} interval [{fmt(low, 4)}, {fmt(high, 4)}]): "
            + ("**worse**." if clearly_worse else "not worse."))


def headline(results: dict[str, Any]) -> dict[str, Any]:
    """Candidate (PPO) vs baseline (SFT) on held-out prompts, and plain-language verdict lines."""
    cand, base = results.get("candidate", "ppo"), results.get("baseline", "sft")
    decoding = results.get("headline_decoding", "sampled")
    ck, bk = _main_variant(results, cand, decoding), _main_variant(results, base, decoding)
    out: dict[str, Any] = {"candidate": cand, "baseline": base, "decoding": decoding, "verdict": []}
    if ck is None or bk is None:
        out["verdict"].append(f"No headline: the evaluation has no {decoding} run of both {cand!r} and {base!r}.")
        return out
    c, b = _metrics(results, ck), _metrics(results, bk)
    out.update({"candidate_variant": ck, "baseline_variant": bk})
    for key in ("reward/composite", *[f"reward/{h}" for h in HEADS], "gold/composite", *[f"gold/{h}" for h in HEADS],
                "toxicity", "kl/k1", "kl/k3"):
        if key in c:
            out[f"{cand}/{key}"] = c[key]
        if key in b:
            out[f"{base}/{key}"] = b[key]
    for key in ("win_rate", "win_rate/low", "win_rate/high", "gold/win_rate", "gold/win_rate/low",
                "gold/win_rate/high", *[f"{k}_delta{s}" for k in ("reward/composite", "gold/composite",
                                                                   "reward/harmless", "toxicity")
                                        for s in ("", "_low", "_high")]):
        if key in c:
            out[key] = c[key]
    verdict = out["verdict"]
    level = f"{round(100 * results.get('confidence', 0.95))} %"
    if "reward/composite" not in c:
        verdict.append("No reward model was configured, so rewards and win-rates are not measured.")
        return out
    delta, low, high = (c.get(f"reward/composite_delta{s}") for s in ("", "_low", "_high"))
    n = int(c.get("n", 0))
    line = (f"Composite reward on {n} held-out prompts ({decoding}): {cand} {fmt(c['reward/composite'])} vs "
            f"{base} {fmt(b.get('reward/composite'))}, difference {fmt(delta)} ({level} interval "
            f"[{fmt(low)}, {fmt(high)}]).")
    if delta is None or not math.isfinite(delta):
        verdict.append(line)
    elif delta > 0 and low is not None and math.isfinite(low) and low > 0:
        verdict.append(f"**{cand.upper()} beats {base.upper()}.** {line}")
    elif delta > 0:
        verdict.append(f"**{cand.upper()} is above {base.upper()}, but not clearly**: the interval of the "
                       f"difference includes 0. {line}")
    else:
        verdict.append(f"**{cand.upper()} does not beat {base.upper()}.** {line}")
    if "win_rate" in c:
        verdict.append(f"Win-rate of {cand} against {base}, judged by the reward model (ties count half): "
                       f"{fmt_interval(c['win_rate'], c.get('win_rate/low'), c.get('win_rate/high'))} "
                       f"({int(c.get('win_rate/wins', 0))} wins, {int(c.get('win_rate/ties', 0))} ties, "
                       f"{int(c.get('win_rate/losses', 0))} losses).")
    verdict += gold_lines(c, b, cand, base, level, n)
    verdict += judges_agreement_lines(results.get("judges_agreement") or {})
    agreement = judges_agree(candidate_deltas(results, c, cand))
    agreement["n"] = delta_sizes(results, c, cand)
    out["judges_agree"] = agreement
    verdict.append(agreement_line(agreement, cand, base, level, c.get("length"), b.get("length")))
    if "kl/k1" in c:
        described = results.get("policies", {}).get(cand, {})
        reference = described.get("reference") or "its reference"
        if reference == "adapter disabled":
            base_model = described.get("base")
            reference = f"{cand} with its adapter disabled" + (f", i.e. {base_model}" if base_model else "")
        verdict.append(f"KL cost: KL({cand} ‖ reference) on {cand}'s own samples = {fmt(c['kl/k1'])} nats per "
                       f"response (k1; k3 = {fmt(c.get('kl/k3'))}); reference: {reference}.")
    else:
        verdict.append(f"KL of {cand} to its reference was not measured (needs an adapter policy and sampled "
                       f"decoding at temperature 1).")
    for key, name, better in (("reward/harmless", "Harmless head", "higher"),
                              ("toxicity", "Toxicity (Detoxify)", "lower")):
        if key in c and key in b:
            verdict.append(f"{name}: {cand} {fmt(c[key], 4)} vs {base} {fmt(b[key], 4)}, "
                           + _paired_verdict(c, key, better, level))
        elif key == "toxicity":
            verdict.append("Toxicity: unavailable (no Detoxify checkpoint is configured for the reward model).")
    return out


NO_GOLD = ("The only judge is the proxy reward model that the policies were optimised against, so a rise in its "
           "score can be reward hacking; set gold.model to a second reward model no stage trained on to tell.")


def judges_agreement_lines(agreement: dict[str, Any]) -> list[str]:
    """One line: how often proxy and gold order the same test pairs alike, per head (nothing when not measured)."""
    if not agreement:
        return []
    cells = [f"{h} {_pairs_cell(agreement[h], 'agreement')}" for h in HEADS if h in agreement]
    return ["Proxy and gold order the same held-out test pairs alike on: " + "; ".join(cells)
            + " (share of pairs, 95 % interval; 0.5 is chance)."]


def gold_lines(c: dict[str, Any], b: dict[str, Any], cand: str, base: str, level: str, n: int) -> list[str]:
    """The headline judged by the gold reward model (never trained against), or the plain warning without one."""
    if "gold/composite" not in c:
        return [NO_GOLD]
    delta, low, high = (c.get(f"gold/composite_delta{s}") for s in ("", "_low", "_high"))
    clear = (isinstance(low, (int, float)) and low > 0) or (isinstance(high, (int, float)) and high < 0)
    direction = "above" if isinstance(delta, (int, float)) and delta > 0 else "below"
    lines = [f"**Gold judge** (a reward model no stage trained against): {cand} {fmt(c['gold/composite'])} vs {base} "
             f"{fmt(b.get('gold/composite'))} on {n} prompts, difference {fmt(delta)} ({level} interval "
             f"[{fmt(low)}, {fmt(high)}]): {cand} is {direction} {base}"
             + ("." if clear else ", but the interval includes 0.")]
    if "gold/win_rate" in c:
        lines.append(f"Win-rate of {cand} against {base} judged by the gold: "
                     f"{fmt_interval(c['gold/win_rate'], c.get('gold/win_rate/low'), c.get('gold/win_rate/high'))}.")
    return lines


JUDGE_FREE = {"pref/harmless/accuracy": "preference accuracy (harmless, HH)",
              "pref/honest/accuracy": "preference accuracy (honest, TruthfulQA)",
              "pref/helpful/accuracy": "preference accuracy (helpful, DialogSum)",
              "pref/harmless/margin": "log-prob margin shift (harmless)",
              "pref/honest/margin": "log-prob margin shift (honest)",
              "pref/helpful/margin": "log-prob margin shift (helpful)",
              "tqa/mc1": "TruthfulQA MC1", "tqa/mc2": "TruthfulQA MC2"}  # rlhf.evaluation.likelihood's metrics, report names


def _sign(mean: Any, low: Any, high: Any) -> int:
    """+1 / -1 when the interval lies wholly above / below 0, else 0 (includes 0, or unknown)."""
    ok = all(isinstance(x, (int, float)) and math.isfinite(x) for x in (mean, low, high))
    return 0 if not ok else 1 if low > 0 else -1 if high < 0 else 0


# The headline's names: the judge-free metrics and ROUGE-L, paired per DialogSum prompt on the headline's decoding.
HEADLINE_METRICS = {**JUDGE_FREE, "rouge/rougeL": "ROUGE-L (DialogSum)"}


def candidate_deltas(results: dict[str, Any], c: dict[str, Any], cand: str) -> dict[str, tuple]:
    """The candidate's paired differences to the baseline (mean, low, high) per judge: "proxy", "gold", each
    judge-free metric present (``results["judge_free"]``) and ROUGE-L."""
    deltas = {name: tuple(c.get(f"{key}_delta{s}") for s in ("", "_low", "_high"))
              for name, key in (("proxy", "reward/composite"), ("gold", "gold/composite"),
                                ("rouge/rougeL", "rouge/rougeL")) if f"{key}_delta" in c}
    mine = (results.get("judge_free") or {}).get(cand, {})
    deltas.update({key: tuple(mine.get(f"{key}_delta{s}") for s in ("", "_low", "_high"))
                   for key in JUDGE_FREE if f"{key}_delta" in mine})
    return deltas


def delta_sizes(results: dict[str, Any], c: dict[str, Any], cand: str) -> dict[str, int]:
    """n behind each of :func:`candidate_deltas`: prompts (proxy, gold), DialogSum prompts (ROUGE-L), pairs or
    questions (judge-free)."""
    mine = (results.get("judge_free") or {}).get(cand, {})
    sizes = {"proxy": c.get("n"), "gold": c.get("n"), "rouge/rougeL": c.get("rouge/rougeL_delta_n"),
             **{key: mine.get(f"{key}/n") for key in JUDGE_FREE}}
    return {key: int(n) for key, n in sizes.items() if isinstance(n, (int, float))}


def judges_agree(deltas: dict[str, tuple]) -> dict[str, Any]:
    """The headline's rule: a gain (loss) is claimed only where the gold and at least one judge-free metric
    both have intervals wholly above (below) 0. ``deltas``: judge -> (mean, low, high) of the paired
    difference to the baseline ("proxy", "gold", judge-free keys). Returns ``claim`` ("gain", "loss" or
    "none"), the judge-free metrics that ``agree`` with the gold, and the judges that ``disagree`` (sign
    clearly opposite to the gold's, or unclear where the gold is clear; all unclear/opposite ones when
    the gold itself is unclear)."""
    signs = {k: _sign(*v) for k, v in deltas.items()}
    gold = signs.get("gold", 0)
    free = {k: s for k, s in signs.items() if k not in ("proxy", "gold")}
    agree = [k for k, s in free.items() if gold != 0 and s == gold]
    claim = "none" if not agree else "gain" if gold > 0 else "loss"
    disagree = [k for k, s in signs.items() if k != "gold" and (s != gold or gold == 0)]
    return {"claim": claim, "agree": agree, "disagree": disagree, "signs": signs,
            "deltas": {k: list(v) for k, v in deltas.items()}}


def agreement_line(agreement: dict[str, Any], cand: str, base: str, level: str, length: Any = None,
                   base_length: Any = None) -> str:
    """The headline's verdict across judges, in one line (the rule: :func:`judges_agree`)."""
    def named(key: str) -> str:
        mean, low, high = agreement["deltas"][key]
        n = agreement.get("n", {}).get(key)
        return f"{HEADLINE_METRICS.get(key, key)} {fmt(mean)} [{fmt(low)}, {fmt(high)}]" + (f", n={n}" if n else "")

    lengths = f" Response length (tokens): {cand} {fmt(length, 1)} vs {base} {fmt(base_length, 1)}."
    if "gold" not in agreement["deltas"]:
        return f"**Judges**: no gold judge, so no gain is claimed (the rule needs the gold).{lengths}"
    if agreement["claim"] != "none":
        word = "gain" if agreement["claim"] == "gain" else "loss"
        return (f"**Judges agree: {word} shown** ({level} intervals exclude 0): {named('gold')} and "
                + "; ".join(named(k) for k in agreement["agree"])
                + (f". Disagreeing: {'; '.join(named(k) for k in agreement['disagree'])}." if agreement["disagree"]
                   else ".") + lengths)
    if not any(k not in ("proxy", "gold") for k in agreement["deltas"]):
        return f"**No gain shown**: no judge-free metric was measured, so the gold alone claims nothing.{lengths}"
    listed = "; ".join(named(k) for k in agreement["deltas"])
    return (f"**No gain shown**: the gold and the judge-free metrics do not agree with intervals excluding 0 "
            f"(paired differences {cand} − {base}: {listed}).{lengths}")


def diagnose(head: dict[str, Any], ppo_summary: dict[str, Any] | None) -> list[str]:
    """When the candidate does not clearly beat the baseline: what the numbers suggest, in plain words."""
    delta, low = head.get("reward/composite_delta"), head.get("reward/composite_delta_low")
    cand = head.get("candidate", "ppo")
    if delta is None or (low is not None and low > 0):
        return []
    reasons = []
    kl = head.get(f"{cand}/kl/k1")
    if kl is not None and kl < 1.0:
        reasons.append(f"{cand} stayed close to its start (KL {fmt(kl)} nats per response): too few RL steps, "
                       "too small a learning rate or too strong a KL penalty to change its answers much.")
    first, last = (ppo_summary or {}).get("reward/composite_first"), (ppo_summary or {}).get("reward/composite_last")
    if isinstance(first, (int, float)) and isinstance(last, (int, float)):
        if last > first:
            reasons.append(f"{cand}'s training reward rose ({fmt(first)} in the first quarter of steps -> "
                           f"{fmt(last)} in the last), but the gain did not carry over clearly to these held-out "
                           "prompts (or is within the noise of this many prompts).")
        else:
            reasons.append(f"{cand}'s own training reward did not rise ({fmt(first)} in the first quarter of steps -> "
                           f"{fmt(last)} in the last): the run was too short or its settings did not let it learn.")
    return reasons


# ---------------------------------------------------------------- tables


def _variant_label(v: dict[str, Any], all_sources: Sequence[str] = ()) -> str:
    """``sft (0-shot, sampled)``; a variant run on only some sources names them."""
    sources = v.get("sources") or list(all_sources)
    only = f"; {', '.join(sources)} only" if all_sources and list(sources) != list(all_sources) else ""
    best_of = f", best-of-{v['best_of']}" if v.get("best_of") else ""
    return f"{v['policy']} ({v['shots']}-shot, {v['decoding']}{best_of}{only})"


def overview_table(results: dict[str, Any]) -> ReportTable:
    base = results.get("baseline", "sft")
    columns = ["policy", "composite (CI)", *HEADS, "toxicity", "KL k1", "KL k3", f"win-rate vs {base} (CI)",
               "length", "EOS rate", "distinct-1", "distinct-2", "refusals"]
    rows = []
    for v in _variants(results):
        m = _metrics(results, v["key"])
        rows.append([_variant_label(v, results.get("sources", [])),
                     fmt_interval(*(m.get(f"reward/composite{s}") for s in ("", "_low", "_high"))),
                     *[fmt(m.get(f"reward/{h}")) for h in HEADS], fmt(m.get("toxicity"), 4),
                     fmt(m.get("kl/k1")), fmt(m.get("kl/k3")),
                     fmt_interval(m.get("win_rate"), m.get("win_rate/low"), m.get("win_rate/high")),
                     fmt(m.get("length"), 1), fmt(m.get("eos_rate"), 2), fmt(m.get("distinct/1")),
                     fmt(m.get("distinct/2")), fmt(m.get("refusal_rate"), 2)])
    return ReportTable("eval/overview", "All variants, all sources", columns, rows,
                       note="KL: nats per response to the policy's reference (adapter disabled), on sampled "
                            "decoding at temperature 1 only. Refusals: share of responses with a refusal phrase "
                            "(rlhf.evaluation.metrics.is_refusal). Win-rates are paired per prompt against the "
                            f"{base} run with the same decoding.")


def rouge_table(results: dict[str, Any]) -> ReportTable:
    columns = ["policy", "ROUGE-1", "ROUGE-2", "ROUGE-L", "BLEU (DialogSum)", "BLEU (TruthfulQA)"]
    rows = []
    order = sorted(_variants(results), key=lambda v: (v["decoding"] != "greedy", v["decoding"]))
    for v in order:
        d, t = _metrics(results, v["key"], "dialogsum"), _metrics(results, v["key"], "truthfulqa")
        if not d and not t:
            continue
        rows.append([_variant_label(v), fmt(d.get("rouge/rouge1")), fmt(d.get("rouge/rouge2")),
                     fmt(d.get("rouge/rougeL")), fmt(d.get("bleu")), fmt(t.get("bleu"))])
    n = _metrics(results, order[0]["key"], "dialogsum").get("n") if order else None
    signature = next((m["bleu_signature"] for v in order for m in results.get("metrics", {}).get(v["key"], {}).values()
                      if isinstance(m, dict) and "bleu_signature" in m), None)
    return ReportTable("eval/rouge", "Reference overlap: DialogSum summaries (ROUGE F1, BLEU) and TruthfulQA "
                       "answers (BLEU)", columns, rows,
                       note=f"On {fmt(n)} held-out DialogSum dialogues; fractions in [0, 1]."
                       + (f" BLEU: sacreBLEU, signature `{signature}`." if signature else ""))


def per_source_table(results: dict[str, Any]) -> ReportTable:
    sources = results.get("sources", [])
    columns = ["policy", *[f"{s} composite" for s in sources], *[f"{s} win-rate" for s in sources]]
    rows = []
    for v in _variants(results):
        per = [_metrics(results, v["key"], s) for s in sources]
        rows.append([_variant_label(v), *[fmt(m.get("reward/composite")) for m in per],
                     *[fmt_interval(m.get("win_rate"), m.get("win_rate/low"), m.get("win_rate/high")) for m in per]])
    return ReportTable("eval/per_source", "Composite reward and win-rate per source", columns, rows)


def examples_table(results: dict[str, Any], records: Sequence[dict[str, Any]], per_source: int,
                   max_chars: int = 400) -> ReportTable:
    """The same prompts answered by each policy (headline decoding, fewest shots), side by side."""
    decoding = results.get("headline_decoding", "sampled")
    policies = list(dict.fromkeys(v["policy"] for v in _variants(results)))
    keys = {p: _main_variant(results, p, decoding, fallback=True) for p in policies}
    by_key = {(r["variant"], r["source"], r["id"]): r for r in records}
    columns = ["source", "prompt", "reference", *[_label(results, keys[p], decoding) for p in policies]]
    rows = []
    for source in results.get("sources", []):
        ids = list(dict.fromkeys(r["id"] for r in records if r["source"] == source))[:per_source]
        for item_id in ids:
            answers = [by_key.get((keys[p], source, item_id)) for p in policies]
            first = next((a for a in answers if a is not None), None)
            if first is None:
                continue
            cells = []
            for a in answers:
                if a is None:
                    cells.append("—")
                    continue
                score = f"\n(reward {fmt(a['reward/composite'])})" if "reward/composite" in a else ""
                cells.append(_clip(a["response"] or "(empty)", max_chars) + score)
            reference = first["references"][0] if first.get("references") else "—"
            rows.append([source, _clip_middle(first["prompt"], max_chars), _clip(reference, max_chars), *cells])
    return ReportTable("eval/examples", f"Example generations ({decoding}, same prompts)", columns, rows)


def _read_summary(run_dir: str | None) -> dict[str, Any] | None:
    path = Path(run_dir) / "summary.json" if run_dir else None
    return json.loads(path.read_text(encoding="utf-8")) if path is not None and path.is_file() else None


def summary_tables(training_runs: dict[str, str]) -> list[ReportTable]:
    """Each training stage's ``summary.json`` numbers as a two-column table."""
    tables = []
    for stage, run_dir in training_runs.items():
        path = Path(run_dir) / "summary.json"
        if not path.is_file():
            continue
        summary = json.loads(path.read_text(encoding="utf-8"))
        rows = [[k, fmt(v, 4) if isinstance(v, (int, float)) else _clip(str(v), 120)]
                for k, v in summary.items() if isinstance(v, (int, float, str, bool))]
        title = f"{stage}: final numbers ({escape_cell(path)})"
        tables.append(ReportTable(f"train/{stage}", title, ["key", "value"], rows))
    return tables


def _accuracy_cell(value: Any) -> str:
    return fmt(value) if isinstance(value, (int, float)) else "unknown"


def judges_table(results: dict[str, Any]) -> ReportTable:
    """Each reward model judging here: folder, role, and held-out test accuracy per head (from its run)."""
    rows = []
    for name, judge in (results.get("judges") or {}).items():
        if judge:
            accuracy = judge.get("test_accuracy") or {}
            rows.append([name, judge.get("path", ""), judge.get("role", ""),
                         *[_accuracy_cell(accuracy.get(h)) for h in HEADS]])
    agreement = results.get("judges_agreement") or {}
    if agreement:  # both judges on the same test pairs: how often they order a pair alike, and each one's accuracy
        for key, label in (("agreement", "proxy and gold agree"), ("proxy_accuracy", "proxy, same pairs"),
                           ("gold_accuracy", "gold, same pairs")):
            rows.append([label, "", "", *[_pairs_cell(agreement.get(h), key) for h in HEADS]])
    return ReportTable("eval/judges", "The judges: proxy (optimised against) and gold (only judges)",
                       ["judge", "model", "role", *[f"test accuracy {h}" for h in HEADS]], rows,
                       note="Pairwise accuracy on the held-out test split, read from each reward run's summary.json; "
                            "unknown where the run did not record it. The last rows score the same test pairs with "
                            "both judges (gold.agreement_pairs per head): the share they order alike and each one's "
                            "accuracy there, with 95 % intervals and n. A gold that agrees with the proxy little more "
                            "than chance cannot confirm the proxy's gains; one that always agrees adds nothing.")


def _pairs_cell(entry: dict[str, Any] | None, key: str) -> str:
    if not entry:
        return "–"
    low, high = entry[f"{key}_interval"]
    return f"{fmt_interval(entry[key], low, high)}, n={entry['n']}"


def _ci(m: dict[str, Any], key: str) -> str:
    return fmt_interval(m.get(key), m.get(f"{key}_low"), m.get(f"{key}_high"))


def judged_table(results: dict[str, Any]) -> ReportTable:
    """Proxy and gold side by side per variant: composite and heads (mean, CI), n, paired difference and win-rate."""
    base = results.get("baseline", "sft")
    columns = ["policy", "judge", "n", "composite (CI)", *[f"{h} (CI)" for h in HEADS],
               f"composite − {base} (CI, paired)", f"win-rate vs {base} (CI)"]
    rows = []
    for v in _variants(results):
        m = _metrics(results, v["key"])
        for judge, prefix, win in (("proxy", "reward", "win_rate"), ("gold", "gold", "gold/win_rate")):
            if f"{prefix}/composite" in m:
                rows.append([_variant_label(v, results.get("sources", [])), judge, fmt(m.get("n")),
                             _ci(m, f"{prefix}/composite"), *[_ci(m, f"{prefix}/{h}") for h in HEADS],
                             fmt_interval(*(m.get(f"{prefix}/composite_delta{s}") for s in ("", "_low", "_high"))),
                             fmt_interval(m.get(win), m.get(f"{win}/low"), m.get(f"{win}/high"))])
    level = f"{round(100 * results.get('confidence', 0.95))} %"
    return ReportTable("eval/judged", "Proxy and gold judges side by side (all sources)", columns, rows,
                       note=f"Means with {level} intervals; differences and win-rates are paired per prompt against "
                            f"the {base} run with the same decoding. Each judge's scores are on its own scale "
                            "(composite: its heads standardised on its own dev responses).")


def best_of_n_table(results: dict[str, Any]) -> ReportTable:
    """Per n: analytic KL, proxy and gold composite (CI), their paired difference to the baseline, gold win-rate."""
    base = results.get("baseline", "sft")
    columns = ["policy", "n", "KL (nats)", "√KL", "proxy composite (CI)", f"proxy − {base} (CI)",
               "gold composite (CI)", f"gold − {base} (CI)", f"gold win-rate vs {base} (CI)"]
    rows, notes = [], []
    for group in results.get("best_of_n") or []:
        for r in group["per_n"]:
            rows.append([group["policy"], str(r["n"]), fmt(r["kl"]), fmt(math.sqrt(r["kl"])),
                         _ci(r, "reward/composite"),
                         fmt_interval(*(r.get(f"reward/composite_delta{s}") for s in ("", "_low", "_high"))),
                         _ci(r, "gold/composite"),
                         fmt_interval(*(r.get(f"gold/composite_delta{s}") for s in ("", "_low", "_high"))),
                         fmt_interval(r.get("gold/win_rate"), r.get("gold/win_rate/low"), r.get("gold/win_rate/high"))])
        notes.append(f"{group['policy']}: {group['samples_per_prompt']} samples drawn once per prompt "
                     f"({group['shots']}-shot, {group['decoding']}); each n keeps the proxy's favourite among the "
                     "first n of them, so the n's reuse the same samples (a draw of its own: best-of-1 is not the "
                     "plain sampled run).")
    return ReportTable("eval/best_of_n", "Best-of-n: keep the proxy's favourite of n samples", columns, rows,
                       note=" ".join(notes) + " KL = log n − (n−1)/n (analytic).")


def judge_free_table(results: dict[str, Any]) -> ReportTable:
    """Per policy: each judge-free metric (mean, CI, n) and its paired difference to the baseline, beside the
    policy's response length (sampled, zero-shot; else its first run)."""
    base = results.get("baseline", "sft")
    table = results.get("judge_free") or {}
    keys = [k for k in JUDGE_FREE if any(k in m for m in table.values())]
    columns = ["policy", "length", *[f"{JUDGE_FREE[k]} (CI; n)" for k in keys],
               *[f"{JUDGE_FREE[k]} − {base} (CI)" for k in keys]]
    rows = []
    for policy, m in table.items():
        variant = _main_variant(results, policy, "sampled", fallback=True)
        length = _metrics(results, variant).get("length") if variant else None
        rows.append([policy, fmt(length, 1),
                     *[f"{_ci(m, k)}; {fmt(m.get(f'{k}/n'))}" if k in m else "—" for k in keys],
                     *[fmt_interval(*(m.get(f"{k}_delta{s}") for s in ("", "_low", "_high"))) for k in keys]])
    level = f"{round(100 * results.get('confidence', 0.95))} %"
    return ReportTable("eval/judge_free", "Judge-free metrics (no reward model): the policies' own log-probs",
                       columns, rows,
                       note=f"Means with {level} intervals (Wilson's for preference accuracy and MC1, which are "
                            "shares; normal for the rest and for the paired differences), n pairs or questions of the "
                            f"{results.get('split', 'test')} split. Preference accuracy: share of pairs where "
                            "log π(chosen) − log π(rejected) exceeds the reference's (adapter disabled / explicit "
                            "reference; a full model without one is its own: every pair a tie, counted 0.5). "
                            f"Margin: log π(chosen) − log π(rejected) in nats; its difference to {base} is the shift. "
                            "MC1/MC2: TruthfulQA's multiple-choice scoring (rlhf.evaluation.likelihood). Differences "
                            "are paired on the same pairs/questions.")


def build_tables(results: dict[str, Any], records: Sequence[dict[str, Any]],
                 examples_per_source: int = 2) -> list[ReportTable]:
    tables = [overview_table(results)]
    if any((results.get("judges") or {}).values()):
        tables.append(judges_table(results))
    if any("gold/composite" in m.get(ALL, {}) for m in results.get("metrics", {}).values()):
        tables.append(judged_table(results))
    if results.get("best_of_n"):
        tables.append(best_of_n_table(results))
    if results.get("judge_free"):
        tables.append(judge_free_table(results))
    return tables + [rouge_table(results), per_source_table(results),
                     examples_table(results, records, examples_per_source)]


# ---------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: works without a display, in tests and on servers
    import matplotlib.pyplot as plt

    return plt


def _series(records: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of one key; a resumed run logs some steps twice: the last record of a step wins."""
    by_step: dict[Any, float] = {}
    for i, r in enumerate(records):
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            by_step[r.get("step", i)] = float(v)
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def _moving_average(values: Sequence[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


@dataclass
class Panel:
    title: str
    select: Callable[[str], bool]  # which metric keys go in this panel
    ylabel: str = ""


# Which logged keys each stage's curves show; matched loosely so stage authors can name keys their way.
STAGE_PANELS: dict[str, list[Panel]] = {
    "sft": [Panel("SFT loss", lambda k: "loss" in k and "grad" not in k, "loss")],
    "reward": [Panel("Reward model dev accuracy per head", lambda k: "acc" in k and ("dev" in k or "eval" in k),
                     "accuracy"),
               Panel("Reward model loss", lambda k: "loss" in k and "grad" not in k, "loss")],
    "ppo": [Panel("RL composite reward", lambda k: k == "reward/composite", "reward"),
            Panel("RL reward heads (raw scores)", lambda k: k in {f"reward/{h}" for h in HEADS} or k == "toxicity",
                  "score"),
            Panel("RL KL to reference", lambda k: k in ("objective/kl", "objective/kl_k3"), "nats"),
            Panel("RL KL coefficient", lambda k: k == "objective/kl_coef", "β")],
    "dpo": [Panel("DPO loss", lambda k: k in ("loss/dpo", "eval/loss/dpo"), "loss"),
            Panel("DPO implicit reward margin (β log-ratio, chosen - rejected)",
                  lambda k: k in ("reward/margin", "eval/reward/margin"), "margin"),
            Panel("DPO reward accuracy", lambda k: k in ("reward/accuracy", "eval/reward/accuracy"), "accuracy")],
}


def plot_curves(records: Sequence[dict[str, Any]], panels: Sequence[Panel], title: str, out: Path) -> Path | None:
    """One figure of line plots, a panel per metric group; None when no panel has any data."""
    keys = list(dict.fromkeys(k for r in records for k in r if k not in ("step", "time")))
    filled = [(p, [k for k in keys if p.select(k) and _series(records, k)[1]]) for p in panels]
    filled = [(p, ks) for p, ks in filled if ks]
    if not filled:
        return None
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    cols = min(2, len(filled))
    rows = (len(filled) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.6 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(filled):]:
        ax.set_visible(False)
    for ax, (panel, panel_keys) in zip(axes.flat, filled):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        for key in panel_keys:
            steps, values = _series(records, key)
            window = max(1, len(values) // 15)
            if window > 1:  # noisy per-step metrics: faint raw line, bold moving average
                line, = ax.plot(steps, values, alpha=0.25, linewidth=1)
                ax.plot(steps, _moving_average(values, window), color=line.get_color(),
                        label=f"{key} (mean of {window})", linewidth=1.8)
            else:
                ax.plot(steps, values, marker="o" if len(values) < 30 else None, markersize=3, label=key)
        ax.set_title(panel.title)
        ax.set_xlabel("step")
        ax.set_ylabel(panel.ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_heads(results: dict[str, Any], out: Path, judge: str = "reward") -> Path | None:
    """Before/after bars per reward head (composite, helpful, honest, harmless) and toxicity, one bar per policy.

    ``judge``: ``reward`` (the proxy) or ``gold`` (the gold judge's scores; toxicity is drawn with the proxy).
    """
    decoding = results.get("headline_decoding", "sampled")
    policies = list(dict.fromkeys(v["policy"] for v in _variants(results)))
    keys = {p: k for p in policies if (k := _main_variant(results, p, decoding, fallback=True))}
    heads = [f"{judge}/composite", *[f"{judge}/{h}" for h in HEADS]]
    if not any(heads[0] in _metrics(results, k) for k in keys.values()):
        return None
    has_tox = judge == "reward" and any("toxicity" in _metrics(results, k) for k in keys.values())
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2 if has_tox else 1, figsize=(10 if has_tox else 7, 3.8), squeeze=False,
                             gridspec_kw={"width_ratios": [4, 1]} if has_tox else None)
    ax = axes[0][0]
    width = 0.8 / max(1, len(keys))
    for i, (policy, key) in enumerate(keys.items()):
        m = _metrics(results, key)
        values = [m.get(h, float("nan")) for h in heads]
        xs = [j + (i - (len(keys) - 1) / 2) * width for j in range(len(heads))]
        bars = ax.bar(xs, values, width, label=_label(results, key, decoding))
        low, high = m.get(f"{heads[0]}_low"), m.get(f"{heads[0]}_high")
        if isinstance(low, float) and isinstance(high, float):  # the composite's confidence interval
            ax.errorbar(xs[0], values[0], yerr=[[values[0] - low], [high - values[0]]], color="black", capsize=3,
                        linewidth=1)
        ax.bar_label(bars, fmt="%.2f", fontsize=6, padding=2)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xticks(range(len(heads)), [h.split("/")[-1] for h in heads])
    ax.set_ylabel("mean score")
    name = "proxy reward model" if judge == "reward" else "gold judge"
    ax.set_title(f"{name}: score per head on held-out prompts ({decoding}; composite with its CI)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    if has_tox:
        tax = axes[0][1]
        names = list(keys)
        tox = [_metrics(results, keys[p]).get("toxicity", float("nan")) for p in names]
        tax.bar(range(len(names)), tox, color=[f"C{i}" for i in range(len(names))])
        tax.set_xticks(range(len(names)), names, rotation=30)
        tax.set_title("toxicity (Detoxify)", fontsize=10)
        tax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_distributions(results: dict[str, Any], records: Sequence[dict[str, Any]], out: Path) -> Path | None:
    """Histograms of the per-response composite reward and KL, one colour per policy."""
    decoding = results.get("headline_decoding", "sampled")
    policies = list(dict.fromkeys(v["policy"] for v in _variants(results)))
    keys = {p: k for p in policies if (k := _main_variant(results, p, decoding, fallback=True))}
    panels = [(key, label) for key, label in (("reward/composite", "composite reward per response"),
                                              ("kl/k1", "KL to reference per response (k1, nats)"))
              if any(key in r for r in records)]
    if not panels:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.6), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels):
        groups = {_label(results, k, decoding): [r[key] for r in records if r["variant"] == k and key in r]
                  for k in keys.values()}
        groups = {p: v for p, v in groups.items() if v}
        values = [x for v in groups.values() for x in v]
        lo, hi = min(values), max(values)
        bins = [lo + (hi - lo) * i / 20 for i in range(21)] if hi > lo else 10
        for policy, vals in groups.items():
            ax.hist(vals, bins=bins, histtype="step", linewidth=1.8,
                    label=f"{policy} (mean {sum(vals) / len(vals):.2f})")
        ax.set_title(label)
        ax.set_ylabel("responses")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(f"Distributions on held-out prompts ({decoding})")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_rouge(results: dict[str, Any], out: Path) -> Path | None:
    """ROUGE-1/2/L on DialogSum per greedy variant (base zero-/few-shot vs SFT vs PPO)."""
    rows = [(v, _metrics(results, v["key"], "dialogsum")) for v in _variants(results) if v["decoding"] == "greedy"]
    rows = [(v, m) for v, m in rows if "rouge/rougeL" in m]
    if not rows:
        return None
    plt = _pyplot()
    names = ("rouge1", "rouge2", "rougeL")
    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.8 / len(rows)
    for i, (v, m) in enumerate(rows):
        xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(names))]
        ax.bar(xs, [m[f"rouge/{n}"] for n in names], width, label=f"{v['policy']} {v['shots']}-shot")
    ax.set_xticks(range(len(names)), ["ROUGE-1", "ROUGE-2", "ROUGE-L"])
    ax.set_ylabel("F1")
    ax.set_title("DialogSum summaries vs references (greedy)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


@dataclass
class CurvePoint:
    """One point of the over-optimisation figure: a method at some KL from its start, judged by proxy and gold."""

    method: str  # "best-of-n", "ppo", ...: one colour per method
    kl: float  # nats, to the policy the method starts from
    proxy: float  # proxy composite (the reward the method optimised or selected by)
    gold: float | None = None  # gold composite; None without a gold judge
    label: str = field(default="")  # e.g. "n=4" or "step 200", written next to the gold point


def best_of_n_points(results: dict[str, Any]) -> list[CurvePoint]:
    """The evaluation's best-of-n results as curve points (one method per best-of-n policy)."""
    points = []
    for group in results.get("best_of_n") or []:
        method = "best-of-n" + (f" ({group['policy']})" if len(results["best_of_n"]) > 1 else "")
        points += [CurvePoint(method, r["kl"], r.get("reward/composite", float("nan")), r.get("gold/composite"),
                              f"n={r['n']}") for r in group["per_n"]]
    return points


def plain_sampled(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The variants that are a policy answering once per prompt, sampled, zero-shot (not few-shot, greedy or
    best-of-n): the ones whose KL and scores place a policy on the over-optimisation axes."""
    return [v for v in results.get("variants", [])
            if v.get("decoding") == "sampled" and not v.get("shots") and not v.get("best_of")]


def policy_points(results: dict[str, Any]) -> list[CurvePoint]:
    """The sampled, zero-shot policies as curve points at their measured KL (``kl/k1``) to their reference.

    A policy named ``method@label`` (``grpo@30``: the GRPO checkpoint of step 30) joins the curve of
    ``method``; every curve starts at the baseline policy (KL 0), which all methods start from. Policies
    without a KL (no reference) are left out."""
    metrics, baseline = results.get("metrics", {}), results.get("baseline")
    found: list[tuple[str, str, dict]] = []
    for variant in plain_sampled(results):  # best-of-n variants have their own points (best_of_n_points)
        numbers = metrics.get(variant["key"], {}).get(ALL, {})
        method, _, label = variant["policy"].partition("@")
        found.append((method, label, numbers))
    start = next((numbers for method, _, numbers in found if method == baseline), None)
    points = []
    for method, label, numbers in found:
        if method == baseline or "kl/k1" not in numbers:
            continue
        if start is not None and not any(p.method == method and p.kl == 0.0 for p in points):
            points.append(CurvePoint(method, 0.0, start.get("reward/composite", float("nan")),
                                     start.get("gold/composite"), baseline))
        points.append(CurvePoint(method, numbers["kl/k1"], numbers.get("reward/composite", float("nan")),
                                 numbers.get("gold/composite"), label))
    return points


def gold_peaks(points: Sequence[CurvePoint]) -> list[str]:
    """Per method, where along its KL the gold judge peaks (Gao et al.'s question), as one sentence each.

    A peak at the method's largest KL is not a peak: the gold was still rising where the method stopped; a peak
    at KL 0 means every step away from the start lowered the gold."""
    lines = []
    for method in dict.fromkeys(p.method for p in points):
        mine = sorted((p for p in points if p.method == method and p.gold is not None and math.isfinite(p.gold)),
                      key=lambda p: p.kl)
        if len(mine) < 2:
            continue
        best = max(mine, key=lambda p: p.gold)
        where = f"{best.label or 'its final policy'} (KL {best.kl:.2f}, gold {best.gold:.3f})"
        if best is mine[-1]:
            lines.append(f"{method}: gold highest at the largest KL tried, {where}: still rising, no peak reached")
        elif best.kl == 0.0:
            lines.append(f"{method}: gold highest at the start, {where}: every point further away scored lower")
        else:
            lines.append(f"{method}: gold peaks at {where}, then falls to {mine[-1].gold:.3f} at KL {mine[-1].kl:.2f}")
    return lines


def plot_overoptimisation(points: Sequence[CurvePoint], out: Path) -> Path | None:
    """Gold (solid) and proxy (dashed) score vs sqrt(KL), one colour per method (Gao et al. 2022, fig. 1), and
    each method's fitted Gao form on the gold (dotted; :mod:`rlhf.evaluation.overoptimisation`).

    Takes any methods' points, so RL checkpoints can share the axes with best-of-n.
    """
    from rlhf.evaluation.overoptimisation import fit_curves

    if not points:
        return None
    fits = fit_curves(points)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, method in enumerate(dict.fromkeys(p.method for p in points)):
        mine = sorted((p for p in points if p.method == method), key=lambda p: p.kl)
        xs = [math.sqrt(max(p.kl, 0.0)) for p in mine]
        ax.plot(xs, [p.proxy for p in mine], linestyle="--", marker="o", color=f"C{i}", label=f"{method}: proxy")
        golds = [(x, p) for x, p in zip(xs, mine) if p.gold is not None and math.isfinite(p.gold)]
        if golds:
            ax.plot([x for x, _ in golds], [p.gold for _, p in golds], linestyle="-", marker="s", color=f"C{i}",
                    label=f"{method}: gold")
            for x, p in golds:
                if p.label:
                    ax.annotate(p.label, (x, p.gold), textcoords="offset points", xytext=(4, -10), fontsize=7)
        if method in fits:
            fit, start = fits[method]
            grid = [max(xs) * k / 50 for k in range(51)]
            ax.plot(grid, [start + fit(x) for x in grid], linestyle=":", color=f"C{i}",
                    label=f"{method}: gold fit (R² {fit.r2:.2f})")
    ax.set_xlabel("√KL (nats^½) to the starting policy")
    ax.set_ylabel("composite score (each judge on its own scale)")
    ax.set_title("Proxy vs gold as the policy moves away (over-optimisation)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_training(training_runs: dict[str, str], out_dir: Path) -> dict[str, Path]:
    """One PNG of training curves per stage that has a ``metrics.jsonl``."""
    plots = {}
    for stage, run_dir in training_runs.items():
        path = Path(run_dir) / "metrics.jsonl"
        panels = STAGE_PANELS.get(stage)
        if panels is None or not path.is_file():
            continue
        made = plot_curves(read_metrics(path), panels, f"{stage} training ({Path(run_dir).name})",
                           out_dir / f"training_{stage}.png")
        if made:
            plots[stage] = made
    return plots


# ---------------------------------------------------------------- the report


def write_report(out_dir: str | Path, results: dict[str, Any], records: Sequence[dict[str, Any]],
                 training_runs: dict[str, str] | None = None,
                 examples_per_source: int = 2) -> tuple[Path, list[ReportTable]]:
    """Write ``report.md`` and its PNGs into ``out_dir``; returns the report path and its tables (for W&B)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    training_runs = dict(training_runs or {})
    head = results.get("headline") or headline(results)
    tables = build_tables(results, records, examples_per_source)  # also returned for W&B
    training_plots = plot_training(training_runs, out_dir)
    figures = [("Reward per head, before and after", plot_heads(results, out_dir / "reward_heads.png")),
               ("Gold judge per head", plot_heads(results, out_dir / "gold_heads.png", judge="gold")),
               ("Proxy and gold vs sqrt(KL)", plot_overoptimisation(
                   best_of_n_points(results) + policy_points(results), out_dir / "overoptimisation.png")),
               ("Reward and KL distributions", plot_distributions(results, records, out_dir / "distributions.png")),
               ("ROUGE on DialogSum", plot_rouge(results, out_dir / "rouge.png"))]
    prompts, generation = results.get("prompts", {}), results.get("generation", {})
    lines = ["# RLHF evaluation report", "",
             f"Held-out **{results.get('split', 'test')}** prompts (no stage trained on them): "
             + ", ".join(f"{s} {n}" for s, n in prompts.items()) + ". "
             f"Same generation settings and seeds for every policy: at most {generation.get('max_new_tokens', '?')} "
             f"new tokens, seed {generation.get('seed', '?')}, sampled at temperature "
             f"{generation.get('temperature', '?')}.", "",
             "## Headline", "", *[f"- {line}" for line in head["verdict"]], ""]
    ppo_summary = _read_summary(training_runs.get("ppo"))
    reasons = diagnose(head, ppo_summary)
    if reasons:
        lines += ["Why it may not have beaten the baseline (read from the numbers, automatically):", "",
                  *[f"- {r}" for r in reasons], ""]
    policies = results.get("policies", {})
    if policies:
        described = [f"**{escape_cell(n)}** = {escape_cell(p['path'])}"
                     + (f" on {escape_cell(p['base'])}" if p.get("base") else "")
                     + (f" (KL reference: {escape_cell(p['reference'])})" if p.get("reference") else "")
                     for n, p in policies.items()]
        reward_model = escape_cell(results.get("reward_model") or "none")
        gold = f" Gold judge: {escape_cell(results['gold_model'])}." if results.get("gold_model") else ""
        lines += ["Policies: " + "; ".join(described) + f". Reward model (proxy): {reward_model}.{gold}", ""]
    if results.get("reward_model") and not results.get("gold_model") and NO_GOLD not in head["verdict"]:
        lines += [f"**{NO_GOLD}**", ""]
    lines += ["## Results", ""]
    for table in tables:
        lines += [table.markdown(), ""]
    lines += ["## Plots", ""]
    for title, path in figures:
        if path is not None:
            lines += [f"![{title}]({path.name})", ""]
    if training_plots or training_runs:
        lines += ["## Training", ""]
        for stage, path in training_plots.items():
            lines += [f"![{stage} training curves]({path.name})", ""]
        for table in summary_tables(training_runs):
            lines += [table.markdown(), ""]
    report = out_dir / "report.md"
    report.write_text("\n".join(lines), encoding="utf-8")
    return report, tables + summary_tables(training_runs)
