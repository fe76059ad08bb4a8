import io
import json
from collections import Counter
from pathlib import Path

import pytest

from rlhf.data import sources
from rlhf.cli import main
from rlhf.data.records import load_preferences, write_jsonl


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


def test_informative_pairs_prefer_the_best_answer_to_a_non_answer():
    item = lambda q, best: sources.TruthfulQAItem(question=q, best_answer=best, correct=[best], incorrect=["No"],
                                                  category="")
    pairs = sources.informative_pairs([item("Is the sky blue?", "Yes, on a clear day"),
                                       item("What is a fact only you know?", "I have no comment")])
    assert [(p.prompt, p.chosen, p.dimension) for p in pairs] == [("Is the sky blue?", "Yes, on a clear day",
                                                                   ["honest"])]  # a non-answer is never chosen
    # The non-answer nearest the answer's length, so length cannot tell the two apart: 5 words -> 4, not 3 or 7.
    assert pairs[0].rejected == "I have no comment."
    long = sources.informative_pairs([item("Why?", "Because warm air rises and cool air sinks to replace it, "
                                                   "which drives the wind")])  # 15 words
    assert long[0].rejected == "As an AI language model, I cannot give an answer to that question, sorry."  # 14
    # The shipped source: every TruthfulQA question whose best answer informs, split as TruthfulQA splits it, and
    # every non-answer used (so no one phrase is what the head learns to dislike).
    load = sources.PREFERENCE_SOURCES["truthfulqa-informative"]
    for split in ("train", "dev", "test"):
        questions = {it.question for it in sources.truthfulqa_items(split)}
        assert {p.prompt for p in load(split)} <= questions and len(load(split)) > 0.85 * len(questions)
    assert {p.rejected for p in load("all")} == set(sources.NON_ANSWERS)


def test_dialogsum_pairs_and_sft():
    pairs = sources.dialogsum_pairs("all")
    summaries = {i.prompt: i.summary for i in sources.dialogsum_items("all")}
    assert all(summaries[p.prompt] == p.chosen and p.rejected != p.chosen for p in pairs)
    assert Counter(p.dimension[0] for p in pairs) == {"helpful": len(pairs)}
    sft = sources.SFT_SOURCES["dialogsum"]("train")
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
    assert "per dimension: helpful 0, honest 0, harmless 1488" in out  # HH train split (split by first Human turn)
    assert "TruthfulQA.csv [truthfulqa-informative, preference, test]: 63 " in out  # both sources of the file


# ---------------------------------------------------------------- leak-free splits (issue 22)


def _first_turn(prompt: str) -> str:
    """An HH transcript's first Human turn, written out here apart from rlhf.data.sources so the test checks it."""
    text = prompt.split("\n\nHuman:", 1)[1] if "\n\nHuman:" in prompt else prompt
    return text.split("\n\nAssistant:")[0].strip()


def _texts(pairs) -> set[str]:
    return {t for p in pairs for t in (p.chosen, p.rejected)}


def test_no_test_prompt_first_turn_or_response_is_in_train_or_dev():
    """Counted on the prompt-hash splits: 17 of 184 HH test prompts shared their first Human turn with a train
    prompt; 41 DialogSum train pairs used a test dialogue's summary; 64 of 106 helpful test pairs had their
    chosen text in train or dev pairs. All must be 0."""
    for name, load in sources.PREFERENCE_SOURCES.items():
        split = {s: load(s) for s in ("train", "dev", "test")}
        seen = split["train"] + split["dev"]
        prompts, turns = {p.prompt for p in seen}, {_first_turn(p.prompt) for p in seen}
        test_prompts = {p.prompt for p in split["test"]}
        assert test_prompts and not test_prompts & prompts, name
        assert not {_first_turn(p) for p in test_prompts} & turns, name
        # Stock answers ("I have no comment", "Yes.") are given to many unrelated conversations; nothing else
        # a test pair says may appear in training. The exemption is short and small, so it cannot hide a leak.
        stock = sources.stock_answers(name)
        made_up = set(sources.NON_ANSWERS) if name == "truthfulqa-informative" else set()  # by design, every split
        assert len(stock - made_up) <= 12 and all(len(t.split()) <= 8 for t in stock - made_up), (name, stock)
        assert not (_texts(split["test"]) & _texts(seen)) - stock, name
    dialogues = {s: {it.dialogue for it in sources.dialogsum_items(s)} for s in ("train", "dev", "test")}
    assert not dialogues["test"] & (dialogues["train"] | dialogues["dev"])


# ---------------------------------------------------------------- DialogSum pairs within a dialogue (issue 23)


def test_truncate_summary_keeps_a_third_and_lengthens_past_shared_beginnings():
    assert sources.truncate_summary("Ann calls Bob about the rent today. Bob pays.") == "Ann calls Bob"  # 9 words -> 3
    others = ["Ann calls Bob about the party.", "Ann calls Tom."]
    assert sources.truncate_summary("Ann calls Bob about the rent today. Bob pays.", others) == "Ann calls Bob about the rent"
    assert sources.truncate_summary("Hi.") is None  # one word: nothing shorter is left


def test_swap_entities_swaps_speakers_or_names():
    assert (sources.swap_entities("#Person1# asks #Person2# for #Person2#'s book.")
            == "#Person2# asks #Person1# for #Person1#'s book.")
    assert sources.swap_entities("#Person2# is late again.") == "#Person1# is late again."  # one tag: the other one
    assert sources.swap_entities("Mr. George gives Julia a raise. The raise pleases Julia.") == \
        "Mr. Julia gives George a raise. The raise pleases George."  # titles and articles are not names
    assert sources.swap_entities("Annie bakes.") is None and sources.swap_entities("they talk.") is None


def test_shuffle_sentences_reorders_and_is_seeded():
    import random

    two = "Ann calls Bob. Bob pays the rent!"
    assert sources.shuffle_sentences(two, random.Random(0)) == "Bob pays the rent! Ann calls Bob."
    three = "A one. B two. C three."
    shuffled = sources.shuffle_sentences(three, random.Random(5))
    assert shuffled != three and set(shuffled.rstrip(".").split(". ")) == {"A one", "B two", "C three"}
    assert shuffled == sources.shuffle_sentences(three, random.Random(5))
    assert sources.shuffle_sentences("Just one sentence here.", random.Random(0)) is None


def test_dialogsum_pairs_degrade_the_same_dialogue_and_draw_easy_negatives_in_split():
    for split in ("train", "test"):
        items = sources.dialogsum_items(split)
        summaries = {it.summary for it in items}
        pairs = sources.dialogsum_pairs(split)
        other = [p for p in pairs if p.rejected in summaries]  # another dialogue's summary, of this split
        assert 0 < len(other) < 0.15 * len(pairs)  # the easy pair is a minority
        assert all(p.rejected not in summaries for p in pairs if p not in other)
        assert len(pairs) - len(other) > 2 * len(items)  # most dialogues give two or three degraded summaries
        everything = {it.summary for it in sources.dialogsum_items("all")}
        assert not {p.rejected for p in pairs} & (everything - summaries)  # no other split's summary
    assert sources.dialogsum_pairs("dev") == sources.dialogsum_pairs("dev")  # deterministic


def test_dialogsum_sampled_pairs_prefer_the_sample_nearer_the_reference():
    """The shipped pairs of sampled summaries (benchmarks/helpful_sampled_pairs.py): two different samples of one
    dialogue, the chosen one at least 0.05 nearer the reference in ROUGE-L, each in its dialogue's split and half."""
    from rlhf.evaluation.metrics import rouge

    reference = {it.prompt: it.summary for it in sources.dialogsum_items("all")}
    load = sources.PREFERENCE_SOURCES["dialogsum-sampled"]
    pairs = load("all")
    assert len(pairs) > 500 and {p.source for p in pairs} == {"dialogsum-sampled"}
    assert all(p.dimension == ["helpful"] and p.chosen.strip() != p.rejected.strip() for p in pairs)
    for p in pairs[::25]:  # ROUGE-L of every pair takes seconds; every 25th checks the ranking's direction
        gap = rouge([p.chosen], [reference[p.prompt]])["rougeL"] - rouge([p.rejected], [reference[p.prompt]])["rougeL"]
        assert gap >= 0.05 - 1e-9, p
    for split in ("train", "test"):
        dialogues = {it.prompt for it in sources.dialogsum_items(split)}
        assert {p.prompt for p in load(split)} <= dialogues
    train = load("train")
    assert 0.3 < len(sources.take_partition(train, "proxy")) / len(train) < 0.7  # the proxy's half, the gold's half


def test_rl_reads_train_and_dev_prompts_only(tmp_path):
    import pytest

    from rlhf.core.config import ConfigError, load_config
    from rlhf.rl.config import RLStageConfig
    from rlhf.rl.prompts import load_prompts

    cfg, _ = load_config(RLStageConfig, [])
    assert (cfg.data.split, cfg.data.eval_split) == ("train", "dev")  # monitoring reads dev, not test
    for key in ("data.split", "data.eval_split"):
        with pytest.raises(ConfigError, match=key.split(".")[1]):
            load_config(RLStageConfig, [f"--{key}", "test"])
    names = list(sources.PREFERENCE_SOURCES)
    test = {sources.conversation_of(p) for p in load_prompts(names, "test")}
    assert test and not test & {sources.conversation_of(p) for s in ("train", "dev") for p in load_prompts(names, s)}
    # A prompts file is split by conversation too: two turns of one HH chat go to one split.
    chat = "\n\nHuman: How do I bake bread?\n\nAssistant:"
    longer = chat + " With flour.\n\nHuman: And then?\n\nAssistant:"
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": p}) for p in (chat, longer)) + "\n")
    assert sum(len(load_prompts([str(path)], s)) == 2 for s in ("train", "dev", "test")) == 1


# ---------------------------------------------------------------- a new source is one declaration


TOY = "toy-helpful"


def _toy_pairs(n: int = 60) -> list[dict]:
    return [{"prompt": f"How do I water plant number {i}?", "chosen": f"Water plant {i} twice a week.",
             "rejected": f"Plant {i} needs no water at all.", "dimension": ["helpful"]} for i in range(n)]


def test_a_source_registered_in_one_place_reaches_every_stage_that_reads_sources(tmp_path, monkeypatch):
    """README "How to extend: a new data source": one ``sources.register`` (here in-process, its file in tmp) and
    the reward model's pairs, SFT examples, RL prompts, evaluation items and shots, judge-free pairs, the stages'
    input validation, the test-split leak check, ``rlhf data stats`` and the export's card all see it, with no
    other file edited."""
    import re

    from reward_models.config import RewardStageConfig
    from reward_models.data import load_pairs
    from rlhf.evaluation import evaluate as ev
    from rlhf.core.config import ConfigError, load_config
    from rlhf.data.validation import stats, validate_stage_inputs
    from rlhf.models.export import card_license, data_used
    from rlhf.evaluation.likelihood import JudgeFreeConfig, check_judge_free, preference_pairs
    from rlhf.rl.config import RLStageConfig
    from rlhf.rl.prompts import load_prompts
    from rlhf.data.records import RecordError
    from rlhf.sft.config import SFTStageConfig

    rows = _toy_pairs()
    path = tmp_path / "toy" / "pairs.jsonl"
    path.parent.mkdir()
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    toy = sources.pair_source(TOY, str(path), hub_id="someone/toy-helpful", license="cc-by-sa-4.0", dimension="helpful")
    before = list(sources.SOURCES)
    sources.register(toy)
    try:
        # the readers: every split together is the whole file, split by conversation, never twice
        splits = {s: sources.PREFERENCE_SOURCES[TOY](s) for s in ("train", "dev", "test")}
        assert sorted(p.prompt for ps in splits.values() for p in ps) == sorted(r["prompt"] for r in rows)
        assert all(splits.values()) and all(p.source == TOY and p.dimension == ["helpful"] for p in splits["train"])
        # the reward model's (and DPO's) pairs
        assert {p.prompt for p in load_pairs([TOY, "truthfulqa"], [], "test") if p.source == TOY} == \
            {p.prompt for p in splits["test"]}
        # SFT examples: the chat with the chosen answer
        sft = sources.SFT_SOURCES[TOY]("train")
        assert [m["content"] for m in sft[0].messages] == [splits["train"][0].prompt, splits["train"][0].chosen]
        # RL prompts (train), held out from evaluation's (test)
        train_prompts = load_prompts([TOY], "train")
        assert train_prompts == [p.prompt for p in splits["train"]]
        items = ev.load_items(TOY, "test")
        assert [it.prompt for it in items] == [p.prompt for p in splits["test"]] and not set(train_prompts) & {
            it.prompt for it in items}
        assert items[0].messages == [{"role": "user", "content": items[0].prompt}] and items[0].id == f"{TOY}-0"
        assert ev.choose_shots(TOY, 2, seed=0, max_prompt_chars=200)[0].prompt in train_prompts
        # judge-free preference likelihood: the source's pairs under its head
        jf = JudgeFreeConfig(preference_sources=[TOY], pairs_per_source=0)
        check_judge_free(jf)
        pairs = preference_pairs(jf.preference_sources, jf.pairs_per_source, "test", 0)
        assert {head for head, _ in pairs} == {"helpful"}
        # every stage's input validation accepts the name (and still refuses an unknown one)
        monkeypatch.chdir(Path(__file__).resolve().parents[1])
        for stage, config_class, config, key in (("reward", RewardStageConfig, "reward_tiny", "data.sources"),
                                                 ("ppo", RLStageConfig, "ppo_tiny", "data.sources"),
                                                 ("sft", SFTStageConfig, "sft_tiny", "data.mixture")):
            value = f"[{{source: {TOY}}}]" if stage == "sft" else f"[{TOY}]"
            cfg, _ = load_config(config_class, ["--config", f"pipelines/configs/{config}.yaml", f"--{key}", value])
            validate_stage_inputs(stage, cfg)
        cfg.data.mixture[0].source = "toy-nope"
        with pytest.raises(ConfigError, match=re.escape(TOY)):  # the known names listed include the new one
            validate_stage_inputs("sft", cfg)
        # a training file may not hold one of its test conversations (the leak check reads every source)
        with pytest.raises(RecordError, match="shipped test split"):
            sources.check_train_file("mine.jsonl", splits["test"][:1], [1])
        # `rlhf data stats` reads its file through its readers; the export names it with its licence
        out = io.StringIO()
        assert stats([str(path)], out=out) == 0
        assert f"{path} [preference, test]: {len(splits['test'])} preferences" in out.getvalue()
        run = tmp_path / "run"
        run.mkdir()
        (run / "config.yaml").write_text(f"data:\n  sources: [{TOY}, truthfulqa]\n", encoding="utf-8")
        assert [s.name for s in data_used(run)] == [TOY, "truthfulqa"]
        assert card_license(data_used(run)) == "cc-by-sa-4.0"
    finally:
        sources.unregister(TOY)
    assert list(sources.SOURCES) == before
    assert TOY not in sources.PREFERENCE_SOURCES and TOY not in sources.PROMPT_SOURCES
