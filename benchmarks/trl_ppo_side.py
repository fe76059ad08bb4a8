"""TRL 1.12's PPOTrainer (``trl.experimental.ppo``) on the benchmark workload; run inside benchmarks/.venv-trl112.

    benchmarks/.venv-trl112/bin/python benchmarks/trl_ppo_side.py --workload W.json --out R.json

TRL in its best setting for this workload: LoRA through ``peft_config`` on the same layers as ours (so its
reference policy is the policy with the adapter disabled, no second copy, and autograd stops its backward
at the lowest adapted layer), the value model a separate SmolLM2 classifier
initialised from the reward model as TRL's examples do (PPOTrainer requires one), no sample generations,
no checkpoints. Precision: the workload's (``--precision`` of ppo_vs_trl.py, resolved once for both sides):
bf16 loads all four models (policy, reference = policy, value, reward) with bf16 weights and runs under bf16
autocast, as ours runs bf16 frozen weights; fp32 loads and computes everything in fp32. Memory: the same
oneDNN/ideep cache caps as ours (set in this process's environment by the orchestrator) and glibc
``malloc_trim`` at the same phase boundaries (after loading, after sampling, at each step's end). Nothing of
TRL's algorithm is changed: a callback times the steps and a wrapper around its ``batch_generation`` counts
the generated tokens.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (HeapTrimmer, MemoryTrace, StepClock, StepRecord, Workload, memory_policy,  # noqa: E402
                    param_dtypes, tokens_up_to_eos, write_side_result)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    wl = Workload.load(args.workload)
    memory = MemoryTrace()
    memory.mark("start")

    import torch

    torch.set_num_threads(wl.threads)
    torch.manual_seed(wl.seed)
    import peft
    import transformers
    import trl
    from datasets import Dataset
    from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer,
                              TrainerCallback)
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    from trl.experimental.ppo import ppo_trainer as trl_ppo

    # 1. tokenizer shared by policy, value and reward models. TRL builds every mask as `ids != pad_token_id`;
    #    SmolLM2's pad is its EOS (<|im_end|>), which also ends every chat turn inside the prompts, so give
    #    TRL a pad that never occurs in text (<|endoftext|>, id 0) as its examples do with an added [PAD].
    tokenizer = AutoTokenizer.from_pretrained(wl.policy_path, padding_side="left")
    tokenizer.pad_token = "<|endoftext|>"
    eos_id = tokenizer.eos_token_id

    # 2. models: policy (LoRA added by the trainer), reward model, value model (a separate full model), all in
    #    the workload's precision (the reference is the policy with its adapter disabled)
    use_bf16 = wl.precision == "bf16"
    dtype = torch.bfloat16 if use_bf16 else torch.float32
    policy = AutoModelForCausalLM.from_pretrained(wl.policy_path, dtype=dtype)
    reward_model = AutoModelForSequenceClassification.from_pretrained(wl.reward_path, num_labels=1, dtype=dtype)
    value_model = AutoModelForSequenceClassification.from_pretrained(wl.reward_path, num_labels=1, dtype=dtype)
    for model in (policy, reward_model, value_model):
        model.config.pad_token_id = tokenizer.pad_token_id
    depth = policy.config.num_hidden_layers
    layers = sorted({i + depth if i < 0 else i for i in wl.lora_layers}) or None  # the same layers as ours
    peft_config = peft.LoraConfig(r=wl.lora_r, lora_alpha=wl.lora_alpha, lora_dropout=0.0,
                                  target_modules=wl.lora_target_modules, task_type="CAUSAL_LM",
                                  layers_to_transform=layers)

    # 3. prompts, tokenised once (the chat template is already applied)
    dataset = Dataset.from_dict({"input_ids": [tokenizer(p, add_special_tokens=False)["input_ids"]
                                               for p in wl.chat_prompts]})

    # 4. precision. PPOConfig(bf16=True), its default, no longer reaches PPOTrainer's own Accelerator() with
    #    transformers 5 (TrainingArguments stopped exporting ACCELERATE_MIXED_PRECISION), so set both.
    os.environ["ACCELERATE_MIXED_PRECISION"] = "bf16" if use_bf16 else "no"

    # 5. batch 8 = per_device_train_batch_size; mini-batch 4 = 8 / num_mini_batches; one optimizer step per
    #    mini-batch (gradient_accumulation_steps=1). total_episodes = 64 prompts -> 8 PPO steps.
    out_dir = tempfile.mkdtemp(prefix="trl-ppo-bench-")
    config = PPOConfig(
        output_dir=out_dir, per_device_train_batch_size=wl.batch_size, gradient_accumulation_steps=1,
        num_mini_batches=wl.batch_size // wl.mini_batch_size, num_ppo_epochs=wl.ppo_epochs,
        total_episodes=len(wl.prompts), local_rollout_forward_batch_size=wl.batch_size,
        response_length=wl.max_new_tokens, temperature=wl.temperature, stop_token="eos",
        learning_rate=wl.learning_rate, seed=wl.seed, bf16=use_bf16, gradient_checkpointing=False,
        num_sample_generations=0, save_strategy="no", report_to=[], logging_steps=1, disable_tqdm=True,
        use_cpu=True, dataloader_num_workers=0,
    )

    # 6. instruments: step wall time (callback), generation time and generated tokens (wrapper)
    clock, steps, generation = StepClock(), [], {"tokens": 0, "seconds": 0.0}
    heap = HeapTrimmer()
    original_batch_generation = trl_ppo.batch_generation

    def counted_batch_generation(model, queries, *rest, **kwargs):
        start = time.perf_counter()
        query_responses, logits = original_batch_generation(model, queries, *rest, **kwargs)
        generation["seconds"] += time.perf_counter() - start
        generation["tokens"] += tokens_up_to_eos(query_responses[:, queries.shape[1]:].tolist(), eos_id)
        heap.trim()  # the decoding steps' freed heap, before the scoring forwards (as ours)
        return query_responses, logits

    trl_ppo.batch_generation = counted_batch_generation

    class StepTimer(TrainerCallback):
        def on_train_begin(self, *args, **kwargs):
            heap.trim()  # what loading left on the heap (as ours)
            memory.mark("models loaded")
            clock.start()

        def on_step_end(self, *args, **kwargs):
            heap.trim()  # the step's transients; inside the timed step, as ours
            lap = clock.lap()
            steps.append(StepRecord(seconds=lap.seconds, cpu_seconds=lap.cpu_seconds,
                                    foreign_cpu_seconds=lap.foreign_cpu_seconds,
                                    generated_tokens=generation["tokens"], generation_seconds=generation["seconds"]))
            generation.update(tokens=0, seconds=0.0)
            memory.mark(f"step {len(steps)}")
            print(f"[trl] step {len(steps)}: {lap.seconds:.2f} s (others used {lap.foreign_cpu_seconds / lap.seconds:.2f}"
                  f" cores), {steps[-1].generated_tokens} tokens", flush=True)

    trainer = PPOTrainer(args=config, processing_class=tokenizer, model=policy, ref_model=None,
                         reward_model=reward_model, train_dataset=dataset, value_model=value_model,
                         eval_dataset=dataset, peft_config=peft_config, callbacks=[StepTimer()])
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    print(f"[trl] trl {trl.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, "
          f"torch {torch.__version__}; mixed precision {trainer.accelerator.mixed_precision}; "
          f"trainable params {trainable:,}", flush=True)

    # 7. train: 8 PPO steps
    trainer.train()
    if len(steps) != wl.num_steps:
        raise RuntimeError(f"TRL ran {len(steps)} steps, expected {wl.num_steps}")
    write_side_result(args.out, "trl", steps, {
        "versions": {"trl": trl.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
                     "torch": torch.__version__},
        "mixed_precision": str(trainer.accelerator.mixed_precision),
        "precision": wl.precision, "compute_dtype": "bfloat16" if use_bf16 else "float32",
        "weights": {"policy+LoRA": param_dtypes(trainer.model.policy), "value": param_dtypes(trainer.model.value_model),
                    "reward": param_dtypes(trainer.reward_model)},
        "memory_policy": {**memory_policy("common.HeapTrimmer after loading, after each batch_generation, at the "
                                          "end of each step"), "malloc_trim_calls": heap.calls},
        "trainable_params": trainable,
        "models_in_memory": "policy+LoRA (reference = adapter disabled), value model (full, trainable), reward model",
        "memory_trace": memory.points,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
