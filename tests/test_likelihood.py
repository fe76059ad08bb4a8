"""Judge-free metrics (rlhf.evaluation.likelihood) on hand-computed cases and a tiny model built in-process; the
over-optimisation fits (rlhf.evaluation.overoptimisation); the headline's rule across judges (rlhf.evaluation.report)."""
from __future__ import annotations

import math

import pytest
import torch

from rlhf.evaluation import likelihood as lk
from rlhf.core.config import ConfigError
from rlhf.evaluation.overoptimisation import fit_curves, fit_gao
from rlhf.models.policies import load_policy
from rlhf.evaluation.report import CurvePoint, judges_agree

torch.set_num_threads(1)


# ---------------------------------------------------------------- pure scoring, by hand


def test_implicit_reward_accuracy_counts_ties_half():
    assert lk.implicit_reward_accuracy(margin=2.0, reference_margin=1.0) == 1.0
    assert lk.implicit_reward_accuracy(margin=-3.0, reference_margin=-1.0) == 0.0
    assert lk.implicit_reward_accuracy(margin=0.7, reference_margin=0.7) == 0.5


def test_mc1_is_strict_and_mc2_normalises_mass():
    assert lk.mc1(-1.0, [-2.0, -3.0]) == 1.0
    assert lk.mc1(-2.0, [-2.0, -3.0]) == 0.0  # a tie with a wrong answer is not a win
    # p(true) = e^-1 + e^-2, p(false) = e^-2: MC2 = (e^-1 + e^-2) / (e^-1 + 2 e^-2)
    expected = (math.exp(-1) + math.exp(-2)) / (math.exp(-1) + 2 * math.exp(-2))
    assert lk.mc2([-1.0, -2.0], [-2.0]) == pytest.approx(expected, rel=1e-12)
    assert lk.mc2([-1000.0], [-1000.0]) == pytest.approx(0.5)  # no underflow at real log-prob scales


def test_aggregate_gives_n_interval_and_paired_delta():
    records = [{"policy": p, "metric": "tqa/mc1", "id": str(i), "value": v}
               for p, values in (("sft", [0, 1, 0, 1]), ("ppo", [1, 1, 1, 1])) for i, v in enumerate(values)]
    table = lk.aggregate_judge_free(records, baseline="sft")
    assert table["ppo"]["tqa/mc1"] == 1.0 and table["ppo"]["tqa/mc1/n"] == 4
    assert table["ppo"]["tqa/mc1_delta"] == 0.5  # diffs 1, 0, 1, 0
    half = 1.959964 * math.sqrt((4 * 0.25 / 3) / 4)  # z * sd / sqrt(n), sd of (1, 0, 1, 0)
    assert table["ppo"]["tqa/mc1_delta_low"] == pytest.approx(0.5 - half, rel=1e-5)
    assert table["sft"]["tqa/mc1_delta"] == 0.0


def test_a_share_has_a_wilson_interval_inside_0_1_and_its_delta_a_normal_one():
    # 7 of 8 pairs right: the normal interval, 0.875 +- 1.96 * 0.354 / sqrt(8) = (0.630, 1.120), passes 1.
    # Wilson by hand (z = 1.959964): centre (0.875 + z^2/16) / (1 + z^2/8) = 0.75335,
    # half z / (1 + z^2/8) * sqrt(0.875 * 0.125 / 8 + z^2 / 256) = 0.22424 -> (0.52911, 0.97759).
    records = [{"policy": p, "metric": "pref/harmless/accuracy", "id": str(i), "value": v}
               for p, values in (("sft", [1, 1, 1, 1, 1, 1, 0, 1]), ("ppo", [1] * 8)) for i, v in enumerate(values)]
    records += [{"policy": "sft", "metric": "tqa/mc2", "id": str(i), "value": v} for i, v in enumerate([0.9, 0.1])]
    table = lk.aggregate_judge_free(records, baseline="sft")
    sft = table["sft"]
    assert sft["pref/harmless/accuracy"] == 0.875
    assert sft["pref/harmless/accuracy_low"] == pytest.approx(0.52911, abs=1e-4)
    assert sft["pref/harmless/accuracy_high"] == pytest.approx(0.97759, abs=1e-4)
    assert table["ppo"]["pref/harmless/accuracy_high"] == pytest.approx(1.0, abs=1e-12)  # all right: at most 1
    half = 1.959964 * math.sqrt((1 / 8 * 7 / 8 * 8 / 7) / 8)  # the delta (diffs seven 0s, one 1): normal
    assert table["ppo"]["pref/harmless/accuracy_delta_high"] == pytest.approx(0.125 + half, rel=1e-5)
    assert sft["tqa/mc2_low"] == pytest.approx(0.5 - 1.959964 * 0.8 / math.sqrt(2) / math.sqrt(2), rel=1e-5)
    assert lk.is_share("tqa/mc1") and not lk.is_share("tqa/mc2") and not lk.is_share("pref/honest/margin")


def test_a_source_without_pairs_is_one_line_naming_the_key():
    with pytest.raises(ConfigError, match=r"^judge_free\.preference_sources\[1\]: 'wikipedia' has no preference pairs"):
        lk.check_judge_free(lk.JudgeFreeConfig(preference_sources=["truthfulqa", "wikipedia"]))


def test_eval_stage_refuses_it_before_any_model_loads(tmp_path, capsys, no_model_loads):
    from rlhf.stages import STAGES
    cli = STAGES["eval"].cli

    code = cli(["--policies", "[{name: base, model: tiny-llama}]", "--run.output_dir", str(tmp_path / "runs"),
                "--run.wandb_mode", "disabled", "--judge_free.preference_sources", "[hh-rlhf-harmless, nope]"])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: judge_free.preference_sources[1]: 'nope' has no preference pairs; sources with pairs: "
        "hh-rlhf-harmless, truthfulqa, truthfulqa-informative, dialogsum, dialogsum-sampled"]
    assert not any((tmp_path / "runs").rglob("*"))


# ---------------------------------------------------------------- the tiny model


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_llama_path):
    """An identity LoRA adapter (B = 0: the policy equals its reference) and a random one on tiny-llama."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("jf")
    for name, init in (("identity", True), ("random", False)):
        torch.manual_seed(0)
        peft = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama_path),
                              LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                         init_lora_weights=init))
        for n, p in peft.named_parameters():
            if "lora_" in n and not init:
                p.data.normal_(0, 0.5)
        peft.save_pretrained(root / name)
    return {"identity": str(root / "identity"), "random": str(root / "random")}


def _by_hand(model, tokenizer, chat, response) -> float:
    """Summed log-prob of ``response`` after the rendered chat: one unpadded forward, log-softmax, gather."""
    from rlhf.models.generation import render_chat

    prompt = tokenizer(render_chat(tokenizer, chat), add_special_tokens=False)["input_ids"]
    answer = tokenizer(response, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt + answer])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    return sum(float(logp[len(prompt) - 1 + t, tok]) for t, tok in enumerate(answer))


def test_sequence_logprobs_match_one_unpadded_forward(tiny_llama_path):
    policy = load_policy("base", tiny_llama_path)
    chats = [[{"role": "user", "content": q}] for q in ("Hi", "What is the capital of France, please?", "Why?")]
    responses = ["Paris is.", "It is Paris, the capital.", "Because"]
    got = lk.sequence_logprobs(policy.model, policy.tokenizer, chats, responses, batch_size=2)
    for g, chat, r in zip(got, chats, responses):
        assert g == pytest.approx(_by_hand(policy.model, policy.tokenizer, chat, r), abs=1e-3)


def _small(**kw) -> lk.JudgeFreeConfig:
    return lk.JudgeFreeConfig(**{"pairs_per_source": 3, "mc_questions": 3, "batch_size": 4,
                                 "max_response_tokens": 48, **kw})


def test_policy_equal_to_its_reference_shift_zero_accuracy_half(adapters, tiny_llama_path):
    cfg = _small(preference_sources=["hh-rlhf-harmless", "truthfulqa"])
    base = lk.judge_free_records(load_policy("base", tiny_llama_path), cfg)  # full model: its own reference
    same = lk.judge_free_records(load_policy("same", adapters["identity"]), cfg)  # identity adapter on the base
    table = lk.aggregate_judge_free(base + same, baseline="base")
    for head in ("harmless", "honest"):
        for policy in ("base", "same"):
            assert table[policy][f"pref/{head}/accuracy"] == 0.5  # every pair a tie, counted half
        assert table["same"][f"pref/{head}/accuracy/n"] == 3
        assert table["same"][f"pref/{head}/margin_delta"] == 0.0  # exactly: B = 0 adds an exact zero
    assert table["same"]["tqa/mc2_delta"] == 0.0


def test_preference_accuracy_and_mc_by_hand(adapters, tiny_llama_path):
    from rlhf.data import sources
    from rlhf.data.records import prompt_to_messages

    cfg = _small(preference_sources=["truthfulqa"], pairs_per_source=4, mc_questions=2)
    policy = load_policy("random", adapters["random"])
    records = {(r["metric"], r["id"]): r["value"] for r in lk.judge_free_records(policy, cfg)}
    reference = load_policy("ref", tiny_llama_path).model  # the adapter's base = its reference

    pairs = [p for _, p in lk.preference_pairs(cfg.preference_sources, cfg.pairs_per_source, "test", 0)]
    assert len(pairs) == 4 and pairs[0] in sources.truthfulqa_pairs("test")
    for k, p in enumerate(pairs):
        chat = prompt_to_messages(p.prompt)
        lp = {(m, r): _by_hand(model, policy.tokenizer, chat, r) for m, model in (("pi", policy.model),
                                                                                   ("ref", reference))
              for r in (p.chosen, p.rejected)}
        margin = lp["pi", p.chosen] - lp["pi", p.rejected]
        expected = 1.0 if margin > lp["ref", p.chosen] - lp["ref", p.rejected] else 0.0
        assert records["pref/honest/margin", f"honest-{k}"] == pytest.approx(margin, abs=1e-3)
        assert records["pref/honest/accuracy", f"honest-{k}"] == expected

    for k, q in enumerate(lk.truthfulqa_questions(cfg, "test", 0)):
        chat = [{"role": "user", "content": q.question}]
        lp = {a: _by_hand(policy.model, policy.tokenizer, chat, a) for a in {q.best_answer, *q.correct, *q.incorrect}}
        correct = set([q.best_answer, *q.correct])
        wrong = [lp[a] for a in q.incorrect if a not in correct]
        assert records["tqa/mc1", f"tqa-{k}"] == (1.0 if lp[q.best_answer] > max(wrong) else 0.0)
        mass = sum(math.exp(lp[a]) for a in correct)
        assert records["tqa/mc2", f"tqa-{k}"] == pytest.approx(mass / (mass + sum(math.exp(x) for x in wrong)),
                                                               abs=1e-4)


# ---------------------------------------------------------------- Gao et al.'s fits


@pytest.mark.parametrize("form,alpha,beta", [("best-of-n", 0.8, 0.3), ("rl", 1.5, 0.4)])
def test_fit_recovers_known_alpha_beta(form, alpha, beta):
    d = [0.0, 0.3, 0.7, 1.2, 1.9, 2.5]
    x2 = (lambda x: -x * x) if form == "best-of-n" else (lambda x: -x * math.log(x) if x > 0 else 0.0)
    gain = [alpha * x + beta * x2(x) for x in d]
    fit = fit_gao(d, gain, form)
    assert fit.alpha == pytest.approx(alpha, abs=1e-10) and fit.beta == pytest.approx(beta, abs=1e-10)
    assert fit.r2 == pytest.approx(1.0) and fit.points == 6


def test_fit_by_hand():
    # best-of-n at d = 1, 2 with gains 1, 0: alpha - beta = 1, 2 alpha - 4 beta = 0 -> alpha = 2, beta = 1
    fit = fit_gao([1.0, 2.0], [1.0, 0.0], "best-of-n")
    assert (fit.alpha, fit.beta) == (pytest.approx(2.0), pytest.approx(1.0))
    # three points, not on the curve: x1 = d = (1, 2, 3), x2 = -d^2 = (-1, -4, -9), y = (1, 1, 0)
    # normal equations [[14, -36], [-36, 98]] (a, b) = (3, -5): det 76, a = (3*98 - 5*36)/76 = 1.5,
    # b = (14*(-5) + 36*3)/76 = 0.5; fitted (1, 1, 0) exactly -> R^2 = 1
    fit = fit_gao([1.0, 2.0, 3.0], [1.0, 1.0, 0.0], "best-of-n")
    assert (fit.alpha, fit.beta, fit.r2) == (pytest.approx(1.5), pytest.approx(0.5), pytest.approx(1.0))
    # y = (1, 0, 0): a = (1*98 - 1*36)/76 = 62/76, b = (14*(-1) + 36*1)/76 = 22/76; fitted
    # (40/76, 36/76, -12/76); SS_res = (36^2 + 36^2 + 12^2)/76^2 = 2736/5776, SS_tot = 2/3
    fit = fit_gao([1.0, 2.0, 3.0], [1.0, 0.0, 0.0], "best-of-n")
    assert fit.alpha == pytest.approx(62 / 76) and fit.beta == pytest.approx(22 / 76)
    assert fit.r2 == pytest.approx(1 - (2736 / 5776) / (2 / 3))
    assert fit_gao([0.0, 1.0], [0.0, 1.0], "rl") is None  # d log d = 0 at d = 1: beta undetermined


def test_fit_curves_measures_gain_from_the_start():
    points = [CurvePoint("ppo", kl, proxy=0.0, gold=5.0 + 2.0 * math.sqrt(kl) - 0.5 * math.sqrt(kl) ** 2)
              for kl in (0.0, 0.25, 1.0, 4.0)]
    points = [CurvePoint("best-of-n", p.kl, p.proxy, p.gold) for p in points] + [CurvePoint("dpo", 1.0, 0.0, 7.0)]
    fits = fit_curves(points)
    fit, start = fits["best-of-n"]
    assert start == 5.0 and fit.alpha == pytest.approx(2.0) and fit.beta == pytest.approx(0.5)
    assert "dpo" not in fits  # no point at KL 0 to measure a gain from


# ---------------------------------------------------------------- the headline's rule


def test_gain_claimed_only_where_gold_and_a_judge_free_metric_agree():
    up, flat, down = (0.2, 0.1, 0.3), (0.1, -0.1, 0.3), (-0.2, -0.3, -0.1)
    agreed = judges_agree({"proxy": up, "gold": up, "tqa/mc1": flat, "pref/harmless/accuracy": up})
    assert agreed["claim"] == "gain" and agreed["agree"] == ["pref/harmless/accuracy"]
    assert agreed["disagree"] == ["tqa/mc1"]
    assert judges_agree({"proxy": up, "gold": up, "tqa/mc1": flat})["claim"] == "none"  # gold alone
    assert judges_agree({"proxy": up, "gold": flat, "tqa/mc1": up})["claim"] == "none"  # gold unclear
    mixed = judges_agree({"proxy": up, "gold": up, "tqa/mc1": down})
    assert mixed["claim"] == "none" and mixed["disagree"] == ["tqa/mc1"]
    assert judges_agree({"gold": down, "tqa/mc2": down})["claim"] == "loss"
    assert judges_agree({"gold": (None, None, None), "tqa/mc2": up})["claim"] == "none"
