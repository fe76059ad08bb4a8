"""The course experiment: does a short LoRA SFT on DialogSum beat prompting the base model?

SmolLM2-135M-Instruct summarizes held-out DialogSum dialogues (the "test" split no stage trains on)
three ways, all greedy with the same budget of new tokens:

1. base model, zero-shot (the instruction and the dialogue);
2. base model, few-shot (``rlhf.prompts.few_shot``: short solved train dialogues as earlier chat turns);
3. the SFT stage's model (``pipelines/sft.py``: LoRA on DialogSum train dialogues), zero-shot.

It reports ROUGE-1/2/L (F-measure, stemmed, ``rouge_score``), the SFT stage's dev eval loss before and
after training and its forgetting check, and writes everything to one JSON file. Run it under the lock:

    flock /tmp/rlhf-cpu.lock python benchmarks/sft_dialogsum.py --out runs/bench/sft_dialogsum.json
"""
from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `python benchmarks/sft_dialogsum.py` must find pipelines/


def rouge(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measures (stemmed), in percent."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    scores = [scorer.score(ref, pred) for pred, ref in zip(predictions, references)]
    return {key: round(100 * statistics.mean(s[key].fmeasure for s in scores), 2)
            for key in ("rouge1", "rouge2", "rougeL")}


def summarize(model, tokenizer, chats, settings, max_prompt_tokens: int) -> tuple[list[str], float]:
    from rlhf.generation import generate_chat

    start = time.perf_counter()
    outputs = generate_chat(model, tokenizer, chats, settings, max_prompt_tokens=max_prompt_tokens)
    return outputs, time.perf_counter() - start


def sft_config(args, out_dir: Path):
    """The SFT stage's config: its defaults plus this experiment's settings (all recorded in the JSON)."""
    from rlhf.config import load_config
    from rlhf.sft.config import SFTStageConfig

    flags = {
        "model.name": args.model,
        "data.mixture": [{"source": "dialogsum", "weight": 1.0, "max_examples": 0}],
        "data.dev_max_examples": args.dev_examples,
        "data.samples": 2,
        "lora.r": 16, "lora.alpha": 32, "lora.dropout": 0.05,
        "lora.layers": list(range(args.lora_from_layer, 30)),  # upper layers only: backprop stops there
        "train.max_steps": args.steps, "train.batch_size": args.batch_size,
        "train.learning_rate": args.lr, "train.warmup_steps": 2, "train.max_length": args.max_length,
        "train.save_steps": args.steps, "train.precision": "auto",
        "generation.max_new_tokens": args.max_new_tokens, "generation.do_sample": False,
        "forgetting.n": args.forgetting_n,
        "run.output_dir": str(out_dir), "run.run_name": "sft", "run.wandb_mode": "offline", "run.log_every": 5,
    }
    argv = [item for key, value in flags.items() for item in (f"--{key}", json.dumps(value))]
    cfg, _ = load_config(SFTStageConfig, argv)
    return cfg, flags


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--n", type=int, default=50, help="held-out test dialogues to summarize")
    parser.add_argument("--shots", type=int, default=2, help="examples in the few-shot prompt")
    parser.add_argument("--shot-max-chars", type=int, default=560, help="only prompts this short (chars) as shots")
    parser.add_argument("--steps", type=int, default=40, help="SFT optimisation steps")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--lora-from-layer", type=int, default=18, help="LoRA on decoder layers [this, 30)")
    parser.add_argument("--max-length", type=int, default=512, help="longer train dialogues are dropped")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--dev-examples", type=int, default=24, help="dev dialogues for eval loss")
    parser.add_argument("--forgetting-n", type=int, default=30, help="TruthfulQA MC1 questions")
    parser.add_argument("--gen-batch-size", type=int, default=10)
    parser.add_argument("--out", default="runs/bench/sft_dialogsum.json")
    args = parser.parse_args(argv)

    import torch
    from peft import PeftModel

    from pipelines.sft import main as run_sft
    from rlhf.generation import GenerationSettings
    from rlhf.prompts import Shot, few_shot, pick_shots, zero_shot
    from rlhf.sources import dialogsum_items
    from rlhf.zoo import load_causal_lm, load_tokenizer

    started = time.perf_counter()
    out_path = Path(args.out)
    out_dir = out_path.parent / (out_path.stem + "-runs")
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, do_sample=False, batch_size=args.gen_batch_size)

    # 1. held-out dialogues and few-shot examples (shots from train: never a test dialogue)
    test = dialogsum_items("test")[: args.n]
    references = [item.summary for item in test]
    pool = [Shot(item.prompt, item.summary) for item in dialogsum_items("train")]
    shots = pick_shots(pool, args.shots, seed=0, max_prompt_chars=args.shot_max_chars)
    zero_chats = [zero_shot(item.prompt) for item in test]
    few_chats = [few_shot(item.prompt, shots) for item in test]

    # 2. the base model, zero- and few-shot
    tokenizer, base = load_tokenizer(args.model), load_causal_lm(args.model, dtype=torch.float32)
    results, outputs, seconds = {}, {}, {}
    outputs["base_zero_shot"], seconds["base_zero_shot"] = summarize(base, tokenizer, zero_chats, settings, 1024)
    outputs["base_few_shot"], seconds["base_few_shot"] = summarize(base, tokenizer, few_chats, settings, 2048)
    del base

    # 3. the SFT stage (LoRA on DialogSum train dialogues), then its model zero-shot
    cfg, sft_flags = sft_config(args, out_dir)
    start = time.perf_counter()
    run_dir = run_sft(cfg)
    seconds["sft_stage"] = time.perf_counter() - start
    sft_model = PeftModel.from_pretrained(load_causal_lm(args.model, dtype=torch.float32), run_dir / "final")
    outputs["sft_zero_shot"], seconds["sft_zero_shot"] = summarize(sft_model, tokenizer, zero_chats, settings, 1024)

    # 4. scores and the record
    for name, preds in outputs.items():
        results[name] = rouge(preds, references)
        results[name]["mean_words"] = round(statistics.mean(len(p.split()) for p in preds), 1)
    stage = json.loads((run_dir / "summary.json").read_text())
    record = {
        "command": "flock /tmp/rlhf-cpu.lock python benchmarks/sft_dialogsum.py "
                   + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)),
        "model": args.model, "n_test_dialogues": len(test), "shots": args.shots, "decoding": "greedy",
        "max_new_tokens": args.max_new_tokens, "rouge": results,
        "sft_beats_zero_shot_rougeL": results["sft_zero_shot"]["rougeL"] > results["base_zero_shot"]["rougeL"],
        "eval_loss": {"before": stage.get("eval/loss_before"), "after": stage.get("eval/loss_after"),
                      "perplexity_before": stage.get("eval/perplexity_before"),
                      "perplexity_after": stage.get("eval/perplexity_after")},
        "forgetting": {k.split("/")[1]: v for k, v in stage.items() if k.startswith("forgetting/")},
        "sft_stage": {"run_dir": str(run_dir), "overrides": sft_flags, "steps": stage.get("train/steps"),
                      "train_examples": stage.get("data/train_examples")},
        "seconds": {k: round(v, 1) for k, v in {**seconds, "total": time.perf_counter() - started}.items()},
        "torch_threads": torch.get_num_threads(),
        "examples": [{"reference": references[i], **{k: outputs[k][i] for k in outputs}} for i in range(3)],
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(record, indent=2))
    print(json.dumps({k: record[k] for k in ("rouge", "eval_loss", "forgetting", "seconds")}, indent=2))
    print(f"SFT beats zero-shot base on ROUGE-L: {record['sft_beats_zero_shot_rougeL']}  ({out_path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
