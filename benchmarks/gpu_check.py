"""The GPU check (issue #12, item 7): the whole demo pipeline on CUDA, then PPO on 2 GPUs when there are two.

One command on a CUDA machine (``precision: auto`` is bf16 there):

    python benchmarks/gpu_check.py                       # or: bash benchmarks/gpu_check.sh
    python benchmarks/gpu_check.py --dry-run             # print the commands, run nothing (any machine)

Each stage of ``rlhf pipeline --preset demo`` runs in a fresh child process (the pipeline reuses the stages
before it), which records its own ``torch.cuda.max_memory_allocated()``; beside each measured peak goes
``rlhf plan``'s prediction for the same setup (the plan's per-device total less its CPU runtime part, since CUDA
allocations hold no libraries). Then, with 2 GPUs, PPO on the demo's config under ``torchrun --nproc_per_node 2``.
Writes ``<out>/gpu_check.{json,md}`` with per-stage time, peak GPU memory, the plan, and PPO tokens/s.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GIB = 1024**3
STAGES = ["sft", "reward", "gold", "ppo", "eval"]  # the demo preset's stages, in order


def pipeline_argv(out: Path, upto: int) -> list[str]:
    stages = ", ".join(STAGES[:upto + 1])
    return ["pipeline", "--preset", "demo", "--stages", f"[{stages}]", "--run.device", "cuda",
            "--run.output_dir", str(out / "runs"), "--run.wandb_mode", "disabled"]


def child(result_file: str, argv: list[str]) -> int:
    """In the child: ``rlhf <argv>``, then this process's peak CUDA allocation."""
    import torch

    from rlhf.cli import main

    code = main(argv)
    Path(result_file).write_text(json.dumps({"returncode": code,
                                             "peak_allocated_bytes": torch.cuda.max_memory_allocated()}))
    return code


def run_child(out: Path, name: str, argv: list[str], launcher: list[str] | None = None) -> dict:
    result = out / f"{name}.child.json"
    cmd = [*(launcher or [sys.executable]), str(Path(__file__).resolve()), "--child", str(result), *argv]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT)
    record = json.loads(result.read_text()) if result.is_file() else {"returncode": proc.returncode}
    return {**record, "wall_s": time.perf_counter() - start, "command": " ".join(cmd)}


def planned_gib(stage) -> float | None:
    """``rlhf plan``'s per-device prediction for a resolved demo stage (None for stages it does not model)."""
    from rlhf.core.config import from_dict
    from rlhf.plan import PlanConfig, memory_plan, resolve_shapes

    cfg = stage.config
    if stage.name == "sft":
        sections = {"model": {"name": cfg.model.name}, "stage": "sft", "lora": vars(cfg.lora),
                    "train": {"precision": "bf16", "micro_batch": cfg.train.batch_size, "seq_len": cfg.train.max_length}}
    elif stage.name in ("reward", "gold"):
        sections = {"model": {"name": cfg.model.name}, "stage": "reward", "lora": vars(cfg.lora),
                    "train": {"precision": "bf16", "micro_batch": cfg.train.batch_size, "seq_len": cfg.model.max_length}}
    elif stage.name == "ppo":
        sections = {"model": {"name": "smollm2-135m-instruct"}, "stage": "ppo", "lora": vars(cfg.lora),
                    "train": {"precision": "bf16", "micro_batch": cfg.update.micro_batch_size},
                    "ppo": {"reward_model": "minilm-l6", "rollouts": cfg.update.batch_size,
                            "prompt_tokens": cfg.data.max_prompt_tokens, "new_tokens": cfg.generation.max_new_tokens}}
    else:
        return None
    plan_cfg = from_dict(PlanConfig, json.loads(json.dumps(sections, default=list)))
    shape, reward = resolve_shapes(plan_cfg)
    plan = memory_plan(shape, plan_cfg, reward)
    runtime = sum(p.bytes for p in plan.parts if p.name == "runtime")
    return (plan.total - runtime) / GIB


def ppo_tokens_per_s(run_dir: Path, rollouts_per_step: int) -> float | None:
    """Generated tokens per second of step time over a PPO run (its metrics.jsonl; ``response/length`` is the
    mean over every process's rollouts, ``rollouts_per_step`` counts all processes)."""
    from rlhf.core.tracking import read_metrics

    rows = [r for r in read_metrics(run_dir / "metrics.jsonl") if "time/step_s" in r]
    tokens = sum(r.get("response/length", 0.0) * rollouts_per_step for r in rows)
    seconds = sum(r["time/step_s"] for r in rows)
    return tokens / seconds if seconds and tokens else None


def write_report(out: Path, report: dict) -> None:
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    lines = [f"# GPU check ({report['gpu']}, {report['gpus']} GPU(s), torch {report['torch']})", "",
             "| stage | wall (s) | peak allocated (GiB) | rlhf plan (GiB) | ratio | exit |", "|---|---|---|---|---|---|"]
    for name, r in report["stages"].items():
        peak = r.get("peak_allocated_bytes", 0) / GIB
        plan = r.get("plan_gib")
        ratio = f"{plan / peak:.2f}" if plan and peak else "-"
        lines.append(f"| {name} | {r['wall_s']:.0f} | {peak:.2f} | {plan if plan is None else round(plan, 2)} | "
                     f"{ratio} | {r.get('returncode')} |")
    lines += ["", f"PPO generated tokens/s: {report.get('ppo_tokens_per_s')} (1 GPU), "
              f"{report.get('ppo_2gpu_tokens_per_s')} (2 GPUs)"]
    (out / "gpu_check.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu_check"))
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child[0], args.child[1:])
    out = Path(args.out)
    commands = [shlex.join(["rlhf", *pipeline_argv(out, i)]) for i in range(len(STAGES))]
    commands.append("torchrun --nproc_per_node 2 pipelines/ppo.py --config <the demo ppo stage's config.yaml> "
                    "(only with 2 or more GPUs)")
    if args.dry_run:
        print("\n".join(commands))
        return 0
    from rlhf.core.runtime import cuda_present

    if not cuda_present():
        print("error: benchmarks/gpu_check.py needs a CUDA device (--dry-run prints what it would run)", file=sys.stderr)
        return 2
    import torch

    from rlhf.core.config import load_config, save_config
    from rlhf.pipeline import PipelineConfig, resolve_stage

    out.mkdir(parents=True, exist_ok=True)
    report = {"gpu": torch.cuda.get_device_name(0), "gpus": torch.cuda.device_count(), "torch": torch.__version__,
              "stages": {}}
    from pipelines.run import PRESETS

    pipeline_cfg, _ = load_config(PipelineConfig, pipeline_argv(out, len(STAGES) - 1)[3:], PRESETS["demo"])
    for i, name in enumerate(STAGES):  # 1. the demo, one stage per process
        record = run_child(out, name, pipeline_argv(out, i))
        record["plan_gib"] = planned_gib(resolve_stage(pipeline_cfg, name))
        report["stages"][name] = record
        if record.get("returncode") != 0:
            break
    ppo = resolve_stage(pipeline_cfg, "ppo")
    rollouts = ppo.config.rollouts_per_step
    report["ppo_tokens_per_s"] = ppo_tokens_per_s(ppo.run_dir, rollouts) if ppo.run_dir.is_dir() else None
    if torch.cuda.device_count() >= 2 and report["stages"].get("ppo", {}).get("returncode") == 0:  # 2. PPO on 2 GPUs
        config = out / "ppo-2gpu.yaml"
        save_config(ppo.config, config)
        argv = ["--config", str(config), "--run.run_name", "ppo-2gpu"]
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
        report["stages"]["ppo (2 GPUs)"] = run_child(out, "ppo-2gpu", ["rl", *argv], launcher)
        report["ppo_2gpu_tokens_per_s"] = ppo_tokens_per_s(Path(ppo.config.run.output_dir) / "ppo-2gpu", 2 * rollouts)
    write_report(out, report)
    return 0 if all(r.get("returncode") == 0 for r in report["stages"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
