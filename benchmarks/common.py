"""Helpers shared by both sides of a benchmark: the workload, step timing, peak memory, FLOP accounting.

Standard library only at import time: the peer's side runs this file inside its own virtualenv, which has
neither our package nor psutil. Functions that need torch import it themselves.
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

GIB = 1024**3
DEFAULT_LORA_LAYERS = tuple(range(-8, 0))  # the last 8 decoder layers: our shipped default (RLStageConfig.lora)


# ---------------------------------------------------------------- the workload both sides run


@dataclass
class Workload:
    """One RL workload (PPO or GRPO), written to JSON by the orchestrator and read by each side's subprocess."""

    policy_path: str  # SmolLM2-135M-Instruct folder (fp32 safetensors)
    reward_path: str  # SmolLM2-135M sequence classifier (num_labels=1) both sides load
    prompts: list[str]  # HH transcripts ("\n\nHuman: ... \n\nAssistant:"), what our trainer takes
    chat_prompts: list[str]  # the same prompts rendered with the chat template, what TRL tokenises
    batch_size: int = 8  # prompts per step (rollouts per step: batch_size * samples_per_prompt)
    mini_batch_size: int = 4  # rollouts per optimizer step
    ppo_epochs: int = 1
    samples_per_prompt: int = 1  # completions per prompt: 1 for PPO, the group size for GRPO
    micro_batch_size: int = 0  # rollouts per forward/backward; 0 = each side's own default
    kl_coef: float = 0.0  # GRPO: coefficient of the k3 KL-to-reference loss term (TRL's beta); PPO ignores it
    max_new_tokens: int = 32
    temperature: float = 1.0
    threads: int = 2
    seed: int = 0
    learning_rate: float = 1e-5
    lora_r: int = 16
    lora_alpha: int = 32
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    # Decoder layers with adapters, on both sides; negatives count from the top; [] = every layer.
    lora_layers: list[int] = field(default_factory=lambda: list(DEFAULT_LORA_LAYERS))
    our_overrides: dict[str, str] = field(default_factory=dict)  # extra --key value for our config (variants)
    # "bf16" or "fp32" on BOTH sides, resolved once by the orchestrator (resolve_precision): bf16 = bf16 frozen
    # weights and bf16 compute on both sides (ours keeps its trainable LoRA/value head fp32)
    precision: str = "fp32"

    @property
    def num_steps(self) -> int:
        return len(self.prompts) // self.batch_size

    @property
    def rollouts_per_step(self) -> int:
        return self.batch_size * self.samples_per_prompt

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> "Workload":
        return cls(**json.loads(Path(path).read_text()))


# ---------------------------------------------------------------- per-step timing


@dataclass
class StepRecord:
    seconds: float  # wall time of one whole PPO step (rollout + scoring + update)
    generated_tokens: int  # response tokens kept, up to and including the first EOS
    cpu_seconds: float | None = None  # CPU time of the side's process during the step
    foreign_cpu_seconds: float | None = None  # CPU time of all other processes during the step
    generation_seconds: float | None = None  # the sampling (model.generate) part of the step
    train_seconds: float | None = None  # the optimisation phase alone, when the side can time it
    train_tokens: int | None = None  # non-pad tokens that went through forward+backward in that phase
    train_flops: float | None = None  # model FLOPs of that phase's forward+backward passes (lora_train_flops)
    train_forward_flops: float | None = None  # their forward part alone (forward_flops)


QUIET_FOREIGN_CORES = 0.25  # a step is "quiet" when other processes used at most this many cores on average


def machine_busy_seconds() -> float:
    """CPU-seconds every process on this machine has run since boot (/proc/stat: all but idle and iowait;
    steal counts as busy: the hypervisor gave that time to someone else)."""
    user, nice, system, idle, iowait, irq, softirq, steal = (
        int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


@dataclass
class Lap:
    seconds: float  # wall clock
    cpu_seconds: float  # CPU time of this process, all its threads
    foreign_cpu_seconds: float  # CPU time of everything else on the machine meanwhile (contention)


class StepClock:
    """Wall and CPU time between consecutive :meth:`lap` calls (the first lap starts at :meth:`start`).

    The machine is shared: the CPU other processes burn during a step is measured from /proc/stat, so a
    step slowed by someone else's job can be told from one that is slow by itself.
    """

    def __init__(self) -> None:
        self._last: tuple[float, float, float] | None = None

    @staticmethod
    def _now() -> tuple[float, float, float]:
        return time.perf_counter(), time.process_time(), machine_busy_seconds()

    def start(self) -> None:
        self._last = self._now()

    def lap(self) -> Lap:
        if self._last is None:
            raise RuntimeError("StepClock.lap() before start()")
        now = self._now()
        wall, cpu, busy = (b - a for a, b in zip(self._last, now))
        self._last = now
        return Lap(seconds=wall, cpu_seconds=cpu, foreign_cpu_seconds=max(busy - cpu, 0.0))


def steady_median(values: list[float], warmup: int = 1) -> float:
    """Median after dropping the first ``warmup`` values (allocator growth, lazy init, first-call kernels)."""
    kept = values[warmup:] if len(values) > warmup else values
    if not kept:
        raise ValueError("no values to take a median of")
    return statistics.median(kept)


def tokens_up_to_eos(response_ids: list[list[int]], eos_id: int) -> int:
    """Generated tokens kept per response, summed: up to and including the first EOS, else all of them."""
    total = 0
    for ids in response_ids:
        total += ids.index(eos_id) + 1 if eos_id in ids else len(ids)
    return total


def summarize_steps(steps: list[StepRecord], warmup: int = 1) -> dict:
    """Medians over steps, the first ``warmup`` steps excluded; tokens/s is per step, then the median."""
    seconds = [s.seconds for s in steps]
    kept = steps[warmup:] if len(steps) > warmup else steps
    quiet = [s.seconds for s in kept
             if s.foreign_cpu_seconds is not None and s.foreign_cpu_seconds <= QUIET_FOREIGN_CORES * s.seconds]
    summary = {
        "steps": len(steps),
        "warmup_steps_excluded": warmup,
        "step_seconds": seconds,
        "sec_per_step_median": steady_median(seconds, warmup),
        "tokens_per_s_median": steady_median([s.generated_tokens / s.seconds for s in steps], warmup),
        "generated_tokens_per_step": [s.generated_tokens for s in steps],
        # contention: other processes' average cores per step; medians over the quiet steps only
        "foreign_cores_per_step": [None if s.foreign_cpu_seconds is None else s.foreign_cpu_seconds / s.seconds
                                   for s in steps],
        "quiet_steps": len(quiet),
        "sec_per_step_quiet_median": statistics.median(quiet) if quiet else None,
    }
    if all(s.cpu_seconds is not None for s in steps):
        summary["cpu_sec_per_step_median"] = steady_median([s.cpu_seconds for s in steps], warmup)
    generating = [s.generation_seconds for s in steps if s.generation_seconds]
    if generating:
        summary["generation_seconds_median"] = steady_median(generating, warmup)
    train = [s for s in steps if s.train_seconds]
    if train:
        summary["train_seconds_median"] = steady_median([s.train_seconds for s in train], warmup)
        summary["train_tokens_median"] = steady_median([float(s.train_tokens or 0) for s in train], warmup)
        summary["train_tokens_per_s_median"] = steady_median([s.train_tokens / s.train_seconds for s in train], warmup)
        summary["train_flops_per_s_median"] = steady_median([s.train_flops / s.train_seconds for s in train], warmup)
        summary["train_full_6nt_flops_per_s_median"] = steady_median(
            [full_train_flops(s.train_forward_flops) / s.train_seconds for s in train], warmup)
    return summary


# ---------------------------------------------------------------- memory and machine load


def own_peak_rss_bytes() -> int:
    """This process's peak resident set since exec (Linux VmHWM); falls back to ru_maxrss.

    VmHWM belongs to the process's own address space, so unlike ``ru_maxrss`` it never includes the
    parent's memory that a forked child carries until it calls exec.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports kB


def current_rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class MemoryTrace:
    """This process's RSS and peak RSS at named points (after loading, after each step): where the peak is."""

    def __init__(self) -> None:
        self.points: list[dict] = []

    def mark(self, label: str) -> None:
        self.points.append({"at": label, "rss_bytes": current_rss_bytes(os.getpid()),
                            "peak_rss_bytes": own_peak_rss_bytes()})


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages (runnable + uninterruptible tasks, here against 2 cores)."""
    return [round(x, 2) for x in os.getloadavg()]


@dataclass
class ChildRun:
    returncode: int
    wall_seconds: float
    ru_maxrss_bytes: int  # kernel peak RSS of the child from wait4 (may include the parent's RSS at fork)
    sampled_peak_rss_bytes: int  # max of VmRSS sampled every `sample_every` seconds
    load_before: list[float]
    load_after: list[float]


def run_child(cmd: list[str], env: dict | None = None, timeout: float = 3600.0, sample_every: float = 0.2,
              log_path: str | Path | None = None) -> ChildRun:
    """Run one benchmark side in a fresh process; wait4 gives this child's own rusage, not all children's."""
    load_before = load_average()
    log = open(log_path, "w") if log_path else None
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=log or None, stderr=subprocess.STDOUT if log else None)
    sampled_peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal sampled_peak
        while not done.is_set():
            rss = current_rss_bytes(proc.pid)
            if rss:
                sampled_peak = max(sampled_peak, rss)
            done.wait(sample_every)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    deadline = start + timeout
    try:
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.1)
    finally:
        done.set()
        sampler.join()
        if log:
            log.close()
    proc.returncode = os.waitstatus_to_exitcode(status)  # keep Popen from waiting on a reaped pid
    return ChildRun(returncode=proc.returncode, wall_seconds=time.perf_counter() - start,
                    ru_maxrss_bytes=usage.ru_maxrss * 1024, sampled_peak_rss_bytes=sampled_peak,
                    load_before=load_before, load_after=load_average())


def parse_lscpu(text: str) -> dict:
    """The CPU model and the bf16 instruction sets from ``lscpu``'s output (``Model name:`` and ``Flags:``)."""
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("Flags", "").split())
    return {"model_name": fields.get("Model name"), "avx512_bf16": "avx512_bf16" in flags,
            "amx_bf16": "amx_bf16" in flags, "amx_tile": "amx_tile" in flags}


def cpu_info() -> dict:
    """This machine's CPU as ``lscpu`` reports it (model name, whether avx512_bf16 / AMX are present)."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True,
                              env={**os.environ, "LC_ALL": "C"}).stdout
    except (OSError, subprocess.CalledProcessError):
        text = ""
    return {**parse_lscpu(text), "cpus": os.cpu_count()}


def cpu_has_bf16_matmul() -> bool:
    """Native bf16 dot products (AVX512-BF16 or AMX). Without them CPU bf16 matmuls take slow paths.

    The same rule as ``rlhf.core.runtime.cpu_has_bf16_matmul`` (our precision "auto"), repeated here because
    the TRL side runs in a virtualenv without our package.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(requested: str) -> str:
    """``auto`` | ``bf16`` | ``fp32`` -> ``bf16`` or ``fp32``, the same for both sides; auto follows our
    ``train.precision: auto`` on a CPU (bf16 iff native bf16 dot products)."""
    if requested not in ("auto", "bf16", "fp32"):
        raise ValueError(f"--precision: expected auto, bf16 or fp32, got {requested!r}")
    if requested == "auto":
        return "bf16" if cpu_has_bf16_matmul() else "fp32"
    return requested


def param_dtypes(model) -> dict[str, int]:
    """Parameter count per dtype (``{"bfloat16": ..., "float32": ...}``): what a side's weights really are."""
    counts: dict[str, int] = {}
    for p in model.parameters():
        name = str(p.dtype).replace("torch.", "")
        counts[name] = counts.get(name, 0) + p.numel()
    return counts


# ---------------------------------------------------------------- the memory policy both sides run under
# Our trainer (rlhf.rl.memory) caps oneDNN's primitive cache and PyTorch's ideep computation cache at 64 entries
# and returns freed heap to the OS (glibc malloc_trim) between phases. The peer gets the same deal: the caps reach
# both side processes through their environment (harness.child_env; ours sets them only where unset, so the
# values are equal), and the peer's side script trims at the same phase boundaries. Repeated here because the
# peer's side never imports our package; tests/test_benchmarks.py checks these agree with rlhf.rl.memory.
CACHE_CAP_ENV = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")
CACHE_CAPACITY = 64


def cache_cap_env() -> dict[str, str]:
    return {name: str(CACHE_CAPACITY) for name in CACHE_CAP_ENV}


class HeapTrimmer:
    """glibc ``malloc_trim(0)`` (a no-op elsewhere), counting its calls for the side's result JSON."""

    def __init__(self) -> None:
        import ctypes
        import ctypes.util

        self.calls = 0
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6") if sys.platform.startswith("linux") else None
        except OSError:
            libc = None
        self._libc = libc if libc is not None and hasattr(libc, "malloc_trim") else None

    def trim(self) -> None:
        if self._libc is not None:
            self._libc.malloc_trim(0)
            self.calls += 1


def memory_policy(malloc_trim: str) -> dict:
    """The cache caps in force in this process (its environment) and how it trims the heap, for the JSON."""
    return {"cache_caps": {name: os.environ.get(name) for name in CACHE_CAP_ENV}, "malloc_trim": malloc_trim}


# ---------------------------------------------------------------- FLOPs


def matmul_flops(n: int) -> float:
    """One n x n by n x n matmul: n^2 outputs, each n multiply-adds."""
    return 2.0 * n**3


def forward_flops(body_params: int, tokens: int, head_params: int = 0, head_tokens: int = 0) -> float:
    """2 FLOPs per weight per token: the decoder's matmuls on every token, the LM head on ``head_tokens`` only.

    ``body_params`` excludes the embedding table (a lookup, not a matmul); a tied LM head is counted in
    ``head_params`` for the positions that actually go through it. Attention's sequence-squared terms are
    left out (small at these lengths), as in the usual 6*N*T rule.
    """
    return 2.0 * (body_params * tokens + head_params * head_tokens)


def lora_train_flops(forward: float, lora_params: int, tokens: int) -> float:
    """Forward + backward of a LoRA model on a frozen base: forward F; backward still sends activation
    gradients through every frozen matmul (another F) but computes weight gradients only for the adapters
    (2 * N_lora * T). Full fine-tuning would be 3 * F (6 * N * T)."""
    return 2.0 * forward + 2.0 * lora_params * tokens


def full_train_flops(forward: float) -> float:
    return 3.0 * forward


def measure_matmul_peak(dtype: str = "bfloat16", n: int = 2048, repeats: int = 5, min_seconds: float = 1.0,
                        threads: int = 2) -> dict:
    """Achieved matmul FLOP/s of n x n by n x n products: median over ``repeats`` timed loops.

    The product is ``F.linear(a, b)`` (a @ b.T), the kernel every ``nn.Linear`` of the models runs. On a
    CPU without native bf16 dot products, bf16 ``torch.matmul`` of square operands takes a far slower
    path still (~0.15 GFLOP/s at 2048 on the AVX2 machine of 2026-11-28), so it would not be a peak.
    Each loop runs whole products until ``min_seconds`` have passed (at least one).
    """
    import torch
    from torch.nn.functional import linear

    torch.set_num_threads(threads)
    a = torch.randn(n, n, dtype=getattr(torch, dtype))
    b = torch.randn(n, n, dtype=getattr(torch, dtype))
    linear(a, b)  # warm-up: thread pool, packed buffers
    rates = []
    for _ in range(repeats):
        count, start = 0, time.perf_counter()
        while count == 0 or time.perf_counter() - start < min_seconds:
            linear(a, b)
            count += 1
        rates.append(count * matmul_flops(n) / (time.perf_counter() - start))
    return {"dtype": dtype, "op": "F.linear", "n": n, "threads": threads, "repeats": repeats,
            "flops_per_s_median": statistics.median(rates), "flops_per_s_all": rates}


# ---------------------------------------------------------------- side results


def write_side_result(path: str | Path, side: str, steps: list[StepRecord], extra: dict) -> dict:
    """What a side's subprocess reports back: its steps, their summary and its own peak RSS."""
    result = {"side": side, "peak_rss_bytes": own_peak_rss_bytes(), **summarize_steps(steps),
              "step_records": [asdict(s) for s in steps], **extra}
    Path(path).write_text(json.dumps(result, indent=1))
    return result


def read_side_result(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


if __name__ == "__main__":  # `python benchmarks/common.py peak bfloat16 2048 5` prints the matmul peak as JSON
    if sys.argv[1:2] == ["peak"]:
        given = sys.argv[2:]
        dtype = given[0] if len(given) > 0 else "bfloat16"
        n = int(given[1]) if len(given) > 1 else 2048
        repeats = int(given[2]) if len(given) > 2 else 5
        print(json.dumps(measure_matmul_peak(dtype, n, repeats)))
