"""PPO (LoRA on a frozen base, value head, reference = adapters off) on two CPU processes (torchrun, gloo, tiny
Llama, fp32), under DDP and under FSDP2 (each launch as `accelerate launch` with ddp.yaml or fsdp.yaml starts it).

(a) The same global batch: each rank samples its own rollouts, so one and two processes cannot draw the same
    ones. The comparison fixes them instead: one process samples 4 rollouts and saves them; then one process
    takes a PPO step on all 4, and two processes on 2 each (mini-batch = the whole share, micro-batches of
    one rollout, so the global gradient is the same mean). Metrics agree to rtol 1e-4, weights as
    ``assert_adam_weights_close`` says (99% to 1e-6).
(b) Then the two processes take real steps (sampling inside ``gathered``): the gathered weights are identical;
    a held-out evaluation with unequal shares (rank 0 generates twice, rank 1 once) does not hang.
(c) The stage script, killed after a (FSDP2: sharded) checkpoint (2 of 4 steps) and resumed in a fresh process
    group, ends as the uninterrupted run; its final/ adapter loads in one process.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from distributed_helpers import ROOT, STRATEGY_ENV, assert_adam_weights_close, grouped, killed_after, worker_env

COMPARED = ["loss/policy", "loss/value", "objective/kl", "objective/scores", "policy/approxkl", "train/grad_norm",
            "reward/composite"]

# argv: work folder. One process: samples the global batch and saves it; two: each takes its half.
DRIVER = textwrap.dedent('''
    import sys, torch
    from torch.distributed.tensor import DTensor
    from reward_models.types import RewardScores
    from rlhf.core import sharding
    from rlhf.core.config import load_config
    from rlhf.rl.config import PPOStageConfig
    from rlhf.rl.policy import build_actor_critic, load_policy_tokenizer
    from rlhf.rl.prompts import prepare_prompts
    from rlhf.rl.trainer import PPOTrainer, seed_everything
    from rlhf.core.runtime import make_accelerator

    class VowelScorer:
        def score(self, prompts, responses):
            c = torch.tensor([sum(ch in "aeiou" for ch in r) / max(len(r), 1) for r in responses])
            return RewardScores(c, {"helpful": c})

    out = sys.argv[1]
    acc = make_accelerator()
    world, rank = acc.num_processes, acc.process_index
    share = 4 // world
    cfg, _ = load_config(PPOStageConfig, ["--config", "pipelines/configs/ppo_tiny.yaml", "--update.batch_size", str(share),
                                          "--update.mini_batch_size", str(share), "--update.micro_batch_size", "1",
                                          "--model.reuse_trunk", "false", "--model.pack_sequences", "false"])
    seed_everything(cfg.run.seed + rank)  # another init on each rank: sharding must start all from rank 0's
    tokenizer = load_policy_tokenizer(cfg.model)
    model = build_actor_critic(cfg.model, cfg.lora, torch.float32)
    trainer = PPOTrainer(cfg, model, tokenizer, VowelScorer(), prepare_prompts(cfg.data, tokenizer, 0), accelerator=acc)
    params = dict(trainer.unwrapped.named_parameters())
    dtensors = sorted(n for n, p in params.items() if isinstance(p, DTensor))
    initial = sharding.full_state_dict(trainer.unwrapped, trainable_only=True)
    if world == 1:
        exp = trainer.maker.make(trainer.stream.batch(0))
        torch.save(exp, f"{out}/experience.pt")
    else:
        exp = torch.load(f"{out}/experience.pt", weights_only=False).rows(torch.arange(rank * share, (rank + 1) * share))
    make = trainer.maker.make
    trainer.maker.make = lambda prompts: exp  # the same rollouts: one process all 4, two processes 2 each
    first = trainer.step(exp.prompts)
    trainer.maker.make = make
    after_first = sharding.full_state_dict(trainer.unwrapped, trainable_only=True)
    prompts = [trainer.stream.batch(s) for s in (1, 2)]
    later = trainer.train(steps=3) if world > 1 else []
    # Held-out evaluation over 5 prompts in batches of 2: rank 0 generates twice, rank 1 once (each decodes alone
    # on gathered weights; transformers' cross-process sync of generate() would wait forever here).
    evaluation = trainer.evaluate([p for s in (5, 6, 7) for p in trainer.stream.batch(s)][:5]) if world > 1 else {}
    torch.save({"first": first, "later": later, "initial": initial, "after_first": after_first, "prompts": prompts,
                "final": sharding.full_state_dict(trainer.unwrapped, trainable_only=True), "dtensors": dtensors,
                "params": sorted(params), "world": world,
                "evaluation": evaluation}, f"{out}/world{world}-rank{rank}.pt")
''')


# Both strategies' step tests in one group: they compare with the same one-process run (made once per worker).
STEP_GROUP = grouped("ppo", [(s,) for s in sorted(STRATEGY_ENV)], key=lambda run: "step")


def launch(out: Path, *args: str, strategy: str, processes: int = 2, script: str | None = None) -> None:
    env = {**worker_env(), **STRATEGY_ENV[strategy]}
    command = [sys.executable]
    if processes > 1:
        command += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    result = subprocess.run([*command, script or str(out / "driver.py"), *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    """The one-process run (it samples the 4 rollouts and steps on them), made once: DDP and FSDP2 both compare
    with it (one process shards nothing under either)."""
    out = tmp_path_factory.mktemp("ppo-one-process")
    (out / "driver.py").write_text(DRIVER)
    launch(out, str(out), strategy="ddp", processes=1)
    return out


@pytest.mark.distributed
@pytest.mark.parametrize("strategy", STEP_GROUP)
def test_two_processes_ppo_step_equals_one_process_on_the_same_rollouts_and_ranks_agree(tmp_path, strategy,
                                                                                        one_process):
    (tmp_path / "driver.py").write_text(DRIVER)
    for name in ("experience.pt", "world1-rank0.pt"):
        shutil.copy(one_process / name, tmp_path / name)
    launch(tmp_path, str(tmp_path), strategy=strategy)
    one = torch.load(tmp_path / "world1-rank0.pt", weights_only=False)
    ranks = [torch.load(tmp_path / f"world2-rank{r}.pt", weights_only=False) for r in range(2)]
    assert not one["dtensors"]
    for rank in ranks:
        # FSDP2: every parameter a shard, frozen or not; DDP: none
        assert rank["world"] == 2 and rank["dtensors"] == (rank["params"] if strategy == "fsdp2" else [])
        for name, tensor in one["initial"].items():  # started from the same weights (rank 0's)
            assert torch.equal(rank["initial"][name], tensor), name
    # (a) one PPO step (2 epochs, whole-batch mini-batch) on the same 4 rollouts
    for key in COMPARED:
        for rank in ranks:
            assert rank["first"][key] == pytest.approx(one["first"][key], rel=1e-4, abs=1e-7), key
    changed = [n for n, t in one["after_first"].items() if not torch.equal(t, one["initial"][n])]
    assert changed and any("lora_" in n for n in changed) and any("value_head" in n for n in changed)
    assert_adam_weights_close(ranks[0]["after_first"], one["after_first"], lr=3e-3)  # ppo_tiny's learning rate
    # (b) two more steps, each rank sampling its own prompts on gathered weights: the same model on both ranks
    assert set(ranks[0]["prompts"][0]).isdisjoint(ranks[1]["prompts"][0])
    assert len(ranks[0]["later"]) == 2
    for name, tensor in ranks[0]["final"].items():
        assert torch.equal(ranks[1]["final"][name], tensor), name
    assert ranks[0]["later"][-1]["reward/composite"] == pytest.approx(ranks[1]["later"][-1]["reward/composite"])
    assert any(not torch.equal(t, ranks[0]["after_first"][n]) for n, t in ranks[0]["final"].items())
    assert ranks[0]["evaluation"] == ranks[1]["evaluation"] and "eval/reward/composite" in ranks[0]["evaluation"]


def stage(out: Path, name: str, steps: int, *extra: str, strategy: str) -> None:
    launch(out, "--config", "pipelines/configs/ppo_tiny.yaml", "--run.output_dir", str(out), "--run.run_name", name,
           "--train.max_steps", str(steps), "--train.save_steps", "2", "--train.sample_every", "0",
           "--data.eval_prompts", "0", "--update.batch_size", "2", "--update.mini_batch_size", "2",
           "--update.micro_batch_size", "1", *extra, strategy=strategy, script="pipelines/ppo.py")


@pytest.mark.distributed
@pytest.mark.parametrize("strategy", grouped("ppo", [(s,) for s in sorted(STRATEGY_ENV)]))
def test_two_processes_ppo_killed_after_a_checkpoint_resumes_as_the_uninterrupted_run(tmp_path, strategy):
    from safetensors.torch import load_file

    from rlhf.rl.curves import last_per_step
    from rlhf.core.tracking import read_metrics

    stage(tmp_path, "full", 4, strategy=strategy)
    killed_after(tmp_path / "full", tmp_path / "cut", step=2)
    checkpoint = tmp_path / "cut/checkpoints/step-000002"
    assert {p.name for p in checkpoint.glob("rng-rank*.pt")} == {"rng-rank0.pt", "rng-rank1.pt"}
    if strategy == "fsdp2":  # each rank wrote its optimizer shard; no rank-0 pickle of DTensors
        assert len(list((checkpoint / "sharded").glob("*.distcp"))) == 2 and not (checkpoint / "optimizer.pt").exists()
    else:
        assert (checkpoint / "optimizer.pt").is_file() and not (checkpoint / "sharded").exists()
    stage(tmp_path, "cut", 4, "--resume", strategy=strategy)
    full = last_per_step(read_metrics(tmp_path / "full/metrics.jsonl"))
    resumed = last_per_step(read_metrics(tmp_path / "cut/metrics.jsonl"))
    assert [r["step"] for r in resumed] == [r["step"] for r in full] == [1, 2, 3, 4]
    for a, b in zip(full, resumed):
        for key in COMPARED:
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), (a["step"], key)
    weights = [load_file(str(tmp_path / run / "checkpoints/step-000004/trainable.safetensors")) for run in ("full", "cut")]
    for name, tensor in weights[0].items():
        torch.testing.assert_close(weights[1][name], tensor, rtol=1e-5, atol=1e-7)
    # final/: the gathered adapter and value head, and the merged policy, load in this one process
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from rlhf.models.policies import adapter_base
    from rlhf.models.zoo import load_causal_lm

    final = tmp_path / "full/final"
    adapted = PeftModel.from_pretrained(load_causal_lm(adapter_base(final / "adapter")), str(final / "adapter"))
    head = load_file(str(final / "value_head.safetensors"))
    torch.testing.assert_close(head["weight"], weights[0]["value_head.weight"])
    lora = {n: p for n, p in adapted.named_parameters() if "lora_" in n}
    assert lora and any(p.abs().sum() > 0 for n, p in lora.items() if "lora_B" in n)  # trained, not the zero init
    merged = AutoModelForCausalLM.from_pretrained(str(final))
    ids = torch.tensor([[5, 17, 42, 7]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, adapted(ids).logits, rtol=1e-4, atol=1e-4)
