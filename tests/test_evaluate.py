"""Evaluation runner on tiny random models and a toy scorer: sampling, KL, policies, aggregation, the stage."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from reward_models.types import RewardScores
from rlhf.models.logprobs import response_mask
from rlhf.evaluation import evaluate as ev
from rlhf.core.config import RunConfig
from rlhf.models.generation import GenerationSettings
from rlhf.models.policies import PolicyLoadError, load_policy
from rlhf.data.prompts import few_shot

torch.set_num_threads(1)  # tiny models: more threads only contend with the other jobs on a shared CPU
THE = " the"


class TheScorer:
    """Toy judge: the share of words that are "the" (a fixed, learnable preference), with fake heads and toxicity."""

    def score(self, prompts, responses):
        share = [r.lower().split().count("the") / max(1, len(r.split())) for r in responses]
        composite = torch.tensor(share, dtype=torch.float32)  # (batch,)
        return RewardScores(composite=composite, heads={"helpful": composite, "honest": composite * 0,
                                                        "harmless": 1 - composite},
                            toxicity=torch.full_like(composite, 0.01))


def _chat(text):
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_llama_path):
    """An identity LoRA adapter (B = 0), a random one, and a full model fine-tuned to answer "the the the"."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from rlhf.models.generation import render_chat
    from rlhf.models.zoo import load_tokenizer

    root = tmp_path_factory.mktemp("policies")
    for name, init in (("identity", True), ("random", False)):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_llama_path)
        peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                init_lora_weights=init))
        if not init:  # make the random adapter clearly different from its base
            for n, p in peft.named_parameters():
                if "lora_" in n:
                    p.data.normal_(0, 0.5)
        peft.save_pretrained(root / name)

    # "the" policy: full fine-tuning for a few steps on "<prompt> -> the the the ..." (seconds)
    torch.manual_seed(0)
    tokenizer = load_tokenizer(tiny_llama_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_path)
    prompts = [_chat(q) for q in ("What is it?", "Hi", "Why?")] + [it.messages for source in ev.SOURCES
                                                                 for it in ev.load_items(source, "train")[:4]]
    answer = tokenizer("the the the the the the the the<|im_end|>", add_special_tokens=False)["input_ids"]
    rows = [tokenizer(render_chat(tokenizer, p), add_special_tokens=False)["input_ids"][-200:] for p in prompts]
    width = max(len(r) for r in rows) + len(answer)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id)  # (n, width) left-padded
    labels = torch.full_like(input_ids, -100)  # loss on the answer only
    attention = torch.zeros_like(input_ids)
    for i, row in enumerate(rows):
        full = row + answer
        input_ids[i, width - len(full):] = torch.tensor(full)
        labels[i, width - len(answer):] = torch.tensor(answer)
        attention[i, width - len(full):] = 1
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = model(input_ids=input_ids, attention_mask=attention, position_ids=position_ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]
    model.save_pretrained(root / "the-model")
    tokenizer.save_pretrained(root / "the-model")
    return {"identity": str(root / "identity"), "random": str(root / "random"), "the": str(root / "the-model"),
            "root": root}


# ---------------------------------------------------------------- pieces


def test_response_mask_stops_after_first_eos():
    ids = torch.tensor([[5, 2, 2, 2], [5, 6, 7, 8], [2, 5, 2, 2]])  # EOS (= pad) id 2
    mask, ended = response_mask(ids, 2)  # rlhf.models.logprobs: RL's mask too
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]] and ended.tolist() == [True, False, True]


def test_response_logprobs_unaffected_by_left_padding(tiny_llama_path):
    from rlhf.models.zoo import load_causal_lm

    model = load_causal_lm(tiny_llama_path).eval()
    short, long = torch.tensor([[11, 12, 13]]), torch.tensor([[21, 22, 23, 24, 25, 26]])
    response = torch.tensor([[31, 32, 33]])
    single = [ev.response_logprobs(model, torch.cat([p, response], 1), torch.ones(1, p.shape[1] + 3, dtype=torch.long),
                                   p.shape[1]) for p in (short, long)]
    pad = torch.zeros(1, 3, dtype=torch.long)
    sequences = torch.cat([torch.cat([pad, short, response], 1), torch.cat([long, response], 1)])  # (2, 9)
    attention = torch.ones_like(sequences)
    attention[0, :3] = 0
    batched = ev.response_logprobs(model, sequences, attention, prompt_len=6)  # (2, 3)
    assert torch.allclose(batched[0], single[0][0], atol=1e-4)
    assert torch.allclose(batched[1], single[1][0], atol=1e-4)


def test_generation_logits_equal_a_forward_pass(tiny_llama_path):
    """The policy's log-probs for KL are taken from generate()'s logits: they must match a forward pass."""
    from rlhf.models.generation import prepare_tokenizer, render_chat
    from rlhf.models.zoo import load_causal_lm, load_tokenizer

    model, tokenizer = load_causal_lm(tiny_llama_path).eval(), prepare_tokenizer(load_tokenizer(tiny_llama_path))
    texts = [render_chat(tokenizer, _chat(q)) for q in ("Why is the sky blue? Tell me more.", "Hi")]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)  # left-padded
    torch.manual_seed(0)
    out = model.generate(**batch, **GenerationSettings(max_new_tokens=8).hf_kwargs(tokenizer),
                         return_dict_in_generate=True, output_logits=True)
    prompt_len = batch["input_ids"].shape[1]
    response = out.sequences[:, prompt_len:]
    mask = response_mask(response, tokenizer.eos_token_id)[0].long()
    from_generate = torch.log_softmax(torch.stack(out.logits, 1).float(), -1).gather(-1, response[..., None]).squeeze(-1)
    forward = ev.response_logprobs(model, out.sequences, torch.cat([batch["attention_mask"], mask], 1), prompt_len)
    assert torch.allclose(from_generate * mask, forward * mask, atol=1e-4)


def test_sampling_is_seeded_the_same_for_every_run(tiny_llama_path):
    policy = load_policy("base", tiny_llama_path)
    chats = [_chat("What is the capital of France?"), _chat("Summarize: A met B."), _chat("Hello")]
    settings = GenerationSettings(max_new_tokens=8, batch_size=2, seed=3)
    first, again = ev.sample(policy, chats, settings), ev.sample(policy, chats, settings)
    assert first.responses == again.responses
    other = ev.sample(policy, chats, GenerationSettings(max_new_tokens=8, batch_size=2, seed=4))
    assert other.responses != first.responses
    assert all(0 < n <= 8 for n in first.lengths) and len(first.ended) == 3


def test_kl_is_zero_for_an_identity_adapter_and_positive_for_a_changed_one(adapters):
    chats = [_chat(q) for q in ("Why is the sky blue?", "Name a fruit.", "Summarize: A met B.", "Hi there")]
    settings = GenerationSettings(max_new_tokens=10, batch_size=4)
    identity = ev.sample(load_policy("id", adapters["identity"]), chats, settings, measure_kl=True)
    assert max(abs(k) for k in identity.kl_k1) < 1e-4 and max(identity.kl_k3) < 1e-4
    changed = ev.sample(load_policy("rand", adapters["random"]), chats, settings, measure_kl=True)
    assert min(changed.kl_k3) > 1e-3  # (k1 is unbiased but noisy on 4 samples: its sign is tested in test_metrics)


def test_kl_against_an_explicit_reference(adapters, tiny_llama_path):
    """A full model with `reference` = itself has zero KL; with the base as reference, positive KL."""
    chats = [_chat("Why?"), _chat("Name a fruit.")]
    settings = GenerationSettings(max_new_tokens=8, batch_size=2)
    same = ev.sample(load_policy("the", adapters["the"], reference=adapters["the"]), chats, settings, measure_kl=True)
    assert max(abs(k) for k in same.kl_k1) < 1e-4
    moved = ev.sample(load_policy("the", adapters["the"], reference=tiny_llama_path), chats, settings, measure_kl=True)
    assert min(moved.kl_k3) > 0.1


# ---------------------------------------------------------------- policies


def test_policy_specs(adapters, tiny_llama_path, tmp_path):
    full = load_policy("base", "tiny-llama")
    assert full.kind == "full" and not full.has_reference
    with pytest.raises(PolicyLoadError, match="no reference"):
        with full.reference():
            pass
    adapter = load_policy("sft", adapters["random"])
    assert adapter.kind == "adapter" and adapter.has_reference
    # A run's final/ with the adapter in an adapter/ subfolder (PPO's layout) and an explicit base.
    shutil.copytree(adapters["random"], tmp_path / "final" / "adapter")
    nested = load_policy("ppo", str(tmp_path / "final"), base=tiny_llama_path)
    assert nested.kind == "adapter"
    ids = torch.tensor([[5, 6, 7, 8]])
    assert torch.allclose(nested.model(ids).logits, adapter.model(ids).logits, atol=1e-5)
    with nested.reference() as reference:
        assert torch.allclose(reference(ids).logits, full.model(ids).logits, atol=1e-5)
    # Chained adapters: an adapter whose base is an adapter folder (merged first).
    config = json.loads((tmp_path / "final" / "adapter" / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = adapters["identity"]
    (tmp_path / "final" / "adapter" / "adapter_config.json").write_text(json.dumps(config))
    chained = load_policy("ppo", str(tmp_path / "final"))
    assert torch.allclose(chained.model(ids).logits, adapter.model(ids).logits, atol=1e-5)


def test_policy_spec_errors(tmp_path, tiny_llama_path, adapters):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PolicyLoadError, match="neither config.json"):
        load_policy("x", str(tmp_path / "empty"))
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(PolicyLoadError, match="is a file"):
        load_policy("x", str(tmp_path / "file.txt"))
    with pytest.raises(PolicyLoadError, match="not an adapter folder"):
        load_policy("x", tiny_llama_path, base=tiny_llama_path)
    broken = tmp_path / "broken"
    shutil.copytree(adapters["identity"], broken)
    (broken / "adapter_config.json").write_text(json.dumps({"r": 4}))
    with pytest.raises(PolicyLoadError, match="base_model_name_or_path"):
        load_policy("x", str(broken))


# ---------------------------------------------------------------- prompts


def test_test_split_items_and_train_split_shots():
    test_items = ev.load_items("dialogsum", "test")
    assert test_items and all(it.references for it in test_items)
    shots = ev.choose_shots("dialogsum", 2, seed=0, max_prompt_chars=1500)
    assert ev.choose_shots("dialogsum", 2, seed=0, max_prompt_chars=1500) == shots  # the same for every policy
    assert all(len(s.prompt) <= 1500 for s in shots)
    assert not {s.prompt for s in shots} & {it.prompt for it in test_items}  # examples never come from test
    chat = ev.with_shots(test_items[0].messages, shots)
    assert [m["role"] for m in chat] == ["user", "assistant", "user", "assistant", "user"]
    assert chat[-1] == test_items[0].messages[-1] and chat[1]["content"] == shots[0].response
    # Single-turn chats get exactly the shared few-shot builder's chat layout.
    assert chat == few_shot(test_items[0].prompt, shots)
    assert ev.with_shots(test_items[0].messages, []) == test_items[0].messages
    assert len(ev.sample_items(test_items, 5, seed=1)) == 5
    assert ev.sample_items(test_items, 5, seed=1) == ev.sample_items(test_items, 5, seed=1)
    hh = ev.load_items("hh-rlhf-harmless", "test")
    assert len({it.prompt for it in hh}) == len(hh) and hh[0].messages[-1]["role"] == "user"
    with pytest.raises(ValueError, match="unknown evaluation source"):
        ev.load_items("nope")


# ---------------------------------------------------------------- aggregation


def _record(variant, source, item, response, reward, references=(), **extra):
    policy, shots, decoding = variant.split("/")
    return {"variant": variant, "policy": policy, "shots": int(shots[0]), "decoding": decoding, "source": source,
            "id": item, "prompt": "p", "response": response, "references": list(references), "length": 3,
            "ended": True, "reward/composite": reward, **extra}


def test_aggregate_hand_made_records():
    sft, ppo = "sft/0-shot/sampled", "ppo/0-shot/sampled"
    records = [
        _record(sft, "dialogsum", "a", "the cat sat", 0.0, ["the cat sat on the mat"]),
        _record(sft, "truthfulqa", "b", "no", 1.0, ["no"]),
        _record(sft, "hh-rlhf-harmless", "c", "sorry", 0.5),
        _record(ppo, "dialogsum", "a", "the cat sat on the mat", 1.0, ["the cat sat on the mat"], **{"kl/k1": 2.0}),
        _record(ppo, "truthfulqa", "b", "yes", 0.0, ["no"], **{"kl/k1": 4.0}),
        _record(ppo, "hh-rlhf-harmless", "c", "sorry", 0.5, **{"kl/k1": 0.0}),
    ]
    variants = [ev.Variant("sft", 0, "sampled", tuple(ev.SOURCES)), ev.Variant("ppo", 0, "sampled", tuple(ev.SOURCES))]
    table = ev.aggregate_all(records, variants, baseline="sft")
    everything = table[ppo]["all"]
    assert (everything["win_rate/wins"], everything["win_rate/ties"], everything["win_rate/losses"]) == (1, 1, 1)
    assert everything["win_rate"] == pytest.approx(0.5)
    assert everything["kl/k1"] == pytest.approx(2.0)
    assert everything["reward/composite_delta"] == pytest.approx(0.0)
    assert table[ppo]["dialogsum"]["rouge/rougeL"] == pytest.approx(1.0)
    assert table[sft]["dialogsum"]["rouge/rouge1"] == pytest.approx(2 / 3)
    assert "rouge/rouge1" not in table[ppo]["truthfulqa"] and table[ppo]["truthfulqa"]["bleu"] == 0.0
    assert table[ppo]["dialogsum"]["win_rate"] == 1.0 and table[ppo]["truthfulqa"]["win_rate"] == 0.0
    assert "win_rate" not in table[sft]["all"]  # the baseline is not compared with itself
    assert "kl/k1" not in table[sft]["all"]


def test_rouge_l_is_paired_per_dialogue_with_its_interval_and_n():
    """SFT's summaries are prefixes of the references: ROUGE-L F = 2PR/(P+R) with P = 1, R = 2/3 -> 0.8 and
    R = 1/2 -> 2/3; the candidate's equal the references (1.0). Paired differences 0.2 and 1/3."""
    sft, ppo = "sft/0-shot/sampled", "ppo/0-shot/sampled"
    refs = {"a": "the cat sat", "b": "a dog ran home"}
    records = [_record(sft, "dialogsum", "a", "the cat", 0.0, [refs["a"]]),
               _record(sft, "dialogsum", "b", "a dog", 0.0, [refs["b"]]),
               _record(ppo, "dialogsum", "a", refs["a"], 0.0, [refs["a"]]),
               _record(ppo, "dialogsum", "b", refs["b"], 0.0, [refs["b"]])]
    variants = [ev.Variant("sft", 0, "sampled", ("dialogsum",)), ev.Variant("ppo", 0, "sampled", ("dialogsum",))]
    table = ev.aggregate_all(records, variants, baseline="sft")
    base, cand = table[sft]["all"], table[ppo]["all"]
    assert base["rouge/rougeL"] == pytest.approx((0.8 + 2 / 3) / 2) and base["rouge/n"] == 2
    half = 1.959964 / 15  # z * sd / sqrt(2), with sd of (0.2, 1/3) = (2/15) / sqrt(2)
    assert cand["rouge/rougeL_delta"] == pytest.approx((0.2 + 1 / 3) / 2)
    assert (cand["rouge/rougeL_delta_low"], cand["rouge/rougeL_delta_high"]) == pytest.approx(
        ((0.2 + 1 / 3) / 2 - half, (0.2 + 1 / 3) / 2 + half), abs=1e-6)
    assert cand["rouge/rougeL_delta_n"] == 2 and cand["rouge/rougeL_low"] == cand["rouge/rougeL_high"] == 1.0
    # The headline lists it among the judge-free metrics, with its n.
    from rlhf.evaluation import report
    results = {"candidate": "ppo", "baseline": "sft", "variants": [{"key": k, "policy": k.split("/")[0], "shots": 0,
                                                                   "decoding": "sampled", "best_of": 0}
                                                                  for k in (sft, ppo)],
               "metrics": {k: v for k, v in table.items()}}
    deltas = report.candidate_deltas(results, cand, "ppo")
    assert deltas["rouge/rougeL"] == pytest.approx((cand["rouge/rougeL_delta"], cand["rouge/rougeL_delta_low"],
                                                   cand["rouge/rougeL_delta_high"]))
    assert report.delta_sizes(results, cand, "ppo")["rouge/rougeL"] == 2


def test_missing_policy_folder_fails_before_any_generation(tmp_path):
    cfg = _cfg(tmp_path, [ev.PolicyConfig("sft", "tiny-llama"), ev.PolicyConfig("ppo", str(tmp_path / "runs/x/final"))])
    with pytest.raises(FileNotFoundError, match="policy 'ppo': model: .* does not exist"):
        ev.run_evaluation(cfg, TheScorer(), load_policy=lambda *a, **k: pytest.fail("loaded a policy"))


def test_variants_and_settings():
    cfg = ev.EvalConfig(policies=[ev.PolicyConfig("base", "x"), ev.PolicyConfig("sft", "y")],
                        variants=[ev.VariantConfig(decoding="sampled"),
                                  ev.VariantConfig(decoding="greedy", sources=["dialogsum"]),
                                  ev.VariantConfig(policies=["base"], shots=3, decoding="greedy",
                                                   sources=["dialogsum"])])
    variants = ev.variants_of(cfg)
    assert [v.key for v in variants] == ["base/0-shot/greedy", "base/0-shot/sampled", "base/3-shot/greedy",
                                         "sft/0-shot/greedy", "sft/0-shot/sampled"]
    assert variants[0].sources == ("dialogsum",) and variants[1].sources == tuple(cfg.data.sources)
    assert not ev.settings_for("greedy", cfg.generation).do_sample
    assert ev.samples_own_distribution(ev.settings_for("sampled", cfg.generation))
    assert not ev.samples_own_distribution(GenerationSettings(top_p=0.9))
    for bad, match in (([ev.VariantConfig(policies=["ppo"])], "'ppo' is not a configured policy"),
                       ([ev.VariantConfig(sources=["wiki"])], "'wiki' is not a configured policy .* or source"),
                       ([ev.VariantConfig(), ev.VariantConfig(policies=["sft"])],
                        "sft/0-shot/sampled is asked for twice")):
        with pytest.raises(ValueError, match=match):
            ev.variants_of(ev.EvalConfig(policies=cfg.policies, variants=bad))


# ---------------------------------------------------------------- the runner and the stage


def _cfg(tmp_path, policies, **kw):
    return ev.EvalConfig(
        run=RunConfig(output_dir=str(tmp_path / "runs"), run_name="eval", wandb_mode="disabled"),
        policies=policies, baseline=kw.pop("baseline", "sft"), candidate=kw.pop("candidate", "ppo"),
        data=ev.EvalDataConfig(prompts_per_source=kw.pop("prompts_per_source", 4), max_prompt_tokens=256,
                               max_example_chars=400),
        generation=GenerationSettings(max_new_tokens=10, batch_size=8), threads=1, **kw)


def test_run_evaluation_ranks_a_better_policy_higher(tmp_path, tiny_llama_path, adapters):
    """The "the" policy must beat the base under the "the" judge, with its whole interval above one half."""
    cfg = _cfg(tmp_path, [ev.PolicyConfig("sft", tiny_llama_path),
                          ev.PolicyConfig("ppo", adapters["the"], reference=tiny_llama_path)],
               variants=[ev.VariantConfig(), ev.VariantConfig(policies=["sft"], shots=1)], prompts_per_source=6)
    records, policies = ev.run_evaluation(cfg, TheScorer())
    variants = ev.variants_of(cfg)
    assert len(records) == len(variants) * 18
    by_variant = {v.key: [(r["source"], r["id"]) for r in records if r["variant"] == v.key] for v in variants}
    assert len({tuple(ids) for ids in by_variant.values()}) == 1  # every variant answered the same prompts
    results = ev.build_results(cfg, records, policies)
    ppo = results["metrics"]["ppo/0-shot/sampled"]["all"]
    assert ppo["win_rate/low"] > 0.5 and ppo["reward/composite_delta_low"] > 0
    assert ppo["kl/k1"] > 0 and "kl/k1" not in results["metrics"]["sft/0-shot/sampled"]["all"]
    assert results["prompts"] == {"dialogsum": 6, "truthfulqa": 6, "hh-rlhf-harmless": 6}
    assert results["toxicity_available"] and "rouge/rougeL" in results["metrics"]["sft/1-shot/sampled"]["dialogsum"]
    assert "win_rate" in results["metrics"]["sft/1-shot/sampled"]["all"]  # few-shot base vs its zero-shot self
    assert policies["ppo"]["reference"] == tiny_llama_path and policies["sft"]["kind"] == "full"


def test_eval_stage_writes_report_and_strict_json(tmp_path, tiny_llama_path, adapters, monkeypatch):
    from pipelines import evaluate as stage

    monkeypatch.setattr(ev, "load_scorer", lambda cfg: TheScorer())
    cfg = _cfg(tmp_path, [ev.PolicyConfig("base", tiny_llama_path), ev.PolicyConfig("sft", adapters["identity"]),
                          ev.PolicyConfig("ppo", adapters["the"], reference=tiny_llama_path)],
               variants=[ev.VariantConfig(policies=["sft", "ppo"]),
                         ev.VariantConfig(decoding="greedy", sources=["dialogsum"]),
                         ev.VariantConfig(policies=["base"], shots=1, decoding="greedy", sources=["dialogsum"])],
               prompts_per_source=3)
    run_dir = stage.main(cfg)
    results = json.loads((run_dir / "results.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert results["headline"]["verdict"][0].startswith("**PPO beats SFT.**")
    report = (run_dir / "report.md").read_text()
    assert "PPO beats SFT" in report and "ROUGE-L" in report and "base (1-shot, greedy)" in report
    for png in ("reward_heads.png", "distributions.png", "rouge.png"):
        assert (run_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 * 9 + 4 * 3 and {"response", "reward/composite", "length", "ended"} <= set(samples[0])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["win_rate"] == results["headline"]["win_rate"]
    assert (run_dir / "eval_overview.jsonl").is_file()  # the tables as logged for W&B
    jf = results["judge_free"]  # sft = an identity adapter: equal to its reference, every pair a tie
    assert jf["sft"]["pref/harmless/accuracy"] == 0.5 and jf["sft"]["pref/helpful/accuracy/n"] == 32
    assert jf["ppo"]["tqa/mc1/n"] == 32 and "tqa/mc2_delta_low" in jf["ppo"] and "Judge-free metrics" in report
    assert any("No gain shown" in line or "Judges" in line for line in results["headline"]["verdict"])
    assert len((run_dir / "judge_free.jsonl").read_text().splitlines()) == 3 * (2 * 3 * 32 + 2 * 32)


# ---------------------------------------------------------------- best-of-n and the gold judge


def test_best_of_n_kl_by_hand():
    from rlhf.evaluation.best_of_n import analytic_kl

    assert analytic_kl(1) == 0.0
    assert analytic_kl(2) == pytest.approx(0.6931471805599453 - 0.5)  # log 2 - 1/2
    assert analytic_kl(4) == pytest.approx(1.3862943611198906 - 0.75)  # log 4 - 3/4
    with pytest.raises(ValueError, match="best_of_n"):
        analytic_kl(0)


def test_choose_best_keeps_the_highest_of_the_first_n():
    from rlhf.evaluation.best_of_n import choose_best

    scores = [[0.1, 0.5, 0.3, 0.9], [0.7, 0.2, 0.7, 0.1], [-1.0, -2.0, -0.5, -3.0]]
    assert choose_best(scores, 1) == [0, 0, 0]
    assert choose_best(scores, 2) == [1, 0, 0]
    assert choose_best(scores, 3) == [1, 0, 2]  # a tie keeps the first sample
    assert choose_best(scores, 4) == [3, 0, 2]


class GoldCounter(TheScorer):
    """A second toy judge that records what it was asked to score (the gold scores only the kept samples)."""

    def __init__(self):
        self.seen = []

    def score(self, prompts, responses):
        self.seen += list(responses)
        scores = super().score(prompts, responses)
        return RewardScores(composite=-scores.composite, heads={k: -v for k, v in scores.heads.items()})


def test_best_of_n_selection_by_the_proxy_from_one_draw():
    items = [ev.EvalItem("truthfulqa", f"q{i}", f"question {i}", _chat(f"question {i}")) for i in range(2)]
    answers = [["a b", "the b", "the the", "a the"], ["the x y", "x y z", "the the the", "x"]]  # 4 draws per item
    out = ev.Samples(responses=[a for row in answers for a in row], lengths=[3] * 8, ended=[True] * 8)
    variants = [ev.Variant("sft", 0, "sampled", ("truthfulqa",), n) for n in (1, 2, 4)]
    gold = GoldCounter()
    records = ev.best_of_n_records(variants, items, out, TheScorer(), gold, batch_size=3)
    kept = {(r["best_of"], r["id"]): r["response"] for r in records}
    assert kept == {(1, "q0"): "a b", (1, "q1"): "the x y", (2, "q0"): "the b", (2, "q1"): "the x y",
                    (4, "q0"): "the the", (4, "q1"): "the the the"}
    assert sorted(gold.seen) == sorted(set(kept.values()))  # the gold judged only what was kept, once each
    by_n = {r["best_of"]: r for r in records if r["id"] == "q0"}
    assert by_n[4]["reward/composite"] == 1.0 and by_n[4]["gold/composite"] == -1.0
    assert by_n[2]["kl/best_of_n"] == pytest.approx(0.6931471805599453 - 0.5) and by_n[1]["kl/best_of_n"] == 0.0
    assert by_n[4]["sample_index"] == 2 and "toxicity" in by_n[4]  # toxicity from the proxy


def _tiny_reward_model(folder, seed, role="proxy", summary=None):
    """A real tiny-BERT reward model saved like a reward run (random heads: a different judge per seed)."""
    from reward_models.model import new_reward_model, save_reward_model

    torch.manual_seed(seed)
    model, encoder, scoring = new_reward_model("tiny-bert", max_length=128, min_prompt_tokens=32)
    scoring.role = role
    save_reward_model(model, encoder, scoring, folder / "final")
    if summary is not None:
        (folder / "summary.json").write_text(json.dumps(summary))
    return folder


@pytest.mark.parametrize("flags, key", [
    (["--variants", "[{best_of_n: [0, 2]}]"], "variants[0].best_of_n"),
    (["--variants", "[{best_of_n: [1.5]}]"], "variants[0].best_of_n"),
    (["--variants", "[{decoding: greedy, best_of_n: [2]}]"], "variants[0].best_of_n"),
    (["--gold.model", "{proxy}"], "gold.model"),
    (["--gold.model", "{proxy}/final"], "gold.model"),
    (["--gold.model", "{link}"], "gold.model"),
    (["--gold.model", "{proxy}/missing"], "gold.model"),
])
def test_bad_best_of_n_or_gold_is_one_line_before_any_model(flags, key, tmp_path, capsys, monkeypatch):
    from rlhf.stages import STAGES
    cli = STAGES["eval"].cli

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the config was checked")

    monkeypatch.setattr(ev, "load_scorer", refuse)
    monkeypatch.setattr(ev, "load_gold", refuse)
    proxy = _tiny_reward_model(tmp_path / "proxy", 0)
    (tmp_path / "link").symlink_to(proxy / "final")
    flags = [f.replace("{proxy}", str(proxy)).replace("{link}", str(tmp_path / "link")) for f in flags]
    argv = ["--run.output_dir", str(tmp_path / "runs"), "--run.wandb_mode", "disabled",
            "--reward_model", str(proxy), "--policies", "[{name: sft, model: tiny-llama}]", "--variants", "[{}]", *flags]
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {key}"), err
    assert not (tmp_path / "runs").exists()


def test_eval_stage_with_gold_and_best_of_n_on_tiny_real_models(tmp_path, tiny_llama_path, adapters):
    """Proxy and gold are real tiny reward models; best-of-n's proxy score cannot fall as n grows (one draw)."""
    from pipelines import evaluate as stage

    proxy = _tiny_reward_model(tmp_path / "proxy", 0, summary={"test/accuracy_helpful": 0.6,
                                                                "test/accuracy_honest": 0.55,
                                                                "test/accuracy_harmless": 0.5})
    gold = _tiny_reward_model(tmp_path / "gold", 1, role="gold")
    cfg = _cfg(tmp_path, [ev.PolicyConfig("sft", tiny_llama_path), ev.PolicyConfig("ppo", adapters["random"])],
               variants=[ev.VariantConfig(), ev.VariantConfig(policies=["sft"], best_of_n=[1, 2, 4])],
               prompts_per_source=2, reward_model=str(proxy))
    cfg.gold.model = str(gold / "final")
    run_dir = stage.main(cfg)
    results = json.loads((run_dir / "results.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert results["judges"]["gold"]["role"] == "gold" and results["judges"]["proxy"]["role"] == "proxy"
    assert results["judges"]["proxy"]["test_accuracy"]["honest"] == 0.55
    assert results["judges"]["gold"]["test_accuracy"] == {"helpful": None, "honest": None, "harmless": None}
    (group,) = results["best_of_n"]
    assert group["samples_per_prompt"] == 4 and [r["n"] for r in group["per_n"]] == [1, 2, 4]
    log2, log4 = 0.6931471805599453, 1.3862943611198906
    assert [r["kl"] for r in group["per_n"]] == pytest.approx([0.0, log2 - 0.5, log4 - 0.75])
    proxies = [r["reward/composite"] for r in group["per_n"]]
    assert proxies[0] <= proxies[1] <= proxies[2] and proxies[0] < proxies[2]
    assert all("gold/composite" in r and r["prompts"] == 6 for r in group["per_n"])
    ppo = results["metrics"]["ppo/0-shot/sampled"]["all"]
    assert {"gold/composite_low", "gold/composite_delta", "gold/win_rate", "reward/harmless_high"} <= set(ppo)
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    best4 = [s for s in samples if s.get("best_of") == 4]
    assert len(best4) == 6 and all(0 <= s["sample_index"] < 4 for s in best4)
    report = (run_dir / "report.md").read_text()
    assert "Gold judge" in report and "Best-of-n" in report and "unknown" in report and "0.550" in report
    assert "The only judge is the proxy" not in report
    agreement = results["judges_agreement"]  # both judges on the same test pairs, per head
    assert set(agreement) == {"helpful", "honest", "harmless"}
    assert all(0 <= a["agreement"] <= 1 and a["n"] > 0 for a in agreement.values())
    assert "proxy and gold agree" in report and "order the same held-out test pairs alike" in report
    for png in ("gold_heads.png", "overoptimisation.png"):
        assert (run_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
