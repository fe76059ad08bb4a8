"""The report: verdict lines, escaping, tables, and PNGs built from saved metrics.jsonl files."""
from __future__ import annotations

import math

import pytest

from rlhf.evaluation import evaluate as ev
from rlhf.evaluation import report
from rlhf.core.tracking import MetricsLogger

PNG = b"\x89PNG\r\n\x1a\n"
NASTY = "<script>alert(1)</script> | **bold** [link](http://x) `code`\nsecond line _it_"


def _write_stage_metrics(root, run_cfg):
    """metrics.jsonl + summary.json of the three training stages, with the keys the stages log."""
    runs = {}
    for stage in ("sft", "reward", "ppo"):
        logger = MetricsLogger(root / stage, run_cfg, stage)
        for step in range(1, 41):
            if stage == "sft":
                logger.log({"train/loss": 3.0 / step, "train/learning_rate": 1e-4}, step)
                if step % 10 == 0:
                    logger.log({"eval/loss": 2.5 / step ** 0.5}, step)
            elif stage == "reward":
                logger.log({"loss/pairwise": 0.7 - step / 100, "loss/helpful": 0.6 - step / 100}, step)
                if step % 10 == 0:
                    logger.log({f"eval/accuracy_{h}": 0.5 + step / 100 for h in report.HEADS}, step)
            else:
                logger.log({"reward/composite": step / 40 + math.sin(step) / 10, "reward/helpful": 0.1,
                            "objective/kl": step / 20, "objective/kl_coef": 0.05 * (1 + step / 40)}, step)
        logger.log({"reward/composite": 99.0, "objective/kl": 1.0}, 1)  # a resumed run logs step 1 again
        logger.summary({"final": 1.0, "note": "ok"})
        logger.finish()
        runs[stage] = str(root / stage)
    return runs


def _records(rewards):
    """Per-sample records for policies with per-prompt composite rewards, 3 sources x n prompts."""
    out = []
    for policy, values in rewards.items():
        for decoding in ("greedy", "sampled"):
            for i, value in enumerate(values):
                source = ev.SOURCES[i % 3]
                out.append({"variant": f"{policy}/0-shot/{decoding}", "policy": policy, "shots": 0,
                            "decoding": decoding, "source": source, "id": str(i), "prompt": f"prompt {i}",
                            "length": 5, "ended": True,
                            "response": NASTY if policy == "ppo" and i == 0 else f"answer {i} from {policy}",
                            "references": ["reference summary"] if source == "dialogsum" else [],
                            "reward/composite": value, "reward/harmless": value / 2, "toxicity": 0.01,
                            **({"kl/k1": 1.5, "kl/k3": 1.2} if policy != "base" and decoding == "sampled" else {})})
    return out


def _results(records):
    cfg = ev.EvalConfig(policies=[ev.PolicyConfig(p, "x") for p in dict.fromkeys(r["policy"] for r in records)],
                        variants=[ev.VariantConfig(decoding="greedy"), ev.VariantConfig(decoding="sampled")])
    described = {p.name: {"path": p.model, "kind": "full", "reference": ""} for p in cfg.policies}
    return ev.build_results(cfg, records, described)


def test_escape_cell_neutralises_markup():
    cell = report.escape_cell(NASTY)
    assert "<script>" not in cell and "&lt;script&gt;" in cell
    assert "|" not in cell.replace("&#124;", "") and "\n" not in cell and "<br>" in cell
    for raw in ("**", "[link]", "`"):
        assert raw not in cell
    assert report.escape_cell("snake_case_name") == "snake_case_name"  # intraword underscores are not emphasis
    assert report.escape_cell("_it_") == "&#95;it&#95;"


def test_fmt_handles_missing_values():
    assert report.fmt(None) == report.fmt(float("nan")) == "—"
    assert report.fmt(0.12345) == "0.123" and report.fmt(3) == "3"
    assert report.fmt_interval(0.5, 0.2, 0.8) == "0.500 (0.200, 0.800)"
    assert report.fmt_interval(0.5, None, None) == "0.500"


@pytest.mark.parametrize("ppo_rewards, expected", [
    ([1.0, 1.2, 0.9, 1.1, 1.3, 1.0], "**PPO beats SFT.**"),
    ([0.1, -0.2, 0.1, -0.1, 0.0, -0.2], "**PPO does not beat SFT.**"),
    ([0.6, -0.5, 0.7, -0.4, 0.5, -0.6], "not clearly"),
])
def test_headline_verdict(ppo_rewards, expected):
    sft = [0.0, 0.1, -0.1, 0.0, 0.1, 0.0]
    results = _results(_records({"sft": sft, "ppo": ppo_rewards}))
    head = report.headline(results)
    assert expected in head["verdict"][0]
    assert head["ppo/reward/composite"] == pytest.approx(sum(ppo_rewards) / 6)
    assert any(line.startswith("Win-rate of ppo against sft") for line in head["verdict"])
    assert any("KL cost" in line and "1.500" in line for line in head["verdict"])
    assert any(line.startswith("Toxicity (Detoxify)") and "not worse" in line for line in head["verdict"])


def test_headline_says_when_toxicity_and_harmless_are_worse_or_unavailable():
    records = _records({"sft": [1.0] * 6, "ppo": [-1.0, -1.1, -0.9, -1.0, -1.2, -0.8]})
    for r in records:
        r.pop("toxicity")
    head = report.headline(_results(records))
    assert any(line.startswith("Harmless head") and "**worse**" in line for line in head["verdict"])
    assert any(line.startswith("Toxicity: unavailable") for line in head["verdict"])


def test_report_from_saved_metrics(tmp_path, run_cfg):
    runs = _write_stage_metrics(tmp_path / "runs", run_cfg)
    records = _records({"base": [0.0] * 6, "sft": [0.1] * 6, "ppo": [0.5, 0.6, 0.4, 0.5, 0.7, 0.6]})
    results = _results(records)
    out = tmp_path / "report"
    path, tables = report.write_report(out, results, records, runs, examples_per_source=2)
    text = path.read_text()
    for png in ("training_sft.png", "training_reward.png", "training_ppo.png", "reward_heads.png",
                "distributions.png", "rouge.png"):
        data = (out / png).read_bytes()
        assert data[:8] == PNG and len(data) > 10_000, png
        assert f"]({png})" in text
    assert "**PPO beats SFT.**" in text and "## Training" in text and "final numbers" in text
    assert "<script>" not in text and "&lt;script&gt;" in text  # the nasty generation is shown, escaped
    assert {t.name for t in tables} == {"eval/overview", "eval/rouge", "eval/per_source", "eval/examples",
                                        "train/sft", "train/reward", "train/ppo"}
    overview = next(t for t in tables if t.name == "eval/overview")
    assert [row[0] for row in overview.rows][:2] == ["base (0-shot, greedy)", "base (0-shot, sampled)"]
    examples = next(t for t in tables if t.name == "eval/examples")
    assert NASTY in examples.rows[0][-1]  # W&B gets the raw text; only markdown is escaped
    # Every markdown table row has as many cells as its header (escaping kept the pipes out).
    for block in text.split("\n\n"):
        lines = [line for line in block.splitlines() if line.startswith("|")]
        if lines:
            assert len({line.count(" | ") for line in lines if not line.startswith("|---")}) == 1


def test_training_curves_keep_the_last_record_of_a_resumed_step(tmp_path, run_cfg):
    runs = _write_stage_metrics(tmp_path / "runs", run_cfg)
    from rlhf.core.tracking import read_metrics

    steps, values = report._series(read_metrics(f"{runs['ppo']}/metrics.jsonl"), "reward/composite")
    assert steps == list(range(1, 41)) and values[0] == 99.0
    assert report.plot_curves(read_metrics(f"{runs['ppo']}/metrics.jsonl"),
                              report.STAGE_PANELS["sft"], "x", tmp_path / "none.png") is None  # no loss keys there


def test_report_without_reward_model(tmp_path):
    records = _records({"sft": [0.0] * 3, "ppo": [0.0] * 3})
    for r in records:
        for key in ("reward/composite", "reward/harmless", "toxicity"):
            r.pop(key)
    path, _ = report.write_report(tmp_path, _results(records), records, {})
    assert "No reward model was configured" in path.read_text()
    assert not (tmp_path / "reward_heads.png").exists()


def test_diagnose_explains_a_ppo_that_did_not_win():
    head = {"candidate": "ppo", "reward/composite_delta": -0.1, "reward/composite_delta_low": -0.3, "ppo/kl/k1": 0.2}
    reasons = report.diagnose(head, {"reward/composite_first": 0.1, "reward/composite_last": 0.4})
    assert "stayed close to its start" in reasons[0] and "did not carry over" in reasons[1]
    assert "did not rise" in report.diagnose(head, {"reward/composite_first": 0.4, "reward/composite_last": 0.1})[1]
    assert report.diagnose({**head, "reward/composite_delta": 0.5, "reward/composite_delta_low": 0.1}, None) == []


def _judged_results(tmp_path, with_gold: bool):
    """Saved-style results of sft plain and best-of-{1,2,4}, scored by a proxy and (optionally) a gold judge."""
    from reward_models.model import ScoringConfig

    proxy = tmp_path / "proxy"
    (proxy / "final").mkdir(parents=True)
    ScoringConfig().save(proxy / "final")
    (proxy / "summary.json").write_text('{"test/accuracy_helpful": 0.8}')
    records = []
    for key, best_of, shift in (("sft/0-shot/sampled", 0, 0.0), *[(f"sft/0-shot/sampled/best-of-{n}", n, s) for n, s in
                                                                   ((1, 0.0), (2, 0.5), (4, 1.0))]):
        for i in range(6):
            records.append({"variant": key, "policy": "sft", "shots": 0, "decoding": "sampled",
                            "source": ev.SOURCES[i % 3], "id": str(i), "prompt": f"p{i}", "response": f"r{i}",
                            "references": [], "length": 4, "ended": True, "reward/composite": shift + i / 10,
                            **({"gold/composite": shift / 2 - i / 20} if with_gold else {}),
                            **({"best_of": best_of, "kl/best_of_n": report_kl(best_of)} if best_of else {})})
    cfg = ev.EvalConfig(policies=[ev.PolicyConfig("sft", "x")], reward_model=str(proxy),
                        variants=[ev.VariantConfig(), ev.VariantConfig(best_of_n=[1, 2, 4])])
    if with_gold:
        gold = tmp_path / "gold"
        (gold / "final").mkdir(parents=True)
        ScoringConfig(role="gold").save(gold / "final")
        cfg.gold.model = str(gold)
    return ev.build_results(cfg, records, {"sft": {"path": "x", "kind": "full", "reference": ""}}), records


def report_kl(n):
    from rlhf.evaluation.best_of_n import analytic_kl

    return analytic_kl(n)


def test_report_with_gold_and_best_of_n_from_saved_results(tmp_path):
    import json

    results, records = _judged_results(tmp_path, with_gold=True)
    saved = json.loads(json.dumps(results))  # what a later comparison report reads back from results.json
    assert [r["n"] for r in saved["best_of_n"][0]["per_n"]] == [1, 2, 4]
    path, tables = report.write_report(tmp_path / "out", saved, records, {})
    text = path.read_text()
    names = [t.name for t in tables]
    assert {"eval/judges", "eval/judged", "eval/best_of_n"} <= set(names)
    judges = next(t for t in tables if t.name == "eval/judges")
    assert judges.rows[0][2:] == ["proxy", "0.800", "unknown", "unknown"] and judges.rows[1][2] == "gold"
    best = next(t for t in tables if t.name == "eval/best_of_n")
    assert [row[1] for row in best.rows] == ["1", "2", "4"] and best.rows[1][2] == "0.193"  # log 2 - 1/2
    assert best.rows[2][4].startswith("1.250")  # proxy mean of best-of-4 = 1.0 + mean(i / 10)
    assert "reuse the same samples" in text and "The only judge is the proxy" not in text
    assert (tmp_path / "out" / "overoptimisation.png").read_bytes()[:8] == PNG
    assert "](overoptimisation.png)" in text


def test_report_without_gold_says_the_proxy_is_the_only_judge(tmp_path):
    results, records = _judged_results(tmp_path, with_gold=False)
    path, tables = report.write_report(tmp_path / "out", results, records, {})
    assert report.NO_GOLD in path.read_text()
    assert "eval/judged" not in [t.name for t in tables]
    assert not (tmp_path / "out" / "gold_heads.png").exists()


def test_overoptimisation_plot_takes_points_of_several_methods(tmp_path):
    points = [report.CurvePoint("best-of-n", kl, proxy, gold, f"n={n}")
              for n, kl, proxy, gold in ((1, 0.0, 0.0, 0.0), (4, 0.64, 0.8, 0.3), (16, 1.83, 1.5, 0.1))]
    points += [report.CurvePoint("ppo", 0.5, 0.9, None), report.CurvePoint("ppo", 2.0, 2.5, None)]
    out = report.plot_overoptimisation(points, tmp_path / "curve.png")
    assert out.read_bytes()[:8] == PNG and len(out.read_bytes()) > 10_000
    assert report.plot_overoptimisation([], tmp_path / "none.png") is None


def test_policy_points_put_checkpoints_on_their_method_curve_from_the_baseline():
    variant = lambda policy, **kw: {"key": f"{policy}/v", "policy": policy, "shots": 0, "decoding": "sampled", **kw}
    results = {"baseline": "sft",
               "variants": [variant("sft"), variant("grpo@10"), variant("grpo@20"), variant("dpo"),
                            variant("sft", best_of=2, key="sft/bon"), variant("base", shots=3, key="b/3")],
               "metrics": {"sft/v": {"all": {"kl/k1": 0.0, "reward/composite": 0.1, "gold/composite": 0.2}},
                           "grpo@10/v": {"all": {"kl/k1": 0.5, "reward/composite": 0.6, "gold/composite": 0.3}},
                           "grpo@20/v": {"all": {"kl/k1": 2.0, "reward/composite": 1.5, "gold/composite": 0.25}},
                           "dpo/v": {"all": {"kl/k1": 0.3, "reward/composite": 0.2}},
                           "sft/bon": {"all": {"kl/k1": 9.0}}, "b/3": {"all": {"kl/k1": 9.0}}}}
    points = report.policy_points(results)
    as_tuples = [(p.method, p.kl, p.proxy, p.gold, p.label) for p in points]
    assert as_tuples == [("grpo", 0.0, 0.1, 0.2, "sft"), ("grpo", 0.5, 0.6, 0.3, "10"), ("grpo", 2.0, 1.5, 0.25, "20"),
                         ("dpo", 0.0, 0.1, 0.2, "sft"), ("dpo", 0.3, 0.2, None, "")]


def test_gold_peaks_names_the_peak_or_says_there_is_none():
    P = report.CurvePoint
    points = [P("ppo", 0.0, 0.0, 0.10, "sft"), P("ppo", 0.5, 0.3, 0.40, "15"), P("ppo", 2.0, 0.9, -0.20, "30"),
              P("best-of-n", 0.0, 0.0, 0.0, "n=1"), P("best-of-n", 1.2, 1.0, 0.5, "n=8"),
              P("grpo", 0.0, 0.0, 0.3, "sft"), P("grpo", 1.0, 0.5, 0.1, "20"),
              P("dpo", 0.04, 0.1, None, "final")]  # no gold: no sentence
    lines = report.gold_peaks(points)
    assert lines == ["ppo: gold peaks at 15 (KL 0.50, gold 0.400), then falls to -0.200 at KL 2.00",
                     "best-of-n: gold highest at the largest KL tried, n=8 (KL 1.20, gold 0.500): still rising, "
                     "no peak reached",
                     "grpo: gold highest at the start, sft (KL 0.00, gold 0.300): every point further away scored lower"]


def _judge_free(delta):
    """Judge-free records of sft and ppo on 6 TruthfulQA questions: ppo's MC2 = sft's + the given deltas."""
    from rlhf.evaluation.likelihood import aggregate_judge_free

    sft = [0.2, 0.4, 0.3, 0.5, 0.2, 0.4]
    records = [{"policy": p, "metric": "tqa/mc2", "id": str(i), "value": v + (d if p == "ppo" else 0.0)}
               for p in ("sft", "ppo") for i, (v, d) in enumerate(zip(sft, delta))]
    return aggregate_judge_free(records, baseline="sft")


@pytest.mark.parametrize("gold_delta, mc2_delta, expected", [
    ([0.5, 0.6, 0.4, 0.5, 0.7, 0.5], [0.1, 0.12, 0.09, 0.1, 0.11, 0.1], "**Judges agree: gain shown**"),
    ([0.5, 0.6, 0.4, 0.5, 0.7, 0.5], [0.1, -0.1, 0.2, -0.2, 0.05, -0.05], "**No gain shown**"),  # MC2 unclear
    ([0.5, -0.6, 0.4, -0.5, 0.7, -0.5], [0.1, 0.12, 0.09, 0.1, 0.11, 0.1], "**No gain shown**"),  # gold unclear
])
def test_headline_claims_a_gain_only_where_gold_and_a_judge_free_metric_agree(gold_delta, mc2_delta, expected):
    records = _records({"sft": [0.0] * 6, "ppo": [1.0] * 6})
    for r in records:  # the gold: ppo above sft by gold_delta on each prompt
        r["gold/composite"] = gold_delta[int(r["id"])] if r["policy"] == "ppo" else 0.0
    results = _results(records)
    results["judge_free"] = _judge_free(mc2_delta)
    line = next(line for line in report.headline(results)["verdict"] if "Judges" in line or "No gain" in line)
    assert line.startswith(expected) and "TruthfulQA MC2" in line and "Response length (tokens): ppo 5.0 vs sft 5.0" in line
    assert "gold " in line and ", n=6" in line  # each difference with its n: 6 prompts, 6 questions
    assert report.judge_free_table(results).rows[1][0] == "ppo"  # the table beside it: sft, then ppo
