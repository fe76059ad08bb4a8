"""rlhf.core.runtime decides where every stage runs: ``select_device``'s rule, no other module deciding a device
itself (read from the source), and every stage asking it (a CUDA request on a machine without CUDA stops each
stage with the runtime's one line, before any model loads or run folder exists)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from rlhf.core import runtime
from rlhf.core.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("rlhf", "reward_models", "pipelines")


def test_auto_is_cuda_when_present_else_cpu_and_a_launcher_picks_the_local_gpu(monkeypatch):
    monkeypatch.setattr(runtime, "cuda_present", lambda: False)
    assert runtime.select_device("auto") == torch.device("cpu")
    assert runtime.select_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(runtime, "cuda_present", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert runtime.select_device("auto") == torch.device("cuda", 1)
    assert runtime.select_device("cpu") == torch.device("cpu")  # forced, even with a GPU


def test_a_device_that_is_not_here_or_unknown_is_a_config_error_naming_the_key(monkeypatch):
    monkeypatch.setattr(runtime, "cuda_present", lambda: False)
    with pytest.raises(ConfigError, match=r"^run\.device: cuda requested, but this machine has no CUDA"):
        runtime.select_device("cuda")
    with pytest.raises(ConfigError, match=r"^device: expected one of auto, cpu, cuda, got 'gpu'"):
        runtime.select_device("gpu", key="device")


def _device_decisions(tree: ast.AST) -> list[tuple[int, str]]:
    """Calls that decide a device: torch.cuda.is_available(), Accelerator(...), PartialState(...), and
    torch.device("cuda"...)."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        if name.endswith("cuda.is_available") or name.split(".")[-1] in ("Accelerator", "PartialState"):
            found.append((node.lineno, name))
        elif name.endswith("device") and node.args and isinstance(node.args[0], ast.Constant) \
                and str(node.args[0].value).startswith("cuda"):
            found.append((node.lineno, f"{name}({node.args[0].value!r})"))
    return found


def test_no_module_but_the_runtime_decides_a_device():
    offenders = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == ROOT / "rlhf" / "core" / "runtime.py":
                continue
            for line, call in _device_decisions(ast.parse(path.read_text(encoding="utf-8"))):
                offenders.append(f"{path.relative_to(ROOT)}:{line}: {call}")
    assert offenders == [], "ask rlhf.core.runtime (select_device / make_accelerator) instead:\n" + "\n".join(offenders)


def test_the_source_scan_finds_what_it_looks_for():  # the scan above must be able to fail
    source = ("import torch\nfrom accelerate import Accelerator\nd = torch.device('cuda:0')\n"
              "a = Accelerator(cpu=not torch.cuda.is_available())\n")
    assert sorted(call for _, call in _device_decisions(ast.parse(source))) == [
        "Accelerator", "torch.cuda.is_available", "torch.device('cuda:0')"]


STAGE_RUNS = {  # registered stage -> arguments that reach the stage's device decision on tiny inputs
    "sft": ["--config", "pipelines/configs/sft_tiny.yaml"],
    "reward": ["--config", "pipelines/configs/reward_tiny.yaml"],
    "ppo": ["--config", "pipelines/configs/ppo_tiny.yaml"],
    "dpo": ["--config", "pipelines/configs/dpo_tiny.yaml"],
    "eval": ["--policies", "[{name: base, model: tiny-llama}]"],
}


@pytest.mark.parametrize("stage", sorted(STAGE_RUNS))
def test_every_stage_asks_the_runtime_for_its_device(stage, tmp_path, monkeypatch, capsys, no_model_loads):
    from rlhf.stages import STAGES

    monkeypatch.setattr(runtime, "cuda_present", lambda: False)  # this machine has no GPU, whatever it has
    monkeypatch.chdir(ROOT)
    code = STAGES[stage].cli([*STAGE_RUNS[stage], "--run.output_dir", str(tmp_path / "runs"), "--run.wandb_mode", "disabled",
                "--run.device", "cuda"])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: run.device: cuda requested, but this machine has no CUDA device (use auto or cpu)"]
    assert not any((tmp_path / "runs").rglob("*")), "a run folder was left behind"


def test_annotation_sampling_asks_the_runtime(monkeypatch, tiny_llama_path):
    from rlhf.annotate.sampling import sample_items

    monkeypatch.setattr(runtime, "cuda_present", lambda: False)
    with pytest.raises(ConfigError, match=r"^--device: cuda requested"):
        sample_items(["Hi"], tiny_llama_path, device="cuda")
