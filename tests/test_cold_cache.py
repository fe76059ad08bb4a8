"""The same run gives the same result on a fresh machine (empty RLHF_HOME: the tiny models built, the trunk cache
filled) as on every later one (both read from the cache)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhf.core.config import load_config

PRESET = Path(__file__).resolve().parents[1] / "pipelines" / "configs" / "reward_tiny.yaml"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def timing(key: str) -> bool:
    """Wall-clock keys, which differ between any two runs."""
    return key == "time" or "seconds" in key or key.endswith("_per_s")


def test_the_tiny_reward_stage_gives_the_same_metrics_on_a_cold_and_a_warm_cache(tmp_path, monkeypatch):
    from reward_models.config import RewardStageConfig
    from reward_models.train import train_reward_model
    from rlhf.core.tracking import read_metrics

    monkeypatch.setenv("RLHF_HOME", str(tmp_path / "home"))  # nothing built, nothing cached
    results = []
    for name in ("cold", "warm"):
        cfg, _ = load_config(RewardStageConfig, ["--config", str(PRESET), "--run.output_dir", str(tmp_path / "runs"),
                                                 "--run.run_name", name, "--run.wandb_mode", "disabled"])
        run_dir = train_reward_model(cfg)
        summary = json.loads((run_dir / "summary.json").read_text())
        rows = [{k: v for k, v in r.items() if not timing(k)} for r in read_metrics(run_dir / "metrics.jsonl")]
        results.append(({k: v for k, v in summary.items() if "accuracy" in k or k.startswith(("loss", "eval/"))},
                         rows))
    (cold_summary, cold_rows), (warm_summary, warm_rows) = results
    assert cold_summary and any("accuracy" in k for k in cold_summary)
    assert cold_summary == warm_summary  # exactly: the same computation, not a near one
    assert cold_rows == warm_rows
