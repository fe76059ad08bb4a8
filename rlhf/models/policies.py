"""Load a policy to evaluate, and its reference, from one path.

A policy path is any of:

* a zoo name or hub id (``smollm2-135m-instruct``, ``tiny-llama``) or a folder of full weights
  (an SFT ``final-merged/``): no reference unless one is named explicitly;
* a folder holding a PEFT adapter (LoRA or an SFT soft prompt; ``adapter_config.json``, or an ``adapter/`` subfolder with one when the
  folder has no weights of its own): the base named in ``base_model_name_or_path`` is loaded, or the
  ``base`` given explicitly (PPO's adapter sits on the SFT model, which may itself be an adapter: a base
  that is an adapter folder is loaded and merged first), and the adapter put on top. Its **reference is
  the same weights with the adapter disabled** (for SFT: the base model; for PPO on ``base`` = SFT: the
  SFT model), so no second copy of the model is held in memory, exactly like PPO's own reference.

Other files in a run's ``final/`` (PPO's value head) are ignored.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

ADAPTER_CONFIG = "adapter_config.json"


class PolicyLoadError(ValueError):
    """A policy path that cannot be loaded, with the reason."""


def is_adapter_folder(path: str | Path) -> bool:
    return (Path(path).expanduser() / ADAPTER_CONFIG).is_file()


def adapter_folder(path: str | Path) -> Path | None:
    """The PEFT adapter a path stands for: itself, or its ``adapter/`` subfolder when it has no weights."""
    folder = Path(path).expanduser()
    if is_adapter_folder(folder):
        return folder
    if not (folder / "config.json").is_file() and is_adapter_folder(folder / "adapter"):
        return folder / "adapter"
    return None


def adapter_base(path: str | Path) -> str:
    """``base_model_name_or_path`` of an adapter folder, loadable here: a relative base is read relative to the
    folder (see :func:`portable_base`); a zoo name or hub id is returned as is (the zoo's loaders resolve it)."""
    config_file = Path(path).expanduser() / ADAPTER_CONFIG
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise PolicyLoadError(f"{config_file}: not a readable adapter config ({err})") from None
    base = config.get("base_model_name_or_path")
    if not base:
        raise PolicyLoadError(f"{config_file}: field 'base_model_name_or_path' is missing or empty")
    if Path(base).is_absolute():
        return base
    relative = config_file.parent / base
    if relative.is_dir():
        return str(relative)
    if base.startswith("."):  # a folder that was beside the adapter; a hub id never starts with a dot
        raise PolicyLoadError(f"{config_file}: field 'base_model_name_or_path' names {base!r}, a folder relative to "
                              f"the adapter, and {relative} is not there: copy that folder along with the adapter, "
                              "or `rlhf export` the run (the bundle holds its base)")
    return base


def portable_base(base: str, adapter_dir: str | Path) -> str:
    """The name an adapter folder records for ``base`` so that it resolves on another machine and on another path:
    a zoo name or hub id as is; a zoo model's cached folder (what peft writes, from ``resolve_model``) as its zoo
    name; any other local folder relative to the adapter folder (RL's ``../sft-base``), so it travels with the
    folders around it. :func:`adapter_base` reads it back. A name already relative to the adapter folder stays."""
    from rlhf.models.tiny import TINY_NAMES
    from rlhf.models.zoo import ZOO, zoo_name_of

    local = Path(base).expanduser()
    if base in ZOO or base in TINY_NAMES or (not local.is_absolute() and (Path(adapter_dir) / local).is_dir()):
        return base
    if not local.is_dir():
        return base  # a hub id
    return zoo_name_of(local) or os.path.relpath(local.resolve(), Path(adapter_dir).resolve())


def set_adapter_base(adapter_dir: str | Path, base: str) -> str:
    """Name ``base`` as the model an adapter folder goes on (``base_model_name_or_path``, what peft and
    :func:`adapter_base` read), portably (:func:`portable_base`); returns the name written. peft writes the name of
    the model it wrapped: a zoo model's cache folder, an absolute path, or the wrong model when the adapter was
    trained on weights built in memory (an SFT adapter merged in, a backbone quantized while loading). A prompt
    tuning adapter's ``tokenizer_name_or_path`` and peft's stub card's ``base_model:`` get the same name, so
    the folder holds no path of the machine that wrote it."""
    from rlhf.core.checkpoints import write_text_atomic

    adapter_dir = Path(adapter_dir)
    config_file = adapter_dir / ADAPTER_CONFIG
    config = json.loads(config_file.read_text(encoding="utf-8"))
    name = portable_base(base, adapter_dir)
    config["base_model_name_or_path"] = name
    if config.get("tokenizer_name_or_path"):  # peft read the soft prompt's init text with it, from the base
        config["tokenizer_name_or_path"] = name
    write_text_atomic(config_file, json.dumps(config, indent=2, sort_keys=True))
    card = adapter_dir / "README.md"
    if card.is_file():
        text = card.read_text(encoding="utf-8")
        write_text_atomic(card, re.sub(r"(?m)^base_model: .*$", f"base_model: {name}", text, count=1))
    return name


def make_base_portable(adapter_dir: str | Path) -> str:
    """Rewrite the base peft wrote into an adapter folder portably (:func:`portable_base` of that name, a folder
    read from the working directory as peft wrote it, unless it is relative to the adapter folder already)."""
    config = json.loads((Path(adapter_dir) / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    return set_adapter_base(adapter_dir, config["base_model_name_or_path"])


def is_prompt_learning(adapter: str | Path) -> bool:
    """Whether an adapter folder holds a soft prompt (prompt tuning) rather than weight deltas such as LoRA."""
    from peft import PeftConfig

    return PeftConfig.from_pretrained(str(adapter)).is_prompt_learning


def merged_adapter(base, adapter: str | Path):
    """``base`` with the adapter folded into its weights. A soft prompt has no weights to fold: one line says so."""
    from peft import PeftModel

    if is_prompt_learning(adapter):
        raise PolicyLoadError(f"{adapter}: a prompt-tuning adapter (soft prompt) cannot be merged into the weights, "
                              "so it cannot be the base of another adapter; use it as the policy itself")
    return PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()


def has_tokenizer(folder: str | Path) -> bool:
    """Whether ``folder`` holds a tokenizer of its own (an SFT adapter saves one: it may have added tokens)."""
    return any((Path(folder) / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))


def load_weights(path: str, dtype=None, adapter: str = "", quantization: str = "none") -> Any:
    """Full causal-LM weights of ``path`` (zoo name, hub id, model folder or adapter folder) with ``adapter`` (an
    explicit adapter folder, e.g. RL's ``policy.sft_adapter``) merged in: the one loader of a model to start from,
    for every stage (RL and DPO's SFT start, evaluation, a reward model on an SFT adapter) and the export.

    Every adapter on the way down is merged in (it is a base, not the policy). ``dtype``: of the weights returned
    (None: as stored). Merging happens on float32 weights, then the result is cast, or, with ``quantization``
    (4bit, 8bit), quantized by bitsandbytes with ``dtype`` as the compute dtype (QLoRA): bitsandbytes quantizes
    only while loading, and a merge into 16-bit weights would round the adapter's delta."""
    import torch

    from rlhf.models.quantization import keep_backward, load_kwargs, quantized_copy
    from rlhf.models.zoo import load_causal_lm, resolve_model

    if not adapter:
        own = adapter_folder(resolve_model(path))
        if own is None:
            return keep_backward(load_causal_lm(path, dtype=dtype, **load_kwargs(quantization, dtype or torch.float32)))
        adapter, path = str(own), adapter_base(own)
    elif not is_adapter_folder(adapter):
        raise PolicyLoadError(f"{adapter}: has no {ADAPTER_CONFIG} (not a PEFT adapter folder)")
    merged = merged_adapter(load_weights(path, None if dtype is None else torch.float32), adapter)
    if quantization != "none":
        from transformers import AutoModelForCausalLM

        return keep_backward(quantized_copy(merged, quantization, AutoModelForCausalLM, dtype, dtype=dtype))
    return merged if dtype is None else merged.to(dtype)


def merged_as_trained(adapter: str | Path, dtype) -> Any:
    """A trained adapter merged onto its base loaded as ``dtype``: the weights the policy ran with while it trained
    on that base (a sharded run's final merge, from the saved adapter, as the unsharded run merges in place)."""
    return merged_adapter(load_weights(adapter_base(adapter), dtype), adapter)


def tokenizer_source(path: str, adapter: str = "") -> str:
    """Where the tokenizer of ``path`` (with ``adapter`` on top) is: the adapter's own when it saved one, else the
    first folder down ``path``'s chain of adapter bases that has one, else ``path`` itself (a zoo name, hub id)."""
    from rlhf.models.zoo import resolve_model

    if adapter and has_tokenizer(adapter):
        return str(adapter)
    folder = Path(resolve_model(path)).expanduser()
    if folder.is_dir() and has_tokenizer(folder):
        return str(folder)
    own = adapter_folder(folder)
    if own is not None:
        return tokenizer_source(str(own) if own != folder else adapter_base(own))
    return path


def load_tokenizer(path: str, adapter: str = ""):
    """The tokenizer of ``path`` with ``adapter`` on top (:func:`tokenizer_source`), as the zoo loads it."""
    from rlhf.models.zoo import load_tokenizer as load

    return load(tokenizer_source(path, adapter))


@dataclass
class Policy:
    """A loaded policy: its model, tokenizer and how to run its reference."""

    name: str
    path: str
    model: Any  # transformers / peft causal LM, eval mode
    tokenizer: Any
    kind: str  # "full" or "adapter"
    reference_model: Any = None  # a separate reference model (explicit `reference`), else None

    @property
    def has_reference(self) -> bool:
        return self.kind == "adapter" or self.reference_model is not None

    @contextlib.contextmanager
    def reference(self) -> Iterator[Any]:
        """Yield a model that computes the reference: the policy with adapters disabled, or the explicit one."""
        if self.reference_model is not None:
            yield self.reference_model
        elif self.kind == "adapter":
            with self.model.disable_adapter():
                yield self.model
        else:
            raise PolicyLoadError(f"policy {self.name!r} ({self.path}) has no reference: it is not an adapter "
                                  f"and no `reference` is configured")


def load_policy(name: str, path: str, base: str = "", reference: str = "", dtype=None, device=None) -> Policy:
    """Load ``path`` (zoo name, hub id, folder, adapter folder) as policy ``name``; see the module docstring.

    ``device``: where it runs (from ``rlhf.core.runtime.select_device``); None: CPU.

    ``base``: for an adapter, the model to put it on instead of its ``base_model_name_or_path``.
    ``reference``: an explicit reference model for KL (else: adapter disabled, or none for full weights).
    """
    import torch

    from rlhf.models.generation import prepare_tokenizer

    dtype = dtype or torch.float32
    if not path:
        raise PolicyLoadError(f"policy {name!r}: empty path")
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise PolicyLoadError(f"policy {name!r}: {path} is a file; expected a model folder, an adapter folder "
                              "or a zoo name")
    adapter = adapter_folder(folder)
    if folder.is_dir() and adapter is None and not (folder / "config.json").is_file():
        raise PolicyLoadError(f"policy {name!r}: {path} has neither config.json (full weights) nor "
                              f"{ADAPTER_CONFIG} (a PEFT adapter)")
    if base and adapter is None:
        raise PolicyLoadError(f"policy {name!r}: `base` is set but {path} is not an adapter folder")
    tokenizer = prepare_tokenizer(load_tokenizer(base or path, "" if adapter is None else str(adapter)))
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(load_weights(base or adapter_base(adapter), dtype), str(adapter))
        kind = "adapter"
    else:
        model, kind = load_weights(path, dtype), "full"
    device = device or torch.device("cpu")
    model.to(device).eval()
    reference_model = load_weights(reference, dtype).to(device).eval() if reference else None
    return Policy(name=name, path=path, model=model, tokenizer=tokenizer, kind=kind, reference_model=reference_model)
