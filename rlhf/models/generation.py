"""Generation settings shared by every stage that samples, and batched chat generation.

One dataclass (:class:`GenerationSettings`) so SFT samples, PPO rollouts and evaluation decode the
same way; :func:`generate_chat` does left-padded, KV-cached batched generation that stops at EOS.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch


@dataclass
class GenerationSettings:
    """How to decode. ``do_sample=False`` is greedy; otherwise temperature / top-k / top-p sampling."""

    max_new_tokens: int = field(default=64,
                                metadata={"help": "response tokens at most (generation stops earlier at EOS)",
                                          "range": "[1, 1000000]"})
    do_sample: bool = field(default=True, metadata={"help": "sample with temperature / top-k / top-p; false = greedy"})
    temperature: float = field(default=1.0,
                               metadata={"help": "> 0; 1.0 samples from the model's own distribution (what PPO needs)",
                                         "range": "(0, inf)"})
    top_k: int = field(default=0, metadata={"help": "0 disables top-k filtering", "range": "[0, inf)"})
    top_p: float = field(default=1.0, metadata={"help": "1.0 disables nucleus filtering", "range": "(0, 1]"})
    repetition_penalty: float = field(
        default=1.0,
        metadata={"help": "> 1 penalises tokens already generated (transformers' repetition_penalty); 1.0 = off",
                  "range": "(0, inf)"})
    batch_size: int = field(default=8, metadata={"help": "prompts generated together", "range": "[1, 1000000]"})
    seed: int = field(default=0,
                      metadata={"help": "seed of each batch's sampling: every policy gets the same random stream",
                                "range": "[0, 4294967295]"})

    def hf_kwargs(self, tokenizer) -> dict:
        kwargs = dict(max_new_tokens=self.max_new_tokens, do_sample=self.do_sample,
                      eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
                      repetition_penalty=self.repetition_penalty, use_cache=True)
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)
        else:
            # Explicit neutral values silence transformers' warnings about unused sampling flags.
            kwargs.update(temperature=None, top_k=None, top_p=None)
        return kwargs


def prepare_tokenizer(tokenizer):
    """Left padding and truncation for generation; a pad token when the model has none (falls back to EOS).

    When pad == EOS (SmolLM2), masks must come from ``attention_mask``/lengths, never ``ids != pad``.
    """
    tokenizer.padding_side = "left"
    tokenizer.truncation_side = "left"  # keep the end of a long prompt: the question is there
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def render_chat(tokenizer, messages: Sequence[dict[str, str]], add_generation_prompt: bool = True) -> str:
    """A chat as the model's prompt text; models without a chat template get a plain transcript."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)
    text = "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in messages)
    return text + ("Assistant:" if add_generation_prompt else "")


def seeded_chat_batches(tokenizer, chats: Sequence[Sequence[dict[str, str]]], settings: GenerationSettings,
                        max_prompt_tokens: int, device):
    """Yield the chats rendered and tokenized ``settings.batch_size`` at a time (left-padded, on ``device``),
    seeding torch before each batch from ``settings.seed``: the same chats and settings give the same samples
    whatever ran before, so every policy compared on them gets the same random stream."""
    generator = torch.Generator().manual_seed(settings.seed)
    for start in range(0, len(chats), settings.batch_size):
        texts = [render_chat(tokenizer, chat) for chat in chats[start:start + settings.batch_size]]
        batch = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=max_prompt_tokens,
                          add_special_tokens=False).to(device)
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        yield batch


@torch.no_grad()
def generate_chat(model, tokenizer, chats: Sequence[Sequence[dict[str, str]]], settings: GenerationSettings,
                  max_prompt_tokens: int = 512) -> list[str]:
    """Answer each chat through the plain sampler (``rlhf.models.sampling``); returns the decoded responses (special
    tokens stripped). SFT's sample tables, ``rlhf chat`` and ``rlhf annotate make-tasks`` use it."""
    from rlhf.models.sampling import PlainSampler

    prepare_tokenizer(tokenizer)
    responses: list[str] = []
    was_training = model.training
    model.eval()
    sampler = PlainSampler(model)
    for batch in seeded_chat_batches(tokenizer, chats, settings, max_prompt_tokens, model.device):
        sampled = sampler.sample(batch["input_ids"], batch["attention_mask"], **settings.hf_kwargs(tokenizer))
        responses.extend(tokenizer.batch_decode(sampled.response_ids, skip_special_tokens=True))
    model.train(was_training)
    return [r.strip() for r in responses]
