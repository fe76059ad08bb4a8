"""QLoRA's memory saving on CPU: the SFT, reward and RL stages' model loaded float and 4-bit NF4 (SFT also bf16),
then a few LoRA steps of that stage.

Each (stage, setting) runs in its own child process, so each peak RSS is that setting's alone. Per run it reports
the weights' size as transformers counts it (``get_memory_footprint``), the process RSS once the model is
loaded, the peak RSS over load + ``--steps`` steps, and seconds per step. The steps are the stages' own code:
SFT: LoRA SFT steps (TRL SFTTrainer, as ``rlhf sft`` runs them); reward: ``train_reward_model`` (LoRA on every
layer + the HHH heads, a few dev pairs, no trunk cache); RL: ``RLTrainer`` steps of PPO against the toy reward
(no reward model loaded, so the policy's memory is what is measured; the float base samples with the fast
sampler, the quantized one with the plain sampler it falls back to). Run it under the lock; the results file
keeps the rows of the stages not run this time:

    flock /tmp/rlhf-cpu.lock python benchmarks/qlora_memory.py --out benchmarks/results/qlora_memory.json
    flock /tmp/rlhf-cpu.lock python benchmarks/qlora_memory.py --stages reward,rl --settings fp32,nf4 ...
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))  # common, as the other benchmarks import it

import common  # noqa: E402

SETTINGS = {  # name -> (model.dtype, model.quantization)
    "fp32": ("float32", "none"),
    "bf16": ("bfloat16", "none"),
    "nf4": ("float32", "4bit"),
    "int8": ("float32", "8bit"),
}
STAGES = ("sft", "reward", "rl")


def rss_mib() -> float:
    """This process's resident set size now, in MiB."""
    return common.current_rss_bytes(os.getpid()) / 2**20


def peak_rss_mib() -> float:
    """This process's peak resident set since exec, in MiB (VmHWM: never the parent's pages a fork carried)."""
    return common.own_peak_rss_bytes() / 2**20


def child(stage: str, setting: str, model: str, steps: int) -> dict:
    """One (stage, setting), in this process: load, then ``steps`` steps of the stage; sizes in MiB."""
    import torch

    dtype_name, quantization = SETTINGS[setting]
    before = rss_mib()
    run = {"sft": sft_steps, "reward": reward_steps, "rl": rl_steps}[stage]
    out_dir = Path("/tmp") / f"qlora-memory-{stage}-{setting}"
    loaded, seconds, done, first_loss = run(model, dtype_name, quantization, steps, out_dir)
    return {"stage": stage, "setting": setting, "dtype": dtype_name, "quantization": quantization,
            "weights_footprint_mib": round(loaded["footprint"], 1), "rss_before_load_mib": round(before, 1),
            "rss_loaded_mib": round(loaded["rss"], 1), "peak_rss_mib": round(peak_rss_mib(), 1),
            "steps": done, "seconds_per_step": round(seconds / max(1, done), 2),
            "first_loss": first_loss, "torch_threads": torch.get_num_threads()}


def sft_steps(model: str, dtype_name: str, quantization: str, steps: int, out_dir: Path):
    """LoRA SFT steps (TRL SFTTrainer): (loaded sizes, seconds, steps, first loss)."""
    import torch

    from rlhf.core.config import load_config
    from rlhf.models.quantization import check_backend, keep_backward, load_kwargs
    from rlhf.sft.config import SFTStageConfig
    from rlhf.sft.data import encode_records, to_dataset, training_mixture
    from rlhf.sft.trainer import MetricsLoggerCallback, build_trainer
    from rlhf.core.tracking import MetricsLogger
    from rlhf.models.zoo import load_causal_lm, load_tokenizer

    cfg, _ = load_config(SFTStageConfig, [
        "--model.name", model, "--model.dtype", dtype_name, "--model.quantization", quantization,
        "--data.mixture", "[{source: dialogsum, max_examples: 64}]", "--data.num_examples", str(4 * steps),
        "--train.max_steps", str(steps), "--train.batch_size", "4", "--train.max_length", "384",
        "--train.precision", "fp32", "--train.save_steps", str(10 * steps), "--lora.layers", "[]",
        "--run.output_dir", str(out_dir), "--run.wandb_mode", "disabled", "--forgetting.enabled", "false"])
    check_backend(quantization)
    tokenizer = load_tokenizer(model)
    dtype = getattr(torch, dtype_name)
    policy = keep_backward(load_causal_lm(model, dtype=dtype, **load_kwargs(quantization, dtype)))
    loaded = {"rss": rss_mib(), "footprint": policy.get_memory_footprint() / 2**20}
    encoded, _ = encode_records(tokenizer, training_mixture(cfg.data, cfg.run.seed), cfg.train.max_length)
    tracker = MetricsLoggerCallback(MetricsLogger(out_dir, cfg.run, "sft", enabled=False))
    trainer = build_trainer(cfg, policy, tokenizer, to_dataset(encoded), None, out_dir, tracker, bf16=False)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    return loaded, seconds, trainer.state.global_step, losses[0] if losses else None


def reward_steps(model: str, dtype_name: str, quantization: str, steps: int, out_dir: Path):
    """The reward stage (``train_reward_model``) for ``steps`` steps of 4 pairs, LoRA on every layer; the load
    is measured where the stage builds its model."""
    import shutil

    from reward_models import train as reward_train
    from rlhf.core.config import load_config
    from reward_models.config import RewardStageConfig
    from rlhf.core.tracking import read_metrics

    if dtype_name != "float32":
        raise SystemExit("reward: the stage keeps float32 weights; run it with fp32, nf4 or int8")
    cfg, _ = load_config(RewardStageConfig, [
        "--model.name", model, "--model.quantization", quantization, "--lora.enabled", "true",
        "--model.max_length", "256", "--data.max_train_pairs_per_head", str(4 * steps),
        "--train.max_steps", str(steps), "--train.batch_size", "4", "--train.precision", "fp32",
        "--train.trunk_cache", '"off"', "--train.save_steps", "0", "--eval.max_pairs_per_head", "4",
        "--eval.batch_size", "8", "--eval.test", "false", "--run.output_dir", str(out_dir), "--run.run_name", "rm",
        "--run.wandb_mode", "disabled", "--run.log_every", "1"])
    shutil.rmtree(out_dir, ignore_errors=True)
    loaded = {}
    build = reward_train.new_reward_model

    def measured(*args, **kwargs):
        out = build(*args, **kwargs)
        loaded.update(rss=rss_mib(), footprint=out[0].hf_model.get_memory_footprint() / 2**20)
        return out

    reward_train.new_reward_model = measured
    run_dir = reward_train.train_reward_model(cfg)
    records = list(read_metrics(run_dir / "metrics.jsonl"))
    summary = json.loads((run_dir / "summary.json").read_text())
    losses = [r["loss/pairwise"] for r in records if "loss/pairwise" in r]
    return loaded, summary["train/seconds"], summary["train/steps"], losses[0] if losses else None


def rl_steps(model: str, dtype_name: str, quantization: str, steps: int, out_dir: Path):
    """PPO steps (``RLTrainer``, the stage's default LoRA on the top 8 layers) against the toy reward."""
    import torch

    from rlhf.core.config import RunConfig, load_config
    from rlhf.rl.config import RLStageConfig
    from rlhf.rl.factory import build_rl_trainer
    from rlhf.models.quantization import check_backend

    cfg, _ = load_config(RLStageConfig, [
        "--model.name", model, "--model.quantization", quantization, "--train.precision",
        "bf16" if dtype_name == "bfloat16" else "fp32", "--reward.kind", "toy", "--data.sources", "[truthfulqa]",
        "--data.max_prompts", "64", "--update.batch_size", "4", "--update.mini_batch_size", "4",
        "--update.micro_batch_size", "2", "--generation.max_new_tokens", "24", "--train.max_steps", str(steps),
        "--train.save_steps", "0", "--train.sample_every", "0", "--data.eval_prompts", "0"])
    cfg.run = RunConfig(output_dir=str(out_dir), run_name="rl", wandb_mode="disabled")
    check_backend(quantization, "model.quantization")
    # reward.kind toy: the token-count scorer; "loaded" is measured once the trainer is built (its optimizer
    # state is made at the first step, so this is still the weights plus the prompts)
    trainer = build_rl_trainer(cfg, dtype=getattr(torch, dtype_name))
    loaded = {"rss": rss_mib(), "footprint": trainer.unwrapped.causal_lm.get_memory_footprint() / 2**20}
    history = trainer.train(steps)
    return loaded, sum(m["time/step_s"] for m in history), len(history), history[0].get("loss/policy")


def table(rows: list[dict]) -> str:
    base = next((r for r in rows if r["setting"] == "fp32"), rows[0])
    lines = ["| base weights | footprint (MiB) | RSS loaded (MiB) | peak RSS, load + steps (MiB) | peak vs fp32 | s / step |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['setting']} | {r['weights_footprint_mib']} | {r['rss_loaded_mib']} | {r['peak_rss_mib']} "
                     f"| {r['peak_rss_mib'] / base['peak_rss_mib']:.2f}x | {r['seconds_per_step']} |")
    return "\n".join(lines) + "\n"


WHAT = {"sft": "SFT: LoRA r16 on q/k/v/o of every layer, batch 4, max length 384",
        "reward": "reward: LoRA r16 (peft's default targets) on every layer + 3 heads, batch 4 pairs, max length 256",
        "rl": "RL (PPO, toy reward): LoRA r16 on the top 8 layers + value head, 4 prompts x 24 new tokens"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated: {', '.join(STAGES)}")
    parser.add_argument("--settings", default="fp32,bf16,nf4",
                        help=f"comma-separated: {', '.join(SETTINGS)} (reward: bf16 is skipped, it trains float32)")
    parser.add_argument("--steps", type=int, default=3, help="steps per (stage, setting)")
    parser.add_argument("--out", default="runs/bench/qlora_memory.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        stage, setting = args.child.split(":")
        print("RESULT " + json.dumps(child(stage, setting, args.model, args.steps)))
        return 0
    out = Path(args.out)
    stages, settings = args.stages.split(","), args.settings.split(",")
    old = json.loads(out.read_text()) if out.is_file() else {}
    command = "flock /tmp/rlhf-cpu.lock python benchmarks/qlora_memory.py " + " ".join(sys.argv[1:])
    # rows of the (stage, setting) pairs not run now stay; a file from before the reward and RL stages holds SFT
    # rows with one command for all
    rows = [r if "stage" in r else {"stage": "sft", "command": old.get("command"), **r} for r in old.get("rows", [])]
    rows = [r for r in rows if not (r["stage"] in stages and r["setting"] in settings)]
    for stage in stages:
        for setting in settings:
            if stage == "reward" and SETTINGS[setting][0] != "float32":
                continue
            proc = subprocess.run([sys.executable, __file__, "--child", f"{stage}:{setting}", "--model", args.model,
                                   "--steps", str(args.steps)], capture_output=True, text=True)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if proc.returncode or line is None:
                print(proc.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"{stage} {setting}: the child failed (exit {proc.returncode})")
            rows.append({**json.loads(line.removeprefix("RESULT ")), "command": command})
            print(json.dumps(rows[-1]), flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    order = {stage: i for i, stage in enumerate(STAGES)}
    rows.sort(key=lambda r: (order[r["stage"]], list(SETTINGS).index(r["setting"])))
    record = {"model": args.model, "rows": rows}
    out.write_text(json.dumps(record, indent=2))
    text = f"# QLoRA memory on CPU ({args.model})\n"
    for stage in STAGES:
        part = [r for r in rows if r["stage"] == stage]
        if part:
            commands = "\n".join(f"`{c}`" for c in dict.fromkeys(r["command"] for r in part))
            text += f"\n## {WHAT[stage]}, {part[0]['steps']} steps\n\n{commands}\n\n{table(part)}"
    out.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
