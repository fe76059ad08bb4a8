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


# ---------------------------------------------------------------- the workload both sides run


@dataclass
class Workload:
    """One PPO workload, written to JSON by the orchestrator and read by each side's subprocess."""

    policy_path: str  # SmolLM2-135M-Instruct folder (fp32 safetensors)
    reward_path: str  # SmolLM2-135M sequence classifier (num_labels=1) both sides load
    prompts: list[str]  # chat-rendered prompt texts, generation prompt included
    batch_size: int = 8  # rollouts per PPO step
    mini_batch_size: int = 4  # samples per optimizer step
    ppo_epochs: int = 1
    max_new_tokens: int = 32
    temperature: float = 1.0
    threads: int = 2
    seed: int = 0
    learning_rate: float = 1e-5
    lora_r: int = 16
    lora_alpha: int = 32
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])

    @property
    def num_steps(self) -> int:
        return len(self.prompts) // self.batch_size

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
    train_seconds: float | None = None  # the optimisation phase alone, when the side can time it
    train_tokens: int | None = None  # non-pad tokens that went through forward+backward in that phase


class StepClock:
    """Wall-clock seconds between consecutive calls of :meth:`lap` (the first lap starts at :meth:`start`)."""

    def __init__(self) -> None:
        self._last: float | None = None

    def start(self) -> None:
        self._last = time.perf_counter()

    def lap(self) -> float:
        if self._last is None:
            raise RuntimeError("StepClock.lap() before start()")
        now = time.perf_counter()
        elapsed, self._last = now - self._last, now
        return elapsed


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
    summary = {
        "steps": len(steps),
        "warmup_steps_excluded": warmup,
        "step_seconds": seconds,
        "sec_per_step_median": steady_median(seconds, warmup),
        "tokens_per_s_median": steady_median([s.generated_tokens / s.seconds for s in steps], warmup),
        "generated_tokens_per_step": [s.generated_tokens for s in steps],
    }
    train = [s for s in steps if s.train_seconds]
    if train:
        summary["train_seconds_median"] = steady_median([s.train_seconds for s in train], warmup)
        summary["train_tokens_median"] = steady_median([float(s.train_tokens or 0) for s in train], warmup)
        summary["train_tokens_per_s_median"] = steady_median([s.train_tokens / s.train_seconds for s in train], warmup)
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


# ---------------------------------------------------------------- FLOPs


def matmul_flops(n: int) -> float:
    """One n x n by n x n matmul: n^2 outputs, each n multiply-adds."""
    return 2.0 * n**3


def lora_train_flops(params: int, lora_params: int, tokens: int) -> float:
    """Forward + backward FLOPs of one pass over ``tokens`` with LoRA on a frozen base.

    forward 2*N*T; backward still propagates activation gradients through every frozen matmul (2*N*T)
    but computes weight gradients only for the adapters (2*N_lora*T). Full fine-tuning would be 6*N*T.
    Attention's sequence-squared terms are left out (small at these lengths), as in the usual 6*N*T rule.
    """
    return 4.0 * params * tokens + 2.0 * lora_params * tokens


def full_train_flops(params: int, tokens: int) -> float:
    return 6.0 * params * tokens


def measure_bf16_matmul_peak(n: int = 2048, repeats: int = 7, inner: int = 5, threads: int = 2) -> dict:
    """Achievable bf16 matmul FLOP/s on this machine's CPU threads: median over ``repeats`` timed loops."""
    import torch

    torch.set_num_threads(threads)
    a = torch.randn(n, n, dtype=torch.bfloat16)
    b = torch.randn(n, n, dtype=torch.bfloat16)
    for _ in range(2):  # warm-up: thread pool, packed-weight buffers
        a @ b
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            a @ b
        rates.append(inner * matmul_flops(n) / (time.perf_counter() - start))
    return {"n": n, "threads": threads, "repeats": repeats, "inner": inner,
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


if __name__ == "__main__":  # `python benchmarks/common.py peak 2048` prints the bf16 matmul peak as JSON
    if sys.argv[1:2] == ["peak"]:
        print(json.dumps(measure_bf16_matmul_peak(n=int(sys.argv[2]) if len(sys.argv) > 2 else 2048)))
