"""Training the HHH reward model: masked pairwise Bradley–Terry loss over three heads.

:class:`RewardTrainer` is the whole stage (``pipelines/reward.py`` runs it; :func:`train_reward_model` is the
same in one call): a plain accelerate loop, so the same code runs in one process, under ``accelerate launch``
and under ``torchrun``.
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
from reward_models.model import HEAD_MODULES, RewardModel, new_reward_model, save_reward_model
from reward_models.types import HEADS
from rlhf.core.config import ConfigError
from rlhf.models.quantization import check_backend
from rlhf.data.records import PreferenceRecord
from rlhf.core.runtime import autocast, make_accelerator, use_bf16
from rlhf.core import sharding
from rlhf.core.lifecycle import start_run
from rlhf.core.tracking import MetricsLogger
from rlhf.models.zoo import rlhf_home

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


class RewardTrainer:
    """The reward stage's trainer, shaped like ``rlhf.rl.trainer.RLTrainer``: setup (``__init__``: checks, run
    folder, data, model, optimizer, model inputs, a checkpoint restored), :meth:`step` (one optimizer step),
    :meth:`evaluate` (accuracy per head), :meth:`state_dict` / :meth:`load_state_dict` (what a checkpoint keeps
    besides weights), :meth:`train` (the loop) and :meth:`finish` (final model, test accuracy, summary).

    >>> trainer = RewardTrainer(cfg)          # or RewardTrainer(cfg, resume=True)
    >>> if trainer.train():                   # False: stopped at stop_after_steps, as if killed there
    ...     run_dir = trainer.finish()        # <run>/final, summary.json
    """

    def __init__(self, cfg: RewardStageConfig, resume: bool = False):
        # 1. config checks (one line each, before any model loads); processes, run folder (rank 0 decides), seed
        self.started = time.perf_counter()
        self.cfg = cfg
        cfg.train_partition()  # a gold on the proxy's half: one line, before any model loads
        if cfg.model.freeze_backbone and cfg.lora.enabled:
            raise ConfigError("model.freeze_backbone: true trains only the score head; set lora.enabled false")
        check_backend(cfg.model.quantization)  # bitsandbytes missing: one line, before any model loads
        sharding.check_wrappable(cfg.model.name, "model.name", causal_lm=False,  # FSDP launch: blocks found,
                                 quantization=cfg.model.quantization, quantization_key="model.quantization")  # no QLoRA
        run = start_run(cfg.run, STAGE, resume, PREFIX)
        self.run_dir = run.dir
        self.accelerator = make_accelerator(run.device)  # rlhf.core.runtime: CUDA when present, else CPU (run.device forces)
        self.world, self.rank = self.accelerator.num_processes, self.accelerator.process_index
        self.bf16 = use_bf16(cfg.train.precision, self.accelerator.device)
        # 2. preference pairs; 3. the model and the training set tokenised once; the batch plan
        self._load_pairs()
        self._build_model_and_data()
        # 4. optimizer and schedule; model inputs (token ids or the trunk cache); a checkpoint restored
        self._setup_optimizer()
        self._setup_inputs()
        self.step_count, self.best, self.best_weights, self.history = 0, {"accuracy": -1.0, "epoch": -1}, None, []
        self.train_seconds, self.pairs_seen, self.skipped = 0.0, 0, 0  # whole-run totals: a checkpoint carries them
        self.window = Window()  # training sums since the last log line
        if run.checkpoint is not None:
            self.restore(run.checkpoint)
        self.logger = MetricsLogger(self.run_dir, cfg.run, STAGE, config=cfg, total_steps=self.total_steps,
                                    enabled=self.accelerator.is_main_process)
        if run.checkpoint is not None:  # the steps after the checkpoint are redone: their old records go
            self.logger.resumed_at(self.step_count)
        self._say(f"{len(self.train_pairs)} train pairs ({', '.join(f'{h}={len(p)}' for h, p in self.pools.items())}), "
                  f"{self.n_ties} dropped as ties, {len(self.dev_pairs)} dev pairs; {self.per_head} pairs per head per "
                  f"epoch; {self.steps_per_epoch} steps/epoch x {self.epochs} epochs = {self.total_steps} steps; "
                  f"bf16={self.bf16}")

    # ------------------------------------------------------------ setup

    def _load_pairs(self) -> None:
        """Train (ties dropped, capped per head), dev for selection, test held out."""
        cfg = self.cfg
        self.pairs = capped_splits(cfg, {"train": cfg.data.max_train_pairs_per_head, "dev": cfg.eval.max_pairs_per_head,
                                         **({"test": cfg.eval.max_pairs_per_head} if cfg.eval.test else {})})
        self.train_pairs, self.n_ties = drop_contradictions(self.pairs["train"])
        if not self.train_pairs:
            raise ValueError("no training pairs: data.sources and data.extra_files gave none for the train split")
        self.dev_pairs = self.pairs["dev"]

    def _build_model_and_data(self) -> None:
        """The model with its heads, the train set tokenised once (prompts cut from the left), the batch plan."""
        cfg = self.cfg
        self.model, self.encoder, self.scoring = new_reward_model(
            cfg.model.name, cfg.lora, cfg.model.max_length, cfg.model.min_prompt_tokens,
            cfg.model.freeze_backbone, cfg.model.quantization)
        self.scoring.weights = _check_weights(cfg.composite.weights)
        self.scoring.toxicity = _absolute_paths(cfg.toxicity)
        self.data = data = encode_pairs(self.encoder, self.train_pairs)
        self.pools, lengths = pools_by_head(self.train_pairs), data.lengths()
        self.per_head = cfg.data.pairs_per_head or max(len(p) for p in self.pools.values())
        chosen_longer = (data.length_diff > 0).tolist() if cfg.data.length_balance else None
        self.batches_of = functools.lru_cache(maxsize=1)(  # one epoch's batch order, a function of (seed, epoch) only
            lambda epoch: balanced_batches(self.pools, self.per_head, cfg.train.batch_size, cfg.run.seed, epoch,
                                           lengths, chosen_longer=chosen_longer))
        self.debias = LengthDebias.fit(data, cfg.train.length_covariate, cfg.train.length_decorrelation)
        self.batches_per_step = self.world * cfg.train.grad_accum
        self.steps_per_epoch = len(self.batches_of(0)) // self.batches_per_step
        if self.steps_per_epoch == 0:
            raise ValueError(f"{len(self.batches_of(0))} batches per epoch are fewer than processes x grad_accum "
                             f"({self.batches_per_step}): lower train.batch_size or grad_accum")
        self.total_steps = cfg.train.max_steps or cfg.train.epochs * self.steps_per_epoch
        self.epochs = math.ceil(self.total_steps / self.steps_per_epoch)

    def _setup_optimizer(self) -> None:
        """AdamW and its schedule (warmup, then linear decay to 0). FSDP: the backbone's layers and the root are
        sharded here (``rlhf.core.sharding``; accelerate ignores its FSDP plugin on CPU), before the optimizer sees the
        parameters, and the model is not handed to prepare (no DDP wrapper)."""
        from transformers import get_linear_schedule_with_warmup

        cfg, acc, model = self.cfg, self.accelerator, self.model
        self.sharded = sharding.fsdp_requested() and self.world > 1
        if self.sharded:  # a quantized backbone was refused in setup step 1 (sharding.check_wrappable)
            sharding.shard(model, _layers_to_shard(model))
        optimizer = torch.optim.AdamW(optimizer_groups(model, cfg), weight_decay=cfg.train.weight_decay)
        self.scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.train.warmup_ratio * self.total_steps),
                                                         self.total_steps)
        if self.sharded:
            self.optimizer = acc.prepare(optimizer)
        else:
            self.model, self.optimizer = acc.prepare(model, optimizer)
        self.unwrapped: RewardModel = acc.unwrap_model(self.model)

    def _setup_inputs(self) -> None:
        """Model inputs: token ids, or (frozen trunk) the trunk's output, computed once per text and kept on disk."""
        cfg, acc, data = self.cfg, self.accelerator, self.data
        # Filling the cache in small batches on CPU: 48 SmolLM2 texts took 3.4 s in batches of 8 and 6.9 s in
        # batches of 64 (2 cores, bf16; padding and attention memory grow with the batch). GPUs prefer large ones.
        fill_batch = cfg.eval.batch_size if acc.device.type == "cuda" else min(8, cfg.eval.batch_size)
        cache_mode = "off" if self.sharded else cfg.train.trunk_cache
        if self.sharded and cfg.train.trunk_cache != "off" and trunk_cache.find_trunk(self.unwrapped) is not None:
            self._say("trunk cache off under FSDP (the trunk's layers are sharded; every forward runs them)")
        self.inputs = inputs = trunk_cache.model_inputs(
            self.unwrapped, cache_mode, cfg.train.cache_dir or rlhf_home() / "trunk-cache", self.bf16, data.chosen[:2],
            self.encoder.pad_token_id, fill_batch, log=self._say)
        cache_started = time.perf_counter()
        with acc.main_process_first():  # one process fills the cache, the others read it
            self.train_batches = inputs.batches(data.chosen + data.rejected, self.encoder.pad_token_id)
        self.cache_seconds = time.perf_counter() - cache_started
        if inputs.trunk is not None:
            kept = ("the score head's input (backbone frozen)" if inputs.trunk.pooled
                    else f"the output of layers 0-{inputs.trunk.depth - 1}")
            self._say(f"trunk cache: {kept}, computed once per text, in {inputs.folder} "
                      f"({self.cache_seconds:.1f} s for the train set)")

    # ------------------------------------------------------------ one optimizer step

    def step(self) -> dict[str, float] | None:
        """One optimizer step on this step's balanced single-head batches (each process its share), masked pairwise
        loss, clipped AdamW; returns the metrics when the step is logged (every ``run.log_every`` and the last)."""
        cfg, acc = self.cfg, self.accelerator
        epoch, step_in_epoch = divmod(self.step_count, self.steps_per_epoch)
        batches = self.batches_of(epoch)
        start = time.perf_counter()
        group = batches[step_in_epoch * self.batches_per_step:(step_in_epoch + 1) * self.batches_per_step]
        this_step = Window()
        train_step(self.model, group[self.rank::self.world], self.data, self.train_batches, acc, self.bf16,
                   cfg.train.use_margin, this_step, self.debias)
        grad_norm = acc.clip_grad_norm_(self.model.parameters(), cfg.train.max_grad_norm)
        if hasattr(grad_norm, "full_tensor"):  # sharded gradients give the whole norm as a (replicated) DTensor
            grad_norm = grad_norm.full_tensor()
        # A non-finite loss or gradient on any process skips the update on all of them (the gradient norm is
        # already all-reduced; the loss is not): no optimizer or schedule step, only the data position advances.
        finite = torch.tensor([float(math.isfinite(this_step.loss) and math.isfinite(float(grad_norm)))],
                              device=acc.device)
        if acc.reduce(finite, reduction="sum").item() == self.world:
            self.optimizer.step()
            self.scheduler.step()
            self.window.add(this_step)
        else:
            self.window.skipped, self.skipped = self.window.skipped + 1, self.skipped + 1
        self.optimizer.zero_grad(set_to_none=True)
        self.step_count += 1
        self.window.seconds += time.perf_counter() - start
        if self.step_count % cfg.run.log_every and self.step_count != self.total_steps:
            return None
        logged = _summed_over_processes(self.window, acc)  # the global batch's loss, not rank 0's share
        metrics = logged.metrics() | {"train/lr": self.scheduler.get_last_lr()[0], "train/grad_norm": float(grad_norm),
                                      "train/epoch": self.step_count / self.steps_per_epoch}
        self.logger.log(metrics, self.step_count)
        self.train_seconds += self.window.seconds
        self.pairs_seen += self.window.pairs * self.world
        self.window = Window()
        return metrics

    # ------------------------------------------------------------ evaluation

    def evaluate(self, pairs: Sequence[PreferenceRecord] | None = None) -> tuple[dict[str, float], dict[str, int]]:
        """Accuracy and pair count per head on ``pairs`` (default: dev); every rank scores all of them."""
        pairs = self.dev_pairs if pairs is None else pairs
        with sharding.gathered(self.unwrapped):  # one all-gather, not one per batch
            return pair_accuracy(self.unwrapped, self.encoder, pairs, self.cfg.eval.batch_size, self.bf16,
                                 self.inputs)

    def _select(self, accuracy: dict[str, float], epoch: int) -> None:
        """Log an epoch's dev accuracy; keep the weights of the best epoch (``eval.keep_best``)."""
        mean_accuracy = sum(accuracy.values()) / len(accuracy) if accuracy else float("nan")
        self.logger.log({f"eval/accuracy_{h}": a for h, a in accuracy.items()} | {"eval/accuracy_mean": mean_accuracy},
                        self.step_count)
        self.history.append({"step": self.step_count, **accuracy})
        if self.cfg.eval.keep_best and accuracy and mean_accuracy > self.best["accuracy"]:
            self.best = {"accuracy": mean_accuracy, "epoch": epoch + 1, "step": self.step_count}
            self.best_weights = trainable_weights(self.unwrapped)

    # ------------------------------------------------------------ the loop

    def train(self, stop_after_steps: int | None = None) -> bool:
        """Steps until the last, dev accuracy and a checkpoint at every epoch's end; False when it stopped right
        after the checkpoint at ``stop_after_steps``, as if killed there (tests of ``--resume``)."""
        cfg = self.cfg
        self.model.train()
        self.window, first_step, skipped_before = Window(), self.step_count, self.skipped
        while self.step_count < self.total_steps:
            epoch = self.step_count // self.steps_per_epoch
            # 1. one optimizer step (logged every run.log_every steps)
            self.step()
            step = self.step_count
            # 2. end of epoch: dev accuracy per head; the best epoch's weights are kept
            epoch_done = step % self.steps_per_epoch == 0 or step == self.total_steps
            if epoch_done and self.skipped - skipped_before == step - first_step:  # nothing learned: stop before final/
                self.logger.finish()
                raise ConfigError(f"training: all {step - first_step} steps had a non-finite loss or gradient, so none "
                                  "updated the model and no final/ was written (check the data's margins, train.learning_rate, "
                                  "train.precision)")
            if epoch_done:
                self._select(self.evaluate()[0], epoch)
                self.model.train()
            # 3. a checkpoint at every epoch's end and every train.save_steps steps
            if epoch_done or (cfg.train.save_steps and step % cfg.train.save_steps == 0) \
                    or step == stop_after_steps:
                self.save_checkpoint()
            if step == stop_after_steps:
                self.logger.finish()
                return False
        return True

    # ------------------------------------------------------------ checkpoint state

    def state_dict(self) -> dict:
        """What a checkpoint keeps besides weights, optimizer, scheduler and RNG (``reward_models.checkpoint``).
        The totals include the window not yet logged: a resumed run starts with an empty one."""
        return {"epoch": (self.step_count - 1) // self.steps_per_epoch, "best": self.best, "history": self.history,
                "train_seconds": self.train_seconds + self.window.seconds,
                "pairs_seen": self.pairs_seen + self.window.pairs * self.world, "skipped_nonfinite": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.step_count, self.best, self.history = state["step"], state["best"], state["history"]
        self.train_seconds, self.pairs_seen = state.get("train_seconds", 0.0), state.get("pairs_seen", 0)
        self.skipped = state.get("skipped_nonfinite", 0)

    def save_checkpoint(self) -> None:
        acc = self.accelerator
        if self.sharded or acc.is_main_process:  # sharded: every rank writes its shard and its RNG
            save_checkpoint(self.run_dir, self.step_count, self.unwrapped, self.optimizer, self.scheduler,
                            self.state_dict(), self.best_weights, self.cfg.train.save_total_limit,
                            process=acc if self.sharded else None)
        acc.wait_for_everyone()

    def restore(self, checkpoint: Path) -> None:
        """Weights, optimizer, scheduler, RNG and the trainer's state from ``checkpoint``."""
        state, self.best_weights = load_checkpoint(checkpoint, self.unwrapped, self.optimizer, self.scheduler,
                                                   self.rank if self.sharded else None)
        self.load_state_dict(state)
        self._say(f"resumed from {checkpoint} at step {self.step_count}")

    # ------------------------------------------------------------ the end of the run

    def finish(self) -> Path:
        """The final model (best dev epoch) in ``<run>/final``, held-out test accuracy, the summary; the run folder."""
        final_dir = self._save_final()
        self._summarise(final_dir)
        return self.run_dir

    def _save_final(self) -> Path:
        """Best dev epoch's weights, normalisation statistics on reference responses, saved as an HF folder."""
        cfg, acc, unwrapped = self.cfg, self.accelerator, self.unwrapped
        if self.best_weights is not None:
            if self.sharded:
                sharding.load_full_state_dict(unwrapped, self.best_weights, strict=False)
            else:
                unwrapped.load_state_dict(self.best_weights, strict=False)
        dev_pairs = self.dev_pairs
        reference = (dev_pairs if cfg.composite.normalise_on == "dev" and dev_pairs
                     else subsample(self.train_pairs, 300, cfg.run.seed))
        with sharding.gathered(unwrapped):
            self.scoring.mean, self.scoring.std = normalisation_stats(unwrapped, self.encoder, reference,
                                                                      cfg.eval.batch_size, self.bf16, self.inputs)
        self.scoring.normalised_on = f"{'dev' if reference is dev_pairs else 'train'} responses ({2 * len(reference)})"
        final_dir = self.run_dir / "final"
        # Sharded: the whole weights, gathered on every rank, go into a plain copy of the model that rank 0 saves.
        whole = sharding.full_state_dict(unwrapped) if self.sharded else dict(unwrapped.named_parameters())
        bad = next((n for n, p in whole.items() if p.is_floating_point() and not torch.isfinite(p).all()), None)
        if bad is not None:  # never hand a broken model to the PPO stage
            raise ConfigError(f"training: parameter {bad} is not finite; no final/ was written")
        if acc.is_main_process:
            save_reward_model(_plain_copy(cfg, whole) if self.sharded else unwrapped, self.encoder, self.scoring,
                              final_dir)
            self.logger.log_artifact(final_dir, "reward-model", inputs=[cfg.model.name, *cfg.data.extra_files],
                                     role="gold" if cfg.role == "gold" else None)  # the judge's is not the proxy's
        acc.wait_for_everyone()
        return final_dir

    def _summarise(self, final_dir: Path) -> None:
        """Held-out test accuracy (prompts no stage trains on) and the run's summary."""
        cfg, acc, best = self.cfg, self.accelerator, self.best
        summary = {"final_model": str(final_dir), "train/seconds": self.train_seconds, "skipped/nonfinite": self.skipped,
                   "train/pairs_per_s": self.pairs_seen / max(self.train_seconds, 1e-9),
                   "train/pairs": len(self.train_pairs), "train/pairs_seen": self.pairs_seen,
                   "train/trunk_cache_seconds": self.cache_seconds, "train/steps": self.step_count,
                   "best/epoch": best.get("epoch"), "best/dev_accuracy_mean": best["accuracy"]}
        history = self.history
        final_dev = next((h for h in history if h["step"] == best.get("step")), history[-1] if history else {})
        summary |= {f"dev/accuracy_{h}": a for h, a in final_dev.items() if h != "step"}
        if self.debias.coefficient is not None:
            summary |= {f"train/length_coef_{h}": self.debias.coefficient[i].item() for i, h in enumerate(HEADS)}
        if cfg.eval.test:
            test_pairs = self.pairs["test"]
            with sharding.gathered(self.unwrapped):  # a collective: every rank, around the scores and the report
                accuracy, counts = pair_accuracy(self.unwrapped, self.encoder, test_pairs, cfg.eval.batch_size,
                                                 self.bf16, self.inputs)
                if acc.is_main_process and test_pairs:  # eval-rm's report of the test pairs, in the run
                    from reward_models.report import log_report
                    from reward_models.scoring import RewardScorer

                    scorer = RewardScorer(self.unwrapped, self.encoder, self.scoring, None, acc.device, self.bf16,
                                          cfg.eval.batch_size)
                    log_report(self.logger, scorer, test_pairs, self.run_dir / "rm_report", self.step_count)
            summary |= {f"test/accuracy_{h}": a for h, a in accuracy.items()}
            summary |= {f"test/pairs_{h}": n for h, n in counts.items()}
        summary["run/seconds"] = time.perf_counter() - self.started  # everything: loading, training, evaluation, saving
        self.logger.summary(summary)
        self.logger.finish()
        self._say("summary: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                          for k, v in summary.items()))

    def _say(self, message: str) -> None:
        _say(self.accelerator, message)


def train_reward_model(cfg: RewardStageConfig, resume: bool = False, stop_after_steps: int | None = None) -> Path:
    """Train the reward model described by ``cfg`` (:class:`RewardTrainer`); returns the run folder (model in
    ``<run>/final``). ``stop_after_steps`` ends the run right after writing a checkpoint at that step, as if it had
    been killed there (tests of ``--resume``)."""
    trainer = RewardTrainer(cfg, resume=resume)
    if trainer.train(stop_after_steps):
        trainer.finish()
    return trainer.run_dir


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
