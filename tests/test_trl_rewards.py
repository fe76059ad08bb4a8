"""``RewardScorer`` as TRL ``reward_funcs``: TRL's weighted sum of the per-head callables is our composite, and
one GRPOTrainer step on tiny models runs on them and logs each head."""
from __future__ import annotations

import pytest
import torch

from reward_models.model import new_reward_model, save_reward_model
from reward_models.scoring import RewardScorer
from reward_models.trl_rewards import trl_reward_funcs
from reward_models.types import HEADS

pytestmark = pytest.mark.usefixtures("one_torch_thread")
PROMPTS = ["\n\nHuman: How do I make bread?\n\nAssistant:", "Is the earth flat?"]
COMPLETIONS = ["Mix flour, water and yeast.", "No, it is round."]


@pytest.fixture()
def scorer(tmp_path, tiny_bert_path) -> RewardScorer:
    torch.manual_seed(0)
    model, encoder, scoring = new_reward_model(tiny_bert_path, max_length=64)
    scoring.weights = {"helpful": 1.0, "honest": 0.5, "harmless": 2.0}
    scoring.mean = {"helpful": 0.1, "honest": -0.2, "harmless": 0.3}
    scoring.std = {"helpful": 2.0, "honest": 0.5, "harmless": 1.5}
    save_reward_model(model, encoder, scoring, tmp_path / "rm")
    return RewardScorer.from_pretrained(tmp_path / "rm", toxicity=None, precision="fp32")


def test_weighted_head_callables_sum_to_the_composite(scorer):
    funcs, weights = trl_reward_funcs(scorer)
    assert [f.__name__ for f in funcs] == list(HEADS) and weights == [1.0, 0.5, 2.0]
    per_head = [f(prompts=PROMPTS, completions=COMPLETIONS, completion_ids=None) for f in funcs]
    trl_sum = torch.tensor([sum(w * r[i] for w, r in zip(weights, per_head)) for i in range(len(PROMPTS))])
    expected = scorer.score(PROMPTS, COMPLETIONS).composite
    assert torch.allclose(trl_sum, expected, atol=1e-5)
    [composite], [weight] = trl_reward_funcs(scorer, per_head=False)
    assert weight == 1.0 and torch.allclose(torch.tensor(composite(PROMPTS, COMPLETIONS)), expected, atol=1e-6)


def test_conversational_inputs_score_like_their_text(scorer):
    [composite], _ = trl_reward_funcs(scorer, per_head=False)
    chats = [[{"role": "user", "content": "How do I make bread?"}], [{"role": "user", "content": "Is the earth flat?"}]]
    answers = [[{"role": "assistant", "content": c}] for c in COMPLETIONS]
    as_text = scorer.score(["How do I make bread?", "Is the earth flat?"], COMPLETIONS).composite
    assert torch.allclose(torch.tensor(composite(chats, answers)), as_text, atol=1e-6)


def test_one_grpo_step_of_trl_on_our_reward_heads(tmp_path, scorer, tiny_llama_path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    funcs, weights = trl_reward_funcs(scorer)
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": q}]}
                              for q in ("How do I make bread?", "Is the earth flat?")])
    config = GRPOConfig(output_dir=str(tmp_path / "trl"), use_cpu=True, max_steps=1, per_device_train_batch_size=4,
                        num_generations=4, max_completion_length=8, reward_weights=weights, learning_rate=0.05,
                        report_to=[], save_strategy="no", logging_steps=1, disable_tqdm=True,
                        gradient_checkpointing=False, seed=0)
    policy = AutoModelForCausalLM.from_pretrained(tiny_llama_path)
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    trainer = GRPOTrainer(model=policy, reward_funcs=funcs, args=config, train_dataset=data)
    trainer.train()
    logged = trainer.state.log_history[0]
    assert all(f"rewards/{h}/mean" in logged for h in HEADS)
    assert logged["reward"] == pytest.approx(sum(w * logged[f"rewards/{h}/mean"] for w, h in zip(weights, HEADS)),
                                             abs=1e-4)
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())  # it trained
