"""Two CPU processes (torchrun, gloo): each generates for its own prompts, gradients are all-reduced,
and both ranks end with identical parameters."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

DRIVER = textwrap.dedent('''
    import sys, torch
    from rlhf.config import RunConfig, load_config
    from rlhf.ppo.config import PPOStageConfig
    from rlhf.ppo.policy import build_actor_critic, load_policy_tokenizer
    from rlhf.ppo.prompts import prepare_prompts
    from rlhf.ppo.scorers import TokenCountScorer
    from rlhf.ppo.trainer import PPOTrainer, make_accelerator

    out = sys.argv[1]
    cfg, _ = load_config(PPOStageConfig, ["--config", "pipelines/configs/ppo_tiny.yaml", "--ppo.batch_size", "4",
                                          "--ppo.mini_batch_size", "2", "--ppo.micro_batch_size", "1"])
    accelerator = make_accelerator()
    # Different seeds per rank before building: DDP must still start every rank from rank 0's weights.
    torch.manual_seed(accelerator.process_index)
    tokenizer = load_policy_tokenizer(cfg.policy)
    model = build_actor_critic(cfg.policy, cfg.lora, torch.float32)
    class CharScorer:
        def score(self, prompts, responses):
            from reward_models.types import RewardScores
            c = torch.tensor([sum(ch in "aeiou" for ch in r) / max(len(r), 1) for r in responses])
            return RewardScores(c, {"helpful": c})
    trainer = PPOTrainer(cfg, model, tokenizer, CharScorer(), prepare_prompts(cfg.data, tokenizer, 0),
                         accelerator=accelerator)
    initial = trainer.unwrapped.trainable_state_dict()
    prompts = [trainer.stream.batch(s) for s in range(3)]
    history = trainer.train(steps=3)
    torch.save({"params": trainer.unwrapped.trainable_state_dict(), "initial": initial, "prompts": prompts,
                "history": history, "world": accelerator.num_processes},
               f"{out}/rank{accelerator.process_index}.pt")
''')


@pytest.mark.distributed
def test_two_cpu_processes_end_with_identical_parameters(tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(driver), str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert ranks[0]["world"] == 2
    for name, tensor in ranks[0]["params"].items():
        torch.testing.assert_close(ranks[1]["params"][name], tensor, rtol=0, atol=0)
    assert any(not torch.equal(ranks[0]["initial"][n], p) for n, p in ranks[0]["params"].items())
    for step in range(3):  # each process generated for its own share of prompts
        assert not set(ranks[0]["prompts"][step]) & set(ranks[1]["prompts"][step])
    # metrics are reduced across processes: both ranks report the same numbers
    assert ranks[0]["history"][-1]["reward/composite"] == pytest.approx(ranks[1]["history"][-1]["reward/composite"])


@pytest.mark.distributed
def test_stage_script_under_torchrun(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "pipelines/ppo.py", "--config", "pipelines/configs/ppo_tiny.yaml",
                             "--run.output_dir", str(tmp_path), "--run.run_name", "ddp", "--train.steps", "2",
                             "--train.save_every", "1", "--ppo.batch_size", "4", "--ppo.mini_batch_size", "2",
                             "--ppo.micro_batch_size", "2"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "ddp"
    assert (run / "final" / "adapter" / "adapter_config.json").is_file()
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == ["step-000001", "step-000002"]
    assert {p.name for p in (run / "checkpoints" / "step-000002").glob("rng-rank*.pt")} == {"rng-rank0.pt", "rng-rank1.pt"}
