"""The DialogSum benchmark's helpers (``benchmarks/sft_dialogsum.py``): each method's SFT config, seconds per
step from the logged records, the weights ``final/`` holds, and the method table. Fast: nothing trains."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import sft_dialogsum  # noqa: E402


def args():
    """The benchmark's settings that its SFT configs read (a small run on the tiny model)."""
    return argparse.Namespace(model="tiny-llama", dev_examples=4, lora_from_layer=0, steps=3, batch_size=2, lr=1e-3,
                              pt_lr=3e-2, full_lr=5e-5, virtual_tokens=7, max_length=256, max_new_tokens=8,
                              forgetting_n=0)


def test_each_method_is_a_valid_sft_config_with_the_same_budget(tmp_path):
    cfgs = {m: sft_dialogsum.sft_config(args(), tmp_path, m)[0] for m in sft_dialogsum.METHODS}
    assert {m: c.method for m, c in cfgs.items()} == {m: m for m in sft_dialogsum.METHODS}
    assert cfgs["prompt_tuning"].prompt_tuning.num_virtual_tokens == 7
    assert [c.train.learning_rate for c in cfgs.values()] == [1e-3, 3e-2, 5e-5]
    budget = {(c.train.max_steps, c.train.batch_size, c.train.max_length, str(c.data.mixture)) for c in cfgs.values()}
    assert len(budget) == 1  # only the method and its learning rate differ
    assert not any(c.forgetting.enabled for c in cfgs.values())
    assert len({c.run.run_name for c in cfgs.values()}) == 3
    with pytest.raises(ValueError, match="unknown method 'qlora'"):
        sft_dialogsum.method_flags("qlora", args())


def test_seconds_per_step_spans_the_logged_steps_only():
    records = [{"step": 0, "time": 0.0, "eval/loss": 2.0},  # the eval before training: not a step
               {"step": 1, "time": 100.0, "loss/train": 2.0},
               {"step": 2, "time": 103.0, "loss/train": 1.9},
               {"step": 5, "time": 112.0, "loss/train": 1.5},
               {"step": 5, "time": 150.0, "eval/loss": 1.4}]  # the eval after: not a step either
    assert sft_dialogsum.seconds_per_step(records) == pytest.approx(12.0 / 4)
    assert sft_dialogsum.seconds_per_step(records[:2]) is None


def test_saved_weights_counts_every_tensor_in_final(tmp_path):
    from safetensors.torch import save_file

    save_file({"prompt_embeddings": torch.zeros(20, 64)}, str(tmp_path / "adapter_model.safetensors"))
    save_file({"a": torch.zeros(3, 4), "b": torch.zeros(5)}, str(tmp_path / "model-2.safetensors"))
    (tmp_path / "tokenizer.json").write_text("{}")  # not weights
    params, size = sft_dialogsum.saved_weights(tmp_path)
    assert params == 20 * 64 + 12 + 5
    assert size == sum(p.stat().st_size for p in tmp_path.glob("*.safetensors"))


def test_method_table_has_a_row_per_method_and_baseline():
    rouge = {"rouge1": 30.0, "rouge2": 8.0, "rougeL": 25.0, "mean_words": 16.0}
    record = {"rouge": {"base_zero_shot": rouge, "sft_lora": rouge, "sft_full": rouge},
              "methods": {m: {"trainable_params": 1234567, "final_bytes": 3 * 2**20, "seconds_per_step": 4.5,
                              "eval_loss": {"before": 2.0, "after": 1.5}} for m in ("lora", "full")}}
    table = sft_dialogsum.method_table(record).splitlines()
    assert len(table) == 2 + 3
    assert table[3] == "| sft lora | 30.0 | 8.0 | 25.0 | 16.0 | 1,234,567 | 3.00 MiB | 4.5 | 2.000 -> 1.500 |"
