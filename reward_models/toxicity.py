"""Toxicity of responses with a Detoxify checkpoint, from local files only, loaded without arbitrary pickle.

Detoxify's models are plain transformers classifiers (its "original" model: a BERT with six Jigsaw labels)
whose scores are the sigmoid of the logits. So :class:`ToxicityScorer` reads the checkpoint with
``torch.load(weights_only=True)`` (tensors and plain containers only: a file with pickled objects is
refused), builds ``AutoModelForSequenceClassification`` from the local ``huggingface_config_path`` folder
(never the hub name inside the checkpoint) and loads the state dict into it. Nothing of the ``detoxify``
package is patched or even imported; the tests check the scores against the real ``Detoxify`` class.

No checkpoint configured -> toxicity is unavailable: :func:`load_toxicity` logs one line saying so and
returns None, and scores carry ``toxicity=None`` (never a silent 0). A configured checkpoint that
cannot be read is an error.

A Detoxify checkpoint is a dict ``{"config": {"arch": {"args": {model_type, model_name,
tokenizer_name, num_classes}}, "dataset": {"args": {"classes": [...]}}}, "state_dict": {...}}``;
:func:`write_detoxify_checkpoint` writes one from any HF sequence-classification model, and
:func:`convert_detoxify_checkpoint` turns a downloaded Detoxify ``.ckpt`` into a safe local pair
(checkpoint + config folder).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import torch

from reward_models.config import ToxicitySettings

log = logging.getLogger(__name__)

JIGSAW_CLASSES = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]  # Detoxify "original"
# Detoxify's own names for the Jigsaw classes (its `load_checkpoint`): settings.label uses these.
DETOXIFY_NAMES = {"toxic": "toxicity", "identity_hate": "identity_attack", "severe_toxic": "severe_toxicity"}


class ToxicityScorer:
    """Detoxify probability of the configured class for each text, batched."""

    def __init__(self, settings: ToxicitySettings, device: str | torch.device = "cpu"):
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        checkpoint, config_dir = settings.checkpoint, settings.huggingface_config_path
        if not checkpoint or not Path(checkpoint).is_file():
            raise FileNotFoundError(f"toxicity.checkpoint: Detoxify checkpoint {checkpoint!r} not found")
        if not config_dir or not Path(config_dir, "config.json").is_file():
            raise FileNotFoundError(f"toxicity.huggingface_config_path: {config_dir!r} has no config.json "
                                    "(the folder with the Detoxify model's config and tokenizer files)")
        loaded = torch.load(checkpoint, map_location="cpu", weights_only=True)  # UnpicklingError on objects
        try:
            num_classes = int(loaded["config"]["arch"]["args"]["num_classes"])
            classes = list(loaded["config"]["dataset"]["args"]["classes"])
            state_dict = loaded["state_dict"]
        except (KeyError, TypeError):
            raise ValueError(f"toxicity.checkpoint: {checkpoint} is not a Detoxify checkpoint "
                             "(needs config.arch.args.num_classes, config.dataset.args.classes, state_dict)") from None
        config = AutoConfig.from_pretrained(config_dir, num_labels=num_classes)
        model = AutoModelForSequenceClassification.from_config(config)
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
        # position_ids is a buffer some transformers versions save and others do not: not a weight
        missing, unexpected = ([k for k in keys if not k.endswith("position_ids")] for keys in (missing, unexpected))
        if missing or unexpected:
            raise ValueError(f"toxicity.checkpoint: {checkpoint} does not fit {type(model).__name__} of {config_dir} "
                             f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
        self.model = model.to(device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(config_dir)
        self.class_names = [DETOXIFY_NAMES.get(c, c) for c in classes]
        if settings.label not in self.class_names:
            raise ValueError(f"toxicity.label {settings.label!r} is not a class of {checkpoint} "
                             f"(classes: {', '.join(self.class_names)})")
        self.settings = settings
        self._column = self.class_names.index(settings.label)

    @torch.no_grad()
    def score(self, texts: Sequence[str]) -> torch.Tensor:
        """(n,) float32 probabilities in [0, 1]: sigmoid of the label's logit, as Detoxify's predict."""
        out = []
        for start in range(0, len(texts), self.settings.batch_size):
            batch = self.tokenizer(list(texts[start:start + self.settings.batch_size]), return_tensors="pt",
                                   truncation=True, padding=True).to(self.model.device)
            out.append(torch.sigmoid(self.model(**batch).logits[:, self._column].float()).cpu())
        return torch.cat(out) if out else torch.zeros(0)


def load_toxicity(settings: ToxicitySettings, device: str | torch.device = "cpu") -> ToxicityScorer | None:
    """A scorer, or None (with one log line) when no checkpoint is configured."""
    if not settings.checkpoint:
        log.warning("toxicity unavailable: no Detoxify checkpoint configured (toxicity.checkpoint); "
                    "scores carry toxicity=None and the composite has no toxicity term")
        return None
    return ToxicityScorer(settings, device)


def write_detoxify_checkpoint(model, tokenizer, out_dir: str | Path, classes: Sequence[str] = JIGSAW_CLASSES,
                              name: str = "detoxify.ckpt") -> ToxicitySettings:
    """Save an HF sequence-classification model as a Detoxify checkpoint + config folder; returns settings.

    The checkpoint holds only plain containers and tensors, so it loads with ``weights_only=True``.
    """
    if model.config.num_labels != len(classes):
        raise ValueError(f"model has {model.config.num_labels} labels but {len(classes)} classes were given")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    checkpoint = {
        "config": {"arch": {"args": {"model_type": str(out_dir), "model_name": type(model).__name__,
                                     "tokenizer_name": "AutoTokenizer", "num_classes": len(classes)}},
                   "dataset": {"args": {"classes": list(classes)}}},
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
    }
    torch.save(checkpoint, out_dir / name)
    return ToxicitySettings(checkpoint=str(out_dir / name), huggingface_config_path=str(out_dir))


def convert_detoxify_checkpoint(source: str | Path, hf_config_dir: str | Path, out_dir: str | Path,
                                trust_pickle: bool = False) -> ToxicitySettings:
    """A downloaded Detoxify ``.ckpt`` -> a checkpoint with only config + tensors, and its config folder.

    ``hf_config_dir`` holds the base model's ``config.json`` and tokenizer files (e.g. a local copy of
    bert-base-uncased). The source is read with ``weights_only=True``; a file that needs more than
    that (pickled Python objects) is refused unless ``trust_pickle`` (only for files you trust).
    """
    from transformers import AutoConfig, AutoTokenizer

    try:
        loaded = torch.load(source, map_location="cpu", weights_only=not trust_pickle)
    except Exception as err:  # noqa: BLE001 - any unpickling refusal
        raise ValueError(f"{source}: not loadable with weights_only=True ({type(err).__name__}); "
                         "pass trust_pickle=True only if you trust where the file came from") from None
    if not isinstance(loaded, dict) or "config" not in loaded or "state_dict" not in loaded:
        raise ValueError(f"{source}: not a Detoxify checkpoint (needs 'config' and 'state_dict')")
    args = loaded["config"]["arch"]["args"]
    classes = loaded["config"]["dataset"]["args"]["classes"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = AutoConfig.from_pretrained(hf_config_dir, num_labels=int(args["num_classes"]))
    config.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(hf_config_dir).save_pretrained(out_dir)
    safe = {"config": {"arch": {"args": {**{k: args[k] for k in ("model_name", "tokenizer_name", "num_classes")},
                                         "model_type": str(out_dir)}},
                       "dataset": {"args": {"classes": list(classes)}}},
            "state_dict": {k: v for k, v in loaded["state_dict"].items() if isinstance(v, torch.Tensor)}}
    torch.save(safe, out_dir / "detoxify.ckpt")
    return ToxicitySettings(checkpoint=str(out_dir / "detoxify.ckpt"), huggingface_config_path=str(out_dir))
