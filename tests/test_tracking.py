import json
import math

from rlhf.config import RunConfig
from rlhf.tracking import MetricsLogger, make_run_dir, read_metrics, run_history


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


def test_a_resumed_run_keeps_each_step_once(tmp_path, run_cfg):
    first = MetricsLogger(tmp_path, run_cfg, stage="x", enabled=True)
    for step in range(0, 6):
        first.log({"loss": float(step)}, step=step)
    first._jsonl.write('{"step": 6, "loss": 0.')  # the kill tore the last line
    first.finish()
    resumed = MetricsLogger(tmp_path, run_cfg, stage="x", enabled=True)
    resumed.resumed_at(3)  # checkpoint of step 3: steps 4-6 are redone
    for step in range(4, 7):
        resumed.log({"loss": 10.0 + step}, step=step)
    resumed.finish()
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [(r["step"], r["loss"]) for r in records] == [(0, 0.0), (1, 1.0), (2, 2.0), (3, 3.0), (4, 14.0),
                                                         (5, 15.0), (6, 16.0)]
    assert [r["loss"] for r in run_history(tmp_path, "loss")] == [0.0, 1.0, 2.0, 3.0, 14.0, 15.0, 16.0]
    assert run_history(tmp_path / "nowhere", "loss") == []
