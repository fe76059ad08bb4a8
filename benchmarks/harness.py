"""What every "ours against TRL" benchmark shares on our side of the fence.

    the peer's virtualenv (create once, reuse)          ensure_trl_venv
    the workload: reward model, prompts, workload.json  build_reward_model, benchmark_prompts, prepare_workload
    our reward scorer over that classifier              ClassifierScorer
    fresh-process runs, alternating A B A B             child_env, run_alternating
    medians over runs                                   aggregate

Used by ppo_vs_trl.py and rl_vs_trl.py, run with our virtualenv; the peer's side scripts never import this file
(they import only common.py). Heavy imports (torch, transformers, our package) happen inside the functions
that need them, so the orchestrators stay small and never load torch themselves.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from common import GIB, Workload, cache_cap_env, read_side_result, run_child

BENCH_DIR = Path(__file__).resolve().parent
# torch first and pinned (an unpinned torch pulls a multi-GB CUDA build); the rest pinned to the versions our
# own virtualenv runs, so the comparison differs in the trainer code, not in the libraries under it.
TRL_TORCH = "torch==2.13.0"
TRL_LIBRARIES = ["peft==0.21.2", "transformers==5.24.0", "accelerate==1.15.0", "datasets==5.2.0"]


# ---------------------------------------------------------------- the peer's virtualenv


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def trl_venv_ready(venv: Path, trl_version: str, probe_import: str) -> bool:
    """The venv imports torch, peft and ``probe_import`` (the trainer the benchmark drives) at ``trl_version``."""
    if not venv_python(venv).exists():
        return False
    probe = subprocess.run([str(venv_python(venv)), "-c", f"import torch, trl, peft; {probe_import}; print(trl.__version__)"],
                           capture_output=True, text=True)
    return probe.returncode == 0 and probe.stdout.strip() == trl_version


def ensure_trl_venv(venv: Path, trl_version: str, probe_import: str, log=print) -> Path:
    """Create the peer's virtualenv once (torch first, then trl with our library versions); later runs reuse it."""
    if trl_venv_ready(venv, trl_version, probe_import):
        return venv_python(venv)
    log(f"creating {venv} (torch first, then trl {trl_version}) ...")
    base_python = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base_python, "-m", "venv", str(venv)], check=True)
    pip = [str(venv_python(venv)), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run(pip + [TRL_TORCH], check=True)
    subprocess.run(pip + [f"trl=={trl_version}"] + TRL_LIBRARIES, check=True)
    if not trl_venv_ready(venv, trl_version, probe_import):
        raise RuntimeError(f"{venv}: trl {trl_version} does not import after install; see pip's output above")
    return venv_python(venv)


# ---------------------------------------------------------------- the workload (built in a subprocess)

REWARD_SEED = 0
MAX_PROMPT_TOKENS = 128  # keeps every batch's padded length alike on both sides (HH prompts reach ~900)


def reward_model_dir(seed: int = REWARD_SEED) -> Path:
    from rlhf.models.zoo import rlhf_home

    return rlhf_home() / "benchmarks" / f"smollm2-135m-reward-seed{seed}"


def build_reward_model(policy_path: str, out: Path, seed: int = REWARD_SEED) -> Path:
    """SmolLM2-135M with a seeded random score head (num_labels=1), saved once for both sides.

    Its pad token is <|endoftext|> (never in text): SmolLM2's own pad is EOS, which ends every chat turn,
    and a sequence classifier pools at the last token that is not the pad.
    """
    import shutil
    import tempfile

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if (out / "config.json").is_file():
        return out
    tokenizer = AutoTokenizer.from_pretrained(policy_path)
    tokenizer.pad_token = "<|endoftext|>"
    model = AutoModelForSequenceClassification.from_pretrained(policy_path, num_labels=1, dtype=torch.float32)
    torch.nn.init.normal_(model.score.weight, std=model.config.initializer_range,
                          generator=torch.Generator().manual_seed(seed))
    model.config.pad_token_id = tokenizer.pad_token_id
    out.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    model.save_pretrained(staged)
    tokenizer.save_pretrained(staged)
    if out.exists():
        shutil.rmtree(out)
    os.replace(staged, out)  # atomic: a folder with config.json is complete
    return out


def benchmark_prompts(tokenizer, count: int, max_tokens: int = MAX_PROMPT_TOKENS) -> tuple[list[str], list[str]]:
    """The first ``count`` distinct HH-harmless train prompts whose chat rendering fits ``max_tokens``:
    (HH transcripts, the same rendered with the chat template)."""
    from rlhf.models.generation import render_chat
    from rlhf.data.records import prompt_to_messages
    from rlhf.data.sources import hh_harmless_pairs

    prompts, rendered, seen = [], [], set()
    for record in hh_harmless_pairs("train"):
        if record.prompt in seen:
            continue
        seen.add(record.prompt)
        text = render_chat(tokenizer, prompt_to_messages(record.prompt))
        if len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= max_tokens:
            prompts.append(record.prompt)
            rendered.append(text)
        if len(prompts) == count:
            return prompts, rendered
    raise RuntimeError(f"only {len(prompts)} HH-harmless train prompts fit {max_tokens} tokens; {count} needed")


def prepare_workload(path: Path, num_prompts: int, **settings) -> Workload:
    """SmolLM2-135M-Instruct policy, the seeded classifier, ``num_prompts`` prompts; ``settings`` are the
    remaining :class:`common.Workload` fields (batch sizes, LoRA layers ...). Written to ``path`` as JSON."""
    from rlhf.models.zoo import load_tokenizer, resolve_model

    policy_path = resolve_model("smollm2-135m-instruct")
    reward_path = build_reward_model(policy_path, reward_model_dir())
    prompts, chat_prompts = benchmark_prompts(load_tokenizer(policy_path), num_prompts)
    workload = Workload(policy_path=policy_path, reward_path=str(reward_path), prompts=prompts,
                        chat_prompts=chat_prompts, **settings)
    workload.save(path)
    return workload


# ---------------------------------------------------------------- our reward scorer (our side's subprocess)


class ClassifierScorer:
    """The Scorer protocol over the benchmark's SmolLM2 sequence classifier (the same model TRL scores with).

    Our trainer hands over text (HH prompts, decoded responses); this re-tokenises prompt + response + EOS
    with the shared tokenizer and reads the score at the last token, as TRL's get_reward does (all texts in
    one packed forward, so there is no padding to skip). ``dtype`` is the classifier's weights' (the PPO
    benchmark keeps fp32; the GRPO one follows the policy's precision, as TRL's model_init_kwargs do).
    """

    def __init__(self, path: str, tokenizer, dtype=None):
        import copy

        import torch
        from transformers import AutoModelForSequenceClassification

        from rlhf.rl.packing import use_varlen_attention

        self.model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=1, dtype=dtype or torch.float32).eval()
        if not use_varlen_attention(self.model):
            raise RuntimeError(f"{path}: packed scoring needs sdpa attention, not {self.model.config._attn_implementation}")
        self.tokenizer = copy.copy(tokenizer)  # own padding settings; the policy's tokenizer is left alone
        self.tokenizer.padding_side = "left"
        self.tokenizer.pad_token = "<|endoftext|>"  # never in text; SmolLM2's own pad is EOS

    def score(self, prompts, responses):
        import torch

        from reward_models.types import RewardScores
        from rlhf.rl.packing import PackedRows
        from rlhf.models.generation import render_chat
        from rlhf.data.records import prompt_to_messages

        texts = [render_chat(self.tokenizer, prompt_to_messages(p)) + r + self.tokenizer.eos_token
                 for p, r in zip(prompts, responses)]
        # All texts in one packed forward (rlhf.rl.packing): no FLOPs on padding, one big matmul per layer
        # instead of B small ones; the score head reads each text's last token, as the classifier does.
        batch = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        packed = PackedRows.from_mask(batch["attention_mask"])  # left padding: every text ends in the last column
        with torch.no_grad():
            hidden = self.model.model(input_ids=packed.pack(batch["input_ids"]), **packed.forward_kwargs(),
                                      use_cache=False)
            last = packed.unpack(hidden.last_hidden_state)[:, -1]  # (B, H)
            scores = self.model.score(last)[:, 0].float()  # (B,)
        return RewardScores(composite=scores, heads={"helpful": scores.clone()})


def profile_table(step_fn, rows: int = 30) -> tuple[object, str]:
    """Run ``step_fn`` under torch.profiler (CPU); its result and the ops by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = step_fn()
    return result, prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


# ---------------------------------------------------------------- runs and medians (the orchestrator)


def child_env(threads: int) -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_VERBOSITY="error",
               WANDB_MODE="disabled", HF_HUB_DISABLE_PROGRESS_BARS="1", PYTHONUNBUFFERED="1")
    env.update(cache_cap_env())  # the same oneDNN/ideep cache caps in both sides' processes (common.py)
    return env


def run_alternating(sides: list[str], runs: int, command: Callable[[str, Path], list[str]], work: Path,
                    threads: int, timeout: float, labels: dict[str, str]) -> tuple[list[dict], dict[str, list[dict]]]:
    """Runs A B A B ..., each side a fresh subprocess writing ``work/{side}-{run}.json``; ``command(side, out)``
    is its command line. Returns every run's result (with the child's wall time, wait4 and sampled peak RSS,
    load average before and after) in order, and the same grouped by side."""
    every, per_side = [], {side: [] for side in sides}
    for run in range(runs):
        for side in sides:
            out, log = work / f"{side}-{run}.json", work / f"{side}-{run}.log"
            print(f"run {run + 1}/{runs}, {labels[side]} (log: {log}) ...", flush=True)
            child = run_child(command(side, out), env=child_env(threads), timeout=timeout, log_path=log)
            if child.returncode != 0:
                tail = log.read_text()[-3000:] if log.exists() else ""
                raise RuntimeError(f"{side} run {run} failed with exit code {child.returncode}; {log}:\n{tail}")
            result = read_side_result(out)
            result.update(run=run, wall_seconds=child.wall_seconds, wait4_ru_maxrss_bytes=child.ru_maxrss_bytes,
                          sampled_peak_rss_bytes=child.sampled_peak_rss_bytes, load_before=child.load_before,
                          load_after=child.load_after, log=str(log))
            every.append(result)
            per_side[side].append(result)
            print(f"  {result['sec_per_step_median']:.2f} s/step ({result['quiet_steps']} quiet steps), peak RSS "
                  f"{result['peak_rss_bytes'] / GIB:.2f} GiB, {result['tokens_per_s_median']:.1f} tokens/s, "
                  f"load {child.load_before} -> {child.load_after}", flush=True)
    return every, per_side


def aggregate(runs: list[dict]) -> dict:
    """Medians over runs of each run's own medians (each over steps 2..N)."""
    def med(key):
        return statistics.median(r[key] for r in runs)

    for r in runs:  # the peak reached while loading models, before the first step
        loaded = [p for p in r.get("memory_trace", []) if p["at"] == "models loaded"]
        r["peak_rss_after_load_bytes"] = loaded[0]["peak_rss_bytes"] if loaded else None
    summary = {"runs": len(runs), "sec_per_step": med("sec_per_step_median"),
               "peak_rss_bytes": med("peak_rss_bytes"), "tokens_per_s": med("tokens_per_s_median"),
               "sec_per_step_min_max": [min(r["sec_per_step_median"] for r in runs),
                                        max(r["sec_per_step_median"] for r in runs)],
               "peak_rss_bytes_min_max": [min(r["peak_rss_bytes"] for r in runs), max(r["peak_rss_bytes"] for r in runs)],
               "sec_per_step_per_run": [r["sec_per_step_median"] for r in runs],
               "peak_rss_bytes_per_run": [r["peak_rss_bytes"] for r in runs]}
    quiet = [r["sec_per_step_quiet_median"] for r in runs if r.get("sec_per_step_quiet_median") is not None]
    summary["sec_per_step_quiet"] = statistics.median(quiet) if quiet else None
    summary["quiet_steps"] = sum(r.get("quiet_steps", 0) for r in runs)
    summary["counted_steps"] = sum(r["steps"] - r["warmup_steps_excluded"] for r in runs)
    if all("cpu_sec_per_step_median" in r for r in runs):
        summary["cpu_sec_per_step"] = med("cpu_sec_per_step_median")
    if all(r["peak_rss_after_load_bytes"] for r in runs):
        summary["peak_rss_after_load_bytes"] = med("peak_rss_after_load_bytes")
    if all("generation_seconds_median" in r for r in runs):
        summary["generation_seconds"] = med("generation_seconds_median")
    if all("train_seconds_median" in r for r in runs):
        summary["train_seconds"] = med("train_seconds_median")
        summary["train_tokens_per_s"] = med("train_tokens_per_s_median")
    return summary


def side_ratios(sides: dict) -> dict:
    """ours / TRL of the medians, and each ratio's spread: [best ours / worst TRL, worst ours / best TRL] run."""
    ours, trl = sides["ours"], sides["trl"]
    return {"sec_per_step": ours["sec_per_step"] / trl["sec_per_step"],
            "sec_per_step_spread": [ours["sec_per_step_min_max"][0] / trl["sec_per_step_min_max"][1],
                                    ours["sec_per_step_min_max"][1] / trl["sec_per_step_min_max"][0]],
            "peak_rss": ours["peak_rss_bytes"] / trl["peak_rss_bytes"],
            "peak_rss_spread": [ours["peak_rss_bytes_min_max"][0] / trl["peak_rss_bytes_min_max"][1],
                                ours["peak_rss_bytes_min_max"][1] / trl["peak_rss_bytes_min_max"][0]],
            "tokens_per_s": ours["tokens_per_s"] / trl["tokens_per_s"]}


def side_settings(runs: list[dict]) -> dict:
    """What each side ran in (its first run's record; every run of a side runs the same code)."""
    keys = ("precision", "weights", "compute_dtype", "memory_policy")
    return {r["side"]: {k: r.get(k) for k in keys} for r in reversed(runs)}


def dispatch(args, trl_venv: tuple[Path, str, str], prepare: Callable[[], object], run_ours: Callable[[], int],
             run_benchmark: Callable[[object], dict], format_table: Callable[[dict], str]) -> int:
    """The body of a side-by-side benchmark's ``main`` once its arguments are parsed: ``--setup-only`` (the TRL
    virtualenv), the internal ``--prepare`` and ``--side ours`` subprocess entries, or the whole benchmark
    (its result JSON written to ``args.out`` and its table printed)."""
    if args.setup_only:
        print(ensure_trl_venv(*trl_venv))
        return 0
    if args.prepare:
        prepare()
        return 0
    if args.side == "ours":
        return run_ours()
    result = run_benchmark(args)
    table = format_table(result) if "ratios" in result else json.dumps(result["sides"], indent=1)
    result["table"] = table
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print("\n" + table + f"\n\nresults: {args.out}")
    return 0
