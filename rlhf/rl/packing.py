"""Packed forwards: the real tokens of a padded batch laid end to end as one sequence.

A left-padded batch of B rows spends FLOPs on every pad; trimming helps only with pads common to every
row. Packing removes them all: the real tokens of every row form one (1, N) sequence and position ids
restart at 0 for each row, so every matmul sees N rows at once (better for a CPU than B small forwards)
and nothing else. Attention must stay inside each row: :func:`use_varlen_attention` gives the model an
attention function that, when a forward passes ``cu_seq_lens_q`` (row boundaries in the packed sequence,
as flash-attention's varlen kernels take them), runs PyTorch's SDPA once per row with a plain causal
mask, and otherwise is transformers' own ``sdpa`` (generation steps, padded forwards). No N x N mask is
ever applied, so attention costs what the rows cost alone.

Results equal the padded forward up to float rounding (tests compare them).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

VARLEN_SDPA = "rlhf_varlen_sdpa"


@dataclass
class PackedRows:
    """Where a (B, T) batch's real tokens go in the packed (1, N) sequence."""

    index: torch.Tensor  # (N,) flat indices (row-major into B*T) of the real tokens
    position_ids: torch.Tensor  # (1, N) each token's position within its own row (pads not counted)
    cu_seqlens: torch.Tensor  # (rows + 1,) int32 start of each non-empty row in the packed sequence, then N
    shape: tuple[int, int]  # (B, T)

    @classmethod
    def from_mask(cls, attention_mask: torch.Tensor) -> "PackedRows":
        batch, width = attention_mask.shape
        index = attention_mask.reshape(-1).bool().nonzero().squeeze(1)  # (N,)
        positions = (attention_mask.long().cumsum(1) - 1).reshape(-1)[index]
        lengths = attention_mask.long().sum(1)
        lengths = lengths[lengths > 0]
        cu_seqlens = torch.nn.functional.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
        return cls(index, positions.unsqueeze(0), cu_seqlens, (batch, width))

    def forward_kwargs(self) -> dict:
        """What a decoder forward over the packed sequence needs besides its inputs."""
        return {"position_ids": self.position_ids, "cu_seq_lens_q": self.cu_seqlens, "attention_mask": None}

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, ...) -> (1, N, ...): the real positions only."""
        return x.reshape(self.shape[0] * self.shape[1], *x.shape[2:])[self.index].unsqueeze(0)

    def unpack(self, y: torch.Tensor) -> torch.Tensor:
        """(1, N, ...) -> (B, T, ...), zeros on padding; differentiable in ``y``."""
        flat = y.new_zeros(self.shape[0] * self.shape[1], *y.shape[2:]).index_copy(0, self.index, y[0])
        return flat.reshape(*self.shape, *y.shape[2:])


def varlen_sdpa_attention(module, query, key, value, attention_mask, cu_seq_lens_q=None, **kwargs):
    """transformers' sdpa, or, given row boundaries ``cu_seq_lens_q``, causal SDPA row by row.

    query (1, heads, N, d), key/value (1, kv_heads, N, d) -> (1, N, heads, d), as transformers' sdpa returns."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if cu_seq_lens_q is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    bounds = cu_seq_lens_q.tolist()
    kwargs.pop("is_causal", None)
    rows = [sdpa_attention_forward(module, query[:, :, start:end], key[:, :, start:end], value[:, :, start:end],
                                   None, is_causal=True, **kwargs)[0]
            for start, end in zip(bounds[:-1], bounds[1:])]
    return torch.cat(rows, dim=1), None


def use_varlen_attention(model) -> bool:
    """Give an ``sdpa`` model the varlen attention (same results without ``cu_seq_lens_q``); False for other
    attention implementations, which then run padded."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    config = model.config
    if config._attn_implementation == VARLEN_SDPA:
        return True
    if config._attn_implementation != "sdpa":
        return False
    AttentionInterface.register(VARLEN_SDPA, varlen_sdpa_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(VARLEN_SDPA, sdpa_mask)  # padded calls get sdpa's masks
    config._attn_implementation = VARLEN_SDPA
    return True
