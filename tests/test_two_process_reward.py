"""The reward stage on two CPU processes (torchrun, gloo, tiny BERT, fp32), under DDP and under FSDP2 (each
launch as `accelerate launch` with pipelines/accelerate/ddp.yaml or fsdp.yaml would start it):

(a) the losses, gradient norms and final weights equal one process on the same global batch: one process
    accumulates four micro-batches per step, two processes two each (accumulated without reduce-scatter, then
    reduced once; rtol 1e-4: only the order of sums differs; the weights as ``assert_adam_weights_close`` says);
(b) the gathered weights are identical on both ranks and (FSDP2) were DTensor shards while training;
(c) a run killed after a (FSDP2: sharded) checkpoint and resumed in a fresh process group ends as the uninterrupted one.
Dropout is switched off so that one and two processes compute the same function.
"""
from __future__ import annotations

import functools
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from distributed_helpers import ROOT, STRATEGY_ENV, assert_adam_weights_close, grouped, killed_after, worker_env

TESTS = Path(__file__).resolve().parent
STEPS = 4

# argv: work folder, run name, grad_accum, "resume" / "full".
DRIVER = textwrap.dedent('''
    import os, pathlib, sys, torch
    sys.path.insert(0, {tests!r})
    from test_two_process_reward import run
    out, name, accum, mode = pathlib.Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
    captured = run(out, name, accum, resume=mode == "resume")
    import torch.distributed as dist
    torch.save(captured, out / f"{{name}}-rank{{dist.get_rank()}}.pt")
''').format(tests=str(TESTS))


def run(out: Path, name: str, accum: int, resume: bool = False) -> dict:
    """Train the tiny reward model (no dropout, fp32) and return what this process saw: which parameters were
    sharded, and the whole weights the final model is made of."""
    import reward_models.train as train
    from rlhf.core import sharding
    from test_reward_train import tiny_config, toy_preferences

    captured: dict = {}
    new_model, stats, groups = train.new_reward_model, train.normalisation_stats, train.optimizer_groups

    def no_dropout(*args, **kwargs):
        model, encoder, scoring = new_model(*args, **kwargs)
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        return model, encoder, scoring

    def spy_groups(model, cfg):  # called right after sharding, before the optimizer exists
        from torch.distributed.tensor import DTensor

        captured["dtensors"] = sorted(n for n, p in model.named_parameters() if isinstance(p, DTensor))
        captured["params"] = sorted(n for n, _ in model.named_parameters())
        return groups(model, cfg)

    def spy_stats(model, *args, **kwargs):  # every rank, with the final weights (gathered: plain tensors here)
        captured["weights"] = sharding.full_state_dict(model)
        return stats(model, *args, **kwargs)

    train.new_reward_model, train.normalisation_stats, train.optimizer_groups = no_dropout, spy_stats, spy_groups
    try:
        data = out / "toy.jsonl"
        if not data.is_file():
            toy_preferences(data, per_head=20)
        cfg = tiny_config(out, data, max_steps=STEPS, batch_size=4, grad_accum=accum, save_steps=2,
                          save_total_limit=2, precision="fp32")  # step 2's checkpoint stays: the resume test's start
        cfg.run.run_name = name
        train.train_reward_model(cfg, resume=resume)
    finally:
        train.new_reward_model, train.normalisation_stats, train.optimizer_groups = new_model, stats, groups
    return captured


def torchrun(out: Path, name: str, mode: str, strategy: str) -> list[dict]:
    driver = out / "driver.py"
    driver.write_text(DRIVER)
    env = {**worker_env(), **STRATEGY_ENV[strategy]}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(driver), str(out), name, "2", mode], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-4000:]
    return [torch.load(out / f"{name}-rank{r}.pt", weights_only=False) for r in range(2)]


def metrics(out: Path, name: str) -> dict[int, dict]:
    from rlhf.core.tracking import read_metrics

    return {m["step"]: m for m in read_metrics(out / "runs" / name / "metrics.jsonl") if "loss/pairwise" in m}


STRATEGIES = grouped("reward", [(strategy,) for strategy in sorted(STRATEGY_ENV)])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """strategy -> one process (four micro-batches per step) and two DDP or FSDP2 processes (two each) on the same
    global batches, made once per strategy: (folder, strategy, the one process's capture, the two ranks' captures)."""
    @functools.cache
    def get(strategy: str) -> tuple:
        out = tmp_path_factory.mktemp(f"{strategy}-reward")
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as each worker (the processes share the cores)
        try:
            single = run(out, "single", accum=4)
        finally:
            torch.set_num_threads(threads)
        return out, strategy, single, torchrun(out, "fsdp", "full", strategy)
    return get


@pytest.mark.distributed
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_two_processes_reward_equals_one_process_on_the_same_global_batch(runs, strategy):
    out, strategy, single, ranks = runs(strategy)
    for rank in ranks:  # FSDP2: every parameter was a shard while training; DDP: none was
        assert rank["params"] and rank["dtensors"] == (rank["params"] if strategy == "fsdp2" else [])
    one, two = metrics(out, "single"), metrics(out, "fsdp")
    assert sorted(two) == list(range(1, STEPS + 1))
    for step in one:
        for key in ("loss/pairwise", "train/grad_norm"):
            assert two[step][key] == pytest.approx(one[step][key], rel=1e-4), (step, key)
    assert {s: m["loss/pairwise"] for s, m in two.items()} != {s: two[1]["loss/pairwise"] for s in two}  # it trains
    assert_adam_weights_close(ranks[0]["weights"], single["weights"], lr=3e-3)  # tiny_config's learning rate
    # (b) the same whole model on both ranks, bit for bit
    assert ranks[0]["weights"].keys() == ranks[1]["weights"].keys()
    for name, tensor in ranks[0]["weights"].items():
        assert torch.equal(ranks[1]["weights"][name], tensor), name
    # The final export is a plain folder that loads in this one process and scores as the unsharded run's.
    from reward_models.scoring import RewardScorer

    prompts, responses = ["Tell me about bread."], ["I am glad to help you with bread."]
    sharded = RewardScorer.from_pretrained(out / "runs" / "fsdp", toxicity=None).score(prompts, responses)
    plain = RewardScorer.from_pretrained(out / "runs" / "single", toxicity=None).score(prompts, responses)
    # rtol 1e-2: the composite divides by the heads' normalisation std, which amplifies the weights' 1e-4 level
    # differences (measured: 2e-3)
    torch.testing.assert_close(sharded.composite, plain.composite, rtol=1e-2, atol=1e-5)
    assert json.loads((out / "runs/fsdp/summary.json").read_text())["train/steps"] == STEPS


@pytest.mark.distributed
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_two_processes_reward_killed_after_a_checkpoint_resumes_as_the_uninterrupted_run(runs, strategy):
    out, strategy, _, uninterrupted = runs(strategy)
    killed_after(out / "runs/fsdp", out / "runs/cut", step=2)
    checkpoint = out / "runs/cut/checkpoints/step-000002"
    if strategy == "fsdp2":
        assert {p.name for p in checkpoint.glob("rng-rank*.pt")} == {"rng-rank0.pt", "rng-rank1.pt"}
        assert len(list((checkpoint / "sharded").glob("*.distcp"))) == 2  # each rank wrote its own shard
    else:  # DDP: the ranks hold the same weights, rank 0 writes them whole
        assert (checkpoint / "model.pt").is_file() and not (checkpoint / "sharded").exists()
    resumed = torchrun(out, "cut", "resume", strategy)
    full, cut = metrics(out, "fsdp"), metrics(out, "cut")
    assert sorted(cut) == list(range(1, STEPS + 1))
    for step in full:
        assert cut[step]["loss/pairwise"] == pytest.approx(full[step]["loss/pairwise"], rel=1e-6), step
    for name, tensor in uninterrupted[0]["weights"].items():
        torch.testing.assert_close(resumed[0]["weights"][name], tensor, rtol=1e-6, atol=1e-7)
