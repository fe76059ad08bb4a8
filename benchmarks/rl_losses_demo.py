"""Each policy loss on the demo's GRPO setting, then one evaluation: gold, proxy, KL and entropy per loss.

    # after `rlhf pipeline --preset demo` (runs/demo/{sft,reward,gold}/final); one command per variant, each
    # under the shared CPU lock, then the evaluation and the table:
    for v in clip clip_higher gspo clip_dynamic_overlong; do
        flock /tmp/rlhf-cpu.lock python benchmarks/rl_losses_demo.py train $v --steps 20; done
    flock /tmp/rlhf-cpu.lock python benchmarks/rl_losses_demo.py eval
    python benchmarks/rl_losses_demo.py table      # -> benchmarks/results/rl_losses_demo/{results.json,table.md}

The demo's GRPO setting (README: `--ppo.overrides '{rl.algo: grpo, rl.samples_per_prompt: 4, update.batch_size: 2}'`
on the demo's PPO stage): the demo SFT adapter as the start, the demo proxy as the reward, 2 prompts x 4 samples
per step, lr 3e-4 constant, the same seed (so the same training prompts) for every variant. The evaluation is
the demo's sampled one (test prompts, 12 per source, 40 new tokens, the demo gold judge) with SFT as the
baseline: differences vs SFT come with 95 % intervals (paired over prompts). The evaluation has no entropy;
the entropy column is the mean policy entropy of the last training steps (`objective/entropy`, metrics.jsonl).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "rl_losses_demo"
RUNS = ROOT / "benchmarks" / "results" / "rl_losses_demo-runs"  # ignored by git (checkpoints)

# GSPO's ratio is exp(mean_t log-ratio) per response, ~1e-3 from 1 where a token ratio is ~0.1 from 1: the GSPO
# paper (and TRL's GSPO recipe) clip it at 3e-4 / 4e-4, not at PPO's 0.2.
VARIANTS = {
    "clip": [],
    "clip_higher": ["--rl.policy_loss", "clip_higher"],  # DAPO's 0.2 / 0.28 (the config defaults)
    "gspo": ["--rl.policy_loss", "gspo", "--update.clip_range", "3e-4", "--update.clip_range_high", "4e-4"],
    "clip_dynamic_overlong": ["--rl.dynamic_sampling", "true", "--rl.overlong_buffer", "8"],
}
# pipeline_demo.yaml's ppo stage, switched to GRPO as the README's demo GRPO line does
DEMO_GRPO = ["--rl.algo", "grpo", "--rl.samples_per_prompt", "4", "--update.batch_size", "2",
             "--train.learning_rate", "3e-4", "--train.lr_scheduler", "constant", "--train.save_steps", "0",
             "--run.seed", "0", "--run.wandb_mode", "disabled",
             "--reward.missing_eos_penalty", "1.0"]  # the default when results/rl_losses_demo/ was measured
LAST_STEPS = 5  # training metrics (entropy, train KL, reward) are averaged over this many final steps


def train(args: argparse.Namespace) -> None:
    demo = Path(args.demo)
    cmd = [sys.executable, "-m", "rlhf.cli", "rl", *DEMO_GRPO, "--model.name", str(demo / "sft" / "final"),
           "--reward.model", str(demo / "reward" / "final"), "--train.max_steps", str(args.steps),
           "--run.output_dir", str(RUNS), "--run.run_name", args.variant, *VARIANTS[args.variant]]
    print(" ".join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    (RUNS / args.variant / "bench.json").write_text(json.dumps({"command": cmd, "seconds": seconds}, indent=2))
    print(f"{args.variant}: {seconds:.0f} s", flush=True)


def eval_config(demo: Path, variants: list[str], prompts: int) -> dict:
    policies = [{"name": "sft", "model": str(demo / "sft" / "final")}]  # adapter on base: KL reference = base
    policies += [{"name": v, "model": str(RUNS / v / "final" / "adapter"), "base": str(demo / "sft" / "final")}
                 for v in variants]  # GRPO's LoRA on SFT: KL reference = SFT
    return {"policies": policies, "variants": [{"policies": ["sft", *variants], "decoding": "sampled"}],
            "reward_model": str(demo / "reward" / "final"), "gold": {"model": str(demo / "gold" / "final")},
            "baseline": "sft", "candidate": variants[0],
            "data": {"prompts_per_source": prompts}, "generation": {"max_new_tokens": 40},
            "judge_free": {"preference_sources": [], "truthfulqa_mc": False},
            "run": {"output_dir": str(RUNS), "run_name": "eval", "wandb_mode": "disabled"}}


def evaluate(args: argparse.Namespace) -> None:
    variants = [v for v in VARIANTS if (RUNS / v / "final" / "adapter").is_dir()]
    config = RUNS / "eval.json"  # JSON is YAML
    config.write_text(json.dumps(eval_config(Path(args.demo), variants, args.prompts), indent=2))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "rlhf.cli", "eval", "--config", str(config)], check=True, cwd=ROOT)
    (RUNS / "eval" / "bench.json").write_text(json.dumps({"seconds": time.perf_counter() - start}))


def last_steps(run: Path, key: str) -> float | None:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    values = [r[key] for r in rows if key in r]
    return sum(values[-LAST_STEPS:]) / len(values[-LAST_STEPS:]) if values else None


def total(run: Path, key: str) -> float | None:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    values = [r[key] for r in rows if key in r]
    return sum(values) if values else None


def interval(m: dict, key: str) -> str:
    low, high = m[f"{key}_low"], m[f"{key}_high"]
    note = " (no gain shown)" if low <= 0 <= high else " (below SFT)" if high < 0 else ""
    return f"{m[key]:+.3f} [{low:+.3f}, {high:+.3f}]{note}"


def table(args: argparse.Namespace) -> None:
    results = json.loads((RUNS / "eval" / "results.json").read_text())
    rows = []
    for name, policy in [("sft", None), *((v, v) for v in VARIANTS if (RUNS / v / "bench.json").is_file())]:
        m = results["metrics"][f"{name}/0-shot/sampled"]["all"]
        row = {"variant": name, "eval_n": m["n"], "gold": m["gold/composite"], "proxy": m["reward/composite"],
               "kl_k1_eval": m.get("kl/k1"), "kl_k3_eval": m.get("kl/k3"), "length": m["length"], "distinct2": m["distinct/2"]}
        if policy:
            run = RUNS / policy
            bench = json.loads((run / "bench.json").read_text())
            row.update({k: m[k] for k in m if k.startswith(("gold/composite_delta", "reward/composite_delta"))})
            row.update(flags=VARIANTS[policy], steps=int(bench["command"][bench["command"].index("--train.max_steps") + 1]),
                       seconds=bench["seconds"], entropy_train_last=last_steps(run, "objective/entropy"),
                       kl_train_last=last_steps(run, "objective/kl"),
                       proxy_train_first=json.loads((run / "metrics.jsonl").read_text().splitlines()[0]).get(
                           "reward/composite"),
                       proxy_train_last=last_steps(run, "reward/composite"),
                       dropped_groups=total(run, "rollout/dropped_groups"),
                       overlong_penalty_last=last_steps(run, "objective/overlong_penalty"))
        rows.append(row)
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name in [r["variant"] for r in rows[1:]]:  # the training logs the table reads, kept beside it (small)
        (RESULTS / "runs" / name).mkdir(parents=True, exist_ok=True)
        for file in ("metrics.jsonl", "bench.json", "config.yaml"):
            if (RUNS / name / file).is_file():
                shutil.copy(RUNS / name / file, RESULTS / "runs" / name / file)
    shutil.copy(RUNS / "eval" / "report.md", RESULTS / "eval_report.md")
    shutil.copy(RUNS / "eval" / "results.json", RESULTS / "eval_results.json")
    out = {"setting": {"train": DEMO_GRPO, "last_steps_averaged": LAST_STEPS, "eval_prompts": results["prompts"],
                       "gold": results["gold_model"], "proxy": results["reward_model"],
                       "eval_seconds": json.loads((RUNS / "eval" / "bench.json").read_text())["seconds"]},
           "rows": rows}
    (RESULTS / "results.json").write_text(json.dumps(out, indent=2))
    lines = ["| variant | steps | gold diff vs SFT [95 % CI] | proxy diff vs SFT [95 % CI] | KL to SFT (eval, k1 / k3, nats) "
             f"| entropy (train, last {LAST_STEPS} steps) | train seconds |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows[1:]:
        lines.append(f"| {r['variant']} | {r['steps']} | {interval(r, 'gold/composite_delta')} | "
                     f"{interval(r, 'reward/composite_delta')} | {r['kl_k1_eval']:.3f} / {r['kl_k3_eval']:.3f} | {r['entropy_train_last']:.3f} | "
                     f"{r['seconds']:.0f} |")
    (RESULTS / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", default="runs/demo", help="the demo pipeline's folder (sft, reward, gold)")
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="one GRPO run of one variant")
    t.add_argument("variant", choices=list(VARIANTS))
    t.add_argument("--steps", type=int, default=20)
    e = sub.add_parser("eval", help="rlhf eval: sft and every trained variant, sampled, demo gold")
    e.add_argument("--prompts", type=int, default=12, help="test prompts per source")
    sub.add_parser("table", help="results.json + table.md from the runs and the evaluation")
    args = parser.parse_args(argv)
    {"train": train, "eval": evaluate, "table": table}[args.command](args)


if __name__ == "__main__":
    main()
