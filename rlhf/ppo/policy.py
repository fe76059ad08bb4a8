"""The PPO model: the SFT policy with LoRA adapters, a value head, and the reference for free.

* **Reference** = the same weights with the adapters switched off (``peft``'s ``disable_adapter()``), so
  no second copy of the model is ever held.
* **Values** come from a linear head on the policy's own last hidden states by default, so one forward
  gives log-probs and values; a separate critic model (own LoRA, own head input) is an option.
* Only response positions go through the LM head: with a 49k vocabulary the prompt's logits would be
  most of the forward's memory and are never used.
"""
from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import torch
from torch import nn

from rlhf.ppo.config import LoraSection, PolicySection
from rlhf.zoo import load_causal_lm, resolve_model

ADAPTER_CONFIG = "adapter_config.json"


# ---------------------------------------------------------------- precision


def cpu_has_bf16_matmul() -> bool:
    """Native bf16 dot products (AVX512-BF16 or AMX); without them bf16 matmuls are emulated and slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The compute (and frozen-weight) dtype; trainable parameters always stay float32."""
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if device.type == "cpu" and cpu_has_bf16_matmul() else torch.float32


# ---------------------------------------------------------------- loading the SFT start


def load_sft_model(model: str, sft_adapter: str = "", dtype: torch.dtype = torch.float32):
    """The SFT policy as one plain causal LM: merged weights, or base + SFT adapter merged in memory.

    ``model`` may itself be an adapter folder (it has ``adapter_config.json``): its base is loaded and
    the adapter merged. Merging happens in float32, then the weights are cast to ``dtype``.
    """
    path = resolve_model(model)
    adapter = sft_adapter
    if not adapter and (Path(path) / ADAPTER_CONFIG).is_file():
        adapter, path = path, _adapter_base(Path(path))
    if not adapter:
        return load_causal_lm(path, dtype=dtype)
    from peft import PeftModel

    if not (Path(adapter) / ADAPTER_CONFIG).is_file():
        raise FileNotFoundError(f"policy.sft_adapter: {adapter} has no {ADAPTER_CONFIG} (not a PEFT adapter folder)")
    base = load_causal_lm(path, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, adapter).merge_and_unload()
    return merged.to(dtype)


def _adapter_base(adapter: Path) -> str:
    base = json.loads((adapter / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{adapter / ADAPTER_CONFIG}: field 'base_model_name_or_path' is empty; "
                         "set policy.model to the base and policy.sft_adapter to this folder")
    return base


def add_lora(model, lora: LoraSection, task_type: str | None = "CAUSAL_LM"):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=list(lora.target_modules), bias="none", task_type=task_type)
    # autocast_adapter_dtype: adapters are float32 even on bf16 weights (fp32 master weights).
    return get_peft_model(model, config, autocast_adapter_dtype=True)


def disable_dropout(model: nn.Module) -> None:
    """PPO's ratio must be exactly 1 before the first update: no stochastic layers anywhere."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


def response_position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, exactly as ``generate`` numbers them: (B, T)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


# ---------------------------------------------------------------- the model


class ActorCritic(nn.Module):
    """Policy (PEFT model with LoRA) + value head; optional separate critic backbone (PEFT, own LoRA).

    ``forward(input_ids, attention_mask, response_start)`` returns ``(logits, values)`` for the response
    positions only: logits (B, R, V) predict tokens ``input_ids[:, response_start:]``, values (B, R) are
    the value of the state before each of those tokens.
    """

    def __init__(self, policy, critic=None):
        super().__init__()
        self.policy = policy  # peft.PeftModel over a causal LM
        self.critic = critic  # None, or peft.PeftModel over a causal LM whose decoder feeds the value head
        self.merge_for_sampling = True  # fold LoRA into the weights while generating (see merged_adapters)
        value_source = critic if critic is not None else policy
        hidden = value_source.get_base_model().config.hidden_size
        self.value_head = nn.Linear(hidden, 1, dtype=torch.float32)
        # Zero init: values start at 0 and the value loss sends no gradient into a shared backbone at first.
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    # -- pieces of the wrapped models
    @property
    def causal_lm(self):
        return self.policy.get_base_model()  # the LoRA-injected causal LM

    @property
    def config(self):
        return self.causal_lm.config

    def _hidden(self, lm, input_ids, attention_mask, response_start):
        """Last hidden states of the states that predict each response token: (B, R, H)."""
        out = lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask,
                               position_ids=response_position_ids(attention_mask), use_cache=False)
        return out.last_hidden_state[:, response_start - 1:-1]

    def _values(self, hidden: torch.Tensor) -> torch.Tensor:
        # The head runs in float32 outside autocast: values feed a squared error, bf16 would round them.
        with torch.autocast(hidden.device.type, enabled=False):
            return self.value_head(hidden.float()).squeeze(-1)  # (B, R)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_start: int,
                with_values: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        hidden = self._hidden(self.causal_lm, input_ids, attention_mask, response_start)  # (B, R, H)
        logits = self.causal_lm.get_output_embeddings()(hidden)  # (B, R, V)
        if not with_values:
            return logits, None
        if self.critic is not None:
            hidden = self._hidden(self.critic.get_base_model(), input_ids, attention_mask, response_start)
        return logits, self._values(hidden)

    @torch.no_grad()
    def reference_logits(self, input_ids, attention_mask, response_start: int) -> torch.Tensor:
        """Logits of the reference policy (adapters off): (B, R, V)."""
        with self.policy.disable_adapter():
            logits, _ = self.forward(input_ids, attention_mask, response_start, with_values=False)
        return logits

    @torch.no_grad()
    def generate(self, **kwargs) -> torch.Tensor:
        with self.merged_adapters() if self.merge_for_sampling else contextlib.nullcontext():
            return self.policy.generate(**kwargs)

    @contextlib.contextmanager
    def merged_adapters(self):
        """Fold the LoRA deltas into the base weights while sampling, then restore the weights bit for bit.

        Decoding is dominated by per-layer overhead, and every LoRA layer adds five small ops and peft's
        Python dispatch to each of the ~30 layers x 4 projections per token; merged, they are plain matmuls.
        The base weights are copied first (the LoRA-targeted matrices only) and copied back afterwards,
        so merge/unmerge rounding never drifts the reference policy.
        """
        from peft.tuners.lora import LoraLayer

        layers = [m for m in self.policy.modules() if isinstance(m, LoraLayer) and not m.merged]
        saved = [m.get_base_layer().weight.detach().clone() for m in layers]
        try:
            with torch.no_grad():
                for layer in layers:
                    layer.merge()
            yield
        finally:
            with torch.no_grad():
                for layer, weight in zip(layers, saved):
                    if layer.merged:
                        layer.merged_adapters.clear()  # restored below from the exact copy, not by subtraction
                    layer.get_base_layer().weight.copy_(weight)

    @torch.no_grad()
    def generate_with_values(self, **kwargs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sample, and keep what the sampling pass computed anyway: (sequences (B, P + R), logits (B, R, V),
        last hidden states (B, R, H)) of the state before each generated token.

        A hook on the LM head sees its input (the final hidden state) and output (the logits) at every
        decoding step, so log-probs and (shared-backbone) values need no second forward over the rollout.
        """
        hidden_steps: list[torch.Tensor] = []
        logit_steps: list[torch.Tensor] = []

        def keep(_module, inputs, output):
            hidden_steps.append(inputs[0][:, -1].float())  # (B, H)
            logit_steps.append(output[:, -1].float())  # (B, V)

        handle = self.causal_lm.get_output_embeddings().register_forward_hook(keep)
        try:
            with self.merged_adapters() if self.merge_for_sampling else contextlib.nullcontext():
                sequences = self.policy.generate(**kwargs)
        finally:
            handle.remove()
        steps = sequences.shape[1] - kwargs["input_ids"].shape[1]
        # generate() runs one forward per new token; the last forward's output is never sampled from.
        return sequences, torch.stack(logit_steps[:steps], 1), torch.stack(hidden_steps[:steps], 1)

    def values_from_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        return self._values(hidden)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Every trainable tensor (LoRA weights, value head) by name: what a checkpoint must restore."""
        return {name: p.detach().clone() for name, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        params = {name: p for name, p in self.named_parameters() if p.requires_grad}
        missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
        if missing or unexpected:
            raise ValueError(f"checkpoint does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
        with torch.no_grad():
            for name, tensor in state.items():
                params[name].copy_(tensor)

    def enable_gradient_checkpointing(self) -> None:
        for model in (self.policy, self.critic):
            if model is not None:
                model.get_base_model().gradient_checkpointing_enable(
                    gradient_checkpointing_kwargs={"use_reentrant": False})


def build_actor_critic(policy_cfg: PolicySection, lora: LoraSection, dtype: torch.dtype) -> ActorCritic:
    """Load the SFT start, add PPO's LoRA (and the critic's, when separate); only those and the head train."""
    base = load_sft_model(policy_cfg.model, policy_cfg.sft_adapter, dtype)
    policy = add_lora(base, lora)
    critic = None
    if policy_cfg.critic:
        critic = add_lora(load_sft_model(policy_cfg.critic, "", dtype), lora)
    model = ActorCritic(policy, critic)
    model.merge_for_sampling = policy_cfg.merge_lora_for_sampling
    disable_dropout(model)
    if policy_cfg.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    print(f"[ppo] policy {policy_cfg.model}{' + ' + policy_cfg.sft_adapter if policy_cfg.sft_adapter else ''}: "
          f"{trainable:,} trainable of {total:,} parameters ({dtype})", file=sys.stderr)
    return model


@contextlib.contextmanager
def evaluation_mode(module: nn.Module):
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def load_policy_tokenizer(policy_cfg: PolicySection):
    """The SFT adapter's tokenizer when it saved one (it may have added tokens), else the base model's."""
    from rlhf.zoo import load_tokenizer

    path = resolve_model(policy_cfg.model)
    adapter = policy_cfg.sft_adapter or (path if (Path(path) / ADAPTER_CONFIG).is_file() else "")
    if adapter and (Path(adapter) / "tokenizer_config.json").is_file():
        return load_tokenizer(adapter)
    return load_tokenizer(_adapter_base(Path(adapter)) if adapter and not policy_cfg.sft_adapter else path)
