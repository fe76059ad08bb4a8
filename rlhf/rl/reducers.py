"""Statistics every process of an RL run must agree on, reduced over the processes (one process: as is).

The trainer asks three questions of the whole batch rather than of its own share: did any process see X
(a non-finite score or loss, an early stop), what are the mean and variance of masked entries (advantage
whitening), and what are the metrics averaged over processes (what is logged and what the KL controller sees).
Each is a collective: every process must call it at the same point, or the run hangs.
"""
from __future__ import annotations

import torch


class ProcessReducer:
    """Cross-process reductions over ``accelerator`` (``reduce`` sums or averages a tensor over processes)."""

    def __init__(self, accelerator):
        self.accelerator = accelerator

    def any(self, flag: torch.Tensor | bool) -> bool:
        """True on every process when ``flag`` is true on at least one."""
        flag = torch.as_tensor(flag, dtype=torch.float32, device=self.accelerator.device).reshape(1)
        return bool(self.accelerator.reduce(flag, reduction="sum").item() > 0)

    def mean_var(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and (unbiased) variance of the masked entries of ``x`` over every process."""
        sums = torch.stack([(x * mask).sum(), (x * x * mask).sum(), mask.sum()]).double()
        total, total_sq, count = self.accelerator.reduce(sums, reduction="sum").tolist()
        mean = total / max(count, 1)
        var = (total_sq / max(count, 1) - mean**2) * count / max(count - 1, 1)
        return torch.tensor(mean, device=x.device), torch.tensor(max(var, 0.0), device=x.device)

    def mean(self, metrics: dict[str, float]) -> dict[str, float]:
        """Each metric averaged over the processes (every process passes the same keys)."""
        keys = sorted(metrics)
        local = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=self.accelerator.device)
        reduced = self.accelerator.reduce(local, reduction="mean").tolist()
        return dict(zip(keys, reduced))

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """Every process's rows of ``x``, concatenated in rank order."""
        return self.accelerator.gather(x)
