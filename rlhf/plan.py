"""``rlhf plan``: the memory per device and the compute of a stage setup, from the model's shape alone.

The seed's rule (full fp32 fine-tuning with Adam: 4 bytes of weights + 4 of gradients + 8 of Adam moments + ~8
of activations = ~24 bytes per parameter) split into parts that each follow their own arithmetic:

* **weights** per stored dtype (4 / 2 bytes), a frozen base's block linears at ~0.52 (NF4 with double
  quantization) or 1 byte (LLM.int8); LoRA adapters and heads always float32 (``rlhf.models.lora``).
* **gradients** and **optimizer states** for the trainable parameters only: AdamW keeps 2 moments (8 bytes
  per float32 parameter); 16-bit trainable weights also keep a float32 master copy (ZeRO's 16 bytes/param).
* **activations**: what autograd saves per token of each layer the backward runs through, counted tensor by
  tensor for a Llama-style block (``decoder_layer_elements``) and a BERT-style one (``encoder_layer_elements``),
  in place of Korthikanti et al. (2022)'s sbh(34 + 5as/h) for GPT blocks. LoRA on the top k layers stores the
  top k only (backprop stops at the lowest adapter); gradient checkpointing keeps each layer's input and one
  layer's activations while it is recomputed.
* **logits**: tokens x vocabulary x 4 bytes, often the largest activation of a small model with a large
  vocabulary (SmolLM2: 49k); TRL's SFT computes them tile by tile (a fused LM head), PPO for the response only.
* **KV cache** while generating (PPO): 2 x layers x rollouts x tokens x kv_heads x head_dim.
* **runtime**: what a process holds before any model loads (Python, torch, transformers, TRL; measured here
  as peak RSS) or a CUDA context on a GPU.

Sharding over N devices divides the parts data parallelism keeps whole on every device: ZeRO-1 the optimizer
states, ZeRO-2 also the gradients, ZeRO-3 / FSDP also the weights. Compute: 6 x N x tokens to train fully
(Kaplan et al. 2020), 2 x N per token forward only; LoRA still runs the full forward and the activation
gradients down to its lowest adapter. Everything here is pure arithmetic except ``shape_from_name`` (reads a
``config.json``); the CLI prints a table, the fit verdict and what would make it fit.
"""
from __future__ import annotations

import dataclasses
import itertools
import os
import sys
from dataclasses import dataclass, field
from typing import Literal

from rlhf.command import stage_cli
from rlhf.core.config import ConfigError
from rlhf.models.lora import LoraConfig, resolve_layers

Quantization = Literal["none", "8bit", "4bit"]  # rlhf.models.quantization's, without importing torch: planning needs none

GIB = 2**30
PF_DAY = 1e15 * 86400  # FLOPs in one petaFLOP/s-day
CHINCHILLA_TOKENS_PER_PARAM = 20  # Hoffmann et al. 2022: compute-optimal pre-training data ~20 tokens per parameter
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
COMPUTE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
# A frozen base's block linears, bytes per weight: NF4 packs two 4-bit codes per byte plus one 8-bit absmax
# per 64 weights and one float32 constant per 256 of those (double quantization, Dettmers et al. 2023);
# LLM.int8 keeps one byte per weight (its per-row scales are negligible).
QUANT_BYTES = {"4bit": 0.5 + 1 / 64 + 4 / (64 * 256), "8bit": 1.0}
# Optimizer bytes per trainable float32 parameter: AdamW's two moments; bitsandbytes' 8-bit AdamW one byte each.
OPTIMIZER_BYTES = {"adamw": 8, "adamw_8bit": 2, "sgd": 0}
MASTER_BYTES = 4  # float32 master copy of a 16-bit trainable weight (mixed precision)
# peft's default LoRA targets (target_modules []) per family: llama's and bert's entries of
# TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING (checked in tests/test_plan.py).
PEFT_DEFAULT_TARGETS = {"decoder": ["q_proj", "v_proj"], "encoder": ["query", "value"]}
# TRL's fused LM head (trl.trainer.utils.add_fused_lm_head) scores at most 4096 tokens x 32768 vocabulary entries
# at once; on a CPU its torch fallback (_backward_tile) holds up to 9 tiles: the matmul buffer, the scaled logits
# (two steps), log p, p, the gradient and the temporaries of its update. Measured: 8.3 tiles over the RSS before
# it, at 1024 and 1532 tokens (`python benchmarks/plan_vs_measured.py --probe-fused N`).
FUSED_TILE_TOKENS, FUSED_TILE_VOCAB, FUSED_TILE_COPIES = 4096, 32768, 8.3
# Whole logits in training: the logits, the float32 copy the loss reads / the saved log-softmax, and the gradient
# with respect to the logits in the backward, alive together at its start.
FULL_LOGIT_COPIES = 3
# What a CPU process holds before any model: peak RSS of a process that imports torch, transformers, peft, TRL and
# the stage's training code (0.39 GiB; TRL's SFTTrainer adds 0.11), measured on this project's 2-core EPYC by
# benchmarks/plan_vs_measured.py. On a GPU give the CUDA context instead (~0.5 GiB with cuBLAS's workspace).
RUNTIME_GIB = {"sft": 0.50, "reward": 0.40, "ppo": 0.40}


# ---------------------------------------------------------------- config


@dataclass
class ModelSection:
    """The model: a name to read its config.json from, or its shape by hand (name empty)."""

    name: str = field(default="",
                      metadata={"help": "zoo name, tiny-llama, folder or hub id (config.json only; no weights load); "
                                        "empty: the shape below"})
    params: float = field(default=0.0, metadata={"help": "total parameters, e.g. 8e9 (0: from the shape below)", "range": "[0, inf)"})
    layers: int = field(default=0, metadata={"help": "transformer blocks", "range": "[0, 100000]"})
    hidden: int = field(default=0, metadata={"help": "hidden size", "range": "[0, 10000000]"})
    heads: int = field(default=0, metadata={"help": "attention heads (0: hidden / 128)", "range": "[0, 100000]"})
    kv_heads: int = field(default=0, metadata={"help": "key/value heads (0: = heads; fewer = grouped-query attention)", "range": "[0, 100000]"})
    intermediate: int = field(default=0,
                              metadata={"help": "MLP width (0: what `params` leaves for it, else 8/3 x hidden)", "range": "[0, 100000000]"})
    vocab: int = field(default=32000, metadata={"help": "vocabulary size", "range": "[1, 100000000]"})
    tied_embeddings: bool = field(default=False, metadata={"help": "the LM head shares the input embedding"})


@dataclass
class TrainSection:
    """How the stage trains: precision, optimizer, batch, checkpointing."""

    weights_dtype: Literal["float32", "bfloat16", "float16"] = field(
        default="float32", metadata={"help": "dtype the weights are stored in (trainable LoRA weights stay float32)"})
    quantization: Quantization = field(
        default="none", metadata={"help": "frozen base quantized (bitsandbytes); needs lora.enabled"})
    precision: Literal["fp32", "bf16", "fp16"] = field(
        default="fp32", metadata={"help": "compute: 16-bit autocast keeps activations and the KV cache in 16 bits"})
    optimizer: Literal["adamw", "adamw_8bit", "sgd"] = field(default="adamw", metadata={"help": "optimizer"})
    seq_len: int = field(default=512, metadata={"help": "tokens per sequence (the padded length of a batch)", "range": "[1, 100000000]"})
    micro_batch: int = field(
        default=4, metadata={"help": "sequences per forward/backward per device (reward: pairs, 2 sequences each)", "range": "[1, 1000000]"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step", "range": "[1, 1000000]"})
    gradient_checkpointing: bool = field(default=False,
                                         metadata={"help": "keep layer inputs only, recompute in the backward"})
    attention: Literal["sdpa", "eager"] = field(
        default="sdpa", metadata={"help": "sdpa keeps no seq x seq scores (flash kernels); eager keeps them"})
    logits: Literal["auto", "full", "chunked", "none"] = field(
        default="auto",
        metadata={"help": "LM-head logits in training; auto: chunked for sft (TRL's fused head), full over the "
                          "response for ppo, none for reward (a score head)"})
    steps: int = field(default=1000, metadata={"help": "optimizer steps of the run (its FLOPs and PF-days)", "range": "[1, 1000000000000]"})


@dataclass
class ParallelSection:
    """Data parallelism over devices: what each device keeps whole."""

    strategy: Literal["ddp", "zero1", "zero2", "zero3", "fsdp"] = field(
        default="ddp",
        metadata={"help": "ddp: all on every device; zero1: optimizer sharded; zero2: + gradients; "
                          "zero3/fsdp: + weights"})
    gpus: int = field(default=1, metadata={"help": "devices the run is spread over", "range": "[1, 1000000]"})


@dataclass
class PPOPlanSection:
    """PPO only: what generation and scoring add (the reference is the policy with its adapters off: free)."""

    reward_model: str = field(
        default="policy",
        metadata={"help": "reward model: name or folder; policy: one of the policy's shape; none: no model (toy)"})
    value_head: bool = field(default=True, metadata={"help": "a value head on the policy (false: critic-free, GRPO)"})
    rollouts: int = field(default=8, metadata={"help": "rollouts generated per step (the generation batch)", "range": "[1, 1000000]"})
    prompt_tokens: int = field(default=256, metadata={"help": "prompt tokens per rollout (the longest)", "range": "[1, 100000000]"})
    new_tokens: int = field(default=32, metadata={"help": "generated tokens per rollout", "range": "[1, 100000000]"})
    epochs: int = field(default=1, metadata={"help": "passes over each batch of rollouts", "range": "[1, 1000000]"})


@dataclass
class PlanConfig:
    """`rlhf plan`: per-device memory by part, FLOPs and PF-days of a stage setup, and whether it fits."""

    model: ModelSection = field(default_factory=ModelSection)
    stage: Literal["sft", "reward", "ppo"] = field(
        default="sft", metadata={"help": "sft (causal LM loss), reward (pairs, score head) or ppo"})
    lora: LoraConfig = field(default_factory=lambda: LoraConfig(enabled=False),
                             metadata={"help": "LoRA adapters (enabled false: every weight trains; ppo needs true)"})
    train: TrainSection = field(default_factory=TrainSection)
    parallel: ParallelSection = field(default_factory=ParallelSection)
    ppo: PPOPlanSection = field(default_factory=PPOPlanSection)
    device_memory_gb: float = field(default=0.0,
                                    metadata={"help": "memory per device to fit in, GiB; 0: this machine's RAM", "range": "[0, inf)"})
    runtime_gb: float | None = field(
        default=None,
        metadata={"help": "per process before any model, GiB; null: the stage's measured CPU runtime (Python + "
                          "torch + transformers + TRL: sft 0.50, reward and ppo 0.40); a GPU: its CUDA context (~0.5)", "range": "[0, inf)"})

    @property
    def runtime_gib(self) -> float:
        return RUNTIME_GIB[self.stage] if self.runtime_gb is None else self.runtime_gb

    def __post_init__(self) -> None:
        m, t = self.model, self.train
        for key, value in [("model.params", m.params), ("model.layers", m.layers), ("model.hidden", m.hidden),
                           ("model.heads", m.heads), ("model.kv_heads", m.kv_heads),
                           ("model.intermediate", m.intermediate), ("device_memory_gb", self.device_memory_gb),
                           ("runtime_gb", self.runtime_gb or 0), ("lora.r", self.lora.r)]:
            if value < 0:
                raise ConfigError(f"{key}: must be >= 0, got {value}")
        for key, value in [("model.vocab", m.vocab), ("train.seq_len", t.seq_len),
                           ("train.micro_batch", t.micro_batch), ("train.grad_accum", t.grad_accum),
                           ("train.steps", t.steps), ("parallel.gpus", self.parallel.gpus),
                           ("ppo.rollouts", self.ppo.rollouts), ("ppo.new_tokens", self.ppo.new_tokens),
                           ("ppo.epochs", self.ppo.epochs)]:
            if value < 1:
                raise ConfigError(f"{key}: must be >= 1, got {value}")
        if self.ppo.prompt_tokens < 0:
            raise ConfigError(f"ppo.prompt_tokens: must be >= 0, got {self.ppo.prompt_tokens}")
        if t.quantization != "none" and not self.lora.enabled:
            raise ConfigError(f"train.quantization: a {t.quantization} base is frozen; train adapters on it "
                              "(lora.enabled true)")
        if self.stage == "ppo" and not self.lora.enabled:
            raise ConfigError("lora.enabled: the ppo stage trains LoRA adapters only (the reference is the "
                              "adapters switched off)")
        if self.lora.enabled and self.lora.r < 1:
            raise ConfigError(f"lora.r: must be >= 1, got {self.lora.r}")


# ---------------------------------------------------------------- model shape and parameter counts


@dataclass(frozen=True)
class Shape:
    """A transformer's shape: a Llama-style decoder (gated MLP, RMSNorm) or a BERT-style encoder."""

    family: Literal["decoder", "encoder"]
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool = False
    biases: bool = False  # attention/MLP biases (BERT; some decoders)
    positions: int = 0  # learned position embeddings (BERT: 512); 0 = rotary
    type_vocab: int = 0  # BERT's token types

    def linears(self) -> list[tuple[str, int, int]]:
        """Every linear layer of one block: (module name as peft matches it, in_features, out_features)."""
        h, q, kv, f = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        if self.family == "encoder":
            return [("attention.self.query", h, q), ("attention.self.key", h, q), ("attention.self.value", h, q),
                    ("attention.output.dense", q, h), ("intermediate.dense", h, f), ("output.dense", f, h)]
        return [("self_attn.q_proj", h, q), ("self_attn.k_proj", h, kv), ("self_attn.v_proj", h, kv),
                ("self_attn.o_proj", q, h), ("mlp.gate_proj", h, f), ("mlp.up_proj", h, f), ("mlp.down_proj", f, h)]


def shape_from_hf(config) -> Shape:
    """The shape of a transformers config (``AutoConfig``): encoders by their masked-LM family, else decoders."""
    from reward_models.model import is_causal_lm

    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = config.num_attention_heads
    encoder = not is_causal_lm(config.model_type)
    return Shape(
        family="encoder" if encoder else "decoder", layers=config.num_hidden_layers, hidden=config.hidden_size,
        heads=heads, kv_heads=getattr(config, "num_key_value_heads", None) or heads,
        head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
        intermediate=getattr(config, "intermediate_size", None) or 4 * config.hidden_size, vocab=config.vocab_size,
        tied=bool(getattr(config, "tie_word_embeddings", False)),
        biases=encoder or bool(getattr(config, "attention_bias", False)),
        positions=getattr(config, "max_position_embeddings", 0) if encoder else 0,
        type_vocab=getattr(config, "type_vocab_size", 0) if encoder else 0)


def shape_from_name(name: str, key: str = "model.name") -> Shape:
    """The shape from a zoo name, folder or hub id's config.json (ConfigError naming ``key`` when unknown)."""
    from transformers import AutoConfig

    from rlhf.models.zoo import ModelNotFoundError, resolve_model

    try:
        path = resolve_model(name, auto_pull=False)
        try:  # a folder, or a hub id already in the local cache
            config = AutoConfig.from_pretrained(path, local_files_only=True)
        except OSError:
            if "/" not in name or os.path.exists(name):  # only an owner/name id is worth asking the hub for
                raise
            config = AutoConfig.from_pretrained(path)
        return shape_from_hf(config)
    except (OSError, ValueError, ModelNotFoundError) as err:
        reason = str(err).splitlines()[0] if isinstance(err, ModelNotFoundError) else \
            "not a zoo name, a folder with a config.json, or a hub id available offline"
        raise ConfigError(f"{key}: unknown model {name!r} ({reason})") from None


def shape_from_section(m: ModelSection) -> Shape:
    """A Llama-style decoder from the hand-given shape; the MLP width from ``params`` when given."""
    heads = m.heads or max(1, m.hidden // 128)
    kv_heads = m.kv_heads or heads
    head_dim = m.hidden // heads
    embeddings = m.vocab * m.hidden * (1 if m.tied_embeddings else 2)
    attention = m.hidden * head_dim * (2 * heads + 2 * kv_heads)
    intermediate = m.intermediate
    if not intermediate and m.params:
        per_layer = (m.params - embeddings - m.hidden) / m.layers
        intermediate = int(round((per_layer - attention - 2 * m.hidden) / (3 * m.hidden)))
        if intermediate < 1:
            raise ConfigError(f"model.params: {m.params:g} is too few for {m.layers} layers of width {m.hidden} "
                              f"and a {m.vocab}-token vocabulary")
    return Shape(family="decoder", layers=m.layers, hidden=m.hidden, heads=heads, kv_heads=kv_heads,
                 head_dim=head_dim, intermediate=intermediate or int(8 * m.hidden / 3), vocab=m.vocab,
                 tied=m.tied_embeddings)


def embedding_params(s: Shape) -> int:
    """Input embeddings (+ BERT's positions, token types and their LayerNorm)."""
    extra = (s.positions + s.type_vocab) * s.hidden + 2 * s.hidden if s.family == "encoder" else 0
    return s.vocab * s.hidden + extra


def layer_params(s: Shape) -> int:
    """One block: its linears (+ biases) and norms (RMSNorm: a weight; LayerNorm: weight and bias)."""
    linears = sum(i * o + (o if s.biases else 0) for _, i, o in s.linears())
    norms = 2 * s.hidden * (2 if s.family == "encoder" else 1)
    return linears + norms


def head_params(s: Shape) -> int:
    """After the blocks: the decoder's final norm and an untied LM head; BERT's pooler."""
    if s.family == "encoder":
        return s.hidden * s.hidden + s.hidden
    return s.hidden + (0 if s.tied else s.vocab * s.hidden)


def total_params(s: Shape) -> int:
    return embedding_params(s) + s.layers * layer_params(s) + head_params(s)


def lora_targets(s: Shape, lora: LoraConfig) -> list[tuple[str, int, int]]:
    """The block linears that get adapters: peft's rule, a target matches a module name or its dotted tail."""
    if list(lora.target_modules) == ["all-linear"]:
        return s.linears()
    targets = list(lora.target_modules) or PEFT_DEFAULT_TARGETS[s.family]
    return [(n, i, o) for n, i, o in s.linears() if any(n == t or n.endswith("." + t) for t in targets)]


def adapted_layers(s: Shape, lora: LoraConfig) -> list[int]:
    return resolve_layers(lora.layers, s.layers) if lora.layers else list(range(s.layers))


def lora_params(s: Shape, lora: LoraConfig) -> int:
    """A and B of every adapted linear: r x (in + out) each."""
    per_layer = sum(lora.r * (i + o) for _, i, o in lora_targets(s, lora))
    return per_layer * len(adapted_layers(s, lora))


def quantized_params(s: Shape) -> int:
    """What bitsandbytes quantizes: the blocks' linear weights (not embeddings, norms, biases or the LM head)."""
    return s.layers * sum(i * o for _, i, o in s.linears())


# ---------------------------------------------------------------- activations


def decoder_layer_elements(s: Shape, seq: int, attention: str = "sdpa") -> float:
    """Elements autograd keeps per token for one Llama block's backward (the tensors saved, each counted once).

    Each RMSNorm: its input and the normalised input (the weight's gradient needs it), 2h; its scaled output is
    the saved input of the projections after it, h. Attention: q, k, v after RoPE as the attention kernel keeps
    them (q: heads x d, k and v: kv_heads x d each), its output (heads x d) and the contiguous copy o_proj keeps;
    eager attention adds the softmax probabilities (heads x seq). MLP: gate, SiLU(gate), up and their product.
    """
    h, q, kv, f = s.hidden, s.heads * s.head_dim, s.kv_heads * s.head_dim, s.intermediate
    norms = 2 * (2 * h + h)
    attn = q + 2 * kv + 2 * q + (2 * s.heads * seq if attention == "eager" else 0)
    mlp = 4 * f
    return norms + attn + mlp


def encoder_layer_elements(s: Shape, seq: int, attention: str = "sdpa") -> float:
    """Per token for one BERT block (training mode, dropout 0.1): LayerNorm inputs and outputs, q, k, v, the
    attention output and its projection's input, the GELU's input and output, and the dropout masks (one byte:
    a quarter of a float32 element). The attention probabilities (+ their dropout mask) per head: eager only."""
    h, f = s.hidden, s.intermediate
    norms = 2 * 2 * h
    attn = 3 * h + 2 * h + (s.heads * seq * 2.25 if attention == "eager" else 0)
    mlp = 2 * f + h
    masks = 2 * h / 4
    return norms + attn + mlp + masks


def layer_elements(s: Shape, seq: int, attention: str) -> float:
    fn = encoder_layer_elements if s.family == "encoder" else decoder_layer_elements
    return fn(s, seq, attention)


def backprop_layers(s: Shape, cfg: PlanConfig) -> int:
    """Blocks the backward runs through: all for full training; LoRA stops at its lowest adapter."""
    if not cfg.lora.enabled:
        return s.layers
    return s.layers - min(adapted_layers(s, cfg.lora))


def activation_bytes(s: Shape, tokens: int, seq: int, cfg: PlanConfig) -> float:
    """Saved activations of one micro-batch of ``tokens`` tokens (sequences of ``seq``) in the compute dtype."""
    layers = backprop_layers(s, cfg)
    per_layer = layer_elements(s, seq, cfg.train.attention) * tokens * COMPUTE_BYTES[cfg.train.precision]
    if cfg.train.gradient_checkpointing:
        # each block's input (the residual stream), and one block's activations while it is recomputed
        return layers * tokens * s.hidden * COMPUTE_BYTES[cfg.train.precision] + per_layer
    return layers * per_layer


def logit_bytes(s: Shape, tokens: int, mode: str) -> float:
    """LM-head logits (float32) alive at the start of the backward for ``tokens`` scored tokens."""
    if mode == "none":
        return 0.0
    if mode == "chunked":
        return min(tokens, FUSED_TILE_TOKENS) * min(s.vocab, FUSED_TILE_VOCAB) * 4 * FUSED_TILE_COPIES
    return tokens * s.vocab * 4 * FULL_LOGIT_COPIES


def kv_cache_bytes(s: Shape, rollouts: int, tokens: int, dtype_bytes: int) -> float:
    """Keys and values of every layer for ``rollouts`` sequences of ``tokens``."""
    return 2 * s.layers * rollouts * tokens * s.kv_heads * s.head_dim * dtype_bytes


# ---------------------------------------------------------------- memory by part


@dataclass(frozen=True)
class Part:
    name: str
    bytes: float  # per device
    phase: str  # "always"; "update" (forward/backward), "step" (full gradients, optimizer step), "generation"
    #            (ppo sampling), "save" (writing the final model)
    note: str = ""


@dataclass(frozen=True)
class MemoryPlan:
    parts: list[Part]

    def phase_total(self, phase: str) -> float:
        return sum(p.bytes for p in self.parts if p.phase in ("always", phase))

    @property
    def peak_phase(self) -> str:
        phases = {p.phase for p in self.parts} - {"always"}
        return max(phases, key=self.phase_total) if phases else "always"

    @property
    def total(self) -> float:
        """Per device at the peak: what is always held plus the larger phase."""
        return self.phase_total(self.peak_phase)


SHARDED = {"ddp": (), "zero1": ("optimizer",), "zero2": ("optimizer", "gradients"),
           "zero3": ("optimizer", "gradients", "weights"), "fsdp": ("optimizer", "gradients", "weights")}


def shard_divisor(strategy: str, part: str, gpus: int) -> int:
    """How many devices share ``part`` (weights, gradients, optimizer) under ``strategy``."""
    if strategy not in SHARDED:
        raise ConfigError(f"parallel.strategy: unknown strategy {strategy!r} (one of {', '.join(SHARDED)})")
    return gpus if part in SHARDED[strategy] else 1


def weight_bytes(s: Shape, cfg: PlanConfig) -> float:
    """A model's stored weights: the quantized block linears, everything else in the weights' dtype."""
    dtype = DTYPE_BYTES[cfg.train.weights_dtype]
    quantized = quantized_params(s) if cfg.train.quantization != "none" else 0
    return (total_params(s) - quantized) * dtype + quantized * QUANT_BYTES.get(cfg.train.quantization, 0)


def trainable_params(s: Shape, cfg: PlanConfig) -> int:
    """Parameters the optimizer updates: every one, or the adapters (+ the reward stage's score head)."""
    if not cfg.lora.enabled:
        return total_params(s)
    if cfg.stage == "reward":
        heads = 3 * s.hidden + 3  # the three score heads (helpful, honest, harmless)
    else:
        heads = s.hidden + 1 if cfg.stage == "ppo" and cfg.ppo.value_head else 0  # the value head
    return lora_params(s, cfg.lora) + heads


def memory_plan(s: Shape, cfg: PlanConfig, reward: Shape | None = None) -> MemoryPlan:
    """Per-device bytes by part for ``cfg`` on a model of shape ``s`` (``reward``: PPO's reward model)."""
    t, par = cfg.train, cfg.parallel
    if cfg.stage == "reward" and not s.tied:
        s = dataclasses.replace(s, tied=True)  # a sequence classifier: a score head instead of the LM head's matrix
    div = lambda part: shard_divisor(par.strategy, part, par.gpus)  # noqa: E731
    trainable = trainable_params(s, cfg)
    # full training keeps its trainable weights in the stored dtype; adapters and heads are float32
    trainable_bytes = DTYPE_BYTES[t.weights_dtype] if not cfg.lora.enabled else 4
    master = MASTER_BYTES if trainable_bytes < 4 else 0
    parts = [Part("runtime", cfg.runtime_gib * GIB, "always",
                  "measured CPU process" if cfg.runtime_gb is None else "given (runtime_gb)")]
    frozen = weight_bytes(s, cfg) if cfg.lora.enabled else 0.0
    base_note = f"{t.quantization} base" if t.quantization != "none" else f"{t.weights_dtype} base, frozen"
    if cfg.lora.enabled:
        parts.append(Part("weights", frozen / div("weights"), "always", base_note))
        parts.append(Part("trainable weights", trainable * 4 / div("weights"), "always",
                          f"{trainable / 1e6:.2f} M float32 (adapters, heads)"))
    else:
        parts.append(Part("weights", trainable * trainable_bytes / div("weights"), "always",
                          f"{trainable / 1e6:.1f} M {t.weights_dtype}, all trained"))
    # Gradients are freed after each optimizer step (zero_grad(set_to_none=True)) and rebuilt by the backward as it
    # frees the activations, so the two overlap only when micro-batches accumulate into the same gradients.
    accumulating = t.grad_accum > 1
    parts.append(Part("gradients", trainable * trainable_bytes / div("gradients"), "update" if accumulating else "step",
                      "kept across accumulated micro-batches" if accumulating else "the end of the backward"))
    parts.append(Part("optimizer", trainable * (OPTIMIZER_BYTES[t.optimizer] + master) / div("optimizer"), "always",
                      t.optimizer + (" + float32 master" if master else "")))
    if not cfg.lora.enabled and t.weights_dtype == "float32" and t.precision != "fp32":
        # autocast caches the 16-bit copy of every trainable float32 weight it casts, for the whole forward
        parts.append(Part("autocast copies", trainable * 2 / div("weights"), "update", "16-bit weight casts"))
    if par.strategy == "ddp" and par.gpus > 1:
        # DDP all-reduces gradients through its own buckets, a second copy of them held for the whole run (torch's
        # default gradient_as_bucket_view=False); measured on 2 CPU processes, SmolLM2 full: +1.2 GiB per rank
        parts.append(Part("ddp buckets", trainable * trainable_bytes, "always", "DDP's copy of the gradients"))
    if par.strategy in ("zero3", "fsdp") and par.gpus > 1:
        parts.append(Part("gathered layer", layer_params(s) * DTYPE_BYTES[t.weights_dtype], "update",
                          "one block's full weights while it runs"))
    logits_mode = t.logits if t.logits != "auto" else {"sft": "chunked", "ppo": "full", "reward": "none"}[cfg.stage]
    if cfg.stage == "ppo":
        seq = cfg.ppo.prompt_tokens + cfg.ppo.new_tokens
        tokens, scored = t.micro_batch * seq, t.micro_batch * cfg.ppo.new_tokens
    else:
        seq = t.seq_len
        tokens = t.micro_batch * seq * (2 if cfg.stage == "reward" else 1)
        scored = tokens
    parts.append(Part("activations", activation_bytes(s, tokens, seq, cfg), "update",
                      f"{backprop_layers(s, cfg)} blocks x {tokens} tokens"
                      + (", checkpointed" if t.gradient_checkpointing else "")))
    parts.append(Part("logits", logit_bytes(s, scored, logits_mode), "update", f"{logits_mode}, {scored} tokens"))
    if cfg.stage == "reward" and cfg.lora.enabled:
        # the reward stage saves a plain model: LoRA folded into a deep copy (reward_models.model.save_reward_model)
        parts.append(Part("merged copy", total_params(s) * DTYPE_BYTES[t.weights_dtype], "save",
                          "LoRA folded into a copy of the model to save it"))
    if cfg.stage == "ppo":
        if reward is not None:
            parts.append(Part("reward model", weight_bytes(reward, cfg), "always", "frozen, held like the base"))
        seq_all = cfg.ppo.prompt_tokens + cfg.ppo.new_tokens
        parts.append(Part("kv cache", kv_cache_bytes(s, cfg.ppo.rollouts, seq_all, COMPUTE_BYTES[t.precision]),
                          "generation", f"{cfg.ppo.rollouts} rollouts x {seq_all} tokens"))
    return MemoryPlan(parts)


# ---------------------------------------------------------------- compute


def train_flops(params: float, tokens: float) -> float:
    """Kaplan et al. (2020): ~6 FLOPs per parameter per token to train (2 forward, 4 backward)."""
    return 6 * params * tokens


def pf_days(flops: float) -> float:
    return flops / PF_DAY


def chinchilla_tokens(params: float) -> float:
    """Hoffmann et al. (2022): compute-optimal pre-training data is ~20 tokens per parameter."""
    return CHINCHILLA_TOKENS_PER_PARAM * params


def forward_flops_per_token(s: Shape, seq: int, layers: int | None = None) -> float:
    """2 FLOPs per weight a token meets (blocks, LM head) plus attention's 2 x 2 x seq x (heads x d) per block."""
    layers = s.layers if layers is None else layers
    matmul = layers * sum(i * o for _, i, o in s.linears())
    attention = layers * 4 * seq * s.heads * s.head_dim
    return 2 * matmul + attention


def step_flops(s: Shape, cfg: PlanConfig, reward: Shape | None = None) -> float:
    """FLOPs of one optimizer step on one device (x gpus for the run)."""
    t = cfg.train
    head = 2 * s.vocab * s.hidden if s.family == "decoder" else 0
    if cfg.stage == "ppo":
        seq = cfg.ppo.prompt_tokens + cfg.ppo.new_tokens
        rollouts = cfg.ppo.rollouts
        forward = forward_flops_per_token(s, seq) * seq + head * cfg.ppo.new_tokens
        generation = forward  # prefill + decoding: every token once through the model
        reference = forward
        scoring = forward_flops_per_token(reward, seq) * seq if reward is not None else 0.0
        update = cfg.ppo.epochs * (forward + forward_flops_per_token(s, seq, backprop_layers(s, cfg)) * seq
                                   + head * cfg.ppo.new_tokens)
        return rollouts * (generation + reference + scoring + update)
    seq = t.seq_len
    tokens = t.micro_batch * t.grad_accum * seq * (2 if cfg.stage == "reward" else 1)
    per_token = forward_flops_per_token(s, seq) + (head if cfg.stage == "sft" else 0)
    if not cfg.lora.enabled:
        return 3 * per_token * tokens + (per_token * tokens if t.gradient_checkpointing else 0)
    # LoRA: the full forward, and the activations' gradients (~ one more forward) through the backprop blocks
    backward = forward_flops_per_token(s, seq, backprop_layers(s, cfg)) + (head if cfg.stage == "sft" else 0)
    recompute = forward_flops_per_token(s, seq, backprop_layers(s, cfg)) if t.gradient_checkpointing else 0
    return (per_token + backward + recompute) * tokens


# ---------------------------------------------------------------- verdict and report


def machine_memory_gib() -> float:
    """This machine's RAM (Linux /proc/meminfo)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 16.0


def _changes(cfg: PlanConfig) -> list[tuple[str, dict]]:
    """Single changes that save memory, each as (label, {section: {key: value}}), the cheapest first."""
    t, out = cfg.train, []
    if not t.gradient_checkpointing:
        out.append(("gradient checkpointing", {"train": {"gradient_checkpointing": True}}))
    if not cfg.lora.enabled:
        out.append(("LoRA (r 16 on q, k, v, o)", {"lora": {"enabled": True}}))
    if t.quantization != "4bit":
        label = "a 4-bit base" if cfg.lora.enabled else "LoRA on a 4-bit base (QLoRA)"
        out.append((label, {"train": {"quantization": "4bit"}, "lora": {"enabled": True}}))
    if t.weights_dtype == "float32" or t.precision == "fp32":
        out.append(("bf16 weights and compute", {"train": {"weights_dtype": "bfloat16", "precision": "bf16"}}))
    if t.micro_batch > 1:
        out.append((f"micro-batch 1 (x{t.micro_batch} accumulation)",
                    {"train": {"micro_batch": 1, "grad_accum": t.grad_accum * t.micro_batch}}))
    return out


def _apply(cfg: PlanConfig, changes: list[dict]) -> PlanConfig:
    sections = {}
    for change in changes:
        for section, values in change.items():
            sections.setdefault(section, {}).update(values)
    return dataclasses.replace(cfg, **{name: dataclasses.replace(getattr(cfg, name), **values)
                                       for name, values in sections.items()})


def what_fits(s: Shape, cfg: PlanConfig, reward: Shape | None, budget: float, limit: int = 3) -> list[str]:
    """The smallest sets of changes (at most three) under which the plan fits ``budget`` bytes; then FSDP."""
    found: list[str] = []
    options = _changes(cfg)
    for size in (1, 2, 3):
        for combo in itertools.combinations(options, size):
            labels = [label for label, _ in combo]
            if any(set(prev.split(" + ")) <= set(labels) for prev in found):
                continue  # a smaller set already fits
            if memory_plan(s, _apply(cfg, [c for _, c in combo]), reward).total <= budget:
                found.append(" + ".join(labels))
        if len(found) >= limit:
            break
    for gpus in (2, 4, 8, 16, 32, 64):
        sharded = dataclasses.replace(cfg, parallel=ParallelSection("fsdp", max(gpus, cfg.parallel.gpus)))
        if memory_plan(s, sharded, reward).total <= budget:
            found.append(f"FSDP / ZeRO-3 over {sharded.parallel.gpus} devices")
            break
    return found[:limit + 1]


def describe_setup(cfg: PlanConfig, s: Shape) -> str:
    t = cfg.train
    method = (f"LoRA r {cfg.lora.r} on {len(adapted_layers(s, cfg.lora))}/{s.layers} blocks" if cfg.lora.enabled
              else "full")
    base = f", {t.quantization} base" if t.quantization != "none" else ""
    gc = ", gradient checkpointing" if t.gradient_checkpointing else ""
    return (f"{cfg.stage} {method}{base}, {t.weights_dtype} weights, {t.precision} compute, {t.optimizer}{gc}, "
            f"{cfg.parallel.strategy} over {cfg.parallel.gpus} device(s)")


def report(cfg: PlanConfig, s: Shape, reward: Shape | None = None) -> list[str]:
    """The printed plan: parts, totals, the verdict, compute."""
    plan = memory_plan(s, cfg, reward)
    budget = (cfg.device_memory_gb or machine_memory_gib()) * GIB
    n = total_params(s)
    lines = [f"model: {cfg.model.name or 'by shape'}: {n / 1e6:,.1f} M parameters, {s.layers} blocks x {s.hidden} "
             f"wide, {s.heads} heads ({s.kv_heads} kv), MLP {s.intermediate}, vocabulary {s.vocab}",
             f"setup: {describe_setup(cfg, s)}", "",
             f"{'part':18s} {'GiB':>9s}  {'when':10s} note"]
    for p in plan.parts:
        lines.append(f"{p.name:18s} {p.bytes / GIB:9.3f}  {p.phase:10s} {p.note}")
    peak = plan.total
    lines.append(f"{'peak per device':18s} {peak / GIB:9.3f}  ({plan.peak_phase} phase; 'always' parts + that phase's)")
    fits = peak <= budget
    lines.append(f"fits {budget / GIB:.1f} GiB per device: {'yes' if fits else 'NO'} "
                 f"({100 * peak / budget:.0f} % used)")
    if not fits:
        hints = what_fits(s, cfg, reward, budget)
        lines.append("would fit with: " + ("; or ".join(hints) if hints else "nothing tried here (more devices?)"))
    flops = step_flops(s, cfg, reward)
    run = flops * cfg.train.steps * cfg.parallel.gpus
    lines += ["", f"FLOPs per step per device: {flops:.3g}; run of {cfg.train.steps} steps on {cfg.parallel.gpus} "
                  f"device(s): {run:.3g} FLOPs = {pf_days(run):.3g} PF-days",
              f"Chinchilla-optimal pre-training data: {chinchilla_tokens(n):.3g} tokens (20 per parameter), "
              f"{pf_days(train_flops(n, chinchilla_tokens(n))):.3g} PF-days at 6 N D",
              "runtime: the process before any model (CPU: peak RSS of Python + libraries, measured); "
              "a GPU's CUDA context instead."]
    return lines


def resolve_shapes(cfg: PlanConfig) -> tuple[Shape, Shape | None]:
    """The policy's shape and (ppo) the reward model's; ConfigError naming the key of an unknown model."""
    if not cfg.model.name and not (cfg.model.layers and cfg.model.hidden):
        raise ConfigError("model.name: give a model name, or its shape (model.layers and model.hidden, "
                          "optionally model.params)")
    s = shape_from_name(cfg.model.name) if cfg.model.name else shape_from_section(cfg.model)
    reward = None
    if cfg.stage == "ppo" and cfg.ppo.reward_model != "none":
        reward = s if cfg.ppo.reward_model == "policy" else shape_from_name(cfg.ppo.reward_model, "ppo.reward_model")
    if cfg.lora.enabled:
        resolve_layers(cfg.lora.layers, s.layers)  # a layer past the top: one line naming lora.layers
        if not lora_targets(s, cfg.lora):
            raise ConfigError(f"lora.target_modules: {cfg.lora.target_modules} names no linear layer of this "
                              f"model ({', '.join(n.rsplit('.', 1)[-1] for n, _, _ in s.linears())})")
    return s, reward


def main(cfg: PlanConfig) -> int:
    s, reward = resolve_shapes(cfg)
    print("\n".join(report(cfg, s, reward)))
    return 0


def cli(argv) -> int:
    return stage_cli(PlanConfig, None, main, argv)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(cli(sys.argv[1:]))
