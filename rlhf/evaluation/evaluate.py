"""Stage 4: compare policies (base, SFT, PPO ...) on held-out prompts with the same decoding and seeds.

Evaluation axes: each policy runs as one or more *variants* = (policy, shots, decoding) on some sources:

* shots: 0 (the prompt alone), 1 or k in-context examples taken from the **train** split of the same
  source (so never a test prompt), built with ``rlhf.data.prompts``;
* decoding: ``greedy`` or ``sampled`` (the shared :class:`GenerationSettings` with ``do_sample=True``);
* best-of-n (``best_of_n: [1, 2, 4]``, sampled only): max(n) samples per prompt are drawn once and each n
  keeps the proxy reward model's favourite among the first n (so every n reuses the same samples); its KL
  to the policy is the analytic log n - (n-1)/n (:mod:`rlhf.evaluation.best_of_n`).

Judges: ``reward_model`` is the *proxy* (the one PPO optimised); ``gold.model`` an optional second reward
model that only judges (:mod:`rlhf.evaluation.judges`), so proxy and gold scores stand side by side.

The config lists them (``variants: [{policies, shots, decoding, sources}]``), so a CPU budget goes where
it matters: e.g. every policy sampled on every source (rewards, KL, win-rates) and greedy only on
DialogSum (ROUGE). Every variant answers the same "test"-split prompts of its sources (held out from every
stage, see ``rlhf.data.sources``) in the same order with the same per-batch seeds. Per sample we keep the
response, its token length, whether it ended at EOS, its KL to the policy's reference (on sampled decoding
at temperature 1 only: the estimators need samples from the policy itself) and the reward model's scores.
:func:`aggregate` turns samples into the numbers of ``results.json``; :mod:`rlhf.evaluation.report` turns those into
the report.
"""
from __future__ import annotations

import functools
import random
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, ClassVar, Literal, Sequence

import torch

from rlhf.evaluation import metrics
from rlhf.evaluation.best_of_n import analytic_kl, choose_best
from rlhf.core.config import ConfigError, RenamedKeys, RunConfig
from rlhf.models.generation import GenerationSettings, prepare_tokenizer, seeded_chat_batches
from rlhf.evaluation.likelihood import JudgeFreeConfig, aggregate_judge_free, check_judge_free, judge_free_records
from rlhf.models.logprobs import response_logprobs, response_mask, sequence_kl
from rlhf.models.sampling import PlainSampler
from rlhf.data.prompts import Shot, few_shot, pick_shots
from rlhf.core.runtime import Precision, autocast, select_device, use_bf16
from rlhf.data.sources import EvalItem  # each Source makes its own (Source.eval_items)

SOURCES = ("dialogsum", "truthfulqa", "hh-rlhf-harmless")  # evaluated by default; any of rlhf.data.sources.SOURCES works
ALL = "all"  # the key of metrics over every source together
JUDGES = ("reward", "gold")  # record key prefixes: the proxy reward model (PPO optimised it) and the gold judge
JUDGED = tuple(f"{j}/" for j in JUDGES)


# ---------------------------------------------------------------- config


@dataclass
class PolicyConfig:
    """One policy to evaluate."""

    name: str = field(default="", metadata={"help": "label in tables: base, sft, ppo ..."})
    model: str = field(
        default="",
        metadata={"help": "zoo name, hub id, model folder, or PEFT adapter folder (base from adapter_config.json)"})
    base: str = field(
        default="",
        metadata={"help": "adapters only: put the adapter on this model instead (PPO's adapter on the SFT model)"})
    reference: str = field(
        default="",
        metadata={"help": "explicit reference for KL; empty: adapter disabled (adapters) or none (full models)"})


@dataclass
class VariantConfig:
    """Some policies, run one way, on some sources."""

    policies: list[str] = field(default_factory=list, metadata={"help": "policy names; empty: every policy"})
    shots: int = field(default=0, metadata={"help": "in-context examples before each prompt (from the train split)",
                                            "range": "[0, 1000]"})
    decoding: Literal["greedy", "sampled"] = field(
        default="sampled",
        metadata={"help": "greedy, or sampled with the generation settings (do_sample on)"})
    sources: list[str] = field(default_factory=list, metadata={"help": "empty: every source of data.sources"})
    best_of_n: list[int] = field(
        default_factory=list,
        metadata={"help": "sampled only: e.g. [1, 2, 4, 8, 16]: draw max(n) per prompt once, keep the proxy's "
                          "favourite of the first n for each n; empty: one sample"})


@dataclass
class GoldConfig:
    """A second reward model that only judges: never trained against (PPO refuses a gold-marked model)."""

    model: str = field(
        default="",
        metadata={"help": "gold reward model (a reward run folder or its final/); empty: the proxy is the only judge"})
    agreement_pairs: int = field(
        default=32, metadata={"help": "test pairs per head that proxy and gold both score, for their agreement (the "
                                      "share both order alike); the judge-free metrics' pairs; 0: none",
                              "range": "[0, inf)"})


@dataclass
class EvalDataConfig:
    """The held-out prompts every policy answers."""

    sources: list[str] = field(default_factory=lambda: list(SOURCES),
                               metadata={"help": "shipped sources whose held-out prompts every policy answers"})
    split: Literal["train", "dev", "test"] = field(
        default="test",
        metadata={"help": 'held out from every stage; "dev" only for quick checks'})
    prompts_per_source: int = field(default=16, metadata={"help": "0: all prompts of the split", "range": "[0, inf)"})
    seed: int = field(
        default=0,
        metadata={"help": "which prompts and which in-context examples are drawn (fixed across policies)",
                  "range": "[0, 4294967295]"})
    max_prompt_tokens: int = field(
        default=1024,
        metadata={"help": "longer prompts are cut from the left (few-shot examples go first)",
                  "range": "[1, 10000000]"})
    max_example_chars: int = field(
        default=1200,
        metadata={"help": "in-context examples whose prompt is longer than this are not used as shots",
                  "range": "[0, inf)"})


@dataclass
class EvalConfig:
    """Stage 4: evaluate policies and write report.md, plots and results.json."""

    run: RunConfig = field(default_factory=RunConfig)
    renamed_keys: ClassVar[RenamedKeys] = RenamedKeys("eval", {"policies[].path": "policies[].model"})

    # `rlhf pipeline` lists its own runs; alone, list yours: {name: sft, model: runs/<sft run>/final} (an adapter:
    # KL reference = base), {name: ppo, model: runs/<ppo run>/final/adapter, base: runs/<sft run>/final} (KL ref = SFT)
    policies: list[PolicyConfig] = field(default_factory=lambda: [PolicyConfig("base", "smollm2-135m-instruct")],
                                         metadata={"help": "the policies compared: [{name, model, base, reference}]"})
    reward_model: str = field(
        default="",
        metadata={"help": "trained reward model folder (reward run's final/); empty: no reward metrics"})
    gold: GoldConfig = field(default_factory=GoldConfig)
    toxicity_checkpoint: str = field(
        default="",
        metadata={"help": "Detoxify checkpoint to use instead of the reward model's own setting"})
    toxicity_config_path: str = field(default="",
                                      metadata={"help": "its config/tokenizer folder (with toxicity_checkpoint)"})
    baseline: str = field(default="sft", metadata={"help": "win-rates are against this policy"})
    candidate: str = field(default="ppo", metadata={"help": "the headline compares this policy to the baseline"})
    headline_decoding: Literal["greedy", "sampled"] = field(
        default="sampled",
        metadata={"help": "of the headline numbers (PPO trained on samples)"})
    data: EvalDataConfig = field(default_factory=EvalDataConfig)
    judge_free: JudgeFreeConfig = field(default_factory=JudgeFreeConfig)  # rlhf.evaluation.likelihood: no reward model
    variants: list[VariantConfig] = field(default_factory=lambda: [
        VariantConfig(decoding="sampled"),  # rewards, KL, win-rates on every source
        VariantConfig(decoding="greedy", sources=["dialogsum"]),  # ROUGE of greedy summaries
        VariantConfig(policies=["base"], shots=3, decoding="greedy", sources=["dialogsum"]),  # few-shot base model
    ], metadata={"help": "how the policies run: [{policies, shots, decoding, sources}]; empty policies/sources = all"})
    generation: GenerationSettings = field(default_factory=lambda: GenerationSettings(max_new_tokens=64))
    precision: Precision = field(
        default="auto",
        metadata={"help": "bf16 autocast or fp32 (policies and scorer); auto: bf16 where native (rlhf.core.runtime)"})
    score_batch_size: int = field(default=32, metadata={"help": "responses per reward-model forward pass",
                                                        "range": "[1, 1000000]"})
    threads: int = field(default=0,
                         metadata={"help": "torch threads (0: torch's default); 1 for tiny models on a shared CPU",
                                   "range": "[0, 4096]"})
    win_tie_margin: float = field(default=0.0, metadata={"help": "|reward difference| <= this is a tie (counted half)",
                                                         "range": "[0, inf)"})
    confidence: float = field(default=0.95,
                              metadata={"help": "level of the confidence intervals of means and win-rates",
                                        "range": "(0, 1)"})
    training_runs: dict[str, str] = field(default_factory=dict,
                                          metadata={"help": "stage -> run dir, for training curves in the report"})
    examples_in_report: int = field(default=2, metadata={"help": "example generations per source, side by side",
                                                         "range": "[0, 1000000]"})


# ---------------------------------------------------------------- prompts


def _source(name: str):
    from rlhf.data import sources

    if name not in sources.SOURCES:
        raise ValueError(f"unknown evaluation source {name!r}; known: {', '.join(sources.SOURCES)}")
    return sources.SOURCES[name]


def load_items(source: str, split: str = "test") -> list[EvalItem]:
    """Every prompt of ``split`` of one source, in file order, without duplicates (its ``Source.eval_items``)."""
    return _source(source).eval_items(split)


def sample_items(items: Sequence[EvalItem], n: int, seed: int) -> list[EvalItem]:
    """A fixed random subset of ``n`` items (all when n <= 0), kept in file order."""
    if n <= 0 or n >= len(items):
        return list(items)
    keep = sorted(random.Random(seed).sample(range(len(items)), n))
    return [items[i] for i in keep]


def shot_pool(source: str) -> list[Shot]:
    """Candidate in-context examples from the **train** split of ``source`` (its ``Source.shots``)."""
    return _source(source).shots("train")


def choose_shots(source: str, k: int, seed: int, max_prompt_chars: int) -> list[Shot]:
    """The same ``k`` short train examples for every prompt of a source and every policy (a fixed format)."""
    return pick_shots(shot_pool(source), k, seed=seed, max_prompt_chars=max_prompt_chars) if k > 0 else []


def with_shots(messages: Sequence[dict[str, str]], shots: Sequence[Shot]) -> list[dict[str, str]]:
    """``rlhf.data.prompts.few_shot``'s chat layout for any chat: the shots as earlier user/assistant turns.

    (A multi-turn HH conversation keeps its own turns after the shots.)
    """
    return few_shot("", shots)[:-1] + list(messages)


# ---------------------------------------------------------------- sampling with token ids


@dataclass
class Samples:
    """Responses of one policy to a list of chats, with what the metrics need from their tokens."""

    responses: list[str] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)  # response tokens up to and including EOS
    ended: list[bool] = field(default_factory=list)  # stopped at EOS (not cut by max_new_tokens)
    kl_k1: list[float] = field(default_factory=list)  # per sequence; empty when KL was not measured
    kl_k3: list[float] = field(default_factory=list)


def samples_own_distribution(settings: GenerationSettings) -> bool:
    """KL estimators need samples from the policy's own distribution: sampling at T=1, no top-k/top-p."""
    return settings.do_sample and settings.temperature == 1.0 and settings.top_k == 0 and settings.top_p >= 1.0 \
        and settings.repetition_penalty == 1.0


@torch.no_grad()
def sample(policy, chats: Sequence[Sequence[dict[str, str]]], settings: GenerationSettings,
           max_prompt_tokens: int = 1024, bf16: bool = False, measure_kl: bool = False) -> Samples:
    """Generate for ``chats`` in batches (seeded per batch, so every policy gets the same random stream).

    ``policy`` is an :class:`rlhf.models.policies.Policy`; with ``measure_kl`` the KL of each sample to the
    policy's reference is computed on the tokens just sampled: the policy's log-probs come from the logits
    generation already computed (one forward pass saved), the reference's from one forward pass.
    """
    model, tokenizer = policy.model, prepare_tokenizer(policy.tokenizer)
    eos_id = tokenizer.eos_token_id
    out = Samples()
    model.eval()
    sampler = PlainSampler(model)
    for batch in seeded_chat_batches(tokenizer, chats, settings, max_prompt_tokens, model.device):
        with autocast(model.device, bf16):
            generated = sampler.sample(batch["input_ids"], batch["attention_mask"], keep_logprobs=measure_kl,
                                       **settings.hf_kwargs(tokenizer))
        sequences, prompt_len = generated.sequences, generated.prompt_len  # (batch, prompt_len + response_len)
        response_ids = generated.response_ids  # (batch, response_len)
        mask, ended = response_mask(response_ids, eos_id)  # (batch, response_len), (batch,): RL's mask
        mask = mask.long()
        out.responses += [tokenizer.decode(ids[m.bool()], skip_special_tokens=True).strip()
                          for ids, m in zip(response_ids, mask)]
        out.lengths += mask.sum(-1).tolist()
        out.ended += ended.tolist()
        if measure_kl:
            attention = torch.cat([batch["attention_mask"], mask], dim=1)  # (batch, prompt_len + response_len)
            # From each sampling step's raw logits = the sampling distribution (T=1, no filters: see measure_kl's caller).
            policy_lp = generated.logprobs  # (batch, response_len)
            with policy.reference() as reference:
                reference_lp = response_logprobs(reference, sequences, attention, prompt_len)
            kl = sequence_kl(policy_lp, reference_lp, mask)
            out.kl_k1 += kl["k1"].tolist()
            out.kl_k3 += kl["k3"].tolist()
    return out


# ---------------------------------------------------------------- variants


@dataclass(frozen=True)
class Variant:
    policy: str
    shots: int
    decoding: str
    sources: tuple[str, ...]
    best_of: int = 0  # n of best-of-n; 0: the plain run (one sample or greedy)

    @property
    def key(self) -> str:
        return f"{self.policy}/{self.shots}-shot/{self.decoding}" + (f"/best-of-{self.best_of}" if self.best_of else "")


def variants_of(cfg: EvalConfig) -> list[Variant]:
    """Every (policy, shots, decoding) the config asks for, in policy order (one model loaded at a time)."""
    names = [p.name for p in cfg.policies]
    out: dict[str, Variant] = {}
    for i, v in enumerate(cfg.variants):
        unknown = [n for n in v.policies if n not in names] + [s for s in v.sources if s not in cfg.data.sources]
        if unknown:
            raise ConfigError(f"variants[{i}]: {unknown[0]!r} is not a configured policy ({', '.join(names)}) "
                             f"or source ({', '.join(cfg.data.sources)})")
        check_best_of_n(v, f"variants[{i}]", cfg.reward_model)
        for name in v.policies or names:
            for n in v.best_of_n or [0]:
                variant = Variant(name, v.shots, v.decoding, tuple(v.sources or cfg.data.sources), n)
                if variant.key in out:
                    raise ConfigError(f"variants[{i}]: {variant.key} is asked for twice")
                out[variant.key] = variant
    return sorted(out.values(), key=lambda v: (names.index(v.policy), v.shots, v.decoding != "greedy", v.best_of))


def check_best_of_n(v: VariantConfig, where: str, proxy: str) -> None:
    """Best-of-n needs integers n >= 1, sampled decoding (greedy gives n copies) and a proxy to pick with."""
    key = f"{where}.best_of_n"
    for n in v.best_of_n:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"{key}: every n must be an integer >= 1, got {n!r}")
    if len(set(v.best_of_n)) != len(v.best_of_n):
        raise ConfigError(f"{key}: an n is listed twice ({v.best_of_n})")
    if v.best_of_n and v.decoding != "sampled":
        raise ConfigError(f"{key}: needs decoding: sampled (greedy decoding gives n identical answers)")
    if v.best_of_n and not proxy:
        raise ConfigError(f"{key}: needs reward_model (the proxy that picks the best of n)")


def check_judges(cfg: EvalConfig) -> None:
    """The gold judge must exist and be another model than the proxy (same folder after resolving run folder ->
    final/ and symlinks): one line naming the key, before any model loads."""
    from pathlib import Path

    from rlhf.evaluation.judges import model_folder
    from reward_models.model import REWARD_CONFIG

    for key, path in (("reward_model", cfg.reward_model), ("gold.model", cfg.gold.model)):
        if path and not (model_folder(path) / REWARD_CONFIG).is_file():
            missing = "does not exist" if not Path(path).expanduser().exists() else f"has no {REWARD_CONFIG}"
            raise ConfigError(f"{key}: {path} {missing} (not a reward model folder or reward run folder)")
    if cfg.gold.model and cfg.reward_model and model_folder(cfg.gold.model) == model_folder(cfg.reward_model):
        raise ConfigError(f"gold.model: {cfg.gold.model} is the same model as reward_model ({cfg.reward_model}); "
                          "the gold judge must be a reward model the policies were not optimised against")


def check_config(cfg: EvalConfig) -> None:
    """What can be judged from the config alone (variants, best-of-n, judges), before run folder and models."""
    variants_of(cfg)
    check_judges(cfg)
    check_judge_free(cfg.judge_free)


def settings_for(decoding: str, base: GenerationSettings) -> GenerationSettings:
    return GenerationSettings(**{**asdict(base), "do_sample": decoding == "sampled"})


def score_samples(scorer, prompts: Sequence[str], responses: Sequence[str], batch_size: int,
                  prefix: str = "reward") -> list[dict[str, float]]:
    """Per-sample scores from a :class:`reward_models.types.Scorer`: ``{prefix}/composite``, each head, toxicity.

    The gold judge scores under ``gold/``; toxicity is kept from the proxy only (the same Detoxify).
    """
    rows: list[dict[str, float]] = []
    for start in range(0, len(prompts), batch_size):
        with torch.no_grad():  # the scorer picks its own precision
            scores = scorer.score(list(prompts[start:start + batch_size]), list(responses[start:start + batch_size]))
        columns = {f"{prefix}/composite": scores.composite}
        columns.update({f"{prefix}/{name}": values for name, values in scores.heads.items()})
        if scores.toxicity is not None and prefix == "reward":
            columns["toxicity"] = scores.toxicity
        values = {k: v.detach().float().tolist() for k, v in columns.items()}
        rows += [{k: v[i] for k, v in values.items()} for i in range(len(next(iter(values.values()))))]
    return rows


def judge(scorer, gold, prompts: Sequence[str], responses: Sequence[str], batch_size: int) -> list[dict[str, float]]:
    """Per-sample proxy (``reward/``) and gold (``gold/``) scores; a missing judge adds nothing."""
    rows: list[dict[str, float]] = [{} for _ in responses]
    for judge_scorer, prefix in ((scorer, "reward"), (gold, "gold")):
        if judge_scorer is not None:
            for row, scores in zip(rows, score_samples(judge_scorer, prompts, responses, batch_size, prefix)):
                row.update(scores)
    return rows


def _record(variant: Variant, item: EvalItem, out: Samples, i: int, scores: dict[str, float]) -> dict[str, Any]:
    """One item's record: what was asked, the ``i``-th sample of ``out`` and its scores."""
    return {"variant": variant.key, "policy": variant.policy, "shots": variant.shots, "decoding": variant.decoding,
            "source": item.source, "id": item.id, "prompt": item.prompt, "response": out.responses[i],
            "references": item.references, "length": out.lengths[i], "ended": out.ended[i], **scores}


def _chats(variant: Variant, items: Sequence[EvalItem], shots_by_source: dict[str, list[Shot]]) -> list:
    return [with_shots(it.messages, shots_by_source[it.source][:variant.shots]) for it in items]


def evaluate_variant(policy, variant: Variant, items: Sequence[EvalItem], shots_by_source: dict[str, list[Shot]],
                     scorer, cfg: EvalConfig, gold=None) -> list[dict[str, Any]]:
    """Run one variant on every item; one record per item (response, length, EOS, KL, scores)."""
    settings = settings_for(variant.decoding, cfg.generation)
    measure_kl = policy.has_reference and samples_own_distribution(settings)
    items = [it for it in items if it.source in variant.sources]
    bf16 = use_bf16(cfg.precision, policy.model.device)  # autocast on the device the policy runs on
    out = sample(policy, _chats(variant, items, shots_by_source), settings, cfg.data.max_prompt_tokens, bf16=bf16,
                 measure_kl=measure_kl)
    scores = judge(scorer, gold, [it.prompt for it in items], out.responses, cfg.score_batch_size)
    records = []
    for i, it in enumerate(items):
        record = _record(variant, it, out, i, scores[i])
        if measure_kl:
            record.update({"kl/k1": out.kl_k1[i], "kl/k3": out.kl_k3[i]})
        records.append(record)
    return records


def best_of_n_records(variants: Sequence[Variant], items: Sequence[EvalItem], out: Samples, scorer, gold,
                      batch_size: int) -> list[dict[str, Any]]:
    """Best-of-n from one draw: ``out`` holds max(n) samples per item (item-major); each n keeps the proxy's
    favourite of the first n. The proxy scores every sample; the gold only the kept ones."""
    draws = max(v.best_of for v in variants)
    prompts = [it.prompt for it in items for _ in range(draws)]
    proxy = score_samples(scorer, prompts, out.responses, batch_size)  # (items * draws) rows
    composite = [[proxy[i * draws + j]["reward/composite"] for j in range(draws)] for i in range(len(items))]
    chosen = {v.best_of: choose_best(composite, v.best_of) for v in variants}  # n -> per item the kept sample
    kept = sorted({i * draws + j for picks in chosen.values() for i, j in enumerate(picks)})
    gold_rows = dict(zip(kept, judge(None, gold, [prompts[k] for k in kept], [out.responses[k] for k in kept],
                                     batch_size)))
    records = []
    for v in variants:
        for i, (it, j) in enumerate(zip(items, chosen[v.best_of])):
            flat = i * draws + j
            records.append({**_record(v, it, out, flat, {**proxy[flat], **gold_rows[flat]}),
                            "best_of": v.best_of, "sample_index": j, "kl/best_of_n": analytic_kl(v.best_of)})
    return records


def evaluate_best_of_n(policy, variants: Sequence[Variant], items: Sequence[EvalItem],
                       shots_by_source: dict[str, list[Shot]], scorer, cfg: EvalConfig,
                       gold=None) -> list[dict[str, Any]]:
    """Best-of-n variants that differ only in n: max(n) samples per prompt drawn once, reused by every n."""
    first = variants[0]
    items = [it for it in items if it.source in first.sources]
    draws = max(v.best_of for v in variants)
    chats = [chat for chat in _chats(first, items, shots_by_source) for _ in range(draws)]  # item-major
    settings = settings_for(first.decoding, cfg.generation)
    out = sample(policy, chats, settings, cfg.data.max_prompt_tokens, bf16=use_bf16(cfg.precision, policy.model.device))
    return best_of_n_records(variants, items, out, scorer, gold, cfg.score_batch_size)


# ---------------------------------------------------------------- aggregation


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def aggregate(records: Sequence[dict[str, Any]], baseline: Sequence[dict[str, Any]] | None = None,
              tie_margin: float = 0.0, confidence: float = 0.95) -> dict[str, float]:
    """Numbers for one variant on one set of items; ``baseline`` = the baseline's records on the same items."""
    out: dict[str, float] = {"n": len(records)}
    if not records:
        return out
    responses = [r["response"] for r in records]
    out["length"] = metrics.mean_length([r["length"] for r in records])
    out["eos_rate"] = metrics.eos_rate([r["ended"] for r in records])
    out["distinct/1"] = metrics.distinct_n(responses, 1)
    out["distinct/2"] = metrics.distinct_n(responses, 2)
    out["refusal_rate"] = metrics.refusal_rate(responses)
    score_keys = sorted({k for r in records for k in r if k.startswith(JUDGED + ("kl/",)) or k == "toxicity"})
    for key in score_keys:
        values = [r[key] for r in records if key in r]
        out[key] = _mean(values)
        if key.startswith(JUDGED):  # every judge's composite and heads with their interval
            _, out[f"{key}_low"], out[f"{key}_high"] = metrics.mean_interval(values, confidence)
    with_refs = [r for r in records if r["references"]]
    if with_refs:
        out["bleu"], out["bleu_signature"] = metrics.bleu([r["response"] for r in with_refs],
                                                          [r["references"] for r in with_refs])
    rouge = rouge_by_item(records)
    if rouge:  # ROUGE against the one reference summary, as DialogSum is scored
        out.update({f"rouge/{k}": v for k, v in metrics.mean_rouge(list(rouge.values())).items()})
        _, out["rouge/rougeL_low"], out["rouge/rougeL_high"] = metrics.mean_interval(
            [scores["rougeL"] for scores in rouge.values()], confidence)
        out["rouge/n"] = len(rouge)
        base_rouge = rouge_by_item(baseline or [])
        diffs = [scores["rougeL"] - base_rouge[item]["rougeL"] for item, scores in rouge.items() if item in base_rouge]
        if len(diffs) > 1:  # paired per dialogue: two samples of one policy differ by points on 20-30 summaries
            mean, low, high = metrics.mean_interval(diffs, confidence)
            out.update({"rouge/rougeL_delta": mean, "rouge/rougeL_delta_low": low, "rouge/rougeL_delta_high": high,
                        "rouge/rougeL_delta_n": len(diffs)})
    if baseline is not None and any(f"{j}/composite" in out for j in JUDGES):
        base_by_item = {(r["source"], r["id"]): r for r in baseline}
        pairs = [(r, base_by_item[(r["source"], r["id"])]) for r in records if (r["source"], r["id"]) in base_by_item]
        for judge_prefix, name in zip(JUDGES, ("win_rate", "gold/win_rate")):  # proxy's keys keep their old names
            key = f"{judge_prefix}/composite"
            judged = [(r[key], b[key]) for r, b in pairs if key in r and key in b]
            if judged:
                wr = metrics.win_rate([x for x, _ in judged], [y for _, y in judged], tie_margin, confidence)
                out.update({name: wr.rate, f"{name}/low": wr.low, f"{name}/high": wr.high,
                            f"{name}/wins": wr.wins, f"{name}/ties": wr.ties, f"{name}/losses": wr.losses})
        for key in [k for k in score_keys if not k.startswith("kl/")]:  # paired differences to the baseline
            diffs = [r[key] - b[key] for r, b in pairs if key in r and key in b]
            if diffs:
                mean, low, high = metrics.mean_interval(diffs, confidence)
                out.update({f"{key}_delta": mean, f"{key}_delta_low": low, f"{key}_delta_high": high})
    return out


def rouge_by_item(records: Sequence[dict[str, Any]]) -> dict[tuple[str, str], dict[str, float]]:
    """ROUGE-1/2/L F of each DialogSum response against its one reference summary, by item (source, id)."""
    summaries = [r for r in records if r["source"] == "dialogsum" and r["references"]]
    scores = metrics.rouge_pairs([r["response"] for r in summaries], [r["references"][0] for r in summaries])
    return {(r["source"], r["id"]): score for r, score in zip(summaries, scores)}


def baseline_variant(variant: Variant, variants: Sequence[Variant], baseline: str) -> Variant | None:
    """The baseline's variant a variant is compared with: same decoding, the baseline's fewest shots."""
    candidates = [v for v in variants if v.policy == baseline and v.decoding == variant.decoding and not v.best_of]
    return min(candidates, key=lambda v: v.shots) if candidates else None


def aggregate_all(records: Sequence[dict[str, Any]], variants: Sequence[Variant], baseline: str,
                  tie_margin: float = 0.0, confidence: float = 0.95) -> dict[str, dict[str, dict[str, float]]]:
    """``{variant key: {source or "all": metrics}}`` for every variant."""
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_variant.setdefault(r["variant"], []).append(r)
    table: dict[str, dict[str, dict[str, float]]] = {}
    for variant in variants:
        mine = by_variant.get(variant.key, [])
        base_v = baseline_variant(variant, variants, baseline)
        base = by_variant.get(base_v.key, []) if base_v is not None and base_v != variant else None
        sources = dict.fromkeys(r["source"] for r in mine)
        groups = {ALL: mine, **{s: [r for r in mine if r["source"] == s] for s in sources}}
        table[variant.key] = {}
        for name, group in groups.items():
            paired = None if base is None else [b for b in base if name in (ALL, b["source"])]
            table[variant.key][name] = aggregate(group, paired, tie_margin, confidence)
    return table


# ---------------------------------------------------------------- the runner


def check_local_path(path: str, what: str) -> None:
    """A path that can only be a local folder (absolute, ./, ~, or with two or more slashes) must exist."""
    from pathlib import Path

    if path and (path.startswith(("/", ".", "~")) or path.count("/") >= 2) and not Path(path).expanduser().exists():
        raise FileNotFoundError(f"{what}: {path} does not exist (a stage that should have written it did not run?)")


def best_of_n_groups(variants: Sequence[Variant]) -> list[list[Variant]]:
    """Best-of-n variants that share one draw of samples: same policy, shots, decoding and sources."""
    groups: dict[tuple, list[Variant]] = {}
    for v in variants:
        if v.best_of:
            groups.setdefault((v.policy, v.shots, v.decoding, v.sources), []).append(v)
    return list(groups.values())


def run_evaluation(cfg: EvalConfig, scorer, load_policy: Callable | None = None,
                   progress: Callable[[str], None] | None = None,
                   gold=None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Evaluate every variant of every policy; returns (per-sample records, policy descriptions).

    Policies are loaded one at a time (only one model in memory besides the reward models), on the device
    ``rlhf.core.runtime`` picks for ``run.device``. ``gold``: the gold judge's scorer (scores under ``gold/``), or None.
    """
    from rlhf.models.policies import load_policy as default_loader

    load_policy = load_policy or functools.partial(default_loader, device=select_device(cfg.run.device))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if not cfg.policies:
        raise ValueError("eval: no policies configured (policies: [{name, model}, ...])")
    names = [p.name for p in cfg.policies]
    if len(set(names)) != len(names) or not all(names):
        raise ValueError(f"eval: policy names must be non-empty and distinct, got {names}")
    for pcfg in cfg.policies:  # fail before minutes of generation, not at the third policy
        for what in ("model", "base", "reference"):
            check_local_path(getattr(pcfg, what), f"policy {pcfg.name!r}: {what}")
    variants = variants_of(cfg)
    items = [it for source in cfg.data.sources
             for it in sample_items(load_items(source, cfg.data.split), cfg.data.prompts_per_source, cfg.data.seed)]
    shots_by_source = {s: choose_shots(s, max((v.shots for v in variants if s in v.sources), default=0), cfg.data.seed,
                                       cfg.data.max_example_chars) for s in cfg.data.sources}
    records: list[dict[str, Any]] = []
    described: dict[str, Any] = {}
    for pcfg in cfg.policies:
        policy = load_policy(pcfg.name, pcfg.model, base=pcfg.base, reference=pcfg.reference)
        described[pcfg.name] = {"path": pcfg.model, "base": pcfg.base, "kind": policy.kind,
                                "reference": pcfg.reference or ("adapter disabled" if policy.kind == "adapter" else "")}
        mine = [v for v in variants if v.policy == pcfg.name]
        for variant in [v for v in mine if not v.best_of]:
            if progress:
                progress(variant.key)
            records += evaluate_variant(policy, variant, items, shots_by_source, scorer, cfg, gold)
        for group in best_of_n_groups(mine):
            for variant in group:
                if progress:
                    progress(variant.key)
            records += evaluate_best_of_n(policy, group, items, shots_by_source, scorer, cfg, gold)
        del policy
    return records, described


def run_judge_free(cfg: EvalConfig, load_policy: Callable | None = None) -> list[dict[str, Any]]:
    """The judge-free records (:mod:`rlhf.evaluation.likelihood`) of every policy, one policy loaded at a time (a second
    load per policy, seconds, keeps this pass apart from generation)."""
    from rlhf.models.policies import load_policy as default_loader

    jf = cfg.judge_free
    if not jf.preference_sources and not jf.truthfulqa_mc:
        return []
    load_policy = load_policy or functools.partial(default_loader, device=select_device(cfg.run.device))
    records: list[dict[str, Any]] = []
    for pcfg in cfg.policies:
        policy = load_policy(pcfg.name, pcfg.model, base=pcfg.base, reference=pcfg.reference)
        records += judge_free_records(policy, jf, cfg.data.split, cfg.data.seed, cfg.data.max_prompt_tokens,
                                      bf16=use_bf16(cfg.precision, policy.model.device))
        del policy
    return records


def judges_agreement(cfg: EvalConfig, scorer, gold) -> dict[str, Any]:
    """Proxy and gold on the same test pairs per head (``gold.agreement_pairs`` each, the judge-free metrics'
    draw): their agreement and accuracies (:func:`rlhf.evaluation.judges.judge_agreement`); {} without both judges."""
    if scorer is None or gold is None or cfg.gold.agreement_pairs == 0:
        return {}
    from rlhf.evaluation.judges import judge_agreement
    from rlhf.evaluation.likelihood import preference_pairs

    pairs = preference_pairs(cfg.judge_free.preference_sources, cfg.gold.agreement_pairs, cfg.data.split, cfg.data.seed)
    return judge_agreement(scorer, gold, pairs, cfg.confidence)


def load_gold(cfg: EvalConfig):
    """The gold judge (its own saved settings, Detoxify included), or None when ``gold.model`` is empty."""
    if not cfg.gold.model:
        return None
    from reward_models.scoring import RewardScorer

    return RewardScorer.from_pretrained(cfg.gold.model, select_device(cfg.run.device), precision=cfg.precision,
                                        batch_size=cfg.score_batch_size)


def load_scorer(cfg: EvalConfig):
    """The trained HHH reward model (with Detoxify when configured), or None when no reward model is set."""
    if not cfg.reward_model:
        return None
    from reward_models.config import ToxicitySettings
    from reward_models.scoring import RewardScorer

    toxicity: Any = "config"  # the Detoxify settings saved with the reward model
    if cfg.toxicity_checkpoint:
        toxicity = ToxicitySettings(checkpoint=cfg.toxicity_checkpoint,
                                    huggingface_config_path=cfg.toxicity_config_path or None)
    return RewardScorer.from_pretrained(cfg.reward_model, select_device(cfg.run.device), toxicity=toxicity,
                                        precision=cfg.precision, batch_size=cfg.score_batch_size)


def finite(value: Any) -> Any:
    """NaN/inf -> None, recursively, so results.json is strict JSON."""
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def build_results(cfg: EvalConfig, records: Sequence[dict[str, Any]], policies: dict[str, Any],
                  judge_free: Sequence[dict[str, Any]] = (), agreement: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything the report needs, JSON-ready: settings, policies, metrics per variant and source, the
    judge-free metrics per policy (from :func:`run_judge_free`'s records) and the judges' agreement per head
    (from :func:`judges_agreement`)."""
    variants = variants_of(cfg)
    table = aggregate_all(records, variants, cfg.baseline, cfg.win_tie_margin, cfg.confidence)
    prompts: dict[str, int] = {}
    for source, _ in dict.fromkeys((r["source"], r["id"]) for r in records):
        prompts[source] = prompts.get(source, 0) + 1
    return finite({
        "split": cfg.data.split,
        "sources": list(cfg.data.sources),
        "prompts": prompts,
        "baseline": cfg.baseline,
        "candidate": cfg.candidate,
        "headline_decoding": cfg.headline_decoding,
        "confidence": cfg.confidence,
        "generation": asdict(cfg.generation),
        "reward_model": cfg.reward_model,
        "gold_model": cfg.gold.model,
        "judges": {"proxy": describe_judge(cfg.reward_model), "gold": describe_judge(cfg.gold.model)},
        "judges_agreement": agreement or {},
        "toxicity_available": any("toxicity" in r for r in records),
        "policies": policies,
        "variants": [{"key": v.key, "policy": v.policy, "shots": v.shots, "decoding": v.decoding,
                      "sources": list(v.sources), "best_of": v.best_of} for v in variants],
        "metrics": table,
        "best_of_n": best_of_n_results(variants, table),
        "judge_free": aggregate_judge_free(judge_free, cfg.baseline, cfg.confidence),
    })


def describe_judge(path: str) -> dict[str, Any] | None:
    """A reward model's path, role and held-out test accuracy per head (None: no such judge configured)."""
    from rlhf.evaluation.judges import describe

    return describe(path) if path else None


def best_of_n_results(variants: Sequence[Variant], table: dict[str, dict[str, dict[str, float]]]) -> list[dict]:
    """Per best-of-n group, per n: KL and proxy/gold scores on all sources (for the report and later comparisons)."""
    out = []
    for group in best_of_n_groups(variants):
        first = group[0]
        rows = []
        for v in sorted(group, key=lambda v: v.best_of):
            m = table[v.key][ALL]
            rows.append({"n": v.best_of, "variant": v.key, "kl": analytic_kl(v.best_of), "prompts": m.get("n", 0),
                         **{k: m[k] for k in m if k.startswith(JUDGED) or "win_rate" in k}})
        out.append({"policy": first.policy, "shots": first.shots, "decoding": first.decoding,
                    "sources": list(first.sources), "samples_per_prompt": max(v.best_of for v in group),
                    "reused_samples": True, "per_n": rows})
    return out
