"""One metrics logger for every stage: console progress, ``metrics.jsonl`` and Weights & Biases.

Keys are namespaced (``loss/policy``, ``objective/kl``, ``reward/harmless`` ...) and the same keys
reach every sink. W&B runs offline unless asked otherwise (``wandb sync runs/<run>/wandb`` later) and
never prompts for a login. Only the main process writes; other ranks get a logger that drops records.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from rlhf.config import RunConfig, save_config, to_dict


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def make_run_dir(run: RunConfig, stage: str, create: bool = True) -> Path:
    """``<output_dir>/<run_name or stage-time>``; the same name on every rank (taken from the env when set)."""
    name = run.run_name or os.environ.get("RLHF_RUN_NAME") or f"{stage}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(run.output_dir) / name
    if create:
        run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def ensure_new_run_dir(run_dir: Path) -> Path:
    """A run that is not a resume must not write into an earlier run's folder: its metrics would be appended to
    the old ones and its checkpoints mixed with them. One line naming the key, before any model loads."""
    if (run_dir / "metrics.jsonl").exists() or (run_dir / "checkpoints").exists():
        from rlhf.config import ConfigError

        raise ConfigError(f"run.run_name: {run_dir} holds an earlier run; --resume continues it, another "
                          "run.run_name (or none) starts a new one")
    return run_dir


def _scalar(value: Any) -> Any:
    """Tensors and numpy scalars become Python numbers; NaN/inf are kept as strings JSON can hold."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


@dataclass
class Table:
    columns: list[str]
    rows: list[list[Any]]


class MetricsLogger:
    """Log namespaced scalars and tables to console, ``metrics.jsonl`` and W&B.

    >>> logger = MetricsLogger(run_dir, run_cfg, stage="ppo", config=cfg)
    >>> logger.log({"loss/policy": 0.1, "objective/kl": 0.02}, step=3)
    >>> logger.log_table("samples", ["prompt", "response"], [["hi", "hello"]], step=3)
    >>> logger.finish()
    """

    def __init__(self, run_dir: str | Path, run: RunConfig, stage: str, config: Any = None,
                 total_steps: int | None = None, enabled: bool | None = None):
        self.run_dir = Path(run_dir)
        self.stage = stage
        self.enabled = is_main_process() if enabled is None else enabled
        self._wandb = None
        self._bar = None
        self._jsonl = None
        if not self.enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if config is not None:
            save_config(config, self.run_dir / "config.yaml")
        self._jsonl = open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8")
        if total_steps:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_steps, desc=stage, dynamic_ncols=True, file=sys.stderr)
        if run.wandb_mode != "disabled":
            self._wandb = _start_wandb(self.run_dir, run, stage, config)

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        if not self.enabled:
            return
        record = {k: _scalar(v) for k, v in metrics.items()}
        self._jsonl.write(json.dumps({"step": step, "time": time.time(), **record}) + "\n")
        self._jsonl.flush()
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in record.items() if not isinstance(v, str)}, step=step)
        if self._bar is not None:
            self._bar.n = min(step, self._bar.total)
            shown = {k.split("/")[-1]: v for k, v in list(record.items())[:4] if isinstance(v, (int, float))}
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()}, refresh=True)
        else:
            shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items())
            print(f"[{self.stage}] step {step}: {shown}", file=sys.stderr, flush=True)

    def resumed_at(self, step: int) -> None:
        """Call when a run resumes from its checkpoint of ``step``: the records of later steps (logged by the
        run that was cut short, and about to be redone) leave ``metrics.jsonl``, so every step is in it once
        and summaries read from it describe the whole run. A line torn by the kill goes too."""
        if not self.enabled:
            return
        path = self.run_dir / "metrics.jsonl"
        self._jsonl.close()
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("step", 0) <= step:
                kept.append(line if line.endswith("\n") else line + "\n")
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        os.replace(tmp, path)
        self._jsonl = open(path, "a", encoding="utf-8")

    def log_table(self, name: str, columns: Sequence[str], rows: Iterable[Sequence[Any]], step: int) -> None:
        """Tables (sample generations ...) go to ``<name>.jsonl`` and to W&B as a wandb.Table."""
        if not self.enabled:
            return
        rows = [list(r) for r in rows]
        with open(self.run_dir / f"{name.replace('/', '_')}.jsonl", "a", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps({"step": step, **dict(zip(columns, row))}, default=str) + "\n")
        if self._wandb is not None:
            import wandb

            self._wandb.log({name: wandb.Table(columns=list(columns), data=rows)}, step=step)

    def summary(self, values: Mapping[str, Any]) -> None:
        """Final numbers of a run: ``summary.json`` and the W&B run summary."""
        if not self.enabled:
            return
        path = self.run_dir / "summary.json"
        existing = json.loads(path.read_text()) if path.exists() else {}
        existing.update({k: _scalar(v) for k, v in values.items()})
        path.write_text(json.dumps(existing, indent=2))
        if self._wandb is not None:
            self._wandb.summary.update(dict(values))

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def _start_wandb(run_dir: Path, run: RunConfig, stage: str, config: Any):
    # Offline by default: no network here, and a login prompt must never block a run.
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_CONSOLE", "off")
    if run.wandb_mode == "offline":
        os.environ["WANDB_MODE"] = "offline"
    try:
        import wandb

        return wandb.init(
            project=run.wandb_project, name=run_dir.name, tags=[stage, *run.tags], dir=str(run_dir),
            config=to_dict(config) if config is not None else None, mode=run.wandb_mode,
            job_type=stage, reinit="finish_previous", settings=wandb.Settings(silent=True),
        )
    except Exception as err:  # tracking must never kill a training run
        print(f"[{stage}] W&B unavailable ({type(err).__name__}: {err}); metrics.jsonl only", file=sys.stderr)
        return None


def logged_value(run_dir: str | Path, key: str, step: int) -> Any:
    """The value of ``key`` that ``metrics.jsonl`` holds for ``step`` (the last one logged), or None."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return None
    return next((r[key] for r in reversed(read_metrics(path)) if r.get("step") == step and key in r), None)


def run_history(run_dir: str | Path, key: str) -> list[dict[str, Any]]:
    """The records of the whole run that hold ``key``, one per step in step order (the last, should a step
    appear twice): what a summary of a resumed run must be built from, not the resumed process's memory."""
    path = Path(run_dir) / "metrics.jsonl"
    by_step = {r["step"]: r for r in read_metrics(path) if key in r} if path.is_file() else {}
    return [by_step[s] for s in sorted(by_step)]


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Read a ``metrics.jsonl`` back (for reports and tests)."""
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
