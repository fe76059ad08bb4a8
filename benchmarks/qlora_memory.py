"""QLoRA's memory saving on CPU: the SFT stage's model loaded float32, bfloat16 and 4-bit NF4, then a few LoRA steps.

Each setting runs in its own child process, so each peak RSS is that setting's alone. Per setting it reports
the weights' size as transformers counts it (``get_memory_footprint``), the process RSS once the model is
loaded, the peak RSS over load + ``--steps`` LoRA SFT steps (TRL SFTTrainer, as ``rlhf sft`` runs them), and
seconds per step. Run it under the lock:

    flock /tmp/rlhf-cpu.lock python benchmarks/qlora_memory.py --out benchmarks/results/qlora_memory.json
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SETTINGS = {  # name -> (model.dtype, model.quantization)
    "fp32": ("float32", "none"),
    "bf16": ("bfloat16", "none"),
    "nf4": ("float32", "4bit"),
}


def rss_mib() -> float:
    """This process's resident set size now, in MiB (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child(setting: str, model: str, steps: int) -> dict:
    """One setting, in this process: load, then ``steps`` LoRA SFT steps; sizes in MiB."""
    import torch

    from rlhf.config import load_config
    from rlhf.quantization import check_backend, load_kwargs
    from rlhf.sft.config import SFTStageConfig
    from rlhf.sft.data import encode_records, to_dataset, training_mixture
    from rlhf.sft.trainer import MetricsLoggerCallback, build_trainer
    from rlhf.tracking import MetricsLogger
    from rlhf.zoo import load_causal_lm, load_tokenizer

    dtype_name, quantization = SETTINGS[setting]
    out_dir = Path("/tmp") / f"qlora-memory-{setting}"
    cfg, _ = load_config(SFTStageConfig, [
        "--model.name", model, "--model.dtype", dtype_name, "--model.quantization", quantization,
        "--data.mixture", "[{source: dialogsum, max_examples: 64}]", "--data.num_examples", str(4 * steps),
        "--train.max_steps", str(steps), "--train.batch_size", "4", "--train.max_length", "384",
        "--train.precision", "fp32", "--train.save_steps", str(10 * steps), "--lora.layers", "[]",
        "--run.output_dir", str(out_dir), "--run.wandb_mode", "disabled", "--forgetting.enabled", "false"])
    check_backend(quantization)
    before = rss_mib()
    tokenizer = load_tokenizer(model)
    dtype = getattr(torch, dtype_name)
    policy = load_causal_lm(model, dtype=dtype, **load_kwargs(quantization, dtype))
    loaded = rss_mib()
    footprint = policy.get_memory_footprint() / 2**20
    encoded, _ = encode_records(tokenizer, training_mixture(cfg.data, cfg.run.seed), cfg.train.max_length)
    tracker = MetricsLoggerCallback(MetricsLogger(out_dir, cfg.run, "sft", enabled=False))
    trainer = build_trainer(cfg, policy, tokenizer, to_dataset(encoded), None, out_dir, tracker, bf16=False)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    return {"setting": setting, "dtype": dtype_name, "quantization": quantization,
            "weights_footprint_mib": round(footprint, 1), "rss_before_load_mib": round(before, 1),
            "rss_loaded_mib": round(loaded, 1), "peak_rss_mib": round(peak_rss_mib(), 1),
            "steps": trainer.state.global_step, "seconds_per_step": round(seconds / max(1, trainer.state.global_step), 2),
            "first_loss": losses[0] if losses else None, "torch_threads": torch.get_num_threads()}


def table(rows: list[dict]) -> str:
    base = next((r for r in rows if r["setting"] == "fp32"), rows[0])
    lines = ["| base weights | footprint (MiB) | RSS loaded (MiB) | peak RSS, load + steps (MiB) | peak vs fp32 | s / step |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['setting']} | {r['weights_footprint_mib']} | {r['rss_loaded_mib']} | {r['peak_rss_mib']} "
                     f"| {r['peak_rss_mib'] / base['peak_rss_mib']:.2f}x | {r['seconds_per_step']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--settings", default="fp32,bf16,nf4", help=f"comma-separated: {', '.join(SETTINGS)}")
    parser.add_argument("--steps", type=int, default=3, help="LoRA SFT steps per setting (batch 4)")
    parser.add_argument("--out", default="runs/bench/qlora_memory.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.model, args.steps)))
        return 0
    rows = []
    for setting in args.settings.split(","):
        proc = subprocess.run([sys.executable, __file__, "--child", setting, "--model", args.model,
                               "--steps", str(args.steps)], capture_output=True, text=True)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode or line is None:
            print(proc.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"setting {setting}: the child failed (exit {proc.returncode})")
        rows.append(json.loads(line.removeprefix("RESULT ")))
        print(json.dumps(rows[-1]))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"command": "flock /tmp/rlhf-cpu.lock python benchmarks/qlora_memory.py " + " ".join(sys.argv[1:]),
              "model": args.model, "rows": rows}
    out.write_text(json.dumps(record, indent=2))
    out.with_suffix(".md").write_text(f"# QLoRA memory on CPU ({args.model}, LoRA on every layer, "
                                      f"{args.steps} steps of batch 4)\n\n`{record['command']}`\n\n{table(rows)}")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
