"""A PPO run killed (SIGKILL) after a checkpoint and resumed reproduces the uninterrupted run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from rlhf.rl.curves import last_per_step
from rlhf.core.tracking import read_metrics

ROOT = Path(__file__).resolve().parents[1]
COMPARED = ["reward/composite", "objective/kl", "objective/kl_coef", "loss/policy", "loss/value", "policy/approxkl",
            "response/length", "train/lr"]


def stage_command(out: Path, name: str, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "pipelines" / "ppo.py"), "--config", str(ROOT / "pipelines/configs/ppo_tiny.yaml"),
            "--run.output_dir", str(out), "--run.run_name", name, "--run.wandb_mode", "disabled",
            "--train.max_steps", "6", "--train.save_steps", "2", "--train.sample_every", "0",
            "--update.batch_size", "8", "--update.mini_batch_size", "4", "--update.micro_batch_size", "4",
            "--kl.adaptive", "true", "--kl.target", "1.0", "--kl.horizon", "50", *extra]


def test_killed_run_resumes_to_the_same_metrics(tmp_path):
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    subprocess.run(stage_command(tmp_path, "full"), check=True, env=env, capture_output=True, cwd=ROOT)

    proc = subprocess.Popen(stage_command(tmp_path, "killed"), env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = tmp_path / "killed" / "checkpoints" / "latest"
    deadline = time.time() + 120
    while not latest.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if (tmp_path / "killed" / "final").exists():
        pytest.skip("the run finished before it could be killed")
    killed_at = latest.read_text()
    assert killed_at.startswith("step-")

    subprocess.run(stage_command(tmp_path, "killed", "--resume"), check=True, env=env, capture_output=True, cwd=ROOT)
    full = last_per_step(read_metrics(tmp_path / "full" / "metrics.jsonl"))
    resumed = last_per_step(read_metrics(tmp_path / "killed" / "metrics.jsonl"))
    assert [r["step"] for r in resumed] == [r["step"] for r in full] == list(range(1, 7))
    for a, b in zip(full, resumed):
        for key in COMPARED:
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), (a["step"], key, killed_at)
    weights = [load_file(str(tmp_path / run / "checkpoints" / "step-000006" / "trainable.safetensors"))
               for run in ("full", "killed")]
    for name, tensor in weights[0].items():
        assert (weights[1][name] - tensor).abs().max().item() < 1e-6, name


class Killed(BaseException):
    """Stands in for SIGKILL: nothing after it runs, and the files written so far stay as they are."""


def test_resume_falls_back_past_a_checkpoint_cut_short_or_corrupted(tmp_path, monkeypatch, capsys):
    """Killed while writing step 4 (its temporary folder half full): --resume takes step 2. A checkpoint whose
    bytes changed after it was written (same size) is skipped, naming the file, and the redone steps match."""
    from pipelines.ppo import main
    from rlhf.core.checkpoints import problem
    from rlhf.core.config import RunConfig, load_config
    from rlhf.rl import checkpoint as ckpt
    from rlhf.rl.config import PPOStageConfig

    configs = ROOT / "pipelines" / "configs"
    cfg, _ = load_config(PPOStageConfig, ["--config", str(configs / "ppo_tiny.yaml"), "--train.max_steps", "4",
                                          "--train.save_steps", "2", "--train.sample_every", "0",
                                          "--update.batch_size", "8", "--update.mini_batch_size", "4",
                                          "--update.micro_batch_size", "4", "--data.eval_prompts", "0"])
    cfg.run = RunConfig(output_dir=str(tmp_path), run_name="run", wandb_mode="disabled")
    save_main_files = ckpt.save_main_files

    def killed_while_writing_4(tmp, trainable, *args, **kwargs):
        save_main_files(tmp, trainable, *args, **kwargs)
        if tmp.name.startswith(".step-000004"):
            (tmp / ckpt.TRAINABLE).write_bytes(b"\0" * 100)  # as if cut mid-file
            raise Killed

    monkeypatch.setattr(ckpt, "save_main_files", killed_while_writing_4)
    with pytest.raises(Killed):
        main(cfg)
    monkeypatch.undo()
    run_dir = tmp_path / "run"
    def compared() -> dict[int, float]:
        return {r["step"]: r["loss/policy"] for r in last_per_step(read_metrics(run_dir / "metrics.jsonl"))}
    before = compared()
    assert sorted(before) == [1, 2, 3, 4] and not (run_dir / "checkpoints/step-000004").exists()
    capsys.readouterr()
    main(cfg, resume=True)
    assert f"resumed from {run_dir / 'checkpoints/step-000002'} at step 2" in capsys.readouterr().out
    assert compared() == pytest.approx(before, rel=1e-5, abs=1e-7)
    assert problem(run_dir / "checkpoints/step-000004") is None

    trainable = run_dir / "checkpoints/step-000004" / ckpt.TRAINABLE
    data = bytearray(trainable.read_bytes())
    data[-8] ^= 0x01  # a finite value changed in place: loads fine, only the checksum can tell
    trainable.write_bytes(bytes(data))
    main(cfg, resume=True)
    out = capsys.readouterr()
    assert f"skipping step-000004: {trainable}: sha256 differs" in out.err and "falling back to step-000002" in out.err
    assert f"resumed from {run_dir / 'checkpoints/step-000002'} at step 2" in out.out
    assert compared() == pytest.approx(before, rel=1e-5, abs=1e-7)
