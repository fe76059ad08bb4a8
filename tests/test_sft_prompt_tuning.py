"""Prompt tuning in the SFT stage, on the tiny random model: only the soft prompt learns, the loss falls,
final/ is a standard PEFT adapter that ``rlhf.models.policies`` loads and generates from, and the key
combinations that cannot work are refused with one line before any model loads."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from rlhf.stages import STAGES
from rlhf.core.config import ConfigError, load_config
from rlhf.sft.config import SFTStageConfig
from rlhf.sft.data import encode_records, to_dataset, training_mixture
from rlhf.sft.trainer import MetricsLoggerCallback, build_trainer, save_final, stage_peft_config
from rlhf.core.tracking import MetricsLogger

cli = STAGES["sft"].cli

TINY = Path(__file__).resolve().parents[1] / "pipelines" / "configs" / "sft_tiny.yaml"
PT = ("--lora.enabled", "false", "--prompt_tuning.enabled", "true")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_cfg(out: Path, *flags: str) -> SFTStageConfig:
    cfg, _ = load_config(SFTStageConfig, ["--config", str(TINY), "--run.output_dir", str(out),
                                          "--run.run_name", "test", "--forgetting.enabled", "false", *flags])
    return cfg


# ---------------------------------------------------------------- config


@pytest.mark.parametrize("flags, key", [
    (("--prompt_tuning.enabled", "true"), "prompt_tuning.enabled: LoRA is on as well"),
    ((*PT, "--prompt_tuning.num_virtual_tokens", "0"), "prompt_tuning.num_virtual_tokens: 0 is outside its range [1, 1000000]"),
    ((*PT, "--train.save_merged", "true"), "train.save_merged: a soft prompt cannot be merged"),
    ((*PT, "--train.packing", "true"), "train.packing: prompt tuning"),
    (("--prompt_tuning.tokens", "20"), "prompt_tuning.tokens"),
])
def test_bad_prompt_tuning_combinations_are_one_line(flags, key, capsys):
    assert cli(["--config", str(TINY), *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and key in err, err


def test_method_and_peft_config():
    cfg, _ = load_config(SFTStageConfig, ["--config", str(TINY), *PT, "--prompt_tuning.num_virtual_tokens", "30"])
    assert cfg.method == "prompt_tuning"
    pt = stage_peft_config(cfg, 2)
    assert pt.peft_type.value == "PROMPT_TUNING" and pt.num_virtual_tokens == 30
    assert pt.prompt_tuning_init.value == "TEXT" and pt.prompt_tuning_init_text == cfg.prompt_tuning.init_text
    cfg.prompt_tuning.init_text = ""
    assert stage_peft_config(cfg, 2).prompt_tuning_init.value == "RANDOM"
    assert load_config(SFTStageConfig, [])[0].method == "lora"
    assert load_config(SFTStageConfig, ["--lora.enabled", "false"])[0].method == "full"
    with pytest.raises(ConfigError, match="lora.enabled false"):
        load_config(SFTStageConfig, ["--prompt_tuning.enabled", "true"])


# ---------------------------------------------------------------- training, saving, loading


@pytest.fixture(scope="module")
def pt_trained(tiny_llama_path, tmp_path_factory):
    """A prompt-tuning trainer trained in-process, with a snapshot of the model it started from."""
    from rlhf.models.zoo import load_causal_lm, load_tokenizer

    run_dir = tmp_path_factory.mktemp("pt")
    cfg = tiny_cfg(run_dir, *PT, "--prompt_tuning.num_virtual_tokens", "20", "--train.learning_rate", "0.1",
                   "--train.max_steps", "12")
    tokenizer, model = load_tokenizer(cfg.model.name), load_causal_lm(cfg.model.name)
    start = {name: p.detach().clone() for name, p in model.named_parameters()}
    encoded, _ = encode_records(tokenizer, training_mixture(cfg.data, cfg.run.seed), cfg.train.max_length)
    # one batch, seen every step: the loss it reports is comparable from step to step. (A soft prompt moves the
    # tiny random model's near-uniform outputs only a little, which batch-to-batch noise would hide.)
    encoded = encoded[: cfg.train.batch_size]
    tracker = MetricsLoggerCallback(MetricsLogger(run_dir, cfg.run, "sft", enabled=False))
    trainer = build_trainer(cfg, model, tokenizer, to_dataset(encoded), None, run_dir, tracker, bf16=False)
    init = trainer.model.get_prompt_embedding_to_save("default").detach().clone()  # (20, hidden)
    trainer.train()
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    return SimpleNamespace(cfg=cfg, trainer=trainer, tokenizer=tokenizer, start=start, init=init, run_dir=run_dir,
                           encoded=encoded, losses=losses)


def test_only_the_soft_prompt_learns_and_the_loss_falls(pt_trained):
    model = pt_trained.trainer.model
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("prompt_encoder" in name for name in trainable), trainable
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert n_trainable == 20 * model.config.hidden_size
    for name, param in model.base_model.named_parameters():
        assert torch.equal(param, pt_trained.start[name]), name
    learned = model.get_prompt_embedding_to_save("default")
    assert not torch.allclose(learned, pt_trained.init)
    losses = pt_trained.losses
    # one batch every step: measured 6.935 -> 6.901, falling at every step (the tiny model's ceiling is low)
    assert len(losses) == 12 and losses[-1] < losses[0] - 0.02 and min(losses[1:]) < losses[0], losses


def test_text_init_starts_from_the_texts_embeddings(pt_trained):
    """peft's TEXT init: the init text's token embeddings, repeated to the soft prompt's length."""
    ids = pt_trained.tokenizer(pt_trained.cfg.prompt_tuning.init_text)["input_ids"]
    ids = (ids * 20)[:20]
    word_embeddings = pt_trained.start["model.embed_tokens.weight"]
    torch.testing.assert_close(pt_trained.init, word_embeddings[ids])


def test_final_is_a_soft_prompt_that_loads_as_a_policy_and_generates(pt_trained):
    from rlhf.models.generation import GenerationSettings, generate_chat
    from rlhf.models.policies import PolicyLoadError, load_policy, merged_adapter
    from rlhf.models.zoo import load_causal_lm

    trainer = pt_trained.trainer
    ids = torch.tensor([pt_trained.encoded[0].input_ids[:40]])  # (1, 40)
    trainer.model.eval()
    with torch.no_grad():
        expected = trainer.model(input_ids=ids).logits  # (1, 20 + 40, V): the 20 virtual tokens' positions first
    final = Path(save_final(trainer, pt_trained.tokenizer, pt_trained.run_dir, save_merged=False)["final"])
    config = json.loads((final / "adapter_config.json").read_text())
    assert config["peft_type"] == "PROMPT_TUNING" and config["num_virtual_tokens"] == 20
    # portable: the zoo name, not the cache folder peft read the base and the init text's tokenizer from (issue 25)
    assert config["base_model_name_or_path"] == "tiny-llama" and config.get("tokenizer_name_or_path") in (None, "tiny-llama")
    from safetensors.torch import load_file

    saved = load_file(final / "adapter_model.safetensors")
    assert list(saved) == ["prompt_embeddings"] and saved["prompt_embeddings"].shape == (20, trainer.model.config.hidden_size)

    policy = load_policy("pt", str(final))
    assert policy.kind == "adapter" and policy.has_reference
    with torch.no_grad():
        logits = policy.model(input_ids=ids).logits
        torch.testing.assert_close(logits, expected)
        with policy.reference() as reference:  # the soft prompt switched off: the base model
            base_logits = reference(input_ids=ids).logits
    torch.testing.assert_close(base_logits, load_causal_lm("tiny-llama").eval()(input_ids=ids).logits)
    assert logits.shape[1] == 20 + ids.shape[1] and not torch.allclose(base_logits, logits[:, 20:])
    chats = [[{"role": "user", "content": "Summarize: #Person1#: Hi. #Person2#: Hello."}]] * 2
    responses = generate_chat(policy.model, policy.tokenizer, chats, GenerationSettings(max_new_tokens=6, do_sample=False))
    assert len(responses) == 2 and responses[0] == responses[1]
    with pytest.raises(PolicyLoadError, match="soft prompt.*cannot be merged"):
        merged_adapter(load_causal_lm("tiny-llama"), final)


def test_stage_script_runs_prompt_tuning_end_to_end(tmp_path):
    """The stage script with prompt tuning: it trains (the eval loss moved), samples are generated, final/ is
    the soft prompt."""
    from pipelines.sft import main

    run_dir = main(tiny_cfg(tmp_path, *PT, "--train.learning_rate", "0.1"))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["train/steps"] == 8 and summary["eval/loss_after"] != summary["eval/loss_before"]
    assert json.loads((run_dir / "final" / "adapter_config.json").read_text())["peft_type"] == "PROMPT_TUNING"
    assert len((run_dir / "samples.jsonl").read_text().splitlines()) == 2
