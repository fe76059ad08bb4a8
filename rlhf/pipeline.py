"""The whole pipeline from one config: SFT -> reward model (and a gold judge) -> PPO (and/or DPO) -> evaluation.

Each stage is its own script (``pipelines/<stage>.py``, ``main(cfg) -> run dir``) with its own config
class, whose defaults are the stage's; the pipeline config says, per stage, which YAML to layer on them and
which keys to override, and wires the stages together with placeholders in string values:

    {base}        the base model (``base_model``)          {run_dir}     this pipeline's folder
    {sft}         <run_dir>/sft/final (SFT adapter)        {sft_run}     <run_dir>/sft
    {reward}      <run_dir>/reward/final (reward model)    {reward_run}  <run_dir>/reward
    {gold}        <run_dir>/gold/final (gold judge)        {gold_run}    <run_dir>/gold
    {ppo}         <run_dir>/ppo/final                      {ppo_run}     <run_dir>/ppo
    {dpo}         <run_dir>/dpo/final                      {dpo_run}     <run_dir>/dpo

``stages`` picks which run (default sft, reward, ppo, eval; DPO is optional: ``--stages '[sft, reward, dpo,
eval]'`` or all six). Evaluation compares the policies of the stages that run: a policy whose path or base
lies in the folder of a stage left out is dropped from ``eval.policies`` (and from the variants naming it).

``gold`` (optional; on in the demo and tiny presets) is a second reward-stage run, ``role: gold``, trained on the
other half of the train pairs (``data.partition``; a reward or DPO stage on ``all`` or ``gold`` beside it is
refused): evaluation's ``gold.model: "{gold}"`` judges with it beside the proxy (without the stage,
evaluation has no gold). It never feeds a training stage: a training stage whose config names the gold's
folder is refused before anything runs (and the RL stage refuses a gold-marked model anyway).

Every stage writes to ``<run_dir>/<stage>/``. A stage whose finished output is there, made from the same
resolved config and the same upstream outputs, is reused; ``--force`` (all stages) or ``--force STAGE``
(that stage and the ones after it) runs again. All the configs are resolved before anything runs, so a
typo fails in a second, not after SFT.
"""
from __future__ import annotations

import gc
import hashlib
import json
import re
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rlhf.core.config import ConfigError, RunConfig, _merge, _set_dotted, from_dict, load_yaml, to_dict
from rlhf.stages import STAGES, pipeline_stages

# The stages, their order, scripts and upstream stages: rlhf.stages.STAGES (those with pipeline=True).
DEFAULT_STAGES = ("sft", "reward", "ppo", "eval")
TRAINING_STAGES = ("sft", "reward", "ppo", "dpo")  # none may consume the gold judge's output
MARKER = "pipeline_stage.json"  # written into a stage's folder when it finished: what it was made from, a run id


@dataclass
class StageSpec:
    """How the pipeline configures one stage."""

    config: str = field(
        default="",
        metadata={"help": "a YAML layered on the stage's dataclass defaults (e.g. configs/sft_tiny.yaml); empty: none"})
    overrides: dict[str, Any] = field(default_factory=dict,
                                      metadata={"help": "dotted keys, as --section.key flags; placeholders ok"})


@dataclass
class PipelineConfig:
    """SFT -> reward model -> PPO -> evaluation, from one file (``--preset demo|tiny`` or ``--config``)."""

    # stages write to <output_dir>/<run_name>/<stage>
    run: RunConfig = field(default_factory=lambda: RunConfig(run_name="pipeline"))
    base_model: str = field(default="smollm2-135m-instruct",
                            metadata={"help": "{base}: the model SFT starts from and evaluation's base policy"})
    threads: int = field(
        default=0,
        metadata={"help": "torch threads for every stage (0: torch's default); 1 suits tiny models on a shared CPU", "range": "[0, 4096]"})
    stages: list[str] = field(
        default_factory=lambda: list(DEFAULT_STAGES),
        metadata={"help": "stages to run, in pipeline order: sft, reward, gold, ppo, dpo, eval (gold, dpo optional)"})
    sft: StageSpec = field(default_factory=StageSpec)
    reward: StageSpec = field(default_factory=StageSpec)
    gold: StageSpec = field(default_factory=StageSpec,
                            metadata={"help": "the gold judge: a reward-stage run with role gold, for eval only"})
    ppo: StageSpec = field(default_factory=StageSpec)
    dpo: StageSpec = field(default_factory=StageSpec)
    eval: StageSpec = field(default_factory=StageSpec)


# ---------------------------------------------------------------- resolving stage configs


@dataclass
class Stage:
    name: str
    run_dir: Path
    config: Any  # the stage's own config dataclass, fully resolved
    main: Callable[[Any], Path]

    @property
    def config_sha(self) -> str:
        text = json.dumps(to_dict(self.config), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def pipeline_dir(cfg: PipelineConfig) -> Path:
    return Path(cfg.run.output_dir) / (cfg.run.run_name or "pipeline")


def placeholders(cfg: PipelineConfig) -> dict[str, str]:
    """{base}, {run_dir}, and {stage} / {stage_run} of every stage some stage consumes (upstream)."""
    root = pipeline_dir(cfg)
    values = {"base": cfg.base_model, "run_dir": str(root)}
    consumed = {upstream for name in pipeline_stages() for upstream in STAGES[name].upstream}
    for stage in (name for name in pipeline_stages() if name in consumed):
        values[f"{stage}_run"] = str(root / stage)
        values[stage] = str(root / stage / "final")
    return values


def substitute(tree: Any, values: dict[str, str]) -> Any:
    """Replace the known ``{name}`` placeholders in every string of a nested config tree (other braces stay)."""
    if isinstance(tree, str):
        known = re.compile(r"\{(" + "|".join(map(re.escape, values)) + r")\}")
        return known.sub(lambda m: values[m.group(1)], tree)
    if isinstance(tree, dict):
        return {k: substitute(v, values) for k, v in tree.items()}
    if isinstance(tree, list):
        return [substitute(v, values) for v in tree]
    return tree


def selected_stages(cfg: PipelineConfig) -> list[str]:
    """``cfg.stages`` in pipeline order; an unknown name is a ConfigError naming the key."""
    order = pipeline_stages()
    unknown = [s for s in cfg.stages if s not in order]
    if unknown:
        raise ConfigError(f"stages: unknown stage {unknown[0]!r} (known: {', '.join(order)})")
    return [s for s in order if s in cfg.stages]


def drop_unrun_policies(tree: dict[str, Any], cfg: PipelineConfig) -> dict[str, Any]:
    """Evaluation's config without the policies (and training runs) of stages that do not run in this pipeline,
    so one preset can list PPO and DPO; a variant left without its policies goes too (empty would mean all)."""
    root = pipeline_dir(cfg)
    absent = [str(root / s) for s in pipeline_stages() if s not in selected_stages(cfg) and s != "eval"]
    in_absent = lambda path: any(str(path) == a or str(path).startswith(a + "/") for a in absent)  # noqa: E731
    policies = tree.get("policies")
    if isinstance(policies, list):
        gone = {p.get("name") for p in policies
                if isinstance(p, dict) and (in_absent(p.get("model", "")) or in_absent(p.get("base", "")))}
        tree["policies"] = [p for p in policies if not (isinstance(p, dict) and p.get("name") in gone)]
        variants = []
        for v in tree.get("variants") or []:
            names = v.get("policies") if isinstance(v, dict) else None
            if names and gone & set(names):
                v = {**v, "policies": [n for n in names if n not in gone]}
                if not v["policies"]:
                    continue
            variants.append(v)
        if "variants" in tree:
            tree["variants"] = variants
    if isinstance(tree.get("training_runs"), dict):
        tree["training_runs"] = {k: v for k, v in tree["training_runs"].items() if not in_absent(v)}
    if isinstance(tree.get("gold"), dict) and in_absent(tree["gold"].get("model", "")):
        tree["gold"] = {**tree["gold"], "model": ""}  # no gold stage: the proxy is the only judge
    return tree


def gold_key(tree: Any, gold_dir: Path, key: str = "") -> str | None:
    """The dotted key of the first string in a stage's config tree that names the gold stage's folder, or None."""
    if isinstance(tree, str):
        return key if tree == str(gold_dir) or tree.startswith(str(gold_dir) + "/") else None
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else ()
    return next((found for k, v in items if (found := gold_key(v, gold_dir, f"{key}.{k}" if key else str(k)))), None)


def stage_entry(name: str) -> tuple[Callable, type, Path | None]:
    """(main, config class, defaults YAML or None) of a registered stage (``rlhf.stages.STAGES``)."""
    stage = STAGES[name]
    return stage.main, stage.config_class, stage.defaults


def config_path(path: str) -> Path:
    """A stage YAML as given, or relative to the repository (presets name ``pipelines/configs/x.yaml``)."""
    given = Path(path).expanduser()
    in_repo = Path(__file__).resolve().parents[1] / path
    return given if given.is_absolute() or given.exists() or not in_repo.exists() else in_repo


def resolve_stage(cfg: PipelineConfig, name: str, entry: tuple[Callable, type, Path | None] | None = None) -> Stage:
    """The stage's config: its defaults < spec.config < pipeline run settings < spec.overrides, placeholders filled."""
    main, config_cls, defaults = entry or stage_entry(name)
    # A registered stage without its own section in PipelineConfig runs on its defaults (and the run settings).
    spec: StageSpec = getattr(cfg, name, None) or StageSpec()
    tree = load_yaml(defaults) if defaults is not None and defaults.is_file() else {}
    if spec.config:
        tree = _merge(tree, load_yaml(config_path(spec.config)))
    run = dict(tree.get("run") or {})
    # A stage whose defaults set their own logging interval (SFT: 5, reward: 10) keeps it; others take the pipeline's.
    stage_log_every = config_cls().run.log_every
    own_log_every = stage_log_every if stage_log_every != RunConfig().log_every else cfg.run.log_every
    run.update(seed=cfg.run.seed, device=cfg.run.device, wandb_project=cfg.run.wandb_project,
               wandb_mode=cfg.run.wandb_mode, tags=[*cfg.run.tags, f"pipeline:{pipeline_dir(cfg).name}"],
               log_every=run.get("log_every", own_log_every))
    tree["run"] = run
    for dotted, value in spec.overrides.items():
        _set_dotted(tree, dotted, value)
    # Where each stage writes is the pipeline's business: reuse depends on it.
    tree["run"].update(output_dir=str(pipeline_dir(cfg)), run_name=name)
    tree = substitute(tree, placeholders(cfg))
    if name == "eval":
        tree = drop_unrun_policies(tree, cfg)
    if name == "gold":  # the gold stage's model is a judge by definition: marked so, refused by training stages
        if tree.get("role", "gold") != "gold":
            raise ConfigError(f"pipeline stage gold: role: {tree['role']!r}: the gold stage trains a gold judge "
                              "(role: gold); a proxy reward model is the reward stage")
        tree["role"] = "gold"
    if name in TRAINING_STAGES and (key := gold_key(tree, pipeline_dir(cfg) / "gold")):
        raise ConfigError(f"pipeline stage {name}: {key}: names the gold judge's output ({pipeline_dir(cfg) / 'gold'});"
                          " the gold only judges in eval and never feeds a training stage")
    try:
        config = from_dict(config_cls, tree)
    except ConfigError as err:
        raise ConfigError(f"pipeline stage {name}: {err}") from None
    # The gold judges what the proxy and DPO learnt: it must not have seen their prompts (rlhf.data.sources.partition_of).
    partition = getattr(getattr(config, "data", None), "partition", None)
    if name in ("reward", "dpo") and "gold" in selected_stages(cfg) and partition in ("gold", "all"):
        raise ConfigError(f"pipeline stage {name}: data.partition: {partition}: overlaps the gold judge's "
                          "half of the train pairs (the gold stage runs); leave it auto (the proxy's half)")
    return Stage(name, pipeline_dir(cfg) / name, config, main)


# ---------------------------------------------------------------- reuse


def is_finished(stage: Stage) -> bool:
    """The stage's own end products are there (a killed stage has no marker and may lack them)."""
    if stage.name == "eval":
        return (stage.run_dir / "report.md").is_file() and (stage.run_dir / "results.json").is_file()
    return (stage.run_dir / "final").is_dir() and (stage.run_dir / "summary.json").is_file()


def read_marker(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir / MARKER).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def upstream_of(stage: Stage) -> tuple[str, ...]:
    """The stages whose output this one consumes: the fixed ones, and any earlier stage whose folder its config
    names (the reward stage with ``model.name: "{sft}"`` starts from the SFT policy)."""
    text = json.dumps(to_dict(stage.config), default=str)
    order, fixed = pipeline_stages(), STAGES[stage.name].upstream
    named = tuple(s for s in order[:order.index(stage.name)] if s not in fixed
                  and re.search(re.escape(str(stage.run_dir.parent / s)) + r'[/"]', text))
    return fixed + named


def stage_key(stage: Stage, upstream_markers: list[dict[str, Any] | None]) -> str:
    """What a stage's output was made from: its config and the exact upstream runs (their run ids) it consumed."""
    upstream = [m.get("run_id") if m else None for m in upstream_markers]
    return hashlib.sha256(json.dumps([stage.config_sha, upstream]).encode()).hexdigest()[:16]


def forced_stages(force: bool | str) -> set[str]:
    """``--force``: every stage; ``--force ppo``: ppo and every stage after it."""
    order = pipeline_stages()
    if force is True:
        return set(order)
    if not force:
        return set()
    if force not in order:
        raise ConfigError(f"--force {force}: expected one of {', '.join(order)} (or --force alone for all)")
    return set(order[order.index(force):])


# ---------------------------------------------------------------- running


def run_pipeline(cfg: PipelineConfig, force: bool | str = False, log: Callable[[str], None] | None = None,
                 entries: dict[str, tuple[Callable, type, Path]] | None = None) -> dict[str, Any]:
    """Run (or reuse) every stage in order; returns the per-stage record also written to pipeline.json."""
    from tqdm.auto import tqdm

    root = pipeline_dir(cfg)
    forced = forced_stages(force)
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    stages = [resolve_stage(cfg, name, (entries or {}).get(name))  # fail fast on config errors
              for name in selected_stages(cfg)]
    root.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {"run_dir": str(root), "stages": {}}
    started = time.perf_counter()
    bar = tqdm(total=len(stages), desc="pipeline", unit="stage", file=sys.stderr, dynamic_ncols=True)
    say = log or (lambda msg: bar.write(msg, file=sys.stderr))
    markers: dict[str, dict[str, Any] | None] = {}
    for i, stage in enumerate(stages, 1):
        # upstream stages this pipeline runs (a default pipeline's keys are what they were before dpo existed)
        key = stage_key(stage, [markers[u] for u in upstream_of(stage) if u in markers])
        marker = read_marker(stage.run_dir)
        reusable = marker is not None and marker.get("key") == key and is_finished(stage)
        bar.set_description(f"pipeline [{stage.name}]")
        if reusable and stage.name not in forced:
            say(f"[pipeline] {i}/{len(stages)} {stage.name}: reusing {stage.run_dir} "
                f"(finished {marker.get('finished')}, took {marker.get('seconds', 0):.0f} s; "
                f"--force {stage.name} reruns it)")
            markers[stage.name] = marker
            record["stages"][stage.name] = {**marker, "reused": True}
            bar.update(1)
            continue
        why = ("forced" if stage.name in forced else "config or upstream changed" if marker is not None
               else "interrupted earlier: starting over" if stage.run_dir.exists() else "first run")
        if stage.run_dir.exists():  # never mix a new run's metrics.jsonl into an old one's
            shutil.rmtree(stage.run_dir)
        say(f"[pipeline] {i}/{len(stages)} {stage.name}: running ({why}) -> {stage.run_dir}")
        t0 = time.perf_counter()
        returned = Path(stage.main(stage.config))
        if returned.resolve() != stage.run_dir.resolve():
            raise RuntimeError(f"stage {stage.name} wrote to {returned}, expected {stage.run_dir}")
        if not is_finished(stage):
            raise RuntimeError(f"stage {stage.name} returned but its output is incomplete in {stage.run_dir}")
        marker = {"key": key, "run_id": uuid.uuid4().hex, "config_sha": stage.config_sha,
                  "seconds": time.perf_counter() - t0, "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        (stage.run_dir / MARKER).write_text(json.dumps(marker, indent=2), encoding="utf-8")
        markers[stage.name] = marker
        record["stages"][stage.name] = {**marker, "reused": False}
        say(f"[pipeline] {stage.name} done in {marker['seconds']:.0f} s")
        gc.collect()  # the stage's models are garbage now; free them before the next stage loads its own
        bar.update(1)
    bar.close()
    record["seconds"] = time.perf_counter() - started
    if stages[-1].name == "eval":  # a pipeline may stop before evaluation (--stages '[sft, dpo]')
        record["report"] = str(stages[-1].run_dir / "report.md")
    (root / "pipeline.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
    if "report" in record:
        append_timings(Path(record["report"]), record)
    return record


def append_timings(report: Path, record: dict[str, Any]) -> None:
    """A table of stage wall times at the end of the report (replaced, not repeated, on a rerun)."""
    text = report.read_text(encoding="utf-8")
    text = text.split("\n## Pipeline timings\n")[0].rstrip("\n")
    rows = "".join(f"| {name} | {s['seconds']:.0f} | {'reused' if s['reused'] else 'ran'} |\n"
                   for name, s in record["stages"].items())
    total_compute = sum(s["seconds"] for s in record["stages"].values())
    text += (f"\n\n## Pipeline timings\n\n| stage | seconds | this invocation |\n|---|---|---|\n{rows}"
             f"\nAll stages: {total_compute:.0f} s of compute; this invocation took {record['seconds']:.0f} s wall.\n")
    report.write_text(text, encoding="utf-8")


def describe(cfg: PipelineConfig) -> str:
    """The resolved config of every stage (``rlhf pipeline --dry-run``)."""
    import yaml

    return "\n".join(f"# ---- {s.name} -> {s.run_dir}\n" + yaml.safe_dump(to_dict(s.config), sort_keys=False)
                     for s in (resolve_stage(cfg, name) for name in selected_stages(cfg)))
