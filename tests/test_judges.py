"""Gold judges: `rlhf reward --role gold` marks the model, and a training stage given it refuses before loading."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from reward_models.model import ScoringConfig
from rlhf.evaluation import judges

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "pipelines" / "configs"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _saved(folder: Path, role: str, summary: dict | None = None) -> Path:
    """A reward run folder with only what the checks read: final/reward_config.json (+ summary.json)."""
    (folder / "final").mkdir(parents=True)
    ScoringConfig(role=role).save(folder / "final")
    if summary is not None:
        (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def test_role_and_accuracy_are_read_from_the_run(tmp_path):
    gold = _saved(tmp_path / "gold", "gold", {"test/accuracy_helpful": 0.75, "test/accuracy_honest": 0.5})
    proxy = _saved(tmp_path / "proxy", "proxy")
    assert judges.role_of(gold) == "gold" and judges.role_of(gold / "final") == "gold"
    assert judges.role_of(proxy) == "proxy"
    assert judges.model_folder(gold) == judges.model_folder(gold / "final") == (gold / "final").resolve()
    assert judges.held_out_accuracy(gold) == {"helpful": 0.75, "honest": 0.5, "harmless": None}
    assert judges.held_out_accuracy(proxy) == {"helpful": None, "honest": None, "harmless": None}
    # A model saved before roles existed has no "role" key: it is a proxy.
    config = json.loads((proxy / "final" / "reward_config.json").read_text())
    del config["role"]
    (proxy / "final" / "reward_config.json").write_text(json.dumps(config))
    assert judges.role_of(proxy) == "proxy"


def test_rl_stage_refuses_a_gold_reward_model_before_loading_anything(tmp_path, capsys, monkeypatch):
    import rlhf.rl.policy
    from rlhf.stages import STAGES
    cli = STAGES["ppo"].cli

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the reward model was checked")

    monkeypatch.setattr(rlhf.rl.policy, "build_policy_model", refuse)
    monkeypatch.setattr(rlhf.rl.policy, "load_policy_tokenizer", refuse)
    gold = _saved(tmp_path / "gold", "gold")
    out = tmp_path / "runs"
    for path in (gold, gold / "final"):  # the run folder or its final/
        argv = ["--config", str(CONFIGS / "ppo_tiny.yaml"), "--run.output_dir", str(out),
                "--run.wandb_mode", "disabled", "--reward.kind", "model", "--reward.model", str(path)]
        assert cli(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error: reward.model:") and "gold" in err, err
    assert not out.exists()


def test_newest_reward_model_skips_gold_judges(tmp_path):
    import os

    from rlhf.rl.scorers import newest_reward_model

    proxy = _saved(tmp_path / "reward-1", "proxy")
    gold = _saved(tmp_path / "reward-2", "gold")
    os.utime(gold / "final", (2e9, 2e9))  # the gold is the newest
    assert newest_reward_model(tmp_path) == proxy / "final"


def test_reward_stage_role_gold_marks_the_saved_model(tmp_path):
    """`rlhf reward --role gold` on a tiny model: the saved reward_config.json says gold, and PPO refuses it."""
    from rlhf.stages import STAGES
    cli = STAGES["reward"].cli
    from rlhf.rl.config import RewardSection
    from rlhf.rl.scorers import check_reward_model
    from tests.test_reward_train import toy_preferences

    data = toy_preferences(tmp_path / "toy.jsonl", per_head=8)
    argv = ["--config", str(CONFIGS / "reward_tiny.yaml"), "--run.output_dir", str(tmp_path / "runs"),
            "--run.run_name", "gold", "--run.wandb_mode", "disabled", "--data.sources", "[]",
            "--data.extra_files", f"['{data}']", "--train.max_steps", "2", "--eval.test", "false", "--role", "gold"]
    assert cli(argv) == 0
    final = tmp_path / "runs" / "gold" / "final"
    assert json.loads((final / "reward_config.json").read_text())["role"] == "gold"
    with pytest.raises(ValueError, match="reward.model: .* is a gold reward model"):
        check_reward_model(RewardSection(kind="model", model=str(final)))


def test_a_gold_member_of_a_reward_ensemble_is_refused(tmp_path):
    from rlhf.core.config import ConfigError
    from rlhf.rl.config import RewardSection
    from rlhf.rl.scorers import check_reward_model

    proxy, gold = _saved(tmp_path / "a", "proxy"), _saved(tmp_path / "b", "gold")
    assert check_reward_model(RewardSection(kind="model", ensemble=[str(proxy), str(proxy / "final")])) is None
    with pytest.raises(ConfigError, match=r"reward.ensemble\[1\]: .* is a gold reward model"):
        check_reward_model(RewardSection(kind="model", ensemble=[str(proxy), str(gold)]))


# ---------------------------------------------------------------- agreement between proxy and gold


def test_agreement_is_the_share_of_pairs_both_judges_order_alike():
    # margins: same sign, opposite, same, both ties -> 3 of 4 agree
    assert judges.agreement([1.0, -2.0, 0.5, 0.0], [3.0, 1.0, 0.1, 0.0]) == (0.75, 4)
    assert judges.agreement([0.0], [0.2]) == (0.0, 1)  # a tie agrees only with a tie
    with pytest.raises(ValueError, match="2 proxy margins but 1 gold"):
        judges.agreement([1.0, 2.0], [1.0])


class _LengthJudge:
    """Scores every head by the response's length times ``sign``: a toy judge with a known opinion."""

    def __init__(self, sign: float):
        self.sign = sign

    def score_heads(self, prompts, responses):
        import torch

        lengths = torch.tensor([self.sign * len(r) for r in responses])
        return {"helpful": lengths, "honest": lengths, "harmless": -lengths}


def test_judge_agreement_per_head_with_accuracies_and_intervals():
    from rlhf.data.records import PreferenceRecord

    def pair(chosen, rejected):
        return PreferenceRecord(prompt="p", chosen=chosen, rejected=rejected, dimension=[])

    pairs = [("harmless", pair("no", "a long answer")), ("harmless", pair("a long answer", "no")),
             ("helpful", pair("long", "x"))]
    out = judges.judge_agreement(_LengthJudge(1.0), _LengthJudge(-1.0), pairs)
    # proxy: harmless prefers short (right on the first pair), helpful prefers long (right); the gold, reversed
    # lengths, is the opposite everywhere: the two never agree
    assert out["harmless"]["n"] == 2 and out["harmless"]["agreement"] == 0.0
    assert out["harmless"]["proxy_accuracy"] == 0.5 and out["harmless"]["gold_accuracy"] == 0.5
    helpful = out["helpful"]
    assert (helpful["n"], helpful["agreement"], helpful["proxy_accuracy"], helpful["gold_accuracy"]) == (1, 0.0, 1.0, 0.0)
    low, high = out["harmless"]["agreement_interval"]
    assert low == 0.0 and 0.5 < high < 1.0  # Wilson interval of 0 of 2
    same = judges.judge_agreement(_LengthJudge(1.0), _LengthJudge(2.0), pairs)
    assert all(v["agreement"] == 1.0 for v in same.values())
