"""The RL stage's ``final/adapter`` loads the trained policy through the standard PEFT path.

``AutoPeftModelForCausalLM.from_pretrained(final/adapter)`` must give SFT + RL LoRA (the same logits as the
merged ``final/``), not the raw base + RL LoRA, whether the SFT start was a full-weights folder or an adapter.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _run_rl(tmp_path: Path, name: str, *policy_args: str) -> Path:
    from pipelines.ppo import main
    from rlhf.core.config import RunConfig, load_config
    from rlhf.rl.config import PPOStageConfig

    cfg, _ = load_config(PPOStageConfig, ["--config", str(ROOT / "pipelines/configs/ppo_tiny.yaml"), *policy_args,
                                          "--train.max_steps", "2", "--train.save_steps", "0", "--train.sample_every", "0",
                                          "--update.batch_size", "8", "--update.mini_batch_size", "4",
                                          "--update.micro_batch_size", "4", "--data.eval_prompts", "0",
                                          "--train.learning_rate", "0.05"])
    cfg.run = RunConfig(output_dir=str(tmp_path), run_name=name, wandb_mode="disabled")
    main(cfg)
    return tmp_path / name / "final"


def _logits(model) -> torch.Tensor:
    ids = torch.arange(5, 25).unsqueeze(0)
    with torch.no_grad():
        return model(input_ids=ids).logits


def _perturbed_sft(tiny_llama_path: str, out: Path) -> Path:
    """A 'fine-tuned' full-weights SFT folder: the tiny base with every weight moved."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_path)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_llama_path).save_pretrained(out)
    return out


def _check_loads_trained_policy(final: Path, raw_base: str, monkeypatch) -> None:
    from peft import AutoPeftModelForCausalLM, PeftModel
    from transformers import AutoModelForCausalLM

    merged = _logits(AutoModelForCausalLM.from_pretrained(final))
    with monkeypatch.context() as here:
        here.chdir(final / "adapter")  # the base is named relative to the adapter; peft reads it from the cwd
        standard = _logits(AutoPeftModelForCausalLM.from_pretrained(final / "adapter"))
    torch.testing.assert_close(standard, merged, rtol=1e-4, atol=1e-4)
    # what the old adapter_config gave: the raw base under the RL LoRA, visibly another model
    wrong = _logits(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(raw_base), final / "adapter"))
    assert (wrong - merged).abs().max() > 1e-2


def test_adapter_of_a_full_weights_sft_names_that_folder(tmp_path, tiny_llama_path, monkeypatch):
    from rlhf.models.policies import load_policy

    sft = _perturbed_sft(tiny_llama_path, tmp_path / "a" / "sft")
    final = _run_rl(tmp_path / "a", "rl", "--model.name", str(sft))
    base = json.loads((final / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert base == "../../../sft" and not (final / "sft-base").exists()  # relative; no second copy of the SFT
    _check_loads_trained_policy(final, tiny_llama_path, monkeypatch)
    # the runs folder moved as a whole (another path, another machine): the adapter still finds its SFT base
    merged = _logits(load_policy("merged", str(final)).model)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "a")
    torch.testing.assert_close(_logits(load_policy("rl", str(tmp_path / "b" / "rl" / "final" / "adapter")).model),
                               merged, rtol=1e-4, atol=1e-4)


def test_adapter_of_an_sft_adapter_gets_a_merged_base(tmp_path, tiny_llama_path, monkeypatch):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(2)
    sft = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama_path),
                         LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False))
    sft.save_pretrained(tmp_path / "sft-adapter")
    final = _run_rl(tmp_path, "rl", "--model.name", "tiny-llama", "--model.sft_adapter",
                    str(tmp_path / "sft-adapter"))
    base = json.loads((final / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert base == "../sft-base"
    _check_loads_trained_policy(final, tiny_llama_path, monkeypatch)
