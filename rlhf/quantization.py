"""A quantized base model (bitsandbytes 8-bit or 4-bit NF4) under trainable adapters: QLoRA.

One place decides which quantizations this machine can run, and how a base is loaded with one. The
base's weights stay frozen and quantized; the adapters (LoRA, or a soft prompt) train in floating point.
"""
from __future__ import annotations

import importlib
from typing import Literal

import torch

from rlhf.config import ConfigError

Quantization = Literal["none", "8bit", "4bit"]
INSTALL = "pip install 'rlhf[qlora]'"


def check_backend(kind: str, key: str = "model.quantization") -> None:
    """Raise ConfigError (one line naming ``key``) when this machine cannot load a ``kind`` base (bitsandbytes
    missing); call it before any model loads."""
    if kind == "none":
        return
    try:
        importlib.import_module("bitsandbytes")
    except ImportError:
        raise ConfigError(f"{key}: {kind} needs bitsandbytes, which is not installed ({INSTALL})") from None
    # bitsandbytes >= 0.49 runs both on CPU as well (checked with 0.50.2: 8-bit casts activations to fp16 there)


def bnb_config(kind: str, compute_dtype: torch.dtype = torch.float32):
    """transformers' ``BitsAndBytesConfig`` for ``kind`` ("8bit" or "4bit"), or None for "none".

    4-bit is QLoRA's recipe: NF4 with double quantization (the quantization constants quantized too);
    matmuls run in ``compute_dtype``."""
    if kind == "none":
        return None
    from transformers import BitsAndBytesConfig

    if kind == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype)


def load_kwargs(kind: str, compute_dtype: torch.dtype = torch.float32) -> dict:
    """Extra ``from_pretrained`` arguments that load a base quantized as ``kind`` ({} for "none")."""
    config = bnb_config(kind, compute_dtype)
    if config is None:
        return {}
    # bitsandbytes quantizes while placing the weights, so it needs a device map (the one device there is)
    return {"quantization_config": config, "device_map": {"": 0 if torch.cuda.is_available() else "cpu"}}


def is_quantized(model) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))
