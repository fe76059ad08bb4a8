"""The RL loop on accelerate: make experience, shape rewards, estimate advantages, update, log.

One loop for PPO, GRPO, RLOO and REINFORCE++: they differ only in their advantage estimator
(``rlhf.rl.advantages``), in whether a value head trains, in where the KL enters (a reward penalty or a
loss term) and in how the policy loss is averaged, all read from the config.

One :meth:`RLTrainer.step` is one iteration for every process at once: each process generates for its own
share of prompts (k samples each), statistics that must agree (reward moments, advantage whitening, the
KL controller, skip decisions, early stops) are reduced across processes, and gradients are all-reduced
by DDP, or reduce-scattered by FSDP2 under an FSDP launch: then the policy's decoder layers and the root
(embeddings, LM head, value head) are sharded here (``rlhf.core.sharding``), rollouts run inside ``gathered``
(each rank samples its own number of tokens), and the single-process speed paths (frozen trunk, packing,
merged-LoRA sampling) are off.

The trainer keeps the loop; its parts live beside it: cross-process reductions (``rlhf.rl.reducers``), reward
shaping (``rlhf.rl.shaping``), held-out evaluation and sample tables (``rlhf.rl.evaluation``), checkpoints
(``rlhf.rl.checkpoint``, from :meth:`RLTrainer.state_dict`), and the recipe that builds a trainer from a config
(``rlhf.rl.factory.build_rl_trainer``).
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
from rlhf.rl import checkpoint as ckpt
from rlhf.rl.advantages import make_estimator
from rlhf.rl.config import RLStageConfig
from rlhf.rl.evaluation import HeldOutEvaluator, response_metrics, samples_table
from rlhf.rl.experience import Experience, ExperienceMaker, padding_free_span
from rlhf.rl.kl import make_kl_controller
from rlhf.rl.length_control import remove_length_trend
from rlhf.rl.losses import make_policy_loss
from rlhf.rl.maths import (aggregate, clipped_value_loss, entropy_from_logits, kl_per_token, logprobs_from_logits,
                            masked_mean, masked_whiten, zero_variance_groups)
from rlhf.rl.memory import release_freed_memory
from rlhf.rl.objectives import RewardObjective
from rlhf.rl.policy import PolicyModel
from rlhf.rl.prompts import PromptStream
from rlhf.rl.reducers import ProcessReducer
from rlhf.rl.sampler import make_sampler
from rlhf.rl.shaping import RewardShaper
from rlhf.core import sharding
from rlhf.core.lifecycle import seed_everything
from rlhf.core.runtime import make_accelerator, select_device
from rlhf.core.threads import ThreadGovernor


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
    from rlhf.core.config import ConfigError

    # a quantized base never gets here: the stage refused it before loading (rlhf.core.sharding.check_wrappable)
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

    setup (``__init__``), :meth:`step`, :meth:`evaluate`, :meth:`state_dict` / :meth:`load_state_dict`; what each
    algorithm changes is an entry of a table (``rlhf.rl.advantages.ESTIMATORS``, ``rlhf.rl.losses.POLICY_LOSSES``).

    >>> trainer = build_rl_trainer(cfg)   # rlhf.rl.factory: the policy, scorer and prompts the config names
    >>> trainer = RLTrainer(cfg, model, tokenizer, scorer, prompts)   # model: rlhf.rl.policy.build_policy_model
    >>> metrics = trainer.step()        # one iteration on the next prompts; or trainer.step(list_of_prompts)
    >>> history = trainer.train()       # cfg.train.max_steps iterations (continues from a loaded checkpoint)
    """

    def __init__(self, cfg: RLStageConfig, model: PolicyModel, tokenizer, scorer: Scorer, prompts: Sequence[str],
                 accelerator=None, logger=None, run_dir: str | Path | None = None):
        self.cfg = cfg
        self.accelerator = acc = accelerator or make_accelerator(select_device(cfg.run.device))
        self.logger = logger
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.threads = ThreadGovernor(cfg.train.threads)  # 0: threads follow the cores other processes leave free
        self.reduce = ProcessReducer(acc)
        # 1. what the algorithm is: entries of the estimator and policy-loss tables, the reward objective
        self.estimator = make_estimator(cfg.rl.algo, cfg.update.gamma, cfg.update.lam, cfg.rl.scale_rewards)
        self.policy_loss = make_policy_loss(cfg.rl.policy_loss, cfg.update.clip_range, cfg.update.clip_range_high)
        self.objective = RewardObjective(cfg.reward, scorer)  # weighted or lagrangian (its multipliers)
        self.shaper = RewardShaper(cfg, self.objective, self.estimator, self.reduce)
        if self.estimator.needs_values and model.value_head is None:
            raise ValueError(f"{cfg.rl.algo} needs a value head: build the model with build_policy_model(cfg, ...)")
        # 2. the model on its device, sharded or wrapped, and its optimizer and schedule
        self._setup_model(model)
        # 3. experience: the sampler, the maker, the KL controller, this process's prompts
        merge = cfg.model.merge_lora_for_sampling and not self.sharded
        sampler = make_sampler(self.unwrapped, cfg.model.sampler, merge)
        compute_dtype = self.unwrapped.causal_lm.get_input_embeddings().weight.dtype
        self.maker = ExperienceMaker(self.unwrapped, tokenizer, scorer, cfg.generation, cfg.data.max_prompt_tokens,
                                     compute_dtype, reuse_sampling_pass=cfg.update.logprobs_from_sampling,
                                     forward_batch_size=cfg.update.forward_batch_size, sampler=sampler)
        self.tokenizer = self.maker.tokenizer
        if self.sharded:  # rollouts run on gathered weights: no rank waits for another's decoding
            self.maker.synced_gpus = False
        self.kl_ctl = make_kl_controller(cfg.kl.coef, cfg.kl.adaptive, cfg.kl.target, cfg.kl.horizon)
        self.stream = PromptStream(prompts, cfg.update.batch_size, acc.num_processes, acc.process_index,
                                   cfg.run.seed, cfg.data.shuffle)
        # 4. held-out evaluation: a fixed seed, so evaluations at different steps see comparable draws
        self.evaluator = HeldOutEvaluator(self.maker, self.reduce, cfg.kl.estimator, cfg.rollouts_per_step,
                                          step_seed(cfg.run.seed, 0, acc.process_index) + 1, logger, cfg.rl.algo)
        self.step_count = 0  # steps done; also the data position
        release_freed_memory()  # what loading and converting the checkpoints left on the heap

    def _setup_model(self, model: PolicyModel) -> None:
        from transformers import get_scheduler

        cfg, acc = self.cfg, self.accelerator
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

    # ------------------------------------------------------------ one iteration

    def step(self, prompts: Sequence[str] | None = None) -> dict[str, float]:
        """Generate for ``prompts`` (default: this process's next share), learn from them; returns metrics.

        Each prompt is sampled ``rl.samples_per_prompt`` times; its rollouts are consecutive rows (a group)."""
        cfg, acc = self.cfg, self.accelerator
        self.threads.before_step()  # re-choose the thread count from the CPU others used during the last step
        step, start = self.step_count + 1, time.perf_counter()
        prompts = list(prompts) if prompts is not None else self.stream.batch(self.step_count)
        k = cfg.rl.samples_per_prompt
        seed_everything(step_seed(cfg.run.seed, step, acc.process_index))

        # 1. rollouts: k responses per prompt, log-probs, values (ppo), reference log-probs, scores
        with sharding.gathered(self.unwrapped):  # sharded: whole weights, as each rank decodes its own length
            exp = self.maker.make([p for p in prompts for _ in range(k)])
        release_freed_memory()  # the sampling and forward transients, before the update's (rlhf.rl.memory)
        composite = self.objective.composite(exp.scores).to(acc.device)  # (B,) the scorer's, or the Lagrangian

        # 2. a non-finite score anywhere skips the whole batch on every process
        if self.reduce.any(~torch.isfinite(composite).all()):
            metrics = {"skipped/nonfinite": 1.0, "response/length": exp.response_mask.sum(1).mean().item()}
            return self._finish_step(step, exp, self.reduce.mean(metrics), start)

        # 3. shaped scores, the KL (a per-token penalty unless a loss term), advantages, the rows in the loss
        kl_coef = self.kl_ctl.value
        kl, scores, shaping = self._advantages(exp, composite, kl_coef)

        # 4. epochs over mini-batches
        update_start = time.perf_counter()
        update = self._update(exp, step)
        release_freed_memory()
        update["time/update_s"] = time.perf_counter() - update_start

        # 5. metrics averaged over processes; the KL controller and the multipliers move on them
        metrics = self.reduce.mean(self._step_metrics(exp, composite, kl, kl_coef, scores, shaping, update))
        self.kl_ctl.update(metrics["objective/kl"], n_steps=len(exp) * acc.num_processes)
        if self.objective.lagrangian:  # every process sees the same averaged violations: the multipliers agree
            self.objective.update({c: metrics[f"lagrangian/violation_{c}"] for c in self.objective.thresholds})
        return self._finish_step(step, exp, metrics, start)

    def _advantages(self, exp: Experience, composite: torch.Tensor,
                    kl_coef: float) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """Fill ``exp.advantages``, ``exp.returns`` and ``exp.loss_mask``; returns the (B, R) KL, the (B,) shaped
        scores and the shaping's own metrics."""
        cfg, acc, k = self.cfg, self.accelerator, self.cfg.rl.samples_per_prompt
        mask = exp.response_mask
        shaping = {}
        if cfg.reward.length_detrend:  # the batch's linear trend of score on response length taken out
            composite, slope = remove_length_trend(composite, mask.sum(1).float(), self.reduce.gather)
            shaping["reward/length_slope"] = slope
        kl = kl_per_token(exp.logprobs, exp.ref_logprobs, cfg.kl.estimator) * mask  # (B, R)
        has_eos = exp.has_eos.to(acc.device)
        scores, corrected = self.shaper.scores(exp, composite, has_eos)  # (B,)
        penalty = torch.zeros_like(kl) if cfg.kl_in_loss else -kl_coef * kl  # (B, R)
        # the algorithm's estimator; whitened over every process's tokens if it says so
        advantages, exp.returns = self.estimator(scores, penalty, mask, exp.values, k, corrected)  # (B, R) each
        if self.estimator.whiten:
            mean, var = self.reduce.mean_var(advantages, mask)
            advantages = masked_whiten(advantages, mask, mean=mean, var=var)
        exp.advantages = advantages
        # rows out of the loss: groups with no spread (dynamic sampling), truncated responses
        dropped = zero_variance_groups(scores, k) if cfg.rl.dynamic_sampling else torch.zeros_like(has_eos)
        truncated = ~has_eos if cfg.rl.mask_truncated else torch.zeros_like(has_eos)
        exp.loss_mask = mask * (~(dropped | truncated)).float().unsqueeze(1)  # (B, R)
        if cfg.rl.dynamic_sampling:
            shaping["rollout/dropped_groups"] = dropped.sum().item() / k
        if cfg.rl.mask_truncated:
            shaping["rollout/masked_truncated"] = truncated.sum().item()
        if cfg.rl.overlong_buffer:
            shaping["objective/overlong_penalty"] = self.shaper.overlong(exp, has_eos.device).mean().item()
        return kl, scores, shaping

    def _step_metrics(self, exp: Experience, composite: torch.Tensor, kl: torch.Tensor, kl_coef: float,
                      scores: torch.Tensor, shaping: dict[str, float], update: dict[str, float]) -> dict[str, float]:
        """This process's metrics of one step (before they are averaged over processes)."""
        k = self.cfg.rl.samples_per_prompt
        metrics = {
            **exp.scores.as_metrics(),
            "objective/kl": kl.sum(1).mean().item(),
            "objective/kl_coef": kl_coef,
            "objective/scores": scores.mean().item(),
            **response_metrics(exp),
            **{f"time/{key}_s": value for key, value in exp.timings.items()},
            **shaping,
            **update,
        }
        if self.objective.lagrangian:
            metrics.update(self.objective.metrics())  # the multipliers this batch was scored with
            metrics.update({f"lagrangian/violation_{c}": v for c, v in self.objective.violations(exp.scores).items()})
        if self.estimator.needs_groups:  # how much the k samples of a prompt differ: no spread, no signal
            metrics["reward/group_std"] = composite.reshape(-1, k).std(1).mean().item()
        return metrics

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
                self.logger.log_table("samples", *samples_table(exp, self.cfg.train.num_samples), step=step)
        save_every = self.cfg.train.save_steps
        if self.run_dir is not None and save_every and step % save_every == 0:
            ckpt.save(self)
        return metrics

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
                if cfg.max_approx_kl > 0 and self.reduce.any(stats["policy/approxkl"] > cfg.max_approx_kl):
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
                if self.reduce.any(~torch.isfinite(losses["loss"])):
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
        """The configured policy loss (``self.policy_loss``, an entry of POLICY_LOSSES) (+ value loss with a value
        head, + k3 KL term when the KL is in the loss, - entropy bonus), averaged as ``rl.loss_aggregation`` says."""
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

    def evaluate(self, prompts: Sequence[str]) -> dict[str, float]:
        """Mean scores and KL of one fresh sample per prompt (split across processes), no update
        (``rlhf.rl.evaluation.HeldOutEvaluator``)."""
        return self.evaluator.evaluate(prompts)

    # ------------------------------------------------------------ the whole run

    def train(self, steps: int | None = None, eval_prompts: Sequence[str] = ()) -> list[dict[str, float]]:
        """Run steps until ``steps`` (default ``train.max_steps``) are done; returns each step's metrics.

        With ``eval_prompts``, held-out scores are logged (``eval/...``) before the first step, every
        ``train.eval_every`` steps and after the last."""
        total = self.cfg.train.max_steps if steps is None else steps
        every = self.cfg.train.eval_every
        history = []
        if eval_prompts and self.step_count < total:
            self.evaluator.log(eval_prompts, self.step_count)
        while self.step_count < total:
            history.append(self.step())
            if eval_prompts and ((every and self.step_count % every == 0) or self.step_count == total):
                history[-1].update(self.evaluator.log(eval_prompts, self.step_count))
        return history

    # ------------------------------------------------------------ checkpoint state

    def state_dict(self) -> dict:
        """What a checkpoint keeps besides weights, optimizer and scheduler (``rlhf.rl.checkpoint`` writes it)."""
        return {"step": self.step_count, "kl_controller": self.kl_ctl.state_dict(),
                "reward_moments": self.shaper.state_dict(), "lagrangian": self.objective.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step"])
        self.kl_ctl.load_state_dict(state["kl_controller"])
        self.shaper.load_state_dict(state.get("reward_moments"))
        self.objective.load_state_dict(state.get("lagrangian") or {})  # checkpoints from before have none


PPOTrainer = RLTrainer  # its name while it ran PPO only
