"""Scoring throughput of the HHH reward model, without and with Detoxify (responses per second).

    flock /tmp/rlhf-cpu.lock python benchmarks/reward_scoring.py [--model runs/reward-.../final] [--rounds 5]

A = reward model only (three heads, composite); B = the same plus Detoxify toxicity of each response.
A and B alternate (A B A B ...) so drifting machine load hits both alike; medians are reported with
the load average before and after. Detoxify runs on a checkpoint in Detoxify's own format built
from the MiniLM weights with 6 Jigsaw labels (``BertForSequenceClassification``), loaded through the
real ``Detoxify`` class: the cost of a MiniLM-size toxicity model. (Detoxify's released "original"
model is BERT-base, 110M parameters, about 5x MiniLM's compute; expect B to cost more with it.)
Without --model, an untrained MiniLM reward model is used: throughput does not depend on the weights.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build_models(workdir: Path, model: str | None, backbone: str):
    from transformers import AutoModelForSequenceClassification

    from reward_models.model import new_reward_model, save_reward_model
    from reward_models.toxicity import JIGSAW_CLASSES, write_detoxify_checkpoint
    from rlhf.models.zoo import load_model, load_tokenizer

    if model is None:
        reward_model, encoder, scoring = new_reward_model(backbone, max_length=256)
        model = str(save_reward_model(reward_model, encoder, scoring, workdir / "rm"))
    toxic = load_model(backbone, AutoModelForSequenceClassification, num_labels=len(JIGSAW_CLASSES))
    toxicity = write_detoxify_checkpoint(toxic, load_tokenizer(backbone), workdir / "detoxify")
    return model, toxicity


def workload(n: int) -> tuple[list[str], list[str]]:
    """Held-out HH-RLHF prompts with their chosen responses: realistic lengths for PPO and evaluation."""
    from rlhf.data.sources import hh_harmless_pairs

    pairs = hh_harmless_pairs("test")[:n]
    return [p.prompt for p in pairs], [p.chosen for p in pairs]


def timed(scorer, prompts, responses) -> float:
    start = time.perf_counter()
    scorer.score(prompts, responses)
    return len(responses) / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="a trained reward model folder (default: untrained MiniLM heads)")
    parser.add_argument("--backbone", default="minilm-l6")
    parser.add_argument("--responses", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "reward_scoring.json"),
                        help="where the numbers are written as JSON")
    args = parser.parse_args(argv)

    import torch

    from reward_models.scoring import RewardScorer

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model, toxicity = build_models(Path(tmp), args.model, args.backbone)
        plain = RewardScorer.from_pretrained(model, toxicity=None, batch_size=args.batch_size)
        with_tox = RewardScorer.from_pretrained(model, toxicity=toxicity, batch_size=args.batch_size)
        prompts, responses = workload(args.responses)
        load_before = os.getloadavg()
        timed(plain, prompts[:8], responses[:8]), timed(with_tox, prompts[:8], responses[:8])  # warm-up
        rates: dict[str, list[float]] = {"A": [], "B": []}
        for _ in range(args.rounds):
            rates["A"].append(timed(plain, prompts, responses))
            rates["B"].append(timed(with_tox, prompts, responses))
        load_after = os.getloadavg()

    a, b = statistics.median(rates["A"]), statistics.median(rates["B"])
    print(f"reward scoring, {args.responses} HH test responses, batch {args.batch_size}, {args.rounds} rounds A B A B, "
          f"torch threads {torch.get_num_threads()}, bf16 autocast {plain.bf16}")
    print(f"load average before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
          f"after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    print(f"A  reward model only      : median {a:7.1f} responses/s  (rounds: {', '.join(f'{r:.1f}' for r in rates['A'])})")
    print(f"B  reward model + Detoxify: median {b:7.1f} responses/s  (rounds: {', '.join(f'{r:.1f}' for r in rates['B'])})")
    print(f"B/A throughput ratio {b / a:.2f} (Detoxify adds {1 / b - 1 / a:.4f} s per response)")
    result = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(["python", *sys.argv]),
              "model": args.model or f"untrained {args.backbone} reward model", "responses": args.responses,
              "batch_size": args.batch_size, "rounds": args.rounds, "threads": torch.get_num_threads(),
              "load_before": list(load_before), "load_after": list(load_after),
              "responses_per_s": {"reward_model": a, "reward_model_plus_detoxify": b},
              "rounds_responses_per_s": rates, "ratio_with_detoxify": b / a}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
