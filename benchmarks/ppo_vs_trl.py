"""Our PPO against TRL 1.12's PPOTrainer on one workload: seconds per step, peak RSS, tokens/s, ratios.

    flock /tmp/rlhf-cpu.lock python benchmarks/ppo_vs_trl.py            # both sides, A B A B, ~10 min

Steps (each side runs in its own fresh subprocess, so peak RSS is that side's alone):
  1. the peer's virtualenv (benchmarks/.venv-trl112: torch==2.13.0 first, then trl==1.12.0 + peft), reused
  2. the workload: SmolLM2-135M-Instruct policy, one SmolLM2-135M sequence classifier as the reward model
     (a seeded random score head, saved once), 64 HH-harmless train prompts rendered with the chat template
  3. this machine's bf16 matmul peak (2048 x 2048, median of several timed loops)
  4. runs alternating ours, TRL, ours, TRL ... (--runs per side), load average before and after each
  5. medians over runs, ratios ours/TRL, training-phase model FLOP/s; JSON to benchmarks/results/
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

from common import GIB, Workload, load_average, read_side_result, run_child  # noqa: E402

TRL_VENV = BENCH_DIR / ".venv-trl112"
# torch first and pinned (an unpinned torch pulls a multi-GB CUDA build); the rest pinned to the versions our
# own virtualenv runs, so the comparison differs in the trainer code, not in the libraries under it.
TRL_TORCH = "torch==2.13.0"
TRL_PACKAGES = ["trl==1.12.0", "peft==0.21.2", "transformers==5.24.0", "accelerate==1.15.0", "datasets==5.2.0"]
TARGETS = {"sec_per_step": 0.4, "peak_rss": 0.4}  # ours / TRL must be at most this


# ---------------------------------------------------------------- 1. the peer's virtualenv


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def trl_venv_ready(venv: Path) -> bool:
    if not venv_python(venv).exists():
        return False
    probe = subprocess.run([str(venv_python(venv)), "-c",
                            "import torch, trl, peft; from trl.experimental.ppo import PPOTrainer; print(trl.__version__)"],
                           capture_output=True, text=True)
    return probe.returncode == 0 and probe.stdout.strip() == "1.12.0"


def ensure_trl_venv(venv: Path = TRL_VENV, log=print) -> Path:
    """Create the peer's virtualenv once; later runs reuse it."""
    if trl_venv_ready(venv):
        return venv_python(venv)
    log(f"creating {venv} (torch first, then trl 1.12.0) ...")
    base_python = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base_python, "-m", "venv", str(venv)], check=True)
    pip = [str(venv_python(venv)), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run(pip + [TRL_TORCH], check=True)
    subprocess.run(pip + TRL_PACKAGES, check=True)
    if not trl_venv_ready(venv):
        raise RuntimeError(f"{venv}: trl 1.12.0 does not import after install; see pip's output above")
    return venv_python(venv)


if __name__ == "__main__" and sys.argv[1:] == ["--setup-only"]:
    print(ensure_trl_venv())
