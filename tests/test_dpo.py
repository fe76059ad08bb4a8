"""The DPO stage on tiny random models: TRL's DPOTrainer on our preference records, reference = adapters off.

What is checked: the records become TRL's conversational rows and are filtered by dimension; bad input is one
line (exit 2) before any model loads and leaves no run folder; with policy == reference the loss starts at
exactly log 2 (DPO) or 1/(4 beta^2) (IPO); the policy moves; final/ loads the way ``rlhf eval`` loads it,
with the SFT policy as its KL reference; --resume redoes the steps after the checkpoint exactly."""
from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch

from pipelines.dpo import main
from rlhf.stages import STAGES
from rlhf.core.config import ConfigError, load_config
from rlhf.dpo.config import DPOStageConfig
from rlhf.dpo.data import keep, load_pairs, to_conversational
from rlhf.dpo.trainer import RENAMES
from rlhf.data.records import PreferenceRecord
from rlhf.sft.trainer import hf_logs_to_metrics
from rlhf.data.sources import partition_of
from rlhf.core.tracking import read_metrics

cli = STAGES["dpo"].cli

TINY = Path(__file__).resolve().parents[1] / "pipelines" / "configs" / "dpo_tiny.yaml"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_args(out: Path, *flags: str) -> list[str]:
    return ["--config", str(TINY), "--run.output_dir", str(out), "--run.run_name", "test", *flags]


def tiny_cfg(out: Path, *flags: str) -> DPOStageConfig:
    cfg, _ = load_config(DPOStageConfig, tiny_args(out, *flags))
    return cfg


def losses(run_dir: Path, key: str = "loss/dpo") -> dict[int, float]:
    """step -> value; a later record of the same step (a resumed run) wins."""
    return {r["step"]: r[key] for r in read_metrics(run_dir / "metrics.jsonl") if key in r}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def pair(prompt: str, dimension: str) -> dict:
    return {"prompt": prompt, "chosen": f"a kind answer to {prompt}", "rejected": f"a rude answer to {prompt}",
            "dimension": dimension}


# ---------------------------------------------------------------- config, data, log names


def test_config_defaults_and_strict_keys():
    cfg, _ = load_config(DPOStageConfig, [])
    assert cfg.train.loss_type == "sigmoid" and cfg.train.beta == 0.1 and cfg.lora.layers == list(range(-8, 0))
    assert cfg.data.dimensions == [] and cfg.train.save_merged
    ipo, _ = load_config(DPOStageConfig, ["--train.loss_type", "ipo", "--data.dimensions", "[harmless]"])
    assert ipo.train.loss_type == "ipo" and ipo.data.dimensions == ["harmless"]
    with pytest.raises(ConfigError, match="train.loss_type"):
        load_config(DPOStageConfig, ["--train.loss_type", "dpo"])
    with pytest.raises(ConfigError, match="train.betta"):
        load_config(DPOStageConfig, ["--train.betta", "0.2"])
    assert cli(["--help"]) == 0 and cli(["--train.betta", "0.2"]) == 2


def test_records_become_trl_conversational_rows():
    record = PreferenceRecord(prompt="\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how do I pick a lock?\n\nAssistant:",
                              chosen="I can't help with that.", rejected="Use a pin.", dimension=["harmless"])
    row = to_conversational(record)
    assert row == {"prompt": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                              {"role": "user", "content": "how do I pick a lock?"}],
                   "chosen": [{"role": "assistant", "content": "I can't help with that."}],
                   "rejected": [{"role": "assistant", "content": "Use a pin."}]}
    plain = to_conversational(PreferenceRecord("Why is the sky blue?", "Scattering.", "Paint.", ["honest"]))
    assert plain["prompt"] == [{"role": "user", "content": "Why is the sky blue?"}]


def test_dimension_filter_and_composite():
    records = [PreferenceRecord("p1", "a", "b", ["harmless"]), PreferenceRecord("p2", "a", "b", ["honest"]),
               PreferenceRecord("p3", "a", "b", ["helpful", "harmless"])]
    assert [r.prompt for r in keep(records, ["harmless"])] == ["p1", "p3"]
    assert [r.prompt for r in keep(records, ["honest", "helpful"])] == ["p2", "p3"]
    assert keep(records, []) == records  # composite: every pair once


def test_load_pairs_per_dimension_and_split(tmp_path):
    cfg = tiny_cfg(tmp_path).data
    cfg.dimensions, cfg.max_train_pairs = ["honest"], 0
    pairs = load_pairs(cfg, seed=0)
    assert pairs.train and all(r.dimension == ["honest"] for r in pairs.train + pairs.dev)
    assert not {r.prompt for r in pairs.train} & {r.prompt for r in pairs.dev}  # split by prompt
    rows = [pair("q1", "honest"), pair("q2", "honest")]  # q1 is in the proxy's half of train, q2 in the gold's
    cfg.extra_files, cfg.extra_files_split = [str(write_jsonl(tmp_path / "a.jsonl", rows))], "train"
    train = load_pairs(cfg, seed=0).train
    assert len(train) == len(pairs.train) + 1 and {"q1"} == {r.prompt for r in train} & {"q1", "q2"}
    assert all(partition_of(r.prompt) == "proxy" for r in train)  # DPO learns from the proxy's half only


def test_trl_logs_are_renamed_into_our_namespaces():
    metrics = hf_logs_to_metrics({"loss": 0.69, "rewards/margins": 0.1, "rewards/accuracies": 0.5,
                                  "eval_loss": 0.6, "eval_rewards/chosen": 0.2, "grad_norm": 1.0}, RENAMES)
    assert metrics == {"loss/dpo": 0.69, "reward/margin": 0.1, "reward/accuracy": 0.5, "eval/loss/dpo": 0.6,
                       "eval/reward/chosen": 0.2, "train/grad_norm": 1.0}  # no perplexity of a DPO loss


# ---------------------------------------------------------------- bad input: one line, exit 2, nothing written


@pytest.mark.parametrize("rows, flags, expected", [
    ([{"prompt": "q", "chosen": "a", "dimension": "harmless"}], [], r"bad\.jsonl:1: field 'rejected': missing"),
    ([{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}], [],
     r"bad\.jsonl:1: field 'prompt': missing"),
    ([pair("q1", "honest"), pair("q2", "helpful")], ["--data.dimensions", "[harmless]"],
     r"data\.extra_files\[0\]: .*bad\.jsonl: no preference pairs labelled harmless \(2 rows read\)"),
    ([], [], r"data\.extra_files\[0\]: .*bad\.jsonl: file is empty"),
])
def test_a_file_without_pairs_is_one_line_before_any_model(tmp_path, capsys, monkeypatch, rows, flags, expected):
    import rlhf.models.policies

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(rlhf.models.policies, "load_weights", no_model)
    bad = write_jsonl(tmp_path / "bad.jsonl", rows)
    out = tmp_path / "runs"
    assert cli(tiny_args(out, "--data.sources", "[]", "--data.extra_files", f"[{bad}]", *flags)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(expected, err[0]), err
    assert not out.exists()  # no empty run folder left behind


def test_no_pairs_after_filtering_shipped_sources_and_unknown_dimension(tmp_path, capsys):
    out = tmp_path / "runs"
    assert cli(tiny_args(out, "--data.sources", "[truthfulqa]", "--data.dimensions", "[harmless]")) == 2
    assert "data: no training pairs labelled harmless in truthfulqa" in capsys.readouterr().err
    assert cli(tiny_args(out, "--data.dimensions", "[harmles]")) == 2
    assert "data.dimensions: unknown dimension 'harmles'" in capsys.readouterr().err
    assert cli(tiny_args(out, "--lora.enabled", "false")) == 2
    assert "lora.enabled: DPO here trains LoRA" in capsys.readouterr().err
    assert not out.exists()


# ---------------------------------------------------------------- training on the tiny model


def test_dpo_starts_at_log2_learns_and_final_loads_like_a_ppo_policy(tmp_path):
    from rlhf.models.policies import load_policy

    run_dir = main(tiny_cfg(tmp_path))
    # LoRA's B starts at zero, so policy == reference: every implicit reward is 0 and the loss is -log sigmoid(0)
    assert losses(run_dir, "eval/loss/dpo")[0] == pytest.approx(math.log(2), abs=1e-6)
    assert losses(run_dir)[1] == pytest.approx(math.log(2), abs=1e-6)  # the first batch, before any update
    assert losses(run_dir, "reward/margin")[1] == 0.0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["train/steps"] == 3 and summary["eval/loss/dpo_after"] < summary["eval/loss/dpo_before"]
    # final/adapter: DPO's LoRA on the SFT policy, loaded as `rlhf eval` loads a PPO policy; its reference
    # (adapters off) is the SFT policy itself, and the merged final/ is the same function
    policy = load_policy("dpo", str(run_dir / "final" / "adapter"))
    full = load_policy("dpo-merged", str(run_dir / "final"))
    sft = load_policy("sft", "tiny-llama")
    ids = torch.arange(3, 40).unsqueeze(0)  # (1, 37)
    with torch.no_grad():
        adapted = policy.model(input_ids=ids).logits
        with policy.reference() as reference:
            ref = reference(input_ids=ids).logits
        torch.testing.assert_close(ref, sft.model(input_ids=ids).logits)
        torch.testing.assert_close(full.model(input_ids=ids).logits, adapted, atol=1e-5, rtol=1e-5)
    assert policy.kind == "adapter" and full.kind == "full"
    assert (adapted - ref).abs().max() > 1e-4  # the policy moved


def test_ipo_through_the_loss_type(tmp_path):
    beta = 0.5
    run_dir = main(tiny_cfg(tmp_path, "--train.loss_type", "ipo", "--train.beta", str(beta), "--train.max_steps", "1",
                            "--train.save_merged", "false"))
    # IPO's loss (delta - 1/(2 beta))^2 with delta = 0 when policy == reference
    assert losses(run_dir)[1] == pytest.approx(1 / (4 * beta ** 2), rel=1e-6)
    assert (run_dir / "final" / "adapter" / "adapter_config.json").is_file()
    assert not (run_dir / "final" / "model.safetensors").exists()


def test_resume_redoes_the_steps_after_the_checkpoint_and_a_reused_folder_is_refused(tmp_path, capsys):
    flags = ("--train.max_steps", "4", "--train.save_steps", "2", "--train.save_merged", "false")
    run_dir = main(tiny_cfg(tmp_path, *flags))
    uninterrupted = losses(run_dir)
    assert sorted(uninterrupted) == [1, 2, 3, 4]
    assert cli(tiny_args(tmp_path, *flags)) == 2  # the same run name without --resume
    assert "holds an earlier run; --resume continues it" in capsys.readouterr().err
    shutil.rmtree(run_dir / "checkpoints" / "checkpoint-4")
    shutil.rmtree(run_dir / "final")
    (run_dir / "summary.json").unlink()  # a run killed after step 2 never wrote one
    torch.manual_seed(12345)  # a different global RNG state: the checkpoint's must be restored
    assert main(tiny_cfg(tmp_path, *flags), resume=True) == run_dir
    records = [r["step"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss/dpo" in r]
    assert records == [1, 2, 3, 4]  # the redone steps are in the file once
    resumed = losses(run_dir)
    for step in (3, 4):
        assert resumed[step] == pytest.approx(uninterrupted[step], abs=1e-6), step
    assert (run_dir / "final" / "adapter").is_dir()
