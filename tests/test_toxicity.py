"""Detoxify from local files only, through the real Detoxify class, never unpickling arbitrary objects."""
from __future__ import annotations

import logging
import pickle
from pathlib import Path

import pytest
import torch

from reward_models.config import ToxicitySettings
from reward_models.toxicity import (JIGSAW_CLASSES, ToxicityScorer, convert_detoxify_checkpoint, load_toxicity,
                                    write_detoxify_checkpoint)

TEXTS = ["You are wonderful.", "I will hurt you, idiot.", "The sky is blue today."]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_toxic_bert(tiny_bert_path):
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_path)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                        num_attention_heads=2, num_labels=len(JIGSAW_CLASSES), pad_token_id=tokenizer.pad_token_id)
    return BertForSequenceClassification(config).eval(), tokenizer


@pytest.fixture()
def tiny_detoxify(tmp_path, tiny_bert_path):
    model, tokenizer = tiny_toxic_bert(tiny_bert_path)
    settings = write_detoxify_checkpoint(model, tokenizer, tmp_path / "detoxify")
    return settings, model, tokenizer


def test_tiny_checkpoint_scores_like_the_real_detoxify_class(tiny_detoxify):
    from detoxify import Detoxify

    settings, model, tokenizer = tiny_detoxify
    scorer = ToxicityScorer(settings)
    assert scorer.class_names[0] == "toxicity"  # Detoxify's name for Jigsaw's "toxic"
    scores = scorer.score(TEXTS)
    assert scores.shape == (3,) and ((scores >= 0) & (scores <= 1)).all()
    with torch.no_grad():
        expected = torch.sigmoid(model(**tokenizer(TEXTS, return_tensors="pt", padding=True)).logits[:, 0])
    assert torch.allclose(scores, expected, atol=1e-5)
    # the package itself, on this trusted local file (it unpickles freely, which is why we do not use it)
    detoxify = Detoxify(checkpoint=settings.checkpoint, huggingface_config_path=settings.huggingface_config_path)
    assert detoxify.class_names == scorer.class_names
    assert torch.allclose(scores, torch.tensor(detoxify.predict(TEXTS)["toxicity"]), atol=1e-5)
    assert scorer.score(TEXTS[:1]).shape == (1,)


def test_checkpoint_in_detoxify_format_loads_weights_only(tiny_detoxify):
    settings, _, _ = tiny_detoxify
    loaded = torch.load(settings.checkpoint, weights_only=True)
    assert set(loaded) == {"config", "state_dict"}
    assert loaded["config"]["dataset"]["args"]["classes"] == JIGSAW_CLASSES


class _Payload:
    """Unpickling this would create a file: proof that arbitrary code ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_checkpoint_with_pickled_objects_is_refused(tiny_detoxify, tmp_path):
    settings, _, _ = tiny_detoxify
    marker = tmp_path / "pwned"
    loaded = torch.load(settings.checkpoint, weights_only=True)
    loaded["config"]["payload"] = _Payload(str(marker))
    evil = tmp_path / "evil.ckpt"
    torch.save(loaded, evil)
    with pytest.raises(pickle.UnpicklingError):
        ToxicityScorer(ToxicitySettings(checkpoint=str(evil), huggingface_config_path=settings.huggingface_config_path))
    assert not marker.exists()


def test_no_checkpoint_means_unavailable_with_one_log_line(caplog):
    with caplog.at_level(logging.WARNING, logger="reward_models.toxicity"):
        assert load_toxicity(ToxicitySettings()) is None
    lines = [r.getMessage() for r in caplog.records if r.name == "reward_models.toxicity"]
    assert len(lines) == 1 and "toxicity unavailable" in lines[0]


def test_a_configured_checkpoint_that_is_missing_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_toxicity(ToxicitySettings(checkpoint=str(tmp_path / "nope.ckpt"), huggingface_config_path=str(tmp_path)))


def test_unknown_label_is_an_error(tiny_detoxify):
    settings, _, _ = tiny_detoxify
    settings.label = "rudeness"
    with pytest.raises(ValueError, match="rudeness"):
        ToxicityScorer(settings)


def test_a_downloaded_style_checkpoint_converts_to_a_local_one(tmp_path, tiny_bert_path):
    """Real Detoxify checkpoints name a hub model ("bert-base-uncased"); the converted one needs no hub."""
    model, tokenizer = tiny_toxic_bert(tiny_bert_path)
    base = tmp_path / "base"
    model.config.save_pretrained(base)
    tokenizer.save_pretrained(base)
    downloaded = tmp_path / "toxic_original.ckpt"
    torch.save({"config": {"arch": {"args": {"model_type": "bert-base-uncased", "model_name": "BertForSequenceClassification",
                                              "tokenizer_name": "AutoTokenizer", "num_classes": 6}},
                           "dataset": {"args": {"classes": JIGSAW_CLASSES}}},
                "state_dict": model.state_dict(), "epoch": 3}, downloaded)
    settings = convert_detoxify_checkpoint(downloaded, base, tmp_path / "converted")
    scores = ToxicityScorer(settings).score(TEXTS)
    with torch.no_grad():
        expected = torch.sigmoid(model(**tokenizer(TEXTS, return_tensors="pt", padding=True)).logits[:, 0])
    assert torch.allclose(scores, expected, atol=1e-5)


def test_reward_scorer_subtracts_weighted_toxicity(tmp_path, tiny_bert_path, tiny_detoxify):
    from reward_models.model import new_reward_model, save_reward_model
    from reward_models.scoring import RewardScorer

    settings, _, _ = tiny_detoxify
    settings.weight = 3.0
    model, encoder, scoring = new_reward_model(tiny_bert_path, max_length=64)
    scoring.toxicity = settings
    save_reward_model(model, encoder, scoring, tmp_path / "rm")
    with_tox = RewardScorer.from_pretrained(tmp_path / "rm", precision="fp32")  # settings from reward_config.json
    without = RewardScorer.from_pretrained(tmp_path / "rm", toxicity=None, precision="fp32")
    prompts = ["hi"] * 3
    a, b = with_tox.score(prompts, TEXTS), without.score(prompts, TEXTS)
    assert a.toxicity is not None and b.toxicity is None
    assert torch.allclose(a.composite, b.composite - 3.0 * a.toxicity, atol=1e-5)
    assert "toxicity" in a.as_metrics() and "toxicity" not in b.as_metrics()
