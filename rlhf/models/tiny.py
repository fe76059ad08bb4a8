"""Tiny random models built in-process, for tests and ``--preset tiny``: seconds, no download.

Zoo names ``tiny-llama`` (causal LM with a ChatML template like SmolLM2's, pad == EOS like SmolLM2)
and ``tiny-bert`` (encoder) resolve to folders built here, so every code path that takes a model
name takes them too. The tokenizer is a small byte-level BPE trained on the shipped data.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "[CLS]", "[SEP]", "[PAD]"]
TINY_NAMES = ("tiny-llama", "tiny-bert")


def _corpus(limit_chars: int = 400_000) -> list[str]:
    from rlhf.data import sources

    texts: list[str] = []
    for item in sources.dialogsum_items("all")[:200]:
        texts += [item.dialogue, item.summary]
    for item in sources.truthfulqa_items("all"):
        texts += [item.question, item.best_answer, *item.incorrect[:1]]
    for pair in sources.hh_harmless_pairs("all")[:300]:
        texts += [pair.prompt, pair.chosen, pair.rejected]
    out, total = [], 0
    for t in texts:
        out.append(t)
        total += len(t)
        if total > limit_chars:
            break
    return out


def build_tiny_tokenizer(vocab_size: int = 1024, encoder: bool = False):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(), trainer=trainer)
    if encoder:
        cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
        return PreTrainedTokenizerFast(tokenizer_object=tok, cls_token="[CLS]", sep_token="[SEP]",
                                       pad_token="[PAD]", unk_token=None, model_max_length=512)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|im_end|>", model_max_length=2048)
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build_tiny_llama(out_dir: str | Path, seed: int = 0, hidden: int = 64, layers: int = 2,
                     init_scale: float = 0.02) -> Path:
    """A tiny random Llama; ``init_scale`` above the usual 0.02 gives peaked next-token distributions."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=2048, tie_word_embeddings=True, initializer_range=init_scale,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return Path(out_dir)


def build_tiny_bert(out_dir: str | Path, seed: int = 0, hidden: int = 64, layers: int = 2) -> Path:
    import torch
    from transformers import BertConfig, BertModel

    tokenizer = build_tiny_tokenizer(encoder=True)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                        num_hidden_layers=layers, num_attention_heads=4, max_position_embeddings=512,
                        pad_token_id=tokenizer.pad_token_id)
    BertModel(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return Path(out_dir)


def ensure_tiny(name: str, root: Path) -> Path:
    """Build ``name`` into ``root/name`` once (atomically, like a zoo pull).

    The build seeds and draws from torch's global RNG; it runs on a forked RNG, so the caller's stream is the same
    whether the model was built now or read from the cache. (It was not: on a fresh ``RLHF_HOME`` the reward stage,
    seeded before it loads its backbone, initialised its score head from the build's leftover stream, and
    ``rlhf reward --config pipelines/configs/reward_tiny.yaml`` gave dev accuracy 0.5625 once, then 0.4792.)"""
    import torch

    target = root / name
    if (target / "config.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        with torch.random.fork_rng(devices=[]):
            (build_tiny_llama if name == "tiny-llama" else build_tiny_bert)(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process built it first
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
