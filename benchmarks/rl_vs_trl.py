"""Our GRPO against TRL 1.16's GRPOTrainer on one workload: seconds per step, peak RSS, tokens/s, ratios.

    flock /tmp/rlhf-cpu.lock python benchmarks/rl_vs_trl.py            # both sides, A B A B

Steps (each side runs in its own fresh subprocess, so peak RSS is that side's alone):
  1. the peer's virtualenv (benchmarks/.venv-trl116: torch==2.13.0 first, then trl==1.16.0 + peft), reused
  2. the workload (harness.prepare_workload, as the PPO benchmark): SmolLM2-135M-Instruct policy, the seeded
     SmolLM2-135M classifier as the reward model, 64 HH-harmless train prompts; 8 prompts x 4 completions
     per step, one optimizer step per step, k3 KL-to-reference loss term (0.04) on both sides
  3. runs alternating ours, TRL, ours, TRL ... (--runs per side), load average before and after each
  4. medians over runs, ratios ours/TRL; JSON to benchmarks/results/rl_vs_trl.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from common import DEFAULT_LORA_LAYERS, GIB, Workload, cpu_info, load_average, resolve_precision  # noqa: E402
from harness import (ClassifierScorer, aggregate, child_env, dispatch, ensure_trl_venv, prepare_workload,  # noqa: E402
                     profile_table, run_alternating, side_ratios, side_settings)

TRL_VENV = BENCH_DIR / ".venv-trl116"
TRL_VERSION = "1.16.0"  # with our torch, peft, transformers, accelerate and datasets versions (harness.py)
TRL_PROBE = "from trl import GRPOConfig, GRPOTrainer"
TARGETS = {"sec_per_step": 0.5, "peak_rss": 0.5}  # ours / TRL must be at most this
SIDES = ("ours", "trl")
SIDE_LABEL = {"ours": "ours", "trl": "TRL 1.16"}
# The GRPO workload; the rest (LoRA r16/alpha32 on q/k/v/o, 32 new tokens, temperature 1, lr 1e-5, 2 threads,
# seed 0) are common.Workload's defaults, shared with the PPO benchmark.
GRPO_WORKLOAD = {"batch_size": 8, "samples_per_prompt": 4, "mini_batch_size": 32, "micro_batch_size": 8,
                 "kl_coef": 0.04}


# ---------------------------------------------------------------- our side (run in its own subprocess)


def our_argv(wl: Workload) -> list[str]:
    """Our RL stage's flags for the workload: GRPO, one optimizer step per step, KL as a k3 loss term."""
    settings = {
        "rl.algo": "grpo", "rl.samples_per_prompt": wl.samples_per_prompt,
        "model.name": wl.policy_path, "update.batch_size": wl.batch_size, "update.mini_batch_size": wl.mini_batch_size,
        "update.micro_batch_size": wl.micro_batch_size, "update.epochs": wl.ppo_epochs,
        "kl.placement": "loss", "kl.coef": wl.kl_coef, "kl.estimator": "k3", "kl.adaptive": "false",
        "reward.normalize": "false",  # GRPO normalises within each prompt's group; TRL has no running normaliser
        "generation.max_new_tokens": wl.max_new_tokens, "generation.temperature": wl.temperature,
        "generation.batch_size": wl.rollouts_per_step, "lora.r": wl.lora_r, "lora.alpha": wl.lora_alpha,
        "lora.target_modules": json.dumps(wl.lora_target_modules), "lora.layers": json.dumps(wl.lora_layers),
        "train.max_steps": wl.num_steps, "train.learning_rate": wl.learning_rate, "train.threads": wl.threads,
        "train.save_steps": 0, "train.sample_every": 0, "data.shuffle": "false", "run.seed": wl.seed,
        "run.wandb_mode": "disabled",
        "train.precision": wl.precision,  # resolved once for both sides (common.resolve_precision)
    }
    settings.update(wl.our_overrides)
    # Flag values are read as YAML 1.1, where "1e-05" is a string: floats are written with a dot.
    return [item for key, value in settings.items()
            for item in (f"--{key}", f"{value:.6e}" if isinstance(value, float) else str(value))]


def run_ours_side(wl: Workload, out: Path, profile_step: int = 0) -> int:
    """Our GRPO (rlhf.rl.trainer.RLTrainer) on the workload, one timed ``step()`` per step; writes the result.

    ``profile_step`` > 0 runs that step under torch.profiler (its time is then not representative)."""
    import torch

    torch.set_num_threads(wl.threads)

    from common import MemoryTrace, StepClock, StepRecord, memory_policy, param_dtypes, write_side_result
    from rlhf.core.config import load_config
    from rlhf.rl.config import RLStageConfig
    from rlhf.core.lifecycle import seed_everything
    from rlhf.rl.factory import build_rl_trainer
    from rlhf.core.runtime import make_accelerator, resolve_dtype

    # 1. as the RL stage does: policy + LoRA (no value head for GRPO), the scorer, the trainer
    memory = MemoryTrace()
    memory.mark("start")
    cfg, _ = load_config(RLStageConfig, our_argv(wl))  # the dataclass defaults are the stage's defaults
    accelerator = make_accelerator()
    seed_everything(cfg.run.seed)
    dtype = resolve_dtype(cfg.train.precision, accelerator.device)
    # the reward model in the policy's precision, as TRL
    trainer = build_rl_trainer(cfg, accelerator, scorer=lambda tokenizer: ClassifierScorer(wl.reward_path, tokenizer, dtype),
                               prompts=wl.prompts)
    model, scorer = trainer.unwrapped, trainer.maker.scorer
    memory.mark("models loaded")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"[ours] torch {torch.__version__}; weights {str(dtype).replace('torch.', '')}; trainable params "
          f"{trainable:,}", flush=True)

    # 2. the steps, each timed whole, on the same prompts in the same order as TRL's
    steps, phases, clock = [], [], StepClock()
    for index in range(wl.num_steps):
        prompts = wl.prompts[index * wl.batch_size:(index + 1) * wl.batch_size]
        clock.start()
        if index + 1 == profile_step:
            metrics, table = profile_table(lambda: trainer.step(prompts))
            print(f"[ours] torch.profiler, step {profile_step}:\n{table}", flush=True)
        else:
            metrics = trainer.step(prompts)
        lap = clock.lap()
        steps.append(StepRecord(seconds=lap.seconds, cpu_seconds=lap.cpu_seconds,
                                foreign_cpu_seconds=lap.foreign_cpu_seconds,
                                generated_tokens=round(metrics["response/length"] * wl.rollouts_per_step),
                                generation_seconds=metrics["time/generate_s"]))
        phases.append({key[5:-2]: value for key, value in metrics.items() if key.startswith("time/")})
        memory.mark(f"step {len(steps)}")
        print(f"[ours] step {len(steps)}: {lap.seconds:.2f} s (others used {lap.foreign_cpu_seconds / lap.seconds:.2f} "
              f"cores), {steps[-1].generated_tokens} tokens, phases "
              + ", ".join(f"{k} {v:.2f}" for k, v in phases[-1].items()), flush=True)
    write_side_result(out, "ours", steps, {
        "precision": wl.precision, "compute_dtype": str(dtype).replace("torch.", ""),
        "weights": {"policy+LoRA": param_dtypes(model), "reward": param_dtypes(scorer.model)},
        "memory_policy": memory_policy("rlhf.rl.memory.release_freed_memory after loading, after sampling, "
                                       "before the update, at the end of each step"),
        "trainable_params": trainable, "phase_seconds": phases,
        "memory_trace": memory.points,
        "models_in_memory": "policy+LoRA (reference = adapters disabled), reward model",
    })
    return 0


# ---------------------------------------------------------------- orchestration, medians, the table


def side_command(side: str, python: str, workload: Path, out: Path) -> list[str]:
    if side == "ours":
        return [python, str(Path(__file__).resolve()), "--side", "ours", "--workload", str(workload), "--out", str(out)]
    return [python, str(BENCH_DIR / "trl_grpo_side.py"), "--workload", str(workload), "--out", str(out)]


def median_phases(runs: list[dict], warmup: int = 1) -> dict[str, float]:
    """Per phase (the step's time/* keys, or TRL's generate/reward/rest): the median over runs of each run's
    median over steps 2..N."""
    import statistics

    names = [name for name in runs[0].get("phase_seconds", [{}])[0]
             if all(name in step for r in runs for step in r["phase_seconds"])]
    return {name: statistics.median(statistics.median(step[name] for step in r["phase_seconds"][warmup:])
                                    for r in runs)
            for name in names}


def format_table(result: dict) -> str:
    ours, trl = result["sides"]["ours"], result["sides"]["trl"]
    wl, cpu, ratio = result["workload"], result["machine"]["cpu"], result["ratios"]
    lines = [
        f"GRPO, SmolLM2-135M-Instruct + SmolLM2-135M reward model: {wl['num_prompts']} prompts, "
        f"{wl['batch_size']} prompts x {wl['samples_per_prompt']} completions per step, {wl['max_new_tokens']} new "
        f"tokens, KL beta {wl['kl_coef']} (k3, in the loss), {wl['threads']} threads -> {wl['num_steps']} steps per "
        "run; LoRA on " + (f"decoder layers {wl['lora_layers']} (both sides)" if wl["lora_layers"] else
                           "every decoder layer") + f"; precision {result['precision']}",
        f"CPU: {cpu['model_name']} ({cpu['cpus']} CPUs, avx512_bf16 {cpu['avx512_bf16']}, amx_bf16 {cpu['amx_bf16']})",
        f"medians over {ours['runs']} (ours) / {trl['runs']} (TRL) fresh-process runs, alternating; each run's value "
        f"is its median over steps 2..{wl['num_steps']} (step 1 = warm-up, excluded)",
        "", f"{'':24}{'ours':>12}{SIDE_LABEL['trl']:>12}{'ours/TRL':>10}{'target':>9}",
    ]

    def row(name, a, b, ratio, target=None, fmt="{:.2f}"):
        verdict = f"  <= {target:.1f}  " + ("PASS" if ratio <= target else "MISS") if target is not None else ""
        lines.append(f"{name:24}{fmt.format(a):>12}{fmt.format(b):>12}{ratio:>9.2f}x{verdict}")

    row("seconds / step", ours["sec_per_step"], trl["sec_per_step"], ratio["sec_per_step"], TARGETS["sec_per_step"])
    if "sec_per_step_spread" in ratio:
        lines[-1] += "  (runs: {:.2f}-{:.2f}x)".format(*ratio["sec_per_step_spread"])
    row("peak RSS (GiB)", ours["peak_rss_bytes"] / GIB, trl["peak_rss_bytes"] / GIB, ratio["peak_rss"],
        TARGETS["peak_rss"])
    if "peak_rss_spread" in ratio:
        lines[-1] += "  (runs: {:.2f}-{:.2f}x)".format(*ratio["peak_rss_spread"])
    row("generated tokens / s", ours["tokens_per_s"], trl["tokens_per_s"], ratio["tokens_per_s"], fmt="{:.1f}")
    if "generation_seconds" in ours and "generation_seconds" in trl:
        row("  of which sampling (s)", ours["generation_seconds"], trl["generation_seconds"],
            ours["generation_seconds"] / trl["generation_seconds"])
    for side in SIDES:
        s = result["sides"][side]
        per_run = ", ".join(f"{x:.2f}" for x in s["sec_per_step_per_run"])
        rss = ", ".join(f"{x / GIB:.2f}" for x in s["peak_rss_bytes_per_run"])
        phases = ", ".join(f"{k} {v:.2f}" for k, v in s.get("phase_seconds", {}).items())
        lines.append(f"{SIDE_LABEL[side]:>9} per run: s/step [{per_run}]  peak RSS GiB [{rss}]; phases (s): {phases}")
    loads = [f"{r['side']}#{r['run']}: {r['load_before'][0]:.2f}->{r['load_after'][0]:.2f}" for r in result["runs"]]
    lines.append("load average (1 min) before->after each run: " + ", ".join(loads))
    return "\n".join(lines)


def run_benchmark(args) -> dict:
    from rlhf.models.zoo import rlhf_home

    work = Path(args.work_dir or rlhf_home() / "benchmarks" / time.strftime("rl_vs_trl-%Y%m%d-%H%M%S"))
    work.mkdir(parents=True, exist_ok=True)
    # 1. the peer's virtualenv
    trl_python = str(ensure_trl_venv(TRL_VENV, TRL_VERSION, TRL_PROBE))
    # 2. the workload (models and prompts), built in a subprocess so this process stays small
    workload_path = work / "workload.json"
    subprocess.run([sys.executable, __file__, "--prepare", str(workload_path), "--num-prompts", str(args.num_prompts),
                    "--lora-layers", args.lora_layers, "--precision", args.precision], check=True, env=child_env(2))
    wl = Workload.load(workload_path)
    # 3. alternate the sides, each in a fresh process
    pythons = {"ours": sys.executable, "trl": trl_python}
    runs, per_side = run_alternating([s for s in SIDES if s in args.sides], args.runs,
                                     lambda side, out: side_command(side, pythons[side], workload_path, out),
                                     work, wl.threads, args.timeout, SIDE_LABEL)
    # 4. medians, ratios
    sides = {side: {**aggregate(rs), "phase_seconds": median_phases(rs)} for side, rs in per_side.items() if rs}
    result = {"date": time.strftime("%Y-%m-%d %H:%M:%S"),
              "command": " ".join(["python", "benchmarks/" + Path(sys.argv[0]).name] + sys.argv[1:]),
              "machine": {"cpu": cpu_info(), "load_average_at_end": load_average()},
              "precision": wl.precision, "precision_requested": args.precision,
              "side_settings": side_settings(runs),
              "workload": {"num_prompts": len(wl.prompts), "batch_size": wl.batch_size,
                           "samples_per_prompt": wl.samples_per_prompt, "rollouts_per_step": wl.rollouts_per_step,
                           "mini_batch_size": wl.mini_batch_size, "micro_batch_size": wl.micro_batch_size,
                           "kl_coef": wl.kl_coef, "max_new_tokens": wl.max_new_tokens, "threads": wl.threads,
                           "num_steps": wl.num_steps, "temperature": wl.temperature, "learning_rate": wl.learning_rate,
                           "lora_r": wl.lora_r, "lora_alpha": wl.lora_alpha,
                           "lora_target_modules": wl.lora_target_modules, "lora_layers": wl.lora_layers,
                           "policy": wl.policy_path, "reward_model": wl.reward_path},
              "targets": TARGETS, "sides": sides, "runs": runs, "work_dir": str(work)}
    if set(sides) == set(SIDES):
        result["ratios"] = side_ratios(sides)
        result["meets_targets"] = {key: result["ratios"][key] <= target for key, target in TARGETS.items()}
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="Our GRPO vs TRL 1.16 GRPOTrainer: time/step, peak RSS, tokens/s")
    parser.add_argument("--runs", type=int, default=3, help="fresh-process runs per side, alternating A B A B")
    parser.add_argument("--num-prompts", type=int, default=64, help="8 per step: 64 = 8 steps per run")
    parser.add_argument("--lora-layers", default=json.dumps(list(DEFAULT_LORA_LAYERS)),
                        help="JSON list of adapted decoder layers on both sides, negatives from the top; [] = all")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                        help="both sides' weights and compute; auto: bf16 iff the CPU has native bf16 dot products")
    parser.add_argument("--sides", default="ours,trl", help="comma list; one side skips the ratios")
    parser.add_argument("--out", default=None, help="default: results/rl_vs_trl.json for the plain two-sided run "
                        "(-all-layers with --lora-layers []), results/rl_vs_trl-one-side.json otherwise")
    parser.add_argument("--work-dir", default=None, help="workload, per-run logs and results (default under RLHF_HOME)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per side run")
    parser.add_argument("--setup-only", action="store_true", help="create the TRL virtualenv and stop")
    parser.add_argument("--profile-step", type=int, default=0,
                        help="with --side ours: run this step under torch.profiler and print its top ops")
    # internal: what the subprocesses run
    parser.add_argument("--side", choices=["ours"], help=argparse.SUPPRESS)
    parser.add_argument("--prepare", help=argparse.SUPPRESS)
    parser.add_argument("--workload", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.sides = args.sides.split(",")
    if args.out is None:
        name = "rl_vs_trl" + ("" if json.loads(args.lora_layers) else "-all-layers") + (
            "" if args.precision == "auto" else f"-{args.precision}")
        args.out = str(BENCH_DIR / "results" / (f"{name}.json" if set(args.sides) == set(SIDES)
                                                else f"{name}-one-side.json"))

    return dispatch(args, (TRL_VENV, TRL_VERSION, TRL_PROBE),
                    prepare=lambda: prepare_workload(Path(args.prepare), args.num_prompts, lora_layers=json.loads(args.lora_layers),
                                 precision=resolve_precision(args.precision), **GRPO_WORKLOAD),
                    run_ours=lambda: run_ours_side(Workload.load(args.workload), Path(args.out), args.profile_step),
                    run_benchmark=run_benchmark, format_table=format_table)

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
