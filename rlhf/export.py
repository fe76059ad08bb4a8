"""``rlhf export RUN_OR_MODEL --out DIR [--repo-id owner/name] [--push-to-hub]``: a hub-ready model folder.

The folder holds the model files of a run's ``final/`` (a reward model, an RL policy with its adapter, an SFT
adapter or full weights), the run's resolved ``config.yaml`` and ``summary.json``, and a model card
(``README.md``: YAML metadata the hub reads, what the model is, its numbers, how to load it, the licence).
With ``--push-to-hub`` it is uploaded through ``huggingface_hub``; offline (no hub here) the folder is written
all the same and one line says how to push it later.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Sequence

LICENSE = "apache-2.0"  # pyproject.toml's Apache-2.0, as the hub spells it
SKIPPED = {"training_args.bin", "sft-base", "README.md"}  # a pickle; a copy of the base; peft's stub card


class ExportError(ValueError):
    """A path that cannot be exported, with the reason."""


def model_folder(path: Path) -> Path:
    """The folder with the model files: ``path`` itself, or a run folder's ``final/``."""
    for folder in (path, path / "final"):
        # adapter/ alone: an RL policy trained on a quantized base (nothing merged; rlhf.ppo.checkpoint.save_final)
        if any((folder / name).is_file() for name in ("config.json", "adapter_config.json", "reward_config.json",
                                                       "adapter/adapter_config.json")):
            return folder
    raise ExportError(f"{path}: neither a model folder (config.json / adapter_config.json) nor a run with final/")


def model_kind(folder: Path) -> str:
    if (folder / "reward_config.json").is_file():
        return "reward"
    if (folder / "adapter" / "adapter_config.json").is_file():
        return "rl-policy"
    if (folder / "adapter_config.json").is_file():
        return "adapter"
    return "full"


def _base_model(folder: Path, kind: str) -> str | None:
    adapter = folder / "adapter" if kind == "rl-policy" else folder
    for config_file, key in ((adapter / "adapter_config.json", "base_model_name_or_path"),
                             (folder / "config.json", "_name_or_path")):
        if config_file.is_file():
            value = json.loads(config_file.read_text(encoding="utf-8")).get(key)
            if value:
                return str(value)
    return None


LOADING = {
    "reward": ("from reward_models.scoring import RewardScorer\n"
               "from reward_models.trl_rewards import trl_reward_funcs\n\n"
               "scorer = RewardScorer.from_pretrained(\"{repo}\")  # a local copy of this repository\n"
               "scores = scorer.score([\"How do I bake bread?\"], [\"Mix flour, water and yeast ...\"])\n"
               "reward_funcs, reward_weights = trl_reward_funcs(scorer)  # for TRL's GRPOTrainer"),
    "rl-policy": ("from transformers import AutoModelForCausalLM\n\n"
                  "policy = AutoModelForCausalLM.from_pretrained(\"{repo}\")  # SFT + RL weights merged\n"
                  "# the RL LoRA alone is in adapter/ (its base: the SFT model named in adapter/adapter_config.json)"),
    "adapter": ("from peft import AutoPeftModelForCausalLM\n\n"
                "policy = AutoPeftModelForCausalLM.from_pretrained(\"{repo}\")"),
    "full": ("from transformers import AutoModelForCausalLM\n\n"
             "policy = AutoModelForCausalLM.from_pretrained(\"{repo}\")"),
}
WHAT = {
    "reward": "an HHH reward model: one score per head (helpful, honest, harmless) and a weighted composite",
    "rl-policy": "a policy fine-tuned with online RL (LoRA, KL penalty against the SFT policy) on the HHH reward",
    "adapter": "a LoRA adapter from supervised fine-tuning",
    "full": "a fine-tuned causal language model",
}


def model_card(folder: Path, run_dir: Path | None, repo_id: str) -> str:
    """The README.md the hub shows: metadata block, description, numbers, loading, licence."""
    kind = model_kind(folder)
    base = _base_model(folder, kind)
    summary = {}
    if run_dir is not None and (run_dir / "summary.json").is_file():
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    meta = [f"license: {LICENSE}", f"library_name: {'peft' if kind == 'adapter' else 'transformers'}",
            "tags:", "- rlhf", "- trl", f"- {kind}"]
    if base and not Path(base).is_absolute():  # a local path means nothing on the hub
        meta.append(f"base_model: {base}")
    numbers = [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in summary.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)]
    lines = ["---", *meta, "---", "", f"# {repo_id.split('/')[-1]}", "",
             f"{WHAT[kind][0].upper()}{WHAT[kind][1:]}, trained with the rlhf-pipeline "
             "(SFT -> HHH reward model -> online RL -> evaluation).", ""]
    if base:
        lines += [f"Base model: `{base}`.", ""]
    if numbers:
        lines += ["## Results of its run", "", "| metric | value |", "| --- | --- |", *numbers, ""]
    lines += ["## How to load", "", "```python", LOADING[kind].format(repo=repo_id), "```", "",
              "The run's resolved configuration is in `config.yaml`.", "",
              "## Limitations", "", "Trained on small public datasets (HH-RLHF harmless, TruthfulQA, DialogSum); "
              "its judgements and answers are not safe to rely on without evaluation for your use.", "",
              "## Licence", "", "The code is Apache-2.0; the datasets keep their own licences (`data/`).", ""]
    return "\n".join(lines)


def export(path: str | Path, out: str | Path, repo_id: str = "", push: bool = False, log=print) -> int:
    """Write the folder and card; push when asked. 0: written (and pushed if asked); 1: the push failed."""
    path, out = Path(path), Path(out)
    folder = model_folder(path)
    run_dir = folder.parent if folder.name == "final" else None
    repo_id = repo_id or f"your-name/{(run_dir or folder).name}"
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"--out {out}: exists and is not empty")
    out.mkdir(parents=True, exist_ok=True)
    for item in folder.iterdir():
        if item.name in SKIPPED:
            continue
        (shutil.copytree if item.is_dir() else shutil.copy2)(item, out / item.name)
    for name in ("config.yaml", "summary.json"):
        if run_dir is not None and (run_dir / name).is_file():
            shutil.copy2(run_dir / name, out / ("training_config.yaml" if name == "config.yaml" else name))
    (out / "README.md").write_text(model_card(folder, run_dir, repo_id).replace("`config.yaml`", "`training_config.yaml`"),
                                   encoding="utf-8")
    log(f"exported {folder} ({model_kind(folder)}) to {out} with a model card")
    how = f"push it with `hf upload {repo_id} {out}` (or `rlhf export {path} --out NEW --repo-id {repo_id} --push-to-hub`)"
    if not push:
        log(f"not pushed: {how}")
        return 0
    try:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(repo_id, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(out))
    except Exception as err:  # offline, no token, no rights: the folder is ready all the same
        log(f"error: could not push to the hub ({type(err).__name__}); the folder is written: {how}")
        return 1
    log(f"pushed to https://huggingface.co/{repo_id}")
    return 0


def cli(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="rlhf export", description=__doc__.splitlines()[0])
    parser.add_argument("path", help="a run folder (its final/ is exported) or a model folder")
    parser.add_argument("--out", required=True, help="the folder to write (new or empty)")
    parser.add_argument("--repo-id", default="", help="hub repository owner/name (named in the card and the push)")
    parser.add_argument("--push-to-hub", action="store_true", help="upload the folder with huggingface_hub")
    args = parser.parse_args(argv)
    try:
        return export(args.path, args.out, args.repo_id, args.push_to_hub)
    except ExportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
