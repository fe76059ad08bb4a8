"""The RL loop on accelerate: make experience, shape rewards, estimate advantages, update, log.

One loop for PPO, GRPO, RLOO and REINFORCE++: they differ only in their advantage estimator
(``rlhf.ppo.advantages``), in whether a value head trains, in where the KL enters (a reward penalty or a
loss term) and in how the policy loss is averaged, all read from the config.

One :meth:`RLTrainer.step` is one iteration for every process at once: each process generates for its own
share of prompts (k samples each), statistics that must agree (reward moments, advantage whitening, the
KL controller, skip decisions, early stops) are reduced across processes, and gradients are all-reduced
by DDP, or reduce-scattered by FSDP2 under an FSDP launch: then the policy's decoder layers and the root
(embeddings, LM head, value head) are sharded here (``rlhf.sharding``), rollouts run inside ``gathered``
(each rank samples its own number of tokens), and the single-process speed paths (frozen trunk, packing,
merged-LoRA sampling) are off. Checkpoints: ``rlhf.ppo.checkpoint``.
"""
from __future__ import annotations

import contextlib
import math
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import torch

from reward_models.types import Scorer
from rlhf.ppo import checkpoint as ckpt
from rlhf.ppo.advantages import make_estimator
from rlhf.ppo.config import RLStageConfig
from rlhf.ppo.experience import Experience, ExperienceMaker, padding_free_span
from rlhf.ppo.kl import make_kl_controller
from rlhf.ppo.losses import make_policy_loss
from rlhf.ppo.maths import (aggregate, clipped_value_loss, entropy_from_logits, kl_per_token, logprobs_from_logits,
                            masked_mean, masked_whiten, zero_variance_groups)
from rlhf.ppo.memory import release_freed_memory
from rlhf.ppo.policy import PolicyModel
from rlhf.ppo.prompts import PromptStream
from rlhf.ppo.length_control import remove_length_trend
from rlhf.ppo.objectives import RewardObjective, normalize_then_sum
from rlhf.ppo.rewards import RunningMoments, overlong_penalty, shape_scores
from rlhf.ppo.sampler import make_sampler
from rlhf import sharding
from rlhf.lifecycle import seed_everything
from rlhf.runtime import make_accelerator, select_device
from rlhf.threads import ThreadGovernor


def step_seed(seed: int, step: int, rank: int) -> int:
    """Each (step, rank) samples with its own seed, so a resumed run draws what the uninterrupted one drew."""
    return (seed * 1_000_003 + step * 7_919 + rank * 104_729) % (2**31 - 1)


def trim_padding(part: Experience) -> Experience:
    """The rollouts of a (micro-)batch cut to their padding-free span (see ``padding_free_span``)."""
    first, end = padding_free_span(part.attention_mask, part.response_mask, part.response_start)
    width = end - part.response_start
    trimmed = Experience(**{**part.__dict__})
    trimmed.input_ids = part.input_ids[:, first:end]
    trimmed.attention_mask = part.attention_mask[:, first:end]
    if part.trunk_hidden is not None:
        trimmed.trunk_hidden = part.trunk_hidden[:, first:end]
    trimmed.response_start = part.response_start - first
    for name in ("response_mask", "logprobs", "ref_logprobs", "values", "rewards", "advantages", "returns",
                 "loss_mask"):
        value = getattr(part, name)
        if value is not None:
            setattr(trimmed, name, value[:, :width])
    return trimmed


def shard_policy(model: PolicyModel, cfg: RLStageConfig, say: bool = True) -> None:
    """FSDP2 over the policy's (and a separate critic's) decoder layers, then the whole ``PolicyModel`` as the
    root unit (embeddings, tied LM head, final norm, value head). LoRA adapters share their layer's unit.

    The speed paths built for one unsharded process switch off: the frozen trunk (it cuts the layer list under
    the sharded layers), packed forwards and the merged-LoRA sampler (it writes into the gathered weights)."""
    from rlhf.config import ConfigError

    if model.quantized:
        raise ConfigError(f"model.quantization: a {cfg.model.quantization} base cannot be sharded under FSDP here; "
                          "use a DDP launch")
    models = [model.policy] + ([model.critic] if model.critic is not None else [])
    try:
        layers = [layer for m in models for layer in sharding.transformer_blocks(m)]
    except ValueError as err:
        raise ConfigError(f"model.name: cannot be sharded under FSDP ({err})") from err
    off = [name for name, on in (("frozen trunk", model.trunk_depth), ("packing", model.pack_sequences),
                                 ("merged-LoRA sampling", cfg.model.sampler == "fast"
                                  and cfg.model.merge_lora_for_sampling)) if on]
    model.use_frozen_trunk(False)
    model.use_packing(False)
    if off and say:
        print(f"[{cfg.rl.algo}] FSDP: {', '.join(off)} off (single-process speed paths; rollouts run on gathered "
              "weights)", file=sys.stderr, flush=True)
    sharding.shard(model, layers)


class RLTrainer:
    """Online RL with a KL penalty on a LoRA policy: PPO, GRPO, RLOO or REINFORCE++ (``cfg.rl.algo``).

    >>> trainer = RLTrainer(cfg, model, tokenizer, scorer, prompts)   # model: rlhf.ppo.policy.build_policy_model
    >>> metrics = trainer.step()        # one iteration on the next prompts; or trainer.step(list_of_prompts)
    >>> history = trainer.train()       # cfg.train.max_steps iterations (continues from a loaded checkpoint)
    """

    def __init__(self, cfg: RLStageConfig, model: PolicyModel, tokenizer, scorer: Scorer, prompts: Sequence[str],
                 accelerator=None, logger=None, run_dir: str | Path | None = None):
        from transformers import get_scheduler

        self.cfg = cfg
        self.accelerator = accelerator or make_accelerator(select_device(cfg.run.device))
        self.logger = logger
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.threads = ThreadGovernor(cfg.train.threads)  # 0: threads follow the cores other processes leave free
        self.estimator = make_estimator(cfg.rl.algo, cfg.update.gamma, cfg.update.lam, cfg.rl.scale_rewards)
        self.policy_loss = make_policy_loss(cfg.rl.policy_loss, cfg.update.clip_range, cfg.update.clip_range_high)
        self.objective = RewardObjective(cfg.reward, scorer)  # weighted or lagrangian (its multipliers)
        if self.estimator.needs_values and model.value_head is None:
            raise ValueError(f"{cfg.rl.algo} needs a value head: build the model with build_policy_model(cfg, ...)")
        acc = self.accelerator
        model.to(acc.device)
        # FSDP: shard before the optimizer sees the parameters (fully_shard replaces them by DTensor shards), and
        # keep the model away from prepare (accelerate ignores its FSDP plugin on CPU and would wrap it in DDP).
        self.sharded = sharding.fsdp_requested() and acc.num_processes > 1
        if self.sharded:
            shard_policy(model, cfg, say=acc.is_main_process)
        self.params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(self.params, lr=cfg.train.learning_rate, weight_decay=cfg.train.weight_decay)
        # Stepped once per step on every process (not prepared: accelerate would step it once per process).
        self.scheduler = get_scheduler(cfg.train.lr_scheduler, optimizer, num_warmup_steps=cfg.train.warmup_steps,
                                       num_training_steps=max(cfg.train.max_steps, 1))
        if self.sharded:
            self.model, self.optimizer = model, acc.prepare(optimizer)
        else:
            self.model, self.optimizer = acc.prepare(model, optimizer)
        self.unwrapped: PolicyModel = acc.unwrap_model(self.model)
        if self.unwrapped.trunk_depth and acc.distributed_type.value in ("FSDP", "DEEPSPEED"):
            # Sharded layers gather their weights inside their own wrappers; the trunk path cuts the layer list
            # under them, which is only tested unsharded (single process and DDP).
            self.unwrapped.use_frozen_trunk(False)
        compute_dtype = self.unwrapped.causal_lm.get_input_embeddings().weight.dtype
        merge = cfg.model.merge_lora_for_sampling and not self.sharded
        sampler = make_sampler(self.unwrapped, cfg.model.sampler, merge)
        self.maker = ExperienceMaker(self.unwrapped, tokenizer, scorer, cfg.generation, cfg.data.max_prompt_tokens,
                                     compute_dtype, reuse_sampling_pass=cfg.update.logprobs_from_sampling,
                                     forward_batch_size=cfg.update.forward_batch_size, sampler=sampler)
        self.tokenizer = self.maker.tokenizer
        if self.sharded:  # rollouts run on gathered weights: no rank waits for another's decoding
            self.maker.synced_gpus = False
        self.kl_ctl = make_kl_controller(cfg.kl.coef, cfg.kl.adaptive, cfg.kl.target, cfg.kl.horizon)
        self.moments = RunningMoments() if cfg.reward.normalize else None
        self.stream = PromptStream(prompts, cfg.update.batch_size, acc.num_processes, acc.process_index,
                                   cfg.run.seed, cfg.data.shuffle)
        self.step_count = 0  # steps done; also the data position
        release_freed_memory()  # what loading and converting the checkpoints left on the heap

    # ------------------------------------------------------------ cross-process helpers

    def _any_process(self, flag: torch.Tensor | bool) -> bool:
        flag = torch.as_tensor(flag, dtype=torch.float32, device=self.accelerator.device).reshape(1)
        return bool(self.accelerator.reduce(flag, reduction="sum").item() > 0)

    def _global_mean_var(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and (unbiased) variance of the masked entries of ``x`` over every process."""
        sums = torch.stack([(x * mask).sum(), (x * x * mask).sum(), mask.sum()]).double()
        total, total_sq, count = self.accelerator.reduce(sums, reduction="sum").tolist()
        mean = total / max(count, 1)
        var = (total_sq / max(count, 1) - mean**2) * count / max(count - 1, 1)
        return torch.tensor(mean, device=x.device), torch.tensor(max(var, 0.0), device=x.device)

    def _reduce_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        keys = sorted(metrics)
        local = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=self.accelerator.device)
        reduced = self.accelerator.reduce(local, reduction="mean").tolist()
        return dict(zip(keys, reduced))

    # ------------------------------------------------------------ one iteration

    def step(self, prompts: Sequence[str] | None = None) -> dict[str, float]:
        """Generate for ``prompts`` (default: this process's next share), learn from them; returns metrics.

        Each prompt is sampled ``rl.samples_per_prompt`` times; its rollouts are consecutive rows (a group)."""
        cfg, acc = self.cfg, self.accelerator
        self.threads.before_step()  # re-choose the thread count from the CPU others used during the last step
        step = self.step_count + 1
        start = time.perf_counter()
        prompts = list(prompts) if prompts is not None else self.stream.batch(self.step_count)
        k = cfg.rl.samples_per_prompt
        seed_everything(step_seed(cfg.run.seed, step, acc.process_index))

        # 1. rollouts: k responses per prompt, log-probs, values (ppo), reference log-probs, scores
        with sharding.gathered(self.unwrapped):  # sharded: whole weights, as each rank decodes its own length
            exp = self.maker.make([p for p in prompts for _ in range(k)])
        release_freed_memory()  # the sampling and forward transients, before the update's (rlhf.ppo.memory)
        mask = exp.response_mask
        composite = self.objective.composite(exp.scores).to(acc.device)  # (B,) the scorer's, or the Lagrangian
        kl_coef = self.kl_ctl.value

        # 2. a non-finite score anywhere skips the whole batch on every process
        if self._any_process(~torch.isfinite(composite).all()):
            metrics = {"skipped/nonfinite": 1.0, "response/length": mask.sum(1).mean().item()}
            return self._finish_step(step, exp, self._reduce_metrics(metrics), start)

        # 2b. optional length control: the batch's linear trend of score on response length taken out
        length_metrics = {}
        if cfg.reward.length_detrend:
            composite, slope = remove_length_trend(composite, mask.sum(1).float(), acc.gather)
            length_metrics["reward/length_slope"] = slope

        # 3. shaped scores (EOS penalty, running normalisation or per-head normalisation, clipping, overlong
        #    penalty); the KL as a per-token penalty unless it is a loss term
        kl = kl_per_token(exp.logprobs, exp.ref_logprobs, cfg.kl.estimator) * mask  # (B, R)
        has_eos = exp.has_eos.to(acc.device)
        scores, corrected = self._sequence_scores(exp, composite, has_eos)  # (B,)
        penalty = torch.zeros_like(kl) if cfg.kl_in_loss else -kl_coef * kl  # (B, R)

        # 4. advantages from the algorithm's estimator; whitened over every process's tokens if it says so
        advantages, exp.returns = self.estimator(scores, penalty, mask, exp.values, k, corrected)  # (B, R) each
        if self.estimator.whiten:
            mean, var = self._global_mean_var(advantages, mask)
            advantages = masked_whiten(advantages, mask, mean=mean, var=var)
        exp.advantages = advantages
        # rows out of the loss: groups with no spread (dynamic sampling), truncated responses
        dropped = zero_variance_groups(scores, k) if cfg.rl.dynamic_sampling else torch.zeros_like(has_eos)
        truncated = ~has_eos if cfg.rl.mask_truncated else torch.zeros_like(has_eos)
        exp.loss_mask = mask * (~(dropped | truncated)).float().unsqueeze(1)  # (B, R)

        # 5. epochs over mini-batches
        update_start = time.perf_counter()
        update = self._update(exp, step)
        release_freed_memory()
        update_time = time.perf_counter() - update_start

        # 6. the KL controller sees the mean KL per response over every process
        metrics = {
            **exp.scores.as_metrics(),
            **length_metrics,
            "objective/kl": kl.sum(1).mean().item(),
            "objective/kl_coef": kl_coef,
            "objective/scores": scores.mean().item(),
            "response/length": mask.sum(1).mean().item(),
            "response/eos_rate": has_eos.float().mean().item(),
            "time/update_s": update_time,
            **{f"time/{k}_s": v for k, v in exp.timings.items()},
            **update,
        }
        if cfg.rl.dynamic_sampling:
            metrics["rollout/dropped_groups"] = dropped.sum().item() / k
        if cfg.rl.mask_truncated:
            metrics["rollout/masked_truncated"] = truncated.sum().item()
        if cfg.rl.overlong_buffer:
            metrics["objective/overlong_penalty"] = self._overlong(exp, has_eos.device).mean().item()
        if self.objective.lagrangian:
            metrics.update(self.objective.metrics())  # the multipliers this batch was scored with
            metrics.update({f"lagrangian/violation_{c}": v for c, v in self.objective.violations(exp.scores).items()})
        if self.estimator.needs_groups:  # how much the k samples of a prompt differ: no spread, no signal
            metrics["reward/group_std"] = composite.reshape(-1, k).std(1).mean().item()
        metrics = self._reduce_metrics(metrics)
        self.kl_ctl.update(metrics["objective/kl"], n_steps=len(exp) * acc.num_processes)
        if self.objective.lagrangian:  # every process sees the same averaged violations: the multipliers agree
            self.objective.update({c: metrics[f"lagrangian/violation_{c}"] for c in self.objective.thresholds})
        return self._finish_step(step, exp, metrics, start)

    def _overlong(self, exp: Experience, device: torch.device) -> torch.Tensor:
        lengths = exp.response_mask.sum(1).to(device)  # (B,)
        rl = self.cfg.rl
        return overlong_penalty(lengths, self.cfg.generation.max_new_tokens, rl.overlong_buffer, rl.overlong_penalty)

    def _sequence_scores(self, exp: Experience, composite: torch.Tensor,
                         has_eos: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """(B,) scores for the estimator, and whether they already carry its baseline (normalize_then_sum).

        sum: the composite less the missing-EOS penalty, normalised by running moments, clipped; GDPO: each
        head normalised on its own (``objectives.normalize_then_sum``), then the same penalty and clip. The
        overlong penalty is added last, on the scale of the estimator's input."""
        reward, k = self.cfg.reward, self.cfg.rl.samples_per_prompt
        overlong = self._overlong(exp, composite.device)
        if reward.aggregation == "normalize_then_sum":
            _, columns, weights = self.objective.columns(exp.scores)
            baseline = lambda s: self.estimator.sequence_scores(s, k)  # noqa: E731
            scores = normalize_then_sum(columns.to(composite.device), weights.to(composite.device), baseline)
            scores = shape_scores(scores, has_eos, reward.missing_eos_penalty, None, reward.clip)
            return scores + overlong, True
        if self.moments is not None:
            penalised = composite - reward.missing_eos_penalty * (~has_eos).float()
            self.moments.update(self.accelerator.gather(penalised).cpu())
        scores = shape_scores(composite, has_eos, reward.missing_eos_penalty, self.moments, reward.clip)
        return scores + overlong, False

    def _finish_step(self, step: int, exp: Experience, metrics: dict[str, float], start: float) -> dict[str, float]:
        self.scheduler.step()
        self.step_count = step
        metrics.setdefault("skipped/nonfinite", 0.0)
        metrics["train/lr"] = self.scheduler.get_last_lr()[0]
        metrics["time/step_s"] = time.perf_counter() - start
        if self.logger is not None:
            if step % max(self.cfg.run.log_every, 1) == 0:
                self.logger.log(metrics, step=step)
            if self.cfg.train.sample_every and step % self.cfg.train.sample_every == 0:
                self._log_samples(step, exp)
        save_steps = self.cfg.train.save_steps
        if self.run_dir is not None and save_steps and step % save_steps == 0:
            ckpt.save(self)
        return metrics

    def _log_samples(self, step: int, exp: Experience) -> None:
        heads = list(exp.scores.heads)
        columns = ["prompt", "response", "composite", *heads] + (["toxicity"] if exp.scores.toxicity is not None else [])
        rows = []
        for i in range(min(self.cfg.train.num_samples, len(exp))):
            row = [exp.prompts[i], exp.responses[i], exp.scores.composite[i].item()]
            row += [exp.scores.heads[h][i].item() for h in heads]
            if exp.scores.toxicity is not None:
                row.append(exp.scores.toxicity[i].item())
            rows.append(row)
        self.logger.log_table("samples", columns, rows, step=step)

    # ------------------------------------------------------------ the update

    def _update(self, exp: Experience, step: int) -> dict[str, float]:
        """``update.epochs`` passes of mini-batch optimizer steps; stops early past ``update.max_approx_kl``."""
        cfg = self.cfg.update
        generator = torch.Generator().manual_seed(step_seed(self.cfg.run.seed, step, self.accelerator.process_index))
        totals: dict[str, float] = defaultdict(float)
        updates = skipped = tokens = 0
        self.model.train()
        for _epoch in range(cfg.epochs):
            order = torch.randperm(len(exp), generator=generator)
            stop = False
            for first in range(0, len(exp), cfg.mini_batch_size):
                stats = self._optimizer_step(exp, order[first:first + cfg.mini_batch_size])
                if stats is None:
                    skipped += 1
                    continue
                tokens += int(stats.pop("tokens"))
                updates += 1
                for key, value in stats.items():
                    totals[key] += value
                # Every process stops together (DDP and FSDP need the same number of backward passes).
                if cfg.max_approx_kl > 0 and self._any_process(stats["policy/approxkl"] > cfg.max_approx_kl):
                    stop = True
                    break
            if stop:
                break
        self.model.eval()
        out = {key: value / max(updates, 1) for key, value in totals.items()}
        if not updates:
            out = {key: math.nan for key in self._loss_keys()}
        out.update({"ppo/updates": float(updates), "skipped/nonfinite": float(skipped), "tokens/update": float(tokens)})
        return out

    def _loss_keys(self) -> list[str]:
        keys = ["loss/policy", "policy/clipfrac", "policy/approxkl", "val/ratio", "objective/entropy", "train/grad_norm"]
        if self.unwrapped.value_head is not None:
            keys += ["loss/value", "val/clipfrac"]
        if self.cfg.kl_in_loss:
            keys += ["loss/kl"]
        return keys

    def _optimizer_step(self, exp: Experience, rows: torch.Tensor) -> dict[str, float] | None:
        """One optimizer step on a mini-batch, accumulated over micro-batches; None when it was skipped."""
        acc, cfg = self.accelerator, self.cfg
        micro_batches = rows.split(cfg.update.micro_batch_size)
        stats: dict[str, float] = defaultdict(float)
        no_sync = sharding.no_sync if self.sharded else acc.no_sync
        for i, idx in enumerate(micro_batches):
            part = trim_padding(exp.rows(idx))
            last = i == len(micro_batches) - 1
            # Gradients are all-reduced (FSDP: reduce-scattered) once per mini-batch, on its last micro-batch.
            with contextlib.nullcontext() if last else no_sync(self.model):
                with self.maker.autocast():
                    logits, values = self.model(part.input_ids, part.attention_mask, part.response_start,
                                                trunk_hidden=part.trunk_hidden)
                losses = self._losses(part, logits, values)
                if self._any_process(~torch.isfinite(losses["loss"])):
                    self.optimizer.zero_grad(set_to_none=True)
                    return None
                acc.backward(losses["loss"] / len(micro_batches))
            for key, value in losses.items():
                if key != "loss":
                    stats[key] += value.item() / len(micro_batches)
            stats["tokens"] += part.input_ids.numel()
        max_norm = cfg.train.max_grad_norm if cfg.train.max_grad_norm > 0 else float("inf")
        grad_norm = acc.clip_grad_norm_(self.params, max_norm)
        if hasattr(grad_norm, "full_tensor"):  # sharded gradients give the whole norm as a (replicated) DTensor
            grad_norm = grad_norm.full_tensor()
        if not torch.isfinite(torch.as_tensor(grad_norm)).item():  # already all-reduced: every process agrees
            self.optimizer.zero_grad(set_to_none=True)
            return None
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        stats["train/grad_norm"] = float(grad_norm)
        return dict(stats)

    def _losses(self, part: Experience, logits: torch.Tensor, values: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Clipped policy loss (+ value loss with a value head, + k3 KL term when the KL is in the loss,
        - entropy bonus), the policy and KL terms averaged as ``rl.loss_aggregation`` says."""
        cfg, rl = self.cfg.update, self.cfg.rl
        mask = part.loss_mask if part.loss_mask is not None else part.response_mask  # rows out of the loss: 0
        max_len = self.cfg.generation.max_new_tokens
        temperature = self.cfg.generation.temperature  # logits (b, r, V) in the compute dtype
        logprobs = logprobs_from_logits(logits, part.responses_ids, temperature)  # (b, r) float32
        policy = self.policy_loss(logprobs, part.logprobs, part.advantages, mask, rl.loss_aggregation, max_len)
        # Without an entropy bonus the entropy is only logged: keep it out of the autograd graph.
        entropy = masked_mean(entropy_from_logits(logits if cfg.entropy_coef else logits.detach(), temperature), mask)
        loss = policy["loss"] - cfg.entropy_coef * entropy
        out = {"loss/policy": policy["loss"].detach(), "policy/clipfrac": policy["clipfrac"],
               "policy/approxkl": policy["approxkl"].detach(), "val/ratio": policy["ratio"].detach(),
               "objective/entropy": entropy.detach()}
        if values is not None:
            value = clipped_value_loss(values, part.values, part.returns, part.response_mask, cfg.clip_range_value)
            loss = loss + cfg.vf_coef * value["loss"]
            out.update({"loss/value": value["loss"].detach(), "val/clipfrac": value["clipfrac"]})
        if self.cfg.kl_in_loss:
            # k3 on the current policy's samples: its gradient is that of KL(policy || reference) (GRPO's
            # term); k1 would have zero expected gradient here.
            kl = aggregate(kl_per_token(logprobs, part.ref_logprobs, "k3"), mask, rl.loss_aggregation, max_len)
            loss = loss + self.kl_ctl.value * kl  # the controller moves only after the update
            out["loss/kl"] = kl.detach()
        return {"loss": loss, **out}

    # ------------------------------------------------------------ held-out evaluation

    @torch.no_grad()
    def evaluate(self, prompts: Sequence[str]) -> dict[str, float]:
        """Mean scores and KL of one fresh sample per prompt (split across processes), no update.

        Sampling uses a fixed seed, so evaluations at different steps see comparable draws."""
        acc = self.accelerator
        mine = list(prompts)[acc.process_index::acc.num_processes]
        seed_everything(step_seed(self.cfg.run.seed, 0, acc.process_index) + 1)
        totals: dict[str, float] = defaultdict(float)
        batch = self.cfg.rollouts_per_step
        # One gathering around the loop: the ranks' shares may differ by a batch (gathering is a collective).
        with sharding.gathered(self.unwrapped):
            for first in range(0, len(mine), batch):
                exp = self.maker.make(mine[first:first + batch])
                kl = kl_per_token(exp.logprobs, exp.ref_logprobs, self.cfg.kl.estimator) * exp.response_mask
                parts = {**exp.scores.as_metrics(), "objective/kl": kl.sum(1).mean().item(),
                         "response/length": exp.response_mask.sum(1).mean().item(),
                         "response/eos_rate": exp.has_eos.float().mean().item()}
                for key, value in parts.items():
                    totals[key] += value * len(exp)
        local = {f"eval/{key}": value / max(len(mine), 1) for key, value in totals.items()}
        return self._reduce_metrics(local)

    # ------------------------------------------------------------ the whole run

    def train(self, steps: int | None = None, eval_prompts: Sequence[str] = ()) -> list[dict[str, float]]:
        """Run steps until ``steps`` (default ``train.max_steps``) are done; returns each step's metrics.

        With ``eval_prompts``, held-out scores are logged (``eval/...``) before the first step, every
        ``train.eval_every`` steps and after the last."""
        total = self.cfg.train.max_steps if steps is None else steps
        every = self.cfg.train.eval_every
        history = []
        if eval_prompts and self.step_count < total:
            self._log_eval(eval_prompts)
        while self.step_count < total:
            history.append(self.step())
            if eval_prompts and ((every and self.step_count % every == 0) or self.step_count == total):
                history[-1].update(self._log_eval(eval_prompts))
        return history

    def _log_eval(self, prompts: Sequence[str]) -> dict[str, float]:
        metrics = self.evaluate(prompts)
        if self.logger is not None:
            self.logger.log(metrics, step=self.step_count)
        if self.accelerator.is_main_process:
            print(f"[{self.cfg.rl.algo}] held-out eval at step {self.step_count}: "
                  + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()), flush=True)
        return metrics

    def trainer_state(self) -> dict:
        """What a checkpoint keeps besides weights, optimizer and scheduler (rlhf.ppo.checkpoint)."""
        return {"step": self.step_count, "kl_controller": self.kl_ctl.state_dict(),
                "reward_moments": self.moments.state_dict() if self.moments is not None else None,
                "lagrangian": self.objective.state_dict()}

    def load_trainer_state(self, state: dict) -> None:
        self.step_count = int(state["step"])
        self.kl_ctl.load_state_dict(state["kl_controller"])
        if self.moments is not None and state.get("reward_moments"):
            self.moments.load_state_dict(state["reward_moments"])
        self.objective.load_state_dict(state.get("lagrangian") or {})  # checkpoints from before have none


PPOTrainer = RLTrainer  # its name while it ran PPO only
