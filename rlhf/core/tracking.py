"""One metrics logger for every stage: console progress, ``metrics.jsonl`` and Weights & Biases.

Keys are namespaced (``loss/policy``, ``objective/kl``, ``reward/harmless`` ...) and the same keys
reach every sink. W&B runs offline unless asked otherwise (``wandb sync runs/<run>/wandb`` later) and
never prompts for a login. Only the main process writes; other ranks get a logger that drops records.

W&B as its users set it (:func:`wandb_settings`): ``WANDB_MODE``, ``WANDB_PROJECT`` and ``WANDB_ENTITY``
override ``run.wandb_mode`` / ``run.wandb_project`` (only ``run.wandb_mode: disabled`` is final); the stages
of one ``rlhf pipeline`` run share a W&B ``group`` (its folder name; ``WANDB_RUN_GROUP`` overrides). Each
stage's product is logged as an artifact (:meth:`MetricsLogger.log_artifact`: SFT policy -> reward model ->
RL policy -> eval report) whose inputs are the upstream artifacts, so a run's inputs are traceable: online as
W&B lineage, and always in ``<run>/artifact.json`` and in the artifact's metadata. W&B refuses
``use_artifact`` offline (``TypeError: Cannot use artifact when in offline mode``), so an offline run records its
inputs (``artifact.json`` names its W&B run id and each input artifact, and the run's config holds
``rlhf/inputs``); after ``wandb sync``, ``rlhf track link RUN_DIR ...`` resumes each synced run online and marks
those inputs as used: the lineage graph W&B would have drawn online. Names are per role: the gold judge's
artifact is ``<group>-gold``, the proxy's ``<group>-reward``.

Every ``WANDB_*`` variable keeps its meaning: mode, project, entity and group as above; ``WANDB_DIR`` (else the run
folder), ``WANDB_NAME``, ``WANDB_JOB_TYPE`` and ``WANDB_TAGS`` (added to ours) win over what the stage would pass;
the rest (``WANDB_RUN_ID``, ``WANDB_NOTES``, ``WANDB_API_KEY`` ...) W&B reads itself, as nothing overrides them.

``run.trackers`` adds TensorBoard (``<run>/tensorboard``) and trackio (local, ``trackio show``) beside W&B; a
tracker whose package is missing is refused in one line naming the key when the config is read.
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

from rlhf.core.config import RunConfig, save_config, to_dict


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


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
        self._tensorboard = None
        self._trackio = None
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
        trackers = getattr(run, "trackers", ["wandb"])
        if self.wandb_settings["mode"] != "disabled" and "wandb" in trackers:
            self._wandb = _start_wandb(self.run_dir, run, stage, config, self.wandb_settings)
        self._tensorboard = None
        if "tensorboard" in trackers:
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
        self._trackio = None
        if "trackio" in trackers:
            import trackio

            self._trackio = trackio.init(project=self.wandb_settings["project"], name=self.run_dir.name,
                                         group=self.wandb_settings["group"],
                                         config=to_dict(config) if config is not None else None)

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        # Every key has a namespace ("train/lr", not "lr"): W&B groups panels by it and the report finds keys by it.
        # Checked on every process, so a rank that does not write still fails the same way.
        bare = next((k for k in metrics if "/" not in k.strip("/")), None)
        if bare is not None:
            raise ValueError(f"metric {bare!r} has no namespace: log it as '<namespace>/{bare}' (e.g. train/{bare})")
        if not self.enabled:
            return
        record = {k: _scalar(v) for k, v in metrics.items()}
        self._jsonl.write(json.dumps({"step": step, "time": time.time(), **record}) + "\n")
        self._jsonl.flush()
        numbers = {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in record.items() if not isinstance(v, str)}, step=step)
        if self._tensorboard is not None:
            for key, value in numbers.items():
                self._tensorboard.add_scalar(key, value, global_step=step)
        if self._trackio is not None:
            self._trackio.log(numbers, step=step)
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
        if self._tensorboard is not None:  # TensorBoard shows tables as markdown text
            head = f"| {' | '.join(map(str, columns))} |\n|{'|'.join(['---'] * len(columns))}|\n"
            body = "".join(f"| {' | '.join(map(str, row))} |\n" for row in rows)
            self._tensorboard.add_text(name, head + body, global_step=step)

    def log_images(self, paths: Iterable[str | Path], step: int) -> None:
        """Plots (PNG files already written) to W&B as ``wandb.Image`` and to TensorBoard, under ``plots/<file stem>``."""
        paths = [Path(p) for p in paths if Path(p).is_file()]
        if not self.enabled or not paths:
            return
        if self._tensorboard is not None:
            import numpy as np
            from PIL import Image

            for path in paths:
                pixels = np.asarray(Image.open(path).convert("RGB"))  # (H, W, 3)
                self._tensorboard.add_image(f"plots/{path.stem}", pixels, global_step=step, dataformats="HWC")
        if self._wandb is None:
            return
        import wandb

        self._wandb.log({f"plots/{p.stem}": wandb.Image(str(p)) for p in paths}, step=step)

    def log_artifact(self, path: str | Path, kind: str, inputs: Iterable[str | Path] = (),
                     role: str | None = None) -> dict[str, Any]:
        """Record ``path`` (a model folder, a report folder) as this stage's product, made from ``inputs``.

        ``role``: what the product is for when one stage makes several kinds (the reward stage's ``gold`` judge),
        so each role has its own artifact name (``<group>-gold`` beside ``<group>-reward``).

        Writes ``<run>/artifact.json`` (name, type, path and the upstream artifacts: what each input's own run
        recorded, or just its path for a zoo model) and logs a W&B artifact that references the files in place
        (no copy of a model into the wandb folder). Online, each upstream artifact is marked as used, so W&B
        draws the lineage; offline (where W&B refuses use_artifact) the uses wait in ``artifact.json`` under
        ``wandb.pending_use`` for ``rlhf track link`` after ``wandb sync``."""
        if not self.enabled:
            return {}
        group = self.wandb_settings.get("group")
        label = role or self.stage
        name = f"{group}-{label}" if group else (f"{self.run_dir.name}-{role}" if role else self.run_dir.name)
        record = {"name": artifact_name(name), "type": kind, "path": str(Path(path).resolve()), "stage": self.stage,
                  "role": label, "group": group, "inputs": [upstream_artifact(p) for p in inputs if p]}
        used = [f"{i['name']}:latest" for i in record["inputs"] if "name" in i]
        if self._wandb is not None:
            online = self.wandb_settings["mode"] == "online"
            record["wandb"] = {"run_id": self._wandb.id, "project": self._wandb.project,
                               "entity": self.wandb_settings.get("entity") or getattr(self._wandb, "entity", None) or None,
                               "mode": self.wandb_settings["mode"], "pending_use": [] if online else used}
        (self.run_dir / "artifact.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
        if self._wandb is not None:
            try:
                import wandb

                # the inputs in the run's own config: synced with it, visible on the run page even unlinked
                self._wandb.config.update({"rlhf/inputs": record["inputs"], "rlhf/artifact": record["name"]},
                                          allow_val_change=True)
                if self.wandb_settings["mode"] == "online":
                    for upstream in record["inputs"]:
                        if "name" in upstream and Path(upstream["path"]).exists():
                            self._wandb.use_artifact(_reference_artifact(wandb, upstream))
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
        if self._tensorboard is not None:
            for key, value in existing.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tensorboard.add_scalar(f"summary/{key}", value)

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None
        if self._trackio is not None:
            self._trackio.finish()
            self._trackio = None


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

        env = os.environ  # what the user set wins: an argument passed to wandb.init would override it
        user_tags = [t.strip() for t in env.get("WANDB_TAGS", "").split(",") if t.strip()]
        directory = Path(env["WANDB_DIR"]) if env.get("WANDB_DIR") else run_dir
        directory.mkdir(parents=True, exist_ok=True)
        return wandb.init(
            project=settings["project"], entity=settings["entity"], group=settings["group"],
            name=env.get("WANDB_NAME") or run_dir.name, tags=list(dict.fromkeys([stage, *run.tags, *user_tags])),
            dir=str(directory), config=to_dict(config) if config is not None else None,
            mode=settings["mode"], job_type=env.get("WANDB_JOB_TYPE") or stage, reinit="finish_previous",
            settings=wandb.Settings(silent=True),
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


def link_lineage(run_dirs: Sequence[str | Path], log=print) -> int:
    """After ``wandb sync``: resume each synced run online (same id) and mark the inputs its ``artifact.json``
    still lists under ``wandb.pending_use`` as used (``run.use_artifact(name:latest)``, the call W&B refuses
    offline), so the lineage graph is what an online run would have drawn. Returns how many uses were recorded;
    a run with nothing pending is skipped."""
    import wandb

    done = 0
    for run_dir in map(Path, run_dirs):
        path = run_dir / "artifact.json"
        if not path.is_file():
            raise FileNotFoundError(f"{run_dir}: no artifact.json (not a stage run folder)")
        record = json.loads(path.read_text(encoding="utf-8"))
        tracked = record.get("wandb") or {}
        pending = tracked.get("pending_use") or []
        if not pending:
            log(f"{run_dir}: no pending artifact use")
            continue
        run = wandb.init(id=tracked["run_id"], project=tracked.get("project"), entity=tracked.get("entity"),
                         resume="must", mode="online", settings=wandb.Settings(silent=True))
        try:
            for name in pending:
                run.use_artifact(name)
                done += 1
        finally:
            run.finish()
        tracked["pending_use"] = []
        tracked["linked"] = pending
        path.write_text(json.dumps(record, indent=2), encoding="utf-8")
        log(f"{run_dir}: {record['name']} now uses {', '.join(pending)}")
    return done


def cli(argv: Sequence[str]) -> int:
    """``rlhf track link RUN_DIR ...``: the lineage of offline runs, once they are synced (``wandb sync``)."""
    import argparse

    parser = argparse.ArgumentParser(prog="rlhf track", description=cli.__doc__.split(":")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    link = sub.add_parser("link", help="after `wandb sync`: record each synced run's use of its input artifacts")
    link.add_argument("run_dirs", nargs="+", help="stage run folders (each has artifact.json)")
    args = parser.parse_args(argv)
    try:
        link_lineage(args.run_dirs)
    except Exception as err:  # no login, no network, run not synced: one line
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    return 0
