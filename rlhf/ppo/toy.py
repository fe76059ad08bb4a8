"""A toy PPO task that any working PPO must solve in a CPU minute: raise the share of one chosen token.

The shared ``tiny-llama`` is initialised like a real model (std 0.02), so its next-token distribution is
almost uniform over 1,024 tokens and its logits can hardly move: no token is frequent enough to learn
from. :func:`build_toy_policy` builds the same architecture with a larger init scale, so the
distribution is peaked and LoRA can shift it; :func:`frequent_token` picks a token the untrained policy
already samples now and then.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch


def build_toy_policy(out_dir: str | Path, seed: int = 0, init_scale: float = 0.3) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlhf.tiny import build_tiny_tokenizer

    out_dir = Path(out_dir)
    if (out_dir / "config.json").is_file():
        return out_dir
    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, initializer_range=init_scale,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def frequent_token(tokenizer, response_ids: torch.Tensor, response_mask: torch.Tensor) -> int:
    """The most frequent sampled token that survives decode -> encode (what a text scorer sees), EOS excluded."""
    def round_trips(token: int) -> bool:
        return tokenizer(tokenizer.decode([token]), add_special_tokens=False)["input_ids"] == [token]

    counts = Counter(t for t, m in zip(response_ids.flatten().tolist(), response_mask.flatten().tolist())
                     if m and t != tokenizer.eos_token_id)
    return next(token for token, _ in counts.most_common() if round_trips(token))
