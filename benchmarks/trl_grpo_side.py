"""TRL 1.16's GRPOTrainer on the benchmark workload; run inside benchmarks/.venv-trl116 (never imports our package).

    benchmarks/.venv-trl116/bin/python benchmarks/trl_grpo_side.py --workload W.json --out R.json

TRL in its fastest sensible setting on a CPU: ``use_cpu=True``, transformers ``generate()`` (no vLLM, no
continuous batching), one generation of all the step's rollouts (``generation_batch_size`` = rollouts per
optimizer step, so no old-log-prob forward: sampling and update are on-policy), no gradient checkpointing
(GRPOConfig's default is on; it trades time for memory), LoRA through ``peft_config`` on the same layers as ours
(reference = the adapter disabled, no second copy), no completion logging, no checkpoints. Precision: the
workload's (``--precision`` of rl_vs_trl.py, resolved once for both sides): bf16 loads the policy and the reward
model with bf16 weights (``model_init_kwargs``) and sets ``bf16=True``; fp32 is fp32 throughout. Memory: the same
oneDNN/ideep cache caps as ours (this process's environment, set by the orchestrator) and glibc ``malloc_trim``
at the same phase boundaries as our trainer (after loading, after sampling, after the reward, at each step's
end). Nothing of TRL's algorithm is changed: a callback times the optimizer steps; wrappers on the trainer
instance time its generation and reward calls and count tokens.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (HeapTrimmer, MemoryTrace, StepClock, StepRecord, Workload, memory_policy,  # noqa: E402
                    param_dtypes, write_side_result)


def grpo_batching(wl: Workload) -> dict[str, int]:
    """GRPOConfig's batch fields for one optimizer step per ``wl.mini_batch_size`` rollouts, and one generation
    of ``wl.rollouts_per_step`` rollouts per step (TRL samples a whole generation batch at once)."""
    micro = wl.micro_batch_size or wl.mini_batch_size
    if wl.mini_batch_size % micro or wl.rollouts_per_step != wl.mini_batch_size:
        raise ValueError(f"TRL's GRPO side needs mini_batch_size ({wl.mini_batch_size}) = rollouts per step "
                         f"({wl.rollouts_per_step}) and a multiple of micro_batch_size ({micro})")
    accumulation = wl.mini_batch_size // micro
    # steps_per_generation = gradient_accumulation_steps: one generation feeds exactly one optimizer step,
    # so TRL skips its old-log-prob forward (num_iterations=1).
    return {"per_device_train_batch_size": micro, "gradient_accumulation_steps": accumulation,
            "steps_per_generation": accumulation, "num_generations": wl.samples_per_prompt}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--fp32-weights", action="store_true",
                        help="load fp32 weights even with bf16 (then bf16 is autocast only): the setting compared")
    args = parser.parse_args(argv)
    wl = Workload.load(args.workload)
    memory = MemoryTrace()
    memory.mark("start")

    import torch

    torch.set_num_threads(wl.threads)
    import peft
    import transformers
    import trl
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    # 1. precision: the workload's, the same as ours (resolved once by the orchestrator)
    use_bf16 = wl.precision == "bf16"
    weights_dtype = "bfloat16" if use_bf16 and not args.fp32_weights else "float32"

    # 2. tokenizer: left padding for generation; pad = <|endoftext|> (never in text) as on the PPO side and in
    #    the reward model's own tokenizer (SmolLM2's pad is its EOS, which ends every chat turn)
    tokenizer = AutoTokenizer.from_pretrained(wl.policy_path, padding_side="left")
    tokenizer.pad_token = "<|endoftext|>"

    # 3. the same LoRA as ours: r, alpha, q/k/v/o, the same decoder layers
    depth = transformers.AutoConfig.from_pretrained(wl.policy_path).num_hidden_layers
    layers = sorted({i + depth if i < 0 else i for i in wl.lora_layers}) or None
    peft_config = peft.LoraConfig(r=wl.lora_r, lora_alpha=wl.lora_alpha, lora_dropout=0.0,
                                  target_modules=wl.lora_target_modules, task_type="CAUSAL_LM",
                                  layers_to_transform=layers)

    # 4. prompts: the chat-rendered text (a plain-text dataset, so TRL tokenises it as is), in order
    dataset = Dataset.from_dict({"prompt": wl.chat_prompts})

    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-grpo-bench-"), use_cpu=True, bf16=use_bf16,
        model_init_kwargs={"dtype": weights_dtype},  # the policy's and the reward model's weights
        **grpo_batching(wl), num_iterations=1, max_steps=wl.num_steps, shuffle_dataset=False,
        max_completion_length=wl.max_new_tokens, temperature=wl.temperature,
        beta=wl.kl_coef, learning_rate=wl.learning_rate, seed=wl.seed,
        gradient_checkpointing=False, use_vllm=False, log_completions=False,
        save_strategy="no", report_to=[], logging_steps=1, disable_tqdm=True, dataloader_num_workers=0,
    )

    # 5. instruments: step wall time (callback), generation and reward time, generated tokens (instance wrappers)
    clock, steps, phase = StepClock(), [], {"generate": 0.0, "reward": 0.0, "tokens": 0}
    phases = []
    heap = HeapTrimmer()

    class StepTimer(TrainerCallback):
        def on_train_begin(self, *args, **kwargs):
            heap.trim()  # what loading left on the heap (as ours)
            memory.mark("models loaded")
            clock.start()

        def on_step_end(self, *args, **kwargs):
            heap.trim()  # the update's transients; inside the timed step, as ours
            lap = clock.lap()
            steps.append(StepRecord(seconds=lap.seconds, cpu_seconds=lap.cpu_seconds,
                                    foreign_cpu_seconds=lap.foreign_cpu_seconds,
                                    generated_tokens=phase["tokens"], generation_seconds=phase["generate"]))
            phases.append({"generate": phase["generate"], "reward": phase["reward"],
                           "rest": lap.seconds - phase["generate"] - phase["reward"]})
            phase.update(generate=0.0, reward=0.0, tokens=0)
            memory.mark(f"step {len(steps)}")
            print(f"[trl] step {len(steps)}: {lap.seconds:.2f} s (others used {lap.foreign_cpu_seconds / lap.seconds:.2f}"
                  f" cores), {steps[-1].generated_tokens} tokens, phases "
                  + ", ".join(f"{k} {v:.2f}" for k, v in phases[-1].items()), flush=True)

    trainer = GRPOTrainer(model=wl.policy_path, reward_funcs=wl.reward_path, args=config, train_dataset=dataset,
                          processing_class=tokenizer, peft_config=peft_config, callbacks=[StepTimer()])

    def timed(name, fn, count_tokens=False):
        def wrapper(*a, **kw):
            start = time.perf_counter()
            result = fn(*a, **kw)
            heap.trim()  # between phases, as our trainer does (common.py: the memory policy both sides run under)
            phase[name] += time.perf_counter() - start
            if count_tokens:  # completion ids end at (and include) the first EOS, as common.tokens_up_to_eos counts
                phase["tokens"] += sum(len(ids) for ids in result[0])
            return result
        return wrapper

    trainer._generate_single_turn = timed("generate", trainer._generate_single_turn, count_tokens=True)
    trainer._calculate_rewards = timed("reward", trainer._calculate_rewards)
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    policy_dtype = str(next(trainer.model.parameters()).dtype).replace("torch.", "")
    print(f"[trl] trl {trl.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, "
          f"torch {torch.__version__}; weights {weights_dtype}, mixed precision {trainer.accelerator.mixed_precision}; "
          f"batching {grpo_batching(wl)}; trainable params {trainable:,}", flush=True)

    # 6. train: one optimizer step per generation of rollouts_per_step rollouts
    trainer.train()
    if len(steps) != wl.num_steps:
        raise RuntimeError(f"TRL ran {len(steps)} steps, expected {wl.num_steps}")
    write_side_result(args.out, "trl", steps, {
        "versions": {"trl": trl.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
                     "torch": torch.__version__},
        "weights_dtype": weights_dtype, "policy_param_dtype": policy_dtype,
        "precision": wl.precision, "compute_dtype": "bfloat16" if use_bf16 else "float32",
        "weights": {"policy+LoRA": param_dtypes(trainer.model),
                    "reward": param_dtypes(trainer.reward_funcs[0])},
        "memory_policy": {**memory_policy("common.HeapTrimmer after loading, after sampling, after the reward, at "
                                          "the end of each step"), "malloc_trim_calls": heap.calls},
        "mixed_precision": str(trainer.accelerator.mixed_precision), "trainable_params": trainable,
        "grpo_config": {k: getattr(config, k) for k in (*grpo_batching(wl), "generation_batch_size", "num_iterations",
                                                        "beta", "loss_type", "scale_rewards", "bf16",
                                                        "gradient_checkpointing", "use_vllm")},
        "phase_seconds": phases,
        "models_in_memory": "policy+LoRA (reference = adapter disabled), reward model",
        "memory_trace": memory.points,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
