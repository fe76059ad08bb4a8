"""The exported annotation file is training data for the reward model, read through rlhf.data.records unchanged."""
from __future__ import annotations

import pytest

from rlhf.annotate.export import export_preferences
from rlhf.data.records import DIMENSIONS, load_preferences

CHOICES_BY_ANNOTATOR = {
    "alice": {"helpful": "A", "honest": "A", "harmless": "tie"},
    "bob": {"helpful": "A", "honest": "B", "harmless": "B"},
    "carol": {"helpful": "B", "honest": "B", "harmless": "B"},
}


def export_labelled(annotation_db, tmp_path):
    store = annotation_db.store
    for name, choices in CHOICES_BY_ANNOTATOR.items():
        annotator = store.authenticate(annotation_db.tokens[name])
        for item_id in annotation_db.items_of(name):
            assert store.save_label(annotator.id, item_id, choices)
    out = tmp_path / "annotated_preferences.jsonl"
    export_preferences(store, out)
    return out


def test_export_loads_as_preference_records(annotation_db, tmp_path):
    records = load_preferences(export_labelled(annotation_db, tmp_path))  # strict: any bad row raises
    assert records and {r.source for r in records} == {"annotation"}
    assert all(len(r.dimension) == 1 and r.dimension[0] in DIMENSIONS for r in records)
    assert all(0 < r.margin <= 1 and r.chosen != r.rejected for r in records)
    items = {(i.prompt, i.response_a, i.response_b) for i in annotation_db.store.items().values()}
    assert all((r.prompt, r.chosen, r.rejected) in items or (r.prompt, r.rejected, r.chosen) in items for r in records)


def test_export_trains_reward_model(annotation_db, tmp_path):
    """The export is read unchanged by the reward stage, and a tiny reward model learns from it."""
    from reward_models.train import train_reward_model
    from rlhf.core.tracking import read_metrics
    from reward_models.config import RewardStageConfig

    export = export_labelled(annotation_db, tmp_path)
    records = load_preferences(export)
    assert {d for r in records for d in r.dimension} == set(DIMENSIONS)  # every head gets pairs
    cfg = RewardStageConfig()
    cfg.model.name, cfg.model.max_length, cfg.model.min_prompt_tokens = "tiny-bert", 64, 16
    cfg.data.sources, cfg.data.extra_files, cfg.data.extra_files_split = [], [str(export)], "train"
    cfg.data.partition = "all"  # every label: no gold judge here (the default proxy half left 5 pairs)
    cfg.train.batch_size, cfg.train.learning_rate, cfg.train.head_learning_rate, cfg.train.warmup_ratio = 4, 3e-3, 3e-3, 0.0
    cfg.train.save_steps, cfg.train.epochs = 0, 8
    cfg.eval.test = False
    cfg.run.output_dir, cfg.run.run_name, cfg.run.wandb_mode = str(tmp_path / "runs"), "rm", "disabled"
    run_dir = train_reward_model(cfg)
    losses = [m["loss/pairwise"] for m in read_metrics(run_dir / "metrics.jsonl") if "loss/pairwise" in m]
    assert len(losses) >= 4 and sum(losses[-2:]) / 2 < sum(losses[:2]) / 2  # it learned from the labels
    assert (run_dir / "final" / "reward_config.json").is_file()
