import os
import json
import math
import time
from pathlib import Path

from rlhf.core.config import RunConfig
from rlhf.core.lifecycle import run_folder
from rlhf.core.tracking import MetricsLogger, read_metrics, run_history


def wandb_log_with(run_folder: Path, *needles: bytes, timeout_s: float = 60.0) -> bytes:
    """The bytes of a finished offline run's transaction log (.wandb), once they hold every needle or the time is
    up. wandb-core may still be writing the log for a moment after ``run.finish()`` returns (CI once read only its
    7-byte header), so the test waits for the records it checks rather than a fixed time."""
    deadline = time.monotonic() + timeout_s
    while True:
        [log] = list((run_folder / "wandb").glob("offline-run-*/run-*.wandb"))
        data = log.read_bytes()
        if all(n in data for n in needles) or time.monotonic() > deadline:
            return data
        time.sleep(0.2)


def test_logger_writes_config_metrics_and_tables(tmp_path, run_cfg):
    run_dir = run_folder(run_cfg, "unit")
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
    logger = MetricsLogger(run_folder(run, "unit"), run, "unit", config=run)
    logger.log({"reward/helpful": 1.0}, step=1)
    logger.finish()
    offline_runs = list((tmp_path / "offline" / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1  # syncable later with `wandb sync`


def test_a_resumed_run_keeps_each_step_once(tmp_path, run_cfg):
    first = MetricsLogger(tmp_path, run_cfg, stage="x", enabled=True)
    for step in range(0, 6):
        first.log({"loss/train": float(step)}, step=step)
    first._jsonl.write('{"step": 6, "loss/train": 0.')  # the kill tore the last line
    first.finish()
    resumed = MetricsLogger(tmp_path, run_cfg, stage="x", enabled=True)
    resumed.resumed_at(3)  # checkpoint of step 3: steps 4-6 are redone
    for step in range(4, 7):
        resumed.log({"loss/train": 10.0 + step}, step=step)
    resumed.finish()
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [(r["step"], r["loss/train"]) for r in records] == [(0, 0.0), (1, 1.0), (2, 2.0), (3, 3.0), (4, 14.0),
                                                         (5, 15.0), (6, 16.0)]
    assert [r["loss/train"] for r in run_history(tmp_path, "loss/train")] == [0.0, 1.0, 2.0, 3.0, 14.0, 15.0, 16.0]
    assert run_history(tmp_path / "nowhere", "loss/train") == []


def test_wandb_settings_follow_the_users_environment():
    from rlhf.core.tracking import wandb_settings

    run = RunConfig(wandb_mode="offline", wandb_project="rlhf", tags=["x", "pipeline:demo"])
    assert wandb_settings(run, {}) == {"mode": "offline", "project": "rlhf", "entity": None, "group": "demo"}
    env = {"WANDB_MODE": "online", "WANDB_PROJECT": "mine", "WANDB_ENTITY": "lab", "WANDB_RUN_GROUP": "g7"}
    assert wandb_settings(run, env) == {"mode": "online", "project": "mine", "entity": "lab", "group": "g7"}
    off = RunConfig(wandb_mode="disabled")  # an explicit "no tracking" is final
    assert wandb_settings(off, env)["mode"] == "disabled" and wandb_settings(off, {})["group"] is None


def test_offline_pipeline_stages_share_a_group_and_log_artifacts_with_lineage(tmp_path, monkeypatch):
    """Four stages of one pipeline run, offline: read back from their files (artifact.json and the .wandb logs)."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_RUN_GROUP", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_PROJECT", "lineage-test")
    root = tmp_path / "demo"
    products = {}

    def stage(name, kind, inputs, product_file):
        run = RunConfig(output_dir=str(root), run_name=name, wandb_mode="online", tags=["pipeline:demo"])
        logger = MetricsLogger(run_folder(run, name), run, name, config=run)
        product = root / name / product_file
        product.parent.mkdir(parents=True, exist_ok=True)
        product.write_text(f"{name} weights")
        logger.log({"loss/train": 1.0}, step=1)
        if name == "eval":
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            plt.plot([0, 1], [1, 0])
            plt.savefig(root / name / "rouge.png")
            logger.log_images([root / name / "rouge.png"], step=1)
        record = logger.log_artifact(product if name == "eval" else product.parent, kind, inputs)
        logger.finish()
        products[name] = product.parent
        return record

    stage("sft", "model", ["tiny-llama"], "final/adapter_model.safetensors")
    stage("reward", "reward-model", ["tiny-bert"], "final/model.safetensors")
    stage("ppo", "model", [products["sft"], products["reward"]], "final/model.safetensors")
    report = stage("eval", "eval-report", [products["ppo"] / "adapter", products["sft"]], "report.md")
    assert os.environ["WANDB_MODE"] == "offline"  # the user's setting was not rewritten

    assert report["name"] == "demo-eval" and report["group"] == "demo"
    assert [i["name"] for i in report["inputs"]] == ["demo-ppo", "demo-sft"]
    ppo = json.loads((root / "ppo" / "artifact.json").read_text())
    assert [i["name"] for i in ppo["inputs"]] == ["demo-sft", "demo-reward"]
    sft = json.loads((root / "sft" / "artifact.json").read_text())
    assert sft["inputs"] == [{"path": "tiny-llama"}]  # a zoo model: no upstream artifact
    for name in ("sft", "reward", "ppo", "eval"):
        data = wandb_log_with(root / name, b"demo", f"demo-{name}".encode(), b"lineage-test")
        assert b"demo" in data and f"demo-{name}".encode() in data and b"lineage-test" in data, name
    eval_log = wandb_log_with(root / "eval", b'"inputs":[{"name":"demo-ppo"')
    assert b'"inputs":[{"name":"demo-ppo"' in eval_log  # the inputs travel in the artifact's metadata
    assert list((root / "eval" / "wandb").glob("offline-run-*/files/media/images/plots/rouge_*.png"))
