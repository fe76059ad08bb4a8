"""Our PPO step alone and beside a busy process: how much slower it gets, old thread settings against new.

    flock /tmp/rlhf-cpu.lock python benchmarks/shared_cpu.py             # 2 rounds, ~10 min on 2 cores

Steps (each PPO run is a fresh subprocess; the orchestrator never loads torch):
  1. the workload: SmolLM2-135M-Instruct, top-8-layer LoRA, 8 rollouts x 32 new tokens, the toy
     TokenCountScorer (so the policy is what is timed), --steps PPO steps, median of steps 2..N
  2. per round, for each condition (alone; beside a `nice -n 19` busy process; beside a busy process of our
     own priority) and each setting (old: always 2 threads; new: rlhf.core.threads.ThreadGovernor before every
     step), one run: A B A B; --settings adds variants (OMP_WAIT_POLICY=PASSIVE, 1 thread)
  3. slowdown = a setting's median s/step under load / the same setting's alone; also against old alone
  4. load averages before and after every run, the CPU model (lscpu); JSON to benchmarks/results/

The busy processes are single-threaded Python spin loops started here and stopped after every run (and in a
finally, and by their own deadline if this process dies): run the whole benchmark under the shared lock, so
the load never lands on anyone else's measurement.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

from common import cpu_info, load_average, read_side_result, run_child  # noqa: E402

CONDITIONS = ("alone", "nice19", "same")  # beside: nothing; a `nice -n 19` spin loop; a nice-0 spin loop
BUSY_NICE = {"alone": None, "nice19": 19, "same": 0}
SETTINGS = {  # name -> (environment for the child, train.threads; 0 = rlhf.core.threads.ThreadGovernor follows the load)
    "old": ({}, 2),  # the shipped behaviour before issue 17: torch's default 2 threads, libgomp's default waits
    "new": ({}, 0),  # rlhf.core.threads.ThreadGovernor: threads re-chosen every step from the others' CPU use
    # variants, for --settings: one knob at a time
    "passive2": ({"OMP_WAIT_POLICY": "PASSIVE"}, 2),
    "one": ({"OMP_WAIT_POLICY": "PASSIVE"}, 1),
    "active2": ({"OMP_WAIT_POLICY": "ACTIVE"}, 2),
}
TARGETS = {"nice19": 1.2, "same": 2.0}  # loaded / alone, at most
BATCH, NEW_TOKENS = 8, 32


# ---------------------------------------------------------------- one run (its own subprocess)


def run_side(setting: str, steps: int, out: Path) -> int:
    """A fixed PPO workload, each step timed whole; writes the side's result JSON."""
    _, threads = SETTINGS[setting]
    import torch

    from common import StepClock, StepRecord, Workload, write_side_result
    from harness import benchmark_prompts
    from ppo_vs_trl import our_config
    from rlhf.core.lifecycle import seed_everything
    from rlhf.rl.factory import build_rl_trainer
    from rlhf.rl.scorers import TokenCountScorer
    from rlhf.core.runtime import make_accelerator, resolve_dtype
    from rlhf.models.zoo import load_tokenizer, resolve_model

    policy_path = resolve_model("smollm2-135m-instruct")
    prompts, _ = benchmark_prompts(load_tokenizer(policy_path), BATCH * steps)
    wl = Workload(policy_path=policy_path, reward_path="", prompts=prompts, chat_prompts=[], batch_size=BATCH,
                  mini_batch_size=4, max_new_tokens=NEW_TOKENS, threads=threads)
    cfg = our_config(wl)
    accelerator = make_accelerator()
    seed_everything(cfg.run.seed)
    dtype = resolve_dtype(cfg.train.precision, accelerator.device)
    trainer = build_rl_trainer(cfg, accelerator, scorer=lambda tokenizer: TokenCountScorer(tokenizer, "."),
                               prompts=prompts, dtype=dtype)
    # train.threads = 0: the trainer's own rlhf.core.threads.ThreadGovernor re-chooses the thread count before each step

    records, used, clock = [], [], StepClock()
    for _ in range(steps):
        clock.start()
        metrics = trainer.step()
        lap = clock.lap()
        used.append(torch.get_num_threads())  # what the step ran with
        records.append(StepRecord(seconds=lap.seconds, cpu_seconds=lap.cpu_seconds,
                                  foreign_cpu_seconds=lap.foreign_cpu_seconds,
                                  generated_tokens=round(metrics["response/length"] * BATCH),
                                  generation_seconds=metrics["time/generate_s"]))
        print(f"[{setting}] step {len(records)}: {lap.seconds:.2f} s, {used[-1]} threads, others used "
              f"{lap.foreign_cpu_seconds / lap.seconds:.2f} cores", flush=True)
    write_side_result(out, setting, records, {
        "threads_per_step": used, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "compute_dtype": str(dtype).replace("torch.", ""), "torch": torch.__version__})
    return 0


# ---------------------------------------------------------------- the background load


def busy_command(seconds: float) -> list[str]:
    """A single-threaded spin loop that stops by itself after ``seconds`` (should we die without a finally)."""
    return [sys.executable, "-c", f"import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end: pass"]


class BusyProcess:
    """``with BusyProcess(nice):`` one spin loop at niceness ``nice`` (None: none) for the block's duration."""

    def __init__(self, nice: int | None, max_seconds: float):
        self.nice, self.max_seconds, self.proc = nice, max_seconds, None

    def __enter__(self) -> "BusyProcess":
        if self.nice is not None:
            self.proc = subprocess.Popen(["nice", "-n", str(self.nice)] + busy_command(self.max_seconds))
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # our own child, by its pid
        if self.proc is not None:
            self.proc.wait()


# ---------------------------------------------------------------- orchestration and ratios


def run_order(rounds: int, conditions, settings) -> list[tuple[int, str, str]]:
    """(round, condition, setting) in A B A B order: every condition and setting once per round."""
    return [(r, c, s) for r in range(rounds) for c in conditions for s in settings]


def slowdowns(runs: list[dict], settings, conditions) -> dict:
    """Per setting: median s/step per condition over its runs, and loaded / alone for each loaded condition
    (against the same setting alone, and against old alone: what a user waits, whatever the settings)."""
    med = {s: {c: statistics.median([r["sec_per_step_median"] for r in runs if r["setting"] == s and r["condition"] == c])
               for c in conditions if any(r["setting"] == s and r["condition"] == c for r in runs)}
           for s in settings}
    out = {}
    for s in settings:
        alone = med[s].get("alone")
        out[s] = {"sec_per_step": med[s],
                  "slowdown": {c: med[s][c] / alone for c in med[s] if c != "alone" and alone},
                  "vs_old_alone": {c: med[s][c] / med["old"]["alone"] for c in med[s]}
                  if "old" in med and "alone" in med["old"] else {}}
    return out


def table(result: dict) -> str:
    conditions = [c for c in CONDITIONS if c in result["conditions"]]
    lines = ["setting  " + "".join(f"{c + ' s/step':>16}" for c in conditions)
             + "".join(f"{c + '/alone':>16}" for c in conditions if c != "alone")]
    for s, row in result["summary"].items():
        lines.append(f"{s:<9}" + "".join(f"{row['sec_per_step'].get(c, float('nan')):>16.2f}" for c in conditions)
                     + "".join(f"{row['slowdown'].get(c, float('nan')):>15.2f}x" for c in conditions if c != "alone"))
    lines.append("targets: " + ", ".join(f"{c}/alone <= {t}x" for c, t in TARGETS.items()))
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2, help="A B A B rounds (each: every condition x setting once)")
    ap.add_argument("--steps", type=int, default=5, help="PPO steps per run; the first is excluded")
    ap.add_argument("--settings", default="old,new", help=f"comma list of {', '.join(SETTINGS)}")
    ap.add_argument("--conditions", default=",".join(CONDITIONS))
    ap.add_argument("--timeout", type=float, default=420.0, help="seconds per run before it is killed")
    ap.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "shared_cpu.json")
    ap.add_argument("--work", type=Path, default=Path("/tmp/shared_cpu_bench"))
    ap.add_argument("--side", choices=list(SETTINGS), help=argparse.SUPPRESS)
    ap.add_argument("--side-out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        return run_side(args.side, args.steps, args.side_out)

    settings, conditions = args.settings.split(","), args.conditions.split(",")
    for name in settings:
        if name not in SETTINGS:
            print(f"--settings: unknown setting {name!r}; expected some of {', '.join(SETTINGS)}", file=sys.stderr)
            return 2
    for name in conditions:
        if name not in CONDITIONS:
            print(f"--conditions: unknown condition {name!r}; expected some of {', '.join(CONDITIONS)}", file=sys.stderr)
            return 2
    args.work.mkdir(parents=True, exist_ok=True)
    # SIGTERM (e.g. timeout(1)) unwinds through the finally blocks below, so no busy loop outlives us.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    result = {"command": " ".join(sys.argv), "cpu": cpu_info(), "load_at_start": load_average(),
              "workload": {"model": "smollm2-135m-instruct", "rollouts_per_step": BATCH, "new_tokens": NEW_TOKENS,
                           "lora_layers": "last 8", "scorer": "TokenCountScorer", "steps": args.steps,
                           "median_over": f"steps 2..{args.steps}"},
              "settings": {s: {"env": SETTINGS[s][0], "train.threads": SETTINGS[s][1]} for s in settings},
              "conditions": conditions, "runs": []}
    for rnd, condition, setting in run_order(args.rounds, conditions, settings):
        env_extra, _ = SETTINGS[setting]
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT")}
        env.update(env_extra, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
                   TRANSFORMERS_VERBOSITY="error", WANDB_MODE="disabled", PYTHONUNBUFFERED="1",
                   PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep))
        out, log = args.work / f"{setting}-{condition}-{rnd}.json", args.work / f"{setting}-{condition}-{rnd}.log"
        print(f"round {rnd + 1}/{args.rounds}, {condition}, {setting} (log: {log}) ...", flush=True)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--side", setting, "--steps", str(args.steps),
               "--side-out", str(out)]
        with BusyProcess(BUSY_NICE[condition], max_seconds=args.timeout + 30):
            child = run_child(cmd, env=env, timeout=args.timeout, log_path=log)
        if child.returncode != 0:
            print(f"{setting} {condition} run failed (exit {child.returncode}); {log}:\n{log.read_text()[-3000:]}",
                  file=sys.stderr)
            return 1
        run = read_side_result(out)
        run.update(round=rnd, condition=condition, setting=setting, wall_seconds=child.wall_seconds,
                   load_before=child.load_before, load_after=child.load_after)
        result["runs"].append(run)
        print(f"  {run['sec_per_step_median']:.2f} s/step, threads {run['threads_per_step']}, steps "
              + " ".join(f"{s:.1f}" for s in run["step_seconds"])
              + f", load {child.load_before} -> {child.load_after}", flush=True)
    result["summary"] = slowdowns(result["runs"], settings, conditions)
    result["load_at_end"] = load_average()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"\nCPU: {result['cpu'].get('model_name')}, load {result['load_at_start']} -> {result['load_at_end']}")
    print(table(result))
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
