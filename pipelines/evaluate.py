"""Stage 4: evaluate policies on held-out prompts and write the report.

    python pipelines/evaluate.py --reward_model runs/reward-.../final        # the defaults: EvalConfig()
    rlhf eval --config my_eval.yaml --data.prompts_per_source 32
    rlhf eval ... --gold.model runs/reward-gold/final     # a second judge, never trained against
    rlhf eval ... --variants '[{policies: [sft], best_of_n: [1, 2, 4, 8, 16]}]'

Policies are listed in the config (``policies: [{name, model, base, reference}]``) and the ways to run them
in ``variants: [{policies, shots, decoding, sources}]``; the report (report.md, PNGs, results.json,
samples.jsonl) goes to the run folder.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from rlhf.evaluation.evaluate import EvalConfig

DEFAULTS = None  # the dataclass defaults are the stage's defaults; presets are --config files
STAGE = "eval"


def main(cfg: EvalConfig) -> Path:
    from rlhf.evaluation.evaluate import (build_results, check_config, judges_agreement, load_gold, load_scorer, run_evaluation,
                               run_judge_free, variants_of)
    from rlhf.evaluation.report import headline, write_report
    from rlhf.core.lifecycle import start_run
    from rlhf.core.tracking import MetricsLogger

    # 1. config checked (best-of-n, gold judge != proxy: one line naming the key, before any model loads);
    #    run folder and logger (one progress step per variant = policy x shots x decoding [x n])
    check_config(cfg)
    # a CUDA that is not here, a used run name: one line (rlhf.core.runtime places policies and judges); no --resume
    run_dir = start_run(cfg.run, STAGE).dir
    variants = variants_of(cfg)
    logger = MetricsLogger(run_dir, cfg.run, STAGE, config=cfg, total_steps=len(variants))

    # 2. the judges: the proxy HHH reward model (+ Detoxify when configured) and the gold, which only judges
    scorer, gold = load_scorer(cfg), load_gold(cfg)
    #    ... and whether they agree: both score the same test pairs per head (their agreement, each one's accuracy)
    agreement = judges_agreement(cfg, scorer, gold)

    # 3. every variant answers the same held-out prompts with the same seeds, then is scored
    started: list[str] = []

    def progress(variant_key: str) -> None:  # advances the progress bar as each variant starts
        started.append(variant_key)
        logger.log({"eval/variants_started": len(started)}, step=len(started))

    records, policies = run_evaluation(cfg, scorer, progress=progress, gold=gold)
    # 3b. judge-free metrics: each policy's own log-probs on test preference pairs and TruthfulQA MC1/MC2
    judge_free = run_judge_free(cfg)

    # 4. numbers: per variant and source; the headline candidate-vs-baseline comparison
    results = build_results(cfg, records, policies, judge_free, agreement)
    results["headline"] = headline(results)
    with open(run_dir / "samples.jsonl", "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    with open(run_dir / "judge_free.jsonl", "w", encoding="utf-8") as fh:  # per pair / question, for re-analysis
        fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in judge_free)
    (run_dir / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False), encoding="utf-8")

    # 5. report.md + PNGs, and the same tables to W&B
    report, tables = write_report(run_dir, results, records, cfg.training_runs, cfg.examples_in_report)
    for table in tables:
        logger.log_table(table.name, table.columns, table.rows, step=len(variants))
    logger.log_images(sorted(report.parent.glob("*.png")), step=len(variants))
    logger.log_artifact(report, "eval-report",
                        inputs=[*(p.model for p in cfg.policies), cfg.reward_model, cfg.gold.model])
    logger.summary({k: v for k, v in results["headline"].items() if isinstance(v, (int, float))})
    logger.finish()
    for line in results["headline"]["verdict"]:
        print(f"[eval] {line}", file=sys.stderr)
    print(f"[eval] report: {report}", file=sys.stderr)
    return run_dir


if __name__ == "__main__":  # the same as `rlhf eval ...` (rlhf.stages holds the command)
    from rlhf.stages import STAGES

    sys.exit(STAGES["eval"].cli(sys.argv[1:]))
