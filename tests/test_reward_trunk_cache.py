"""The frozen-trunk feature cache of reward training (reward_models/trunk_cache.py), on tiny random models.

Cached and uncached paths must give the same loss and the same gradients on every trainable parameter;
a cache is never read for other backbone weights or other texts, and a damaged file is named and recomputed.
"""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from reward_models import trunk_cache
from reward_models.data import head_mask
from reward_models.losses import pairwise_loss
from reward_models.model import new_reward_model
from reward_models.train import train_reward_model
from rlhf.models.lora import LoraConfig
from rlhf.data.records import PreferenceRecord
from rlhf.core.tracking import read_metrics
from tests.test_reward_train import tiny_config, toy_preferences

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PAIRS = [PreferenceRecord(prompt=f"Question {i}: what do you know about {topic}?",
                          chosen=f"Here is what I know about {topic}: quite a lot, happily.",
                          rejected=f"{topic} is boring." * (1 + i % 3), dimension=[dim])
         for i, (topic, dim) in enumerate([("bread", "helpful"), ("rivers", "honest"), ("taxes", "harmless"),
                                           ("chess", "helpful"), ("rain", "honest"), ("maps", "harmless")])]
# Float32 on CPU: the cached path runs the very same kernels on the very same trunk output, so it agrees to
# rounding; the tolerance leaves room for a different reduction order on other hardware.
RTOL, ATOL = 1e-5, 1e-6


def build(backbone: str, setup: str):
    """A seeded reward model: LoRA on the top layer only (the trunk is layer 0), or a frozen backbone."""
    torch.manual_seed(0)
    lora = LoraConfig(enabled=True, dropout=0.0, target_modules=[], layers=[-1]) if setup == "lora-top" else None
    model, encoder, _ = new_reward_model(backbone, lora, max_length=64, min_prompt_tokens=16,
                                         freeze_backbone=setup == "frozen")
    if lora is not None:  # peft starts LoRA B at zero: make the adapters matter, so their gradients are tested
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.1)
    return model, encoder


def sequences(encoder, pairs=PAIRS):
    prompts = [p.prompt for p in pairs]
    return encoder.encode(prompts, [p.chosen for p in pairs]) + encoder.encode(prompts, [p.rejected for p in pairs])


def loss_and_grads(model, batch_of, pairs=PAIRS):
    """The training loss on ``pairs`` and the gradient of every trainable parameter (eval mode: no dropout)."""
    model.eval()
    model.zero_grad(set_to_none=True)
    n = len(pairs)
    scores = model(**batch_of(list(range(2 * n))))  # (2n, heads): chosen rows, then rejected
    loss, _, _ = pairwise_loss(scores[:n], scores[n:], head_mask(pairs))
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("backbone", ["tiny-llama", "tiny-bert"])
@pytest.mark.parametrize("setup", ["lora-top", "frozen"])
def test_cached_and_uncached_paths_give_the_same_loss_and_gradients(tmp_path, backbone, setup):
    model, encoder = build(backbone, setup)
    seqs = sequences(encoder)
    inputs = trunk_cache.model_inputs(model, "auto", tmp_path, bf16=False, sample=seqs[:2],
                                      pad_token_id=encoder.pad_token_id)
    assert isinstance(inputs, trunk_cache.TrunkCache)
    assert inputs.trunk == (trunk_cache.TrunkSpec(2, pooled=True) if setup == "frozen" else trunk_cache.TrunkSpec(1))
    cached_loss, cached_grads = loss_and_grads(model, inputs.batches(seqs, encoder.pad_token_id))
    plain_loss, plain_grads = loss_and_grads(model, trunk_cache.PlainInputs().batches(seqs, encoder.pad_token_id))
    assert cached_loss.item() == pytest.approx(plain_loss.item(), rel=RTOL, abs=ATOL)
    assert set(cached_grads) == set(plain_grads) and cached_grads
    expected = "lora_" if setup == "lora-top" else ("score" if backbone == "tiny-llama" else "classifier")
    assert any(expected in name for name in cached_grads)
    for name, grad in plain_grads.items():
        assert grad.abs().sum() > 0 or "lora_A" not in name  # a gradient that is there for real
        torch.testing.assert_close(cached_grads[name], grad, rtol=RTOL, atol=ATOL, msg=name)
    # what the cache keeps is a batch's width, one vector per sequence for a frozen backbone
    batch = inputs.batches(seqs, encoder.pad_token_id)([0, 1])
    hidden = model.hf_model.config.hidden_size
    assert batch["trunk_hidden"].shape == ((2, hidden) if setup == "frozen" else (2, batch["input_ids"].shape[1], hidden))


def test_a_full_fine_tune_or_trunk_cache_off_runs_plain(tmp_path):
    torch.manual_seed(0)
    model, encoder, _ = new_reward_model("tiny-llama", max_length=64)
    seqs = sequences(encoder)
    assert trunk_cache.find_trunk(model) is None  # every layer and the embedding train
    assert isinstance(trunk_cache.model_inputs(model, "auto", tmp_path, False, seqs[:2], encoder.pad_token_id),
                      trunk_cache.PlainInputs)
    model, encoder = build("tiny-llama", "lora-top")
    assert isinstance(trunk_cache.model_inputs(model, "off", tmp_path, False, seqs[:2], encoder.pad_token_id),
                      trunk_cache.PlainInputs)
    assert model.trunk is None and not any(tmp_path.iterdir())


def test_a_second_run_reads_the_file_and_new_weights_or_texts_compute_a_new_one(tmp_path):
    model, encoder = build("tiny-llama", "lora-top")
    seqs = sequences(encoder)
    first = trunk_cache.model_inputs(model, "auto", tmp_path, False, seqs[:2], encoder.pad_token_id)
    first.batches(seqs, encoder.pad_token_id)
    again = trunk_cache.model_inputs(model, "auto", tmp_path, False, seqs[:2], encoder.pad_token_id)
    reference = loss_and_grads(model, again.batches(seqs, encoder.pad_token_id))[0]
    assert (first.computed, again.computed) == (1, 0)  # the second one read the first one's file
    assert len(list(tmp_path.rglob("*.trunk"))) == 1

    # other texts: one changed response is another set of sequences, so another file
    changed = [*PAIRS[:-1], PreferenceRecord(prompt=PAIRS[-1].prompt, chosen="A different answer.",
                                             rejected=PAIRS[-1].rejected, dimension=["harmless"])]
    again.batches(sequences(encoder, changed), encoder.pad_token_id)
    assert again.computed == 1 and len(list(tmp_path.rglob("*.trunk"))) == 2

    # other backbone weights (a frozen weight in the trunk): another backbone key, so another folder
    with torch.no_grad():
        model.hf_model.model.embed_tokens.weight.mul_(1.5)
    moved = trunk_cache.model_inputs(model, "auto", tmp_path, False, seqs[:2], encoder.pad_token_id)
    assert moved.folder != again.folder
    moved_loss = loss_and_grads(model, moved.batches(seqs, encoder.pad_token_id))[0]
    plain_loss = loss_and_grads(model, trunk_cache.PlainInputs().batches(seqs, encoder.pad_token_id))[0]
    assert moved.computed == 1 and moved_loss.item() == pytest.approx(plain_loss.item(), rel=RTOL, abs=ATOL)
    assert moved_loss.item() != pytest.approx(reference.item(), rel=1e-3)  # the old features would have been wrong


def test_runs_that_differ_only_in_the_score_heads_initialisation_share_one_cache(tmp_path):
    """A seed changes the score head (and peft's frozen copy of it), never the trunk's output."""
    model, encoder = build("tiny-llama", "lora-top")
    seqs = sequences(encoder)
    first = trunk_cache.model_inputs(model, "auto", tmp_path, False, seqs[:2], encoder.pad_token_id)
    first.batches(seqs, encoder.pad_token_id)
    with torch.no_grad():
        for param in trunk_cache.head_of(model).parameters():  # trainable and frozen copies alike
            param.normal_(0, 1.0)
    again = trunk_cache.model_inputs(model, "auto", tmp_path, False, seqs[:2], encoder.pad_token_id)
    again.batches(seqs, encoder.pad_token_id)
    assert again.folder == first.folder and (first.computed, again.computed) == (1, 0)


@pytest.mark.parametrize("damage", ["truncated", "foreign", "garbage"])
def test_a_damaged_cache_file_is_named_in_one_line_and_recomputed(tmp_path, capsys, damage):
    model, encoder = build("tiny-bert", "lora-top")
    seqs = sequences(encoder)
    inputs = trunk_cache.model_inputs(model, "auto", tmp_path, False, seqs[:2], encoder.pad_token_id)
    good = loss_and_grads(model, inputs.batches(seqs, encoder.pad_token_id))[0]
    path = next(tmp_path.rglob("*.trunk"))
    if damage == "truncated":  # a write cut short: the header is fine, the data is not all there
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size - 100)
    elif damage == "foreign":  # a whole, valid file made for other texts, under this file's name
        inputs.batches(sequences(encoder, PAIRS[:3]), encoder.pad_token_id)  # writes the other file
        foreign = next(p for p in tmp_path.rglob("*.trunk") if p != path)
        shutil.copyfile(foreign, path)
    else:
        path.write_bytes(b"not a cache file at all")
    capsys.readouterr()
    fresh = trunk_cache.model_inputs(model, "auto", tmp_path, False, seqs[:2], encoder.pad_token_id)
    again = loss_and_grads(model, fresh.batches(seqs, encoder.pad_token_id))[0]
    lines = [line for line in capsys.readouterr().err.splitlines() if "trunk cache" in line]
    assert len(lines) == 1 and str(path) in lines[0] and "recomputing" in lines[0]
    assert fresh.computed == 1 and again.item() == pytest.approx(good.item(), rel=RTOL, abs=ATOL)
    trunk_cache.check_file(path, trunk_cache.read_header(path))  # whole again
    assert not list(tmp_path.rglob("*.tmp"))  # the temporary file was renamed into place


def test_a_backbone_whose_forward_the_trunk_cannot_reproduce_falls_back_with_one_warning(tmp_path, capsys):
    """GPT-2 adds position embeddings after its word embedding: the trunk's output cannot stand in for it."""
    from transformers import GPT2Config, GPT2ForSequenceClassification

    from reward_models.encoding import Encoded
    from reward_models.model import RewardModel, head_config_kwargs
    from rlhf.models.lora import add_lora

    torch.manual_seed(0)
    hf = GPT2ForSequenceClassification(GPT2Config(vocab_size=97, n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                                  pad_token_id=0, **head_config_kwargs()))
    model = RewardModel(add_lora(hf, LoraConfig(enabled=True, target_modules=[], layers=[-1]), task_type="SEQ_CLS"),
                        "last_token")
    assert trunk_cache.find_trunk(model) == trunk_cache.TrunkSpec(1)
    inputs = trunk_cache.model_inputs(model, "auto", tmp_path, False, [Encoded([5, 6, 7, 8]), Encoded([9, 10])], 0)
    assert isinstance(inputs, trunk_cache.PlainInputs) and model.trunk is None
    warnings = [line for line in capsys.readouterr().err.splitlines() if "trunk_cache is off" in line]
    assert len(warnings) == 1 and "GPT2ForSequenceClassification" in warnings[0]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_with_the_cache_matches_training_without_it(tmp_path, precision):
    """fp32: the same to rounding. bf16: the cache keeps the trunk's output in bf16 where the uncached path
    carries it in fp32 (autocast keeps the residual stream fp32), so losses differ at bf16's rounding. bf16 is
    asked for, not ``auto``: a CPU without native bf16 matmuls emulates them (slower, the same rounding), so the
    test runs everywhere instead of skipping."""
    tolerance = {"fp32": dict(rel=1e-4, abs=1e-5), "bf16": dict(rel=1e-2, abs=1e-3)}[precision]
    data_file = toy_preferences(tmp_path / "toy.jsonl", per_head=16)
    runs = {}
    for mode in ("auto", "off"):
        cfg = tiny_config(tmp_path / mode, data_file, max_steps=12, batch_size=4, trunk_cache=mode,
                          cache_dir=str(tmp_path / "cache"), precision=precision)
        cfg.model.name, cfg.lora = "tiny-llama", LoraConfig(enabled=True, dropout=0.05, target_modules=[],
                                                                      layers=[-1])
        run_dir = train_reward_model(cfg)
        runs[mode] = ({m["step"]: m["loss/pairwise"] for m in read_metrics(run_dir / "metrics.jsonl")
                       if "loss/pairwise" in m}, json.loads((run_dir / "summary.json").read_text()))
    (cached, cached_summary), (plain, plain_summary) = runs["auto"], runs["off"]
    assert sorted(cached) == list(range(1, 13))
    assert cached == pytest.approx(plain, **tolerance)  # same data order, same dropout draws, same steps
    assert sum(list(cached.values())[-3:]) < sum(list(cached.values())[:3])  # and it learned
    accuracy = {k: v for k, v in cached_summary.items() if "accuracy" in k}
    if precision == "fp32":
        assert accuracy == pytest.approx({k: v for k, v in plain_summary.items() if "accuracy" in k}, abs=1e-6)
    files = list((tmp_path / "cache").rglob("*.trunk"))
    assert len(files) == 3  # train, dev and test sequences; dev is scored twice (accuracy, normalisation) from one file
    assert cached_summary["train/trunk_cache_seconds"] > 0


def test_a_frozen_backbone_trains_only_the_score_head_from_cached_features(tmp_path):
    data_file = toy_preferences(tmp_path / "toy.jsonl", per_head=16)
    cfg = tiny_config(tmp_path, data_file, max_steps=6, batch_size=4, cache_dir=str(tmp_path / "cache"))
    cfg.model.freeze_backbone = True
    run_dir = train_reward_model(cfg)
    assert list((tmp_path / "cache").glob("*-pooled-*"))
    from reward_models.model import load_reward_model

    trained, _, _ = load_reward_model(run_dir / "final")
    torch.manual_seed(0)
    fresh, _, _ = new_reward_model("tiny-bert", max_length=64)
    changed = {name for name, p in trained.hf_model.state_dict().items()
               if not torch.equal(p, fresh.hf_model.state_dict()[name])}
    # the pairwise loss sees only score differences, so the head's bias gets no gradient: only its weight moves
    assert changed == {"classifier.weight"}


def test_freeze_backbone_with_lora_is_a_config_error(tmp_path):
    from rlhf.core.config import ConfigError

    cfg = tiny_config(tmp_path, toy_preferences(tmp_path / "toy.jsonl", per_head=4))
    cfg.model.freeze_backbone, cfg.lora.enabled = True, True
    with pytest.raises(ConfigError, match="model.freeze_backbone"):
        train_reward_model(cfg)


def test_an_sft_adapter_folder_is_a_backbone_with_the_adapter_merged(tmp_path):
    """The SFT stage's final/ is a PEFT adapter on the base: the reward model starts from base + adapter."""
    from peft import get_peft_model
    from peft import LoraConfig as PeftLoraConfig

    from rlhf.models.zoo import load_causal_lm, load_tokenizer, resolve_model

    torch.manual_seed(0)
    base = load_causal_lm("tiny-llama")
    policy = get_peft_model(base, PeftLoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    adapter_dir = tmp_path / "sft" / "final"
    policy.save_pretrained(adapter_dir)
    load_tokenizer("tiny-llama").save_pretrained(adapter_dir)
    assert json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"] == resolve_model("tiny-llama")
    merged = policy.merge_and_unload().eval()

    model, encoder, scoring = new_reward_model(str(adapter_dir), max_length=64)
    assert scoring.input_format == "chat" and scoring.pooling == "last_token"
    ids = torch.tensor([encoder.encode(["hello"], ["hi there"])[0].input_ids])  # (1, T)
    with torch.no_grad():
        want = merged.model(input_ids=ids).last_hidden_state
        got = model.eval().hf_model.model(input_ids=ids).last_hidden_state
        unmerged = load_causal_lm("tiny-llama").model(input_ids=ids).last_hidden_state
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, unmerged, atol=1e-4)  # the adapter is in
    # and it trains a reward model like any backbone (LoRA on the top layer, from cached trunk output)
    data_file = toy_preferences(tmp_path / "toy.jsonl", per_head=8)
    cfg = tiny_config(tmp_path, data_file, max_steps=2, batch_size=4, cache_dir=str(tmp_path / "cache"))
    cfg.model.name = str(adapter_dir)
    cfg.lora = LoraConfig(enabled=True, dropout=0.0, target_modules=[], layers=[-1])
    assert (train_reward_model(cfg) / "final" / "reward_config.json").is_file()


def test_the_pipeline_reruns_the_reward_stage_when_it_uses_the_sft_policy_and_sft_changed(tmp_path):
    from rlhf.pipeline import PipelineConfig, StageSpec, resolve_stage, upstream_of

    cfg = PipelineConfig()
    cfg.run.output_dir = str(tmp_path)
    assert upstream_of(resolve_stage(cfg, "reward")) == ()
    cfg.reward = StageSpec(overrides={"model.name": "{sft}"})
    stage = resolve_stage(cfg, "reward")
    assert stage.config.model.name.endswith("sft/final") and upstream_of(stage) == ("sft",)
