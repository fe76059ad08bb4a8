"""``rlhf plan`` against the real stages: predicted peak memory per process vs the measured peak RSS.

For each setup (SFT full, SFT LoRA, reward, PPO; on SmolLM2-135M and on the tiny random models) the stage's own
command runs a few steps in a fresh child process, which records its own peak resident set (``VmHWM``: this
process's address space only, from exec to exit, loading, training and saving included). The plan is computed
for the same setup, with the sequence length the stage actually padded to (its data encoded here as the stage
encodes it). The runtime part is measured too: a child that only imports the stage's modules. Run it under the
lock (~6 minutes on 2 cores):

    flock /tmp/rlhf-cpu.lock python benchmarks/plan_vs_measured.py

writes ``benchmarks/results/plan_vs_measured.{md,json}``; ``--only NAME`` runs some setups; ``--child`` is the
mode each child runs in.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import common  # noqa: E402

OUT = Path("/tmp/plan-bench")
DEMO_REWARD = "/work/main/runs/demo/reward/final"
QUIET = ["--run.wandb_mode", "disabled", "--run.output_dir", str(OUT / "runs")]
SFT_COMMON = ["--data.dev_max_examples", "1", "--data.samples", "1", "--train.max_steps", "2",
              "--train.eval_batch_size", "1", "--train.precision", "fp32", "--train.save_steps", "100",
              "--generation.max_new_tokens", "4", "--forgetting.enabled", "false", *QUIET]


@dataclass
class Setup:
    name: str
    stage: str  # the rlhf subcommand
    argv: list[str]  # its flags
    plan: dict  # PlanConfig sections (seq_len filled in from the data where the stage pads to it)
    seq_from: str = ""  # "sft": the longest training example the stage encodes; else plan's own seq_len
    launch: str = ""  # "" one process; "ddp" / "fsdp2": 2 processes under torchrun (each records its own peak)
    notes: list[str] = field(default_factory=list)


def sft_setup(name: str, model: str, lora: list[str], plan_lora: dict, max_length: int, batch: int) -> Setup:
    argv = ["--model.name", model, *lora, "--data.mixture", "[{source: dialogsum, max_examples: 64}]",
            "--data.num_examples", str(2 * batch), "--train.batch_size", str(batch),
            "--train.max_length", str(max_length), *SFT_COMMON]
    return Setup(name, "sft", argv, {"model": {"name": model}, "stage": "sft", "lora": plan_lora,
                                     "train": {"micro_batch": batch, "seq_len": max_length}}, seq_from="sft")


def two_process_setup(strategy: str) -> Setup:
    """SFT full fine-tuning of SmolLM2 on 2 processes, batch 4 per process: where sharding weights, gradients and
    Adam states has something to divide (the plan's parallel.strategy ddp vs fsdp over 2 devices)."""
    one = sft_setup(f"sft-full/smollm2/2x{strategy}", "smollm2-135m-instruct", ["--lora.enabled", "false"],
                    {"enabled": False}, 256, 4)
    one.plan["parallel"] = {"strategy": "fsdp" if strategy == "fsdp2" else "ddp", "gpus": 2}
    one.launch = strategy
    return one


SETUPS = [
    sft_setup("sft-full/smollm2", "smollm2-135m-instruct", ["--lora.enabled", "false"], {"enabled": False}, 256, 4),
    sft_setup("sft-lora/smollm2", "smollm2-135m-instruct", ["--lora.layers", "[-12,-11,-10,-9,-8,-7,-6,-5,-4,-3,-2,-1]"],
              {"enabled": True, "layers": list(range(-12, 0))}, 384, 4),
    Setup("reward-lora/smollm2", "reward",
          ["--model.name", "smollm2-135m-instruct", "--lora.enabled", "true",
           "--lora.layers", "[-4,-3,-2,-1]", "--model.max_length", "128", "--model.min_prompt_tokens", "32",
           "--data.max_train_pairs_per_head", "8", "--train.max_steps", "2", "--train.batch_size", "4",
           "--train.precision", "fp32", "--train.trunk_cache", "'off'", "--train.save_steps", "0",
           "--eval.batch_size", "8", "--eval.max_pairs_per_head", "4", "--eval.test", "false", *QUIET],
          {"model": {"name": "smollm2-135m-instruct"}, "stage": "reward",
           "lora": {"enabled": True, "layers": [-4, -3, -2, -1], "target_modules": []},
           "train": {"micro_batch": 4, "seq_len": 128}}),
    Setup("ppo-lora/smollm2", "ppo",
          ["--model.name", "smollm2-135m-instruct", "--train.precision", "fp32", "--reward.model", DEMO_REWARD,
           "--train.max_steps", "2", "--update.batch_size", "8", "--update.mini_batch_size", "4", "--update.micro_batch_size", "4",
           "--generation.max_new_tokens", "16", "--data.sources", "[truthfulqa]", "--data.max_prompt_tokens", "64",
           "--train.save_steps", "0", "--train.sample_every", "0", *QUIET],
          {"model": {"name": "smollm2-135m-instruct"}, "stage": "ppo",
           "lora": {"enabled": True, "layers": list(range(-8, 0))},
           "train": {"micro_batch": 4}, "ppo": {"reward_model": DEMO_REWARD, "rollouts": 8, "prompt_tokens": 64,
                                                "new_tokens": 16}}),
    sft_setup("sft-full/tiny", "tiny-llama", ["--lora.enabled", "false"], {"enabled": False}, 768, 4),
    sft_setup("sft-lora/tiny", "tiny-llama", ["--lora.r", "8"], {"enabled": True, "r": 8}, 768, 4),
    Setup("reward-full/tiny-bert", "reward",
          ["--config", "pipelines/configs/reward_tiny.yaml", "--train.max_steps", "2", "--train.precision", "fp32",
           "--train.trunk_cache", "'off'", "--eval.test", "false", *QUIET],
          {"model": {"name": "tiny-bert"}, "stage": "reward", "train": {"micro_batch": 4, "seq_len": 128}}),
    two_process_setup("ddp"),
    two_process_setup("fsdp2"),
    Setup("ppo-lora/tiny", "ppo",
          ["--config", "pipelines/configs/ppo_tiny.yaml", "--train.max_steps", "2", *QUIET],
          {"model": {"name": "tiny-llama"}, "stage": "ppo",
           "lora": {"enabled": True, "r": 8, "layers": [-1],
                    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]},
           "train": {"micro_batch": 4, "grad_accum": 2}, "ppo": {"reward_model": "none", "rollouts": 16, "prompt_tokens": 64,
                                                "new_tokens": 12, "epochs": 2}}),
]
NOTES = [
    "How to read it: the measured peak is the stage process's VmHWM (its own pages only, from exec to exit: imports, "
    "data, loading, training steps, saving). The prediction is the plan's per-device total for the same setup: the "
    "parts always held (runtime, weights, optimizer states) plus the largest phase (update: activations + logits; "
    "step: full gradients; generation: KV cache; save: the reward stage's merged copy). Sequence length: SFT pads "
    "to the longest example of a batch, so the plan gets the longest training example the stage encodes; reward "
    "and PPO get their caps (max_length 128; 64 prompt + 16 new tokens), an upper bound.",
    "What the plan leaves out: the tokenizer, the datasets' tables and the allocator's per-thread arenas (the "
    "tiny setups, where little else is held, show them: measured 0.04-0.09 GiB above the plan), the PPO sampler's "
    "copies (the LoRA-targeted weights it restores after merging, the LM head packed for oneDNN), and the "
    "transient while a checkpoint loads (here below the training peak).",
    "Setups: 2 optimizer steps each, fp32, batch 4 (reward: 4 pairs = 8 sequences; PPO: 8 rollouts, micro-batch 4). "
    "SFT LoRA on SmolLM2: r 16 on q/k/v/o of the top 12 blocks; reward: LoRA (peft's default targets) on the top 4 "
    "blocks, trunk cache off; PPO: the shipped defaults (top 8 blocks) against the demo MiniLM reward model; tiny: "
    "tiny-llama (SFT, PPO with the toy reward) and tiny-bert (reward, full fine-tuning).",
    "Two-process setups (`sft-full/smollm2/2x...`, `--only sft-full/smollm2/2x`): the same SFT full fine-tuning on 2 "
    "torchrun processes of one thread each, batch 4 per process, under DDP and under FSDP2 (fsdp.yaml's flags); the "
    "measured peak is the larger rank's, the plan's parallel.strategy ddp / fsdp over 2 devices. Not modelled: the "
    "process group's buffers, and under FSDP2 the whole model each rank loads before it is sharded.",
]
# What each stage's process imports before its model loads: the libraries, the stage, the trainer it runs.
RUNTIME_IMPORTS = {"sft": ["pipelines.sft", "trl:SFTTrainer"],
                   "reward": ["pipelines.reward", "reward_models.train", "accelerate:Accelerator"],
                   "ppo": ["pipelines.ppo", "rlhf.rl.trainer", "accelerate:Accelerator"]}


def child(out: str, argv: list[str]) -> int:
    """In the child: run ``rlhf <argv>`` (or only import a stage's modules), then write this process's peak RSS
    (under torchrun each rank writes ``<out>.rank<R>``)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if "RANK" in os.environ:
        out = f"{out}.rank{os.environ['RANK']}"
    code = 0
    if argv[0] == "--probe-fused":
        result = probe_fused(int(argv[1]))
        Path(out).write_text(json.dumps({"returncode": 0, "peak_rss_bytes": common.own_peak_rss_bytes(), **result}))
        return 0
    if argv[0] == "--import":
        import importlib

        for target in ("torch", "transformers", "peft", "trl", *RUNTIME_IMPORTS[argv[1]]):
            module, _, name = target.partition(":")
            imported = importlib.import_module(module)
            if name:
                getattr(imported, name)  # lazy modules (TRL, accelerate) import on attribute access
    else:
        from rlhf.cli import main

        code = main(argv)
    Path(out).write_text(json.dumps({"returncode": code, "peak_rss_bytes": common.own_peak_rss_bytes()}))
    return code


def probe_fused(tokens: int) -> dict:
    """Tiles (tokens x 32768 float32) TRL's fused LM head holds at its peak over the RSS before it: SmolLM2's head
    (576 x 49152), one forward + backward with the hidden states trainable, after a small warm-up call."""
    import torch
    from trl.kernels.chunked_logprob import ChunkedLogProbFunction
    from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE

    from rlhf.plan import FUSED_TILE_TOKENS

    def run(hidden, weight, targets):
        out = ChunkedLogProbFunction.apply(hidden, weight, None, targets, 1.0, _CHUNKED_LOGPROB_CHUNK_SIZE, None, 1.0,
                                           ("log_probs", "entropy", "is_top1"))
        (-out[0].sum()).backward()

    torch.manual_seed(0)
    weight = torch.randn(49152, 576) * 0.02
    run(torch.randn(8, 576, requires_grad=True), weight, torch.randint(0, 49152, (8,)))
    hidden, targets = torch.randn(tokens, 576, requires_grad=True), torch.randint(0, 49152, (tokens,))
    before = common.current_rss_bytes(os.getpid())
    run(hidden, weight, targets)
    tile = min(tokens, FUSED_TILE_TOKENS) * _CHUNKED_LOGPROB_CHUNK_SIZE * 4
    return {"tokens": tokens, "peak_over_rss_bytes": common.own_peak_rss_bytes() - before,
            "tiles": round((common.own_peak_rss_bytes() - before) / tile, 2)}


TWO_PROCESSES = {"ddp": {}, "fsdp2": {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}}  # what the launch sets


def run_measured(argv: list[str], log: Path, launch: str = "") -> dict:
    """Run ``rlhf <argv>`` in a fresh child (``launch``: 2 torchrun processes, one thread each) and read the peak
    RSS it recorded (with 2 processes: the larger rank's, and each rank's)."""
    out = log.with_suffix(".json")
    runner = [sys.executable] if not launch else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                  "--nproc_per_node", "2"]
    cmd = [*runner, str(Path(__file__).resolve()), "--child", str(out), "--", *argv]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    if launch:
        env |= {"OMP_NUM_THREADS": "1", **TWO_PROCESSES[launch]}
    run = common.run_child(cmd, env=env, timeout=900, log_path=log)
    if launch:
        ranks = [json.loads(Path(f"{out}.rank{r}").read_text()) for r in range(2) if Path(f"{out}.rank{r}").is_file()]
        result = {"returncode": max((r["returncode"] for r in ranks), default=run.returncode) or run.returncode,
                  "peak_rss_bytes": max((r["peak_rss_bytes"] for r in ranks), default=0),
                  "rank_peak_rss_bytes": [r["peak_rss_bytes"] for r in ranks]}
    else:
        result = json.loads(out.read_text()) if out.is_file() else {"returncode": run.returncode, "peak_rss_bytes": 0}
    return {**result, "wall_seconds": round(run.wall_seconds, 1), "load_before": run.load_before,
            "load_after": run.load_after, "log": str(log)}


def sft_seq_len(setup: Setup) -> int:
    """The longest training example the SFT stage encodes for this setup: the padded width of its largest batch."""
    from rlhf.core.config import load_config
    from rlhf.sft.config import SFTStageConfig
    from rlhf.sft.data import encode_records, training_mixture
    from rlhf.models.zoo import load_tokenizer

    cfg, _ = load_config(SFTStageConfig, setup.argv)
    encoded, _ = encode_records(load_tokenizer(cfg.model.name), training_mixture(cfg.data, cfg.run.seed),
                                cfg.train.max_length)
    return max(len(e.input_ids) for e in encoded)


def predict(setup: Setup, runtime_gib: float | None) -> dict:
    from rlhf.core.config import from_dict
    from rlhf.plan import GIB, PlanConfig, memory_plan, resolve_shapes

    sections = json.loads(json.dumps(setup.plan))
    if setup.seq_from == "sft":
        sections["train"]["seq_len"] = sft_seq_len(setup)
    if runtime_gib is not None:
        sections["runtime_gb"] = runtime_gib
    cfg = from_dict(PlanConfig, sections)
    shape, reward = resolve_shapes(cfg)
    plan = memory_plan(shape, cfg, reward)
    seq = cfg.ppo.prompt_tokens + cfg.ppo.new_tokens if cfg.stage == "ppo" else cfg.train.seq_len
    return {"seq_len": seq, "predicted_bytes": plan.total, "peak_phase": plan.peak_phase,
            "parts_gib": {p.name: round(p.bytes / GIB, 3) for p in plan.parts}}


def write_report(rows: list[dict], runtime: dict, meta: dict, path_md: Path) -> None:
    gib = 2**30
    lines = ["# `rlhf plan` vs measured peak memory (CPU, peak RSS of the stage's own process)", "",
             f"`{meta['command']}`", "",
             f"Measured {meta['date']} on {meta['cpu']} ({meta['cpus']} cores), load average before / after: "
             f"{meta['load_before']} / {meta['load_after']}; torch {meta['torch']}, transformers "
             f"{meta['transformers']}, threads: the stages' defaults.", "",
             "| setup | seq | predicted GiB | measured GiB | predicted / measured | largest parts (GiB) | s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        parts = sorted(r["parts_gib"].items(), key=lambda kv: -kv[1])[:4]
        lines.append(f"| {r['name']} | {r['seq_len']} | {r['predicted_bytes'] / gib:.2f} | "
                     f"{r['peak_rss_bytes'] / gib:.2f} | **{r['ratio']:.2f}** | "
                     f"{', '.join(f'{k} {v:.2f}' for k, v in parts)} | {r['wall_seconds']:.0f} |")
    within = all(0.75 <= r["ratio"] <= 1.33 for r in rows)
    lines += ["", f"Every ratio within 0.75-1.33: **{'yes' if within else 'no'}**.", "",
              "Runtime part (peak RSS of a process that only imports torch, transformers, peft, TRL and the stage): "
              + ", ".join(f"{k} {v / gib:.2f} GiB" for k, v in runtime.items())
              + "; the plan uses " + (", ".join(f"{k} {v:.2f}" for k, v in meta["runtime_gb"].items())
                                      if isinstance(meta["runtime_gb"], dict) else f"{meta['runtime_gb']:.2f}")
              + " GiB (rlhf.plan.RUNTIME_GIB).", "",
              "TRL's fused LM head (SFT), float32 tiles of tokens x 32768 held at its peak over the RSS before it: "
              + ", ".join(f"{n} tokens {t}" for n, t in meta["fused_head_tiles"].items())
              + " (rlhf.plan.FUSED_TILE_COPIES = 8.3).", ""]
    for note in meta.get("notes", []):
        lines += [note, ""]
    path_md.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=[], help="setup names (or their prefixes) to run")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/plan_vs_measured.json"))
    parser.add_argument("--runtime-gb", type=float, default=None, help="override the plan's runtime part")
    parser.add_argument("--probe-fused", type=int, metavar="TOKENS",
                        help="only measure TRL's fused LM head at TOKENS tokens (in this process) and print it")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.child:
        return child(args.child, rest[1:] if rest[:1] == ["--"] else rest)
    if args.probe_fused:
        print(json.dumps(probe_fused(args.probe_fused)))
        return 0

    from importlib.metadata import version

    from rlhf.plan import RUNTIME_GIB

    OUT.mkdir(parents=True, exist_ok=True)
    load_before = common.load_average()
    runtime = {}
    for stage in ("sft", "reward", "ppo"):
        runtime[stage] = run_measured(["--import", stage], OUT / f"runtime-{stage}.log")["peak_rss_bytes"]
        print(f"runtime {stage}: {runtime[stage] / 2**30:.3f} GiB", flush=True)
    fused = [run_measured(["--probe-fused", str(n)], OUT / f"fused-{n}.log") for n in (1024, 1532)]
    print("fused LM head tiles: " + ", ".join(f"{f['tokens']} tokens {f['tiles']}" for f in fused), flush=True)
    rows = []
    for setup in SETUPS:
        if args.only and not any(setup.name.startswith(o) for o in args.only):
            continue
        predicted = predict(setup, args.runtime_gb)
        measured = run_measured([setup.stage, *setup.argv], OUT / f"{setup.name.replace('/', '-')}.log", setup.launch)
        if measured["returncode"] != 0 or not measured["peak_rss_bytes"]:
            print(f"{setup.name}: the stage failed (see {measured['log']})", flush=True)
            return 1
        row = {"name": setup.name, "stage": setup.stage, "argv": setup.argv, **predicted, **measured,
               "ratio": predicted["predicted_bytes"] / measured["peak_rss_bytes"]}
        rows.append(row)
        print(f"{setup.name}: predicted {predicted['predicted_bytes'] / 2**30:.2f} GiB, measured "
              f"{measured['peak_rss_bytes'] / 2**30:.2f} GiB, ratio {row['ratio']:.2f} ({measured['wall_seconds']} s) "
              f"{predicted['parts_gib']}", flush=True)
    meta = {"command": "flock /tmp/rlhf-cpu.lock python benchmarks/plan_vs_measured.py" +
                       (f" --only {' '.join(args.only)}" if args.only else ""),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), **common.cpu_info(),
            "cpu": common.cpu_info().get("model_name", "?"), "load_before": load_before,
            "load_after": common.load_average(), "torch": version("torch"), "transformers": version("transformers"),
            "runtime_gb": args.runtime_gb if args.runtime_gb is not None else RUNTIME_GIB}
    meta["notes"] = NOTES
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta["fused_head_tiles"] = {f["tokens"]: f["tiles"] for f in fused}
    out.write_text(json.dumps({"meta": meta, "runtime_peak_rss_bytes": runtime, "rows": rows}, indent=2))
    write_report(rows, runtime, meta, out.with_suffix(".md"))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
