"""Two-process SFT on CPU (torchrun, gloo): the run completes and both ranks end with identical weights."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf.tracking import read_metrics

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.distributed
def test_two_process_run_keeps_ranks_in_sync(tmp_path, tiny_llama_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "pipelines" / "sft.py"), "--config", str(ROOT / "pipelines" / "configs" / "sft_tiny.yaml"),
           "--run.output_dir", str(tmp_path), "--forgetting.enabled", "false", "--train.max_steps", "4",
           "--train.save_steps", "4", "--data.samples", "1"]
    # No run name: the ranks must agree on rank 0's timestamped folder (they start at different times).
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    [run_dir] = list(tmp_path.iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["dist/world_size"] == 2
    assert summary["dist/ranks_in_sync"] is True  # sha256 of every trainable weight, equal on both ranks
    assert summary["train/steps"] == 4
    assert (run_dir / "final" / "adapter_model.safetensors").is_file()
    steps = [r["step"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss/train" in r]
    assert steps == [1, 2, 3, 4]  # one logger: rank 1 writes nothing
