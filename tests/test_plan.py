"""``rlhf plan``: hand-computed cases of the arithmetic, parameter counts against real (tiny / meta-device)
models, LoRA counts against peft, saved activations against autograd, and one-line errors for bad input."""
from __future__ import annotations

import dataclasses

import pytest

from rlhf import plan
from rlhf.core.config import ConfigError, from_dict
from rlhf.models.lora import LoraConfig


def cfg_of(**sections) -> plan.PlanConfig:
    """A PlanConfig from nested mappings, as the YAML/CLI layer builds it (strict keys)."""
    return from_dict(plan.PlanConfig, sections)


SMOLLM2 = plan.Shape("decoder", layers=30, hidden=576, heads=9, kv_heads=3, head_dim=64, intermediate=1536,
                     vocab=49152, tied=True)
LLAMA3_8B = plan.Shape("decoder", layers=32, hidden=4096, heads=32, kv_heads=8, head_dim=128, intermediate=14336,
                       vocab=128256, tied=False)


# ---------------------------------------------------------------- hand-computed cases


def test_seed_rule_full_fp32_adam_is_16_bytes_per_parameter_before_activations():
    """The seed's rule: 4 bytes of weights + 4 of gradients + 8 of Adam moments per parameter (+ activations)."""
    cfg = cfg_of(model={"layers": 30, "hidden": 576}, train={"micro_batch": 1, "seq_len": 1})
    parts = {p.name: p.bytes for p in plan.memory_plan(SMOLLM2, cfg).parts}
    n = plan.total_params(SMOLLM2)
    assert (parts["weights"], parts["gradients"], parts["optimizer"]) == (4 * n, 4 * n, 8 * n)


def test_seed_rule_24_bytes_per_parameter_with_activations():
    """With its ~8 bytes of activations per parameter (the seed's rule of thumb), 24 in all: SmolLM2 at one
    512-token sequence lands there (activations + logit tiles / parameters ~8 bytes, within a factor 1.5)."""
    cfg = cfg_of(model={"layers": 30, "hidden": 576}, train={"micro_batch": 1, "seq_len": 512}, runtime_gb=0)
    mem = plan.memory_plan(SMOLLM2, cfg)
    per_param = mem.total / plan.total_params(SMOLLM2)
    assert 16 + 8 / 1.5 <= per_param <= 16 + 8 * 1.5


def test_mixed_precision_adam_is_zeros_16_bytes_per_parameter():
    """ZeRO (Rajbhandari et al. 2020): bf16 weights and gradients (2 + 2) + fp32 master, m, v (12) = 16."""
    cfg = cfg_of(model={"layers": 30, "hidden": 576}, train={"weights_dtype": "bfloat16", "precision": "bf16"})
    parts = {p.name: p.bytes for p in plan.memory_plan(SMOLLM2, cfg).parts}
    n = plan.total_params(SMOLLM2)
    assert parts["weights"] + parts["gradients"] + parts["optimizer"] == 16 * n


def test_gpt3_compute_is_thousands_of_pf_days():
    """GPT-3 175B on 300B tokens: 6 N D = 3.15e23 FLOPs = ~3,640 PF-days (Brown et al. 2020 report 3,640)."""
    flops = plan.train_flops(175e9, 300e9)
    assert flops == pytest.approx(3.15e23)
    assert plan.pf_days(flops) == pytest.approx(3.15e23 / 8.64e19)
    assert 3600 < plan.pf_days(flops) < 3700


def test_chinchilla_is_20_tokens_per_parameter():
    """Chinchilla itself: 70B parameters, 1.4T tokens."""
    assert plan.chinchilla_tokens(70e9) == pytest.approx(1.4e12)


def test_kv_cache_hand_computed():
    # 2 (k, v) x 30 layers x 8 rollouts x 288 tokens x 3 kv heads x 64 dims x 4 bytes
    assert plan.kv_cache_bytes(SMOLLM2, 8, 288, 4) == 2 * 30 * 8 * 288 * 3 * 64 * 4


def test_sharding_divisors():
    table = {s: tuple(plan.shard_divisor(s, part, 8) for part in ("weights", "gradients", "optimizer"))
             for s in ("ddp", "zero1", "zero2", "zero3", "fsdp")}
    assert table == {"ddp": (1, 1, 1), "zero1": (1, 1, 8), "zero2": (1, 8, 8), "zero3": (8, 8, 8), "fsdp": (8, 8, 8)}
    with pytest.raises(ConfigError, match="parallel.strategy"):
        plan.shard_divisor("tensor", "weights", 8)


def test_fsdp_divides_the_static_parts():
    one = cfg_of(model={"layers": 30, "hidden": 576})
    eight = cfg_of(model={"layers": 30, "hidden": 576}, parallel={"strategy": "fsdp", "gpus": 8})
    a = {p.name: p.bytes for p in plan.memory_plan(SMOLLM2, one).parts}
    b = {p.name: p.bytes for p in plan.memory_plan(SMOLLM2, eight).parts}
    for part in ("weights", "gradients", "optimizer"):
        assert b[part] == a[part] / 8
    assert b["activations"] == a["activations"]  # data parallel: each device its own micro-batch


def test_ddp_over_several_devices_holds_a_second_copy_of_the_gradients_in_its_buckets():
    one = cfg_of(model={"layers": 30, "hidden": 576})
    two = cfg_of(model={"layers": 30, "hidden": 576}, parallel={"strategy": "ddp", "gpus": 2})
    a = {p.name: p.bytes for p in plan.memory_plan(SMOLLM2, one).parts}
    b = {p.name: p.bytes for p in plan.memory_plan(SMOLLM2, two).parts}
    assert "ddp buckets" not in a and b["ddp buckets"] == b["gradients"] == a["gradients"]


def test_lora_flops_are_two_thirds_of_full_training():
    """Full: forward 2N + backward 4N per token; LoRA on every block: forward 2N + activation gradients 2N."""
    full = cfg_of(model={"layers": 30, "hidden": 576})
    lora = cfg_of(model={"layers": 30, "hidden": 576}, lora={"enabled": True})
    assert plan.step_flops(SMOLLM2, lora) == pytest.approx(plan.step_flops(SMOLLM2, full) * 2 / 3)


def test_step_flops_is_6_n_tokens_when_attention_is_negligible():
    cfg = cfg_of(model={"layers": 30, "hidden": 576}, train={"seq_len": 1, "micro_batch": 1})
    n = 30 * sum(i * o for _, i, o in SMOLLM2.linears()) + SMOLLM2.vocab * SMOLLM2.hidden  # blocks + LM head
    assert plan.step_flops(SMOLLM2, cfg) == pytest.approx(6 * n, rel=1e-3)


def test_lora_top_layers_store_only_their_activations():
    full = cfg_of(model={"layers": 30, "hidden": 576}, lora={"enabled": True})
    top8 = cfg_of(model={"layers": 30, "hidden": 576}, lora={"enabled": True, "layers": list(range(-8, 0))})
    assert plan.activation_bytes(SMOLLM2, 1024, 512, top8) == pytest.approx(
        plan.activation_bytes(SMOLLM2, 1024, 512, full) * 8 / 30)


def test_gradient_checkpointing_keeps_inputs_and_one_layer():
    cfg = cfg_of(model={"layers": 30, "hidden": 576}, train={"gradient_checkpointing": True})
    tokens = 2048
    one_layer = plan.decoder_layer_elements(SMOLLM2, 512) * tokens * 4
    assert plan.activation_bytes(SMOLLM2, tokens, 512, cfg) == 30 * tokens * 576 * 4 + one_layer


def test_gradients_overlap_activations_only_when_accumulating():
    """zero_grad(set_to_none=True): a step's gradients appear as the backward frees the activations; accumulated
    micro-batches keep them alive through the next forward."""
    phases = {}
    for accum in (1, 4):
        cfg = cfg_of(model={"layers": 30, "hidden": 576}, train={"grad_accum": accum})
        mem = plan.memory_plan(SMOLLM2, cfg)
        phases[accum] = {p.name: p.phase for p in mem.parts}["gradients"]
    assert phases == {1: "step", 4: "update"}
    mem = plan.memory_plan(SMOLLM2, cfg_of(model={"layers": 30, "hidden": 576}, train={"grad_accum": 4}))
    assert mem.total == pytest.approx(sum(p.bytes for p in mem.parts if p.phase in ("always", "update")))


def test_reward_lora_saves_a_merged_copy():
    cfg = cfg_of(model={"layers": 30, "hidden": 576}, stage="reward", lora={"enabled": True})
    parts = {p.name: p for p in plan.memory_plan(SMOLLM2, cfg).parts}
    assert parts["merged copy"].phase == "save" and parts["merged copy"].bytes == 4 * plan.total_params(SMOLLM2)
    assert parts["logits"].bytes == 0  # a score head, no LM head


def test_four_bit_base_weights():
    cfg = cfg_of(model={"layers": 32, "hidden": 4096}, lora={"enabled": True},
                 train={"weights_dtype": "bfloat16", "quantization": "4bit"})
    q = plan.quantized_params(LLAMA3_8B)
    rest = plan.total_params(LLAMA3_8B) - q
    assert plan.weight_bytes(LLAMA3_8B, cfg) == pytest.approx(q * (0.5 + 1 / 64 + 4 / 16384) + rest * 2)


def test_8b_ppo_lora_on_24gb_needs_a_4bit_base():
    """The issue's example: 8B PPO with LoRA (bf16, a reward model of the policy's size) on one 24 GB GPU."""
    cfg = cfg_of(model={"layers": 32, "hidden": 4096}, stage="ppo", lora={"enabled": True},
                 train={"weights_dtype": "bfloat16", "precision": "bf16", "micro_batch": 4},
                 ppo={"prompt_tokens": 512, "new_tokens": 256, "rollouts": 16}, device_memory_gb=24, runtime_gb=0.5)
    mem = plan.memory_plan(LLAMA3_8B, cfg, LLAMA3_8B)
    assert mem.total > 24 * plan.GIB  # two 16 GB models do not fit
    hints = plan.what_fits(LLAMA3_8B, cfg, LLAMA3_8B, 24 * plan.GIB)
    assert hints and all("4-bit" in h or "FSDP" in h for h in hints)


def test_hints_are_minimal_sets():
    cfg = cfg_of(model={"layers": 30, "hidden": 576}, train={"seq_len": 2048, "micro_batch": 16}, runtime_gb=0)
    budget = 4 * plan.GIB
    for hint in plan.what_fits(SMOLLM2, cfg, None, budget):
        if "FSDP" in hint:
            continue
        labels = hint.split(" + ")
        changes = dict(plan._changes(cfg))
        assert plan.memory_plan(SMOLLM2, plan._apply(cfg, [changes[x] for x in labels])).total <= budget
        for smaller in labels:  # dropping any one change no longer fits
            rest = [changes[x] for x in labels if x != smaller]
            assert plan.memory_plan(SMOLLM2, plan._apply(cfg, rest)).total > budget


def test_shape_from_params_recovers_the_mlp_width():
    n = plan.total_params(LLAMA3_8B)
    section = plan.ModelSection(params=n, layers=32, hidden=4096, heads=32, kv_heads=8, vocab=128256)
    assert plan.shape_from_section(section).intermediate == 14336


# ---------------------------------------------------------------- against real models


@pytest.mark.parametrize("shape_kwargs", [
    dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
         vocab_size=49152, tie_word_embeddings=True),  # SmolLM2-135M: 134,515,008
    dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
         num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False),  # Llama-3-8B: 8,030,261,248
])
def test_parameter_count_equals_transformers(shape_kwargs):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**shape_kwargs)
    with torch.device("meta"):  # shapes only, no memory
        model = LlamaForCausalLM(config)
    assert plan.total_params(plan.shape_from_hf(config)) == sum(p.numel() for p in model.parameters())


def test_parameter_count_tiny_models(tiny_llama_path, tiny_bert_path):
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    llama = AutoModelForCausalLM.from_pretrained(tiny_llama_path)
    bert = AutoModel.from_pretrained(tiny_bert_path)
    assert plan.total_params(plan.shape_from_hf(AutoConfig.from_pretrained(tiny_llama_path))) == \
        sum(p.numel() for p in llama.parameters())
    assert plan.total_params(plan.shape_from_hf(AutoConfig.from_pretrained(tiny_bert_path))) == \
        sum(p.numel() for p in bert.parameters())


@pytest.mark.parametrize("lora", [
    LoraConfig(r=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], layers=[-1]),
    LoraConfig(r=4, target_modules=["all-linear"]),
    LoraConfig(r=16, target_modules=[]),  # peft's default for llama
])
def test_lora_params_equal_peft(tiny_llama_path, lora):
    from transformers import AutoModelForCausalLM

    from rlhf.models.lora import add_lora

    model = add_lora(AutoModelForCausalLM.from_pretrained(tiny_llama_path), lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert plan.lora_params(plan.shape_from_hf(model.config), lora) == trainable


def test_lora_params_equal_peft_on_bert(tiny_bert_path):
    from transformers import AutoModel

    from rlhf.models.lora import add_lora

    lora = LoraConfig(r=8, target_modules=[])  # peft's default for bert: query, value
    model = add_lora(AutoModel.from_pretrained(tiny_bert_path), lora, task_type=None)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert plan.lora_params(plan.shape_from_hf(model.config), lora) == trainable


def test_peft_default_targets_are_peft_s():
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as mapping

    assert plan.PEFT_DEFAULT_TARGETS == {"decoder": mapping["llama"], "encoder": mapping["bert"]}


def saved_activation_bytes(model, input_ids, attention_mask) -> int:
    """Bytes of the distinct tensors autograd saves in one forward (parameters excluded)."""
    import torch

    params = {p.data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            storages[ptr] = max(storages.get(ptr, 0), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state.sum()
    return sum(storages.values())


def test_decoder_layer_activations_match_autograd():
    """The plan's per-block count equals what autograd saves per extra block of a Llama (sdpa, fp32, padded
    batch), within 10 %: SmolLM2's widths, 2 vs 4 blocks, so embeddings and the final norm cancel."""
    import torch
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(0)
    batch, seq = 2, 64
    sizes = {}
    for layers in (2, 4):
        config = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=layers, num_attention_heads=9,
                             num_key_value_heads=3, vocab_size=512, attn_implementation="sdpa")
        model = LlamaModel(config).train()
        ids = torch.randint(0, 512, (batch, seq))
        mask = torch.ones(batch, seq, dtype=torch.long)
        mask[1, :16] = 0  # left padding, as the stages batch
        sizes[layers] = saved_activation_bytes(model, ids, mask)
    per_layer = (sizes[4] - sizes[2]) / 2
    shape = plan.shape_from_hf(config)
    assert per_layer == pytest.approx(plan.decoder_layer_elements(shape, seq) * batch * seq * 4, rel=0.10)


# ---------------------------------------------------------------- the CLI and bad input


def run_cli(capsys, *argv):
    from rlhf.cli import main

    code = main(["plan", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_prints_parts_and_verdict(capsys):
    code, out, err = run_cli(capsys, "--model.layers", "32", "--model.hidden", "4096", "--model.kv_heads", "8",
                             "--model.heads", "32", "--model.vocab", "128256", "--model.intermediate", "14336",
                             "--stage", "ppo", "--lora.enabled", "true", "--train.weights_dtype", "bfloat16",
                             "--train.precision", "bf16", "--device_memory_gb", "24")
    assert code == 0, err
    for part in ("weights", "gradients", "optimizer", "activations", "logits", "kv cache", "reward model",
                 "peak per device", "PF-days", "Chinchilla"):
        assert part in out
    assert "fits 24.0 GiB per device: NO" in out and "would fit with:" in out


def test_help_lists_every_key_without_a_model(capsys):
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0
    for key in ("--model.name", "--train.seq_len", "--parallel.strategy", "--ppo.new_tokens", "--device_memory_gb"):
        assert key in out


@pytest.mark.parametrize("argv, key", [
    (["--model.layers", "-3", "--model.hidden", "64"], "model.layers"),
    (["--model.layers", "2", "--model.hidden", "64", "--train.seq_len", "-1"], "train.seq_len"),
    (["--model.layers", "2", "--model.hidden", "64", "--parallel.strategy", "tensor"], "parallel.strategy"),
    (["--model.name", "no-such-model-anywhere"], "model.name"),
    (["--model.layers", "2", "--model.hidden", "64", "--train.quantization", "4bit"], "train.quantization"),
    (["--model.layers", "2", "--model.hidden", "64", "--lora.enabled", "true", "--lora.layers", "[5]"], "lora.layers"),
    (["--model.layers", "2", "--model.hidden", "64", "--model.colour", "red"], "model.colour"),
    ([], "model.name"),
])
def test_bad_input_is_one_line_naming_the_key(capsys, argv, key):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and key in err, err


def test_replace_keeps_validation():
    """Hints build variants with dataclasses.replace: an impossible variant still fails loudly."""
    cfg = cfg_of(model={"layers": 2, "hidden": 64})
    with pytest.raises(ConfigError, match="train.quantization"):
        dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, quantization="4bit"))
