"""The reward-model report: accuracy per head and source, length-controlled accuracy, calibration, head agreement.

    rlhf eval-rm runs/reward-.../final                       # or the run folder; test split of the shipped pairs
    rlhf eval-rm runs/demo/reward --out report/ --split dev --extra_files '[annotations.jsonl]'
    rlhf eval-rm runs/demo/reward --ranking.policy smollm2-135m-instruct   # + sampled summaries ranked vs ROUGE-L

Writes rm_report.json, rm_report.md and rm_report.png (see :mod:`reward_models.report`).
"""
from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and __package__ is None:  # `python pipelines/eval_rm.py` from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reward_models.report import RMReportConfig  # noqa: E402
from rlhf.core.config import ConfigError  # noqa: E402

DEFAULTS = None  # the dataclass defaults are the tool's defaults


def check_inputs(cfg: RMReportConfig) -> Path:
    """The model folder and every data source, checked before any model loads; returns the model folder."""
    from reward_models.model import REWARD_CONFIG, ScoringConfig
    from reward_models.ranking import HEAD
    from reward_models.scoring import resolve_model_folder
    from rlhf.data.validation import StageInput, input_problems
    from rlhf.data.sources import PREFERENCE_SOURCES

    if not cfg.model:
        raise ConfigError("model: name a reward model folder (rlhf eval-rm PATH)")
    folder = resolve_model_folder(cfg.model)
    if not (folder / REWARD_CONFIG).is_file():
        raise ConfigError(f"model: {cfg.model} is not a reward model folder (no {REWARD_CONFIG} in it or in its final/)")
    names = list(PREFERENCE_SOURCES)
    inputs = ([StageInput(f"sources[{i}]", s, "preference", names, files=False) for i, s in enumerate(cfg.sources)]
              + [StageInput(f"extra_files[{i}]", f, "preference", []) for i, f in enumerate(cfg.extra_files)])
    for item in inputs:
        problems = input_problems(item)
        if problems:
            raise ConfigError(f"{item.key}: {problems[0]}")
    if cfg.ranking.policy:
        from rlhf.evaluation.evaluate import check_local_path

        try:
            check_local_path(cfg.ranking.policy, "ranking.policy")
        except FileNotFoundError as err:
            raise ConfigError(str(err)) from None
        if HEAD not in ScoringConfig.load(folder).heads:
            raise ConfigError(f"ranking.policy: {cfg.model} has no {HEAD} head to rank summaries with")
    return folder


def main(cfg: RMReportConfig) -> Path:
    from reward_models.data import load_pairs, subsample
    from reward_models.ranking import ranking_report, sample_and_score
    from reward_models.report import build_report, score_for_report, write_report
    from reward_models.scoring import RewardScorer
    from rlhf.core.runtime import select_device

    # 1. inputs checked (one line naming the key, exit 2), before the model loads
    folder = check_inputs(cfg)
    device = select_device(cfg.device, key="device")  # rlhf.core.runtime; a CUDA that is not here: one line
    out_dir = Path(cfg.out) if cfg.out else folder.parent / "rm_report"

    # 2. the pairs of the split: the same conversation split reward training uses
    pairs = subsample(load_pairs(cfg.sources, cfg.extra_files, cfg.split), cfg.max_pairs_per_head)
    if not pairs:
        raise ConfigError(f"split: no {cfg.split} pairs in sources {cfg.sources} and extra_files {cfg.extra_files}")

    # 3. the model, without Detoxify (the report judges the heads)
    scorer = RewardScorer.from_pretrained(folder, device, toxicity=None, precision=cfg.precision,
                                          batch_size=cfg.batch_size)

    # 4. every pair scored by every head; accuracy, length bins, calibration, agreement
    report = {"model": str(folder), "split": cfg.split, "sources": [*cfg.sources, *cfg.extra_files]}
    report |= build_report(score_for_report(scorer, pairs, cfg.batch_size), cfg)
    #    ... and, with ranking.policy, its summaries of the split's dialogues ranked by the helpful head vs ROUGE-L
    if cfg.ranking.policy:
        report["ranking"] = ranking_report(sample_and_score(cfg.ranking, cfg.split, scorer, device), cfg.ranking,
                                           cfg.confidence)

    # 5. rm_report.json / .md / .png
    write_report(report, out_dir)
    accuracy = ", ".join(f"{name} {e['accuracy']:.3f} (n={e['n']})" for name, e in report["accuracy"].items())
    print(f"[eval-rm] {report['pairs']} {cfg.split} pairs: {accuracy}; report in {out_dir}")
    if "ranking" in report:
        within, pooled = report["ranking"]["rouge_l"]["within"], report["ranking"]["rouge_l"]["pooled"]
        print(f"[eval-rm] helpful head vs ROUGE-L (Spearman): within a dialogue {within['mean']:.3f} "
              f"({within['low']:.3f}, {within['high']:.3f}) n={within['n']}; pooled {pooled['spearman']:.3f} "
              f"({pooled['low']:.3f}, {pooled['high']:.3f}) n={pooled['n']}")
    return out_dir


if __name__ == "__main__":  # the same as `rlhf eval-rm ...` (rlhf.stages holds the command)
    from rlhf.stages import STAGES

    sys.exit(STAGES["eval-rm"].cli(sys.argv[1:]))
