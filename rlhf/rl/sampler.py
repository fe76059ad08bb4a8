"""RL's fast rollout sampler: ``model.generate`` plus the CPU machinery that makes rollouts cheap.

Same interface and (float rounding apart) the same samples as :class:`rlhf.models.sampling.PlainSampler`; what it
adds, each switched by the policy model's settings and each tested against the plain path:

* **merged LoRA**: the adapters folded into the base weights while sampling, restored bit for bit after;
* **packed prefill**: the prompts run packed (no pads) into a KV cache that ``generate()`` continues;
* **oneDNN LM head** on CPU: the few-rows-by-vocabulary product of every decoding step, pre-packed;
* **what the pass computes anyway is kept**: the logits each token was drawn from and the last hidden
  states (old log-probs and values without a second forward), and the frozen trunk's output at every
  position (later forwards start above it).
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from rlhf.models.logprobs import logprobs_from_logits
from rlhf.rl.packing import PackedRows
from rlhf.rl.policy import PolicyModel
from rlhf.models.sampling import SamplingPass


class FastSampler:
    def __init__(self, model: PolicyModel, merge_lora: bool = True):
        self.model = model
        self.merge_lora = merge_lora

    @torch.no_grad()
    def sample(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, keep_logits: bool = False,
               keep_logprobs: bool = False, **generate_kwargs) -> SamplingPass:
        """Sample; with ``keep_logits`` also keep the logits of every step, with ``keep_logprobs`` only the
        sampled tokens' log-probs; with either, (value head) the last hidden states; with a frozen trunk its
        output at every position (see :class:`SamplingPass`).

        A hook on the LM head sees its input (the final hidden state) and output (the logits) at every
        decoding step, so log-probs and (shared-backbone) values need no second forward over the rollout;
        with a frozen trunk, a hook on the first adapted layer keeps the trunk's output the same way.
        ``keep_logprobs`` streams: a step's logits are held only until the next step's forward feeds the
        token drawn from them back in (a hook on the input embedding sees it), then reduced to (B,) log-probs
        and dropped. Kept whole, the (B, R, V) float32 logits are ~0.2 GiB for 32 rollouts x 32 tokens over
        SmolLM2's 49k vocabulary, and their stack and the log-softmax over them as much again each."""
        model = self.model
        hidden_steps: list[torch.Tensor] = []
        logit_steps: list[torch.Tensor] = []
        logprob_steps: list[torch.Tensor] = []
        pending: list[torch.Tensor] = []  # the last step's logits while its token is not yet known
        trunk_steps: list[torch.Tensor] = []
        keep_hidden = (keep_logits or keep_logprobs) and model.value_head is not None and model.critic is None
        temperature = generate_kwargs.get("temperature") or 1.0

        def reduce_pending(tokens: torch.Tensor) -> None:  # tokens (B,): the ones drawn from pending[0]
            step_logits = pending.pop().unsqueeze(1)  # (B, 1, V)
            logprob_steps.append(logprobs_from_logits(step_logits, tokens.unsqueeze(1), temperature)[:, 0])  # (B,)

        def keep(_module, inputs, output):
            if keep_hidden:
                hidden_steps.append(inputs[0][:, -1].float())  # (B, H)
            if keep_logits:
                logit_steps.append(output[:, -1].float())  # (B, V)
            if keep_logprobs:
                pending.append(output[:, -1])  # (B, V) in the head's dtype; float32 only when reduced

        def fed_back(_module, args, kwargs):
            if pending:  # a decoding step's forward: its input is the token drawn from the previous step
                reduce_pending((args[0] if args else kwargs["input"])[:, -1])

        hooks = contextlib.ExitStack()
        with hooks:
            if keep_logits or keep_logprobs:
                handle = model.causal_lm.get_output_embeddings().register_forward_hook(keep)
                hooks.callback(handle.remove)
            if keep_logprobs:
                handle = model.causal_lm.get_input_embeddings().register_forward_pre_hook(fed_back, with_kwargs=True)
                hooks.callback(handle.remove)
            if model.trunk_depth:
                hooks.enter_context(model.keeping_trunk_output(trunk_steps))
            with self.sampling_weights():
                sequences, packed = self._generate(input_ids, attention_mask, generate_kwargs)
        prompt_len = input_ids.shape[1]
        steps = sequences.shape[1] - prompt_len
        if pending:  # the last sampled token is never fed back
            reduce_pending(sequences[:, prompt_len + len(logprob_steps)])
        trunk = None
        if model.trunk_depth:
            if packed is not None:  # the packed prefill's capture, back to (B, P - 1, H)
                trunk_steps[0] = packed.unpack(trunk_steps[0])
            # Forwards ran over the prompt, then one token at a time; the last sampled token was never fed
            # back (nothing follows it), so its column is zeros: it only ever feeds the discarded last output.
            trunk = torch.cat(trunk_steps, 1)[:, :prompt_len + steps - 1]
            trunk = nn.functional.pad(trunk, (0, 0, 0, sequences.shape[1] - trunk.shape[1]))
        # generate() runs one forward per new token; the last forward's output is never sampled from.
        logits = torch.stack(logit_steps[:steps], 1) if keep_logits else None
        logprobs = torch.stack(logprob_steps[:steps], 1) if keep_logprobs else None
        hidden = torch.stack(hidden_steps[:steps], 1) if keep_hidden else None
        return SamplingPass(sequences, prompt_len, logits, hidden, trunk, logprobs)

    @contextlib.contextmanager
    def sampling_weights(self):
        """The weights as sampling uses them: LoRA folded in (``merge_lora``), the CPU LM head packed."""
        with merged_adapters(self.model.policy) if self.merge_lora else contextlib.nullcontext(), \
                sampling_lm_head(self.model.causal_lm.get_output_embeddings()):
            yield

    def _generate(self, input_ids, attention_mask, kwargs: dict) -> tuple[torch.Tensor, PackedRows | None]:
        """``policy.generate``; with ``pack_sequences`` the prompts (all but their last token) are first run
        packed into a KV cache that generate() continues from. Returns the sequences and the packing used."""
        model = self.model
        policy, lm = model.policy, model.causal_lm
        plain = dict(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        if not (model.pack_sequences and input_ids.shape[0] > 1 and input_ids.shape[1] > 1):
            return policy.generate(**plain), None
        from transformers import DynamicCache

        # Left padding puts every row's last prompt token in the last column: generate() feeds that column.
        packed = PackedRows.from_mask(attention_mask[:, :-1])
        if packed.index.numel() == 0:
            return policy.generate(**plain), None
        prefill = DynamicCache(config=lm.config)
        lm.get_decoder()(input_ids=packed.pack(input_ids[:, :-1]), **packed.forward_kwargs(), cache=prefill,
                         use_cache=True)
        cache = DynamicCache(config=lm.config)
        for index, layer in enumerate(prefill.layers):  # (1, heads, N, d) -> (B, heads, P - 1, d), zeros on pads
            keys, values = (packed.unpack(x.transpose(1, 2)).transpose(1, 2) for x in (layer.keys, layer.values))
            cache.update(keys, values, index)
        return policy.generate(**plain, cache=cache), packed


@contextlib.contextmanager
def sampling_lm_head(head: nn.Module):
    """While sampling on a CPU, run the LM head through oneDNN (mkldnn) with its weight pre-packed.

    Decoding multiplies a few rows by the whole 49k x H head every token; that shape is memory-bound and
    oneDNN's packed weight streams it ~2x faster than the default GEMM here (measured in situ: ~0.8 s of
    ~7.5 s per 8 x 32-token batch). Results differ from F.linear by float rounding only. The module keeps
    its identity (only its ``forward`` is replaced for the duration), so hooks on it still fire."""
    weight = head.weight
    usable = (weight.device.type == "cpu" and weight.dtype == torch.float32 and getattr(head, "bias", None) is None
              and torch.backends.mkldnn.is_available() and type(head) is nn.Linear)
    if not usable:
        yield
        return
    packed = weight.detach().to_mkldnn()

    def forward(x: torch.Tensor) -> torch.Tensor:
        out = torch._C._nn.mkldnn_linear(x.reshape(-1, x.shape[-1]).contiguous().to_mkldnn(), packed).to_dense()
        return out.reshape(*x.shape[:-1], out.shape[-1])

    head.forward = forward
    try:
        yield
    finally:
        del head.forward


@contextlib.contextmanager
def merged_adapters(peft_model):
    """Fold the LoRA deltas into the base weights while sampling, then restore the weights bit for bit.

    Decoding is dominated by per-layer overhead, and every LoRA layer adds five small ops and peft's
    Python dispatch to each of the ~30 layers x 4 projections per token; merged, they are plain matmuls.
    The base weights are copied first (the LoRA-targeted matrices only) and copied back afterwards,
    so merge/unmerge rounding never drifts the reference policy.
    """
    from peft.tuners.lora import LoraLayer

    layers = [m for m in peft_model.modules() if isinstance(m, LoraLayer) and not m.merged]
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


def make_sampler(model: PolicyModel, kind: str = "fast", merge_lora: bool = True):
    """The rollout sampler named by ``model.sampler``; the plain one for a quantized base, whose weights the
    fast sampler's merged LoRA cannot fold into (``rlhf.rl.policy.build_actor_critic`` says so once)."""
    from rlhf.models.sampling import PlainSampler

    if kind == "plain" or (kind == "fast" and model.quantized):
        return PlainSampler(model.policy)
    if kind == "fast":
        return FastSampler(model, merge_lora)
    raise ValueError(f"model.sampler: unknown sampler {kind!r} (fast or plain)")
