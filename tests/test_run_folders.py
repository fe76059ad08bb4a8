"""One run lifecycle for every stage (rlhf.core.lifecycle.start_run): a used run name without --resume is one
line before any model loads; --resume with nothing intact is one line naming the folder and what was wrong with
each checkpoint; the name is rank 0's on every rank; rotation never deletes the last intact checkpoint; leftover
temporary folders of a killed write go at the next start; SFT's counters continue across a resume."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rlhf.core import checkpoints, lifecycle
from rlhf.core.checkpoints import write_manifest
from rlhf.core.config import ConfigError, RunConfig
from rlhf.stages import STAGES

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "pipelines" / "configs"
TESTS = Path(__file__).resolve().parent


def earlier_run(folder: Path) -> bytes:
    """A folder as a finished run leaves it; returns its metrics' bytes (which must not change)."""
    folder.mkdir(parents=True)
    text = b'{"step": 1, "loss/train": 1.0}\n'
    (folder / "metrics.jsonl").write_bytes(text)
    return text


@pytest.mark.parametrize("stage, preset", [
    ("sft", "sft_tiny.yaml"),
    ("reward", "reward_tiny.yaml"),
    ("ppo", "ppo_tiny.yaml"),
    ("dpo", "dpo_tiny.yaml"),
    ("eval", None),  # no checkpoints, so no --resume to offer
])
def test_a_used_run_name_without_resume_is_one_line_before_any_model_loads(stage, preset, tmp_path, capsys,
                                                                          no_model_loads, monkeypatch):
    import reward_models.train

    monkeypatch.setattr(reward_models.train, "new_reward_model", no_model_loads_fail)
    metrics = earlier_run(tmp_path / "used")
    config = ["--config", str(CONFIGS / preset)] if preset else []
    rc = STAGES[stage].cli([*config, "--run.output_dir", str(tmp_path), "--run.run_name", "used"])
    err = capsys.readouterr().err
    again = "another" if stage == "eval" else "--resume continues it, another"
    assert rc == 2 and err == (f"error: run.run_name: {tmp_path / 'used'} holds an earlier run; {again} "
                               "run.run_name (or none) starts a new one\n")
    assert (tmp_path / "used" / "metrics.jsonl").read_bytes() == metrics
    assert sorted(p.name for p in (tmp_path / "used").iterdir()) == ["metrics.jsonl"]


def test_a_folder_without_a_record_of_a_run_is_not_an_earlier_run(tmp_path):
    """A stage that refused its input after its logger opened the folder (config.yaml, an empty metrics.jsonl)
    left nothing to lose: the same name starts the run again. Any record, checkpoint, final model or summary is."""
    run = RunConfig(output_dir=str(tmp_path), run_name="again")
    folder = tmp_path / "again"
    folder.mkdir()
    (folder / "config.yaml").write_text("run: {}\n")
    (folder / "metrics.jsonl").write_text("")
    assert lifecycle.resolve_run(run, "sft", False, "checkpoint-") == (folder, None)
    for record in ("metrics.jsonl", "summary.json", "final", "checkpoints"):
        (folder / record).mkdir() if record in ("final", "checkpoints") else (folder / record).write_text("{}\n")
        with pytest.raises(ConfigError, match="holds an earlier run"):
            lifecycle.resolve_run(run, "sft", False, "checkpoint-")
        shutil.rmtree(folder / record) if record in ("final", "checkpoints") else (folder / record).unlink()


def test_start_run_seeds_every_generator_and_rng_state_round_trips(tmp_path):
    """One seed for python, numpy and torch; the state a checkpoint keeps restores all three, and a reward
    checkpoint from before (torch's state only) still loads."""
    import random

    import numpy as np
    import torch

    def draw():
        return random.random(), float(np.random.rand()), float(torch.rand(()))

    run = RunConfig(output_dir=str(tmp_path), run_name="", seed=7)
    started = lifecycle.start_run(run, "sft", False, "checkpoint-")
    assert started.checkpoint is None and not started.dir.exists() and started.device.type == "cpu"
    first = draw()
    lifecycle.start_run(run, "sft", False, "checkpoint-")
    assert draw() == first
    torch.save(lifecycle.rng_state(), tmp_path / "rng.pt")
    expected = draw()
    lifecycle.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert draw() == expected
    lifecycle.seed_everything(7)
    torch_only = {"torch": torch.get_rng_state()}
    expected_torch = float(torch.rand(()))
    lifecycle.set_rng_state(torch_only)
    assert float(torch.rand(())) == expected_torch


def no_model_loads_fail(*args, **kwargs):
    raise AssertionError("a model loaded before the stage's checks ended it")


@pytest.mark.parametrize("stage, preset, folder", [
    ("sft", "sft_tiny.yaml", "checkpoint-"),
    ("reward", "reward_tiny.yaml", "step-00000"),
    ("ppo", "ppo_tiny.yaml", "step-00000"),
])
def test_resume_with_no_intact_checkpoint_is_one_line_naming_each_problem(stage, preset, folder, tmp_path,
                                                                          capsys, no_model_loads, monkeypatch):
    import reward_models.train

    monkeypatch.setattr(reward_models.train, "new_reward_model", no_model_loads_fail)
    run_dir = tmp_path / "cut"
    earlier_run(run_dir)
    cut, bad = run_dir / "checkpoints" / f"{folder}4", run_dir / "checkpoints" / f"{folder}2"
    cut.mkdir(parents=True)
    bad.mkdir(parents=True)
    (bad / "weights.bin").write_bytes(b"12345678")
    write_manifest(bad)
    (bad / "weights.bin").write_bytes(b"1234")  # truncated after it was written
    capsys.readouterr()
    rc = STAGES[stage].cli(["--config", str(CONFIGS / preset), "--run.output_dir", str(tmp_path),
                            "--run.run_name", "cut", "--resume"])
    err = capsys.readouterr().err.splitlines()
    assert rc == 2
    assert err[-1] == (f"error: --resume {run_dir}: no intact checkpoint to continue from ({cut.name}: no "
                       f"manifest.json (the run stopped while writing this checkpoint); {bad.name}: weights.bin: 4 "
                       "bytes, the manifest says 8 (truncated or overwritten))")
    assert not any("Traceback" in line for line in err)


def test_resume_finds_runs_and_checkpoints_by_one_rule(tmp_path):
    run = RunConfig(output_dir=str(tmp_path), run_name="")
    with pytest.raises(checkpoints.CheckpointError, match="no sft run with a checkpoint"):
        lifecycle.resolve_run(run, "sft", True, "checkpoint-")
    for n in (5, 10, 15):
        folder = tmp_path / "sft-1" / "checkpoints" / f"checkpoint-{n}"
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(bytes(range(n)))
        if n < 15:
            write_manifest(folder)
    assert lifecycle.resolve_run(run, "sft", True, "checkpoint-") == (tmp_path / "sft-1",
                                                           tmp_path / "sft-1/checkpoints/checkpoint-10")
    picked = tmp_path / "sft-1/checkpoints/checkpoint-5"
    assert lifecycle.resolve_run(run, "sft", str(picked), "checkpoint-") == (tmp_path / "sft-1", picked)
    assert lifecycle.resolve_run(run, "sft", str(tmp_path / "sft-1"), "checkpoint-")[1].name == "checkpoint-10"
    with pytest.raises(ConfigError, match="holds an earlier run"):
        lifecycle.resolve_run(RunConfig(output_dir=str(tmp_path), run_name="sft-1"), "sft", False, "checkpoint-")
    fresh, none = lifecycle.resolve_run(run, "sft", False, "checkpoint-")
    assert none is None and fresh.name.startswith("sft-") and not fresh.exists()  # made by its first writer


def test_a_resume_removes_the_temporary_folders_a_killed_write_left(tmp_path):
    """PPO's ``.step-N-*`` (mkdtemp) and the reward stage's ``.step-N.tmp`` are never a checkpoint; a run killed
    while writing one leaves it behind until the next start."""
    root = tmp_path / "run" / "checkpoints"
    good = root / "step-000002"
    good.mkdir(parents=True)
    (good / "trainer_state.json").write_text("{}")
    write_manifest(good)
    for leftover in (".step-000004-k2j3h", ".step-000004.tmp"):
        (root / leftover).mkdir()
        (root / leftover / "optimizer.pt").write_bytes(b"half")
    (root / ".latest.tmp-123").write_text("step-000004")
    run = RunConfig(output_dir=str(tmp_path), run_name="run")
    assert lifecycle.resolve_run(run, "ppo", True, "step-") == (tmp_path / "run", good)
    assert sorted(p.name for p in root.iterdir()) == ["step-000002"]


# ---------------------------------------------------------------- two ranks agree on the name

# Rank 1 reads the clock 1.2 s after rank 0 (its clock runs 1.2 s behind, as if it had been delayed that long at
# every reading): any rank that names a timestamped run itself names another folder than rank 0. A real sleep
# would also slow everything else on rank 1 that formats a time.
LATE_CLOCK = textwrap.dedent('''
    import os, time
    _strftime = time.strftime

    def _late_clock(fmt, *when):
        return _strftime(fmt, *when) if when else _strftime(fmt, time.localtime(time.time() + 1.2))

    if os.environ["RANK"] == "1":
        time.strftime = _late_clock
''')

REWARD_DRIVER = LATE_CLOCK + textwrap.dedent('''
    import pathlib, sys
    sys.path[:0] = [{root!r}, {tests!r}]
    import reward_models.train as train
    from test_reward_train import tiny_config

    out = pathlib.Path(sys.argv[1])
    cfg = tiny_config(out, out / "toy.jsonl", max_steps=2, batch_size=4, precision="fp32", save_steps=1)
    cfg.run.run_name = ""  # a timestamped name
    run_dir = train.train_reward_model(cfg)
    (out / f"rank{{os.environ['RANK']}}.txt").write_text(str(run_dir))
''').format(root=str(ROOT), tests=str(TESTS))


def torchrun(driver: Path, *args: str, env: dict[str, str] | None = None) -> None:
    from distributed_helpers import worker_env

    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(driver), *args], cwd=ROOT, env={**worker_env(), **(env or {})},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]


def ranks_run_dirs(out: Path, prefix: str = "") -> list[str]:
    """The run folder each rank wrote to ``<prefix>rank<R>.txt``."""
    return [(out / f"{prefix}rank{r}.txt").read_text() for r in range(2)]


@pytest.mark.distributed
def test_two_ranks_one_late_by_more_than_a_second_write_one_run_folder(tmp_path):
    """The acceptance test of issue 27: a two-rank reward run without run.run_name (FSDP2, so rank 1 writes its
    own shard of every checkpoint into the run folder too)."""
    from distributed_helpers import STRATEGY_ENV
    from test_reward_train import toy_preferences

    toy_preferences(tmp_path / "toy.jsonl", per_head=20)
    (tmp_path / "driver.py").write_text(REWARD_DRIVER)
    torchrun(tmp_path / "driver.py", str(tmp_path), env=STRATEGY_ENV["fsdp2"])
    folders = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert len(folders) == 1 and folders[0].startswith("reward-"), folders
    assert ranks_run_dirs(tmp_path) == [str(tmp_path / "runs" / folders[0])] * 2
    assert (tmp_path / "runs" / folders[0] / "final").is_dir()


# Runs each stage's cli, in one process group, to the point where its logger, the first writer of the run folder,
# would open it. One launch for every stage: the launch (two interpreters importing torch and the stage) is most of
# the cost, and each stage names its folder afresh (DPO first: TRL's trainer starts the process group only after
# the name, so it must not find one another stage started).
STAGE_DRIVER = LATE_CLOCK + textwrap.dedent('''
    import pathlib, sys
    sys.path.insert(0, {root!r})
    import rlhf.core.tracking
    from rlhf.stages import STAGES

    out, configs, stages = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3:]

    class Stop(Exception):
        pass

    for name in stages:
        class FirstWriter:  # stands in for MetricsLogger: where this rank would write, then stop
            def __init__(self, run_dir, *args, stage=name, **kwargs):
                (out / f"{{stage}}-rank{{os.environ['RANK']}}.txt").write_text(str(run_dir))
                raise Stop

        rlhf.core.tracking.MetricsLogger = FirstWriter
        script = STAGES[name].script()
        if hasattr(script, "MetricsLogger"):
            script.MetricsLogger = FirstWriter
        try:  # no run.run_name: a timestamped folder
            STAGES[name].cli(["--config", str(configs / f"{{name}}_tiny.yaml"), "--run.output_dir", str(out / name)])
            sys.exit(f"{{name}}: the stage ran past its logger")
        except Stop:
            pass
''').format(root=str(ROOT))


@pytest.mark.distributed
def test_every_stage_names_one_run_folder_on_two_ranks_whose_clocks_differ(tmp_path):
    stages = ["dpo", "sft", "ppo"]  # the stages that run on several processes and name their folder themselves
    (tmp_path / "driver.py").write_text(STAGE_DRIVER)
    torchrun(tmp_path / "driver.py", str(tmp_path), str(CONFIGS), *stages)
    for stage in stages:
        first, second = ranks_run_dirs(tmp_path, f"{stage}-")
        assert first == second and Path(first).name.startswith(f"{stage}-"), (stage, first, second)


# ---------------------------------------------------------------- SFT: rotation and counters across a resume


class Killed(BaseException):
    """Stands in for SIGKILL: nothing after it runs, and the files written so far stay as they are."""


def sft_cfg(out: Path, *flags: str):
    from rlhf.core.config import load_config
    from rlhf.sft.config import SFTStageConfig

    cfg, _ = load_config(SFTStageConfig, ["--config", str(CONFIGS / "sft_tiny.yaml"), "--run.output_dir", str(out),
                                          "--run.run_name", "test", "--forgetting.enabled", "false", *flags])
    return cfg


def per_step(run_dir: Path, key: str) -> dict[int, float]:
    from rlhf.core.tracking import read_metrics

    return {r["step"]: r[key] for r in read_metrics(run_dir / "metrics.jsonl") if key in r}


@pytest.mark.usefixtures("one_torch_thread")
def test_sft_killed_before_the_new_manifest_keeps_an_intact_checkpoint_under_save_total_limit_1(tmp_path,
                                                                                                 monkeypatch):
    """The kill window of rotation: checkpoint-8's files are written, its manifest is not (the run is killed
    while hashing them). With save_total_limit 1 the HF Trainer had already deleted checkpoint-4 by then."""
    from pipelines.sft import main
    from rlhf.core import checkpoints, lifecycle
    from rlhf.sft.trainer import latest_checkpoint

    write = checkpoints.write_manifest

    def killed_while_hashing_8(folder):
        if Path(folder).name == "checkpoint-8":
            raise Killed
        return write(folder)

    monkeypatch.setattr(checkpoints, "write_manifest", killed_while_hashing_8)
    with pytest.raises(Killed):
        main(sft_cfg(tmp_path, "--train.save_total_limit", "1"))
    monkeypatch.undo()
    run_dir = tmp_path / "test"
    assert (run_dir / "checkpoints/checkpoint-8/optimizer.pt").is_file()
    assert latest_checkpoint(run_dir) == run_dir / "checkpoints/checkpoint-4"
    main(sft_cfg(tmp_path, "--train.save_total_limit", "1"), resume=True)
    assert [p.name for p in (run_dir / "checkpoints").glob("checkpoint-*")] == ["checkpoint-8"]  # rotated after


@pytest.mark.usefixtures("one_torch_thread")
def test_sft_num_tokens_continues_across_a_resume(tmp_path):
    import shutil

    from pipelines.sft import main

    run_dir = main(sft_cfg(tmp_path))
    uninterrupted = per_step(run_dir, "train/num_tokens")
    assert sorted(uninterrupted) == list(range(1, 9)) and uninterrupted[8] > uninterrupted[4] > 0
    shutil.rmtree(run_dir / "checkpoints" / "checkpoint-8")
    shutil.rmtree(run_dir / "final")
    (run_dir / "summary.json").unlink()
    main(sft_cfg(tmp_path), resume=True)
    assert per_step(run_dir, "train/num_tokens") == uninterrupted  # steps 5-8 redone, counted on from step 4
