"""Which pairs train which head, ties, and balanced sampling across heads."""
from __future__ import annotations

import json
from collections import Counter

import pytest

from reward_models.data import (balanced_batches, drop_contradictions, head_mask, load_pairs, pools_by_head,
                                subsample)
from rlhf.data.records import PreferenceRecord, RecordError


def rec(prompt, chosen, rejected, *dims):
    return PreferenceRecord(prompt=prompt, chosen=chosen, rejected=rejected, dimension=list(dims))


def test_shipped_sources_feed_their_heads():
    pairs = load_pairs(["hh-rlhf-harmless", "truthfulqa", "dialogsum"], [], "dev")
    by_source = {p.source: p.dimension for p in pairs}
    assert by_source == {"hh-rlhf-harmless": ["harmless"], "truthfulqa": ["honest"], "dialogsum": ["helpful"]}


def test_test_split_is_disjoint_from_train_by_prompt():
    train = {p.prompt for p in load_pairs(["hh-rlhf-harmless", "truthfulqa"], [], "train")}
    test = {p.prompt for p in load_pairs(["hh-rlhf-harmless", "truthfulqa"], [], "test")}
    assert train and test and not train & test


def test_extra_files_are_read_strictly_and_split(tmp_path):
    good = tmp_path / "prefs.jsonl"
    rows = [{"prompt": f"q{i}", "chosen": "yes", "rejected": "no", "dimension": ["honest", "helpful"]} for i in range(40)]
    good.write_text("\n".join(json.dumps(r) for r in rows))
    train = load_pairs([], [str(good)], "train")
    assert 0 < len(train) < 40 and all(p.dimension == ["helpful", "honest"] for p in train)
    assert len(load_pairs([], [str(good)], "train", extra_files_split="train")) == 40
    assert load_pairs([], [str(good)], "dev", extra_files_split="train") == []
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rows[0]) + "\n" + json.dumps({**rows[1], "dimension": "funny"}) + "\n")
    with pytest.raises(RecordError, match=r"bad.jsonl:2: field 'dimension'"):
        load_pairs([], [str(bad)], "train")


def test_unknown_source_name_is_an_error():
    with pytest.raises(ValueError, match="unknown data source 'hh'"):
        load_pairs(["hh"], [], "train")


def test_a_pair_given_both_ways_is_a_tie_and_is_dropped():
    pairs = [rec("p", "a", "b", "helpful"), rec("p", "b", "a", "helpful"), rec("p", "a", "b", "honest"),
             rec("q", "a", "b", "helpful")]
    kept, dropped = drop_contradictions(pairs)
    assert dropped == 2 and kept == [pairs[2], pairs[3]]


def test_head_mask_follows_dimensions():
    mask = head_mask([rec("p", "a", "b", "honest"), rec("p", "a", "c", "helpful", "harmless")])
    assert mask.tolist() == [[False, True, False], [True, False, True]]


def test_balanced_batches_draw_equally_from_every_head():
    pairs = [rec(f"h{i}", "a", "b", "helpful") for i in range(30)] + [rec(f"o{i}", "a", "b", "honest") for i in range(7)]
    pools = pools_by_head(pairs)
    batches = balanced_batches(pools, per_head=30, batch_size=4, seed=0, epoch=0)
    per_head = Counter("helpful" if i < 30 else "honest" for batch in batches for i in batch)
    assert per_head == {"helpful": 30, "honest": 30}
    assert set(i for b in batches for i in b) == set(range(37))  # every pair seen, the small pool cycled
    assert all(len({"helpful" if i < 30 else "honest" for i in b}) == 1 for b in batches)  # single-head batches
    honest_draws = Counter(i for b in batches for i in b if i >= 30)
    assert max(honest_draws.values()) - min(honest_draws.values()) <= 1  # cycled through whole shuffles
    assert batches == balanced_batches(pools, 30, 4, seed=0, epoch=0)  # same (seed, epoch): same order
    assert batches != balanced_batches(pools, 30, 4, seed=0, epoch=1)


def test_length_buckets_reduce_padding_but_keep_the_draw():
    pairs = [rec(f"h{i}", "a", "b", "helpful") for i in range(64)]
    lengths = [(i * 37) % 101 for i in range(64)]
    plain = balanced_batches(pools_by_head(pairs), 64, 8, seed=1, epoch=0)
    bucketed = balanced_batches(pools_by_head(pairs), 64, 8, seed=1, epoch=0, lengths=lengths, bucket=8)
    assert sorted(i for b in plain for i in b) == sorted(i for b in bucketed for i in b)
    padded = lambda bs: sum(len(b) * max(lengths[i] for i in b) for b in bs)  # noqa: E731
    assert padded(bucketed) < padded(plain)


def test_subsample_caps_each_head():
    pairs = [rec(f"h{i}", "a", "b", "helpful") for i in range(10)] + [rec(f"o{i}", "a", "b", "honest") for i in range(3)]
    kept = subsample(pairs, 4)
    assert Counter(p.dimension[0] for p in kept) == {"helpful": 4, "honest": 3}
    assert subsample(pairs, 4) == kept and subsample(pairs, 0) == pairs


# ---------------------------------------------------------------- proxy and gold halves, leaks through user files


def _train_pairs(role: str, **data):
    from reward_models.config import RewardStageConfig
    from reward_models.train import capped_splits

    cfg = RewardStageConfig(role=role)
    for key, value in data.items():
        setattr(cfg.data, key, value)
    return capped_splits(cfg, {"train": 0})["train"]


def test_proxy_and_gold_train_pairs_share_no_prompt_root_by_default():
    from rlhf.data import sources

    proxy, gold = _train_pairs("proxy"), _train_pairs("gold")
    from reward_models.config import DataConfig

    everything = load_pairs(DataConfig().sources, [], "train")
    assert len(proxy) + len(gold) == len(everything)
    for head in ("helpful", "honest", "harmless"):  # each half holds every head, about half of it
        n, n_all = sum(head in p.dimension for p in proxy), sum(head in p.dimension for p in everything)
        assert 0.35 < n / n_all < 0.65, head
    roots = lambda pairs: {sources.conversation_of(p.prompt) for p in pairs}  # noqa: E731
    assert not roots(proxy) & roots(gold)
    # Written out apart from rlhf.data.sources: no HH first Human turn, question or dialogue is in both halves.
    first = lambda pairs: {p.prompt.split("\n\nAssistant:")[0] for p in pairs}  # noqa: E731
    assert not first(proxy) & first(gold)


@pytest.mark.parametrize("role, partition", [("gold", "proxy"), ("gold", "all"), ("proxy", "gold")])
def test_a_partition_that_overlaps_the_other_judge_is_one_line_before_any_model(role, partition, tmp_path, capsys):
    from rlhf.stages import STAGES
    cli = STAGES["reward"].cli

    argv = ["--config", "pipelines/configs/reward_tiny.yaml", "--run.output_dir", str(tmp_path / "runs"),
            "--role", role, "--data.partition", partition]
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: data.partition: {partition}:") and "\n" not in err, err
    assert not (tmp_path / "runs").exists()


def test_a_train_file_holding_a_shipped_test_conversation_is_refused_naming_file_and_line(tmp_path, capsys):
    from rlhf.stages import STAGES
    cli = STAGES["reward"].cli
    from rlhf.data import sources

    test_prompt = sources.hh_harmless_pairs("test")[0].prompt
    first_turn = test_prompt.split("\n\nAssistant:")[0] + "\n\nAssistant: Sure.\n\nHuman: And then?\n\nAssistant:"
    rows = [{"prompt": "a prompt of my own", "chosen": "yes", "rejected": "no", "dimension": "helpful"},
            {"prompt": first_turn, "chosen": "I won't.", "rejected": "Here is how.", "dimension": "harmless"}]
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(RecordError, match=rf"{path}:2: field 'prompt': .*shipped test split"):
        load_pairs([], [str(path)], "train", extra_files_split="train")
    assert len(load_pairs([], [str(path)], "test")) == 1  # split by conversation, it lands in test with its own
    argv = ["--config", "pipelines/configs/reward_tiny.yaml", "--run.output_dir", str(tmp_path / "runs"),
            "--data.extra_files", f"['{path}']", "--data.extra_files_split", "train"]
    capsys.readouterr()  # what the direct calls above printed; below, only the stage's own output
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: data.extra_files[0]: {path}:2: field 'prompt'") and "\n" not in err, err
    assert not (tmp_path / "runs").exists()
