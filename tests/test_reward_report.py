"""The reward-model report (rlhf eval-rm): its maths on hand-computed cases, and a tiny model end to end."""
from __future__ import annotations

import json
import math

import pytest
import torch

from reward_models.report import (LENGTH_BINS, RMReportConfig, ScoredPairs, accuracy_interval, agreement,
                                  build_report, calibration, length_bins, prefers_longer)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SHORTER, SIMILAR, LONGER = LENGTH_BINS


def test_accuracy_interval_by_hand():
    got = accuracy_interval(torch.tensor([1.0, 1.0, 0.0, 0.5]))  # a tie counts half: 2.5 / 4
    # Wilson, z = 1.96, p = 0.625, n = 4: centre 0.5638, half-width 0.3443
    assert got["accuracy"] == 0.625 and got["n"] == 4
    assert got["low"] == pytest.approx(0.2194, abs=1e-3) and got["high"] == pytest.approx(0.9081, abs=1e-3)
    empty = accuracy_interval(torch.zeros(0))
    assert empty["n"] == 0 and math.isnan(empty["accuracy"])


def test_length_bins_by_hand():
    assert length_bins(torch.tensor([-10, -5, 0, 3, 6]), 5) == [SHORTER, SIMILAR, SIMILAR, SIMILAR, LONGER]
    assert length_bins(torch.tensor([-1, 0, 1]), 0) == [SHORTER, SIMILAR, LONGER]


def test_prefers_longer_by_hand():
    # equal lengths (last pair) say nothing; a score tie counts half
    got = prefers_longer(torch.tensor([1.0, -1.0, 2.0, 0.0, 5.0]), torch.tensor([3, 4, -2, 7, 0]))
    assert got.tolist() == [1.0, 0.0, 0.0, 0.5]


def test_calibration_by_hand():
    ece, rows = calibration(torch.tensor([0.9, 0.6, 0.3]), bins=2)
    # both orders: (0.9,1) (0.6,1) (0.3,1) (0.1,0) (0.4,0) (0.7,0)
    # bin [0, .5): 0.3, 0.1, 0.4 -> predicted 0.2667, observed 1/3; bin [.5, 1]: 0.9, 0.6, 0.7 -> 0.7333, 2/3
    assert [r["n"] for r in rows] == [3, 3]
    assert rows[0]["predicted"] == pytest.approx(0.8 / 3) and rows[0]["observed"] == pytest.approx(1 / 3)
    assert rows[1]["predicted"] == pytest.approx(2.2 / 3) and rows[1]["observed"] == pytest.approx(2 / 3)
    assert ece == pytest.approx(1 / 15)
    assert calibration(torch.tensor([0.5, 0.5]), bins=10)[0] == pytest.approx(0.0)  # unsure and right half the time
    ece, rows = calibration(torch.tensor([1.0]), bins=4)  # p = 1 lands in the top bin, p = 0 in the bottom one
    assert ece == 0.0 and [(r["low"], r["n"]) for r in rows] == [(0.0, 1), (0.75, 1)]


def test_agreement_by_hand():
    assert agreement(torch.tensor([1.0, -1.0, 2.0, 0.0]), torch.tensor([3.0, 1.0, 1.0, 0.0])) == 0.75


def test_build_report_from_hand_made_scores():
    scored = ScoredPairs(
        diff={"helpful": torch.tensor([1.0, 2.0, -1.0, 0.5]), "honest": torch.tensor([1.0, -2.0, -1.0, 3.0]),
              "composite": torch.tensor([1.0, 1.0, 1.0, -1.0])},
        labelled={"helpful": torch.tensor([True, True, True, False]), "honest": torch.tensor([False, False, False, True]),
                  "composite": torch.ones(4, dtype=torch.bool)},
        length_diff=torch.tensor([10, -10, 0, 2]), sources=["a", "a", "b", "c"])
    report = build_report(scored, RMReportConfig(similar_tokens=3))
    assert report["accuracy"]["helpful"]["accuracy"] == pytest.approx(2 / 3) and report["accuracy"]["helpful"]["n"] == 3
    assert report["accuracy"]["honest"]["accuracy"] == 1.0 and report["accuracy"]["composite"]["accuracy"] == 0.75
    assert report["accuracy_by_source"]["a"]["helpful"]["accuracy"] == 1.0
    assert report["accuracy_by_source"]["b"]["helpful"]["accuracy"] == 0.0 and "honest" not in report["accuracy_by_source"]["a"]
    helpful = report["length"]["helpful"]
    assert [helpful["bins"][b]["n"] for b in LENGTH_BINS] == [1, 1, 1]
    assert [helpful["bins"][b]["accuracy"] for b in LENGTH_BINS] == [1.0, 0.0, 1.0]
    assert helpful["longer_wins"]["accuracy"] == pytest.approx(1.5 / 3)  # +10 wins, -10 loses, 0 ties
    assert helpful["shorter_wins"]["accuracy"] == pytest.approx(1.5 / 3)
    assert helpful["picks_longer"]["accuracy"] == 0.5 and helpful["picks_longer"]["n"] == 2  # +10: yes; -10: no
    assert "composite" not in report["calibration"] and report["calibration"]["helpful"]["n"] == 3
    assert report["agreement"] == {"helpful/honest": {"agreement": 0.75, "n": 4}}


@pytest.fixture(scope="module")
def tiny_reward_model(tmp_path_factory):
    from tests.preference_training import train_on_preferences
    from rlhf.data.sources import preference_records

    records = preference_records(["truthfulqa", "dialogsum"], "train")[::6]
    out = tmp_path_factory.mktemp("rm")
    return train_on_preferences(records, out, max_steps=12, max_length=96).run_dir


def write_pairs(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_eval_rm_end_to_end_on_a_tiny_model(tiny_reward_model, tmp_path, capsys):
    from rlhf.stages import STAGES
    cli = STAGES["eval-rm"].cli
    from reward_models.data import load_pairs, subsample
    from reward_models.evaluation import pair_accuracy
    from reward_models.model import load_reward_model

    out = tmp_path / "report"
    assert cli([str(tiny_reward_model), "--out", str(out), "--max_pairs_per_head", "24",
                "--precision", "fp32"]) == 0  # the run folder stands for its final/
    assert {p.name for p in out.iterdir()} == {"rm_report.json", "rm_report.md", "rm_report.png"}
    report = json.loads((out / "rm_report.json").read_text())
    assert report["split"] == "test" and report["model"] == str(tiny_reward_model / "final")
    # the head accuracies agree with the reward stage's own evaluation on the same pairs
    pairs = subsample(load_pairs(RMReportConfig().sources, [], "test"), 24)
    model, encoder, _ = load_reward_model(tiny_reward_model / "final")
    expected, counts = pair_accuracy(model, encoder, pairs)
    assert report["pairs"] == len(pairs) == report["accuracy"]["composite"]["n"]
    for head, accuracy in expected.items():
        assert report["accuracy"][head]["accuracy"] == pytest.approx(accuracy)
        assert report["accuracy"][head]["n"] == counts[head]
        bins = report["length"][head]["bins"]
        assert sum(b["n"] for b in bins.values()) == counts[head]
        assert sum(b["accuracy"] * b["n"] for b in bins.values() if b["n"]) == pytest.approx(accuracy * counts[head])
        assert sum(r["n"] for r in report["calibration"][head]["bins"]) == 2 * counts[head]
    assert set(report["agreement"]) == {"helpful/honest", "helpful/harmless", "honest/harmless"}
    assert {p.source for p in pairs} == set(report["accuracy_by_source"]) >= {"hh-rlhf-harmless", "truthfulqa",
                                                                              "dialogsum"}
    md = (out / "rm_report.md").read_text()
    assert "Length-controlled accuracy" in md and "Agreement between heads" in md and "ECE" in md
    assert (out / "rm_report.png").stat().st_size > 10_000
    assert "report in" in capsys.readouterr().out


def test_eval_rm_length_baselines_on_a_file_where_the_longer_answer_always_wins(tiny_reward_model, tmp_path):
    from rlhf.stages import STAGES
    cli = STAGES["eval-rm"].cli

    rows = [{"prompt": f"Question {i}?", "chosen": "a long and careful answer " * (i + 2), "rejected": "no",
             "dimension": ["helpful"], "source": "mine"} for i in range(12)]
    data = write_pairs(tmp_path / "pairs.jsonl", rows)
    out = tmp_path / "report"
    assert cli([str(tiny_reward_model / "final"), "--out", str(out), "--sources", "[]", "--extra_files", f"[{data}]",
                "--split", "all"]) == 0
    report = json.loads((out / "rm_report.json").read_text())
    assert report["pairs"] == 12 and list(report["accuracy_by_source"]) == ["mine"]
    length = report["length"]["helpful"]
    assert length["longer_wins"]["accuracy"] == 1.0 and length["shorter_wins"]["accuracy"] == 0.0
    assert length["bins"]["chosen longer"]["n"] == 12 and length["bins"]["chosen shorter"]["n"] == 0
    assert report["length"]["helpful"]["bins"]["similar"]["accuracy"] is None  # an empty bin: null, not NaN


def test_eval_rm_bad_input_is_one_line_and_exit_2(tiny_reward_model, tmp_path, capsys):
    from rlhf.stages import STAGES
    cli = STAGES["eval-rm"].cli

    assert cli([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(tmp_path) in err and "not a reward model folder" in err
    bad = write_pairs(tmp_path / "bad.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "a", "dimension": ["helpful"]}])
    assert cli([str(tiny_reward_model), "--extra_files", f"[{bad}]"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "extra_files[0]" in err and "bad.jsonl" in err
    assert cli([str(tiny_reward_model), "--nope", "1"]) == 2
    assert not (tmp_path / "rm_report").exists()


def test_eval_rm_asks_the_runtime_for_its_device(tiny_reward_model, tmp_path, monkeypatch, capsys):
    from rlhf.stages import STAGES
    cli = STAGES["eval-rm"].cli
    from rlhf.core import runtime

    monkeypatch.setattr(runtime, "cuda_present", lambda: False)
    assert cli([str(tiny_reward_model), "--out", str(tmp_path / "out"), "--device", "cuda"]) == 2
    assert capsys.readouterr().err.strip() == ("error: device: cuda requested, but this machine has no CUDA device "
                                               "(use auto or cpu)")
    assert not (tmp_path / "out").exists()


def test_eval_rm_is_a_subcommand():
    from rlhf.cli import commands
    from rlhf.stages import STAGES

    assert commands()["eval-rm"][0] == STAGES["eval-rm"].cli


# ---------------------------------------------------------------- sampled summaries ranked (ranking.policy)


def test_ranking_stats_by_hand():
    from reward_models.ranking import RankedSummary, ranking_stats

    rows = [RankedSummary("a", "s", rouge_l=r, score=s, words=w) for r, s, w in
            [(0.1, 1.0, 5), (0.2, 2.0, 6), (0.3, 3.0, 7)]]  # dialogue a: the head agrees with ROUGE-L, rho = 1
    rows += [RankedSummary("b", "s", rouge_l=r, score=s, words=w) for r, s, w in
             [(0.5, 3.0, 9), (0.6, 1.0, 8), (0.7, 2.0, 7)]]  # b: ranks 3 1 2 vs 1 2 3, d^2 = 4+1+1, rho = -0.5
    rows += [RankedSummary("c", "s", rouge_l=0.4, score=s, words=4) for s in (1.0, 2.0)]  # c: ROUGE-L constant
    stats = ranking_stats(rows, "rouge_l")
    within = stats["within"]
    assert (within["mean"], within["n"], within["undefined"]) == (pytest.approx(0.25), 2, 1)
    # pooled, 8 samples: score ranks 2 5 7.5 7.5 2 5 2 5 (ties averaged), ROUGE-L ranks 1 2 3 6 7 8 4.5 4.5;
    # both mean 4.5: sxy = 3, sxx = 37.5, syy = 41.5
    assert stats["pooled"]["spearman"] == pytest.approx(3 / math.sqrt(37.5 * 41.5))
    assert (stats["pooled"]["n"], stats["pooled"]["dialogues"]) == (8, 3)
    assert stats["pooled"]["low"] <= stats["pooled"]["spearman"] <= stats["pooled"]["high"]
    by_words = ranking_stats(rows, "words")["within"]  # a: +1; b: scores 3 1 2 vs words 9 8 7 -> ranks 3 1 2 / 3 2 1
    assert by_words["n"] == 2 and by_words["undefined"] == 1  # c: words constant
    assert by_words["mean"] == pytest.approx((1.0 + 0.5) / 2)

    # Another head on the same summaries: a reversed (rho -1), b in ROUGE-L's order (rho +1), c still undefined.
    from dataclasses import replace

    from reward_models.ranking import paired_within

    other = [replace(r, score=-r.score) if r.dialogue == "a" else replace(r, score=r.rouge_l) if r.dialogue == "b"
             else r for r in rows]
    paired = paired_within(rows, other)  # a: 1 - (-1) = 2; b: -0.5 - 1 = -1.5; mean 0.25, sd 1.75*sqrt(2)
    assert (paired["mean"], paired["n"]) == (pytest.approx(0.25), 2)
    assert paired["high"] - paired["mean"] == pytest.approx(1.959964 * 1.75, rel=1e-5)  # z * sd / sqrt(2)
    with pytest.raises(ValueError, match="same summaries"):
        paired_within(rows, other[::-1])


def test_eval_rm_ranks_sampled_summaries_with_a_tiny_policy(tiny_reward_model, tmp_path, capsys):
    from rlhf.evaluation.metrics import rouge, spearman
    from rlhf.stages import STAGES
    from reward_models.ranking import RankedSummary, ranking_stats

    out = tmp_path / "report"
    assert STAGES["eval-rm"].cli([str(tiny_reward_model), "--out", str(out), "--max_pairs_per_head", "4",
                                  "--ranking.policy", "tiny-llama", "--ranking.dialogues", "3",
                                  "--ranking.samples", "3", "--ranking.max_new_tokens", "12"]) == 0
    ranking = json.loads((out / "rm_report.json").read_text())["ranking"]
    rows = [RankedSummary(**r) for r in ranking["samples"]]
    assert len(rows) == 9 and len({r.dialogue for r in rows}) == 3
    from rlhf.data.sources import dialogsum_items
    reference = {it.fname: it.summary for it in dialogsum_items("test")}
    for row in rows:  # each sample's ROUGE-L is against its own dialogue's reference
        assert row.rouge_l == pytest.approx(rouge([row.summary], [reference[row.dialogue]])["rougeL"])
        assert row.words == len(row.summary.split())
    expected = ranking_stats(rows, "rouge_l")
    assert ranking["rouge_l"]["pooled"]["spearman"] == pytest.approx(expected["pooled"]["spearman"], nan_ok=True)
    assert ranking["rouge_l"]["within"]["n"] + ranking["rouge_l"]["within"]["undefined"] == 3
    assert ranking["rouge_l_vs_words"] == pytest.approx(spearman([r.rouge_l for r in rows], [r.words for r in rows]),
                                                        nan_ok=True)
    assert "Sampled summaries: helpful head vs ROUGE-L" in (out / "rm_report.md").read_text()
    assert "helpful head vs ROUGE-L (Spearman)" in capsys.readouterr().out


def test_eval_rm_ranking_bad_input_is_one_line_before_any_model_loads(tiny_reward_model, tmp_path, capsys):
    import shutil

    from rlhf.stages import STAGES
    cli = STAGES["eval-rm"].cli

    assert cli([str(tiny_reward_model), "--out", str(tmp_path / "a"), "--ranking.policy", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ranking.policy" in err and "nope" in err
    assert cli([str(tiny_reward_model), "--out", str(tmp_path / "a"), "--ranking.samples", "1"]) == 2
    assert "ranking.samples" in capsys.readouterr().err
    no_helpful = shutil.copytree(tiny_reward_model / "final", tmp_path / "no-helpful")
    config = json.loads((no_helpful / "reward_config.json").read_text())
    (no_helpful / "reward_config.json").write_text(json.dumps({**config, "heads": ["honest", "harmless"]}))
    assert cli([str(no_helpful), "--out", str(tmp_path / "a"), "--ranking.policy", "tiny-llama"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "has no helpful head" in err
    assert not (tmp_path / "a").exists()
