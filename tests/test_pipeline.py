"""`rlhf pipeline`: orchestration with stub stages (reuse, --force, wiring), and the tiny preset end to end."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from rlhf import pipeline as pl
from rlhf.core.config import ConfigError, RunConfig
from rlhf.stages import pipeline_stages


@dataclass
class StubConfig:
    run: RunConfig = field(default_factory=RunConfig)
    model: str = ""
    steps: int = 1
    role: str = "proxy"  # the gold stage sets role: gold


def _stub_entries(tmp_path, calls, broken: str = ""):
    """Stage entries whose main records its call and writes what a real stage writes."""
    defaults = tmp_path / "stub.yaml"
    defaults.write_text("steps: 1\n")

    def make(name):
        def main(cfg: StubConfig) -> Path:
            calls.append((name, cfg.model, cfg.steps))
            run_dir = Path(cfg.run.output_dir) / cfg.run.run_name
            run_dir.mkdir(parents=True, exist_ok=True)
            with open(run_dir / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps({"step": 1, "loss": 1.0}) + "\n")
            if name != broken:
                (run_dir / "final").mkdir(exist_ok=True)
                (run_dir / "summary.json").write_text("{}")
                if name == "eval":
                    (run_dir / "report.md").write_text("# report\n")
                    (run_dir / "results.json").write_text("{}")
            return run_dir
        return main

    return {name: (make(name), StubConfig, defaults) for name in pipeline_stages()}


def _cfg(tmp_path, **ppo_overrides):
    return pl.PipelineConfig(
        run=RunConfig(output_dir=str(tmp_path / "runs"), run_name="p", wandb_mode="disabled"), base_model="tiny-llama",
        sft=pl.StageSpec(overrides={"model": "{base}"}),
        reward=pl.StageSpec(overrides={"model": "tiny-bert"}),
        ppo=pl.StageSpec(overrides={"model": "{sft}", **ppo_overrides}),
        eval=pl.StageSpec(overrides={"model": "{ppo_run}/final/adapter"}))


def test_stages_are_wired_run_once_and_reused(tmp_path):
    calls: list = []
    entries = _stub_entries(tmp_path, calls)
    root = tmp_path / "runs" / "p"
    record = pl.run_pipeline(_cfg(tmp_path), entries=entries, log=lambda m: None)
    assert calls == [("sft", "tiny-llama", 1), ("reward", "tiny-bert", 1), ("ppo", str(root / "sft" / "final"), 1),
                     ("eval", str(root / "ppo" / "final" / "adapter"), 1)]
    assert record["report"] == str(root / "eval" / "report.md")
    assert "## Pipeline timings" in (root / "eval" / "report.md").read_text()
    calls.clear()
    record = pl.run_pipeline(_cfg(tmp_path), entries=entries, log=lambda m: None)
    assert calls == [] and all(s["reused"] for s in record["stages"].values())
    assert (root / "eval" / "report.md").read_text().count("## Pipeline timings") == 1


def test_changed_config_reruns_that_stage_and_the_ones_that_consume_it(tmp_path):
    calls: list = []
    entries = _stub_entries(tmp_path, calls)
    pl.run_pipeline(_cfg(tmp_path), entries=entries, log=lambda m: None)
    calls.clear()
    pl.run_pipeline(_cfg(tmp_path, steps=5), entries=entries, log=lambda m: None)
    assert [c[0] for c in calls] == ["ppo", "eval"]
    lines = (tmp_path / "runs" / "p" / "ppo" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1  # the old run's metrics were cleared, not appended to


def test_force(tmp_path):
    calls: list = []
    entries = _stub_entries(tmp_path, calls)
    pl.run_pipeline(_cfg(tmp_path), entries=entries, log=lambda m: None)
    calls.clear()
    pl.run_pipeline(_cfg(tmp_path), force="reward", entries=entries, log=lambda m: None)
    assert [c[0] for c in calls] == ["reward", "ppo", "eval"]
    calls.clear()
    pl.run_pipeline(_cfg(tmp_path), force=True, entries=entries, log=lambda m: None)
    assert [c[0] for c in calls] == list(pl.DEFAULT_STAGES)
    with pytest.raises(ConfigError, match="--force nope"):
        pl.run_pipeline(_cfg(tmp_path), force="nope", entries=entries, log=lambda m: None)


def test_interrupted_stage_starts_over(tmp_path):
    calls: list = []
    entries = _stub_entries(tmp_path, calls)
    pl.run_pipeline(_cfg(tmp_path), entries=entries, log=lambda m: None)
    (tmp_path / "runs" / "p" / "ppo" / pl.MARKER).unlink()  # as if killed before it finished
    calls.clear()
    pl.run_pipeline(_cfg(tmp_path), entries=entries, log=lambda m: None)
    assert [c[0] for c in calls] == ["ppo", "eval"]


def test_config_errors_fail_before_any_stage_runs(tmp_path):
    calls: list = []
    entries = _stub_entries(tmp_path, calls)
    with pytest.raises(ConfigError, match="pipeline stage ppo: unknown config key stepz"):
        pl.run_pipeline(_cfg(tmp_path, stepz=3), entries=entries, log=lambda m: None)
    assert calls == []


def test_stages_pick_what_runs_and_eval_drops_the_policies_of_stages_left_out(tmp_path):
    calls: list = []
    entries = _stub_entries(tmp_path, calls)
    cfg = _cfg(tmp_path)
    cfg.stages = ["eval", "dpo", "sft"]  # run in pipeline order, whatever order they are named in
    cfg.dpo = pl.StageSpec(overrides={"model": "{sft}"})
    pl.run_pipeline(cfg, entries=entries, log=lambda m: None)
    root = tmp_path / "runs" / "p"
    assert [c[0] for c in calls] == ["sft", "dpo", "eval"] and calls[1][1] == str(root / "sft" / "final")
    tree = {"policies": [{"name": "sft", "model": "{sft}"}, {"name": "ppo", "model": "{ppo_run}/final/adapter"},
                         {"name": "dpo", "model": "{dpo_run}/final/adapter", "base": "{sft}"},
                         {"name": "other", "model": "elsewhere", "base": "{ppo}"}],
            "variants": [{"policies": ["ppo"]}, {"policies": ["sft", "ppo", "dpo"]}, {"decoding": "greedy"}],
            "training_runs": {"sft": "{sft_run}", "ppo": "{ppo_run}", "dpo": "{dpo_run}"}}
    kept = pl.drop_unrun_policies(pl.substitute(tree, pl.placeholders(cfg)), cfg)
    assert [p["name"] for p in kept["policies"]] == ["sft", "dpo"]
    assert kept["variants"] == [{"policies": ["sft", "dpo"]}, {"decoding": "greedy"}]  # ppo-only variant gone
    assert sorted(kept["training_runs"]) == ["dpo", "sft"]
    cfg.stages = ["sft", "dpo!"]
    with pytest.raises(ConfigError, match="stages: unknown stage 'dpo!'"):
        pl.run_pipeline(cfg, entries=entries, log=lambda m: None)


def _gold_cfg(tmp_path, **gold_overrides):
    """The stub pipeline with a gold stage that evaluation judges with."""
    cfg = _cfg(tmp_path)
    cfg.stages = ["sft", "reward", "gold", "ppo", "eval"]
    cfg.gold = pl.StageSpec(overrides={"model": "tiny-bert-gold", **gold_overrides})
    cfg.eval = pl.StageSpec(overrides={"model": "{gold}"})
    return cfg


def test_gold_stage_runs_before_eval_feeds_it_and_is_reused(tmp_path):
    calls: list = []
    entries = _stub_entries(tmp_path, calls)
    root = tmp_path / "runs" / "p"
    pl.run_pipeline(_gold_cfg(tmp_path), entries=entries, log=lambda m: None)
    assert [c[0] for c in calls] == ["sft", "reward", "gold", "ppo", "eval"]
    assert calls[2][1] == "tiny-bert-gold" and calls[-1][1] == str(root / "gold" / "final")
    calls.clear()
    pl.run_pipeline(_gold_cfg(tmp_path), entries=entries, log=lambda m: None)
    assert calls == []
    # A new gold is another judge: evaluation reruns, the policies (no stage trains on the gold) are kept.
    pl.run_pipeline(_gold_cfg(tmp_path, steps=3), entries=entries, log=lambda m: None)
    assert [c[0] for c in calls] == ["gold", "eval"]
    calls.clear()
    pl.run_pipeline(_gold_cfg(tmp_path, steps=3), force="gold", entries=entries, log=lambda m: None)
    assert [c[0] for c in calls] == ["gold", "ppo", "eval"]  # --force: that stage and every later one


def test_gold_stage_is_the_only_one_with_role_gold_and_never_feeds_training(tmp_path):
    calls: list = []
    entries = _stub_entries(tmp_path, calls)
    cfg = _gold_cfg(tmp_path)
    cfg.ppo = pl.StageSpec(overrides={"model": "{gold_run}/final"})
    with pytest.raises(ConfigError, match=r"^pipeline stage ppo: model: names the gold judge's output \(") as err:
        pl.run_pipeline(cfg, entries=entries, log=lambda m: None)
    assert "\n" not in str(err.value) and calls == []  # one line, before SFT ran
    cfg.stages = ["sft", "reward", "ppo", "eval"]  # a gold path is refused even where the gold stage does not run
    with pytest.raises(ConfigError, match="pipeline stage ppo: model: names the gold"):
        pl.run_pipeline(cfg, entries=entries, log=lambda m: None)
    tree = {"reward_model": "{reward}", "gold": {"model": "{gold}"}, "training_runs": {"gold": "{gold_run}"}}
    without = pl.drop_unrun_policies(pl.substitute(tree, pl.placeholders(cfg)), cfg)
    assert without["gold"] == {"model": ""} and without["training_runs"] == {}  # eval simply has no gold
    cfg.stages.insert(2, "gold")
    kept = pl.drop_unrun_policies(pl.substitute(tree, pl.placeholders(cfg)), cfg)
    assert kept["gold"]["model"] == str(tmp_path / "runs" / "p" / "gold" / "final")


def test_incomplete_stage_output_is_an_error(tmp_path):
    entries = _stub_entries(tmp_path, [], broken="reward")
    with pytest.raises(RuntimeError, match="stage reward returned but its output is incomplete"):
        pl.run_pipeline(_cfg(tmp_path), entries=entries, log=lambda m: None)


def test_placeholders_leave_other_braces_alone():
    values = {"base": "B", "sft": "S"}
    assert pl.substitute({"a": "{sft}/x", "b": ["{base}", "{dialogue} {sft}"], "c": 3}, {**values}) == \
        {"a": "S/x", "b": ["B", "{dialogue} S"], "c": 3}


def test_presets_resolve_against_the_real_stage_configs():
    """Both presets name only keys the stage configs have (the real classes, not stubs)."""
    from pipelines.run import PRESETS
    from rlhf.core.config import load_config

    for preset in PRESETS.values():
        cfg, _ = load_config(pl.PipelineConfig, [], preset)
        stages = {name: pl.resolve_stage(cfg, name) for name in pipeline_stages()}
        assert stages["eval"].config.reward_model == str(pl.pipeline_dir(cfg) / "reward" / "final")
        rl = stages["eval"].config.candidate  # the headline's policy is named after the RL stage's algorithm
        assert rl == stages["ppo"].config.rl.algo
        assert {p.name for p in stages["eval"].config.policies} == {"base", "sft", rl}  # dpo: not run
        assert stages["ppo"].config.model.name == str(pl.pipeline_dir(cfg) / "sft" / "final")
        assert stages["dpo"].config.model.name == str(pl.pipeline_dir(cfg) / "sft" / "final")
        assert "gold" in cfg.stages and stages["gold"].config.role == "gold"
        assert stages["eval"].config.gold.model == str(pl.pipeline_dir(cfg) / "gold" / "final")
        # the gold is trained apart from the proxy, on more pairs per head (0 = all)
        gold_cap, proxy_cap = (stages[s].config.data.max_train_pairs_per_head for s in ("gold", "reward"))
        assert (gold_cap == 0 or gold_cap > proxy_cap) and stages["gold"].config.model.freeze_backbone
        cfg.gold.overrides["role"] = "proxy"
        with pytest.raises(ConfigError, match="pipeline stage gold: role: 'proxy'"):
            pl.resolve_stage(cfg, "gold")
        del cfg.gold.overrides["role"]
        # the gold learns from the train pairs the proxy and DPO never see
        assert (stages["gold"].config.train_partition(), stages["reward"].config.train_partition()) == ("gold", "proxy")
        for stage in ("reward", "dpo"):
            getattr(cfg, stage).overrides["data.partition"] = "all"
            with pytest.raises(ConfigError, match=rf"^pipeline stage {stage}: data.partition: all: overlaps the gold"):
                pl.resolve_stage(cfg, stage)
            del getattr(cfg, stage).overrides["data.partition"]
        cfg.stages = list(pipeline_stages())
        assert {p.name for p in pl.resolve_stage(cfg, "eval").config.policies} == {"base", "sft", rl, "dpo"}


def test_tiny_preset_end_to_end(tmp_path, capsys):
    """`rlhf pipeline --preset tiny`: all five stages on tiny models; the report, its plots and the gold judge.

    Its time (about 20-40 s on 2 cores) is printed, not asserted: timings belong in benchmarks, and a shared
    CI machine's load would make a timed assertion flaky."""
    from rlhf.cli import main

    start = time.perf_counter()
    assert main(["pipeline", "--preset", "tiny", "--run.output_dir", str(tmp_path)]) == 0
    elapsed = time.perf_counter() - start
    root = tmp_path / "tiny"
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert last_line.endswith(f"report: {root / 'eval' / 'report.md'}")
    with capsys.disabled():
        print(f"\n[tiny pipeline end to end: {elapsed:.1f} s]")
    sft = json.loads((root / "sft" / "summary.json").read_text())
    assert sft["eval/loss_after"] < sft["eval/loss_before"]  # SFT learned
    assert (root / "reward" / "final" / "reward_config.json").is_file()
    assert (root / "ppo" / "final" / "adapter" / "adapter_config.json").is_file()
    results = json.loads((root / "eval" / "results.json").read_text())
    metrics = results["metrics"]
    assert metrics["sft/0-shot/sampled"]["all"]["kl/k3"] > 0  # SFT moved away from the base
    assert "win_rate" in metrics["ppo/0-shot/sampled"]["all"]
    assert "rouge/rougeL" in metrics["base/1-shot/greedy"]["dialogsum"]
    gold = root / "gold" / "final"
    assert json.loads((gold / "reward_config.json").read_text())["role"] == "gold"
    assert results["judges"]["gold"]["folder"] == str(gold.resolve()) and results["judges"]["gold"]["role"] == "gold"
    assert {"gold/composite", "gold/win_rate"} <= set(metrics["ppo/0-shot/sampled"]["all"])
    report = (root / "eval" / "report.md").read_text()
    assert str(gold) in report and "**Gold judge**" in report and "| gold | " in report  # named, beside the proxy
    for png in ("training_sft.png", "training_reward.png", "training_ppo.png", "reward_heads.png", "rouge.png"):
        assert (root / "eval" / png).read_bytes()[:4] == b"\x89PNG"
    # A second run reuses every finished stage.
    assert main(["pipeline", "--preset", "tiny", "--run.output_dir", str(tmp_path)]) == 0
    pipeline = json.loads((root / "pipeline.json").read_text())
    assert all(s["reused"] for s in pipeline["stages"].values())


def test_tiny_preset_with_dpo_instead_of_ppo(tmp_path):
    """`--stages '[sft, reward, dpo, eval]'`: DPO starts from the SFT output and evaluation compares it to SFT,
    with SFT as its KL reference; PPO neither runs nor appears in the report."""
    from rlhf.cli import main

    assert main(["pipeline", "--preset", "tiny", "--run.output_dir", str(tmp_path),
                 "--stages", "[sft, reward, dpo, eval]"]) == 0
    root = tmp_path / "tiny"
    config = yaml.safe_load((root / "dpo" / "config.yaml").read_text())
    assert config["model"]["name"] == str(root / "sft" / "final")
    assert (root / "dpo" / "final" / "adapter" / "adapter_config.json").is_file() and not (root / "ppo").exists()
    results = json.loads((root / "eval" / "results.json").read_text())
    assert set(results["policies"]) == {"base", "sft", "dpo"}
    assert results["judges"]["gold"] is None and not (root / "gold").exists()  # no gold stage: no gold judge
    assert results["metrics"]["dpo/0-shot/sampled"]["all"]["kl/k3"] >= 0  # measured against SFT
    assert (root / "eval" / "training_dpo.png").read_bytes()[:4] == b"\x89PNG"


def test_pipeline_runs_another_algorithm_in_stage_3(tmp_path):
    """`--ppo.overrides '{rl.algo: grpo, ...}'` adds to the preset's stage-3 overrides (its wiring to the SFT and
    reward outputs stays) and the pipeline runs GRPO there: no value head is saved, the KL sits in the loss."""
    from rlhf.cli import main
    from rlhf.core.tracking import read_metrics

    overrides = "{rl.algo: grpo, rl.samples_per_prompt: 2, update.batch_size: 4}"
    assert main(["pipeline", "--preset", "tiny", "--run.output_dir", str(tmp_path), "--ppo.overrides", overrides]) == 0
    stage = tmp_path / "tiny" / "ppo"
    config = yaml.safe_load((stage / "config.yaml").read_text())
    assert config["rl"]["algo"] == "grpo" and config["model"]["name"] == str(tmp_path / "tiny" / "sft" / "final")
    assert (stage / "final" / "adapter" / "adapter_config.json").is_file()
    assert not (stage / "final" / "value_head.safetensors").exists()
    steps = [r for r in read_metrics(stage / "metrics.jsonl") if "loss/policy" in r]
    assert len(steps) == 4 and all("loss/kl" in r and "loss/value" not in r for r in steps)


def test_preset_flag(capsys):
    from pipelines.run import cli, split_preset

    assert split_preset(["--preset", "tiny", "--force"]) == ("tiny", ["--force"])
    assert split_preset(["--preset=tiny"]) == ("tiny", [])
    assert split_preset([]) == ("demo", [])
    assert cli(["--preset", "huge"]) == 2 and "expected one of demo, tiny" in capsys.readouterr().err
    assert cli(["--preset", "tiny", "--sft.overides", "{}"]) == 2
    assert "unknown config key sft.overides" in capsys.readouterr().err
    assert cli(["--preset", "tiny", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "# ---- ppo -> runs/tiny/ppo" in out and "model: runs/tiny/sft/final" in out
