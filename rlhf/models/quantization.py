"""A quantized base model (bitsandbytes 8-bit or 4-bit NF4) under trainable adapters: QLoRA.

One place decides which quantizations this machine can run, and how a base is loaded with one. The
base's weights stay frozen and quantized; the adapters (LoRA, or a soft prompt) train in floating point.
"""
from __future__ import annotations

import importlib
import tempfile
from dataclasses import field
from typing import Literal

import torch

from rlhf.core.config import ConfigError

Quantization = Literal["none", "8bit", "4bit"]
INSTALL = "pip install 'rlhf[qlora]'"


def quantization_field():
    """The ``quantization`` key of a stage's model section (SFT, reward, RL): one default, one help text."""
    return field(default="none",
                 metadata={"help": "load the frozen base quantized (bitsandbytes) under the adapters: 4bit = QLoRA's "
                                   "NF4, 8bit = LLM.int8"})


def frozen_base_error(key: str, kind: str, fix: str) -> ConfigError:
    """The one line for a quantized base asked to train every weight: ``fix`` names the adapter switch."""
    return ConfigError(f"{key}: a {kind} base is frozen; train adapters on it ({fix}) or use quantization none")


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


def bnb_config(kind: str, compute_dtype: torch.dtype = torch.float32, keep_float: tuple[str, ...] = ()):
    """transformers' ``BitsAndBytesConfig`` for ``kind`` ("8bit" or "4bit"), or None for "none".

    4-bit is QLoRA's recipe: NF4 with double quantization (the quantization constants quantized too);
    matmuls run in ``compute_dtype``. ``keep_float``: modules left unquantized, such as a new head that
    trains (given, they replace transformers' default list, which only holds the LM head)."""
    if kind == "none":
        return None
    from transformers import BitsAndBytesConfig

    skip = {"llm_int8_skip_modules": list(keep_float)} if keep_float else {}
    if kind == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, **skip)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype, **skip)


def load_kwargs(kind: str, compute_dtype: torch.dtype = torch.float32, keep_float: tuple[str, ...] = ()) -> dict:
    """Extra ``from_pretrained`` arguments that load a base quantized as ``kind`` ({} for "none")."""
    config = bnb_config(kind, compute_dtype, keep_float)
    if config is None:
        return {}
    # bitsandbytes quantizes while placing the weights, so it needs a device map (the device rlhf.core.runtime picks)
    from rlhf.core.runtime import select_device

    device = select_device()
    return {"quantization_config": config, "device_map": {"": device.index or 0 if device.type == "cuda" else "cpu"}}


def keep_backward(model):
    """Stop bitsandbytes from repacking ``model``'s 4-bit weights into its CPU inference layout; returns ``model``.

    On CPUs with AVX512-BF16, bitsandbytes >= 0.49 repacks a 4-bit layer's weight at its first forward in eval
    mode without grad (an eval loss, a dev score, a rollout), for good, and that layout's matmul has no backward:
    from then on no gradient crosses the layer, so adapters below it stop learning without a sign (measured:
    reward training left every q/v LoRA unchanged). Call it on every quantized model that trains."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):  # bitsandbytes Linear4bit
            module.support_avx512bf16_for_cpu = False
    return model


def is_quantized(model) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def quantized_copy(model, kind: str, auto_class, compute_dtype: torch.dtype = torch.float32,
                   keep_float: tuple[str, ...] = (), **kwargs):
    """A float model built in memory (e.g. an SFT adapter merged into its base) loaded again quantized as ``kind``:
    bitsandbytes quantizes while transformers places the weights, so the model goes through a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="rlhf-quantize-") as folder:
        model.save_pretrained(folder)
        quantized = auto_class.from_pretrained(folder, **kwargs, **load_kwargs(kind, compute_dtype, keep_float))
    return keep_backward(quantized)


def quant_stats(param) -> list[torch.Tensor]:
    """The tensors besides ``param``'s packed data that its values depend on (4-bit absmax and code book, 8-bit
    row scales); [] for a float parameter. What a hash of quantized weights must cover."""
    state = getattr(param, "quant_state", None)
    if state is not None:  # bitsandbytes Params4bit
        nested = getattr(state, "state2", None)
        return [t for t in (state.absmax, state.code, nested and nested.absmax) if isinstance(t, torch.Tensor)]
    scale = getattr(param, "SCB", None)  # bitsandbytes Int8Params
    return [scale] if isinstance(scale, torch.Tensor) else []
