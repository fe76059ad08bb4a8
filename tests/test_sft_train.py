"""The SFT stage on the tiny random model: it learns, LoRA touches only adapters, adapters reload exactly,
a resumed run continues the same loss curve, and the trainer's labels are the assistant tokens only."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from pipelines.sft import main
from rlhf.stages import STAGES
from rlhf.core import lifecycle
from rlhf.core.checkpoints import write_manifest
from rlhf.core.config import ConfigError, RunConfig, load_config
from rlhf.sft.config import SFTStageConfig
from rlhf.sft.data import encode_records, to_dataset, training_mixture
from rlhf.sft.trainer import (MetricsLoggerCallback, build_trainer, hf_logs_to_metrics, latest_checkpoint,
                              PREFIX, peft_config, planned_steps, save_final, train_device)
from rlhf.core.runtime import use_bf16
from rlhf.core.tracking import MetricsLogger, read_metrics

cli = STAGES["sft"].cli

TINY = Path(__file__).resolve().parents[1] / "pipelines" / "configs" / "sft_tiny.yaml"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_cfg(out: Path, *flags: str) -> SFTStageConfig:
    cfg, _ = load_config(SFTStageConfig, ["--config", str(TINY), "--run.output_dir", str(out),
                                          "--run.run_name", "test", "--forgetting.enabled", "false", *flags])
    return cfg


def train_losses(run_dir: Path) -> dict[int, float]:
    """step -> loss/train; a later record of the same step (a resumed run) wins."""
    return {r["step"]: r["loss/train"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss/train" in r}


# ---------------------------------------------------------------- config and small pure pieces


def test_shipped_configs_load_and_typos_fail():
    full, _ = load_config(SFTStageConfig, [])
    assert full.model.name == "smollm2-135m-instruct" and full.lora.enabled
    assert [s.source for s in full.data.mixture] == ["dialogsum", "hh-rlhf-harmless"]
    tiny, _ = load_config(SFTStageConfig, ["--config", str(TINY)])
    assert tiny.model.name == "tiny-llama" and tiny.train.max_steps == 8
    over, _ = load_config(SFTStageConfig, ["--data.mixture", "[{source: truthfulqa, weight: 2}]"])
    assert over.data.mixture[0].source == "truthfulqa" and over.data.mixture[0].weight == 2.0
    with pytest.raises(ConfigError, match="lora.rank"):
        load_config(SFTStageConfig, ["--lora.rank", "4"])
    with pytest.raises(ConfigError, match="train.precision"):
        load_config(SFTStageConfig, ["--train.precision", "on"])  # one meaning everywhere: auto | bf16 | fp32
    assert cli(["--help"]) == 0 and cli(["--lora.rank", "4"]) == 2


def test_trainer_logs_are_renamed_into_our_namespaces():
    metrics = hf_logs_to_metrics({"loss": 2.0, "eval_loss": 1.0, "learning_rate": 1e-3, "grad_norm": 0.5,
                                  "total_flos": 9, "eval_model_preparation_time": 0.1})
    assert metrics["loss/train"] == 2.0 and metrics["eval/loss"] == 1.0 and metrics["train/lr"] == 1e-3
    assert metrics["eval/perplexity"] == pytest.approx(2.718281828)
    assert metrics["train/grad_norm"] == 0.5 and "train/total_flos" not in metrics


def test_precision_lora_layers_and_planned_steps():
    device = train_device(RunConfig())
    assert use_bf16("bf16", device) and not use_bf16("fp32", device)
    # lora.layers counts from the top when negative (the same LoraConfig as stage 3): [-1] of 2 layers = [1]
    assert peft_config(SFTStageConfig().lora, 2).layers_to_transform is None  # empty: every layer
    lora, _ = load_config(SFTStageConfig, ["--lora.layers", "[-1]"])
    assert peft_config(lora.lora, 2).layers_to_transform == [1] and peft_config(lora.lora, 2).lora_dropout == 0.05
    lora.lora.enabled = False
    assert peft_config(lora.lora, 2) is None
    cfg = SFTStageConfig()
    cfg.train.batch_size, cfg.train.grad_accum, cfg.train.epochs = 4, 2, 2.0
    assert planned_steps(40, cfg) == 10  # 10 batches an epoch, 5 steps an epoch, 2 epochs
    cfg.train.max_steps = 7
    assert planned_steps(40, cfg) == 7


def resolve_run(run, stage, resume):
    return lifecycle.resolve_run(run, stage, resume, PREFIX)


def test_resolve_run_finds_the_newest_checkpoint(tmp_path, run_cfg):
    run_cfg.output_dir, run_cfg.run_name = str(tmp_path), ""
    with pytest.raises(ConfigError, match="no sft run"):
        resolve_run(run_cfg, "sft", True)
    for n in (5, 10, 15, 20):
        folder = tmp_path / "sft-1" / "checkpoints" / f"checkpoint-{n}"
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(bytes(range(n)))
        if n < 20:  # checkpoint-20 was cut short: its manifest was never written
            write_manifest(folder)
    (tmp_path / "sft-2" / "checkpoints" / "checkpoint-30").mkdir(parents=True)  # newer run, nothing complete
    assert resolve_run(run_cfg, "sft", True) == (tmp_path / "sft-1", tmp_path / "sft-1/checkpoints/checkpoint-15")
    picked = tmp_path / "sft-1/checkpoints/checkpoint-10"
    assert resolve_run(run_cfg, "sft", str(picked)) == (tmp_path / "sft-1", picked)
    with pytest.raises(ConfigError, match="checkpoint-20: no manifest.json"):
        resolve_run(run_cfg, "sft", str(tmp_path / "sft-1/checkpoints/checkpoint-20"))
    assert latest_checkpoint(tmp_path / "nowhere") is None


# ---------------------------------------------------------------- training


def test_stage_learns_and_writes_a_full_model(tmp_path):
    """Full fine-tuning through the stage script: training and dev loss fall, final/ is a loadable model."""
    cfg = tiny_cfg(tmp_path, "--lora.enabled", "false", "--train.learning_rate", "0.01",
                   "--forgetting.enabled", "true", "--forgetting.n", "3")
    run_dir = main(cfg)
    losses = train_losses(run_dir)
    assert len(losses) == cfg.train.max_steps
    first, last = losses[1], losses[cfg.train.max_steps]
    assert last < first - 0.5, losses
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["eval/loss_after"] < summary["eval/loss_before"] - 0.3
    assert summary["eval/perplexity_after"] < summary["eval/perplexity_before"]
    assert summary["forgetting/delta"] == pytest.approx(summary["forgetting/sft_acc"] - summary["forgetting/base_acc"])
    assert (run_dir / "final" / "config.json").is_file() and not (run_dir / "final" / "adapter_config.json").exists()
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == cfg.data.samples and all("response" in s for s in samples)


@pytest.fixture(scope="module")
def lora_trained(tiny_llama_path, tmp_path_factory):
    """A LoRA trainer trained in-process, with a snapshot of the weights it started from."""
    from rlhf.models.zoo import load_causal_lm, load_tokenizer

    run_dir = tmp_path_factory.mktemp("lora")
    cfg = tiny_cfg(run_dir, "--lora.dropout", "0.0")
    tokenizer, model = load_tokenizer(cfg.model.name), load_causal_lm(cfg.model.name)
    start = {name: p.detach().clone() for name, p in model.named_parameters()}
    encoded, _ = encode_records(tokenizer, training_mixture(cfg.data, cfg.run.seed), cfg.train.max_length)
    tracker = MetricsLoggerCallback(MetricsLogger(run_dir, cfg.run, "sft", enabled=False))
    trainer = build_trainer(cfg, model, tokenizer, to_dataset(encoded), None, run_dir, tracker, bf16=False)
    trainer.train()
    return SimpleNamespace(cfg=cfg, trainer=trainer, tokenizer=tokenizer, start=start, run_dir=run_dir,
                           encoded=encoded)


def test_lora_changes_only_adapter_weights(lora_trained):
    model = lora_trained.trainer.model
    adapters, frozen = 0, 0
    for name, param in model.named_parameters():
        if "lora_" in name:
            adapters += 1
            assert param.requires_grad
            if "lora_B" in name:  # B starts at zero: a trained adapter has moved it
                assert param.abs().max() > 0, name
        else:
            frozen += 1
            base_name = name.removeprefix("base_model.model.").replace(".base_layer", "")
            assert not param.requires_grad and torch.equal(param, lora_trained.start[base_name]), name
    assert adapters > 0 and frozen == len(lora_trained.start)


def test_saved_adapter_reloads_to_identical_logits(lora_trained):
    from peft import PeftModel

    from rlhf.models.zoo import load_causal_lm

    trainer = lora_trained.trainer
    ids = torch.tensor([lora_trained.encoded[0].input_ids[:40]])  # (1, 40)
    trainer.model.eval()
    with torch.no_grad():
        expected = trainer.model(input_ids=ids).logits
    paths = save_final(trainer, lora_trained.tokenizer, lora_trained.run_dir, save_merged=False)
    assert (Path(paths["final"]) / "adapter_config.json").is_file()
    reloaded = PeftModel.from_pretrained(load_causal_lm(lora_trained.cfg.model.name), paths["final"]).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, expected)


def test_trainer_labels_are_the_assistant_tokens_only(lora_trained):
    """What the trainer actually trains on: labels == ids on assistant tokens (end-of-turn included), -100
    elsewhere, and padding (pad == EOS here) never learned."""
    trainer, encoded = lora_trained.trainer, lora_trained.encoded
    assert len(trainer.train_dataset) == len(encoded)
    by_ids = {tuple(e.input_ids): e.assistant_masks for e in encoded}
    rows = [trainer.train_dataset[i] for i in range(2)]
    batch = trainer.data_collator(rows)
    eos = lora_trained.tokenizer.eos_token_id
    for i, row in enumerate(rows):
        mask = by_ids[tuple(row["input_ids"])]
        n = len(row["input_ids"])
        labels = batch["labels"][i]
        expected = [t if bit else -100 for t, bit in zip(row["input_ids"], mask)]
        assert labels[:n].tolist() == expected
        assert (labels[n:] == -100).all() and (batch["attention_mask"][i, n:] == 0).all()
        learned = [t for t in labels[:n].tolist() if t != -100]
        assert learned[-1] == eos and 0 < len(learned) < n
    assert batch["input_ids"].shape[1] > min(len(r["input_ids"]) for r in rows)  # padding was exercised


def test_resume_reproduces_the_uninterrupted_loss_curve(tmp_path):
    """Run 8 steps (checkpoints at 4 and 8); drop everything after step 4 and --resume: steps 5-8 repeat
    exactly, so optimizer, scheduler, RNG (LoRA dropout) and data position all came back."""
    from peft import PeftModel

    from rlhf.models.zoo import load_causal_lm

    flags = ("--lora.dropout", "0.1", "--train.save_merged", "true", "--train.learning_rate", "0.02")
    run_dir = main(tiny_cfg(tmp_path, *flags))
    uninterrupted = train_losses(run_dir)
    assert sorted(uninterrupted) == list(range(1, 9))
    shutil.rmtree(run_dir / "checkpoints" / "checkpoint-8")
    shutil.rmtree(run_dir / "final")
    (run_dir / "summary.json").unlink()  # a run killed after step 4 never wrote one
    torch.manual_seed(12345)  # a different global RNG state: the checkpoint's must be restored
    assert main(tiny_cfg(tmp_path, *flags), resume=True) == run_dir
    resumed = train_losses(run_dir)  # later records of steps 5..8 override the first run's
    records = [r for r in read_metrics(run_dir / "metrics.jsonl") if "loss/train" in r]
    assert [r["step"] for r in records] == list(range(1, 9))  # the redone steps 5-8 are in the file once
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["eval/loss_before"] == next(r["eval/loss"] for r in read_metrics(run_dir / "metrics.jsonl")
                                               if r["step"] == 0 and "eval/loss" in r)  # from the first run
    for step in range(5, 9):
        assert resumed[step] == pytest.approx(uninterrupted[step], abs=1e-6), step
    # the merged export is the adapter folded in: same logits as base + adapter
    ids = torch.arange(3, 40).unsqueeze(0)  # (1, 37)
    with torch.no_grad():
        adapter = PeftModel.from_pretrained(load_causal_lm("tiny-llama"), run_dir / "final").eval()(input_ids=ids)
        merged = load_causal_lm(str(run_dir / "final-merged")).eval()(input_ids=ids)
    torch.testing.assert_close(merged.logits, adapter.logits, atol=1e-5, rtol=1e-5)


class Killed(BaseException):
    """Stands in for SIGKILL: nothing after it runs, and the files written so far stay as they are."""


def test_resume_falls_back_past_a_checkpoint_cut_short_or_corrupted(tmp_path, monkeypatch, capsys):
    """Killed while writing checkpoint-8 (weights and optimizer written, RNG and trainer state not):
    --resume takes checkpoint-4, says so, and redoes steps 5-8 exactly. A checkpoint whose bytes changed
    after it was written (same size) is skipped the same way, naming the file."""
    from transformers import Trainer

    from rlhf.core.checkpoints import problem

    save_rng_state = Trainer._save_rng_state

    def killed_while_writing_8(self, output_dir):
        if self.state.global_step == 8:
            raise Killed
        return save_rng_state(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_rng_state", killed_while_writing_8)
    with pytest.raises(Killed):
        main(tiny_cfg(tmp_path))
    monkeypatch.undo()
    run_dir = tmp_path / "test"
    before = train_losses(run_dir)  # steps 1-8 were trained and logged before the kill
    assert sorted(before) == list(range(1, 9)) and (run_dir / "checkpoints/checkpoint-8/optimizer.pt").is_file()
    capsys.readouterr()
    main(tiny_cfg(tmp_path), resume=True)
    err = capsys.readouterr().err
    assert ("skipping checkpoint-8: " in err and "checkpoint-8: no manifest.json" in err
            and "; falling back to checkpoint-4" in err)
    assert train_losses(run_dir) == pytest.approx(before, abs=1e-6)
    assert (run_dir / "final").is_dir() and problem(run_dir / "checkpoints/checkpoint-8") is None

    optimizer = run_dir / "checkpoints/checkpoint-8/optimizer.pt"
    data = bytearray(optimizer.read_bytes())
    data[len(data) // 2] ^= 0xFF
    optimizer.write_bytes(bytes(data))
    main(tiny_cfg(tmp_path), resume=True)
    err = capsys.readouterr().err
    assert f"skipping checkpoint-8: {optimizer}: sha256 differs" in err and "falling back to checkpoint-4" in err
    assert train_losses(run_dir) == pytest.approx(before, abs=1e-6)
