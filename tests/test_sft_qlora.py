"""QLoRA in the SFT stage: LoRA on a base loaded 4-bit NF4 through bitsandbytes, on the tiny random model.
The base stays quantized and frozen, the adapters learn, final/ is a standard adapter that loads onto the
float base; the settings that cannot run are refused with one line before any model loads."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from rlhf.stages import STAGES
from rlhf.core.config import ConfigError, load_config
from rlhf.models.quantization import check_backend, is_quantized, load_kwargs
from rlhf.sft.config import SFTStageConfig

cli = STAGES["sft"].cli

TINY = Path(__file__).resolve().parents[1] / "pipelines" / "configs" / "sft_tiny.yaml"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("flags, message", [
    (("--model.quantization", "4bit", "--lora.enabled", "false"), "model.quantization: a 4bit base is frozen"),
    (("--model.quantization", "4bit", "--train.save_merged", "true"), "train.save_merged: merging into quantized"),
    (("--model.quantization", "2bit"), "model.quantization"),
])
def test_impossible_quantized_settings_are_one_line(flags, message, capsys):
    assert cli(["--config", str(TINY), *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_a_missing_backend_is_one_line(monkeypatch):
    check_backend("none")  # needs nothing
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import bitsandbytes now raises ImportError
    with pytest.raises(ConfigError, match=r"model.quantization: 4bit needs bitsandbytes.*rlhf\[qlora\]"):
        check_backend("4bit")


def test_8bit_and_4bit_bases_load_and_run_a_forward(bnb):
    from rlhf.models.zoo import load_causal_lm

    ids = torch.arange(3, 20).unsqueeze(0)  # (1, 17)
    full = load_causal_lm("tiny-llama").eval()
    with torch.no_grad():
        expected = full(input_ids=ids).logits
        for kind in ("8bit", "4bit"):
            model = load_causal_lm("tiny-llama", **load_kwargs(kind)).eval()
            assert is_quantized(model) and model.get_memory_footprint() < full.get_memory_footprint(), kind
            logits = model(input_ids=ids).logits  # (1, 17, V): close to the float model's, not equal
            assert torch.isfinite(logits).all() and not torch.equal(logits, expected), kind


def test_qlora_trains_adapters_on_a_4bit_base_and_final_loads(tmp_path, bnb):

    from pipelines.sft import main
    from rlhf.models.generation import GenerationSettings, generate_chat
    from rlhf.models.policies import load_policy
    from rlhf.models.zoo import load_causal_lm

    base = load_causal_lm("tiny-llama", **load_kwargs("4bit"))
    assert is_quantized(base) and any(isinstance(m, bnb.nn.Linear4bit) for m in base.modules())
    assert base.get_memory_footprint() < load_causal_lm("tiny-llama").get_memory_footprint()

    cfg, _ = load_config(SFTStageConfig, ["--config", str(TINY), "--model.quantization", "4bit",
                                          "--run.output_dir", str(tmp_path), "--run.run_name", "q",
                                          "--forgetting.enabled", "false"])
    run_dir = main(cfg)
    losses = [r["loss/train"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
              if "loss/train" in r]
    # measured: 6.932 -> 6.871 (means of the first and last 3 steps; the tiny model's outputs start near-uniform)
    assert len(losses) == cfg.train.max_steps and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.03, losses
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["eval/loss_after"] < summary["eval/loss_before"]
    adapter = json.loads((run_dir / "final" / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "LORA"
    policy = load_policy("qlora", str(run_dir / "final"))  # the adapter on the float base it was trained over
    out = generate_chat(policy.model, policy.tokenizer, [[{"role": "user", "content": "Hello"}]],
                        GenerationSettings(max_new_tokens=4, do_sample=False))
    assert len(out) == 1


def test_adapters_below_a_4bit_layer_still_learn_after_an_eval_forward(bnb):
    """bitsandbytes repacks a 4-bit weight for CPU inference at its first no-grad eval forward (AVX512-BF16
    machines), and that layout has no backward; keep_backward stops it, so q_proj's LoRA, whose only way to the
    loss crosses the quantized o_proj and MLP, keeps its gradient after an eval loss or a rollout."""
    from rlhf.models.lora import LoraConfig, add_lora
    from rlhf.models.quantization import keep_backward
    from rlhf.models.zoo import load_causal_lm

    torch.manual_seed(0)
    model = add_lora(keep_backward(load_causal_lm("tiny-llama", **load_kwargs("4bit"))),
                     LoraConfig(target_modules=["q_proj"]))
    ids = torch.arange(3, 20).unsqueeze(0)  # (1, 17)
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)  # what an eval loss, a dev score or a rollout does before the updates
    model.train()
    model(input_ids=ids).logits.square().mean().backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
