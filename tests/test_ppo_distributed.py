"""Two CPU processes (torchrun, gloo): each generates for its own prompts, gradients are all-reduced,
and both ranks end with identical parameters."""
from __future__ import annotations

import subprocess
import sys

import pytest

from distributed_helpers import ROOT, assert_ranks_agree, load_ranks, worker_env, write_driver


@pytest.mark.distributed
def test_two_cpu_processes_end_with_identical_parameters(tmp_path):
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(write_driver(tmp_path)), str(tmp_path), "3"], cwd=ROOT, env=worker_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_ranks_agree(load_ranks(tmp_path, 2))


@pytest.mark.distributed
def test_stage_script_under_torchrun(tmp_path):
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "pipelines/ppo.py", "--config", "pipelines/configs/ppo_tiny.yaml",
                             "--run.output_dir", str(tmp_path), "--run.run_name", "ddp", "--train.steps", "2",
                             "--train.save_every", "1", "--ppo.batch_size", "4", "--ppo.mini_batch_size", "2",
                             "--ppo.micro_batch_size", "2"], cwd=ROOT, env=worker_env(), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "ddp"
    assert (run / "final" / "adapter" / "adapter_config.json").is_file()
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == ["step-000001", "step-000002"]
    assert {p.name for p in (run / "checkpoints" / "step-000002").glob("rng-rank*.pt")} == {"rng-rank0.pt", "rng-rank1.pt"}
