import json
import math

from rlhf.config import RunConfig
from rlhf.tracking import MetricsLogger, make_run_dir, read_metrics


def test_logger_writes_config_metrics_and_tables(tmp_path, run_cfg):
    run_dir = make_run_dir(run_cfg, "unit")
    logger = MetricsLogger(run_dir, run_cfg, "unit", config=run_cfg, total_steps=2)
    logger.log({"loss/policy": 0.5, "objective/kl": float("nan")}, step=1)
    logger.log({"loss/policy": 0.25}, step=2)
    logger.log_table("samples", ["prompt", "response"], [["<b>hi</b>", "yo"]], step=2)
    logger.summary({"reward/composite": 1.5})
    logger.finish()
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert [r["loss/policy"] for r in rows] == [0.5, 0.25]
    assert math.isnan(float(rows[0]["objective/kl"]))
    assert "wandb_mode: disabled" in (run_dir / "config.yaml").read_text()
    assert json.loads((run_dir / "samples.jsonl").read_text())["prompt"] == "<b>hi</b>"
    assert json.loads((run_dir / "summary.json").read_text()) == {"reward/composite": 1.5}


def test_wandb_offline_run_needs_no_login(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    run = RunConfig(output_dir=str(tmp_path), run_name="offline", wandb_mode="offline", tags=["unit"])
    logger = MetricsLogger(make_run_dir(run, "unit"), run, "unit", config=run)
    logger.log({"reward/helpful": 1.0}, step=1)
    logger.finish()
    offline_runs = list((tmp_path / "offline" / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1  # syncable later with `wandb sync`
