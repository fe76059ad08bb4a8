"""``RLStageConfig``: every knob of stage 3 (PPO, GRPO, RLOO, REINFORCE++), in nested sections.

The dataclass defaults are what ``rlhf rl`` / ``rlhf ppo`` run; a YAML file given with ``--config`` (a preset,
e.g. ``pipelines/configs/ppo_tiny.yaml``) only holds what it changes."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from rlhf.core.config import ConfigError, RenamedKeys, RunConfig, check_ranges, shared_field
from rlhf.models.generation import GenerationSettings
from rlhf.models.lora import LoraConfig
from rlhf.rl.advantages import ESTIMATORS
from rlhf.rl.losses import POLICY_LOSSES
from rlhf.models.quantization import Quantization, frozen_base_error, quantization_field
from rlhf.core.runtime import Precision


@dataclass
class ModelSection:
    """The policy RL starts from and how it is held in memory."""

    name: str = field(default="smollm2-135m-instruct",
                       metadata={"help": "zoo name, folder (merged SFT weights or an SFT adapter folder) or hub id"})
    sft_adapter: str = field(
        default="",
        metadata={"help": "optional SFT LoRA adapter folder, merged into model.name in memory before the RL LoRA"})
    critic: str = field(
        default="",
        metadata={"help": "empty: a value head on the policy's backbone (one forward); else a separate critic model"})
    # QLoRA: the SFT start (and a separate critic) loaded quantized and frozen under the LoRA; the fast sampler's
    # tricks need float weights, so rollouts then use the plain sampler, unpacked (rlhf.rl.policy)
    quantization: Quantization = quantization_field()
    gradient_checkpointing: bool = field(
        default=False,
        metadata={"help": "recompute activations in backward: less memory, ~30 % more time"})
    # Rollout sampler (rlhf.rl.sampler): "fast" = merged LoRA, packed prefill, the trunk captured while sampling,
    # old log-probs from the sampling pass; "plain" = model.generate, then a forward for the log-probs.
    sampler: Literal["fast", "plain"] = field(
        default="fast",
        metadata={"help": "rollout sampler: fast (merged LoRA, packed prefill, trunk captured) or plain"})
    merge_lora_for_sampling: bool = field(
        default=True,
        metadata={"help": "fast sampler: fold LoRA into the weights while generating (exact restore after)"})
    # With lora.layers above the bottom, the layers below the lowest adapter are frozen and identical for the
    # policy, the reference and every update: run them once per rollout (in the sampling pass), keep their
    # output, and start the reference forward and the update's forward+backward from it.
    reuse_trunk: bool = field(
        default=True,
        metadata={"help": "run the frozen layers below the lowest adapter once per rollout, then reuse their output"})
    # Forwards over several rollouts, and the prompt prefill before sampling, run packed: every row's real tokens
    # end to end in one sequence with a block-diagonal causal mask, so no FLOPs go to padding (sdpa/eager only).
    pack_sequences: bool = field(
        default=True,
        metadata={"help": "run forwards and the prompt prefill packed: no FLOPs on padding (sdpa/eager only)"})


@dataclass
class RewardSection:
    """Where scores come from and how they become the reward."""

    kind: Literal["model", "toy"] = field(
        default="model",
        metadata={"help": "model: the trained HHH reward model; toy: token-count reward (tests)"})
    model: str = field(
        default="",
        metadata={"help": "reward model folder (a reward run's final/); empty: the newest runs/reward-*/final"})
    # An ensemble (k seeds or k backbones) scores with the mean of its members' standardised scores and reports
    # their spread (std across members); spread_penalty > 0 optimises mean - penalty * spread (conservative).
    ensemble: list[str] = field(
        default_factory=list,
        metadata={"help": "reward model folders scored together (replaces reward.model); empty: one model"})
    spread_penalty: float = field(
        default=0.0,
        metadata={"help": "ensemble only: reward = mean - spread_penalty * spread across members (0: off)",
                  "range": "[0, inf)"})
    # Conservative ensembles (Coste et al., ICLR 2024), per head on the members' standardised scores:
    # wco = the worst member, uwo = mean - uwo_lambda * variance across members (reward_models/ensemble.py).
    aggregate: Literal["mean", "uwo", "wco"] = field(
        default="mean",
        metadata={"help": "ensemble only: how members' heads combine: mean, uwo (mean - λ·var) or wco (min)"})
    uwo_lambda: float = field(
        default=0.5,
        metadata={"help": "aggregate uwo: λ, the weight of the members' variance per head", "range": "[0, inf)"})
    length_detrend: bool = field(
        default=False,
        metadata={"help": "remove the score's least-squares trend on response length over each batch "
                          "(mean kept; logs reward/length_slope; rlhf/rl/length_control.py)"})
    toy_token: str = field(default=" the",
                           metadata={"help": "kind toy: reward = share of response tokens equal to this token"})
    # Off by default, as in TRL: with 32-token rollouts half of SmolLM2's answers are cut before EOS, and a penalty
    # of 1.0 taught PPO to stop early (answers 34 % shorter, benchmarks/results/compare_eos_free/).
    missing_eos_penalty: float = field(
        default=0.0,
        metadata={"help": "subtracted from the score of a response that never emits EOS (0: off)", "range": "[0, inf)"})
    normalize: bool = field(default=True,
                            metadata={"help": "standardise scores with a running mean/std (kept in checkpoints)"})
    clip: float = field(default=5.0, metadata={"help": "clip (normalised) scores to [-clip, clip]; 0 disables",
                                               "range": "[0, inf)"})
    # Objectives (rlhf/rl/objectives.py): weighted = the heads' weighted sum; lagrangian = Safe RLHF's
    # constrained objective, the heads in `constraints` held above their thresholds by learned multipliers.
    objective: Literal["weighted", "lagrangian"] = field(
        default="weighted",
        metadata={"help": "weighted: sum of weighted heads; lagrangian: reward.constraints held by multipliers"})
    constraints: dict[str, float] = field(
        default_factory=dict,
        metadata={"help": "lagrangian: head -> threshold tau on its standardised batch mean (e.g. {harmless: 0.0})"})
    lambda_init: float = field(default=1.0, metadata={"help": "lagrangian: initial multiplier per constraint",
                                                      "range": "[0, inf)"})
    lambda_lr: float = field(default=0.1, metadata={"help": "lagrangian: multiplier step per unit of violation",
                                                    "range": "[0, inf)"})
    lambda_max: float = field(default=5.0, metadata={"help": "lagrangian: multipliers are clamped to [0, lambda_max]",
                                                     "range": "[0, inf)"})
    # GDPO: each head normalised on its own before the sum, so one head's scale cannot drown the others.
    aggregation: Literal["sum", "normalize_then_sum"] = field(
        default="sum",
        metadata={"help": "sum: weighted sum then shaping; normalize_then_sum: each head's advantage normalised first (GDPO)"})
    functions: list[str] = field(
        default_factory=list,
        metadata={"help": "extra rewards 'module:function' taking (prompts, completions) -> floats; one head each"})


@dataclass
class RLSection:
    """Which algorithm: the advantage estimator, how many samples each prompt gets, how the loss is averaged."""

    # ppo: GAE with a value head; grpo: group-normalised scores; rloo: leave-one-out baseline;
    # reinforce_pp: REINFORCE++ (batch-whitened returns, token-level KL). See rlhf/rl/advantages.py.
    algo: Literal["ppo", "grpo", "rloo", "reinforce_pp"] = field(
        default="ppo",
        metadata={"help": "the advantage estimator: ppo (GAE, value head), grpo, rloo or reinforce_pp"})
    samples_per_prompt: int = field(
        default=1,
        metadata={"help": "k responses sampled per prompt; the group estimators (grpo, rloo) need k >= 2",
                  "range": "[1, 1000000]"})
    # How per-token policy losses become one number: token_mean (every token of the batch equal), sequence_mean
    # (each response equal, GRPO's original), constant (sum over tokens / generation.max_new_tokens: Dr. GRPO's
    # length-unbiased aggregation, Liu et al. 2025).
    loss_aggregation: Literal["token_mean", "sequence_mean", "constant"] = field(
        default="token_mean",
        metadata={"help": "how per-token losses become one number; constant = Dr. GRPO's"})
    scale_rewards: bool = field(
        default=True,
        metadata={"help": "grpo: divide by the group's std (false = Dr. GRPO's unscaled advantage)"})
    # The policy loss (rlhf/rl/losses.py): clip = PPO's; clip_higher = DAPO's asymmetric clip
    # (update.clip_range below, update.clip_range_high above); gspo = one clipped importance ratio per response.
    policy_loss: Literal["clip", "clip_higher", "gspo"] = field(
        default="clip",
        metadata={"help": "the policy loss: clip (PPO), clip_higher (DAPO) or gspo (sequence-level ratio)"})
    # DAPO's dynamic sampling, as dropping: rows of a group whose scores are all equal have zero advantage
    # under a group estimator; they leave the loss (not resampled), so the mean is over informative groups.
    dynamic_sampling: bool = field(
        default=False,
        metadata={"help": "grpo/rloo: groups whose k scores are all equal leave the loss (rollout/dropped_groups)"})
    overlong_buffer: int = field(
        default=0,
        metadata={"help": "DAPO soft overlong penalty over the last N tokens before generation.max_new_tokens (0: off)",
                  "range": "[0, 100000]"})
    overlong_penalty: float = field(
        default=1.0,
        metadata={"help": "score subtracted at generation.max_new_tokens, linear from 0 across the buffer",
                  "range": "[0, inf)"})
    mask_truncated: bool = field(
        default=False,
        metadata={"help": "responses that never emit EOS (truncated) leave the loss (DAPO's overlong filtering)"})


@dataclass
class UpdateSection:
    """Rollout sizes and the policy update (shared by every algorithm: PPO, GRPO, RLOO, REINFORCE++; the value keys
    only matter for rl.algo ppo)."""

    batch_size: int = field(
        default=8,
        metadata={"help": "prompts per process per step; rollouts = batch_size * rl.samples_per_prompt",
                  "range": "[1, 1000000]"})
    mini_batch_size: int = field(default=4, metadata={"help": "rollouts per optimizer step (per process)",
                                                      "range": "[1, 1000000]"})
    micro_batch_size: int = field(
        default=4,
        metadata={"help": "rollouts per forward/backward; mini/micro = gradient accumulation steps",
                  "range": "[1, 1000000]"})
    # With model.pack_sequences a micro-batch runs packed (no FLOPs on padding, one big matmul per layer);
    # without, it is cut to its own padding-free span. Smaller = fewer activations held at once.
    forward_batch_size: int = field(
        default=8,
        metadata={"help": "rollouts per no-grad forward (reference, separate critic); same trade-off",
                  "range": "[1, 1000000]"})
    epochs: int = field(default=1, metadata={"help": "passes over each batch of rollouts", "range": "[1, 1000000]"})
    gamma: float = field(default=1.0, metadata={"help": "discount", "range": "[0, 1]"})
    lam: float = field(default=0.95, metadata={"help": "GAE lambda", "range": "[0, 1]"})
    clip_range: float = field(default=0.2, metadata={"help": "policy ratio clip (eps_low for clip_higher and gspo)",
                                                  "range": "(0, inf)"})
    clip_range_high: float = field(
        default=0.28,
        metadata={"help": "rl.policy_loss clip_higher/gspo: upper clip eps_high (>= update.clip_range; gspo paper 4e-4)",
                  "range": "(0, inf)"})
    clip_range_value: float = field(default=0.2, metadata={"help": "value clip around the rollout-time values",
                                                           "range": "(0, inf)"})
    vf_coef: float = field(default=0.1, metadata={"help": "weight of the value loss", "range": "[0, inf)"})
    entropy_coef: float = field(default=0.0, metadata={"help": "weight of the entropy bonus", "range": "[0, inf)"})
    max_approx_kl: float = field(
        default=0.0,
        metadata={"help": "stop the rest of an update once approx-KL(old||new) exceeds this (0: never)",
                  "range": "[0, inf)"})
    # The behaviour policy's own numbers. Exact in fp32; in bf16 the KV-cached decoding rounds differently from
    # the full forward the reference runs, which shows as a KL floor before any update (measured: 0.13 nats per
    # ~35-token response on SmolLM2). False recomputes them with the reference's forward path (KL exactly 0 at the
    # start; one more forward per rollout).
    logprobs_from_sampling: bool = field(
        default=True,
        metadata={"help": "old log-probs + values from the sampling pass (no extra forward)"})


@dataclass
class KLSection:
    """The per-token KL penalty against the reference (the policy with its adapters off)."""

    estimator: Literal["k1", "k3"] = field(
        default="k1",
        metadata={"help": "k1 = log p/q (unbiased); k3 = (q/p - 1) - log q/p (never negative)"})
    coef: float = field(default=0.05, metadata={"help": "initial (or fixed) coefficient", "range": "[0, inf)"})
    adaptive: bool = field(default=True, metadata={"help": "Ziegler et al. 2019 controller toward `target`"})
    target: float = field(default=2.0, metadata={"help": "target KL per response (nats), adaptive only",
                                                 "range": "(0, inf)"})
    horizon: int = field(
        default=2000,
        metadata={"help": "rollouts over which a 20 % error moves the coefficient 20 %, adaptive only",
                  "range": "[1, inf)"})
    # Where the KL enters: "reward" = a per-token penalty in the reward (PPO, RLOO, REINFORCE++); "loss" = a
    # k3 KL(policy || reference) term added to the policy loss (GRPO); "auto" = loss for grpo, else reward.
    placement: Literal["auto", "reward", "loss"] = field(
        default="auto",
        metadata={"help": "where the KL enters: per-token reward penalty, k3 loss term, or auto (loss for grpo)"})


@dataclass
class DataSection:
    """Training prompts."""

    sources: list[str] = field(default_factory=lambda: ["hh-rlhf-harmless", "truthfulqa", "dialogsum"],
                               metadata={"help": "prompt sources: shipped names or files"})
    # Never test (nor all, which holds it): the held-out prompts stay unseen until `rlhf eval`.
    split: Literal["train", "dev"] = field(default="train",
                                           metadata={"help": "training prompts; test is held out from every stage"})
    max_prompts: int = field(default=0, metadata={"help": "use at most this many training prompts; 0: all",
                                                  "range": "[0, inf)"})
    max_prompt_tokens: int = field(default=256,
                                   metadata={"help": "longer prompts (rendered as chat) are dropped, not cut",
                                             "range": "[1, 10000000]"})
    shuffle: bool = field(default=True, metadata={"help": "shuffle the training prompts (seeded by run.seed)"})
    eval_split: Literal["train", "dev"] = field(
        default="dev",
        metadata={"help": "prompts monitored during training (train.eval_every); test is left to `rlhf eval`"})
    eval_prompts: int = field(
        default=0,
        metadata={"help": "held-out prompts scored before training, every train.eval_every steps, at the end; 0: off",
                  "range": "[0, inf)"})


@dataclass
class TrainSection:
    """The optimisation loop."""

    max_steps: int = shared_field("max_steps", 100)  # RL steps (generate -> score -> update); no epochs: >= 1
    learning_rate: float = shared_field("learning_rate", 5e-5)
    weight_decay: float = shared_field("weight_decay", 0.0)
    lr_scheduler: str = shared_field("lr_scheduler", "linear")  # stepped once per RL step
    warmup_steps: int = shared_field("warmup_steps", 0)
    max_grad_norm: float = shared_field("max_grad_norm", 1.0)
    precision: Precision = field(
        default="auto",
        metadata={"help": "bf16 frozen weights (trainable ones fp32) or fp32; auto: bf16 where matmuls are native"})
    save_steps: int = shared_field("save_steps", 10)
    save_total_limit: int = shared_field("save_total_limit", 2)
    eval_every: int = field(
        default=0,
        metadata={"help": "evaluate on data.eval_prompts held-out prompts every N steps (0: only before and after)",
                  "range": "[0, 10000000]"})
    sample_every: int = field(default=10, metadata={"help": "log a samples table every N steps (0: never)",
                                                    "range": "[0, 10000000]"})
    num_samples: int = field(default=4, metadata={"help": "rows in the samples table", "range": "[0, 1000000]"})
    threads: int = field(default=0, metadata={"help": "torch threads per process (0: follow the load: the cores other processes leave free, re-checked every step)",
                                              "range": "[0, 4096]"})


@dataclass
class RLStageConfig:
    """Stage 3: online RL against the reward model with a KL penalty to the reference, LoRA on the SFT policy."""

    renamed_keys: ClassVar[RenamedKeys] = RenamedKeys("rl", {
        "policy": "model", "policy.model": "model.name", "policy.precision": "train.precision", "ppo": "update",
        "train.steps": "train.max_steps", "train.save_every": "train.save_steps",
        "train.keep_checkpoints": "train.save_total_limit"})

    model: ModelSection = field(default_factory=ModelSection)
    # Adapters on the last 8 decoder layers: the layers below run once per rollout (model.reuse_trunk), so the
    # reference forward and the update cost ~8/30 of a full pass on SmolLM2-135M (benchmarks/README.md).
    lora: LoraConfig = field(default_factory=lambda: LoraConfig(layers=list(range(-8, 0))))
    rl: RLSection = field(default_factory=RLSection)
    reward: RewardSection = field(default_factory=RewardSection)
    update: UpdateSection = field(default_factory=UpdateSection)
    kl: KLSection = field(default_factory=KLSection)
    generation: GenerationSettings = field(default_factory=lambda: GenerationSettings(max_new_tokens=32))
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    run: RunConfig = field(default_factory=RunConfig)

    @property
    def rollouts_per_step(self) -> int:
        """Rollouts each process makes per step: every prompt sampled ``rl.samples_per_prompt`` times."""
        return self.update.batch_size * self.rl.samples_per_prompt

    @property
    def kl_in_loss(self) -> bool:
        """The KL to the reference is a loss term (else a per-token reward penalty)."""
        return self.kl.placement == "loss" or (self.kl.placement == "auto" and ESTIMATORS[self.rl.algo].kl_in_loss)

    def __post_init__(self) -> None:
        check_ranges(self)
        update, rl = self.update, self.rl
        if self.train.max_steps < 1:
            raise ConfigError("train.max_steps: the RL stage has no epochs, so it needs >= 1 steps")
        estimator = ESTIMATORS[rl.algo]
        if estimator.needs_groups and rl.samples_per_prompt < 2:
            raise ConfigError(f"rl.samples_per_prompt: {rl.algo} compares responses to the same prompt, so it needs "
                              f">= 2 samples per prompt, got {rl.samples_per_prompt}")
        if self.model.critic and not estimator.needs_values:
            raise ConfigError(f"model.critic: {rl.algo} is critic-free (no value function); leave model.critic empty "
                              "or use rl.algo ppo")
        if self.model.quantization != "none" and not self.lora.enabled:
            raise frozen_base_error("model.quantization", self.model.quantization, "lora.enabled true")
        if not self.lora.enabled:
            raise ConfigError("lora.enabled: stage 3 trains LoRA adapters only (the reference is the adapters switched off)")
        rollouts = self.rollouts_per_step
        if rollouts % update.mini_batch_size or update.mini_batch_size % update.micro_batch_size:
            raise ConfigError(f"update.batch_size x rl.samples_per_prompt ({rollouts} rollouts) must be a multiple of "
                              f"update.mini_batch_size ({update.mini_batch_size}), itself a multiple of "
                              f"update.micro_batch_size ({update.micro_batch_size})")
        if self.reward.length_detrend and self.reward.aggregation == "normalize_then_sum":
            # GDPO normalises each head before the sum, so a trend removed from the composite would change nothing.
            raise ConfigError("reward.length_detrend: works on the composite score, which reward.aggregation "
                              "normalize_then_sum does not use; use aggregation sum")
        if POLICY_LOSSES[rl.policy_loss].asymmetric and update.clip_range_high < update.clip_range:
            raise ConfigError(f"update.clip_range_high: must be >= update.clip_range ({update.clip_range}) for "
                              f"{rl.policy_loss}, got {update.clip_range_high}")
        if rl.dynamic_sampling and not estimator.needs_groups:
            raise ConfigError(f"rl.dynamic_sampling: drops groups of equal scores, so it needs a group estimator "
                              f"(grpo or rloo), got rl.algo {rl.algo}")
        if rl.overlong_buffer > self.generation.max_new_tokens:
            raise ConfigError(f"rl.overlong_buffer: {rl.overlong_buffer} tokens is more than generation.max_new_tokens "
                              f"({self.generation.max_new_tokens})")
        reward = self.reward
        if reward.objective == "lagrangian" and not reward.constraints:
            raise ConfigError("reward.constraints: reward.objective lagrangian needs at least one constraint, "
                              "e.g. --reward.constraints '{harmless: 0.0}'")
        if reward.constraints and reward.objective != "lagrangian":
            raise ConfigError("reward.constraints: only read by reward.objective lagrangian (set it, or drop them)")
        if reward.lambda_init > reward.lambda_max:
            raise ConfigError(f"reward.lambda_init: {reward.lambda_init} is above reward.lambda_max ({reward.lambda_max})")
        bad = next((f for f in reward.functions if f.count(":") != 1 or not all(f.split(":"))), None)
        if bad is not None:
            raise ConfigError(f"reward.functions: {bad!r} is not 'module:function'")
        if reward.ensemble and (reward.model or reward.kind == "toy"):
            raise ConfigError("reward.ensemble: lists every member itself; leave reward.model empty and reward.kind model")
        if reward.spread_penalty < 0 or (reward.spread_penalty and len(reward.ensemble) < 2):
            raise ConfigError(f"reward.spread_penalty: needs >= 0 and an ensemble of >= 2 models in reward.ensemble "
                              f"(got {reward.spread_penalty} with {len(reward.ensemble)})")
        if reward.aggregate != "mean" and len(reward.ensemble) < 2:
            raise ConfigError(f"reward.aggregate: {reward.aggregate} needs an ensemble of >= 2 models in reward.ensemble "
                              f"(got {len(reward.ensemble)})")
        if reward.spread_penalty and reward.aggregate != "mean":
            raise ConfigError(f"reward.spread_penalty: applies to aggregate mean only (aggregate {reward.aggregate} is "
                              "already conservative); set it to 0")
        if not self.generation.do_sample:
            raise ConfigError("generation.do_sample must be true: RL needs samples from the policy")


PPOStageConfig = RLStageConfig  # the stage's name before it ran more than PPO (rlhf ppo = rlhf rl --rl.algo ppo)
