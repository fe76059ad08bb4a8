"""rlhf.core.sharding on two CPU processes (torchrun, gloo) with a tiny in-process model: parameters really are
DTensor shards, sharded training equals one process on the same global batch, full_state_dict is the same whole
model on both ranks, gathered() lets ranks run different numbers of forwards, and a sharded checkpoint round
trips model and optimizer state."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from distributed_helpers import ROOT, load_ranks, worker_env

# argv: output folder. Each rank saves rank<R>.pt with what the test compares.
DRIVER = textwrap.dedent('''
    import copy, sys, torch, torch.distributed as dist
    from torch import nn
    from torch.distributed.tensor import DTensor
    from rlhf.core.sharding import (full_state_dict, gathered, is_sharded, load_full_state_dict, load_sharded,
                               no_sync, save_sharded, shard)

    out = sys.argv[1]
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)
        def forward(self, x):
            return x + torch.tanh(self.fc(x))

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(4, 8)
            self.layers = nn.ModuleList([Block(), Block()])
            self.frozen = nn.Linear(8, 8)
            self.frozen.requires_grad_(False)
            self.head = nn.Linear(8, 1)
        def forward(self, x):
            h = self.embed(x)
            for layer in self.layers:
                h = layer(h)
            return self.head(self.frozen(h)).sum(-1)  # not a view: FSDP hooks the output

    torch.manual_seed(0)
    reference = Tiny()                      # one process, whole batch
    model = copy.deepcopy(reference)
    if rank == 1:  # another init on another rank: shard() starts every rank from rank 0's weights
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
    shard(model, model.layers)
    sharded_names = [n for n, p in model.named_parameters() if isinstance(p, DTensor)]
    initial = full_state_dict(model)

    def adam(m):
        return torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    opt, ref_opt = adam(model), adam(reference)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 4, generator=g), torch.randn(8, generator=g)) for _ in range(3)]
    losses, ref_losses = [], []
    for i, (x, y) in enumerate(batches[:2]):
        share = slice(rank * 4, rank * 4 + 4)   # each rank its half of the global batch of 8
        if i == 0:
            loss = ((model(x[share]) - y[share]) ** 2).mean()
            loss.backward()                      # FSDP averages gradients over ranks = the global-batch mean
        else:                                    # the same half in two micro-batches, reduced once
            with no_sync(model):
                first = ((model(x[share][:2]) - y[share][:2]) ** 2).mean()
                (first / 2).backward()
            second = ((model(x[share][2:]) - y[share][2:]) ** 2).mean()
            (second / 2).backward()
            loss = (first + second).detach() / 2
        opt.step(); opt.zero_grad()
        both = [torch.zeros(()) for _ in range(world)]
        dist.all_gather(both, loss.detach())
        losses.append(torch.stack(both).mean().item())
        ref_loss = ((reference(x) - y) ** 2).mean()
        ref_loss.backward(); ref_opt.step(); ref_opt.zero_grad()
        ref_losses.append(ref_loss.item())

    # Different numbers of forwards per rank: per-block all-gathers would hang here.
    with torch.no_grad(), gathered(model):
        for _ in range(rank + 1):
            model(torch.randn(2, 4))
    still_sharded = is_sharded(model)

    save_sharded(f"{out}/ckpt", model, opt)
    saved = full_state_dict(model)
    x, y = batches[2]
    ((model(x[rank * 4:rank * 4 + 4]) - y[rank * 4:rank * 4 + 4]) ** 2).mean().backward()
    opt.step(); opt.zero_grad()
    after_step = full_state_dict(model)
    load_sharded(f"{out}/ckpt", model, opt)
    reloaded = full_state_dict(model)
    ((model(x[rank * 4:rank * 4 + 4]) - y[rank * 4:rank * 4 + 4]) ** 2).mean().backward()
    opt.step(); opt.zero_grad()
    replayed = full_state_dict(model)       # same step from the reloaded model AND optimizer (Adam moments)
    load_full_state_dict(model, {k: v for k, v in initial.items() if k.startswith("head.")}, strict=False)
    head_reset = full_state_dict(model)

    torch.save({"sharded_names": sharded_names, "initial": initial, "losses": losses, "ref_losses": ref_losses,
                "ref_params": {k: v.clone() for k, v in reference.state_dict().items()}, "trained": saved,
                "trainable": list(full_state_dict(model, trainable_only=True)), "still_sharded": still_sharded,
                "after_step": after_step, "reloaded": reloaded, "replayed": replayed,
                "head_reset": head_reset}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()
''')


@pytest.mark.distributed
def test_sharding_two_cpu_processes(tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(driver), str(tmp_path)], cwd=ROOT, env=worker_env(), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = load_ranks(tmp_path, 2)
    first = ranks[0]
    # Every parameter is a DTensor shard (blocks and root alike); the frozen one too.
    assert set(first["sharded_names"]) == {n for n in first["initial"]}
    assert first["still_sharded"]
    assert set(first["trainable"]) == {n for n in first["initial"] if not n.startswith("frozen.")}
    # fp32, the same global batch: sharded losses and weights equal one process (rtol 1e-5: only the order of
    # the gradient sum differs).
    for rank in ranks:
        assert rank["losses"] == pytest.approx(rank["ref_losses"], rel=1e-5)
        for name, tensor in rank["ref_params"].items():
            torch.testing.assert_close(rank["trained"][name], tensor, rtol=1e-5, atol=1e-6)
    # Both ranks hold the same whole model, bit for bit.
    for key in ("initial", "trained", "replayed"):
        for name, tensor in first[key].items():
            assert torch.equal(ranks[1][key][name], tensor), (key, name)
    # The checkpoint round trip: weights come back exactly, and the optimizer's state too (the step after the
    # reload is the step after the save).
    for name, tensor in first["trained"].items():
        assert torch.equal(first["reloaded"][name], tensor), name
        assert not torch.equal(first["after_step"][name], tensor) or name.startswith("frozen."), name
        torch.testing.assert_close(first["replayed"][name], first["after_step"][name], rtol=0, atol=0)
    # Whole tensors loaded into the sharded model: the part given changes, the rest stays.
    for rank in ranks:
        for name, tensor in rank["head_reset"].items():
            expected = rank["initial"][name] if name.startswith("head.") else rank["replayed"][name]
            assert torch.equal(tensor, expected), name


def test_transformer_blocks_are_found_through_wrappers_and_a_model_without_them_is_named():
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlhf.core.sharding import transformer_blocks

    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                         num_attention_heads=2, num_key_value_heads=1)
    model = LlamaForCausalLM(config)
    assert transformer_blocks(model) == list(model.model.layers)
    peft = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    assert transformer_blocks(peft) == list(model.model.layers)
    with pytest.raises(ValueError, match="Linear: no list of transformer layers"):
        transformer_blocks(torch.nn.Linear(2, 2))


def unwrappable_config(folder) -> str:
    """A causal LM (Blenderbot's: its decoder has 2 layers, config.num_hidden_layers counts the encoder's 1) with
    no list of num_hidden_layers blocks to shard; only its config is written (no weights)."""
    from transformers import BlenderbotConfig

    BlenderbotConfig(vocab_size=64, d_model=16, encoder_layers=1, decoder_layers=2, encoder_attention_heads=2,
                     decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32).save_pretrained(folder)
    return str(folder)


def test_rl_stage_refuses_a_model_fsdp_cannot_wrap_in_one_line_before_loading(tmp_path, monkeypatch, capsys,
                                                                                no_model_loads):
    from rlhf.stages import STAGES
    cli = STAGES["ppo"].cli

    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    model = unwrappable_config(tmp_path / "model")
    runs = tmp_path / "runs"
    assert cli(["--config", "pipelines/configs/ppo_tiny.yaml", "--model.name", model, "--run.output_dir", str(runs),
                "--run.wandb_mode", "disabled"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"error: model.name: {model}: FSDP cannot wrap it: ")
    assert err.endswith("no list of transformer layers (config.num_hidden_layers) to shard")
    assert not runs.exists()
    monkeypatch.delenv("ACCELERATE_USE_FSDP")  # without an FSDP launch nothing is checked here
    from rlhf.core.sharding import check_wrappable

    check_wrappable(model, "model.name")


@pytest.mark.parametrize("stage, config, key, more", [
    ("sft", "sft_tiny", "model.quantization", ["--lora.enabled", "true"]),
    ("reward", "reward_tiny", "model.quantization", ["--lora.enabled", "true"]),
    ("ppo", "ppo_tiny", "model.quantization", [])])
def test_a_quantized_base_under_fsdp_is_refused_by_every_stage_in_one_line_before_loading(
        tmp_path, monkeypatch, capsys, no_model_loads, stage, config, key, more):
    """One check (rlhf.core.sharding.check_wrappable), one wording, before any model loads or run folder exists."""
    from rlhf.stages import STAGES

    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    monkeypatch.setenv("WORLD_SIZE", "2")
    runs = tmp_path / "runs"
    cli = STAGES[stage].cli
    assert cli(["--config", f"pipelines/configs/{config}.yaml", f"--{key}", "4bit", *more, "--run.output_dir",
                str(runs), "--run.wandb_mode", "disabled"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {key}: FSDP cannot shard a 4bit (bitsandbytes) base; use a DDP launch for QLoRA"
    assert not runs.exists()
