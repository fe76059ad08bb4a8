"""The reward model and its scoring API: heads, pooling, save/reload, composite."""
from __future__ import annotations

import pytest
import torch

from rlhf.models.lora import LoraConfig
from reward_models.encoding import collate
from reward_models.model import last_token_index, load_reward_model, new_reward_model, save_reward_model
from reward_models.scoring import RewardScorer, composite_reward
from reward_models.types import HEADS, RewardScores, Scorer

PROMPTS = ["\n\nHuman: How do I make bread?\n\nAssistant:", "Is the earth flat?", "Summarize: A met B."]
RESPONSES = ["Mix flour, water, yeast and salt, then bake.", "No, it is round.", "A and B met."]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_last_token_index_for_right_and_left_padding():
    right = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 1, 1, 1], [0, 0, 0, 1]])
    assert last_token_index(right).tolist() == [2, 0, 3]
    assert last_token_index(left).tolist() == [3, 3]


def test_composite_follows_the_weights_by_hand():
    heads = {"helpful": torch.tensor([1.0, 3.0]), "honest": torch.tensor([0.0, 2.0]), "harmless": torch.tensor([5.0, 5.0])}
    weights = {"helpful": 2.0, "honest": 1.0, "harmless": 0.0}
    mean = {"helpful": 1.0, "honest": 1.0, "harmless": 0.0}
    std = {"helpful": 2.0, "honest": 0.5, "harmless": 1.0}
    composite = composite_reward(heads, weights, mean, std)
    # 2 * (1-1)/2 + 1 * (0-1)/0.5 = -2 ;  2 * (3-1)/2 + 1 * (2-1)/0.5 = 4
    assert composite.tolist() == pytest.approx([-2.0, 4.0])
    with_tox = composite_reward(heads, weights, mean, std, torch.tensor([0.5, 0.0]), toxicity_weight=2.0)
    assert with_tox.tolist() == pytest.approx([-3.0, 4.0])


def test_the_saved_folder_is_a_plain_hf_classifier_with_named_heads(tmp_path, tiny_bert_path):
    from transformers import AutoModelForSequenceClassification

    model, encoder, scoring = new_reward_model(tiny_bert_path, max_length=64)
    save_reward_model(model, encoder, scoring, tmp_path / "rm")
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm")
    assert hf.config.num_labels == 3 and [hf.config.id2label[i] for i in range(3)] == list(HEADS)
    assert (tmp_path / "rm" / "reward_config.json").is_file()


def test_reloaded_model_gives_the_same_scores(tmp_path, tiny_bert_path):
    torch.manual_seed(0)
    model, encoder, scoring = new_reward_model(tiny_bert_path, max_length=64)
    model.eval()
    with torch.no_grad():
        before = model(**collate(encoder.encode(PROMPTS, RESPONSES), encoder.pad_token_id))
    scoring.weights = {"helpful": 1.0, "honest": 0.5, "harmless": 2.0}
    scoring.mean = {"helpful": 0.1, "honest": -0.2, "harmless": 0.3}
    scoring.std = {"helpful": 2.0, "honest": 0.5, "harmless": 1.5}
    save_reward_model(model, encoder, scoring, tmp_path / "rm")
    scorer = RewardScorer.from_pretrained(tmp_path / "rm", toxicity=None, precision="fp32", batch_size=2)
    scores = scorer.score(PROMPTS, RESPONSES)
    as_protocol: Scorer = scorer  # the contract PPO and evaluation type against
    assert callable(as_protocol.score) and isinstance(scores, RewardScores)
    for i, head in enumerate(HEADS):
        assert torch.allclose(scores.heads[head], before[:, i], atol=1e-5), head
    expected = sum(scoring.weights[h] * (before[:, i] - scoring.mean[h]) / scoring.std[h] for i, h in enumerate(HEADS))
    assert torch.allclose(scores.composite, expected, atol=1e-5)
    assert scores.toxicity is None
    # weights can be overridden at load time, and the composite follows them
    only_harmless = RewardScorer.from_pretrained(tmp_path / "rm", toxicity=None, precision="fp32",
                                                 weights={"helpful": 0.0, "honest": 0.0})
    got = only_harmless.score(PROMPTS, RESPONSES)
    assert torch.allclose(got.composite, 2.0 * (before[:, 2] - 0.3) / 1.5, atol=1e-5)


def test_scores_do_not_depend_on_batching_or_padding(tmp_path, tiny_bert_path):
    model, encoder, scoring = new_reward_model(tiny_bert_path, max_length=64)
    save_reward_model(model, encoder, scoring, tmp_path / "rm")
    batched = RewardScorer.from_pretrained(tmp_path / "rm", toxicity=None, precision="fp32", batch_size=8)
    single = RewardScorer.from_pretrained(tmp_path / "rm", toxicity=None, precision="fp32", batch_size=1)
    a, b = batched.score(PROMPTS, RESPONSES), single.score(PROMPTS, RESPONSES)
    assert torch.allclose(a.composite, b.composite, atol=1e-5)


def test_causal_lm_is_scored_at_the_last_real_token_even_when_it_is_eos(tiny_llama_path):
    """pad == EOS (like SmolLM2): HF's own pooling would skip a final EOS; ours must not."""
    model, encoder, _ = new_reward_model(tiny_llama_path, max_length=64)
    model.eval()
    eos = encoder.tokenizer.eos_token_id
    assert encoder.tokenizer.pad_token_id == eos
    hf = model.hf_model
    short, long = [5, 6, eos], [5, 6, 7, 8, eos]
    batch = {"input_ids": torch.tensor([short + [eos, eos], long]), "attention_mask": torch.tensor([[1, 1, 1, 0, 0], [1] * 5])}
    with torch.no_grad():
        scores = model(**batch)  # (2, heads)
        hidden = hf.model(input_ids=torch.tensor([short])).last_hidden_state
        alone = hf.score(hidden[:, -1])  # score at the final EOS of the unpadded sequence
        hf_pooled = hf(**batch).logits  # HF's rule: last token that is not pad -> skips the EOS
    assert torch.allclose(scores[0], alone[0], atol=1e-5)
    assert not torch.allclose(hf_pooled[0], alone[0], atol=1e-5)


def test_causal_lm_with_lora_saves_merged_and_reloads_to_the_same_scores(tmp_path, tiny_llama_path):
    model, encoder, scoring = new_reward_model(tiny_llama_path, LoraConfig(r=4, alpha=8, target_modules=[]), max_length=64)
    assert scoring.input_format == "chat" and scoring.pooling == "last_token"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "score" in n for n in trainable)
    with torch.no_grad():  # make the adapters do something, so merging matters
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    model.eval()
    with torch.no_grad():
        before = model(**collate(encoder.encode(PROMPTS, RESPONSES), encoder.pad_token_id))
    save_reward_model(model, encoder, scoring, tmp_path / "rm")
    assert not (tmp_path / "rm" / "adapter_config.json").exists()
    reloaded, reencoder, _ = load_reward_model(tmp_path / "rm")
    with torch.no_grad():
        after = reloaded(**collate(reencoder.encode(PROMPTS, RESPONSES), reencoder.pad_token_id))
    assert torch.allclose(before, after, atol=1e-4)


def test_a_run_folder_can_be_given_instead_of_the_model_folder(tmp_path, tiny_bert_path):
    model, encoder, scoring = new_reward_model(tiny_bert_path, max_length=64)
    save_reward_model(model, encoder, scoring, tmp_path / "run" / "final")
    assert RewardScorer.from_pretrained(tmp_path / "run", toxicity=None).score(PROMPTS[:1], RESPONSES[:1]).composite.shape == (1,)


def test_mismatched_inputs_and_unknown_weights_are_errors(tmp_path, tiny_bert_path):
    model, encoder, scoring = new_reward_model(tiny_bert_path, max_length=64)
    save_reward_model(model, encoder, scoring, tmp_path / "rm")
    scorer = RewardScorer.from_pretrained(tmp_path / "rm", toxicity=None)
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        scorer.score(PROMPTS[:2], RESPONSES[:1])
    with pytest.raises(ValueError, match="unknown head 'funny'"):
        RewardScorer.from_pretrained(tmp_path / "rm", toxicity=None, weights={"funny": 1.0})
    with pytest.raises(FileNotFoundError, match="reward_config.json"):
        RewardScorer.from_pretrained(tmp_path)


@pytest.mark.real
def test_minilm_reward_model_scores_pairs_with_its_pooler_and_token_types(tmp_path):
    model, encoder, scoring = new_reward_model("minilm-l6", max_length=256)
    assert scoring.input_format == "pair" and scoring.pooling == "model" and encoder.layout.types is not None
    save_reward_model(model, encoder, scoring, tmp_path / "rm")
    scores = RewardScorer.from_pretrained(tmp_path / "rm", toxicity=None, precision="fp32").score(PROMPTS, RESPONSES)
    assert scores.composite.shape == (3,) and torch.isfinite(scores.composite).all()
