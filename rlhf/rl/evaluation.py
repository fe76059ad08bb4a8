"""What an RL run reports about its policy besides the update: held-out scores and KL, and sample tables.

:class:`HeldOutEvaluator` samples one fresh response per held-out prompt (no update) with a fixed seed, so
evaluations at different steps see comparable draws; each process scores its share and the means are
averaged over processes. :func:`samples_table` is the rows of the ``samples`` table the logger shows.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import torch

from rlhf.core import sharding
from rlhf.core.lifecycle import seed_everything
from rlhf.evaluation.metrics import refusal_rate
from rlhf.rl.experience import Experience, ExperienceMaker
from rlhf.rl.maths import kl_per_token
from rlhf.rl.reducers import ProcessReducer


class HeldOutEvaluator:
    """``eval/...`` metrics of the current policy on held-out prompts (``evaluate``), logged by ``log``."""

    def __init__(self, maker: ExperienceMaker, reducer: ProcessReducer, kl_estimator: str, batch_size: int,
                 seed: int, logger=None, name: str = "rl"):
        self.maker, self.reducer, self.logger, self.name = maker, reducer, logger, name
        self.kl_estimator, self.batch_size, self.seed = kl_estimator, batch_size, seed

    @torch.no_grad()
    def evaluate(self, prompts: Sequence[str]) -> dict[str, float]:
        """Mean scores and KL of one fresh sample per prompt (split across processes)."""
        acc = self.reducer.accelerator
        mine = list(prompts)[acc.process_index::acc.num_processes]
        seed_everything(self.seed)
        totals: dict[str, float] = defaultdict(float)
        # One gathering around the loop: the ranks' shares may differ by a batch (gathering is a collective).
        with sharding.gathered(self.maker.model):
            for first in range(0, len(mine), self.batch_size):
                exp = self.maker.make(mine[first:first + self.batch_size])
                kl = kl_per_token(exp.logprobs, exp.ref_logprobs, self.kl_estimator) * exp.response_mask
                parts = {**exp.scores.as_metrics(), "objective/kl": kl.sum(1).mean().item(), **response_metrics(exp)}
                for key, value in parts.items():
                    totals[key] += value * len(exp)
        local = {f"eval/{key}": value / max(len(mine), 1) for key, value in totals.items()}
        return self.reducer.mean(local)

    def log(self, prompts: Sequence[str], step: int) -> dict[str, float]:
        """:meth:`evaluate`, logged at ``step`` and printed by the main process."""
        metrics = self.evaluate(prompts)
        if self.logger is not None:
            self.logger.log(metrics, step=step)
        if self.reducer.accelerator.is_main_process:
            print(f"[{self.name}] held-out eval at step {step}: "
                  + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()), flush=True)
        return metrics


def response_metrics(exp: Experience) -> dict[str, float]:
    """Mean length, EOS rate and refusal rate of a batch's responses: signs of a reward that pays for short,
    cut or refusing answers (the training step and the held-out evaluation log the same keys)."""
    return {"response/length": exp.response_mask.sum(1).mean().item(),
            "response/eos_rate": exp.has_eos.float().mean().item(),
            "response/refusal_rate": refusal_rate(exp.responses)}


def samples_table(exp: Experience, rows: int) -> tuple[list[str], list[list]]:
    """Columns and the first ``rows`` rows of a batch: prompt, response, composite, each head (and toxicity)."""
    heads = list(exp.scores.heads)
    toxicity = exp.scores.toxicity
    columns = ["prompt", "response", "composite", *heads] + (["toxicity"] if toxicity is not None else [])
    table = []
    for i in range(min(rows, len(exp))):
        row = [exp.prompts[i], exp.responses[i], exp.scores.composite[i].item()]
        row += [exp.scores.heads[h][i].item() for h in heads]
        if toxicity is not None:
            row.append(toxicity[i].item())
        table.append(row)
    return columns, table
