"""Our PPO against TRL 1.12's PPOTrainer on one workload: seconds per step, peak RSS, tokens/s, ratios.

    flock /tmp/rlhf-cpu.lock python benchmarks/ppo_vs_trl.py            # both sides, A B A B, ~10 min

Steps (each side runs in its own fresh subprocess, so peak RSS is that side's alone):
  1. the peer's virtualenv (benchmarks/.venv-trl112: torch==2.13.0 first, then trl==1.12.0 + peft), reused
  2. the workload: SmolLM2-135M-Instruct policy, one SmolLM2-135M sequence classifier as the reward model
     (a seeded random score head, saved once), 64 HH-harmless train prompts rendered with the chat template
  3. this machine's bf16 and fp32 matmul peaks (2048 x 2048, median of several timed loops)
  4. runs alternating ours, TRL, ours, TRL ... (--runs per side), load average before and after each
  5. medians over runs, ratios ours/TRL, training-phase model FLOP/s; JSON to benchmarks/results/
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

from common import (DEFAULT_LORA_LAYERS, GIB, QUIET_FOREIGN_CORES, Workload, cpu_info, load_average,  # noqa: E402
                    resolve_precision)
from harness import (ClassifierScorer, aggregate, child_env, dispatch, ensure_trl_venv, prepare_workload,  # noqa: E402
                     profile_table, run_alternating, side_ratios, side_settings)

TRL_VENV = BENCH_DIR / ".venv-trl112"
TRL_VERSION = "1.12.0"  # with our torch, peft, transformers, accelerate and datasets versions (harness.py)
TRL_PROBE = "from trl.experimental.ppo import PPOTrainer"
TARGETS = {"sec_per_step": 0.4, "peak_rss": 0.4}  # ours / TRL must be at most this


# ---------------------------------------------------------------- our side (run in its own subprocess)


def our_config(wl: Workload):
    """Our shipped PPO defaults (RLStageConfig's), set to the benchmark's workload."""
    from rlhf.core.config import load_config
    from rlhf.rl.config import PPOStageConfig

    overrides = {
        "model.name": wl.policy_path, "update.batch_size": wl.batch_size, "update.mini_batch_size": wl.mini_batch_size,
        "update.epochs": wl.ppo_epochs,  # micro-batch and forward batch: our defaults (1 rollout, padding-free)
        "generation.max_new_tokens": wl.max_new_tokens, "generation.temperature": wl.temperature,
        "generation.batch_size": wl.batch_size, "lora.r": wl.lora_r, "lora.alpha": wl.lora_alpha,
        "lora.target_modules": json.dumps(wl.lora_target_modules), "lora.layers": json.dumps(wl.lora_layers),
        "train.max_steps": wl.num_steps,
        "train.learning_rate": wl.learning_rate, "train.threads": wl.threads, "train.save_steps": 0,
        "train.sample_every": 0, "data.shuffle": "false", "run.seed": wl.seed, "run.wandb_mode": "disabled",
        "train.precision": wl.precision,  # resolved once for both sides (common.resolve_precision)
    }
    overrides.update(wl.our_overrides)
    # Flag values are read as YAML 1.1, where "1e-05" is a string: floats are written with a dot.
    argv = [item for key, value in overrides.items()
            for item in (f"--{key}", f"{value:.6e}" if isinstance(value, float) else str(value))]
    cfg, _ = load_config(PPOStageConfig, argv)
    return cfg


def run_ours_side(wl: Workload, out: Path, profile_step: int = 0) -> int:
    """Our PPO trainer on the workload, one timed ``step()`` per PPO step; writes the side's result JSON.

    ``profile_step`` > 0 runs that step under torch.profiler (its time is then not representative)."""
    import torch

    torch.set_num_threads(wl.threads)

    from common import (MemoryTrace, StepClock, StepRecord, forward_flops, lora_train_flops, memory_policy,
                        param_dtypes, write_side_result)
    from rlhf.core.lifecycle import seed_everything
    from rlhf.rl.factory import build_rl_trainer
    from rlhf.core.runtime import make_accelerator, resolve_dtype

    # 1. as pipelines/ppo.py does: policy + LoRA + value head, the scorer, the trainer
    memory = MemoryTrace()
    memory.mark("start")
    cfg = our_config(wl)
    accelerator = make_accelerator()
    seed_everything(cfg.run.seed)
    dtype = resolve_dtype(cfg.train.precision, accelerator.device)
    # rl.algo ppo: the policy gets its value head; the reward model in TRL's side's dtype
    trainer = build_rl_trainer(cfg, accelerator, scorer=lambda tokenizer: ClassifierScorer(wl.reward_path, tokenizer, dtype),
                               prompts=wl.prompts)
    scorer = trainer.maker.scorer
    memory.mark("models loaded")

    # 2. count what goes through forward+backward in the update: a pre-hook on the model sees every call;
    #    calls with grad enabled are the update's (rollout forwards run under no_grad)
    lm = trainer.unwrapped.causal_lm
    head_params = lm.get_output_embeddings().weight.numel()
    # The update runs the decoder layers above the frozen trunk (all of them without one) and the final norm.
    trunk = trainer.unwrapped.trunk_depth
    below_trunk = {id(p) for layer in lm.get_decoder().layers[:trunk] for p in layer.parameters()}
    body_params = sum(p.numel() for name, p in lm.named_parameters()
                      if "embed_tokens" not in name and "lm_head" not in name and "lora_" not in name
                      and id(p) not in below_trunk)
    lora_params = sum(p.numel() for p in trainer.unwrapped.parameters() if p.requires_grad)
    counted = {"tokens": 0, "forward_flops": 0.0, "train_flops": 0.0}

    def count_update_tokens(_module, args):
        if not torch.is_grad_enabled():
            return
        input_ids, attention_mask, response_start = args[:3]
        tokens = int(attention_mask.sum())
        head_tokens = int(attention_mask[:, response_start:].sum())  # the LM head runs on response positions
        fwd = forward_flops(body_params, tokens, head_params, head_tokens)
        counted["tokens"] += tokens
        counted["forward_flops"] += fwd
        counted["train_flops"] += lora_train_flops(fwd, lora_params, tokens)

    trainer.unwrapped.register_forward_pre_hook(count_update_tokens)

    # 3. the PPO steps, each timed whole
    steps, phases, clock = [], [], StepClock()
    for _ in range(wl.num_steps):
        counted.update(tokens=0, forward_flops=0.0, train_flops=0.0)
        clock.start()
        if len(steps) + 1 == profile_step:
            metrics, table = profile_table(trainer.step)
            print(f"[ours] torch.profiler, step {profile_step}:\n{table}", flush=True)
        else:
            metrics = trainer.step()
        lap = clock.lap()
        steps.append(StepRecord(seconds=lap.seconds, cpu_seconds=lap.cpu_seconds,
                                foreign_cpu_seconds=lap.foreign_cpu_seconds,
                                generated_tokens=round(metrics["response/length"] * wl.batch_size),
                                generation_seconds=metrics["time/generate_s"], train_seconds=metrics["time/update_s"],
                                train_tokens=counted["tokens"], train_flops=counted["train_flops"],
                                train_forward_flops=counted["forward_flops"]))
        phases.append({key[5:-2]: value for key, value in metrics.items() if key.startswith("time/")})
        memory.mark(f"step {len(steps)}")
        print(f"[ours] step {len(steps)}: {lap.seconds:.2f} s (others used {lap.foreign_cpu_seconds / lap.seconds:.2f} "
              f"cores), {steps[-1].generated_tokens} tokens, phases "
              + ", ".join(f"{k} {v:.2f}" for k, v in phases[-1].items()), flush=True)
    write_side_result(out, "ours", steps, {
        "precision": wl.precision, "compute_dtype": str(dtype).replace("torch.", ""),
        "weights": {"policy+value head": param_dtypes(trainer.unwrapped), "reward": param_dtypes(scorer.model)},
        "memory_policy": memory_policy("rlhf.rl.memory.release_freed_memory after loading, after sampling, "
                                       "before the update, at the end of each step"),
        "trainable_params": lora_params, "trunk_depth": trunk,
        "model_body_params": body_params, "model_head_params": head_params, "phase_seconds": phases,
        "memory_trace": memory.points,
        "models_in_memory": "policy+LoRA+value head (reference = adapters disabled), reward model",
    })
    return 0


# ---------------------------------------------------------------- 4-5. orchestration, aggregation, the table

SIDES = ("ours", "trl")
SIDE_LABEL = {"ours": "ours", "trl": "TRL 1.12"}


def side_command(side: str, python: str, workload: Path, out: Path) -> list[str]:
    if side == "ours":
        return [python, str(Path(__file__).resolve()), "--side", "ours", "--workload", str(workload), "--out", str(out)]
    return [python, str(BENCH_DIR / "trl_ppo_side.py"), "--workload", str(workload), "--out", str(out)]


def training_flops_report(ours_runs: list[dict], peaks: dict[str, dict]) -> dict | None:
    """Model FLOP/s of our optimisation phase (common.lora_train_flops) against the measured matmul peaks."""
    runs = [r for r in ours_runs if "train_flops_per_s_median" in r]
    if not runs:
        return None
    achieved = statistics.median(r["train_flops_per_s_median"] for r in runs)
    return {"formula": "LoRA on a frozen base: forward F = 2*(N_body*T + N_head*T_response); backward = F "
                       "(activation grads through the frozen matmuls) + 2*N_lora*T (adapter weight grads); "
                       "T = non-pad tokens; N_body = the decoder layers the update runs (those above the "
                       f"frozen trunk of {runs[0].get('trunk_depth', 0)} layers); attention seq^2 terms ignored",
            "N_body": runs[0]["model_body_params"], "N_head": runs[0]["model_head_params"],
            "N_lora": runs[0]["trainable_params"], "compute_dtype": runs[0]["compute_dtype"],
            "train_tokens_per_s": statistics.median(r["train_tokens_per_s_median"] for r in runs),
            "achieved_flops_per_s": achieved,
            "achieved_if_counted_as_full_6NT_flops_per_s":
                statistics.median(r["train_full_6nt_flops_per_s_median"] for r in runs),
            "fraction_of_peak": {dtype: achieved / peak["flops_per_s_median"] for dtype, peak in peaks.items()}}


def format_table(result: dict) -> str:
    ours, trl = result["sides"]["ours"], result["sides"]["trl"]
    ratios, wl = result["ratios"], result["workload"]
    cpu = result.get("machine", {}).get("cpu", {})
    lines = [
        f"PPO, SmolLM2-135M-Instruct + SmolLM2-135M reward model: {wl['num_prompts']} prompts, batch "
        f"{wl['batch_size']}, mini-batch {wl['mini_batch_size']}, {wl['max_new_tokens']} new tokens, "
        f"{wl['ppo_epochs']} PPO epoch, {wl['threads']} threads -> {wl['num_steps']} steps per run; LoRA on "
        + (f"decoder layers {wl['lora_layers']} (both sides)" if wl.get("lora_layers") else "every decoder layer")
        + f"; precision {result.get('precision')} on both sides",
        f"CPU: {cpu.get('model_name')} ({cpu.get('cpus')} CPUs, avx512_bf16 {cpu.get('avx512_bf16')}, "
        f"amx_bf16 {cpu.get('amx_bf16')})",
        f"medians over {ours['runs']} (ours) / {trl['runs']} (TRL) fresh-process runs, alternating; "
        f"each run's value is its median over steps 2..{wl['num_steps']} (step 1 = warm-up, excluded)",
    ]
    if trl.get("from"):
        lines.append(f"TRL's side is taken from an earlier run: {trl['from']}")
    if wl.get("our_overrides"):
        lines.append("our side is a variant: " + ", ".join(f"{k}={v}" for k, v in wl["our_overrides"].items()))
    lines += ["", f"{'':24}{'ours':>12}{'TRL 1.12':>12}{'ours/TRL':>10}{'target':>9}"]

    def row(name, a, b, ratio, target=None, fmt="{:.2f}"):
        verdict = ""
        if target is not None:
            verdict = f"  <= {target:.1f}  " + ("PASS" if ratio <= target else "MISS")
        lines.append(f"{name:24}{fmt.format(a):>12}{fmt.format(b):>12}{ratio:>9.2f}x{verdict}")

    row("seconds / PPO step", ours["sec_per_step"], trl["sec_per_step"], ratios["sec_per_step"],
        TARGETS["sec_per_step"])
    if "sec_per_step_spread" in ratios:
        lines[-1] += "  (runs: {:.2f}-{:.2f}x)".format(*ratios["sec_per_step_spread"])
    if ours.get("sec_per_step_quiet") and trl.get("sec_per_step_quiet"):
        row(f"  quiet steps only", ours["sec_per_step_quiet"], trl["sec_per_step_quiet"],
            ours["sec_per_step_quiet"] / trl["sec_per_step_quiet"])
        lines[-1] += (f"   ({ours['quiet_steps']}/{ours['counted_steps']} ours, {trl['quiet_steps']}/"
                      f"{trl['counted_steps']} TRL steps with others < {QUIET_FOREIGN_CORES} core)")
    if "cpu_sec_per_step" in ours and "cpu_sec_per_step" in trl:
        row("  CPU-seconds / step", ours["cpu_sec_per_step"], trl["cpu_sec_per_step"],
            ours["cpu_sec_per_step"] / trl["cpu_sec_per_step"])
    row("peak RSS (GiB)", ours["peak_rss_bytes"] / GIB, trl["peak_rss_bytes"] / GIB, ratios["peak_rss"],
        TARGETS["peak_rss"])
    if "peak_rss_spread" in ratios:
        lines[-1] += "  (runs: {:.2f}-{:.2f}x)".format(*ratios["peak_rss_spread"])
    if "peak_rss_after_load_bytes" in ours and "peak_rss_after_load_bytes" in trl:
        row("  of which by loading", ours["peak_rss_after_load_bytes"] / GIB, trl["peak_rss_after_load_bytes"] / GIB,
            ours["peak_rss_after_load_bytes"] / trl["peak_rss_after_load_bytes"])
    row("generated tokens / s", ours["tokens_per_s"], trl["tokens_per_s"], ratios["tokens_per_s"], fmt="{:.1f}")
    if "generation_seconds" in ours and "generation_seconds" in trl:
        row("  of which sampling (s)", ours["generation_seconds"], trl["generation_seconds"],
            ours["generation_seconds"] / trl["generation_seconds"])
    for side in SIDES:
        s = result["sides"][side]
        per_run = ", ".join(f"{x:.2f}" for x in s["sec_per_step_per_run"])
        rss = ", ".join(f"{x / GIB:.2f}" for x in s["peak_rss_bytes_per_run"])
        lines.append(f"{SIDE_LABEL[side]:>9} per run: s/step [{per_run}]  peak RSS GiB [{rss}]")
    loads = [f"{r['side']}#{r['run']}: {r['load_before'][0]:.2f}->{r['load_after'][0]:.2f}" for r in result["runs"]]
    lines.append("load average (1 min) before->after each run: " + ", ".join(loads))
    flops = result.get("training_flops")
    for dtype, peak in result["matmul_peaks"].items():
        lines.append(f"{dtype} matmul peak ({peak['n']}x{peak['n']}, {peak['threads']} threads, median of "
                     f"{peak['repeats']}): {peak['flops_per_s_median'] / 1e9:.2f} GFLOP/s")
    if flops:
        shares = ", ".join(f"{100 * share:.0f}% of the {dtype} peak" for dtype, share in flops["fraction_of_peak"].items())
        lines.append(f"ours, training phase ({flops['compute_dtype']}, {flops['train_tokens_per_s']:.0f} tokens/s): "
                     f"{flops['achieved_flops_per_s'] / 1e9:.2f} GFLOP/s model FLOPs = {shares}")
        lines.append(f"  formula: {flops['formula']} (N_body={flops['N_body'] / 1e6:.1f}M, "
                     f"N_head={flops['N_head'] / 1e6:.1f}M, N_lora={flops['N_lora'] / 1e6:.2f}M); counted as full "
                     f"fine-tuning (6NT) it would be {flops['achieved_if_counted_as_full_6NT_flops_per_s'] / 1e9:.2f} GFLOP/s")
    return "\n".join(lines)


def measure_peak(dtype: str, threads: int, n: int = 2048, repeats: int = 5) -> dict:
    """In a subprocess, so this process never loads torch (its RSS would leak into forked children)."""
    done = subprocess.run([sys.executable, str(BENCH_DIR / "common.py"), "peak", dtype, str(n), str(repeats)],
                          check=True, capture_output=True, text=True, env=child_env(threads))
    peak = json.loads(done.stdout)
    print(f"{dtype} matmul peak ({n}x{n}, {threads} threads): {peak['flops_per_s_median'] / 1e9:.1f} GFLOP/s",
          flush=True)
    return peak


def run_benchmark(args) -> dict:
    from rlhf.models.zoo import rlhf_home

    work = Path(args.work_dir or rlhf_home() / "benchmarks" / time.strftime("ppo_vs_trl-%Y%m%d-%H%M%S"))
    work.mkdir(parents=True, exist_ok=True)
    # 1. the peer's virtualenv
    trl_python = str(ensure_trl_venv(TRL_VENV, TRL_VERSION, TRL_PROBE))
    # 2. the workload (models and prompts), built in a subprocess so this process stays small
    workload_path = work / "workload.json"
    subprocess.run([sys.executable, __file__, "--prepare", str(workload_path), "--num-prompts", str(args.num_prompts),
                    "--lora-layers", args.lora_layers, "--precision", args.precision]
                   + [item for setting in args.ours_set for item in ("--ours-set", setting)], check=True, env=child_env(2))
    wl = Workload.load(workload_path)
    # 3. this machine's matmul peaks, measured now under the same load: bf16 (what the issue asks for) and
    #    fp32 (this CPU may lack bf16 dot-product instructions, and then fp32 is the real ceiling)
    peaks = {dtype: measure_peak(dtype, wl.threads) for dtype in ("bfloat16", "float32")}
    # 4. alternate the sides, each in a fresh process
    pythons = {"ours": sys.executable, "trl": trl_python}
    runs, per_side = run_alternating(
        [s for s in SIDES if s in args.sides], args.runs,
        lambda side, out: side_command(side, pythons[side], workload_path, out),
        work, wl.threads, args.timeout, SIDE_LABEL)
    # 5. medians, ratios, FLOP/s
    sides = {side: aggregate(rs) for side, rs in per_side.items() if rs}
    if "trl" not in sides and args.trl_from:  # a variant of ours against an earlier run's TRL side
        earlier = json.loads(Path(args.trl_from).read_text())
        sides["trl"] = {**earlier["sides"]["trl"], "from": f"{args.trl_from} ({earlier['date']})"}
        runs += [r for r in earlier["runs"] if r["side"] == "trl"]
    result = {"date": time.strftime("%Y-%m-%d %H:%M:%S"),
              "command": " ".join(["python", "benchmarks/" + Path(sys.argv[0]).name] + sys.argv[1:]),
              "machine": {"cpus": os.cpu_count(), "cpu": cpu_info(), "load_average_at_end": load_average()},
              "precision": wl.precision, "precision_requested": args.precision,
              "side_settings": side_settings(runs),
              "workload": {"num_prompts": len(wl.prompts), "batch_size": wl.batch_size,
                           "mini_batch_size": wl.mini_batch_size, "max_new_tokens": wl.max_new_tokens,
                           "ppo_epochs": wl.ppo_epochs, "threads": wl.threads, "num_steps": wl.num_steps,
                           "temperature": wl.temperature, "lora_r": wl.lora_r, "lora_alpha": wl.lora_alpha,
                           "lora_target_modules": wl.lora_target_modules, "lora_layers": wl.lora_layers,
                           "our_overrides": wl.our_overrides,
                           "policy": wl.policy_path,
                           "reward_model": wl.reward_path},
              "targets": TARGETS, "matmul_peaks": peaks, "sides": sides, "runs": runs, "work_dir": str(work)}
    if set(sides) == set(SIDES):
        result["ratios"] = side_ratios(sides)
        result["meets_targets"] = {key: result["ratios"][key] <= target for key, target in TARGETS.items()}
    result["training_flops"] = training_flops_report(per_side["ours"], peaks)
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="Our PPO vs TRL 1.12 PPOTrainer: time/step, peak RSS, tokens/s")
    parser.add_argument("--runs", type=int, default=3, help="fresh-process runs per side, alternating A B A B")
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--lora-layers", default=json.dumps(list(DEFAULT_LORA_LAYERS)),
                        help="JSON list of adapted decoder layers on both sides, negatives from the top; [] = all")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                        help="both sides' weights and compute; auto: bf16 iff the CPU has native bf16 dot products")
    parser.add_argument("--sides", default="ours,trl", help="comma list; one side skips the ratios")
    parser.add_argument("--out", default=None, help="default: results/ppo_vs_trl.json for the plain two-sided "
                        "run, results/ppo_vs_trl-variant.json otherwise (so a variant never overwrites it); "
                        "-all-layers in the name with --lora-layers []")
    parser.add_argument("--trl-from", default=None, metavar="RESULTS_JSON",
                        help="with --sides ours: take TRL's medians from an earlier results file for the ratios")
    parser.add_argument("--work-dir", default=None, help="workload, per-run logs and results (default under RLHF_HOME)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per side run")
    parser.add_argument("--setup-only", action="store_true", help="create the TRL virtualenv and stop")
    parser.add_argument("--ours-set", action="append", default=[], metavar="KEY=VALUE",
                        help="a variant of our side: config override, e.g. update.micro_batch_size=2 (repeatable)")
    parser.add_argument("--profile-step", type=int, default=0,
                        help="with --side ours: run this step under torch.profiler and print its top ops")
    # internal: what the subprocesses run
    parser.add_argument("--side", choices=["ours"], help=argparse.SUPPRESS)
    parser.add_argument("--prepare", help=argparse.SUPPRESS)
    parser.add_argument("--workload", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.sides = args.sides.split(",")
    if args.out is None:
        plain = set(args.sides) == set(SIDES) and not args.ours_set
        name = "ppo_vs_trl" + ("" if json.loads(args.lora_layers) else "-all-layers") + (
            "" if args.precision == "auto" else f"-{args.precision}")
        args.out = str(BENCH_DIR / "results" / (f"{name}.json" if plain else f"{name}-variant.json"))

    return dispatch(args, (TRL_VENV, TRL_VERSION, TRL_PROBE),
                    prepare=lambda: prepare_workload(Path(args.prepare), args.num_prompts, lora_layers=json.loads(args.lora_layers),
                                 precision=resolve_precision(args.precision), our_overrides=dict(s.split("=", 1) for s in args.ours_set)),
                    run_ours=lambda: run_ours_side(Workload.load(args.workload), Path(args.out), args.profile_step),
                    run_benchmark=run_benchmark, format_table=format_table)

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
