"""The PPO model on a tiny random Llama: reference = adapters off, padding-safe log-probs, SFT start."""
from __future__ import annotations

import pytest
import torch

from rlhf.models.lora import LoraConfig as LoraSection
from rlhf.rl.config import ModelSection
from rlhf.models.logprobs import logprobs_from_logits, response_position_ids
from rlhf.models.policies import load_weights
from rlhf.rl.policy import build_actor_critic
from rlhf.rl.sampler import FastSampler, sampling_lm_head
from rlhf.models.zoo import load_causal_lm, load_tokenizer


def perturb_lora(model, scale: float = 0.5) -> None:
    """LoRA B starts at zero (policy == reference); give the adapters some effect."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, scale)


@pytest.fixture()
def actor_critic(tiny_llama_path):
    model = build_actor_critic(ModelSection(name=tiny_llama_path), LoraSection(r=4, alpha=8),
                               torch.float32)
    perturb_lora(model)
    return model.eval()


def batch(tokenizer, texts):
    tokenizer.padding_side = "left"
    return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)


def test_reference_logprobs_equal_the_base_model_with_adapters_off(actor_critic, tiny_llama_path):
    tokenizer = load_tokenizer(tiny_llama_path)
    enc = batch(tokenizer, ["What is the capital of France? Paris is", "Hello"])
    start = 4  # score every token from position 4 on
    ref_logits = actor_critic.reference_logits(enc["input_ids"], enc["attention_mask"], start)
    base = load_causal_lm(tiny_llama_path).eval()
    with torch.no_grad():
        base_logits = base(**enc, position_ids=response_position_ids(enc["attention_mask"])).logits[:, start - 1:-1]
    targets = enc["input_ids"][:, start:]
    torch.testing.assert_close(logprobs_from_logits(ref_logits, targets), logprobs_from_logits(base_logits, targets))
    with torch.no_grad():
        policy_logits, values = actor_critic(enc["input_ids"], enc["attention_mask"], start)
    assert values.shape == targets.shape
    assert not torch.allclose(policy_logits, ref_logits, atol=1e-3)  # the adapters are on outside the context
    # and the adapters are back on after the reference forward
    with torch.no_grad():
        again, _ = actor_critic(enc["input_ids"], enc["attention_mask"], start)
    torch.testing.assert_close(again, policy_logits)


def test_left_padding_does_not_change_logprobs(actor_critic, tiny_llama_path):
    tokenizer = load_tokenizer(tiny_llama_path)
    texts = ["A much longer prompt that needs no padding at all, really", "Short one"]
    suffix = " and then the answer"
    enc = batch(tokenizer, [t + suffix for t in texts])
    n_suffix = len(tokenizer(suffix, add_special_tokens=False)["input_ids"])
    start = enc["input_ids"].shape[1] - n_suffix
    with torch.no_grad():
        logits, values = actor_critic(enc["input_ids"], enc["attention_mask"], start)
    together = logprobs_from_logits(logits, enc["input_ids"][:, start:])
    for row, text in enumerate(texts):
        alone = batch(tokenizer, [text + suffix])
        alone_start = alone["input_ids"].shape[1] - n_suffix
        if alone["input_ids"][0, alone_start:].tolist() != enc["input_ids"][row, start:].tolist():
            pytest.skip("tokenisation of the suffix depends on the prefix")
        with torch.no_grad():
            single_logits, single_values = actor_critic(alone["input_ids"], alone["attention_mask"], alone_start)
        torch.testing.assert_close(together[row], logprobs_from_logits(single_logits, alone["input_ids"][:, alone_start:])[0],
                                   atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(values[row], single_values[0], atol=1e-4, rtol=1e-4)


def test_sft_adapter_is_merged_before_ppo_lora(tiny_llama_path, tmp_path):
    from peft import LoraConfig, get_peft_model

    base = load_causal_lm(tiny_llama_path)
    sft = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    perturb_lora(sft, 0.3)
    sft.save_pretrained(tmp_path / "sft")
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        expected = sft(input_ids=ids).logits
    for merged in (load_weights(tiny_llama_path, torch.float32, adapter=str(tmp_path / "sft")),  # base + adapter
                   load_weights(str(tmp_path / "sft"), torch.float32)):  # the adapter folder alone names its base
        with torch.no_grad():
            torch.testing.assert_close(merged(input_ids=ids).logits, expected, atol=1e-5, rtol=1e-5)
    model = build_actor_critic(ModelSection(name=tiny_llama_path, sft_adapter=str(tmp_path / "sft")),
                               LoraSection(r=4, alpha=8), torch.float32)
    # the reference of PPO is the SFT policy (SFT merged; PPO LoRA off)
    ref = model.reference_logits(ids, torch.ones_like(ids), 1)
    torch.testing.assert_close(ref, expected[:, :-1], atol=1e-5, rtol=1e-5)


def test_separate_critic_option(tiny_llama_path):
    model = build_actor_critic(ModelSection(name=tiny_llama_path, critic=tiny_llama_path),
                               LoraSection(r=4, alpha=8), torch.float32)
    assert model.critic is not None
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    logits, values = model(ids, torch.ones_like(ids), 2)
    assert logits.shape[:2] == values.shape == (1, 3)
    critic_trainable = [n for n, p in model.named_parameters() if p.requires_grad and n.startswith("critic.")]
    assert critic_trainable and all("lora_" in n for n in critic_trainable)


def test_sampling_pass_logprobs_and_values_equal_a_full_forward(actor_critic, tiny_llama_path):
    """The experience maker takes old log-probs and values from generate(); they must be the forward's."""
    from rlhf.models.generation import GenerationSettings
    from rlhf.rl.experience import ExperienceMaker
    from rlhf.rl.scorers import TokenCountScorer

    tokenizer = load_tokenizer(tiny_llama_path)
    with torch.no_grad():
        actor_critic.value_head.weight.normal_()
    settings = GenerationSettings(max_new_tokens=10, batch_size=3, temperature=0.7)
    prompts = ["What is 2 + 2?", "Tell me a long story about a dragon and a knight", "Hi"]
    makers = [ExperienceMaker(actor_critic, tokenizer, TokenCountScorer(tokenizer, 5), settings, reuse_sampling_pass=reuse)
              for reuse in (True, False)]
    torch.manual_seed(0)
    reused = makers[0].make(prompts)
    torch.manual_seed(0)
    recomputed = makers[1].make(prompts)
    assert torch.equal(reused.input_ids, recomputed.input_ids)
    torch.testing.assert_close(reused.logprobs, recomputed.logprobs, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(reused.values, recomputed.values, atol=1e-4, rtol=1e-4)
    assert reused.values.abs().sum() > 0 and (reused.logprobs < 0).any()


def test_merged_sampling_restores_weights_bit_for_bit(actor_critic, tiny_llama_path):
    from rlhf.models.generation import GenerationSettings

    tokenizer = load_tokenizer(tiny_llama_path)
    enc = batch(tokenizer, ["What is 2 + 2?", "Hi there"])
    before = {n: p.detach().clone() for n, p in actor_critic.named_parameters()}
    kwargs = GenerationSettings(max_new_tokens=8, do_sample=False).hf_kwargs(tokenizer)
    outputs = []
    for merge in (True, False):
        outputs.append(FastSampler(actor_critic, merge_lora=merge).sample(**enc, keep_logits=True, **kwargs))
    for name, param in actor_critic.named_parameters():
        assert torch.equal(before[name], param), name
    merged, plain = outputs
    assert torch.equal(merged.sequences, plain.sequences)
    torch.testing.assert_close(merged.logits, plain.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(merged.hidden, plain.hidden, atol=1e-4, rtol=1e-4)
    actor_critic.pack_sequences = False  # the base model's padded forward, so equality can be exact
    ref_after = actor_critic.reference_logits(enc["input_ids"], enc["attention_mask"], 2)
    base = load_causal_lm(tiny_llama_path).eval()
    with torch.no_grad():
        hidden = base.model(**enc, position_ids=response_position_ids(enc["attention_mask"])).last_hidden_state
        # The head on the same contiguous rows as PolicyModel's (another row count may round differently).
        base_logits = base.lm_head(hidden[:, 1:-1].contiguous())
    torch.testing.assert_close(ref_after, base_logits, atol=0, rtol=0)


# ---------------------------------------------------------------- adapters on the top layers: the frozen trunk


@pytest.fixture()
def top_layer_actor_critic(tiny_llama_path):
    """Adapters on the last layer only (of 2): layer 0 is the frozen trunk."""
    model = build_actor_critic(ModelSection(name=tiny_llama_path),
                               LoraSection(r=4, alpha=8, layers=[-1]), torch.float32)
    perturb_lora(model)
    with torch.no_grad():
        model.value_head.weight.normal_()
    return model.eval()


def test_lora_layers_count_from_the_top_and_leave_a_frozen_trunk(top_layer_actor_critic):
    lora_names = [n for n, _ in top_layer_actor_critic.named_parameters() if "lora_" in n]
    assert lora_names and all(".layers.1." in n for n in lora_names)
    assert top_layer_actor_critic.trunk_depth == 1


def test_resolve_layers_counts_negatives_from_the_top_and_refuses_missing_layers():
    from rlhf.models.lora import resolve_layers

    assert resolve_layers([-1, 0, -2], 30) == [0, 28, 29]
    assert resolve_layers(list(range(-8, 0)), 2) == [0, 1]  # "the last 8" of a 2-layer model: both
    with pytest.raises(ValueError, match="lora.layers.*outside 0..29"):
        resolve_layers([30], 30)


def test_trunk_reuse_can_be_switched_off_and_is_off_with_adapters_everywhere(tiny_llama_path):
    off = build_actor_critic(ModelSection(name=tiny_llama_path, reuse_trunk=False),
                             LoraSection(r=4, alpha=8, layers=[-1]), torch.float32)
    everywhere = build_actor_critic(ModelSection(name=tiny_llama_path),
                                    LoraSection(r=4, alpha=8), torch.float32)
    assert off.trunk_depth == 0 and everywhere.trunk_depth == 0


def test_rollouts_and_updates_from_the_trunk_equal_whole_model_forwards(top_layer_actor_critic, tiny_llama_path):
    """Reference log-probs, old log-probs, values and the update's logits and gradients are the same whether
    the layers below the adapters run again (trunk off, nothing from the sampling pass) or not."""
    from rlhf.models.generation import GenerationSettings
    from rlhf.rl.experience import ExperienceMaker
    from rlhf.rl.scorers import TokenCountScorer
    from rlhf.rl.trainer import trim_padding

    model = top_layer_actor_critic
    tokenizer = load_tokenizer(tiny_llama_path)
    settings = GenerationSettings(max_new_tokens=10, batch_size=3, temperature=0.7)
    prompts = ["What is 2 + 2?", "Tell me a long story about a dragon and a knight", "Hi"]
    scorer = TokenCountScorer(tokenizer, 5)
    torch.manual_seed(0)
    with_trunk = ExperienceMaker(model, tokenizer, scorer, settings, forward_batch_size=2).make(prompts)
    model.trunk_depth = 0
    torch.manual_seed(0)
    whole = ExperienceMaker(model, tokenizer, scorer, settings, reuse_sampling_pass=False,
                            forward_batch_size=2).make(prompts)
    assert whole.trunk_hidden is None
    assert torch.equal(with_trunk.input_ids, whole.input_ids)
    assert with_trunk.trunk_hidden.shape == (*with_trunk.input_ids.shape, model.config.hidden_size)
    assert (with_trunk.trunk_hidden[with_trunk.attention_mask == 0] == 0).all()
    for name in ("ref_logprobs", "logprobs", "values"):
        torch.testing.assert_close(getattr(with_trunk, name), getattr(whole, name), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(with_trunk.ref_logprobs, with_trunk.logprobs, atol=1e-3)  # adapters matter

    model.trunk_depth = 1
    part = trim_padding(with_trunk.rows(torch.tensor([0, 2])))
    grads = []
    for trunk in (part.trunk_hidden, None):
        model.zero_grad(set_to_none=True)
        logits, values = model(part.input_ids, part.attention_mask, part.response_start, trunk_hidden=trunk)
        (logprobs_from_logits(logits, part.responses_ids) * part.response_mask).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and any("lora_B" in n for n in grads[0])
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-4, rtol=1e-3)


# ---------------------------------------------------------------- packed rows


def test_packed_rows_lay_the_real_tokens_end_to_end():
    from rlhf.rl.packing import PackedRows

    mask = torch.tensor([[0, 1, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
    packed = PackedRows.from_mask(mask)
    assert packed.index.tolist() == [1, 2, 8, 9, 10, 11]
    assert packed.position_ids.tolist() == [[0, 1, 0, 1, 2, 3]]
    assert packed.cu_seqlens.tolist() == [0, 2, 6]  # the empty row has no span
    x = torch.arange(12.0).reshape(3, 4, 1)
    assert packed.pack(x).flatten().tolist() == [1, 2, 8, 9, 10, 11]
    assert torch.equal(packed.unpack(packed.pack(x)), x * mask.unsqueeze(-1))


def test_varlen_attention_keeps_each_row_to_itself(tiny_llama_path):
    """A packed forward of two texts gives each the hidden states it has alone."""
    from rlhf.rl.packing import PackedRows, use_varlen_attention

    model = load_causal_lm(tiny_llama_path).eval()
    assert use_varlen_attention(model)
    tokenizer = load_tokenizer(tiny_llama_path)
    enc = batch(tokenizer, ["What is the capital of France? Paris is", "Hello there"])
    packed = PackedRows.from_mask(enc["attention_mask"])
    with torch.no_grad():
        together = packed.unpack(model.model(input_ids=packed.pack(enc["input_ids"]), **packed.forward_kwargs(),
                                             use_cache=False).last_hidden_state)
        for row in range(2):
            real = enc["attention_mask"][row].bool()
            alone = model.model(input_ids=enc["input_ids"][row, real][None]).last_hidden_state[0]
            torch.testing.assert_close(together[row, real], alone, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("trunk", [False, True])
def test_packed_forwards_equal_padded_ones(top_layer_actor_critic, tiny_llama_path, trunk):
    model = top_layer_actor_critic
    tokenizer = load_tokenizer(tiny_llama_path)
    enc = batch(tokenizer, ["What is the capital of France? Paris is", "Hello", "A b c d"])
    start = enc["input_ids"].shape[1] - 2
    kept = None
    if trunk:
        captured = []
        with torch.no_grad(), model.keeping_trunk_output(captured):
            model.causal_lm.get_decoder()(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                          position_ids=response_position_ids(enc["attention_mask"]), use_cache=False)
        kept = captured[0] * enc["attention_mask"].unsqueeze(-1)
    outputs = []
    for pack in (False, True):
        model.pack_sequences = pack
        with torch.no_grad():
            outputs.append(model(enc["input_ids"], enc["attention_mask"], start, trunk_hidden=kept))
            outputs.append((model.reference_logits(enc["input_ids"], enc["attention_mask"], start, kept),))
    for padded, packed in zip(outputs[:2], outputs[2:]):
        for a, b in zip(padded, packed):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_packed_prefill_samples_what_plain_generate_samples(top_layer_actor_critic, tiny_llama_path):
    from rlhf.models.generation import GenerationSettings

    model = top_layer_actor_critic
    tokenizer = load_tokenizer(tiny_llama_path)
    enc = batch(tokenizer, ["What is 2 + 2?", "Tell me a long story about a dragon", "Hi"])
    kwargs = GenerationSettings(max_new_tokens=8, temperature=0.9).hf_kwargs(tokenizer)
    passes = []
    for pack in (False, True):
        model.pack_sequences = pack
        torch.manual_seed(3)
        passes.append(FastSampler(model).sample(**enc, keep_logits=True, **kwargs))
    plain, packed = passes
    assert torch.equal(plain.sequences, packed.sequences)
    for name in ("logits", "hidden"):
        torch.testing.assert_close(getattr(plain, name), getattr(packed, name), atol=1e-4, rtol=1e-4)
    real = torch.cat([enc["attention_mask"], torch.ones_like(plain.sequences[:, enc["input_ids"].shape[1]:])], 1)
    real = real.unsqueeze(-1).bool()
    torch.testing.assert_close(plain.trunk * real, packed.trunk * real, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("pack", [False, True])
def test_streamed_sampling_logprobs_equal_the_kept_logits(top_layer_actor_critic, tiny_llama_path, pack):
    """keep_logprobs reduces each step's logits as soon as the next step feeds its token back (memory):
    the log-probs, the tokens, the hidden states and the trunk must be those of the keep_logits pass."""
    from rlhf.models.generation import GenerationSettings
    from rlhf.models.sampling import PlainSampler

    model = top_layer_actor_critic
    model.pack_sequences = pack
    tokenizer = load_tokenizer(tiny_llama_path)
    enc = batch(tokenizer, ["What is 2 + 2?", "Tell me a long story about a dragon", "Hi"])
    kwargs = GenerationSettings(max_new_tokens=8, temperature=0.7).hf_kwargs(tokenizer)
    passes = []
    for keep in ({"keep_logits": True}, {"keep_logprobs": True}):
        torch.manual_seed(3)
        passes.append(FastSampler(model).sample(**enc, **keep, **kwargs))
    kept, streamed = passes
    assert streamed.logits is None and kept.logprobs is None
    assert torch.equal(kept.sequences, streamed.sequences)
    expected = logprobs_from_logits(kept.logits, kept.response_ids, 0.7)  # (B, R)
    assert streamed.logprobs.shape == expected.shape == kept.response_ids.shape
    torch.testing.assert_close(streamed.logprobs, expected, atol=1e-6, rtol=1e-6)
    assert torch.equal(kept.hidden, streamed.hidden) and torch.equal(kept.trunk, streamed.trunk)
    # The plain sampler gives the same log-probs for its own samples (same model, same seed, no merge).
    model.pack_sequences = False
    torch.manual_seed(3)
    plain = PlainSampler(model.policy).sample(**enc, keep_logprobs=True, **kwargs)
    torch.manual_seed(3)
    fast = FastSampler(model, merge_lora=False).sample(**enc, keep_logprobs=True, **kwargs)
    assert torch.equal(plain.sequences, fast.sequences)
    torch.testing.assert_close(plain.logprobs, fast.logprobs, atol=1e-4, rtol=1e-4)


def test_the_lm_head_runs_as_one_matmul_without_copying_its_weight(top_layer_actor_critic, tiny_llama_path):
    """A strided response slice made torch.matmul broadcast the (H, V) head weight into a (B, H, V) copy
    (0.45 GiB per 8-rollout forward on SmolLM2): the head's input must be contiguous."""
    from torch.profiler import ProfilerActivity, profile

    model = top_layer_actor_critic
    tokenizer = load_tokenizer(tiny_llama_path)
    enc = batch(tokenizer, ["What is 2 + 2?", "Tell me a long story about a dragon", "Hi"])
    vocab = model.config.vocab_size
    for pack in (False, True):
        model.pack_sequences = pack
        with torch.no_grad(), profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            logits, _ = model(enc["input_ids"], enc["attention_mask"], 4)
            model.reference_logits(enc["input_ids"], enc["attention_mask"], 4)
        assert logits.shape[-1] == vocab
        copies = [e.input_shapes for e in prof.events() if e.name in ("aten::clone", "aten::bmm")
                  and any(len(shape) == 3 and vocab in shape for shape in e.input_shapes)]
        assert not copies, copies


def test_sampling_lm_head_matches_the_plain_head_and_is_restored(actor_critic):
    head = actor_critic.causal_lm.get_output_embeddings()
    x = torch.randn(3, 2, head.in_features)
    expected = torch.nn.functional.linear(x, head.weight)
    with torch.no_grad(), sampling_lm_head(head):
        torch.testing.assert_close(head(x), expected, atol=1e-5, rtol=1e-4)
    assert "forward" not in head.__dict__  # the class's own forward again
