"""Training the HHH reward model: masked pairwise Bradley–Terry loss over three heads.

:func:`train_reward_model` is the whole stage (``pipelines/reward.py`` calls it): a plain accelerate
loop, so the same code runs in one process, under ``accelerate launch`` and under ``torchrun``.
Each optimizer step sees ``grad_accum`` single-head batches per process (see
:func:`reward_models.data.balanced_batches`); every epoch ends with dev accuracy per head and a
checkpoint; the final model (best dev epoch) goes to ``<run>/final`` with its normalisation statistics,
and its accuracy on the held-out test split goes to ``summary.json``.
"""
from __future__ import annotations

import functools
import math
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import torch

from reward_models.checkpoint import PREFIX, load_checkpoint, save_checkpoint
from reward_models.config import RewardStageConfig, ToxicitySettings
from reward_models.data import (balanced_batches, drop_contradictions, head_mask, load_splits, margins,
                                pools_by_head, response_tokens, subsample)
from reward_models import trunk_cache
from reward_models.encoding import Encoded
from reward_models.evaluation import normalisation_stats, pair_accuracy
from reward_models.losses import (fit_length_coefficient, length_correlation_penalty, pairwise_correct,
                                  pairwise_loss)
from reward_models.model import HEAD_MODULES, RewardModel, autocast, new_reward_model, save_reward_model
from reward_models.types import HEADS
from rlhf.config import ConfigError, RunConfig
from rlhf.quantization import check_backend
from rlhf.records import PreferenceRecord
from rlhf.runtime import make_accelerator, use_bf16
from rlhf import sharding
from rlhf.lifecycle import start_run
from rlhf.tracking import MetricsLogger
from rlhf.zoo import rlhf_home

STAGE = "reward"


@dataclass
class EncodedPairs:
    """The training set, tokenised once: sequence i of ``chosen``/``rejected`` is pair i."""

    chosen: list[Encoded]
    rejected: list[Encoded]
    mask: torch.Tensor  # (pairs, heads) bool: heads each pair is labelled for
    margin: torch.Tensor  # (pairs,) annotated margins, 0 where none
    chosen_tokens: torch.Tensor  # (pairs,) response tokens of each chosen response (untruncated)
    rejected_tokens: torch.Tensor  # (pairs,) same, rejected

    @property
    def length_diff(self) -> torch.Tensor:
        """(pairs,) len(chosen) - len(rejected) in tokens."""
        return self.chosen_tokens - self.rejected_tokens

    def lengths(self) -> list[int]:
        return [len(c.input_ids) + len(r.input_ids) for c, r in zip(self.chosen, self.rejected)]


@dataclass
class Window:
    """Training metrics summed between two log lines."""

    loss: float = 0.0
    batches: int = 0
    head_loss: torch.Tensor = field(default_factory=lambda: torch.zeros(len(HEADS)))  # (heads,) sum of batch means
    head_batches: torch.Tensor = field(default_factory=lambda: torch.zeros(len(HEADS)))
    correct: torch.Tensor = field(default_factory=lambda: torch.zeros(len(HEADS)))
    counted: torch.Tensor = field(default_factory=lambda: torch.zeros(len(HEADS)))
    pairs: int = 0
    length_penalty: float = 0.0  # sum over micro-batches of the ODIN correlation term (this process's)
    seconds: float = 0.0
    skipped: int = 0  # optimizer steps skipped for a non-finite loss or gradient

    def add(self, step: "Window") -> None:
        """Count one optimizer step's sums in this window."""
        self.loss, self.batches = self.loss + step.loss, self.batches + step.batches
        self.pairs += step.pairs
        self.length_penalty += step.length_penalty
        self.head_loss, self.head_batches = self.head_loss + step.head_loss, self.head_batches + step.head_batches
        self.correct, self.counted = self.correct + step.correct, self.counted + step.counted

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {"skipped/nonfinite": float(self.skipped)}
        if self.batches:  # a window of skipped steps only has no loss to report
            out["loss/pairwise"] = self.loss / self.batches
            if self.length_penalty:
                out["loss/length_correlation"] = self.length_penalty / self.batches
        for i, head in enumerate(HEADS):
            if self.head_batches[i] > 0:
                out[f"loss/{head}"] = (self.head_loss[i] / self.head_batches[i]).item()
                out[f"train/accuracy_{head}"] = (self.correct[i] / self.counted[i]).item()
        out["train/pairs_per_s"] = self.pairs / max(self.seconds, 1e-9)
        return out


def capped_splits(cfg: RewardStageConfig, caps: dict[str, int]) -> dict[str, list[PreferenceRecord]]:
    """split -> its pairs capped at ``caps[split]`` per head, the data files read once for all of them."""
    pairs = load_splits(cfg.data.sources, cfg.data.extra_files, list(caps), cfg.data.extra_files_split,
                        cfg.data.default_dimension, {"train": cfg.train_partition()})
    return {split: subsample(pairs[split], cap, seed=cfg.run.seed) for split, cap in caps.items()}


def encode_pairs(encoder, pairs: Sequence[PreferenceRecord]) -> EncodedPairs:
    prompts = [p.prompt for p in pairs]
    return EncodedPairs(encoder.encode(prompts, [p.chosen for p in pairs]),
                        encoder.encode(prompts, [p.rejected for p in pairs]),
                        head_mask(pairs), margins(pairs), response_tokens(encoder.tokenizer, [p.chosen for p in pairs]),
                        response_tokens(encoder.tokenizer, [p.rejected for p in pairs]))


@dataclass
class LengthDebias:
    """The length remedies that act in the loss (``train.length_covariate``, ``train.length_decorrelation``)."""

    coefficient: torch.Tensor | None = None  # (heads,) β per head, fitted on the train pairs; None: no covariate
    decorrelation: float = 0.0  # weight of ODIN's |corr(score, length)| term

    @classmethod
    def fit(cls, data: EncodedPairs, covariate: bool, decorrelation: float) -> "LengthDebias":
        """β of each head from its own labelled train pairs (the length-only model of "chosen wins")."""
        coefficient = torch.tensor([fit_length_coefficient(data.length_diff[data.mask[:, h]].float())
                                    for h in range(len(HEADS))]) if covariate else None
        return cls(coefficient, decorrelation)

    def offset(self, data: EncodedPairs, ids: Sequence[int], device) -> torch.Tensor | None:
        """(batch, heads) β_head·Δlen of pairs ``ids``, the logit the length-only model gives "chosen wins"."""
        if self.coefficient is None:
            return None
        return (data.length_diff[ids].float().unsqueeze(-1) * self.coefficient.unsqueeze(0)).to(device)

    def penalty(self, scores: torch.Tensor, data: EncodedPairs, ids: Sequence[int]) -> torch.Tensor | None:
        """decorrelation·|corr(head score, response length)| over the batch's chosen and rejected responses."""
        if not self.decorrelation:
            return None
        lengths = torch.cat([data.chosen_tokens[ids], data.rejected_tokens[ids]]).to(scores.device)  # (2 * batch,)
        mask = data.mask[ids].repeat(2, 1).to(scores.device)  # (2 * batch, heads)
        return self.decorrelation * length_correlation_penalty(scores, lengths, mask)


def optimizer_groups(model: RewardModel, cfg: RewardStageConfig) -> list[dict]:
    """The new score head (``classifier`` / ``score``) may learn faster than the pretrained backbone."""
    head, body = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (head if any(part in HEAD_MODULES for part in name.split(".")) else body).append(param)
    head_lr = cfg.train.head_learning_rate or cfg.train.learning_rate
    return [g for g in ({"params": body, "lr": cfg.train.learning_rate}, {"params": head, "lr": head_lr}) if g["params"]]


def trainable_weights(model: RewardModel) -> dict[str, torch.Tensor]:
    """A CPU copy of the weights training changes (the best epoch's are kept this way); whole tensors when the
    model is sharded (a collective then: every rank calls it)."""
    if sharding.is_sharded(model):
        return sharding.full_state_dict(model, trainable_only=True)
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def train_step(model, batch_ids: Sequence[Sequence[int]], data: EncodedPairs, batch_of: trunk_cache.Batches,
               accelerator, bf16: bool, use_margin: bool, window: Window, debias: LengthDebias | None = None) -> None:
    """Forward and backward of this process's micro-batches for one optimizer step (no optimizer call).

    ``batch_of`` makes the model inputs of rows of ``data.chosen + data.rejected``."""
    # Gradients are reduced once per optimizer step, after the last micro-batch (DDP or FSDP2).
    no_sync = sharding.no_sync if sharding.is_sharded(model) else accelerator.no_sync
    debias = debias or LengthDebias()
    for k, ids in enumerate(batch_ids):
        rows = [*ids, *(len(data.chosen) + i for i in ids)]  # chosen sequences first, then rejected
        batch = {k_: v.to(accelerator.device) for k_, v in batch_of(rows).items()}
        last = k == len(batch_ids) - 1
        with (no_sync(model) if not last else _null()), autocast(accelerator.device, bf16):
            scores = model(**batch).float()  # (2 * batch, heads): chosen rows first, then rejected
            chosen, rejected = scores[:len(ids)], scores[len(ids):]
            mask = data.mask[ids].to(scores.device)  # (batch, heads)
            margin = data.margin[ids].to(scores.device) if use_margin else None
            loss, per_head, counts = pairwise_loss(chosen, rejected, mask, margin,
                                                   debias.offset(data, ids, scores.device))
            length_penalty = debias.penalty(scores, data, ids)
            total = loss if length_penalty is None else loss + length_penalty
            accelerator.backward(total / len(batch_ids))
        if length_penalty is not None:
            window.length_penalty += length_penalty.item()
        correct, counted = pairwise_correct(chosen.detach().cpu(), rejected.detach().cpu(), mask.cpu())
        window.loss += loss.item()
        window.batches += 1
        present = counts.cpu() > 0
        window.head_loss += torch.where(present, per_head.cpu(), torch.zeros_like(per_head.cpu()))
        window.head_batches += present.float()
        window.correct += correct
        window.counted += counted.float()
        window.pairs += len(ids)


def _null():
    import contextlib

    return contextlib.nullcontext()


def train_reward_model(cfg: RewardStageConfig, resume: bool = False, stop_after_steps: int | None = None) -> Path:
    """Train the reward model described by ``cfg``; returns the run folder (model in ``<run>/final``).

    ``stop_after_steps`` ends the run right after writing a checkpoint at that step, as if it had been
    killed there (tests of ``--resume``).
    """
    from transformers import get_linear_schedule_with_warmup

    # 1. config checks (one line each, before any model loads); processes, run folder (rank 0 decides), seed
    started = time.perf_counter()
    cfg.train_partition()  # a gold on the proxy's half: one line, before any model loads
    if cfg.model.freeze_backbone and cfg.lora.enabled:
        raise ConfigError("model.freeze_backbone: true trains only the score head; set lora.enabled false")
    check_backend(cfg.model.quantization)  # bitsandbytes missing: one line, before any model loads
    sharding.check_wrappable(cfg.model.name, "model.name", causal_lm=False)  # FSDP launch: blocks found
    run = start_run(cfg.run, STAGE, resume, PREFIX)
    run_dir, checkpoint = run.dir, run.checkpoint
    accelerator = make_accelerator(run.device)  # rlhf.runtime: CUDA when present, else CPU (run.device forces)
    world, rank = accelerator.num_processes, accelerator.process_index
    bf16 = use_bf16(cfg.train.precision, accelerator.device)

    # 2. preference pairs: train (ties dropped, capped per head), dev for selection, test held out
    pairs = capped_splits(cfg, {"train": cfg.data.max_train_pairs_per_head, "dev": cfg.eval.max_pairs_per_head,
                              **({"test": cfg.eval.max_pairs_per_head} if cfg.eval.test else {})})
    train_pairs, n_ties = drop_contradictions(pairs["train"])
    if not train_pairs:
        raise ValueError("no training pairs: data.sources and data.extra_files gave none for the train split")
    dev_pairs = pairs["dev"]

    # 3. model with three heads, and the training set tokenised once (prompts cut from the left)
    model, encoder, scoring = new_reward_model(cfg.model.name, cfg.lora, cfg.model.max_length,
                                               cfg.model.min_prompt_tokens, cfg.model.freeze_backbone,
                                               cfg.model.quantization)
    scoring.weights = _check_weights(cfg.composite.weights)
    scoring.toxicity = _absolute_paths(cfg.toxicity)
    data = encode_pairs(encoder, train_pairs)
    pools, lengths = pools_by_head(train_pairs), data.lengths()
    per_head = cfg.data.pairs_per_head or max(len(p) for p in pools.values())
    chosen_longer = (data.length_diff > 0).tolist() if cfg.data.length_balance else None
    batches_of = functools.lru_cache(maxsize=1)(  # one epoch's batch order, a function of (seed, epoch) only
        lambda epoch: balanced_batches(pools, per_head, cfg.train.batch_size, cfg.run.seed, epoch, lengths,
                                       chosen_longer=chosen_longer))
    debias = LengthDebias.fit(data, cfg.train.length_covariate, cfg.train.length_decorrelation)
    batches_per_step = world * cfg.train.grad_accum
    steps_per_epoch = len(batches_of(0)) // batches_per_step
    if steps_per_epoch == 0:
        raise ValueError(f"{len(batches_of(0))} batches per epoch are fewer than processes x grad_accum "
                         f"({batches_per_step}): lower train.batch_size or grad_accum")
    total_steps = cfg.train.max_steps or cfg.train.epochs * steps_per_epoch
    epochs = math.ceil(total_steps / steps_per_epoch)

    # 4. optimizer and schedule (warmup, then linear decay to 0), then restore a checkpoint if resuming.
    # FSDP: the backbone's layers and the root are sharded here (rlhf.sharding; accelerate ignores its FSDP plugin
    # on CPU), before the optimizer sees the parameters, and the model is not handed to prepare (no DDP wrapper).
    sharded = sharding.fsdp_requested() and world > 1
    if sharded:
        if cfg.model.quantization != "none":
            raise ConfigError(f"model.quantization: a {cfg.model.quantization} backbone cannot be sharded under FSDP "
                              "here; use a DDP launch")
        sharding.shard(model, _layers_to_shard(model))
    optimizer = torch.optim.AdamW(optimizer_groups(model, cfg), weight_decay=cfg.train.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.train.warmup_ratio * total_steps), total_steps)
    if sharded:
        optimizer = accelerator.prepare(optimizer)
    else:
        model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped: RewardModel = accelerator.unwrap_model(model)

    # 4b. model inputs: token ids, or (frozen trunk) the trunk's output, computed once per text and kept on disk
    # Filling the cache in small batches on CPU: 48 SmolLM2 texts took 3.4 s in batches of 8 and 6.9 s in batches
    # of 64 (2 cores, bf16; padding and attention memory grow with the batch). GPUs prefer the large ones.
    fill_batch = cfg.eval.batch_size if accelerator.device.type == "cuda" else min(8, cfg.eval.batch_size)
    cache_mode = "off" if sharded else cfg.train.trunk_cache
    if sharded and cfg.train.trunk_cache != "off" and trunk_cache.find_trunk(unwrapped) is not None:
        _say(accelerator, "trunk cache off under FSDP (the trunk's layers are sharded; every forward runs them)")
    inputs = trunk_cache.model_inputs(unwrapped, cache_mode, cfg.train.cache_dir or rlhf_home() / "trunk-cache",
                                      bf16, data.chosen[:2], encoder.pad_token_id, fill_batch,
                                      log=lambda msg: _say(accelerator, msg))
    cache_started = time.perf_counter()
    with accelerator.main_process_first():  # one process fills the cache, the others read it
        train_batches = inputs.batches(data.chosen + data.rejected, encoder.pad_token_id)
    cache_seconds = time.perf_counter() - cache_started
    if inputs.trunk is not None:
        kept = ("the score head's input (backbone frozen)" if inputs.trunk.pooled
                else f"the output of layers 0-{inputs.trunk.depth - 1}")
        _say(accelerator, f"trunk cache: {kept}, computed once per text, in {inputs.folder} "
                          f"({cache_seconds:.1f} s for the train set)")
    step, best, best_weights, history = 0, {"accuracy": -1.0, "epoch": -1}, None, []
    train_seconds, pairs_seen, skipped = 0.0, 0, 0  # whole-run totals: a checkpoint carries them over
    if checkpoint is not None:
        state, best_weights = load_checkpoint(checkpoint, unwrapped, optimizer, scheduler, rank if sharded else None)
        step, best, history = state["step"], state["best"], state["history"]
        train_seconds, pairs_seen = state.get("train_seconds", 0.0), state.get("pairs_seen", 0)
        skipped = state.get("skipped_nonfinite", 0)
        _say(accelerator, f"resumed from {checkpoint} at step {step}")

    logger = MetricsLogger(run_dir, cfg.run, STAGE, config=cfg, total_steps=total_steps,
                           enabled=accelerator.is_main_process)
    if checkpoint is not None:  # the steps after the checkpoint are redone: their old records go
        logger.resumed_at(step)
    _say(accelerator, f"{len(train_pairs)} train pairs ({', '.join(f'{h}={len(p)}' for h, p in pools.items())}), "
                      f"{n_ties} dropped as ties, {len(dev_pairs)} dev pairs; {per_head} pairs per head per epoch; "
                      f"{steps_per_epoch} steps/epoch x {epochs} epochs = {total_steps} steps; bf16={bf16}")

    def save(trainer_state_epoch: int) -> None:
        # The totals include the window not yet logged: a resumed run starts with an empty one.
        state = {"epoch": trainer_state_epoch, "best": best, "history": history,
                 "train_seconds": train_seconds + window.seconds,
                 "pairs_seen": pairs_seen + window.pairs * world, "skipped_nonfinite": skipped}
        if sharded or accelerator.is_main_process:  # sharded: every rank writes its shard and its RNG
            save_checkpoint(run_dir, step, unwrapped, optimizer, scheduler, state, best_weights,
                            cfg.train.save_total_limit, process=accelerator if sharded else None)
        accelerator.wait_for_everyone()

    # 5. training: balanced single-head batches, masked pairwise loss, clipped AdamW steps
    model.train()
    window, first_step, skipped_before = Window(), step, skipped
    while step < total_steps:
        epoch, step_in_epoch = divmod(step, steps_per_epoch)
        batches = batches_of(epoch)
        start = time.perf_counter()
        group = batches[step_in_epoch * batches_per_step:(step_in_epoch + 1) * batches_per_step]
        this_step = Window()
        train_step(model, group[rank::world], data, train_batches, accelerator, bf16, cfg.train.use_margin,
                   this_step, debias)
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm or float("inf"))  # 0: off
        if hasattr(grad_norm, "full_tensor"):  # sharded gradients give the whole norm as a (replicated) DTensor
            grad_norm = grad_norm.full_tensor()
        # A non-finite loss or gradient on any process skips the update on all of them (the gradient norm is
        # already all-reduced; the loss is not): no optimizer or schedule step, only the data position advances.
        finite = torch.tensor([float(math.isfinite(this_step.loss) and math.isfinite(float(grad_norm)))],
                              device=accelerator.device)
        if accelerator.reduce(finite, reduction="sum").item() == world:
            optimizer.step()
            scheduler.step()
            window.add(this_step)
        else:
            window.skipped, skipped = window.skipped + 1, skipped + 1
        optimizer.zero_grad(set_to_none=True)
        step += 1
        window.seconds += time.perf_counter() - start
        if step % cfg.run.log_every == 0 or step == total_steps:
            logged = _summed_over_processes(window, accelerator)  # the global batch's loss, not rank 0's share
            metrics = logged.metrics() | {"train/lr": scheduler.get_last_lr()[0], "train/grad_norm": float(grad_norm),
                                          "train/epoch": step / steps_per_epoch}
            logger.log(metrics, step)
            train_seconds, pairs_seen = train_seconds + window.seconds, pairs_seen + window.pairs * world
            window = Window()

        # 6. end of epoch: dev accuracy per head; the best epoch's weights are kept
        epoch_done = step % steps_per_epoch == 0 or step == total_steps
        if epoch_done and skipped - skipped_before == step - first_step:  # nothing learned: stop before final/
            logger.finish()
            raise ConfigError(f"training: all {step - first_step} steps had a non-finite loss or gradient, so none updated the "
                              f"model and no final/ was written (check the data's margins, train.learning_rate, train.precision)")
        if epoch_done:
            with sharding.gathered(unwrapped):  # every rank scores all dev pairs: one all-gather, not one per batch
                accuracy, _ = pair_accuracy(unwrapped, encoder, dev_pairs, cfg.eval.batch_size, bf16, inputs)
            mean_accuracy = sum(accuracy.values()) / len(accuracy) if accuracy else float("nan")
            logger.log({f"eval/accuracy_{h}": a for h, a in accuracy.items()} | {"eval/accuracy_mean": mean_accuracy},
                       step)
            history.append({"step": step, **accuracy})
            if cfg.eval.keep_best and accuracy and mean_accuracy > best["accuracy"]:
                best, best_weights = {"accuracy": mean_accuracy, "epoch": epoch + 1, "step": step}, trainable_weights(unwrapped)
            model.train()
        if epoch_done or (cfg.train.save_steps and step % cfg.train.save_steps == 0) or step == stop_after_steps:
            save(epoch)
        if step == stop_after_steps:
            logger.finish()
            return run_dir

    # 7. final model: best dev epoch, normalisation statistics on reference responses, saved as an HF folder
    if best_weights is not None:
        if sharded:
            sharding.load_full_state_dict(unwrapped, best_weights, strict=False)
        else:
            unwrapped.load_state_dict(best_weights, strict=False)
    reference = dev_pairs if cfg.composite.normalise_on == "dev" and dev_pairs else subsample(train_pairs, 300, cfg.run.seed)
    with sharding.gathered(unwrapped):
        scoring.mean, scoring.std = normalisation_stats(unwrapped, encoder, reference, cfg.eval.batch_size, bf16,
                                                        inputs)
    scoring.normalised_on = f"{'dev' if reference is dev_pairs else 'train'} responses ({2 * len(reference)})"
    final_dir = run_dir / "final"
    # Sharded: the whole weights, gathered on every rank, go into a plain copy of the model that rank 0 saves.
    whole = sharding.full_state_dict(unwrapped) if sharded else dict(unwrapped.named_parameters())
    bad = next((n for n, p in whole.items() if p.is_floating_point() and not torch.isfinite(p).all()), None)
    if bad is not None:  # never hand a broken model to the PPO stage
        raise ConfigError(f"training: parameter {bad} is not finite; no final/ was written")
    if accelerator.is_main_process:
        save_reward_model(_plain_copy(cfg, whole) if sharded else unwrapped, encoder, scoring, final_dir)
        logger.log_artifact(final_dir, "reward-model", inputs=[cfg.model.name, *cfg.data.extra_files],
                            role="gold" if cfg.role == "gold" else None)  # the judge's artifact is not the proxy's
    accelerator.wait_for_everyone()

    # 8. held-out test accuracy (prompts no stage trains on) and the run's summary
    summary = {"final_model": str(final_dir), "train/seconds": train_seconds, "skipped/nonfinite": skipped,
               "train/pairs_per_s": pairs_seen / max(train_seconds, 1e-9), "train/pairs": len(train_pairs),
               "train/pairs_seen": pairs_seen, "train/trunk_cache_seconds": cache_seconds,
               "train/steps": step, "best/epoch": best.get("epoch"), "best/dev_accuracy_mean": best["accuracy"]}
    final_dev = next((h for h in history if h["step"] == best.get("step")), history[-1] if history else {})
    summary |= {f"dev/accuracy_{h}": a for h, a in final_dev.items() if h != "step"}
    if debias.coefficient is not None:
        summary |= {f"train/length_coef_{h}": debias.coefficient[i].item() for i, h in enumerate(HEADS)}
    if cfg.eval.test:
        test_pairs = pairs["test"]
        with sharding.gathered(unwrapped):
            accuracy, counts = pair_accuracy(unwrapped, encoder, test_pairs, cfg.eval.batch_size, bf16, inputs)
            if accelerator.is_main_process and test_pairs:  # eval-rm's report of the test pairs, in the run
                from reward_models.report import log_report
                from reward_models.scoring import RewardScorer

                scorer = RewardScorer(unwrapped, encoder, scoring, None, accelerator.device, bf16, cfg.eval.batch_size)
                log_report(logger, scorer, test_pairs, run_dir / "rm_report", step)
        summary |= {f"test/accuracy_{h}": a for h, a in accuracy.items()} | {f"test/pairs_{h}": n for h, n in counts.items()}
    summary["run/seconds"] = time.perf_counter() - started  # everything: loading, training, evaluation, saving
    logger.summary(summary)
    logger.finish()
    _say(accelerator, "summary: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                              for k, v in summary.items()))
    return run_dir


def _layers_to_shard(model: RewardModel) -> list[torch.nn.Module]:
    """The backbone's transformer layers: one FSDP unit each."""
    try:
        return sharding.transformer_blocks(model)
    except ValueError as err:
        raise ConfigError(f"model.name: cannot be sharded under FSDP ({err})") from err


def _plain_copy(cfg: RewardStageConfig, weights: dict[str, torch.Tensor]) -> RewardModel:
    """An unsharded model of the same build holding ``weights`` (the gathered ones), for the final export."""
    model, _, _ = new_reward_model(cfg.model.name, cfg.lora, cfg.model.max_length,
                                   cfg.model.min_prompt_tokens, cfg.model.freeze_backbone, cfg.model.quantization)
    model.load_state_dict(weights)
    return model


def _summed_over_processes(window: Window, accelerator) -> Window:
    """``window`` with its loss and accuracy sums added over the processes (each saw its own micro-batches)."""
    if accelerator.num_processes == 1:
        return window
    sums = torch.cat([torch.tensor([window.loss, float(window.batches)]), window.head_loss, window.head_batches,
                      window.correct, window.counted]).to(accelerator.device)
    sums = accelerator.reduce(sums, reduction="sum").cpu()
    heads = len(HEADS)
    out = replace(window, loss=sums[0].item(), batches=int(sums[1].item()))
    out.head_loss, out.head_batches = sums[2:2 + heads], sums[2 + heads:2 + 2 * heads]
    out.correct, out.counted = sums[2 + 2 * heads:2 + 3 * heads], sums[2 + 3 * heads:]
    return out


def _check_weights(weights: dict[str, float]) -> dict[str, float]:
    unknown = set(weights) - set(HEADS)
    if unknown:
        raise ValueError(f"composite.weights: unknown head {sorted(unknown)[0]!r} (heads: {', '.join(HEADS)})")
    return {h: float(weights.get(h, 0.0)) for h in HEADS}


def _absolute_paths(settings: ToxicitySettings) -> ToxicitySettings:
    """reward_config.json must work from any working directory."""
    absolute = lambda p: str(Path(p).resolve()) if p else p  # noqa: E731
    return replace(settings, checkpoint=absolute(settings.checkpoint),
                   huggingface_config_path=absolute(settings.huggingface_config_path))


def _say(accelerator, message: str) -> None:
    if accelerator.is_main_process:
        print(f"[{STAGE}] {message}", file=sys.stderr, flush=True)


@dataclass
class TrainResult:
    run_dir: Path
    model_dir: Path  # <run>/final: load with RewardScorer.from_pretrained
    losses: list[float]  # loss/pairwise at every step


def train_on_preferences(preferences: Sequence[PreferenceRecord] | str | Path, output_dir: str | Path,
                         backbone: str = "tiny-bert", max_steps: int = 30, batch_size: int = 8,
                         lr: float = 3e-3, max_length: int = 128) -> TrainResult:
    """A short run on preference records (or a preference file), ALL of them used for training.

    For tests and tools (e.g. "does an annotation export train a reward model?"): no shipped data, no
    dev/test split, W&B off; normalisation statistics come from the training pairs themselves.
    """
    from rlhf.records import write_jsonl
    from rlhf.tracking import read_metrics

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if not isinstance(preferences, (str, Path)):
        write_jsonl(preferences, output_dir / "preferences.jsonl")
        preferences = output_dir / "preferences.jsonl"
    cfg = RewardStageConfig()
    cfg.model.name, cfg.model.max_length, cfg.model.min_prompt_tokens = backbone, max_length, min(32, max_length // 4)
    cfg.data.sources, cfg.data.extra_files, cfg.data.extra_files_split = [], [str(preferences)], "train"
    cfg.data.partition = "all"  # every given pair: no gold judge is in play
    cfg.train.max_steps, cfg.train.batch_size, cfg.train.learning_rate, cfg.train.head_learning_rate = max_steps, batch_size, lr, lr
    cfg.train.warmup_ratio, cfg.train.save_steps, cfg.eval.test = 0.0, 0, False
    cfg.run = RunConfig(output_dir=str(output_dir), run_name="reward", wandb_mode="disabled", log_every=1)
    run_dir = train_reward_model(cfg)
    losses = [m["loss/pairwise"] for m in read_metrics(run_dir / "metrics.jsonl") if "loss/pairwise" in m]
    return TrainResult(run_dir, run_dir / "final", losses)
