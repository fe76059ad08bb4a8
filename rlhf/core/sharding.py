"""Fully sharded training (FSDP2, torch's ``fully_shard``) for every stage, on CPU (gloo) and CUDA alike.

Why not accelerate's FSDP plugin: accelerate 1.15 silently ignores it without CUDA (the distributed type stays
MULTI_CPU and nothing is sharded), so the stages wrap the model here themselves, in one code path, under the
process group accelerate made, and never hand that model to ``accelerator.prepare`` (which would DDP-wrap it).

What a stage needs from a sharded model, and nothing else:
- ``shard``: each decoder block is one FSDP unit (all-gathered just before its forward, freed after), the root
  holds the rest (embeddings, tied head, final norm, value/score head). FSDP2 lets frozen and trainable
  parameters share a unit, so LoRA adapters need no special wrapping.
- ``gathered``: whole weights on every rank for a while. Generation makes a different number of forward calls
  on each rank (sequences end at different lengths); with per-block all-gathers the ranks would wait on each
  other forever, so generation runs inside this.
- ``full_state_dict``: plain CPU tensors on every rank, for the final export and for tests.
- ``save_sharded`` / ``load_sharded``: torch.distributed.checkpoint, each rank writes and reads its own shard
  (model and optimizer state); the caller owns the folder's atomic rename.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import torch
from torch import nn

def fsdp_requested(env: Mapping[str, str] | None = None) -> bool:
    """The launch asked for FSDP (``accelerate launch --config_file pipelines/accelerate/fsdp.yaml`` sets
    ``ACCELERATE_USE_FSDP=true``; tests set it directly under torchrun)."""
    env = os.environ if env is None else env
    return env.get("ACCELERATE_USE_FSDP", "false").lower() in ("true", "1", "yes")


def _fsdp_modules(model: nn.Module) -> list[nn.Module]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's repeated blocks (decoder/encoder layers): the ModuleList as long as its config's
    ``num_hidden_layers``. Raises ValueError naming the model when there is none (it cannot be wrapped)."""
    depths = {m.config.num_hidden_layers for m in model.modules()
              if isinstance(getattr(getattr(m, "config", None), "num_hidden_layers", None), int)}
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) in depths:
            return list(module)
    raise ValueError(f"{type(model).__name__}: no list of transformer layers (config.num_hidden_layers) to shard")


def check_wrappable(model_name: str, key: str, causal_lm: bool = True, quantization: str = "none",
                    quantization_key: str = "") -> None:
    """Under an FSDP launch, refuse in one line (a ConfigError), before any weights load and before a run folder
    exists, what the stage could not shard: a base quantized as ``quantization`` (named by ``quantization_key``)
    when more than one process would shard it, and a model whose blocks :func:`transformer_blocks` cannot find
    (named by ``key``): its config is built on the meta device (no weights) and searched the way the stage will
    search the real model. A name whose config cannot be read here (an adapter folder, a hub id offline) is left
    to the model loader. Every stage that shards (sft, reward, rl) calls this, its one such check."""
    if not fsdp_requested():
        return
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    from rlhf.core.config import ConfigError
    from rlhf.models.zoo import resolve_model

    if quantization != "none" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # bitsandbytes' packed 4-/8-bit weights are no DTensor FSDP2 can split; one process shards nothing.
        raise ConfigError(f"{quantization_key}: FSDP cannot shard a {quantization} (bitsandbytes) base; "
                          "use a DDP launch for QLoRA")

    try:
        config = AutoConfig.from_pretrained(resolve_model(model_name))
    except (OSError, ValueError):
        return
    try:
        with torch.device("meta"):
            skeleton = (AutoModelForCausalLM if causal_lm else AutoModel).from_config(config)
        transformer_blocks(skeleton)
    except ValueError as err:
        raise ConfigError(f"{key}: {model_name}: FSDP cannot wrap it: {err}") from None


def shard(model: nn.Module, layers: Iterable[nn.Module]) -> nn.Module:
    """``fully_shard`` each block of ``layers`` (e.g. the decoder layers), then the root; in place, returned.

    Every rank first takes rank 0's weights (as DDP does): a fresh head or LoRA init drawn from a different
    random state on another rank would otherwise be trained as one model. The mesh spans the default process
    group on the device type of the model's parameters (gloo on CPU)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if not dist.is_initialized():
        raise RuntimeError("shard: no process group (launch with torchrun / accelerate launch)")
    blocks = list(layers)
    if not blocks:
        raise ValueError(f"shard: {type(model).__name__} has no layers to shard")
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            dist.broadcast(tensor.data, src=0)
    device_type = next(model.parameters()).device.type
    mesh = init_device_mesh(device_type, (dist.get_world_size(),))
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    if not is_sharded(model):
        raise RuntimeError(f"shard: {type(model).__name__} has no DTensor parameter after fully_shard")
    return model


@contextmanager
def no_sync(model: nn.Module) -> Iterator[None]:
    """Gradient accumulation without reduce-scatter: gradients stay whole and local until the first backward
    after the block (FSDP2's ``set_requires_gradient_sync``; DDP's ``no_sync``)."""
    modules = _fsdp_modules(model)
    for module in modules:
        module.set_requires_gradient_sync(False, recurse=False)
    try:
        yield
    finally:
        for module in modules:
            module.set_requires_gradient_sync(True, recurse=False)


def is_sharded(model: nn.Module) -> bool:
    """Some parameter of ``model`` is a DTensor (a shard of a parameter spread over the ranks)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    if isinstance(tensor, DTensor):
        tensor = tensor.full_tensor()  # a collective: every rank must ask for the same tensors in the same order
    return tensor.detach().cpu().clone()


def full_state_dict(model: nn.Module, trainable_only: bool = False) -> dict[str, torch.Tensor]:
    """Gathered, CPU, plain tensors, on every rank (a collective: call it on all ranks).

    Keys are the module's own names: FSDP2 does not rename parameters. ``trainable_only`` keeps the parameters
    that require grad (LoRA adapters, value head), no buffers."""
    if trainable_only:
        items = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    else:
        items = list(model.state_dict().items())
    return {name: _plain(tensor) for name, tensor in items}


@contextmanager
def gathered(model: nn.Module) -> Iterator[nn.Module]:
    """Whole weights on every rank inside the block, so each rank may run any number of forward passes (e.g.
    ``generate``) without collectives; resharded on exit. A no-op for a model that is not sharded.

    Costs one full copy of the weights per rank while inside: meant for inference (no backward inside)."""
    modules = _fsdp_modules(model)
    if not modules:
        yield model
        return
    if model is modules[0]:
        # FSDP picks its root at the first forward it sees; generate() may first call an inner layer, which would
        # then take the root's role. Settle it on the whole model first (what the first training forward does).
        model._get_fsdp_state()._lazy_init()
    for module in modules:
        module.unshard()
    # Keep the gathered weights through every forward: FSDP's post-forward hook would free them again.
    for module in modules:
        module.set_reshard_after_forward(False, recurse=False)
    try:
        yield model
    finally:
        # Back to fully_shard's defaults: blocks free their weights after forward; the root keeps its own
        # (its backward comes right after its forward).
        for module in modules:
            module.set_reshard_after_forward(module is not model, recurse=False)
            module.reshard()


def load_full_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], strict: bool = True) -> None:
    """Load whole (unsharded) tensors, the same on every rank, into a sharded ``model``: each rank keeps its
    shard. ``strict=False`` loads a part (e.g. the trainable weights only)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, dict(state), options=StateDictOptions(full_state_dict=True, strict=strict))


def _inner(optimizer):
    """The torch optimizer behind accelerate's ``AcceleratedOptimizer`` wrapper (or the optimizer itself)."""
    return getattr(optimizer, "optimizer", optimizer)


def _options(trainable_only: bool):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # Frozen weights come back from the base model on resume; skipping them keeps a LoRA checkpoint small.
    return StateDictOptions(ignore_frozen_params=trainable_only, strict=not trainable_only)


def _sharded_state(model: nn.Module, optimizer, trainable_only: bool) -> tuple[dict, list, object]:
    """What torch.distributed.checkpoint writes and reads: {"model": ..., "optimizer": ...} (this rank's shards),
    the torch optimizers, and the options both directions use."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    optimizers = [] if optimizer is None else [_inner(optimizer)]
    options = _options(trainable_only)
    model_state, optim_state = get_state_dict(model, optimizers, options=options)
    state = {"model": model_state}
    if optimizer is not None:
        state["optimizer"] = optim_state
    return state, optimizers, options


def save_sharded(folder: str | Path, model: nn.Module, optimizer=None, trainable_only: bool = False) -> None:
    """Model (and optimizer) state into ``folder`` with torch.distributed.checkpoint: each rank writes its own
    shard, rank 0 the metadata. A collective: every rank calls it with the same (shared) folder."""
    import torch.distributed.checkpoint as dcp

    state, _, _ = _sharded_state(model, optimizer, trainable_only)
    Path(folder).mkdir(parents=True, exist_ok=True)
    dcp.save(state, checkpoint_id=str(folder))


def load_sharded(folder: str | Path, model: nn.Module, optimizer=None, trainable_only: bool = False) -> None:
    """Read what ``save_sharded`` wrote back into ``model`` (and ``optimizer``), each rank its own shard; the
    model must be sharded the same way (the world size may differ: DCP reshards on load)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    state, optimizers, options = _sharded_state(model, optimizer, trainable_only)
    dcp.load(state, checkpoint_id=str(folder))
    if optimizer is None:
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        set_model_state_dict(model, state["model"], options=options)
    else:
        set_state_dict(model, optimizers, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                       options=options)
