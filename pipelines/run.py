"""The whole pipeline: SFT -> reward model (and a gold judge) -> PPO -> evaluation, from one config.

    rlhf pipeline --preset demo                 # the README's main command: SmolLM2 + MiniLM + shipped data
    rlhf pipeline --preset tiny                 # tiny random models, under a minute (the end-to-end test)
    rlhf pipeline --preset demo --force         # run every stage again
    rlhf pipeline --preset demo --force ppo     # rerun PPO and evaluation, reuse SFT and the reward model
    rlhf pipeline --preset demo --ppo.overrides '{train.max_steps: 40}'
    rlhf pipeline --preset demo --dry-run       # print every stage's resolved config and stop
    rlhf pipeline --preset demo --stages '[sft, reward, gold, ppo, dpo, eval]'   # DPO too, evaluated beside PPO
    rlhf pipeline --preset demo --stages '[sft, reward, ppo, eval]'   # no gold stage: the proxy is the only judge

The last line printed names the report.
"""
from __future__ import annotations

import sys
from pathlib import Path

from rlhf.command import stage_cli
from rlhf.core.config import ConfigError
from rlhf.pipeline import PipelineConfig

CONFIGS = Path(__file__).resolve().parent / "configs"
PRESETS = {"demo": CONFIGS / "pipeline_demo.yaml", "tiny": CONFIGS / "pipeline_tiny.yaml"}


def main(cfg: PipelineConfig, force: bool | str = False, dry_run: bool = False) -> Path:
    from rlhf.pipeline import describe, pipeline_dir, run_pipeline

    if dry_run:
        print(describe(cfg))
        return pipeline_dir(cfg)
    try:
        record = run_pipeline(cfg, force=force)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"pipeline finished in {record['seconds']:.0f} s; report: {record.get('report', 'none (no eval stage)')}")
    return pipeline_dir(cfg)


def split_preset(argv: list[str]) -> tuple[str, list[str]]:
    """``--preset NAME`` (or ``--preset=NAME``) out of argv; default demo."""
    preset, rest, i = "demo", [], 0
    while i < len(argv):
        if argv[i] == "--preset" and i + 1 < len(argv):
            preset, i = argv[i + 1], i + 2
        elif argv[i].startswith("--preset="):
            preset, i = argv[i].split("=", 1)[1], i + 1
        else:
            rest.append(argv[i])
            i += 1
    return preset, rest


def cli(argv=None) -> int:
    preset, argv = split_preset(list(sys.argv[1:] if argv is None else argv))
    if preset not in PRESETS:
        print(f"error: --preset {preset}: expected one of {', '.join(PRESETS)}", file=sys.stderr)
        return 2
    return stage_cli(PipelineConfig, PRESETS[preset], main, argv, extra_flags=("force", "dry_run"))


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
