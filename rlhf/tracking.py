"""One metrics logger for every stage: console progress, ``metrics.jsonl`` and Weights & Biases.

Keys are namespaced (``loss/policy``, ``objective/kl``, ``reward/harmless`` ...) and the same keys
reach every sink. W&B runs offline unless asked otherwise (``wandb sync runs/<run>/wandb`` later) and
never prompts for a login. Only the main process writes; other ranks get a logger that drops records.

W&B as its users set it (:func:`wandb_settings`): ``WANDB_MODE``, ``WANDB_PROJECT`` and ``WANDB_ENTITY``
override ``run.wandb_mode`` / ``run.wandb_project`` (only ``run.wandb_mode: disabled`` is final); the stages
of one ``rlhf pipeline`` run share a W&B ``group`` (its folder name; ``WANDB_RUN_GROUP`` overrides). Each
stage's product is logged as an artifact (:meth:`MetricsLogger.log_artifact`: SFT policy -> reward model ->
RL policy -> eval report) whose inputs are the upstream artifacts, so a run's inputs are traceable: online as
W&B lineage, and always in ``<run>/artifact.json`` and in the artifact's metadata (W&B cannot record an
artifact's use offline).
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
    """``<output_dir>/<run_name or stage-time>`` for tools and tests; stages use ``rlhf.checkpoints.resolve_run``,
    which also refuses a used name and agrees the name across ranks."""
    from rlhf.checkpoints import run_folder

    run_dir = run_folder(run, stage)
    if create:
        run_dir.mkdir(parents=True, exist_ok=True)
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
        self.wandb_settings = wandb_settings(run)
        if self.wandb_settings["mode"] != "disabled":
            self._wandb = _start_wandb(self.run_dir, run, stage, config, self.wandb_settings)

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

    def log_images(self, paths: Iterable[str | Path], step: int) -> None:
        """Plots (PNG files already written) to W&B as ``wandb.Image`` under ``plots/<file stem>``."""
        if not self.enabled or self._wandb is None:
            return
        import wandb

        images = {f"plots/{Path(p).stem}": wandb.Image(str(p)) for p in paths if Path(p).is_file()}
        if images:
            self._wandb.log(images, step=step)

    def log_artifact(self, path: str | Path, kind: str, inputs: Iterable[str | Path] = ()) -> dict[str, Any]:
        """Record ``path`` (a model folder, a report folder) as this stage's product, made from ``inputs``.

        Writes ``<run>/artifact.json`` (name, type, path and the upstream artifacts: what each input's own run
        recorded, or just its path for a zoo model) and logs a W&B artifact that references the files in place
        (no copy of a model into the wandb folder). Online, each upstream artifact is marked as used, so W&B
        draws the lineage; the same references give the same digest, hence the upstream run's version."""
        if not self.enabled:
            return {}
        group = self.wandb_settings.get("group")
        record = {"name": artifact_name(f"{group}-{self.stage}" if group else self.run_dir.name), "type": kind,
                  "path": str(Path(path).resolve()), "stage": self.stage, "group": group,
                  "inputs": [upstream_artifact(p) for p in inputs if p]}
        (self.run_dir / "artifact.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
        if self._wandb is not None:
            try:
                import wandb

                if self.wandb_settings["mode"] == "online":
                    for used in record["inputs"]:
                        if "name" in used and Path(used["path"]).exists():
                            self._wandb.use_artifact(_reference_artifact(wandb, used))
                self._wandb.log_artifact(_reference_artifact(wandb, record))
            except Exception as err:  # tracking must never kill a run
                print(f"[{self.stage}] W&B artifact not logged ({type(err).__name__}: {err})", file=sys.stderr)
        return record

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


PIPELINE_TAG = "pipeline:"  # rlhf.pipeline tags every stage of a pipeline run with pipeline:<its folder name>


def wandb_settings(run: RunConfig, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """mode, project, entity and group of a stage's W&B run: the user's WANDB_* environment first (as W&B's own
    tools read it), then the run config. ``run.wandb_mode: disabled`` stays disabled whatever the environment."""
    env = os.environ if environ is None else environ
    group = env.get("WANDB_RUN_GROUP") or next(
        (t[len(PIPELINE_TAG):] for t in run.tags if t.startswith(PIPELINE_TAG)), None)
    return {"mode": "disabled" if run.wandb_mode == "disabled" else env.get("WANDB_MODE") or run.wandb_mode,
            "project": env.get("WANDB_PROJECT") or run.wandb_project,
            "entity": env.get("WANDB_ENTITY") or None, "group": group}


def artifact_name(text: str) -> str:
    """W&B artifact names allow letters, digits, dashes, underscores and dots."""
    import re

    return re.sub(r"[^\w.-]+", "-", text).strip("-") or "artifact"


def upstream_artifact(path: str | Path) -> dict[str, Any]:
    """What an input was: the ``artifact.json`` its stage wrote (in the folder or the run folder above it; an
    RL ``final/adapter`` is two levels down), else just its path (a zoo model, a hub id)."""
    folder = Path(path).expanduser()
    for candidate in (folder, *list(folder.parents)[:2]):
        record = candidate / "artifact.json"
        if record.is_file():
            data = json.loads(record.read_text(encoding="utf-8"))
            return {k: data[k] for k in ("name", "type", "path", "stage") if k in data}
    return {"path": str(path)}


def _reference_artifact(wandb, record: Mapping[str, Any]):
    art = wandb.Artifact(record["name"], type=record["type"],
                         metadata={"path": record["path"], "inputs": record.get("inputs", [])})
    art.add_reference(Path(record["path"]).resolve().as_uri())
    return art


def _start_wandb(run_dir: Path, run: RunConfig, stage: str, config: Any, settings: Mapping[str, Any]):
    # Offline by default: no network here, and a login prompt must never block a run. The user's WANDB_* are
    # kept: `settings` already gave them precedence over the config.
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_CONSOLE", "off")
    try:
        import wandb

        return wandb.init(
            project=settings["project"], entity=settings["entity"], group=settings["group"], name=run_dir.name,
            tags=[stage, *run.tags], dir=str(run_dir), config=to_dict(config) if config is not None else None,
            mode=settings["mode"], job_type=stage, reinit="finish_previous", settings=wandb.Settings(silent=True),
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
    """Read a JSON-lines file the logger wrote back (``metrics.jsonl``, ``samples.jsonl`` ...; reports and tests)."""
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
