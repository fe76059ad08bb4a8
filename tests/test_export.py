"""``rlhf export``: a hub-ready folder with a model card, loadable as it stands; offline, a push says how.
And the LICENSE file is the licence pyproject.toml declares."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlhf.models.export import export

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_license_file_matches_pyproject():
    import re

    declared = re.search(r'^license = "([^"]+)"$', (ROOT / "pyproject.toml").read_text(), re.M).group(1)  # SPDX
    text = (ROOT / "LICENSE").read_text()
    assert declared == "Apache-2.0"
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text


@pytest.fixture()
def reward_run(tmp_path, tiny_bert_path) -> Path:
    from reward_models.model import new_reward_model, save_reward_model

    torch.manual_seed(0)
    model, encoder, scoring = new_reward_model(tiny_bert_path, max_length=64)
    run = tmp_path / "reward-run"
    save_reward_model(model, encoder, scoring, run / "final")
    (run / "summary.json").write_text(json.dumps({"test/accuracy_helpful": 0.75, "train/steps": 30}))
    (run / "config.yaml").write_text("model:\n  backbone: tiny-bert\n")
    return run


def test_export_writes_a_card_and_a_loadable_folder_and_says_how_to_push(tmp_path, reward_run, capsys):
    from reward_models.scoring import RewardScorer

    out = tmp_path / "export"
    assert export(reward_run, out, repo_id="me/hhh-rm") == 0
    card = (out / "README.md").read_text()
    front = card.split("---")[1]
    assert "license: apache-2.0" in front and "- reward" in front
    assert "| test/accuracy_helpful | 0.75 |" in card and 'RewardScorer.from_pretrained("me/hhh-rm")' in card
    assert (out / "training_config.yaml").is_file() and (out / "summary.json").is_file()
    assert "not pushed: push it with `hf upload me/hhh-rm" in capsys.readouterr().out
    prompts, responses = ["Is the earth flat?"], ["No, it is round."]
    original = RewardScorer.from_pretrained(reward_run, toxicity=None, precision="fp32").score(prompts, responses)
    exported = RewardScorer.from_pretrained(out, toxicity=None, precision="fp32").score(prompts, responses)
    assert torch.equal(original.composite, exported.composite)


def test_push_offline_keeps_the_folder_and_prints_one_line(tmp_path, reward_run, monkeypatch, capsys):
    import huggingface_hub

    def unreachable(self, *args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", unreachable)
    assert export(reward_run, tmp_path / "export", repo_id="me/hhh-rm", push=True) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("error: could not push to the hub (ConnectionError); the folder is written: "
                                "push it with `hf upload me/hhh-rm")
    assert (tmp_path / "export" / "README.md").is_file()


def test_sft_adapter_export_loads_with_auto_peft(tmp_path, tiny_llama_path, monkeypatch):
    from peft import AutoPeftModelForCausalLM, LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama_path),
                           LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False))
    model.save_pretrained(tmp_path / "sft" / "final")
    assert export(tmp_path / "sft", tmp_path / "export") == 0
    assert "library_name: peft" in (tmp_path / "export" / "README.md").read_text()
    monkeypatch.chdir(tmp_path / "export")  # its base is the bundled base/, which peft reads from the working dir
    ids = torch.arange(3, 9).unsqueeze(0)
    with torch.no_grad():
        torch.testing.assert_close(AutoPeftModelForCausalLM.from_pretrained(tmp_path / "export")(input_ids=ids).logits,
                                   model(input_ids=ids).logits)


def test_a_folder_without_a_model_is_refused_in_one_line(tmp_path):
    from rlhf.cli import main

    assert main(["export", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
