"""The frozen-trunk feature cache of reward training: the frozen lower layers run once per text, kept on disk.

When a reward model's trainable weights sit only in its top layers (LoRA on ``lora.layers``) or only
in its score head (``model.freeze_backbone``: a linear probe), everything below them computes the same thing
at every epoch, at every dev evaluation and for the normalisation statistics. :func:`model_inputs` returns
the object that turns encoded sequences into model inputs:

* :class:`PlainInputs`: token ids only; every forward runs the whole backbone.
* :class:`TrunkCache`: the first time it sees a set of sequences it runs the trunk over them (no grad, eval
  mode, so without dropout) and writes its output to one memory-mapped file; every batch then carries that
  output as ``trunk_hidden`` and :class:`~reward_models.model.RewardModel` runs only what is above it
  (:func:`forward_above_trunk`): the layers above the trunk with the model's own mask, norm, pooler and head
  code (the embedding module is swapped for one that returns the kept output and the layer list cut), or,
  for a frozen backbone, the score head alone on the features it reads.

The trunk is found from the trainable parameters: its depth is the lowest layer holding one; with none in
the backbone, the whole backbone is the trunk and the cache holds the score head's input (pooled features).

One file per (backbone weights, trunk, storage dtype, set of sequences), under
``<cache_dir>/<backbone hash>-<trunk>-<dtype>/<sequences hash>.trunk``. The backbone hash covers the model's
config and every frozen weight; the sequences hash covers every token id and token type, in order. So other
weights or other texts give another file, and a file is never read for inputs it was not made from. The
file holds its own description (magic, version, both hashes, shape, lengths) and is checked against what is
asked before use; a file that is truncated, foreign or unreadable is named in one line on stderr and
recomputed. Files are written under a temporary name and renamed into place.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from reward_models.encoding import Encoded, collate
from rlhf.models.quantization import quant_stats

MAGIC = b"RLHFTRNK"
VERSION = 1
ALIGN = 64  # the data starts on a 64-byte boundary after the header
Batches = Callable[[Sequence[int]], dict]  # rows of a sequence list -> model inputs (collated, maybe trunk_hidden)


# ---------------------------------------------------------------- where the trunk ends


@dataclass(frozen=True)
class TrunkSpec:
    """What the cache keeps: the hidden states entering layer ``depth`` at every position, or (``pooled``) the
    score head's input, one vector per sequence (the whole backbone is frozen)."""

    depth: int
    pooled: bool = False

    @property
    def name(self) -> str:
        return "pooled" if self.pooled else f"d{self.depth}"


def backbone_of(model) -> nn.Module:
    """The transformers backbone (``LlamaModel``, ``BertModel`` ...) of a reward model."""
    hf = model.hf_model
    return getattr(hf, hf.base_model_prefix)


def head_of(model) -> nn.Module:
    """The score head: ``score`` (causal LMs) or ``classifier`` (encoders)."""
    hf = model.hf_model
    head = getattr(hf, "score", None) or getattr(hf, "classifier", None)
    if head is None:
        raise ValueError(f"{type(hf).__name__} has neither a `score` nor a `classifier` head")
    return head


def layer_list(backbone: nn.Module) -> tuple[nn.Module, str]:
    """(owner, attribute) of the backbone's transformer layers: llama's ``layers``, BERT's ``encoder.layer``."""
    for path in ("layers", "encoder.layer", "h"):
        owner, *rest = [backbone, *path.split(".")]
        for part in rest[:-1]:
            owner = getattr(owner, part, None)
        if owner is not None and isinstance(getattr(owner, rest[-1], None), nn.ModuleList):
            return owner, rest[-1]
    raise ValueError(f"{type(backbone).__name__}: cannot find its list of layers")


def embedding_attribute(backbone: nn.Module) -> str:
    """The backbone's child that turns ids into the first layer's input: the word embedding itself (llama's
    ``embed_tokens``), else an ``embeddings`` module that adds positions and token types (BERT)."""
    words = backbone.get_input_embeddings()
    for name, child in backbone.named_children():
        if child is words:
            return name
    if isinstance(getattr(backbone, "embeddings", None), nn.Module):
        return "embeddings"
    raise ValueError(f"{type(backbone).__name__}: cannot find its embedding module")


def find_trunk(model) -> TrunkSpec | None:
    """The frozen trunk of ``model`` from its trainable parameters; None when nothing below the head is frozen
    (a trainable embedding, or adapters on the first layer)."""
    backbone = backbone_of(model)
    owner, attr = layer_list(backbone)
    layers = getattr(owner, attr)
    layer_of = {id(p): i for i, layer in enumerate(layers) for p in layer.parameters()}
    in_backbone = {id(p) for p in backbone.parameters()}
    depth = len(layers)
    for param in model.parameters():
        if not param.requires_grad or id(param) not in in_backbone:
            continue  # frozen, or the score head
        if id(param) not in layer_of:
            return None  # a trainable embedding or final norm: nothing below it is frozen
        depth = min(depth, layer_of[id(param)])
    if depth == len(layers):
        return TrunkSpec(depth, pooled=True)
    return TrunkSpec(depth) if depth > 0 else None


# ---------------------------------------------------------------- running the trunk, and what is above it


class _Stop(Exception):
    """Raised by a hook once the trunk's output is kept: the rest of the forward is not needed."""


class _Given(nn.Module):
    """Stands in for the embedding module: returns the trunk's output, whatever it is asked."""

    def __init__(self, hidden: torch.Tensor):
        super().__init__()
        self.hidden = hidden

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return self.hidden


@contextlib.contextmanager
def _swapped(owner: nn.Module, attr: str, replacement: nn.Module):
    original = getattr(owner, attr)
    setattr(owner, attr, replacement)
    try:
        yield
    finally:
        setattr(owner, attr, original)


def forward_above_trunk(model, trunk: TrunkSpec, trunk_hidden: torch.Tensor, input_ids: torch.Tensor,
                        attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
    """(batch, heads) scores from the trunk's output: ``trunk_hidden`` is (batch, width, dim) entering layer
    ``trunk.depth``, or (batch, dim) features of the score head (``trunk.pooled``)."""
    if trunk.pooled:
        return head_of(model)(trunk_hidden)  # (batch, heads); an encoder's dropout before its head is skipped
    backbone = backbone_of(model)
    owner, attr = layer_list(backbone)
    above = nn.ModuleList(list(getattr(owner, attr))[trunk.depth:])
    # The backbone's own forward then builds the mask, positions, final norm and pooling exactly as it
    # would after the trunk; only the embedding and the layers below are skipped.
    with _swapped(owner, attr, above), _swapped(backbone, embedding_attribute(backbone), _Given(trunk_hidden)):
        return model(input_ids, attention_mask, token_type_ids)


@torch.no_grad()
def trunk_output(model, trunk: TrunkSpec, batch: dict) -> torch.Tensor:
    """What the cache keeps for one batch: (batch, width, dim) hidden states entering layer ``trunk.depth``,
    or (batch, dim) score-head features. The caller sets eval mode and precision."""
    kept: list[torch.Tensor] = []

    def keep(_module, args, kwargs):
        kept.append(args[0] if args else kwargs["hidden_states"])
        raise _Stop

    if trunk.pooled:
        module = head_of(model)
    else:
        owner, attr = layer_list(backbone_of(model))
        module = getattr(owner, attr)[trunk.depth]
    handle = module.register_forward_pre_hook(keep, with_kwargs=True)
    try:
        model(**batch)
    except _Stop:
        pass
    finally:
        handle.remove()
    if not kept:
        raise RuntimeError(f"{type(module).__name__} was never called: the trunk's output cannot be kept")
    return kept[0]


# ---------------------------------------------------------------- keys and files


def backbone_key(model, trunk: TrunkSpec) -> str:
    """Hash of the model's config and every frozen backbone weight (names, dtypes, shapes, bytes) and of the trunk.

    The score head is left out: its initialisation depends on the run's seed (peft even keeps a frozen copy of
    it), and the trunk's output never sees it, so runs that differ only in seed share one cache."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(model.hf_model.config.to_json_string(use_diff=False).encode())
    digest.update(trunk.name.encode())
    for name, param in backbone_of(model).named_parameters():
        if param.requires_grad:
            continue  # trainable weights change during training; they are above the trunk
        # a quantized weight's values are its packed data and its scales (rlhf.models.quantization.quant_stats)
        for tensor in (param, *quant_stats(param)):
            tensor = tensor.detach().cpu().contiguous()
            digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
            digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def sequences_key(sequences: Sequence[Encoded]) -> str:
    """Hash of every token id and token type of ``sequences``, in order."""
    digest = hashlib.blake2b(digest_size=16)
    for seq in sequences:
        digest.update(np.asarray(seq.input_ids, dtype=np.int64).tobytes())
        digest.update(b"|" + (np.asarray(seq.token_type_ids, dtype=np.int64).tobytes()
                             if seq.token_type_ids is not None else b"-") + b";")
    return digest.hexdigest()


STORAGE = {"float32": (np.float32, torch.float32), "bfloat16": (np.uint16, torch.bfloat16)}  # numpy has no bf16


class BadCacheFile(ValueError):
    """A cache file that is not the one asked for, or not whole."""


@dataclass
class Header:
    backbone: str
    sequences: str
    trunk: str
    dtype: str
    dim: int
    lengths: list[int]  # rows per sequence: its length, or 1 (pooled)

    @property
    def rows(self) -> int:
        return sum(self.lengths)

    def encode(self) -> bytes:
        body = json.dumps({"version": VERSION, **self.__dict__}).encode()
        head = MAGIC + struct.pack("<Q", len(body)) + body
        return head + b"\0" * (-len(head) % ALIGN)

    @property
    def data_offset(self) -> int:
        return len(self.encode())

    @property
    def file_size(self) -> int:
        return self.data_offset + self.rows * self.dim * np.dtype(STORAGE[self.dtype][0]).itemsize


def read_header(path: Path) -> Header:
    with open(path, "rb") as f:
        if f.read(len(MAGIC)) != MAGIC:
            raise BadCacheFile("not a trunk cache file (bad magic)")
        size = f.read(8)
        if len(size) < 8:
            raise BadCacheFile("header cut short")
        body = f.read(struct.unpack("<Q", size)[0])
    try:
        fields = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BadCacheFile("header cut short or corrupted") from None
    if fields.pop("version", None) != VERSION:
        raise BadCacheFile("written by another version")
    try:
        return Header(**fields)
    except TypeError:
        raise BadCacheFile("header has other fields") from None


def check_file(path: Path, expected: Header) -> None:
    """Raise :class:`BadCacheFile` unless ``path`` holds exactly what ``expected`` describes, whole."""
    found = read_header(path)
    for field_name in ("backbone", "sequences", "trunk", "dtype", "dim", "lengths"):
        if getattr(found, field_name) != getattr(expected, field_name):
            raise BadCacheFile(f"made for another {field_name}")
    size = path.stat().st_size
    if size != expected.file_size:
        raise BadCacheFile(f"{size} bytes, expected {expected.file_size} (truncated or partly written)")


# ---------------------------------------------------------------- the two kinds of inputs


class PlainInputs:
    """Model inputs straight from token ids: every forward runs the whole backbone."""

    trunk: TrunkSpec | None = None

    def batches(self, sequences: Sequence[Encoded], pad_token_id: int) -> Batches:
        return lambda rows: collate([sequences[i] for i in rows], pad_token_id)


class TrunkCache:
    """Model inputs that carry the frozen trunk's output, computed once per set of sequences and kept on disk."""

    def __init__(self, model, trunk: TrunkSpec, cache_dir: str | Path, bf16: bool, batch_size: int = 32,
                 log: Callable[[str], None] | None = None):
        self.model, self.trunk, self.bf16, self.batch_size = model, trunk, bf16, batch_size
        self.dtype = "bfloat16" if bf16 else "float32"
        self.backbone = backbone_key(model, trunk)
        self.folder = Path(cache_dir).expanduser() / f"{self.backbone}-{trunk.name}-{self.dtype}"
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.computed = 0  # sets of sequences whose trunk output this object computed (tests, logs)

    def path_for(self, key: str) -> Path:
        return self.folder / f"{key}.trunk"

    def batches(self, sequences: Sequence[Encoded], pad_token_id: int) -> Batches:
        table, offsets = self._table(sequences, pad_token_id)
        device = next(self.model.parameters()).device
        dtype = next(self.model.parameters()).dtype  # the trunk's output enters the top layers as the model's dtype

        def batch_of(rows: Sequence[int]) -> dict:
            batch = collate([sequences[i] for i in rows], pad_token_id)
            if self.trunk.pooled:
                hidden = torch.from_numpy(np.ascontiguousarray(table[[offsets[i] for i in rows]]))  # (batch, dim)
            else:
                width = batch["input_ids"].shape[1]
                padded = np.zeros((len(rows), width, table.shape[1]), dtype=table.dtype)  # (batch, width, dim)
                for k, i in enumerate(rows):
                    padded[k, :offsets[i + 1] - offsets[i]] = table[offsets[i]:offsets[i + 1]]
                hidden = torch.from_numpy(padded)
            hidden = hidden.view(STORAGE[self.dtype][1]) if self.dtype == "bfloat16" else hidden
            return batch | {"trunk_hidden": hidden.to(device=device, dtype=dtype)}

        return batch_of

    def _table(self, sequences: Sequence[Encoded], pad_token_id: int) -> tuple[np.memmap, list[int]]:
        """The (rows, dim) memory-mapped trunk output of ``sequences``, from disk or computed now."""
        lengths = [1 if self.trunk.pooled else len(s.input_ids) for s in sequences]
        dim = self.model.hf_model.config.hidden_size
        header = Header(self.backbone, sequences_key(sequences), self.trunk.name, self.dtype, dim, lengths)
        path = self.path_for(header.sequences)
        if path.exists():
            try:
                check_file(path, header)
            except (BadCacheFile, OSError) as err:
                self.log(f"[reward] trunk cache: {path} is unusable ({err}); recomputing it")
                path.unlink(missing_ok=True)
        if not path.exists():
            self._write(path, header, sequences, pad_token_id)
        table = np.memmap(path, dtype=STORAGE[self.dtype][0], mode="r", offset=header.data_offset,
                          shape=(header.rows, dim))
        offsets = np.concatenate([[0], np.cumsum(lengths)]).tolist()
        return table, offsets

    def _write(self, path: Path, header: Header, sequences: Sequence[Encoded], pad_token_id: int) -> None:
        """Run the trunk over ``sequences`` (shortest first, so padding stays small) into a temporary file,
        then rename it into place."""
        from rlhf.core.runtime import autocast

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        store_np, store_torch = STORAGE[self.dtype]
        offsets = np.concatenate([[0], np.cumsum(header.lengths)]).tolist()
        device = next(self.model.parameters()).device
        try:
            with open(tmp, "wb") as f:
                f.write(header.encode())
                f.truncate(header.file_size)
            table = np.memmap(tmp, dtype=store_np, mode="r+", offset=header.data_offset, shape=(header.rows, header.dim))
            order = sorted(range(len(sequences)), key=lambda i: len(sequences[i].input_ids))
            was_training = self.model.training
            self.model.eval()  # the trunk is frozen: no dropout in what is kept
            try:
                for start in range(0, len(order), self.batch_size):
                    chunk = order[start:start + self.batch_size]
                    batch = {k: v.to(device) for k, v in collate([sequences[i] for i in chunk], pad_token_id).items()}
                    with autocast(device, self.bf16):
                        out = trunk_output(self.model, self.trunk, batch).to(store_torch).cpu()
                    out = out.view(torch.uint16) if self.dtype == "bfloat16" else out
                    for k, i in enumerate(chunk):
                        rows = out[k:k + 1] if self.trunk.pooled else out[k, :header.lengths[i]]
                        table[offsets[i]:offsets[i + 1]] = rows.numpy()
            finally:
                self.model.train(was_training)
            table.flush()
            del table
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        self.computed += 1


def reproduces_forward(model, trunk: TrunkSpec, sample: Sequence[Encoded], pad_token_id: int) -> bool:
    """Whether the scores from the trunk's output match a full forward on ``sample`` (float32, eval mode).

    A backbone whose forward does more to its embedding output than the layers (Gemma scales it, GPT-2 adds
    positions after the word embedding) would give other scores from the trunk's output."""
    batch = collate(list(sample), pad_token_id)
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            full = model(**batch).float()
            fast = model(**batch, trunk_hidden=trunk_output(model, trunk, batch)).float()
    finally:
        model.train(was_training)
    return bool(torch.allclose(fast, full, rtol=1e-4, atol=1e-4 * max(float(full.abs().max()), 1.0)))


def model_inputs(model, mode: str, cache_dir: str | Path, bf16: bool, sample: Sequence[Encoded], pad_token_id: int,
                 batch_size: int = 32, log: Callable[[str], None] | None = None) -> PlainInputs | TrunkCache:
    """:class:`TrunkCache` when ``mode`` is ``auto`` and ``model`` has a frozen trunk whose output reproduces its
    forward (checked once on ``sample``); else :class:`PlainInputs`. Sets ``model.trunk`` accordingly."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    model.trunk = None
    trunk = find_trunk(model) if mode == "auto" else None
    if trunk is None:
        return PlainInputs()
    model.trunk = trunk
    if not reproduces_forward(model, trunk, sample, pad_token_id):
        model.trunk = None
        log(f"[reward] warning: {type(model.hf_model).__name__} does not reproduce its forward from its trunk's "
            "output; train.trunk_cache is off for this model")
        return PlainInputs()
    return TrunkCache(model, trunk, cache_dir, bf16, batch_size, log)
