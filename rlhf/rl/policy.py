"""The RL policy model: the SFT policy with LoRA adapters, a value head (PPO only), and the reference for free.

It does three things: ``forward`` (logits, and values when there is a value head), ``reference_logits``
(adapters off) and ``values``. Sampling lives behind a sampler (``rlhf.rl.sampler``), packing in
``rlhf.rl.packing``; this module only knows how to run the layers above a frozen trunk.

* **Reference** = the same weights with the adapters switched off (``peft``'s ``disable_adapter()``), so
  no second copy of the model is ever held.
* **Values** come from a linear head on the policy's own last hidden states by default, so one forward
  gives log-probs and values; a separate critic model (own LoRA, own head input) is an option.
* Only response positions go through the LM head: with a 49k vocabulary the prompt's logits would be
  most of the forward's memory and are never used.
* **Frozen trunk**: with adapters on the upper layers only (``lora.layers``), the layers below the lowest
  adapter compute the same thing for the policy, the reference and every update. The sampling pass keeps
  their output (the hidden state entering the first adapted layer, at every position), and later forwards
  run only the layers above it: the reference forward and the update's forward and backward cost
  (adapted layers / all layers) of a full pass.
"""
from __future__ import annotations

import contextlib
import sys

import torch
from torch import nn

from rlhf.models.logprobs import response_position_ids
from rlhf.models.lora import LoraConfig, add_lora
from rlhf.rl.config import ModelSection, RLStageConfig
from rlhf.rl.packing import PackedRows, use_varlen_attention


def disable_dropout(model: nn.Module) -> None:
    """PPO's ratio must be exactly 1 before the first update: no stochastic layers anywhere."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


# ---------------------------------------------------------------- the model


class PolicyModel(nn.Module):
    """Policy (PEFT model with LoRA), an optional value head, an optional separate critic (PEFT, own LoRA).

    ``forward(input_ids, attention_mask, response_start)`` returns ``(logits, values)`` for the response
    positions only: logits (B, R, V) predict tokens ``input_ids[:, response_start:]``, values (B, R) are
    the value of the state before each of those tokens (None without a value head: GRPO, RLOO, REINFORCE++).
    """

    def __init__(self, policy, critic=None, value_head: bool = True):
        super().__init__()
        self.policy = policy  # peft.PeftModel over a causal LM
        self.critic = critic  # None, or peft.PeftModel over a causal LM whose decoder feeds the value head
        if critic is not None and not value_head:
            raise ValueError("a separate critic needs a value head")
        self.trunk_depth = 0  # bottom decoder layers whose output rollouts keep (0: none; see use_frozen_trunk)
        self.pack_sequences = False  # run multi-row forwards and the sampling prefill packed (see rlhf.rl.packing)
        self.value_head = None
        if value_head:
            value_source = critic if critic is not None else policy
            self.value_head = nn.Linear(value_source.get_base_model().config.hidden_size, 1, dtype=torch.float32)
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

    @property
    def quantized(self) -> bool:
        """The base weights are bitsandbytes-quantized (QLoRA): the fast sampler's tricks need float ones."""
        from rlhf.models.quantization import is_quantized

        return is_quantized(self.causal_lm)

    def _hidden(self, lm, input_ids, attention_mask, response_start, trunk_hidden=None):
        """Last hidden states of the states that predict each response token: (B, R, H).

        ``trunk_hidden`` (B, T, H), the frozen trunk's output at every position, replaces the layers below
        ``trunk_depth``: only the layers above it run. With ``pack_sequences`` the rows run packed (no pads)."""
        decoder = lm.get_decoder()
        if trunk_hidden is not None and not self.trunk_depth:
            raise ValueError("trunk_hidden was given but this model has no frozen trunk (trunk_depth 0)")
        inputs = {"input_ids": input_ids} if trunk_hidden is None else {"inputs_embeds": trunk_hidden}
        with self._layers_above_trunk(decoder) if trunk_hidden is not None else contextlib.nullcontext():
            if self.pack_sequences and input_ids.shape[0] > 1:
                packed = PackedRows.from_mask(attention_mask)
                out = decoder(**{name: packed.pack(x) for name, x in inputs.items()}, **packed.forward_kwargs(),
                              use_cache=False)
                hidden = packed.unpack(out.last_hidden_state)  # (B, T, H), zeros on padding
            else:
                hidden = decoder(**inputs, attention_mask=attention_mask, position_ids=response_position_ids(attention_mask),
                                 use_cache=False).last_hidden_state
        # Contiguous: for a strided (B, R, H) slice, torch.matmul cannot fold the rows into one mm and runs the
        # LM head as a bmm over the (H, V) weight expanded and copied B times (8 x 576 x 49k bf16 = 0.45 GiB
        # per forward over 8 rollouts, measured on SmolLM2); the copy of the slice is B x R x H.
        return hidden[:, response_start - 1:-1].contiguous()

    @contextlib.contextmanager
    def _layers_above_trunk(self, decoder):
        """The decoder with its layer list cut to the layers above the trunk: its own mask, rotary and final
        norm code then runs on the trunk's output (``inputs_embeds``) exactly as it would after the trunk."""
        layers = decoder.layers
        decoder.layers = nn.ModuleList(list(layers)[self.trunk_depth:])
        try:
            yield
        finally:
            decoder.layers = layers

    @contextlib.contextmanager
    def keeping_trunk_output(self, into: list):
        """Append the hidden states entering layer ``trunk_depth`` at every forward: (B, t, H) each."""

        def keep(_module, args, kwargs):
            into.append((args[0] if args else kwargs["hidden_states"]).detach())

        handle = self.causal_lm.get_decoder().layers[self.trunk_depth].register_forward_pre_hook(keep, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()

    def adapter_free_depth(self) -> int:
        """How many bottom decoder layers of the policy hold no LoRA module (0 if any adapter sits outside
        the decoder layers, e.g. on the embeddings, since then nothing below is frozen)."""
        from peft.tuners.lora import LoraLayer

        layers = self.causal_lm.get_decoder().layers
        layer_of = {id(sub): index for index, layer in enumerate(layers) for sub in layer.modules()}
        indices = [layer_of.get(id(m)) for m in self.causal_lm.modules() if isinstance(m, LoraLayer)]
        if not indices or None in indices:
            return 0
        return min(indices)

    def use_packing(self, enabled: bool = True) -> bool:
        """Pack multi-row forwards and the sampling prefill (``sdpa`` models: see rlhf.rl.packing)."""
        models = [self.causal_lm] + ([self.critic.get_base_model()] if self.critic is not None else [])
        self.pack_sequences = enabled and all([use_varlen_attention(m) for m in models])
        return self.pack_sequences

    @torch.no_grad()
    def use_frozen_trunk(self, enabled: bool = True) -> int:
        """Turn trunk reuse on (when the adapters leave a frozen trunk) and return its depth.

        A decoder whose forward does more to ``inputs_embeds`` than the layers (Gemma scales them, for one)
        would give different results from the trunk's output, so the trunk path is first checked against a
        full forward on a few tokens; on a mismatch it stays off, with a warning."""
        self.trunk_depth = 0
        depth = self.adapter_free_depth() if enabled else 0
        if depth == 0:
            return 0
        self.trunk_depth = depth
        vocab = self.config.vocab_size
        device = self.causal_lm.get_input_embeddings().weight.device
        ids = (torch.arange(3, 11, device=device) * 7919 % vocab).unsqueeze(0)  # (1, 8)
        mask = torch.ones_like(ids)
        with evaluation_mode(self):
            full, _ = self.forward(ids, mask, 1, with_values=False)
            kept: list[torch.Tensor] = []
            with self.keeping_trunk_output(kept):
                self.causal_lm.get_decoder()(input_ids=ids, attention_mask=mask, use_cache=False)
            fast, _ = self.forward(ids, mask, 1, with_values=False, trunk_hidden=kept[0])
        if not torch.allclose(fast.float(), full.float(), rtol=1e-3, atol=1e-3 * float(full.abs().max())):
            print(f"[ppo] warning: {type(self.causal_lm).__name__} does not reproduce its forward from the trunk's "
                  "output; model.reuse_trunk is off for this model", file=sys.stderr)
            self.trunk_depth = 0
        return self.trunk_depth

    def _values(self, hidden: torch.Tensor) -> torch.Tensor:
        # The head runs in float32 outside autocast: values feed a squared error, bf16 would round them.
        with torch.autocast(hidden.device.type, enabled=False):
            return self.value_head(hidden.float()).squeeze(-1)  # (B, R)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_start: int,
                with_values: bool = True, trunk_hidden: torch.Tensor | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``trunk_hidden`` (B, T, H): the frozen trunk's output for these positions (``trunk_depth`` > 0),
        so only the layers above it run; the separate critic, if any, always runs whole."""
        hidden = self._hidden(self.causal_lm, input_ids, attention_mask, response_start, trunk_hidden)  # (B, R, H)
        logits = self.causal_lm.get_output_embeddings()(hidden)  # (B, R, V)
        if not with_values or self.value_head is None:
            return logits, None
        if self.critic is not None:
            hidden = self._hidden(self.critic.get_base_model(), input_ids, attention_mask, response_start)
        return logits, self._values(hidden)

    @torch.no_grad()
    def reference_logits(self, input_ids, attention_mask, response_start: int,
                         trunk_hidden: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of the reference policy (adapters off): (B, R, V). The trunk has no adapters, so its
        output is the reference's too."""
        with self.policy.disable_adapter():
            logits, _ = self.forward(input_ids, attention_mask, response_start, with_values=False,
                                     trunk_hidden=trunk_hidden)
        return logits

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


def build_policy_model(cfg: RLStageConfig, dtype: torch.dtype) -> "PolicyModel":
    """The stage's policy model: a value head only when the algorithm's advantage estimator reads values."""
    from rlhf.rl.advantages import ESTIMATORS

    return build_actor_critic(cfg.model, cfg.lora, dtype, value_head=ESTIMATORS[cfg.rl.algo].needs_values)


def build_actor_critic(model_cfg: ModelSection, lora: LoraConfig, dtype: torch.dtype,
                       value_head: bool = True) -> "PolicyModel":
    """Load the SFT start, add the LoRA (and the critic's, when separate); only those and the head train."""
    from rlhf.models.policies import load_weights  # the one loader: SFT adapters merged in float32, then cast or quantized

    kind = model_cfg.quantization
    base = load_weights(model_cfg.name, dtype, adapter=model_cfg.sft_adapter, quantization=kind)
    policy = add_lora(base, lora)
    critic = None
    if model_cfg.critic:
        critic = add_lora(load_weights(model_cfg.critic, dtype, quantization=kind), lora)
    model = PolicyModel(policy, critic, value_head=value_head)
    disable_dropout(model)
    fast = model_cfg.sampler == "fast"
    if model.quantized and (fast or model_cfg.pack_sequences):
        # Merging LoRA into 4-/8-bit weights cannot be undone exactly (and would round the delta away); packing,
        # the trunk reuse and the oneDNN LM head are only proven on float weights: make_sampler falls back too.
        print(f"[rl] model.quantization {kind}: the fast sampler (merged LoRA, frozen trunk, oneDNN LM head) and "
              "packing need float weights; rollouts use the plain sampler, unpacked", file=sys.stderr)
    model.use_packing(model_cfg.pack_sequences and not model.quantized)
    model.use_frozen_trunk(model_cfg.reuse_trunk and fast and not model.quantized)
    if model_cfg.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    print(f"[rl] policy {model_cfg.name}{' + ' + model_cfg.sft_adapter if model_cfg.sft_adapter else ''}: "
          f"{trainable:,} trainable of {total:,} parameters ({dtype}{f', base {kind}' if kind != 'none' else ''}"
          f"{', value head' if model.value_head is not None else ', no value head'})"
          + (f"; frozen trunk: layers 0-{model.trunk_depth - 1} run once per rollout" if model.trunk_depth else ""),
          file=sys.stderr)
    return model



@contextlib.contextmanager
def evaluation_mode(module: nn.Module):
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def load_policy_tokenizer(model_cfg: ModelSection):
    """The RL (and DPO) policy's tokenizer: the SFT adapter's when it saved one, else the model's
    (``rlhf.models.policies.load_tokenizer``, the one resolver)."""
    from rlhf.models.policies import load_tokenizer

    return load_tokenizer(model_cfg.name, model_cfg.sft_adapter)
