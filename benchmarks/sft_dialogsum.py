"""The course experiment: does a short SFT on DialogSum beat prompting the base model, and which PEFT method?

SmolLM2-135M-Instruct summarizes held-out DialogSum dialogues (the "test" split no stage trains on),
all greedy with the same budget of new tokens:

1. base model, zero-shot (the instruction and the dialogue);
2. base model, few-shot (``rlhf.data.prompts.few_shot``: short solved train dialogues as earlier chat turns);
3. the SFT stage's model (``pipelines/sft.py`` on DialogSum train dialogues), zero-shot, once per method in
   ``--methods``: ``lora`` (adapters on the upper layers), ``prompt_tuning`` (a soft prompt of
   ``--virtual-tokens``), ``full`` (every weight). Every method gets the same budget: the same steps, batch
   and examples; only the learning rate is the method's own (soft prompts need a large one, full
   fine-tuning a small one).

It reports ROUGE-1/2/L (F-measure, stemmed, ``rouge_score``), and per method the trainable parameters,
the size of ``final/`` on disk (adapter or full weights), seconds per optimisation step, the stage's dev
eval loss before and after training and its forgetting check. Everything goes to one JSON file and the
method table to a Markdown file beside it. Run it under the lock:

    flock /tmp/rlhf-cpu.lock python benchmarks/sft_dialogsum.py --out runs/bench/sft_dialogsum.json
    flock /tmp/rlhf-cpu.lock python benchmarks/sft_dialogsum.py --methods lora,prompt_tuning,full \
        --out runs/bench/sft_dialogsum_peft.json
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `python benchmarks/sft_dialogsum.py` must find pipelines/


def rouge(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measures (stemmed, rlhf.evaluation.metrics.rouge as evaluation scores them), in percent."""
    from rlhf.evaluation import metrics

    return {key: round(100 * value, 2) for key, value in metrics.rouge(predictions, references).items()}


def summarize(model, tokenizer, chats, settings, max_prompt_tokens: int) -> tuple[list[str], float]:
    from rlhf.models.generation import generate_chat

    start = time.perf_counter()
    outputs = generate_chat(model, tokenizer, chats, settings, max_prompt_tokens=max_prompt_tokens)
    return outputs, time.perf_counter() - start


METHODS = ("lora", "prompt_tuning", "full")


def method_flags(method: str, args) -> dict:
    """The SFT keys that make ``method``; everything else is shared by all methods."""
    if method == "lora":
        return {"lora.enabled": True, "lora.r": 16, "lora.alpha": 32, "lora.dropout": 0.05,
                "lora.layers": list(range(args.lora_from_layer, 30)),  # upper layers only: backprop stops there
                "train.learning_rate": args.lr}
    if method == "prompt_tuning":
        return {"lora.enabled": False, "prompt_tuning.enabled": True,
                "prompt_tuning.num_virtual_tokens": args.virtual_tokens,
                "prompt_tuning.init_text": "Summarize the dialogue in one or two sentences.",
                "train.learning_rate": args.pt_lr}
    if method == "full":
        return {"lora.enabled": False, "train.learning_rate": args.full_lr}
    raise ValueError(f"--methods: unknown method {method!r}; choose from {', '.join(METHODS)}")


def sft_config(args, out_dir: Path, method: str = "lora"):
    """The SFT stage's config: its defaults plus this experiment's settings (all recorded in the JSON)."""
    from rlhf.core.config import load_config
    from rlhf.sft.config import SFTStageConfig

    flags = {
        "model.name": args.model,
        "data.mixture": [{"source": "dialogsum", "weight": 1.0, "max_examples": 0}],
        "data.dev_max_examples": args.dev_examples,
        "data.samples": 2,
        **method_flags(method, args),
        "train.max_steps": args.steps, "train.batch_size": args.batch_size,
        "train.warmup_steps": 2, "train.max_length": args.max_length,
        "train.save_steps": args.steps, "train.precision": "auto",
        "generation.max_new_tokens": args.max_new_tokens, "generation.do_sample": False,
        "forgetting.enabled": args.forgetting_n > 0, "forgetting.n": max(args.forgetting_n, 1),
        "run.output_dir": str(out_dir), "run.run_name": f"sft-{method}", "run.wandb_mode": "offline",
        "run.log_every": 1,  # every step's time is logged: seconds per step come from these records
    }
    argv = [item for key, value in flags.items() for item in (f"--{key}", json.dumps(value))]
    cfg, _ = load_config(SFTStageConfig, argv)
    return cfg, flags


def seconds_per_step(records: list[dict]) -> float | None:
    """Mean wall seconds of one optimisation step, from the ``time`` of the first and last ``loss/train``
    records (step 1 is logged after its update, so the span covers steps 2..last; evals happen before step 1
    and after the last, never between)."""
    steps = sorted((r["step"], r["time"]) for r in records if "loss/train" in r and "time" in r)
    if len(steps) < 2:
        return None
    (first, t0), (last, t1) = steps[0], steps[-1]
    return (t1 - t0) / (last - first)


def saved_weights(final: Path) -> tuple[int, int]:
    """(parameters, bytes) of the weight files in ``final/``: the adapter (LoRA or soft prompt) or, for full
    fine-tuning, the whole model; so the parameter count is what the method trained."""
    from safetensors import safe_open

    params, size = 0, 0
    for path in sorted(final.glob("*.safetensors")):
        size += path.stat().st_size
        with safe_open(str(path), framework="pt") as f:
            params += sum(math.prod(f.get_slice(key).get_shape()) for key in f.keys())
    return params, size


def method_table(record: dict) -> str:
    """The Markdown table of the methods (and the base model's rows) from a result record."""
    rouge_, methods = record["rouge"], record["methods"]
    lines = ["| model | ROUGE-1 | ROUGE-2 | ROUGE-L | mean words | trainable params | final/ on disk | s / step "
             "| eval loss before -> after |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name in ("base_zero_shot", "base_few_shot"):
        if name in rouge_:
            r = rouge_[name]
            lines.append(f"| {name} | {r['rouge1']} | {r['rouge2']} | {r['rougeL']} | {r['mean_words']} | - | - | - | - |")
    for method, m in methods.items():
        r = rouge_[f"sft_{method}"]
        loss = m["eval_loss"]
        lines.append(f"| sft {method} | {r['rouge1']} | {r['rouge2']} | {r['rougeL']} | {r['mean_words']} "
                     f"| {m['trainable_params']:,} | {m['final_bytes'] / 2**20:.2f} MiB | {m['seconds_per_step']} "
                     f"| {loss['before']:.3f} -> {loss['after']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--methods", default="lora", help=f"comma-separated SFT methods: {', '.join(METHODS)}")
    parser.add_argument("--n", type=int, default=50, help="held-out test dialogues to summarize")
    parser.add_argument("--shots", type=int, default=2, help="examples in the few-shot prompt; 0: no few-shot row")
    parser.add_argument("--shot-max-chars", type=int, default=560, help="only prompts this short (chars) as shots")
    parser.add_argument("--steps", type=int, default=40, help="SFT optimisation steps (every method)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3, help="LoRA's learning rate")
    parser.add_argument("--pt-lr", type=float, default=3e-2, help="prompt tuning's learning rate")
    parser.add_argument("--full-lr", type=float, default=5e-5, help="full fine-tuning's learning rate")
    parser.add_argument("--lora-from-layer", type=int, default=18, help="LoRA on decoder layers [this, 30)")
    parser.add_argument("--virtual-tokens", type=int, default=20, help="prompt tuning's soft-prompt length")
    parser.add_argument("--max-length", type=int, default=512, help="longer train dialogues are dropped")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--dev-examples", type=int, default=24, help="dev dialogues for eval loss")
    parser.add_argument("--forgetting-n", type=int, default=30, help="TruthfulQA MC1 questions; 0: no check")
    parser.add_argument("--gen-batch-size", type=int, default=10)
    parser.add_argument("--out", default="runs/bench/sft_dialogsum.json")
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for method in methods:
        method_flags(method, args)  # an unknown method fails here, before any model loads

    import torch

    from pipelines.sft import main as run_sft
    from rlhf.models.generation import GenerationSettings
    from rlhf.models.policies import load_policy
    from rlhf.data.prompts import Shot, few_shot, pick_shots, zero_shot
    from rlhf.data.sources import dialogsum_items
    from rlhf.core.tracking import read_metrics
    from rlhf.models.zoo import load_causal_lm, load_tokenizer

    started = time.perf_counter()
    out_path = Path(args.out)
    out_dir = out_path.parent / (out_path.stem + "-runs")
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, do_sample=False, batch_size=args.gen_batch_size)

    # 1. held-out dialogues and few-shot examples (shots from train: never a test dialogue)
    test = dialogsum_items("test")[: args.n]
    references = [item.summary for item in test]
    zero_chats = [zero_shot(item.prompt) for item in test]

    # 2. the base model, zero- and few-shot
    tokenizer, base = load_tokenizer(args.model), load_causal_lm(args.model, dtype=torch.float32)
    results, outputs, seconds = {}, {}, {}
    outputs["base_zero_shot"], seconds["base_zero_shot"] = summarize(base, tokenizer, zero_chats, settings, 1024)
    if args.shots > 0:
        pool = [Shot(item.prompt, item.summary) for item in dialogsum_items("train")]
        shots = pick_shots(pool, args.shots, seed=0, max_prompt_chars=args.shot_max_chars)
        few_chats = [few_shot(item.prompt, shots) for item in test]
        outputs["base_few_shot"], seconds["base_few_shot"] = summarize(base, tokenizer, few_chats, settings, 2048)
    del base

    # 3. per method: the SFT stage on DialogSum train dialogues, then its final/ loaded as a policy, zero-shot
    stages = {}
    for method in methods:
        cfg, sft_flags = sft_config(args, out_dir, method)
        start = time.perf_counter()
        run_dir = run_sft(cfg)
        seconds[f"sft_stage_{method}"] = time.perf_counter() - start
        policy = load_policy(method, str(run_dir / "final"))
        name = f"sft_{method}"
        outputs[name], seconds[name] = summarize(policy.model, tokenizer, zero_chats, settings, 1024)
        del policy
        stage = json.loads((run_dir / "summary.json").read_text())
        params, size = saved_weights(run_dir / "final")
        step_s = seconds_per_step(read_metrics(run_dir / "metrics.jsonl"))
        stages[method] = {
            "trainable_params": params, "final_bytes": size,
            "seconds_per_step": round(step_s, 2) if step_s is not None else None,
            "eval_loss": {"before": stage.get("eval/loss_before"), "after": stage.get("eval/loss_after"),
                          "perplexity_before": stage.get("eval/perplexity_before"),
                          "perplexity_after": stage.get("eval/perplexity_after")},
            "forgetting": {k.split("/")[1]: v for k, v in stage.items() if k.startswith("forgetting/")},
            "run_dir": str(run_dir), "overrides": sft_flags, "steps": stage.get("train/steps"),
            "train_examples": stage.get("data/train_examples")}

    # 4. scores and the record
    for name, preds in outputs.items():
        results[name] = rouge(preds, references)
        results[name]["mean_words"] = round(statistics.mean(len(p.split()) for p in preds), 1)
    for method, m in stages.items():
        m["beats_zero_shot_rougeL"] = results[f"sft_{method}"]["rougeL"] > results["base_zero_shot"]["rougeL"]
    record = {
        "command": "flock /tmp/rlhf-cpu.lock python benchmarks/sft_dialogsum.py "
                   + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)),
        "model": args.model, "n_test_dialogues": len(test), "shots": args.shots, "decoding": "greedy",
        "max_new_tokens": args.max_new_tokens, "steps": args.steps, "batch_size": args.batch_size,
        "rouge": results, "methods": stages,
        "seconds": {k: round(v, 1) for k, v in {**seconds, "total": time.perf_counter() - started}.items()},
        "torch_threads": torch.get_num_threads(),
        "examples": [{"reference": references[i], **{k: outputs[k][i] for k in outputs}}
                     for i in range(min(3, len(test)))],
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(record, indent=2))
    table = method_table(record)
    out_path.with_suffix(".md").write_text(f"# DialogSum SFT: {', '.join(methods)}\n\n`{record['command']}`\n\n"
                                           f"{len(test)} test dialogues, {args.steps} steps of batch "
                                           f"{args.batch_size} per method, greedy, {args.max_new_tokens} new "
                                           f"tokens.\n\n{table}")
    print(table)
    print(json.dumps(record["seconds"]), f"({out_path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
