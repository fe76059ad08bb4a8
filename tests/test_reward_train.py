"""Training the reward model on tiny random backbones: it learns, masks heads, resumes exactly."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from reward_models.config import RewardStageConfig
from reward_models.data import head_mask
from reward_models.encoding import collate
from reward_models.evaluation import pair_accuracy
from reward_models.losses import pairwise_loss
from reward_models.model import new_reward_model
from reward_models.train import train_reward_model
from rlhf.core.checkpoints import CheckpointError
from rlhf.data.records import PreferenceRecord
from rlhf.core.tracking import read_metrics

REPO = Path(__file__).resolve().parents[1]
TOPICS = ["bread", "rivers", "taxes", "music", "chess", "rain", "trains", "cats", "paint", "stars", "soup", "maps"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def toy_preferences(path: Path, per_head: int = 60, seed: int = 0) -> Path:
    """A learnable preference: the chosen answer is kind, the rejected one rude, for every head."""
    rng = random.Random(seed)
    rows = []
    for head in ("helpful", "honest", "harmless"):
        for i in range(per_head):
            topic = rng.choice(TOPICS)
            rows.append({"prompt": f"Question {i} for {head}: tell me about {topic}.",
                         "chosen": f"I am glad to help you with {topic}, thank you for asking.",
                         "rejected": f"Go away, {topic} is stupid and so are you.",
                         "dimension": [head]})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def tiny_config(tmp_path, data_file, **train) -> RewardStageConfig:
    cfg = RewardStageConfig()
    cfg.model.name, cfg.model.max_length, cfg.model.min_prompt_tokens = "tiny-bert", 64, 16
    cfg.data.sources, cfg.data.extra_files, cfg.data.pairs_per_head = [], [str(data_file)], 0
    cfg.train.batch_size, cfg.train.learning_rate, cfg.train.head_learning_rate, cfg.train.warmup_ratio = 8, 3e-3, 3e-3, 0.0
    cfg.train.save_steps, cfg.train.epochs = 0, 1
    for key, value in train.items():
        setattr(cfg.train, key, value)
    cfg.run.output_dir, cfg.run.run_name, cfg.run.wandb_mode, cfg.run.log_every = str(tmp_path / "runs"), "rm", "disabled", 1
    return cfg


def test_loss_falls_and_dev_accuracy_rises_on_a_learnable_preference(tmp_path):
    data_file = toy_preferences(tmp_path / "toy.jsonl")
    cfg = tiny_config(tmp_path, data_file, epochs=3)
    torch.manual_seed(cfg.run.seed)
    fresh, encoder, _ = new_reward_model("tiny-bert", max_length=64)
    from reward_models.data import load_pairs

    dev = load_pairs([], [str(data_file)], "dev")
    before, _ = pair_accuracy(fresh, encoder, dev)
    run_dir = train_reward_model(cfg)
    metrics = read_metrics(run_dir / "metrics.jsonl")
    losses = [m["loss/pairwise"] for m in metrics if "loss/pairwise" in m]
    dev_means = [m["eval/accuracy_mean"] for m in metrics if "eval/accuracy_mean" in m]
    assert len(dev_means) == 3  # dev accuracy every epoch
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3
    assert dev_means[-1] >= 0.95 > sum(before.values()) / len(before)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert all(summary[f"dev/accuracy_{h}"] >= 0.9 for h in ("helpful", "honest", "harmless"))
    assert all(f"test/accuracy_{h}" in summary for h in ("helpful", "honest", "harmless"))
    assert {"loss/helpful", "loss/honest", "loss/harmless", "eval/accuracy_honest"} <= set().union(*metrics)
    config = json.loads((run_dir / "final/reward_config.json").read_text())
    assert config["normalised_on"].startswith("dev responses") and all(s > 0 for s in config["std"].values())
    # the eval-rm report of the test pairs is part of the run, its tables logged like any table (issue 25.3)
    assert {p.name for p in (run_dir / "rm_report").iterdir()} == {"rm_report.json", "rm_report.md", "rm_report.png"}
    accuracy_rows = read_metrics(run_dir / "rm_report_accuracy.jsonl")
    assert {r["head"] for r in accuracy_rows} >= {"helpful", "honest", "harmless"}


def test_a_pair_labelled_honest_only_moves_only_the_honest_head():
    torch.manual_seed(0)
    model, encoder, _ = new_reward_model("tiny-bert", max_length=64)
    pairs = [PreferenceRecord(prompt=f"q{i}", chosen="true answer", rejected="false answer", dimension=["honest"])
             for i in range(4)]
    prompts = [p.prompt for p in pairs]
    batch = collate(encoder.encode(prompts, [p.chosen for p in pairs]) + encoder.encode(prompts, [p.rejected for p in pairs]),
                    encoder.pad_token_id)
    scores = model(**batch)  # (8, heads)
    loss, per_head, _ = pairwise_loss(scores[:4], scores[4:], head_mask(pairs))
    loss.backward()
    grad = model.hf_model.classifier.weight.grad  # (heads, hidden): one row per head
    assert grad[0].abs().sum() == 0 and grad[2].abs().sum() == 0  # helpful, harmless: untouched
    assert grad[1].abs().sum() > 0
    assert torch.isnan(per_head[[0, 2]]).all()  # their losses are not counted at all


def test_resumed_run_reproduces_the_uninterrupted_one(tmp_path):
    data_file = toy_preferences(tmp_path / "toy.jsonl", per_head=20)
    full_cfg = tiny_config(tmp_path / "a", data_file, max_steps=8, batch_size=4)
    full = read_metrics(train_reward_model(full_cfg) / "metrics.jsonl")
    cut_cfg = tiny_config(tmp_path / "b", data_file, max_steps=8, batch_size=4)
    run_dir = train_reward_model(cut_cfg, stop_after_steps=3)
    assert not (run_dir / "final").exists() and (run_dir / "checkpoints/step-000003/trainer_state.json").is_file()
    resumed = read_metrics(train_reward_model(cut_cfg, resume=True) / "metrics.jsonl")
    loss_by_step = lambda ms: {m["step"]: m["loss/pairwise"] for m in ms if "loss/pairwise" in m}  # noqa: E731
    assert loss_by_step(resumed) == pytest.approx(loss_by_step(full), abs=1e-6)
    assert sorted(loss_by_step(resumed)) == list(range(1, 9))
    a = json.loads((tmp_path / "a/runs/rm/summary.json").read_text())
    b = json.loads((run_dir / "summary.json").read_text())
    assert {k: v for k, v in a.items() if "accuracy" in k} == pytest.approx({k: v for k, v in b.items() if "accuracy" in k})


def test_resume_without_a_checkpoint_is_an_error(tmp_path):
    cfg = tiny_config(tmp_path, toy_preferences(tmp_path / "toy.jsonl", per_head=8))
    with pytest.raises(CheckpointError, match="no intact checkpoint"):
        train_reward_model(cfg, resume=True)


def test_no_training_pairs_is_an_error(tmp_path):
    cfg = tiny_config(tmp_path, toy_preferences(tmp_path / "toy.jsonl", per_head=4))
    cfg.data.extra_files = []
    with pytest.raises(ValueError, match="no training pairs"):
        train_reward_model(cfg)


def test_stage_cli_with_the_tiny_config_and_an_annotated_file(tmp_path):
    from rlhf.stages import STAGES
    cli = STAGES["reward"].cli

    data_file = toy_preferences(tmp_path / "toy.jsonl", per_head=12)
    code = cli(["--config", str(REPO / "pipelines/configs/reward_tiny.yaml"), "--run.output_dir", str(tmp_path / "runs"),
                "--run.run_name", "tiny", "--run.wandb_mode", "disabled", "--data.extra_files", f"[{data_file}]"])
    assert code == 0
    final = tmp_path / "runs/tiny/final"
    assert (final / "model.safetensors").is_file() and (final / "reward_config.json").is_file()
    from reward_models.scoring import RewardScorer

    scores = RewardScorer.from_pretrained(tmp_path / "runs/tiny", toxicity=None).score(["q"], ["a"])
    assert scores.composite.shape == (1,) and set(scores.heads) == {"helpful", "honest", "harmless"}


def test_stage_cli_rejects_unknown_keys(capsys):
    from rlhf.stages import STAGES
    cli = STAGES["reward"].cli

    assert cli(["--train.learning_rat", "1e-5"]) == 2
    assert "unknown config key train.learning_rat" in capsys.readouterr().err


def test_train_on_preferences_takes_records_and_uses_them_all(tmp_path):
    """The entry point for other tools (annotation export -> reward model)."""
    from tests.preference_training import train_on_preferences
    from rlhf.data.records import load_preferences

    records = load_preferences(toy_preferences(tmp_path / "toy.jsonl", per_head=16))
    result = train_on_preferences(records, tmp_path / "out", max_steps=30)
    assert len(result.losses) == 30
    assert sum(result.losses[-4:]) / 4 < 0.5 * sum(result.losses[:4]) / 4
    from reward_models.evaluation import pair_accuracy
    from reward_models.model import load_reward_model

    model, encoder, _ = load_reward_model(result.model_dir)
    accuracy, counts = pair_accuracy(model, encoder, records)
    assert counts == {"helpful": 16, "honest": 16, "harmless": 16} and min(accuracy.values()) >= 0.9


class Killed(BaseException):
    """Stands in for SIGKILL: nothing after it runs, and the files written so far stay as they are."""


def test_resume_falls_back_past_a_checkpoint_cut_short_or_corrupted(tmp_path, monkeypatch, capsys):
    """Killed while writing step 6 (its temporary folder half full): --resume takes step 4 and redoes 5-6
    exactly. A checkpoint whose bytes changed after it was written (same size) is skipped, naming the file."""
    data_file = toy_preferences(tmp_path / "toy.jsonl", per_head=20)
    cfg = tiny_config(tmp_path, data_file, max_steps=8, batch_size=4, save_steps=2, save_total_limit=2)
    save = torch.save

    def killed_while_writing_6(obj, path, *args, **kwargs):
        if Path(path).name == "rng.pt" and "step-000006" in str(path):
            raise Killed
        return save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", killed_while_writing_6)
    with pytest.raises(Killed):
        train_reward_model(cfg)
    monkeypatch.undo()
    run_dir = tmp_path / "runs/rm"
    losses = lambda: {m["step"]: m["loss/pairwise"] for m in read_metrics(run_dir / "metrics.jsonl")  # noqa: E731
                      if "loss/pairwise" in m}
    before = losses()
    assert sorted(before) == list(range(1, 7))
    capsys.readouterr()
    train_reward_model(cfg, resume=True)
    assert f"resumed from {run_dir / 'checkpoints/step-000004'} at step 4" in capsys.readouterr().err
    after = losses()
    assert {s: after[s] for s in before} == pytest.approx(before, abs=1e-6) and sorted(after) == list(range(1, 9))
    logged = [m["step"] for m in read_metrics(run_dir / "metrics.jsonl") if "loss/pairwise" in m]
    assert logged == list(range(1, 9))  # the redone steps 5-6 are in the file once
    summary = json.loads((run_dir / "summary.json").read_text())
    whole = json.loads((train_reward_model(tiny_config(tmp_path / "whole", data_file, max_steps=8, batch_size=4))
                        / "summary.json").read_text())
    assert summary["train/steps"] == 8 and summary["train/pairs_seen"] == whole["train/pairs_seen"]  # not 5-8's

    model_file = run_dir / "checkpoints/step-000008/model.pt"
    data = bytearray(model_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model_file.write_bytes(bytes(data))
    train_reward_model(cfg, resume=True)
    err = capsys.readouterr().err
    assert f"skipping step-000008: {model_file}: sha256 differs" in err and "falling back to step-000006" in err
    assert losses() == pytest.approx(after, abs=1e-6)


def test_non_finite_steps_are_skipped_and_an_all_non_finite_run_writes_no_final(tmp_path, monkeypatch):
    """A margin past fp32's range (files are bounded by validation; records built in code are not) makes the
    loss inf: such steps are skipped and counted; a run where every step is non-finite stops with one line."""
    import reward_models.train as rt
    from rlhf.core.config import ConfigError

    data_file = toy_preferences(tmp_path / "toy.jsonl", per_head=20)
    for name, broken in [("some", lambda r: "honest" in r.dimension), ("all", lambda r: True)]:
        monkeypatch.setattr(rt, "margins", lambda pairs, b=broken: torch.tensor(
            [float("inf") if b(r) else 0.0 for r in pairs]))
        cfg = tiny_config(tmp_path / name, data_file, max_steps=6, batch_size=4, use_margin=True)
        run_dir = tmp_path / name / "runs/rm"
        if name == "all":
            with pytest.raises(ConfigError, match="all 6 steps had a non-finite loss or gradient"):
                train_reward_model(cfg)
            assert not (run_dir / "final").exists()
            continue
        train_reward_model(cfg)
        metrics = read_metrics(run_dir / "metrics.jsonl")
        skipped = [m["step"] for m in metrics if m.get("skipped/nonfinite")]
        summary = json.loads((run_dir / "summary.json").read_text())
        assert 0 < len(skipped) == summary["skipped/nonfinite"] < 6
        assert all(isinstance(m["loss/pairwise"], float) for m in metrics if "loss/pairwise" in m)  # never "inf"
        assert (run_dir / "final").is_dir()
