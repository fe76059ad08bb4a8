"""Making experience: prompts -> sampled responses, their log-probs, values, reference log-probs, scores.

The trainer turns an :class:`Experience` into rewards and advantages (``rlhf.rl.rewards``,
``rlhf.rl.advantages``) and then learns from it; nothing here has gradients. Sampling itself is the
sampler's (``rlhf.rl.sampler``); every algorithm shares this one experience path.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from typing import Sequence

import torch
from torch import nn

from reward_models.types import RewardScores, Scorer
from rlhf.models.generation import GenerationSettings, prepare_tokenizer, render_chat
from rlhf.models.logprobs import logprobs_from_logits, response_mask as rollout_mask
from rlhf.rl.memory import release_freed_memory
from rlhf.rl.policy import PolicyModel, evaluation_mode
from rlhf.rl.sampler import FastSampler
from rlhf.models.sampling import Sampler, SamplingPass
from rlhf.data.records import prompt_to_messages


@dataclass
class Experience:
    """One batch of rollouts. B rollouts, P prompt positions (left-padded), R response positions."""

    prompts: list[str]  # B prompt texts as given (plain text or HH transcripts)
    responses: list[str]  # B decoded responses (special tokens stripped)
    input_ids: torch.Tensor  # (B, P + R) left-padded prompt, then response (padded after its end)
    attention_mask: torch.Tensor  # (B, P + R) 1 on real prompt tokens and on response tokens up to the end
    response_start: int  # P: where responses begin in input_ids
    response_mask: torch.Tensor  # (B, R) float, 1 on response tokens up to and including EOS
    has_eos: torch.Tensor  # (B,) bool: the response ended with EOS (else it hit max_new_tokens)
    logprobs: torch.Tensor  # (B, R) policy log-probs of the response tokens at sampling time
    ref_logprobs: torch.Tensor  # (B, R) reference (adapters off) log-probs of the same tokens
    values: torch.Tensor | None  # (B, R) value of the state before each response token; None without a value head
    scores: RewardScores  # raw scorer output: composite (B,), heads {name: (B,)}, toxicity (B,) or None
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase, for logs and benchmarks
    # (B, P + R, H) output of the policy's frozen trunk (the layers below the lowest adapter) at every
    # position, zeros where attention_mask is 0; None without a trunk. Later forwards start from it.
    trunk_hidden: torch.Tensor | None = None
    # Filled in by the trainer (rewards.place_scores, the algorithm's estimator in advantages.py):
    rewards: torch.Tensor | None = None  # (B, R) per-token reward: -kl_coef * KL, + score at the last token
    advantages: torch.Tensor | None = None  # (B, R) from the algorithm's estimator (rlhf.rl.advantages)
    returns: torch.Tensor | None = None  # (B, R) value targets (GAE only)
    # (B, R) the response mask less the rows out of the loss (rl.dynamic_sampling, rl.mask_truncated)
    loss_mask: torch.Tensor | None = None

    @property
    def responses_ids(self) -> torch.Tensor:
        return self.input_ids[:, self.response_start:]  # (B, R)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def rows(self, index: torch.Tensor) -> "Experience":
        """The rollouts at ``index`` (a mini-batch); per-rollout tensors are sliced, texts picked."""
        picked = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                value = value[index]
            elif isinstance(value, list):
                value = [value[i] for i in index.tolist()]
            elif isinstance(value, RewardScores):
                value = value.select(index)
            picked[f.name] = value
        return Experience(**picked)


def padding_free_span(attention_mask: torch.Tensor, response_mask: torch.Tensor, response_start: int) -> tuple[int, int]:
    """(first, end) columns that hold any real token of these rows: leading prompt pads and trailing
    response pads common to every row can be dropped without changing any output (positions are counted
    from the attention mask)."""
    first = int(attention_mask.any(0).int().argmax())
    width = max(int(response_mask.sum(1).max()), 1)
    return first, response_start + width


class ExperienceMaker:
    """Generates, evaluates and scores rollouts for a list of prompts (through ``sampler``: by default the
    fast one of ``rlhf.rl.sampler``)."""

    def __init__(self, model: PolicyModel, tokenizer, scorer: Scorer, settings: GenerationSettings,
                 max_prompt_tokens: int = 512, compute_dtype: torch.dtype = torch.float32,
                 reuse_sampling_pass: bool = True, forward_batch_size: int = 1, sampler: Sampler | None = None):
        self.model = model
        self.sampler = sampler if sampler is not None else FastSampler(model)
        self.tokenizer = prepare_tokenizer(tokenizer)
        self.scorer = scorer
        self.settings = settings
        self.max_prompt_tokens = max_prompt_tokens
        self.compute_dtype = compute_dtype
        # Log-probs and values from the sampling pass itself (one forward fewer per rollout). Exact up to
        # float rounding of cached vs. full attention: off, a separate forward recomputes them.
        self.reuse_sampling_pass = reuse_sampling_pass
        # Rollouts per no-grad forward; each group is trimmed to its own padding-free span, so small groups
        # (1 = no padding at all) spend no FLOPs on the pads a whole batch would share.
        self.forward_batch_size = max(1, forward_batch_size)
        # transformers syncs generate() across processes when it sees FSDP-managed modules (every rank decodes
        # until all are done, so every rank must call it equally often). None: let it decide; False: the
        # weights are whole on each rank (rlhf.core.sharding.gathered), so each decodes alone.
        self.synced_gpus: bool | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def autocast(self):
        from rlhf.core.runtime import autocast

        return autocast(self.device, bf16=self.compute_dtype != torch.float32)

    def tokenize_prompts(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        texts = [render_chat(self.tokenizer, prompt_to_messages(p)) for p in prompts]
        return self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True,
                              max_length=self.max_prompt_tokens, add_special_tokens=False).to(self.device)

    def _sample(self, input_ids, attention_mask) -> SamplingPass:
        """One chunk's sampling pass; log-probs (and hidden states) are only kept with reuse_sampling_pass."""
        extra = {} if self.synced_gpus is None else {"synced_gpus": self.synced_gpus}
        sampled = self.sampler.sample(input_ids, attention_mask, keep_logprobs=self.reuse_sampling_pass,
                                      **self.settings.hf_kwargs(self.tokenizer), **extra)
        if self.model.trunk_depth and sampled.trunk is None:
            raise ValueError(f"{type(self.sampler).__name__} does not keep the frozen trunk's output; "
                             "use the fast sampler or model.reuse_trunk false")
        return sampled

    @torch.no_grad()
    def make(self, prompts: Sequence[str]) -> Experience:
        timings: dict[str, float] = {}
        eos = self.tokenizer.eos_token_id
        chunk = max(1, self.settings.batch_size)

        def pad_right(pieces: list[torch.Tensor], width: int, value) -> torch.Tensor:
            return torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[1]), value=value) for p in pieces])

        with evaluation_mode(self.model), self.autocast():
            # 1. generate with the KV cache; prompts left-padded to one length P. The sampling pass also
            #    yields the policy's log-probs and values (reuse_sampling_pass), so no forward repeats it.
            start = time.perf_counter()
            batch = self.tokenize_prompts(prompts)
            prompt_len = batch["input_ids"].shape[1]
            passes = [self._sample(batch["input_ids"][i:i + chunk], batch["attention_mask"][i:i + chunk])
                      for i in range(0, len(prompts), chunk)]
            width = max(p.sequences.shape[1] - prompt_len for p in passes)
            response_ids = pad_right([p.sequences[:, prompt_len:] for p in passes], width, eos)  # (B, R)
            response_mask, has_eos = rollout_mask(response_ids, eos)  # (B, R), (B,)
            input_ids = torch.cat([batch["input_ids"], response_ids], dim=1)  # (B, P + R)
            attention_mask = torch.cat([batch["attention_mask"], response_mask.long()], dim=1)  # (B, P + R)
            trunk = None
            if self.model.trunk_depth:  # (B, P + R, H); zeros on padding so no pad value can leak through attention
                trunk = torch.cat([nn.functional.pad(p.trunk, (0, 0, 0, prompt_len + width - p.trunk.shape[1]))
                                   for p in passes])
                trunk = trunk * attention_mask.unsqueeze(-1).to(trunk.dtype)
            release_freed_memory()  # the decoding steps' freed heap, before the reference forward's
            timings["generate"] = time.perf_counter() - start

            # 2. reference log-probs (adapters off); policy log-probs and values when sampling did not give them
            start = time.perf_counter()
            logprobs = values = None
            if self.reuse_sampling_pass:
                logprobs = pad_right([p.logprobs for p in passes], width, 0.0)  # (B, R)
                if all(p.hidden is not None for p in passes):
                    values = pad_right([self.model.values_from_hidden(p.hidden).float() for p in passes], width, 0.0)
            has_values = self.model.value_head is not None
            ref_logprobs = torch.zeros(response_ids.shape, device=response_ids.device)  # (B, R)
            fresh_logprobs = torch.zeros(response_ids.shape, device=response_ids.device)  # (B, R)
            fresh_values = torch.zeros(response_ids.shape, device=response_ids.device)  # (B, R)
            for i in range(0, len(prompts), self.forward_batch_size):
                rows = slice(i, i + self.forward_batch_size)
                first, end = padding_free_span(attention_mask[rows], response_mask[rows], prompt_len)
                ids, mask = input_ids[rows, first:end], attention_mask[rows, first:end]  # (b, t)
                kept = None if trunk is None else trunk[rows, first:end]  # (b, t, H)
                start_col, targets = prompt_len - first, input_ids[rows, prompt_len:end]  # (b, r)
                r = targets.shape[1]
                ref_logits = self.model.reference_logits(ids, mask, start_col, trunk_hidden=kept)
                ref_logprobs[rows, :r] = logprobs_from_logits(ref_logits, targets, self.settings.temperature)
                del ref_logits
                if logprobs is None or (has_values and values is None):
                    logits, vals = self.model(ids, mask, start_col, trunk_hidden=kept)
                    fresh_logprobs[rows, :r] = logprobs_from_logits(logits, targets, self.settings.temperature)
                    if has_values:
                        fresh_values[rows, :r] = vals.float()
                    del logits
            logprobs = fresh_logprobs if logprobs is None else logprobs
            if has_values and values is None:
                values = fresh_values
            timings["forward"] = time.perf_counter() - start

        # 3. score the decoded responses
        start = time.perf_counter()
        lengths = response_mask.sum(1).long().tolist()
        responses = [text.strip() for text in self.tokenizer.batch_decode(
            [ids[:n] for ids, n in zip(response_ids.tolist(), lengths)], skip_special_tokens=True)]
        scores = self.scorer.score(list(prompts), responses)
        timings["score"] = time.perf_counter() - start
        return Experience(
            prompts=list(prompts), responses=responses, input_ids=input_ids, attention_mask=attention_mask,
            response_start=prompt_len, response_mask=response_mask, has_eos=has_eos,
            logprobs=logprobs * response_mask, ref_logprobs=ref_logprobs * response_mask,
            values=None if values is None else values * response_mask, scores=scores, timings=timings, trunk_hidden=trunk,
        )
