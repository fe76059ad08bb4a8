"""Issue 25.1: an exported bundle travels. Copied to another folder, with the run folder and the local base it was
trained on deleted, it loads with peft's AutoPeftModelForCausalLM and transformers' AutoTokenizer alone and gives
the logits it gave before the move; its card names the hub base, the data and the data's licence, and no path."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from rlhf.models.export import export

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TEXT = "Summarize: #Person1#: hello there. #Person2#: hi."


def _logits(model, tokenizer) -> torch.Tensor:
    ids = tokenizer(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        return model(input_ids=ids).logits


def _sft_model(tiny_llama_path: str, folder: Path) -> Path:
    """A full-weights SFT model that exists only on this machine (a local folder, on no hub)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_path)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_llama_path).save_pretrained(folder)
    return folder


def _adapter_run(base: Path, run: Path) -> Path:
    """An SFT-style run: final/ is a LoRA adapter naming ``base`` by absolute path (what training writes)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(2)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.save_pretrained(run / "final")
    (run / "config.yaml").write_text(f"policy:\n  model: {base.resolve()}\ndata:\n  mixture:\n  - source: dialogsum\n"
                                     f"    weight: 1.0\nrun:\n  output_dir: {run.parent.resolve()}\n")
    (run / "summary.json").write_text(json.dumps({"eval/loss": 1.25, "reward/composite": 0.5,
                                                  "reward/composite_low": 0.25, "reward/composite_high": 0.75}))
    return run


def test_a_bundle_copied_elsewhere_loads_with_auto_classes_alone(tmp_path, tiny_llama_path, monkeypatch):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    sft = _sft_model(tiny_llama_path, tmp_path / "machine-a" / "sft-model")
    run = _adapter_run(sft, tmp_path / "machine-a" / "runs" / "sft-lora")
    before = _logits(AutoPeftModelForCausalLM.from_pretrained(run / "final"), AutoTokenizer.from_pretrained(sft))
    assert export(run, tmp_path / "machine-a" / "bundle", repo_id="me/sft-lora") == 0
    moved = tmp_path / "machine-b" / "models" / "sft-lora"
    shutil.copytree(tmp_path / "machine-a" / "bundle", moved)
    shutil.rmtree(tmp_path / "machine-a")  # the run, the local base and the original bundle are gone

    config = json.loads((moved / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "base"  # inside the bundle, relative
    monkeypatch.chdir(moved)  # peft reads a relative base from the working directory (the card says so)
    model, tokenizer = AutoPeftModelForCausalLM.from_pretrained(str(moved)), AutoTokenizer.from_pretrained(str(moved))
    torch.testing.assert_close(_logits(model, tokenizer), before, rtol=0, atol=0)

    card = (moved / "README.md").read_text()
    front = card.split("---")[1]
    assert "license: cc-by-nc-sa-4.0" in front and "datasets:\n- knkarthick/dialogsum" in front
    assert "| reward/composite | 0.5 | [0.25, 0.75] |" in card
    assert str(tmp_path) not in card and "/machine-a/" not in card


def test_rl_policy_bundle_carries_its_sft_base_and_chat_takes_the_adapter(tmp_path, tiny_llama_path, monkeypatch,
                                                                         capsys):
    """RL's final/: merged weights, adapter/ on the SFT start (final/sft-base when the SFT was an adapter). The
    bundle holds that base; `rlhf chat --model <bundle>/adapter` works from any directory."""
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    from rlhf.cli import main

    sft = _sft_model(tiny_llama_path, tmp_path / "a" / "runs" / "rl" / "final" / "sft-base")
    run = _adapter_run(sft, tmp_path / "a" / "runs" / "rl-tmp")
    final = tmp_path / "a" / "runs" / "rl" / "final"
    shutil.copytree(run / "final", final / "adapter")
    shutil.copy2(run / "config.yaml", final.parent / "config.yaml")
    merged = AutoPeftModelForCausalLM.from_pretrained(final / "adapter")
    before = _logits(merged, AutoTokenizer.from_pretrained(sft))
    merged.merge_and_unload().save_pretrained(final)
    AutoTokenizer.from_pretrained(sft).save_pretrained(final)
    assert export(final.parent, tmp_path / "b" / "bundle") == 0
    shutil.rmtree(tmp_path / "a")
    bundle = tmp_path / "b" / "bundle"
    assert json.loads((bundle / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == "../base"
    assert (bundle / "adapter" / "tokenizer_config.json").is_file()
    monkeypatch.chdir(bundle / "adapter")
    model = AutoPeftModelForCausalLM.from_pretrained(str(bundle / "adapter"))
    torch.testing.assert_close(_logits(model, AutoTokenizer.from_pretrained(str(bundle / "adapter"))), before,
                               rtol=0, atol=1e-5)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["chat", "hello", "--model", str(bundle / "adapter"), "--max-new-tokens", "3"]) == 0
    assert "assistant:" in capsys.readouterr().out
