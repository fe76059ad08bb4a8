"""QLoRA in the reward stage: LoRA and the HHH heads on a backbone loaded 4-bit NF4 through bitsandbytes (tiny
random models). The backbone stays quantized and unchanged, the adapters and heads learn, the frozen-trunk cache
still works, and final/ (adapters + heads naming the float backbone) scores the same after loading; the settings
that cannot run are refused with one line before any model loads."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from rlhf.stages import STAGES
from reward_models import train as reward_train
from reward_models.scoring import RewardScorer
from reward_models.train import train_reward_model
from rlhf.models.lora import LoraConfig
from rlhf.models.quantization import is_quantized
from test_reward_train import tiny_config, toy_preferences

cli = STAGES["reward"].cli

TINY = Path(__file__).resolve().parents[1] / "pipelines" / "configs" / "reward_tiny.yaml"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("flags, message", [
    (("--model.quantization", "4bit"), "model.quantization: a 4bit base is frozen; train adapters on it "
                                       "(lora.enabled true)"),
    (("--model.quantization", "8bit", "--model.freeze_backbone", "true"), "model.quantization: a 8bit base is frozen"),
    (("--model.quantization", "3bit", "--lora.enabled", "true"), "model.quantization"),
])
def test_impossible_quantized_settings_are_one_line(flags, message, capsys, tmp_path):
    assert cli(["--config", str(TINY), "--run.output_dir", str(tmp_path), *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not any(tmp_path.iterdir())  # refused before a run folder exists


def test_a_missing_backend_is_one_line_before_any_model_loads(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import bitsandbytes now raises ImportError
    monkeypatch.setattr(reward_train, "new_reward_model", lambda *a, **k: pytest.fail("a model was loaded"))
    assert cli(["--config", str(TINY), "--run.output_dir", str(tmp_path), "--model.quantization", "4bit",
                "--lora.enabled", "true"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.quantization: 4bit needs bitsandbytes" in err, err


def test_qlora_reward_model_trains_adapters_and_heads_on_a_4bit_backbone_and_final_scores(tmp_path, monkeypatch,
                                                                                          capsys, bnb):
    built = []

    def keep(*args, **kwargs):  # the stage's model, to compare its weights before and after training
        out = new_reward_model(*args, **kwargs)
        built.append((out[0], {n: p.detach().clone() for n, p in out[0].named_parameters()}))
        return out

    new_reward_model = reward_train.new_reward_model
    monkeypatch.setattr(reward_train, "new_reward_model", keep)
    cfg = tiny_config(tmp_path, toy_preferences(tmp_path / "toy.jsonl", per_head=8), max_steps=4, batch_size=4)
    cfg.model.name, cfg.model.quantization = "tiny-llama", "4bit"
    # adapters on the top layer of 2: layer 0 is a frozen (quantized) trunk the cache can keep
    cfg.lora = LoraConfig(r=4, alpha=8, target_modules=[], layers=[-1])
    cfg.train.cache_dir, cfg.eval.test = str(tmp_path / "cache"), False
    run_dir = train_reward_model(cfg)

    (model, before), = built
    hf = model.hf_model
    assert is_quantized(hf) and any(isinstance(m, bnb.nn.Linear4bit) for m in hf.modules())
    frozen = {n: p for n, p in model.named_parameters() if not p.requires_grad}
    packed = [n for n, p in frozen.items() if isinstance(p, bnb.nn.Params4bit)]
    assert packed and all(torch.equal(frozen[n], before[n]) for n in frozen)  # the quantized base is unchanged
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    changed = {n for n, p in trained.items() if not torch.equal(p, before[n])}
    assert any("lora_B" in n for n in changed) and any("score" in n for n in changed), sorted(changed)
    assert all(p.dtype == torch.float32 for p in trained.values())
    # the frozen-trunk cache kept the quantized trunk's output (it reproduces the forward, checked at start)
    assert "trunk cache: the output of layers 0-0" in capsys.readouterr().err
    assert list((tmp_path / "cache").rglob("*.trunk"))

    final = run_dir / "final"
    adapter = json.loads((final / "adapter_config.json").read_text())
    saved = json.loads((final / "reward_config.json").read_text())
    assert adapter["base_model_name_or_path"] == saved["backbone"] == "tiny-llama" and saved["quantization"] == "4bit"
    assert not (final / "config.json").exists()  # adapters + heads only: nothing merged into 4-bit weights
    scorer = RewardScorer.from_pretrained(final, toxicity=None, precision="fp32")
    assert is_quantized(scorer.model.hf_model)
    prompts, responses = ["Tell me about bread.", "Hi"], ["I am glad to help you.", "Go away."]
    loaded = scorer.score_heads(prompts, responses)
    scorer.model = model  # the trained model in memory, through the same encoder
    expected = scorer.score_heads(prompts, responses)
    for head in loaded:
        torch.testing.assert_close(loaded[head], expected[head], rtol=1e-4, atol=1e-5)


def test_a_quantized_reward_model_names_a_zoo_backbone_by_its_zoo_name(bnb):
    """Given the zoo model's cache folder (what resolve_model returns), reward_config.json's ``backbone`` is the
    zoo name, which another machine resolves by pulling it, not this machine's cache path."""
    from reward_models.config import RewardStageConfig
    from reward_models.model import new_reward_model
    from rlhf.models.zoo import resolve_model

    lora = RewardStageConfig().lora
    lora.enabled = True
    _, _, scoring = new_reward_model(resolve_model("tiny-bert"), lora, 64, 16, quantization="4bit")
    assert scoring.backbone == "tiny-bert"
