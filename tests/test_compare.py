"""rlhf compare: the methods' policies from their run folders, refusals, and the table from saved results."""
from __future__ import annotations

import json

import pytest

from pipelines import compare
from rlhf.core.config import ConfigError
from rlhf.evaluation import metrics


def _rl_run(tmp_path, name="grpo-curve", algo="grpo", steps=(15, 30)):
    run = tmp_path / name
    for step in steps:
        (run / "checkpoints" / f"step-{step:06d}" / "adapter").mkdir(parents=True)
    (run / "final" / "adapter").mkdir(parents=True)
    (run / "config.yaml").write_text(f"rl:\n  algo: {algo}\ntrain:\n  steps: 40\n")
    (run / "metrics.jsonl").write_text("".join(json.dumps({"time/step_s": 2.5}) + "\n" for _ in range(4)))
    return run


def _folders(tmp_path):
    for name in ("sft", "proxy", "gold"):
        (tmp_path / name).mkdir()
    dpo = tmp_path / "dpo-all"
    (dpo / "final" / "adapter").mkdir(parents=True)
    (dpo / "metrics.jsonl").write_text(json.dumps({"step": 36, "train/runtime_s": 42.0}) + "\n")
    return compare.CompareConfig(sft=str(tmp_path / "sft"), proxy=str(tmp_path / "proxy"), gold=str(tmp_path / "gold"),
                                 rl_runs=[str(_rl_run(tmp_path))], dpo_runs=[str(dpo)], best_of_n=[1, 4])


def test_every_checkpoint_and_final_is_a_policy_on_its_method_curve(tmp_path):
    cfg = _folders(tmp_path)
    ecfg = compare.eval_config(cfg)
    assert [p.name for p in ecfg.policies] == ["sft", "grpo@15", "grpo@30", "grpo@final", "dpo"]
    assert all(p.base == cfg.sft for p in ecfg.policies[1:])  # KL to the SFT start
    assert ecfg.gold.model == cfg.gold and ecfg.reward_model == cfg.proxy and ecfg.baseline == "sft"
    assert ecfg.variants[1].best_of_n == [1, 4] and ecfg.variants[1].policies == ["sft"]
    other = _rl_run(tmp_path, name="run-b", algo="rloo", steps=(20, 40))
    assert compare.rl_method(other) == "rloo:run-b"
    assert [p.name for p in compare.rl_policies(other, cfg.sft)] == ["rloo:run-b@20", "rloo:run-b@40"]  # 40 = final
    assert {m: compare.training_seconds(r) for m, r in compare.method_runs(cfg).items()} == {"grpo": 10.0, "dpo": 42.0}


@pytest.mark.parametrize("change, key", [({"gold": ""}, "gold"), ({"best_of_n": [0, 2]}, "best_of_n"),
                                         ({"dpo_runs": ["/nope"]}, "dpo_runs[0]")])
def test_bad_input_names_the_key(tmp_path, change, key):
    cfg = _folders(tmp_path)
    for name, value in change.items():
        setattr(cfg, name, value)
    with pytest.raises(ConfigError, match=rf"^{__import__('re').escape(key)}:"):
        compare.eval_config(cfg)


def test_table_from_saved_results(tmp_path):
    judged = lambda c, g, kl: {"kl/k1": kl, "reward/composite": c, "reward/composite_low": c - 1,
                               "reward/composite_high": c + 1, "gold/composite": g, "gold/composite_low": g - 0.5,
                               "gold/composite_high": g + 0.5, "gold/harmless": g / 2, "length": 20.0,
                               "refusal_rate": kl / 6, "n": 48}
    results = {
        "variants": [{"key": "sft/s", "policy": "sft", "shots": 0, "decoding": "sampled"},
                     {"key": "grpo@15/s", "policy": "grpo@15", "shots": 0, "decoding": "sampled"},
                     {"key": "sft/bon1", "policy": "sft", "shots": 0, "decoding": "sampled", "best_of": 1},
                     {"key": "sft/bon4", "policy": "sft", "shots": 0, "decoding": "sampled", "best_of": 4}],
        "metrics": {"sft/s": {"all": judged(0.0, 0.1, 0.0), "dialogsum": {"rouge/rougeL": 0.25}},
                    "grpo@15/s": {"all": {**judged(1.0, 0.3, 1.5), "gold/composite_delta": 0.2,
                                          "gold/composite_delta_low": 0.05, "gold/composite_delta_high": 0.35,
                                          "gold/win_rate": 0.6, "gold/win_rate/low": 0.5, "gold/win_rate/high": 0.7},
                                  "dialogsum": {"rouge/rougeL": 0.24, "rouge/rougeL_delta": -0.01,
                                                "rouge/rougeL_delta_low": -0.04, "rouge/rougeL_delta_high": 0.02}},
                    "sft/bon1": {"all": judged(0.5, 0.2, 0.0)}, "sft/bon4": {"all": judged(2.0, 0.4, 0.0)}}}
    results["best_of_n"] = [{"policy": "sft", "per_n": [
        {"n": 1, "variant": "sft/bon1", "kl": 0.0, "reward/composite": 0.5, "gold/composite": 0.0},
        {"n": 4, "variant": "sft/bon4", "kl": 0.636, "reward/composite": 2.0, "gold/composite": 0.4}]}]
    # the same draw: best-of-4 beats best-of-1 by 0.1 on one prompt and 0.3 on the other
    records = [{"variant": v, "source": "s", "id": i, "gold/composite": g}
               for v, i, g in (("sft/bon1", "a", 0.0), ("sft/bon1", "b", 1.0), ("sft/bon4", "a", 0.1),
                               ("sft/bon4", "b", 1.3), ("sft/s", "a", 5.0))]
    rows = compare.comparison_rows(results, {"grpo": 600.0}, records)
    header = rows[0]
    assert header[:6] == ["method", "KL to SFT", "proxy composite", "gold composite", "gold Δ vs SFT",
                          "gold win-rate vs SFT"] and "gold harmless" in header
    by_method = {r[0]: dict(zip(header, r)) for r in rows[1:]}
    assert by_method["grpo@15"]["gold Δ vs SFT"] == "0.200 [0.050, 0.350]"
    assert by_method["grpo@15"]["gold win-rate vs SFT"] == "0.600 [0.500, 0.700]"
    assert by_method["grpo@15"]["training s"] == "600" and by_method["sft"]["ROUGE-L (DialogSum)"] == "0.250"
    assert by_method["grpo@15"]["ROUGE-L Δ vs SFT (paired)"] == "-0.010 [-0.040, 0.020]"
    assert by_method["best-of-4 (sft)"]["KL to SFT"] == "0.64" and by_method["best-of-4 (sft)"]["gold composite"] == "0.400 [-0.100, 0.900]"
    assert by_method["best-of-4 (sft)"]["gold Δ vs best-of-1 (same draw)"].startswith("0.200 [")
    assert by_method["best-of-1 (sft)"]["gold Δ vs best-of-1 (same draw)"] == "–"
    assert [r[0] for r in rows[1:]] == ["sft", "grpo@15", "best-of-1 (sft)", "best-of-4 (sft)"]  # no duplicates
    assert by_method["sft"]["KL to SFT"] == "0.00"
    low, high = metrics.wilson_interval(12, 48)  # 0.25 of 48 responses
    assert by_method["grpo@15"]["refusals"] == f"0.25 [{low:.2f}, {high:.2f}]"  # refusal_rate = kl / 6
    assert by_method["sft"]["refusals"] == "0.00 [0.00, 0.07]"  # Wilson: 0 of 48 -> [0, 1.96² / (48 + 1.96²)]
    out = compare.write_comparison(tmp_path, results, {"grpo": 600.0})
    assert "| grpo@15 | 1.50 |" in out.read_text()
    # where the gold peaks: best-of-n's gold (0.0 at n=1, 0.4 at n=4) still rising at its largest n
    assert "- best-of-n: gold highest at the largest KL tried, n=4 (KL 0.64, gold 0.400)" in out.read_text()


def test_compare_lists_gao_fits_and_judge_free_metrics(tmp_path):
    """Best-of-n's gold generated from R(d) = d(0.5 - 0.2 d) over a start of 1.0: compare.md recovers alpha and
    beta; the judge-free table shows each metric with its interval, n, and the paired difference to SFT."""
    import math

    from rlhf.evaluation.best_of_n import analytic_kl

    per_n = [{"n": n, "variant": f"sft/bon{n}", "kl": analytic_kl(n), "reward/composite": 0.0,
              "gold/composite": 1.0 + math.sqrt(analytic_kl(n)) * (0.5 - 0.2 * math.sqrt(analytic_kl(n)))}
             for n in (1, 4, 16, 64)]
    results = {"variants": [{"key": "sft/s", "policy": "sft", "shots": 0, "decoding": "sampled"},
                            {"key": "dpo/s", "policy": "dpo", "shots": 0, "decoding": "sampled"}],
               "metrics": {"sft/s": {"all": {"length": 20.0, "n": 4}}, "dpo/s": {"all": {"length": 12.5, "n": 4}},
                           **{f"sft/bon{n}": {"all": {"n": 4}} for n in (1, 4, 16, 64)}},
               "best_of_n": [{"policy": "sft", "per_n": per_n}], "baseline": "sft",
               "judge_free": {"sft": {"tqa/mc1": 0.25, "tqa/mc1_low": 0.1, "tqa/mc1_high": 0.4, "tqa/mc1/n": 32},
                              "dpo": {"tqa/mc1": 0.5, "tqa/mc1_low": 0.3, "tqa/mc1_high": 0.7, "tqa/mc1/n": 32,
                                      "tqa/mc1_delta": 0.25, "tqa/mc1_delta_low": 0.05, "tqa/mc1_delta_high": 0.45}}}
    text = compare.write_comparison(tmp_path, results, {}).read_text()
    assert "- best-of-n: R(d) = d(α − β d), α = 0.5000, β = 0.2000, R² = 1.000 on 4 points" in text
    assert "| dpo | 12.5 | 0.500 (0.300, 0.700); 32 | 0.250 (0.050, 0.450) |" in text


def test_saved_comparison_reads_results_samples_and_the_plain_baseline(tmp_path):
    """The baseline is the SFT run sampled zero-shot: not its best-of-n, few-shot or greedy variants."""
    variants = [{"key": "sft/2-shot/greedy", "policy": "sft", "shots": 2, "decoding": "greedy"},
                {"key": "sft/0-shot/sampled/best-of-1", "policy": "sft", "shots": 0, "decoding": "sampled", "best_of": 1},
                {"key": "ppo/0-shot/sampled", "policy": "ppo", "shots": 0, "decoding": "sampled"},
                {"key": "sft/0-shot/sampled", "policy": "sft", "shots": 0, "decoding": "sampled"}]
    (tmp_path / "results.json").write_text(json.dumps({"baseline": "sft", "variants": variants}))
    samples = [{"variant": "ppo/0-shot/sampled", "response": "a"}, {"variant": "sft/0-shot/sampled", "response": "b"}]
    (tmp_path / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in samples))
    results, records, baseline = compare.saved_comparison(tmp_path)
    assert baseline == "sft/0-shot/sampled" and records == samples and results["variants"] == variants
