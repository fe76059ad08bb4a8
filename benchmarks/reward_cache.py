"""Reward-model training throughput with and without the frozen-trunk cache (pairs per second).

    flock /tmp/rlhf-cpu.lock python benchmarks/reward_cache.py               # 2 runs per side, A B A B
    flock /tmp/rlhf-cpu.lock python benchmarks/reward_cache.py --runs 3

Both sides train the same reward model (``rlhf reward``'s own ``train_reward_model``): SmolLM2-135M-Instruct,
LoRA on the top 4 decoder layers (``lora.layers [-4, -3, -2, -1]``), the same pairs, batch, steps and
seed; the run's precision is ``auto``. A = ``train.trunk_cache off`` (every step runs all 30 layers);
B = ``train.trunk_cache auto`` with an empty cache folder each run, so B pays for filling the cache (the
26 frozen layers, once per training text) and that cost is reported apart. Each run is a fresh process;
A and B alternate so drifting load hits both alike.

Reported per side: the median over runs of each run's median training pairs/s over steps 2..N (step 1 is a
warm-up), the cache fill time, and the whole run's wall time; the JSON keeps every step of every run, the
load average before and after each run and the CPU model. Results: ``results/reward_cache.{json,md}``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # our package, for the sides
sys.path.insert(0, str(ROOT / "benchmarks"))  # common and harness, as the other benchmarks import them

from common import cpu_info, load_average, own_peak_rss_bytes, run_child  # noqa: E402
from harness import child_env  # noqa: E402

SIDES = {"plain": "A: no cache", "cached": "B: trunk cache"}
BACKBONE = "smollm2-135m-instruct"
LORA_LAYERS = [-4, -3, -2, -1]


def side(args) -> int:
    """One run in this process: train, then write the per-step throughput read from the run's metrics."""
    import torch

    from reward_models.config import RewardStageConfig
    from reward_models.train import train_reward_model
    from rlhf.core.config import RunConfig
    from rlhf.core.runtime import use_bf16
    from rlhf.core.tracking import read_metrics

    torch.set_num_threads(args.threads)
    work = Path(args.out).parent / Path(args.out).stem
    cfg = RewardStageConfig()
    cfg.model.name, cfg.model.max_length = BACKBONE, args.max_length
    cfg.lora.enabled, cfg.lora.layers = True, list(LORA_LAYERS)
    cfg.data.max_train_pairs_per_head = args.pairs_per_head
    cfg.train.epochs, cfg.train.batch_size, cfg.train.save_steps = args.epochs, args.batch_size, 0
    cfg.train.trunk_cache = "auto" if args.side == "cached" else "off"
    cfg.train.cache_dir = str(work / "cache")  # empty: every cached run fills its cache
    cfg.eval.max_pairs_per_head, cfg.eval.test = args.eval_pairs_per_head, False
    cfg.run = RunConfig(output_dir=str(work), run_name="reward", wandb_mode="disabled", log_every=1, seed=0)
    started = time.perf_counter()
    run_dir = train_reward_model(cfg)
    run_seconds = time.perf_counter() - started
    steps = [m for m in read_metrics(run_dir / "metrics.jsonl") if "train/pairs_per_s" in m]
    summary = json.loads((run_dir / "summary.json").read_text())
    per_step = [m["train/pairs_per_s"] for m in steps]
    result = {"side": args.side, "pairs_per_s_per_step": per_step,
              "pairs_per_s_median": statistics.median(per_step[1:] or per_step),
              "trunk_cache_seconds": summary["train/trunk_cache_seconds"], "train_seconds": summary["train/seconds"],
              "pairs_seen": summary["train/pairs_seen"], "train_pairs": summary["train/pairs"],
              "steps": summary["train/steps"], "run_seconds": run_seconds, "peak_rss_bytes": own_peak_rss_bytes(),
              "dev_accuracy": {k: v for k, v in summary.items() if k.startswith("dev/accuracy")},
              "bf16": use_bf16(cfg.train.precision, torch.device("cpu"))}
    Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


def table(result: dict) -> str:
    a, b = result["sides"]["plain"], result["sides"]["cached"]
    rows = [("training pairs/s (median of steps 2..N, median over runs)", a["pairs_per_s"], b["pairs_per_s"]),
            ("trunk cache fill, s (train texts, once)", a["trunk_cache_seconds"], b["trunk_cache_seconds"]),
            ("training loop, s", a["train_seconds"], b["train_seconds"]),
            ("whole run, s (load, cache, train, dev eval, save)", a["run_seconds"], b["run_seconds"])]
    lines = ["| | A: no cache | B: trunk cache | B / A |", "|---|---|---|---|"]
    lines += [f"| {name} | {x:.3g} | {y:.3g} | {y / x:.2f} |" if x > 0.01 else f"| {name} | {x:.2g} | {y:.3g} | |"
              for name, x, y in rows]
    w = result["workload"]
    loads = ", ".join(f"{r['side']} {r['load_before'][0]}->{r['load_after'][0]}" for r in result["every"])
    lines += ["", f"Workload: {w['backbone']}, LoRA on layers {w['lora_layers']}, {w['train_pairs']} train pairs, "
                  f"max_length {w['max_length']}, batch {w['batch_size']} pairs, {w['epochs']} epochs "
                  f"({w['steps']} steps), {w['threads']} threads, bf16={w['bf16']}; {result['runs']} runs per side, "
                  f"A B A B. CPU: {result['cpu']['model_name']} ({result['cpu']['cpus']} CPUs); load average "
                  f"before/after each run: {loads}."]
    return "\n".join(lines)


def orchestrate(args) -> dict:
    every, per_side = [], {s: [] for s in SIDES}
    with tempfile.TemporaryDirectory(prefix="reward-cache-bench-") as tmp:
        for run in range(args.runs):
            for name in SIDES:
                out, log = Path(tmp) / f"{name}-{run}.json", Path(tmp) / f"{name}-{run}.log"
                print(f"run {run + 1}/{args.runs}, {SIDES[name]} ...", flush=True)
                cmd = [sys.executable, __file__, "--side", name, "--out", str(out)] + forwarded(args)
                child = run_child(cmd, env=child_env(args.threads), timeout=1800, log_path=log)
                if child.returncode != 0:
                    raise RuntimeError(f"{name} run {run} failed ({child.returncode}):\n{log.read_text()[-3000:]}")
                result = json.loads(out.read_text()) | {"run": run, "wall_seconds": child.wall_seconds,
                                                        "load_before": child.load_before, "load_after": child.load_after}
                every.append(result)
                per_side[name].append(result)
                print(f"  {result['pairs_per_s_median']:.2f} pairs/s, cache {result['trunk_cache_seconds']:.1f} s, "
                      f"run {result['run_seconds']:.0f} s, load {child.load_before} -> {child.load_after}", flush=True)
    med = lambda runs, key: statistics.median(r[key] for r in runs)  # noqa: E731
    sides = {name: {"pairs_per_s": med(runs, "pairs_per_s_median"), "trunk_cache_seconds": med(runs, "trunk_cache_seconds"),
                    "train_seconds": med(runs, "train_seconds"), "run_seconds": med(runs, "run_seconds"),
                    "pairs_per_s_per_run": [r["pairs_per_s_median"] for r in runs]}
             for name, runs in per_side.items()}
    first = every[0]
    return {"benchmark": "reward_cache", "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "runs": args.runs,
            "cpu": cpu_info(), "load_average_end": load_average(),
            "workload": {"backbone": BACKBONE, "lora_layers": LORA_LAYERS, "train_pairs": first["train_pairs"],
                         "max_length": args.max_length, "batch_size": args.batch_size, "epochs": args.epochs,
                         "steps": first["steps"], "threads": args.threads, "bf16": first["bf16"],
                         "pairs_per_head": args.pairs_per_head, "eval_pairs_per_head": args.eval_pairs_per_head},
            "sides": sides, "ratio_pairs_per_s": sides["cached"]["pairs_per_s"] / sides["plain"]["pairs_per_s"],
            "every": every}


def forwarded(args) -> list[str]:
    return ["--threads", str(args.threads), "--pairs-per-head", str(args.pairs_per_head), "--epochs", str(args.epochs),
            "--batch-size", str(args.batch_size), "--max-length", str(args.max_length),
            "--eval-pairs-per-head", str(args.eval_pairs_per_head)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=2, help="runs per side, alternating A B A B")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pairs-per-head", type=int, default=16, help="train pairs per head (data.max_train_pairs_per_head)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--eval-pairs-per-head", type=int, default=4)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "reward_cache.json"))
    parser.add_argument("--side", choices=list(SIDES), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.side:
        return side(args)
    result = orchestrate(args)
    result["table"] = table(result)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text("# Reward-model training with and without the trunk cache\n\n"
                                      f"`{' '.join(['python', 'benchmarks/reward_cache.py', *(argv or sys.argv[1:])])}`"
                                      f", {result['date']}\n\n{result['table']}\n")
    print("\n" + result["table"] + f"\n\nresults: {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
