"""Issue 25.1 for the stages' own folders: every adapter a stage writes (SFT final/, RL and DPO final/adapter, their
checkpoints) names a base that resolves elsewhere (a zoo name, or a folder relative to the adapter: RL's and DPO's
../sft-base), carries its tokenizer, and holds no absolute path; copied to another folder with the run folder
removed it loads with our loader (rlhf.models.policies, what chat and eval use) and gives the same logits."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from rlhf.core.config import RunConfig, load_config
from rlhf.models.policies import PolicyLoadError, adapter_base, load_policy, portable_base, set_adapter_base

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "pipelines" / "configs"
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _logits(path: Path) -> torch.Tensor:
    ids = torch.arange(5, 30).unsqueeze(0)  # (1, 25)
    with torch.no_grad():
        return load_policy("p", str(path)).model(input_ids=ids).logits


def _check_portable(adapter: Path) -> str:
    """The adapter folder has its tokenizer and no absolute path in adapter_config.json; returns its base."""
    config = json.loads((adapter / "adapter_config.json").read_text())
    absolute = {k: v for k, v in config.items() if isinstance(v, str) and os.path.isabs(v)}
    assert not absolute, f"{adapter}: absolute paths {absolute}"
    assert (adapter / "tokenizer_config.json").is_file()
    return config["base_model_name_or_path"]


def _moved(folder: Path, dest: Path, gone: Path) -> Path:
    """``folder`` copied to ``dest``, then ``gone`` (the run folder and what it trained on) deleted."""
    shutil.copytree(folder, dest)
    shutil.rmtree(gone)
    return dest


def _sft_adapter(tiny_llama_path: str, out: Path) -> Path:
    """A trained-looking SFT LoRA (random, non-zero B) on the tiny base, as peft writes it (absolute base)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(2)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama_path),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False))
    model.save_pretrained(out)
    return out


def test_portable_names_and_a_missing_relative_base_is_one_line(tmp_path, tiny_llama_path):
    adapter = _sft_adapter(tiny_llama_path, tmp_path / "run" / "final" / "adapter")
    (tmp_path / "run" / "final" / "sft-base").mkdir()
    assert portable_base(tiny_llama_path, adapter) == "tiny-llama"  # the zoo's cache folder -> its zoo name
    assert portable_base("tiny-llama", adapter) == "tiny-llama"
    assert portable_base("HuggingFaceTB/SmolLM2-135M-Instruct", adapter) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert portable_base(str(tmp_path / "run" / "final" / "sft-base"), adapter) == "../sft-base"
    assert portable_base(str(tmp_path / "other"), adapter) == str(tmp_path / "other")  # not a folder: a hub id
    (tmp_path / "other").mkdir()
    assert portable_base(str(tmp_path / "other"), adapter) == "../../../other"
    assert portable_base("../sft-base", adapter) == "../sft-base"  # already relative to the adapter
    assert set_adapter_base(adapter, str(tmp_path / "run" / "final" / "sft-base")) == "../sft-base"
    # read relative to the adapter folder, whatever the working directory
    assert Path(adapter_base(adapter)).resolve() == (tmp_path / "run" / "final" / "sft-base").resolve()
    readme = (adapter / "README.md").read_text()
    assert str(tmp_path) not in readme and "base_model: ../sft-base" in readme  # peft's stub card agrees
    shutil.rmtree(tmp_path / "run" / "final" / "sft-base")
    with pytest.raises(PolicyLoadError) as err:
        adapter_base(adapter)
    assert "'base_model_name_or_path' names '../sft-base'" in str(err.value) and "\n" not in str(err.value)


def test_sft_adapter_and_its_checkpoints_name_the_zoo_model_and_travel(tmp_path):
    from pipelines.sft import main
    from rlhf.sft.config import SFTStageConfig

    cfg, _ = load_config(SFTStageConfig, ["--config", str(CONFIGS / "sft_tiny.yaml"), "--run.output_dir",
                                          str(tmp_path / "a"), "--run.run_name", "sft", "--forgetting.enabled",
                                          "false", "--train.max_steps", "2", "--train.save_steps", "1",
                                          "--data.samples", "0", "--train.learning_rate", "0.05"])
    main(cfg)
    final = tmp_path / "a" / "sft" / "final"
    assert _check_portable(final) == "tiny-llama"
    for checkpoint in (tmp_path / "a" / "sft" / "checkpoints").glob("checkpoint-*"):
        assert _check_portable(checkpoint) == "tiny-llama"
    before = _logits(final)
    moved = _moved(final, tmp_path / "b" / "my-sft", tmp_path / "a")
    torch.testing.assert_close(_logits(moved), before, rtol=0, atol=0)


def test_rl_adapter_on_an_sft_adapter_travels_with_its_sft_base(tmp_path, tiny_llama_path, monkeypatch):
    from peft import AutoPeftModelForCausalLM

    from pipelines.ppo import main
    from rlhf.rl.config import PPOStageConfig

    sft = _sft_adapter(tiny_llama_path, tmp_path / "a" / "sft" / "final")
    cfg, _ = load_config(PPOStageConfig, ["--config", str(CONFIGS / "ppo_tiny.yaml"), "--model.name", "tiny-llama",
                                          "--model.sft_adapter", str(sft), "--train.max_steps", "2",
                                          "--train.save_steps", "2", "--train.sample_every", "0",
                                          "--update.batch_size", "8", "--update.mini_batch_size", "4",
                                          "--update.micro_batch_size", "4", "--data.eval_prompts", "0",
                                          "--train.learning_rate", "0.05"])
    cfg.run = RunConfig(output_dir=str(tmp_path / "a"), run_name="rl", wandb_mode="disabled")
    main(cfg)
    final = tmp_path / "a" / "rl" / "final"
    assert _check_portable(final / "adapter") == "../sft-base"
    [checkpoint] = (tmp_path / "a" / "rl" / "checkpoints").glob("step-*")
    # a checkpoint's adapter names the SFT adapter it was trained on (no merged copy per checkpoint), relative
    assert _check_portable(checkpoint / "adapter") == os.path.relpath(sft, checkpoint / "adapter")
    torch.testing.assert_close(_logits(checkpoint / "adapter"), _logits(final / "adapter"), rtol=1e-5, atol=1e-5)
    before = _logits(final / "adapter")
    moved = _moved(final, tmp_path / "b" / "rl-final", tmp_path / "a")
    torch.testing.assert_close(_logits(moved / "adapter"), before, rtol=0, atol=0)
    monkeypatch.chdir(moved / "adapter")  # peft reads a relative base from the working directory
    peft_model = AutoPeftModelForCausalLM.from_pretrained(str(moved / "adapter"))
    with torch.no_grad():
        standard = peft_model(input_ids=torch.arange(5, 30).unsqueeze(0)).logits
    torch.testing.assert_close(standard, before, rtol=1e-5, atol=1e-5)


def test_dpo_adapter_on_an_sft_adapter_travels_with_its_sft_base(tmp_path, tiny_llama_path):
    from pipelines.dpo import main
    from rlhf.dpo.config import DPOStageConfig

    sft = _sft_adapter(tiny_llama_path, tmp_path / "a" / "sft" / "final")
    cfg, _ = load_config(DPOStageConfig, ["--config", str(CONFIGS / "dpo_tiny.yaml"), "--run.output_dir",
                                          str(tmp_path / "a"), "--run.run_name", "dpo", "--model.sft_adapter",
                                          str(sft), "--train.max_steps", "2", "--train.save_steps", "1",
                                          "--train.save_merged", "false"])
    run_dir = main(cfg)
    assert _check_portable(run_dir / "final" / "adapter") == "../sft-base"
    checkpoints = sorted((run_dir / "checkpoints").glob("checkpoint-*"))
    assert checkpoints
    for checkpoint in checkpoints:
        assert _check_portable(checkpoint) == os.path.relpath(sft, checkpoint)
    before = _logits(run_dir / "final" / "adapter")
    torch.testing.assert_close(_logits(checkpoints[-1]), before, rtol=1e-5, atol=1e-5)
    moved = _moved(run_dir / "final", tmp_path / "b" / "dpo-final", tmp_path / "a")
    torch.testing.assert_close(_logits(moved / "adapter"), before, rtol=0, atol=0)
