"""``PPOStageConfig``: every knob of stage 3, in nested sections (defaults in pipelines/configs/ppo.yaml)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from rlhf.config import ConfigError, RunConfig
from rlhf.generation import GenerationSettings


@dataclass
class PolicySection:
    """The model PPO starts from and how it is held in memory."""

    model: str = "smollm2-135m-instruct"  # zoo name, folder (merged SFT weights or an SFT adapter folder) or hub id
    sft_adapter: str = ""  # optional SFT LoRA adapter folder, merged into `model` in memory before PPO's LoRA
    critic: str = ""  # "" = value head on the policy's backbone (one forward); else a model for a separate critic
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 where the hardware has bf16 matmuls, else fp32
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30 % more time
    merge_lora_for_sampling: bool = True  # fold LoRA into the weights while generating (exact restore after)
    # With lora.layers above the bottom, the layers below the lowest adapter are frozen and identical for the
    # policy, the reference and every update: run them once per rollout (in the sampling pass), keep their
    # output, and start the reference forward and the update's forward+backward from it.
    reuse_trunk: bool = True
    # Forwards over several rollouts, and the prompt prefill before sampling, run packed: every row's real tokens
    # end to end in one sequence with a block-diagonal causal mask, so no FLOPs go to padding (sdpa/eager only).
    pack_sequences: bool = True


@dataclass
class LoraSection:
    """PPO's LoRA adapters on the policy (and on a separate critic)."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0  # dropout makes the same forward give different log-probs; PPO ratios want it off
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    # Decoder layers that get adapters (empty: all); negative indices count from the top, so [-8, ..., -1] is
    # "the last 8 layers" on any depth (all of them on a model with fewer). The layers below the lowest
    # adapted one form a frozen trunk that policy.reuse_trunk computes once per rollout.
    layers: list[int] = field(default_factory=list)


@dataclass
class RewardSection:
    """Where scores come from and how they become the reward."""

    kind: Literal["model", "toy"] = "model"  # model: the trained HHH reward model; toy: token-count reward (tests)
    model: str = ""  # reward model folder (pipelines/reward.py writes <run>/final); "" = newest runs/reward-*/final
    toy_token: str = " the"  # kind toy: reward = share of response tokens equal to this token
    missing_eos_penalty: float = 0.0  # subtracted from the score of a response that never emits EOS (0: off)
    normalize: bool = True  # standardise scores with a running mean/std (kept in checkpoints)
    clip: float = 5.0  # clip (normalised) scores to [-clip, clip]; 0 disables


@dataclass
class PPOSection:
    """Rollout sizes and the PPO update."""

    batch_size: int = 8  # prompts per process per PPO step
    mini_batch_size: int = 4  # rollouts per optimizer step (per process)
    micro_batch_size: int = 4  # rollouts per forward/backward; mini/micro = gradient accumulation steps.
    # With policy.pack_sequences a micro-batch runs packed (no FLOPs on padding, one big matmul per layer);
    # without, it is cut to its own padding-free span. Smaller = fewer activations held at once.
    forward_batch_size: int = 8  # rollouts per no-grad forward (reference, separate critic); same trade-off
    epochs: int = 1  # passes over each batch of rollouts
    gamma: float = 1.0  # discount
    lam: float = 0.95  # GAE lambda
    clip_range: float = 0.2  # policy ratio clip
    clip_range_value: float = 0.2  # value clip around the rollout-time values
    vf_coef: float = 0.1  # weight of the value loss
    entropy_coef: float = 0.0  # weight of the entropy bonus
    whiten_advantages: bool = True
    max_approx_kl: float = 0.0  # stop the rest of an update once approx-KL(old||new) exceeds this (0: never)
    logprobs_from_sampling: bool = True  # old log-probs + values from the sampling pass (no extra forward);
    # exact in fp32, bf16-rounding apart in bf16 (set false there if ratios at the first update drift from 1)


@dataclass
class KLSection:
    """The per-token KL penalty against the reference (the policy with its adapters off)."""

    estimator: Literal["k1", "k3"] = "k1"
    coef: float = 0.05  # initial (or fixed) coefficient
    adaptive: bool = False  # Ziegler et al. 2019 controller toward `target`
    target: float = 6.0  # target KL per response (nats), adaptive only
    horizon: int = 10000  # adaptive only


@dataclass
class DataSection:
    """Training prompts."""

    sources: list[str] = field(default_factory=lambda: ["hh-rlhf-harmless", "truthfulqa", "dialogsum"])  # or files
    split: Literal["train", "dev", "test", "all"] = "train"  # "test" is held out from every stage
    max_prompts: int = 0  # 0: all
    max_prompt_tokens: int = 256  # longer prompts (rendered as chat) are dropped, not cut
    shuffle: bool = True
    eval_split: Literal["train", "dev", "test", "all"] = "test"  # held-out prompts for train.eval_every
    eval_prompts: int = 0  # held-out prompts scored before training, every train.eval_every steps and at the end (0: off)


@dataclass
class TrainSection:
    """The optimisation loop."""

    steps: int = 100  # PPO steps (generate -> score -> update)
    learning_rate: float = 5e-5
    weight_decay: float = 0.0
    lr_scheduler: str = "linear"  # transformers scheduler name (constant, linear, cosine ...), stepped per PPO step
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    save_every: int = 0  # checkpoint every N PPO steps (0: only at the end)
    keep_checkpoints: int = 2
    eval_every: int = 0  # evaluate on data.eval_prompts held-out prompts every N steps (0: only before and after)
    sample_every: int = 10  # log a samples table every N steps (0: never)
    num_samples: int = 4  # rows in the samples table
    threads: int = 0  # torch threads per process (0: torch's default)


@dataclass
class PPOStageConfig:
    policy: PolicySection = field(default_factory=PolicySection)
    lora: LoraSection = field(default_factory=LoraSection)
    reward: RewardSection = field(default_factory=RewardSection)
    ppo: PPOSection = field(default_factory=PPOSection)
    kl: KLSection = field(default_factory=KLSection)
    generation: GenerationSettings = field(default_factory=lambda: GenerationSettings(max_new_tokens=32))
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        ppo = self.ppo
        if ppo.batch_size % ppo.mini_batch_size or ppo.mini_batch_size % ppo.micro_batch_size:
            raise ConfigError(f"ppo.batch_size ({ppo.batch_size}) must be a multiple of ppo.mini_batch_size "
                             f"({ppo.mini_batch_size}), itself a multiple of ppo.micro_batch_size ({ppo.micro_batch_size})")
        if not self.generation.do_sample:
            raise ConfigError("generation.do_sample must be true: PPO needs samples from the policy")
