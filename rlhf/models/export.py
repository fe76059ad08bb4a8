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
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from rlhf.models.policies import ADAPTER_CONFIG, is_adapter_folder  # what makes a folder an adapter: one definition
from rlhf.data.sources import SOURCES, Source  # each dataset's hub id and licence

LICENSE = "apache-2.0"  # pyproject.toml's Apache-2.0, as the hub spells it
SKIPPED = {"training_args.bin", "sft-base", "README.md"}  # a pickle; a copy of the base; peft's stub card
BASE = "base"  # in the bundle: the adapter's base as full weights, when it exists on no hub
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
                   "chat_template.jinja", "vocab.json", "merges.txt", "vocab.txt", "added_tokens.json")


# Zoo models are local conversions (a dequantized GGUF ...): the card names the upstream model they come from.
ZOO_UPSTREAM = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct",
                "minilm-l6": "sentence-transformers/all-MiniLM-L6-v2"}


class ExportError(ValueError):
    """A path that cannot be exported, with the reason."""


def model_folder(path: Path) -> Path:
    """The folder with the model files: ``path`` itself, or a run folder's ``final/``."""
    for folder in (path, path / "final"):
        # adapter/ alone: an RL policy trained on a quantized base (nothing merged; rlhf.rl.checkpoint.save_final)
        if any((folder / name).is_file() for name in ("config.json", ADAPTER_CONFIG, "reward_config.json",
                                                       f"adapter/{ADAPTER_CONFIG}")):
            return folder
    raise ExportError(f"{path}: neither a model folder (config.json / adapter_config.json) nor a run with final/")


def model_kind(folder: Path) -> str:
    if (folder / "reward_config.json").is_file():
        return "reward"
    if is_adapter_folder(folder / "adapter"):
        return "rl-policy"
    if is_adapter_folder(folder):
        return "adapter"
    return "full"


def _base_model(folder: Path, kind: str) -> str | None:
    """What the model was trained from, for the card: an adapter's base (``rlhf.models.policies.adapter_base``, the one
    reader of it) or a full model's ``_name_or_path``."""
    from rlhf.models.policies import PolicyLoadError, adapter_base

    adapter = folder / "adapter" if kind == "rl-policy" else folder
    if is_adapter_folder(adapter):
        try:
            return adapter_base(adapter)
        except PolicyLoadError:
            return None
    if (folder / "config.json").is_file():
        return json.loads((folder / "config.json").read_text(encoding="utf-8")).get("_name_or_path") or None
    return None


LOADING = {
    "reward": ("from reward_models.scoring import RewardScorer\n"
               "from reward_models.trl_rewards import trl_reward_funcs\n\n"
               "scorer = RewardScorer.from_pretrained(\"{repo}\")  # a local copy of this repository\n"
               "scores = scorer.score([\"How do I bake bread?\"], [\"Mix flour, water and yeast ...\"])\n"
               "reward_funcs, reward_weights = trl_reward_funcs(scorer)  # for TRL's GRPOTrainer"),
    "rl-policy": ("from transformers import AutoModelForCausalLM\n\n"
                  "policy = AutoModelForCausalLM.from_pretrained(\"{repo}\")  # SFT + RL weights merged\n"
                  "# the RL LoRA alone is in adapter/ (its base is named in adapter/adapter_config.json)"),
    "adapter": ("from peft import AutoPeftModelForCausalLM\nfrom transformers import AutoTokenizer\n\n"
                "policy = AutoPeftModelForCausalLM.from_pretrained(\"{repo}\")\n"
                "tokenizer = AutoTokenizer.from_pretrained(\"{repo}\")"),
    "full": ("from transformers import AutoModelForCausalLM\n\n"
             "policy = AutoModelForCausalLM.from_pretrained(\"{repo}\")"),
}
WHAT = {
    "reward": "an HHH reward model: one score per head (helpful, honest, harmless) and a weighted composite",
    "rl-policy": "a policy fine-tuned with online RL (LoRA, KL penalty against the SFT policy) on the HHH reward",
    "adapter": "a LoRA adapter from supervised fine-tuning",
    "full": "a fine-tuned causal language model",
}


def _run_configs(run_dir: Path | None, depth: int = 3) -> list[str]:
    """The resolved config of the run and of the runs it started from (folders its config names that hold a
    ``config.yaml`` up to two levels up): what the model was made from, SFT data included for an RL policy."""
    if run_dir is None or depth == 0 or not (run_dir / "config.yaml").is_file():
        return []
    text = (run_dir / "config.yaml").read_text(encoding="utf-8")
    texts = [text]
    for value in re.findall(r"(/[^\s'\",\]]+)", text):
        folder = Path(value)
        for candidate in (folder, *list(folder.parents)[:2]):
            if candidate != run_dir and (candidate / "config.yaml").is_file():
                texts += _run_configs(candidate, depth - 1)
                break
    return texts


def data_used(run_dir: Path | None) -> list[Source]:
    """The sources (``rlhf.data.sources.SOURCES``, by name) a run's resolved config, or an upstream run's, mentions."""
    text = "\n".join(_run_configs(run_dir)).lower()
    return [source for name, source in sorted(SOURCES.items()) if name in text]


def card_license(sources: Sequence[Source]) -> str:
    """The model inherits the most restrictive licence of its data: share-alike (CC BY-NC-SA) binds derivatives."""
    share_alike = [s.license for s in sources if "-sa-" in s.license]
    return share_alike[0] if share_alike else LICENSE


def _hub_base(base: str | None, run_dir: Path | None) -> str | None:
    """The hub id the card's ``base_model`` names: a hub id as is; a zoo model's upstream; else None."""
    if base and not Path(base).expanduser().exists() and re.fullmatch(r"[\w.-]+/[\w.-]+", base):
        return base
    configs = "\n".join(_run_configs(run_dir))
    return next((hub for zoo, hub in ZOO_UPSTREAM.items() if re.search(rf"\b{re.escape(zoo)}\b", configs)), None)


def _results(summary: dict[str, Any]) -> list[str]:
    """Table rows; ``X_low``/``X_high`` beside ``X`` become its interval."""
    rows = []
    for key, value in summary.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or key.endswith(("_low", "_high")):
            continue
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        low, high = summary.get(f"{key}_low"), summary.get(f"{key}_high")
        interval = f"[{low:.4g}, {high:.4g}]" if isinstance(low, (int, float)) and isinstance(high, (int, float)) else ""
        rows.append(f"| {key} | {shown} | {interval} |")
    return rows


def _dtype(folder: Path) -> str | None:
    config = folder / "config.json"
    if not config.is_file():
        return None
    data = json.loads(config.read_text(encoding="utf-8"))
    return data.get("dtype") or data.get("torch_dtype")


def model_card(folder: Path, run_dir: Path | None, repo_id: str, base: str | None = None) -> str:
    """The README.md the hub shows: metadata block, description, numbers with intervals, loading, licence. No
    local path appears in it: the base is a hub id or the bundled ``base/`` folder."""
    kind = model_kind(folder)
    base = base if base is not None else _base_model(folder, kind)
    summary = {}
    if run_dir is not None and (run_dir / "summary.json").is_file():
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    sources = data_used(run_dir)
    hub_base = _hub_base(base, run_dir)
    meta = [f"license: {card_license(sources)}", f"library_name: {'peft' if kind == 'adapter' else 'transformers'}"]
    if hub_base:
        meta.append(f"base_model: {hub_base}")
    if sources:
        meta += ["datasets:", *[f"- {s.hub_id}" for s in sources]]
    meta += ["tags:", "- rlhf", "- trl", f"- {kind}"]
    lines = ["---", *meta, "---", "", f"# {repo_id.split('/')[-1]}", "",
             f"{WHAT[kind][0].upper()}{WHAT[kind][1:]}, trained with the rlhf-pipeline "
             "(SFT -> HHH reward model -> online RL -> evaluation).", ""]
    if base == BASE or base == f"../{BASE}":
        lines += [f"Base model: the full weights in `{BASE}/`" + (f" (from `{hub_base}`)" if hub_base else "") + ".", ""]
    elif hub_base:
        lines += [f"Base model: `{hub_base}`.", ""]
    dtype = _dtype(folder)
    if dtype:
        lines += [f"Weights saved as {dtype}.", ""]
    numbers = _results(summary)
    if numbers:
        lines += ["## Results of its run", "", "| metric | value | interval |", "| --- | --- | --- |", *numbers, ""]
    lines += ["## How to load", "", "```python", LOADING[kind].format(repo=repo_id), "```", ""]
    if base in (BASE, f"../{BASE}"):
        lines += [f"`base_model_name_or_path` is `{base}`, relative to the adapter folder: peft reads it from the "
                  "working directory, so load from inside the folder (or use `rlhf chat --model <folder>`, which "
                  "reads it relative to the folder).", ""]
    lines += ["The run's resolved configuration is in `config.yaml`.", "",
              "## Limitations", "", "Trained on small public datasets (HH-RLHF harmless, TruthfulQA, DialogSum); "
              "its judgements and answers are not safe to rely on without evaluation for your use.", "",
              "## Licence", ""]
    if sources:
        lines += ["Trained on " + ", ".join(f"{s.hub_id} ({s.license})" for s in sources) + "; the model carries "
                  f"the most restrictive: {card_license(sources)}.", ""]
    lines += ["The code is Apache-2.0; the datasets keep their own licences (`data/`).", ""]
    return "\n".join(lines)


def _copy_tokenizer(source: Path, dest: Path) -> None:
    for name in TOKENIZER_FILES:
        if (source / name).is_file() and not (dest / name).exists():
            shutil.copy2(source / name, dest / name)


def bundle_base(adapter: Path, bundle: Path, base: str) -> str:
    """Make the bundled ``adapter`` (a folder inside ``bundle``) name a base that exists on another machine:
    ``base`` (the source adapter's, as :func:`rlhf.models.policies.adapter_base` reads it there) stays when it is a hub
    id; a local base (a zoo model, which is a local conversion, an SFT model, an SFT adapter or RL's ``sft-base``)
    is saved as full weights with its tokenizer in ``bundle/base`` and named relative to the adapter folder. The
    adapter gets a tokenizer when it has none. Returns the name written."""
    from rlhf.models.policies import has_tokenizer, load_weights, set_adapter_base, tokenizer_source
    from rlhf.models.zoo import resolve_model

    local = Path(resolve_model(base)).expanduser()
    if local.is_dir():
        target = bundle / BASE
        if (local / "config.json").is_file() and not is_adapter_folder(local):
            shutil.copytree(local, target, ignore=shutil.ignore_patterns("training_args.bin", "README.md", ".*"))
        else:  # an adapter below an adapter: fold the chain into plain weights
            load_weights(str(local), None).save_pretrained(target)
        if not has_tokenizer(target):
            _copy_tokenizer(Path(tokenizer_source(str(local))), target)
        name = set_adapter_base(adapter, BASE if adapter.resolve() == bundle.resolve() else f"../{BASE}")
    else:
        name = set_adapter_base(adapter, base)
    if not has_tokenizer(adapter):
        _copy_tokenizer(bundle / BASE if local.is_dir() else bundle, adapter)
    return name


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
    kind = model_kind(folder)
    base = None
    if kind in ("adapter", "rl-policy"):
        from rlhf.models.policies import adapter_base

        # read where the adapter was (a base relative to it, such as RL's ../sft-base, is found there)
        adapter = Path("") if kind == "adapter" else Path("adapter")
        base = bundle_base(out / adapter, out, adapter_base(folder / adapter))
    card = model_card(folder, run_dir, repo_id, base).replace("`config.yaml`", "`training_config.yaml`")
    (out / "README.md").write_text(card, encoding="utf-8")
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
