"""The reward model: any Hugging Face backbone with three scalar heads (helpful, honest, harmless).

It IS an ``AutoModelForSequenceClassification`` with ``num_labels=3`` and ``id2label`` naming the
heads, saved as a normal HF folder, plus ``reward_config.json`` (:class:`ScoringConfig`: head
weights, normalisation statistics, toxicity settings, input format, lengths). A model trained on a
quantized backbone (QLoRA) is saved as its LoRA adapter and heads instead (PEFT's ``adapter_config.json``
and ``adapter_model.safetensors``), naming the float backbone, which loading quantizes again: folding the
adapters into 4-bit weights would round the update away.

* Encoders (BERT, MiniLM): the model's own pooled output ([CLS] -> pooler -> classifier).
* Causal LMs (SmolLM2, Llama ...): the score is read at the last real token, found from the
  attention mask. HF's own ``*ForSequenceClassification`` looks for the last token that is not
  ``pad_token_id``, which is wrong when pad == EOS (SmolLM2) and the text ends with EOS; so
  :class:`RewardModel` runs the backbone and the ``score`` layer itself. (The ``chat`` input format
  ends with the template's newline after EOS, so HF's forward agrees on these inputs anyway.)
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import torch
from torch import nn

from reward_models.config import ToxicitySettings
from reward_models.encoding import Encoded, InputFormat, PairEncoder, collate
from reward_models.types import HEADS
from rlhf.core.config import from_dict
from rlhf.models.lora import LoraConfig, add_lora
from rlhf.models.quantization import frozen_base_error
from rlhf.core.runtime import autocast

REWARD_CONFIG = "reward_config.json"
# The heads: ``score`` on causal LMs, ``classifier`` on encoders. New and trained, they stay float under a
# quantized backbone (bitsandbytes would otherwise quantize an encoder's freshly initialised classifier).
HEAD_MODULES = ("score", "classifier")
Pooling = Literal["model", "last_token"]


@dataclass
class ScoringConfig:
    """``reward_config.json``: what scoring needs besides the weights, written next to the model."""

    heads: list[str] = field(default_factory=lambda: list(HEADS))
    weights: dict[str, float] = field(default_factory=lambda: {h: 1.0 for h in HEADS})
    mean: dict[str, float] = field(default_factory=lambda: {h: 0.0 for h in HEADS})  # per-head, on `normalised_on`
    std: dict[str, float] = field(default_factory=lambda: {h: 1.0 for h in HEADS})
    normalised_on: str = "none"  # what mean/std were measured on, e.g. "dev responses (926)"
    input_format: InputFormat = "pair"
    pooling: Pooling = "model"
    max_length: int = 384
    min_prompt_tokens: int = 64
    truncation_side: Literal["left"] = "left"  # the prompt loses its start; the response is kept
    toxicity: ToxicitySettings = field(default_factory=ToxicitySettings)
    # "gold": trained to judge (``rlhf eval --gold.model``); every training stage refuses it, so no policy is
    # ever optimised against the judge that measures it.
    role: Literal["proxy", "gold"] = "proxy"
    # QLoRA: the backbone was quantized; the folder holds adapters + heads over ``backbone`` (float, quantized again
    # when loaded). "none": the folder holds the whole model.
    quantization: str = "none"
    backbone: str = ""

    def save(self, folder: str | Path) -> None:
        Path(folder, REWARD_CONFIG).write_text(json.dumps(asdict(self), indent=2), encoding="utf-8")

    @classmethod
    def load(cls, folder: str | Path) -> "ScoringConfig":
        path = Path(folder, REWARD_CONFIG)
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: {folder} is not a reward model saved by this project")
        return from_dict(cls, json.loads(path.read_text(encoding="utf-8")))


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """(batch,) index of the last real token of each row, for left or right padding alike."""
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)  # (width,)
    return (positions * attention_mask.long()).argmax(-1)


def is_causal_lm(model_type: str) -> bool:
    """Decoder-only architectures (llama, gpt2 ...) as opposed to encoders that also have an LM head (bert)."""
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_MASKED_LM_MAPPING_NAMES)

    return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


class RewardModel(nn.Module):
    """A sequence-classification model whose forward returns (batch, heads) scores.

    Pooling lives in ``forward`` (not in a helper that calls sub-modules) so DDP wrapping works.
    """

    def __init__(self, model: nn.Module, pooling: Pooling):
        super().__init__()
        self.model = model  # an HF *ForSequenceClassification, or a peft model around one
        self.pooling = pooling
        self.trunk = None  # a reward_models.trunk_cache.TrunkSpec when batches carry the frozen trunk's output

    @property
    def hf_model(self):
        """The transformers model (inside peft's wrapper when LoRA is on; its layers carry the adapters)."""
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None, trunk_hidden: torch.Tensor | None = None) -> torch.Tensor:
        """``trunk_hidden``: the frozen trunk's output for these sequences (``reward_models.trunk_cache``), so
        only what is above the trunk runs."""
        if trunk_hidden is not None:
            from reward_models.trunk_cache import forward_above_trunk

            if self.trunk is None:
                raise ValueError("trunk_hidden was given but this model has no frozen trunk (see trunk_cache)")
            return forward_above_trunk(self, self.trunk, trunk_hidden, input_ids, attention_mask, token_type_ids)
        if self.pooling == "model":
            extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
            return self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits  # (batch, heads)
        hf = self.hf_model
        backbone = getattr(hf, hf.base_model_prefix)
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (batch, width, dim)
        last = last_token_index(attention_mask)  # (batch,)
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (batch, dim)
        return hf.score(pooled)  # (batch, heads)


def head_config_kwargs() -> dict:
    return dict(num_labels=len(HEADS), id2label=dict(enumerate(HEADS)), label2id={h: i for i, h in enumerate(HEADS)},
                problem_type="regression")


def new_reward_model(backbone: str, lora: LoraConfig | None = None, max_length: int = 384,
                     min_prompt_tokens: int = 64, freeze_backbone: bool = False, quantization: str = "none",
                     ) -> tuple[RewardModel, PairEncoder, ScoringConfig]:
    """A fresh reward model on ``backbone`` with untrained heads, its encoder, and its scoring config.

    ``backbone`` may be a PEFT adapter folder, such as the SFT stage's ``final/``: its base is loaded with the
    adapter merged in, and the adapter folder's tokenizer is used (``rlhf.models.policies``). ``freeze_backbone``:
    only the score head trains (a linear probe on the backbone's features). ``quantization`` (4bit, 8bit):
    the backbone is loaded quantized and frozen (``rlhf.models.quantization``); only LoRA and the heads train."""
    if quantization != "none" and not (lora is not None and lora.enabled):  # as RewardStageConfig refuses it
        raise frozen_base_error("model.quantization", quantization, "lora.enabled true")
    model, tokenizer, causal, source = _classifier(backbone, quantization)
    reward_model, encoder, scoring = _finish(source, model, tokenizer, causal, lora, max_length, min_prompt_tokens,
                                             freeze_backbone)
    if quantization != "none":
        # a zoo name or hub id stays a name, and so does a zoo model's cache folder (another machine pulls it); any
        # other folder is written absolute, so final/ loads from anywhere on this machine
        from rlhf.models.zoo import zoo_name_of

        scoring.quantization = quantization
        folder = Path(backbone).expanduser()
        scoring.backbone = (zoo_name_of(folder) or str(folder.resolve())) if folder.is_dir() else backbone
    return reward_model, encoder, scoring


def _classifier(backbone: str, quantization: str = "none"):
    """(sequence classifier with fresh heads, tokenizer, is-causal, name) for ``backbone``, quantized as asked."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from rlhf.models.policies import adapter_folder
    from rlhf.models.quantization import keep_backward, load_kwargs, quantized_copy
    from rlhf.models.zoo import load_model, load_tokenizer, resolve_model

    adapter = adapter_folder(resolve_model(backbone)) if Path(backbone).expanduser().is_dir() else None
    if adapter is not None:
        model, tokenizer = _classifier_from_adapter(adapter)
        if quantization != "none":  # merged in float in memory; bitsandbytes quantizes only while loading
            model = quantized_copy(model, quantization, AutoModelForSequenceClassification, keep_float=HEAD_MODULES)
        return keep_backward(model), tokenizer, True, str(adapter)
    tokenizer = load_tokenizer(backbone)
    causal = is_causal_lm(AutoConfig.from_pretrained(resolve_model(backbone)).model_type)
    extra = {}
    if causal:
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        extra["pad_token_id"] = tokenizer.pad_token_id
    model = load_model(backbone, AutoModelForSequenceClassification, **head_config_kwargs(), **extra,
                       **load_kwargs(quantization, keep_float=HEAD_MODULES))
    return keep_backward(model), tokenizer, causal, backbone


def _classifier_from_adapter(adapter: Path):
    """A sequence classifier whose backbone is a causal LM with a PEFT adapter merged in (the SFT policy)."""
    from transformers import AutoModelForSequenceClassification

    from rlhf.models.policies import load_tokenizer, load_weights

    policy = load_weights(str(adapter), torch.float32)  # base + adapter(s), merged
    tokenizer = load_tokenizer(str(adapter))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    config = copy.deepcopy(policy.config)
    config.update(head_config_kwargs() | {"pad_token_id": tokenizer.pad_token_id})
    model = AutoModelForSequenceClassification.from_config(config)
    prefix = model.base_model_prefix
    # The sequence classifier shares the causal LM's backbone module (``model``): the merged weights go there;
    # the score head keeps its fresh initialisation.
    getattr(model, prefix).load_state_dict(getattr(policy, prefix).state_dict())
    return model, tokenizer


def _finish(backbone: str, model, tokenizer, causal: bool, lora: LoraConfig | None, max_length: int,
            min_prompt_tokens: int, freeze_backbone: bool) -> tuple[RewardModel, PairEncoder, ScoringConfig]:
    if freeze_backbone and lora is not None and lora.enabled:
        raise ValueError("model.freeze_backbone trains only the score head: set lora.enabled false")
    if lora is not None and lora.enabled:
        model = add_lora(model, lora, task_type="SEQ_CLS")
    if freeze_backbone:
        head = getattr(model, "score", None) or getattr(model, "classifier")
        trainable = {id(p) for p in head.parameters()}
        for param in model.parameters():
            param.requires_grad_(id(param) in trainable)
    input_format: InputFormat = "chat" if causal and getattr(tokenizer, "chat_template", None) else "pair"
    if causal and input_format == "pair":
        raise ValueError(f"{backbone}: a causal LM needs a chat template to lay out (prompt, response)")
    scoring = ScoringConfig(input_format=input_format, pooling="last_token" if causal else "model",
                            max_length=max_length, min_prompt_tokens=min_prompt_tokens)
    encoder = PairEncoder.for_tokenizer(tokenizer, input_format, max_length, min_prompt_tokens)
    scoring.max_length = encoder.max_length  # never more than the backbone's positions
    return RewardModel(model, scoring.pooling), encoder, scoring


def load_reward_model(path: str | Path) -> tuple[RewardModel, PairEncoder, ScoringConfig]:
    """A saved reward model folder -> (model in eval mode, encoder, scoring config)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = Path(path)
    scoring = ScoringConfig.load(path)
    if scoring.quantization != "none":  # adapters + heads over the float backbone, quantized again here
        from peft import PeftModel

        from rlhf.models.quantization import check_backend

        check_backend(scoring.quantization, f"{path / REWARD_CONFIG}: quantization")
        base, _, _, _ = _classifier(scoring.backbone, scoring.quantization)
        model = PeftModel.from_pretrained(base, str(path))  # LoRA and the trained heads (peft's modules_to_save)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(path)
    config = model.config
    names = [config.id2label[i] for i in range(config.num_labels)]
    if names != scoring.heads:
        raise ValueError(f"{path}: model heads {names} do not match reward_config.json heads {scoring.heads}")
    tokenizer = AutoTokenizer.from_pretrained(path)
    encoder = PairEncoder.for_tokenizer(tokenizer, scoring.input_format, scoring.max_length, scoring.min_prompt_tokens)
    return RewardModel(model, scoring.pooling).eval(), encoder, scoring


def save_reward_model(model: RewardModel, encoder: PairEncoder, scoring: ScoringConfig, out_dir: str | Path) -> Path:
    """Write a plain HF folder (LoRA merged in) + tokenizer + reward_config.json, atomically; a quantized
    backbone's model as its adapter and heads instead (``scoring.backbone`` names the float backbone)."""
    from rlhf.models.policies import set_adapter_base
    from rlhf.models.quantization import is_quantized

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    hf = model.model
    quantized = is_quantized(model.hf_model)
    if hasattr(hf, "merge_and_unload") and not quantized:  # LoRA: fold the adapters into the weights of a copy
        hf = copy.deepcopy(hf).merge_and_unload()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        hf.save_pretrained(tmp)
        if quantized:  # peft wrote where the quantized base was read from; the float backbone is what loads
            set_adapter_base(tmp, scoring.backbone)
        encoder.tokenizer.save_pretrained(tmp)
        scoring.save(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


@torch.no_grad()
def score_sequences(model: nn.Module, sequences: Sequence[Encoded], pad_token_id: int, batch_size: int = 64,
                    bf16: bool = False, inputs=None) -> torch.Tensor:
    """(n, heads) float32 scores of encoded sequences; batched by length so padding stays small.

    ``inputs``: what turns sequences into model inputs (``reward_models.trunk_cache``); None: token ids only."""
    batch_of = inputs.batches(sequences, pad_token_id) if inputs is not None else None
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i].input_ids))
    scores = torch.empty((len(sequences), len(HEADS)), dtype=torch.float32)  # (n, heads)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        batch = batch_of(chunk) if batch_of is not None else collate([sequences[i] for i in chunk], pad_token_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast(device, bf16):
            scores[chunk] = model(**batch).float().cpu()
    model.train(was_training)
    return scores
