"""QLoRA in the RL stage: the policy's base loaded 4-bit NF4 through bitsandbytes under the LoRA (tiny random
Llama, toy reward). The fast sampler's tricks switch themselves off (plain sampler, no packing, no frozen trunk),
PPO and a critic-free estimator (GRPO) train with finite losses, the base stays quantized and unchanged, and
final/adapter names the float SFT start (nothing merged into 4-bit weights); impossible settings are one line."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from pipelines.ppo import main
from rlhf.stages import STAGES
from rlhf.core.config import RunConfig, load_config
from rlhf.rl.config import RLStageConfig
from rlhf.models.quantization import is_quantized

cli = STAGES["ppo"].cli

TINY = Path(__file__).resolve().parents[1] / "pipelines" / "configs" / "ppo_tiny.yaml"
SMALL = ["--train.max_steps", "2", "--train.save_steps", "0", "--train.sample_every", "0", "--update.batch_size", "4",
         "--update.mini_batch_size", "4", "--update.micro_batch_size", "2", "--update.epochs", "1", "--data.eval_prompts", "0",
         "--generation.max_new_tokens", "6", "--model.quantization", "4bit"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_full_fine_tuning_of_a_quantized_base_is_one_line(capsys, tmp_path):
    assert cli(["--config", str(TINY), "--run.output_dir", str(tmp_path), "--model.quantization", "4bit",
                "--lora.enabled", "false"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.quantization: a 4bit base is frozen; train adapters on it " \
                                   "(lora.enabled true)" in err, err


def test_a_missing_backend_is_one_line_before_any_model_loads(monkeypatch, capsys, tmp_path):
    import rlhf.models.policies

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import bitsandbytes now raises ImportError
    monkeypatch.setattr(rlhf.models.policies, "load_weights", lambda *a, **k: pytest.fail("a model was loaded"))
    assert cli(["--config", str(TINY), "--run.output_dir", str(tmp_path), "--model.quantization", "8bit"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.quantization: 8bit needs bitsandbytes" in err, err
    assert not any(tmp_path.iterdir())  # no run folder either


def test_the_fast_sampler_switches_off_on_a_quantized_base(capsys, bnb):
    from rlhf.rl.policy import build_actor_critic
    from rlhf.rl.sampler import FastSampler, make_sampler
    from rlhf.models.sampling import PlainSampler

    cfg, _ = load_config(RLStageConfig, ["--config", str(TINY), *SMALL])
    assert cfg.model.sampler == "fast" and cfg.model.pack_sequences and cfg.model.reuse_trunk
    model = build_actor_critic(cfg.model, cfg.lora, torch.float32)
    assert model.quantized and any(isinstance(m, bnb.nn.Linear4bit) for m in model.causal_lm.modules())
    assert model.trunk_depth == 0 and not model.pack_sequences
    assert isinstance(make_sampler(model, "fast"), PlainSampler)
    err = capsys.readouterr().err
    assert "model.quantization 4bit: the fast sampler" in err and "plain sampler, unpacked" in err, err
    # the same settings on the float base keep every trick (the switch is the quantization, nothing else)
    cfg.model.quantization = "none"
    float_model = build_actor_critic(cfg.model, cfg.lora, torch.float32)
    assert float_model.trunk_depth == 1 and float_model.pack_sequences
    assert isinstance(make_sampler(float_model, "fast"), FastSampler)


@pytest.mark.parametrize("algo", ["ppo", "grpo"])
def test_rl_trains_lora_on_a_4bit_base_and_final_adapter_names_the_float_start(algo, tmp_path, tiny_llama_path,
                                                                               monkeypatch, bnb):
    from rlhf.rl import factory
    from rlhf.rl import trainer as rl_trainer
    from rlhf.models.policies import load_policy

    kept = []

    class Keeping(rl_trainer.RLTrainer):  # the trained model, to compare its weights with the start's
        def __init__(self, cfg, model, *args, **kwargs):
            kept.append((model, {n: p.detach().clone() for n, p in model.named_parameters()}))
            super().__init__(cfg, model, *args, **kwargs)

    monkeypatch.setattr(factory, "RLTrainer", Keeping)  # the stage builds its trainer in rlhf.rl.factory
    extra = ["--rl.samples_per_prompt", "2", "--update.batch_size", "2"] if algo == "grpo" else []
    cfg, _ = load_config(RLStageConfig, ["--config", str(TINY), *SMALL, "--rl.algo", algo, *extra])
    cfg.run = RunConfig(output_dir=str(tmp_path), run_name=algo, wandb_mode="disabled")
    run_dir = main(cfg)

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss/policy"] for r in records if "loss/policy" in r]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses), losses
    (model, before), = kept
    frozen = {n: p for n, p in model.named_parameters() if not p.requires_grad}
    assert any(isinstance(p, bnb.nn.Params4bit) for p in frozen.values())
    assert all(torch.equal(p, before[n]) for n, p in frozen.items())  # the quantized base is unchanged
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    # PPO's value loss reaches the LoRA through the quantized layers at once; GRPO's toy rewards are all 0 at the
    # start on the random model (no " the" sampled), so its advantages and update are 0: it only has to run
    assert algo != "ppo" or any("lora_B" in n for n in changed), changed

    final = run_dir / "final"
    base = json.loads((final / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert base == "tiny-llama"  # the float SFT start (its zoo name: portable), not a quantized copy
    assert not (final / "config.json").exists()  # no merge into quantized weights
    assert (final / "value_head.safetensors").exists() == (algo == "ppo")
    policy = load_policy(algo, str(final))  # the adapter on the float base, as evaluation loads it
    assert policy.kind == "adapter" and not is_quantized(policy.model)
    with torch.no_grad():
        assert torch.isfinite(policy.model(input_ids=torch.arange(3, 12).unsqueeze(0)).logits).all()
