"""Packed forwards: the real tokens of a padded batch laid end to end as one sequence.

A left-padded batch of B rows spends FLOPs on every pad; trimming helps only with pads common to every
row. Packing removes them all: the real tokens of every row form one (1, N) sequence, position ids restart
at 0 for each row, and a block-diagonal causal mask keeps each row's attention inside its own tokens. The
matmuls then see N rows at once (better for a CPU than B small forwards) and nothing else.

Used with attention implementations that take a 4D mask (``sdpa``, ``eager``); :func:`packing_supported`
says so. Results equal the padded forward up to float rounding (tests compare them).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PackedRows:
    """Where a (B, T) batch's real tokens go in the packed (1, N) sequence."""

    index: torch.Tensor  # (N,) flat indices (row-major into B*T) of the real tokens
    position_ids: torch.Tensor  # (1, N) each token's position within its own row (pads not counted)
    allowed: torch.Tensor  # (N, N) bool: query i may attend key j (same row, j not after i)
    shape: tuple[int, int]  # (B, T)

    @classmethod
    def from_mask(cls, attention_mask: torch.Tensor) -> "PackedRows":
        batch, width = attention_mask.shape
        index = attention_mask.reshape(-1).bool().nonzero().squeeze(1)  # (N,)
        rows = index // width
        positions = (attention_mask.long().cumsum(1) - 1).reshape(-1)[index]
        # Row-major flat indices grow with the column inside a row, so "not after" is index order.
        allowed = (rows[:, None] == rows[None, :]) & (index[:, None] >= index[None, :])
        return cls(index, positions.unsqueeze(0), allowed, (batch, width))

    def attention_mask(self, attn_implementation: str, dtype: torch.dtype) -> torch.Tensor:
        """(1, 1, N, N) mask in the form the attention implementation takes: bool for sdpa, additive else."""
        if attn_implementation == "sdpa":
            return self.allowed[None, None]
        return torch.zeros(self.allowed.shape, dtype=dtype, device=self.allowed.device).masked_fill(
            ~self.allowed, torch.finfo(dtype).min)[None, None]

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, ...) -> (1, N, ...): the real positions only."""
        return x.reshape(self.shape[0] * self.shape[1], *x.shape[2:])[self.index].unsqueeze(0)

    def unpack(self, y: torch.Tensor) -> torch.Tensor:
        """(1, N, ...) -> (B, T, ...), zeros on padding; differentiable in ``y``."""
        flat = y.new_zeros(self.shape[0] * self.shape[1], *y.shape[2:]).index_copy(0, self.index, y[0])
        return flat.reshape(*self.shape, *y.shape[2:])


def packing_supported(config) -> bool:
    """4D custom masks reach the attention kernel as given only for these implementations."""
    return getattr(config, "_attn_implementation", None) in ("sdpa", "eager")
