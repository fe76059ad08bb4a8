"""A launch this machine cannot run as asked (ZeRO without deepspeed or without CUDA, FSDP1, FSDP on CPU in a stage
that does not shard, a strategy name nobody knows) ends with one line naming the setting, exit 2, before any model or run folder."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from rlhf.core.runtime import FSDP_SHARDING, ZERO_STAGES, launch_problem

ROOT = Path(__file__).resolve().parents[1]
DEEPSPEED = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}
FSDP = {"ACCELERATE_USE_FSDP": "true", "FSDP_SHARDING_STRATEGY": "SHARD_GRAD_OP", "FSDP_VERSION": "2"}


@pytest.fixture()
def deepspeed_installed(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "deepspeed" else
                        find_spec(name, *a))


def test_a_plain_launch_has_no_problem():
    assert launch_problem({}, cuda=False) is None
    assert launch_problem({"ACCELERATE_USE_DEEPSPEED": "false", "ACCELERATE_USE_FSDP": "false"}, cuda=False) is None


def test_zero_without_deepspeed_names_the_setting_and_the_extra(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    problem = launch_problem(DEEPSPEED, cuda=True)
    assert problem.startswith("distributed_type DEEPSPEED (ACCELERATE_USE_DEEPSPEED=true): deepspeed is not installed")
    assert "[deepspeed]" in problem


def test_zero_on_a_machine_without_cuda_is_refused(deepspeed_installed):
    assert launch_problem(DEEPSPEED, cuda=False) == ("distributed_type DEEPSPEED (ACCELERATE_USE_DEEPSPEED=true): "
                                                     "ZeRO needs CUDA here; untested on CPU")
    assert launch_problem(DEEPSPEED, cuda=True) is None


def test_an_unknown_zero_stage_is_named_before_anything_else():
    problem = launch_problem({**DEEPSPEED, "ACCELERATE_DEEPSPEED_ZERO_STAGE": "4"}, cuda=True)
    assert problem.startswith("deepspeed_config.zero_stage (ACCELERATE_DEEPSPEED_ZERO_STAGE=4): unknown ZeRO stage")


def test_fsdp_strategies():
    assert launch_problem(FSDP, cuda=True) is None
    assert launch_problem({**FSDP, "FSDP_SHARDING_STRATEGY": "2"}, cuda=True) is None  # accelerate's numeric form
    problem = launch_problem({**FSDP, "FSDP_SHARDING_STRATEGY": "SHARD_EVERYTHING"}, cuda=True)
    assert problem.startswith("fsdp_config.fsdp_sharding_strategy (FSDP_SHARDING_STRATEGY=SHARD_EVERYTHING): unknown")


def test_fsdp2_runs_on_cpu_in_the_stages_that_shard_and_nowhere_else():
    assert launch_problem(FSDP, cuda=False) is None
    assert launch_problem(FSDP, cuda=False, shards=False).startswith(
        "distributed_type FSDP (ACCELERATE_USE_FSDP=true): this stage does not shard on CPU")
    assert launch_problem(FSDP, cuda=True, shards=False) is None  # accelerate's own FSDP plugin, on CUDA


@pytest.mark.parametrize("version", [None, "1", "3"])
def test_anything_but_fsdp2_names_fsdp_version(version):
    """The stages shard with fully_shard themselves: an FSDP1 launch (accelerate's default when the file has no
    fsdp_version) would silently run as FSDP2, so it is refused, on CUDA too."""
    env = {k: v for k, v in FSDP.items() if k != "FSDP_VERSION"}
    if version is not None:
        env["FSDP_VERSION"] = version
    for cuda in (False, True):
        assert launch_problem(env, cuda=cuda) == (f"fsdp_config.fsdp_version (FSDP_VERSION={version or '1'}): the "
                                                  "stages shard with FSDP2 only; set fsdp_version: 2 "
                                                  "(pipelines/accelerate/fsdp.yaml)")


@pytest.mark.parametrize("path", sorted((ROOT / "pipelines" / "accelerate").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_launch_configs_name_known_strategies(path):
    """accelerate accepts each shipped file (its distributed_type exists), and its strategy is one we check."""
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))
    raw = yaml.safe_load(path.read_text())
    if config.distributed_type.value == "DEEPSPEED":
        assert str(raw["deepspeed_config"]["zero_stage"]) in ZERO_STAGES
    if config.distributed_type.value == "FSDP":
        assert raw["fsdp_config"]["fsdp_version"] == 2
        assert launch_problem({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": str(raw["fsdp_config"]["fsdp_version"])},
                              cuda=False) is None


def refusal(script: str, env: dict, tmp_path, *args: str) -> list[str]:
    """The stderr lines of a stage started under ``env`` that must stop with exit 2 before any run folder."""
    result = subprocess.run([sys.executable, script, *args, "--run.output_dir", str(tmp_path / "runs")], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert not (tmp_path / "runs").exists()
    return result.stderr.strip().splitlines()


def test_stage_refuses_zero_in_one_line_before_any_run_folder(tmp_path):
    """The environment ``accelerate launch --config_file pipelines/accelerate/zero2.yaml`` gives each process."""
    env = {**os.environ, **DEEPSPEED, "ACCELERATE_DEEPSPEED_ZERO_STAGE": "9"}
    assert refusal("pipelines/ppo.py", env, tmp_path, "--config", "pipelines/configs/ppo_tiny.yaml") == [
        "error: deepspeed_config.zero_stage (ACCELERATE_DEEPSPEED_ZERO_STAGE=9): unknown ZeRO stage; "
        f"expected one of {', '.join(ZERO_STAGES)}"]


def test_stage_refuses_fsdp1_and_a_non_sharding_stage_refuses_fsdp_on_cpu_in_one_line(tmp_path):
    """What ``accelerate launch`` gives each process for a file without ``fsdp_version`` (accelerate reads 1)."""
    env = {**os.environ, "ACCELERATE_USE_FSDP": "true"}
    env.pop("FSDP_VERSION", None)
    assert refusal("pipelines/ppo.py", env, tmp_path, "--config", "pipelines/configs/ppo_tiny.yaml") == [
        "error: fsdp_config.fsdp_version (FSDP_VERSION=1): the stages shard with FSDP2 only; set fsdp_version: 2 "
        "(pipelines/accelerate/fsdp.yaml)"]
    if not torch.cuda.is_available():  # DPO leaves FSDP to accelerate, which ignores it on CPU
        assert refusal("pipelines/dpo.py", {**env, "FSDP_VERSION": "2"}, tmp_path)[-1].startswith(
            "error: distributed_type FSDP (ACCELERATE_USE_FSDP=true): this stage does not shard on CPU")


def test_accelerate_launch_of_a_config_with_an_unknown_strategy(tmp_path):
    """Through the real launcher: accelerate passes the file's strategy on unchecked; the stage names it."""
    config = yaml.safe_load((ROOT / "pipelines" / "accelerate" / "fsdp.yaml").read_text())
    config["fsdp_config"]["fsdp_sharding_strategy"] = "SHARD_EVERYTHING"  # an FSDP1 key accelerate still passes on
    config["num_processes"] = 1
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    result = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                             str(tmp_path / "bad.yaml"), "--main_process_port", "0", "pipelines/ppo.py", "--config",
                             "pipelines/configs/ppo_tiny.yaml", "--run.output_dir", str(tmp_path / "runs")],
                            cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0
    ours = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert ours == ["error: fsdp_config.fsdp_sharding_strategy (FSDP_SHARDING_STRATEGY=SHARD_EVERYTHING): unknown "
                    f"strategy; expected one of {', '.join(FSDP_SHARDING)}"], result.stderr[-3000:]
    assert not (tmp_path / "runs").exists()
