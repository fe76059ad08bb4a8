from collections import Counter

from rlhf import sources
from rlhf.cli import main
from rlhf.records import load_preferences, write_jsonl


def test_hh_pairs_keep_prompt_and_split_final_turn():
    pairs = sources.hh_harmless_pairs("all")
    assert len(pairs) > 1500
    for pair in pairs[:50]:
        assert pair.prompt.rstrip().endswith("Assistant:")
        assert pair.chosen != pair.rejected and pair.dimension == ["harmless"]
        assert "\n\nHuman:" not in pair.chosen  # only the final assistant turn


def test_truthfulqa_pairs_prefer_correct_answers():
    items = {i.question: i for i in sources.truthfulqa_items("all")}
    pairs = sources.truthfulqa_pairs("all")
    assert len(pairs) > 1000
    for pair in pairs[:100]:
        item = items[pair.prompt]
        assert pair.chosen in [item.best_answer, *item.correct] and pair.rejected in item.incorrect
        assert pair.dimension == ["honest"]


def test_dialogsum_pairs_and_sft():
    pairs = sources.dialogsum_pairs("all")
    summaries = {i.prompt: i.summary for i in sources.dialogsum_items("all")}
    assert all(summaries[p.prompt] == p.chosen and p.rejected != p.chosen for p in pairs)
    assert Counter(p.dimension[0] for p in pairs) == {"helpful": len(pairs)}
    sft = sources.dialogsum_sft("train")
    assert sft[0].messages[0]["role"] == "user" and sft[0].messages[1]["role"] == "assistant"


def test_splits_are_deterministic_disjoint_and_cover_everything():
    splits = {s: sources.hh_harmless_pairs(s) for s in ("train", "dev", "test")}
    prompts = {s: {p.prompt for p in recs} for s, recs in splits.items()}
    assert not (prompts["train"] & prompts["test"]) and not (prompts["dev"] & prompts["test"])
    assert sum(len(v) for v in splits.values()) == len(sources.hh_harmless_pairs("all"))
    assert 0.05 < len(splits["test"]) / len(sources.hh_harmless_pairs("all")) < 0.15
    assert [p.prompt for p in sources.hh_harmless_pairs("test")] == [p.prompt for p in splits["test"]]


def test_user_file_source(tmp_path):
    path = tmp_path / "mine.jsonl"
    write_jsonl(sources.truthfulqa_pairs("all")[:40], path)
    assert load_preferences(path)[0].source == "truthfulqa"
    assert len(sources.preference_records([str(path)], "all")) == 40


def test_stats_on_each_shipped_file(capsys):
    for path in sources.shipped_files():
        assert main(["data", "stats", str(path)]) == 0
    out = capsys.readouterr().out
    for dim in ("helpful", "honest", "harmless"):
        assert f"{dim} " in out
    assert "per dimension: helpful 0, honest 0, harmless 1493" in out  # HH train split
