"""Toxicity of responses with Detoxify, from local files only, loaded without arbitrary pickle.

Detoxify 0.5.4 reads its checkpoint with ``torch.load(..., weights_only=False)`` (any pickled object
would run) and builds its transformers config from the hub name in the checkpoint
(``bert-base-uncased``) before it looks at ``huggingface_config_path``. While a :class:`Detoxify` is
being built, :func:`_safe_detoxify` swaps both for safe versions: ``torch.load`` with
``weights_only=True`` (tensors and plain containers only), and the hub name replaced by the local
``huggingface_config_path`` folder. The real ``Detoxify`` class still does the loading and scoring.

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

import contextlib
import logging
import types
from pathlib import Path
from typing import Sequence
from unittest import mock

import torch

from reward_models.config import ToxicitySettings

log = logging.getLogger(__name__)

JIGSAW_CLASSES = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]  # Detoxify "original"


class _WeightsOnlyTorch(types.ModuleType):
    """``torch`` as Detoxify sees it while loading: ``load`` can only read tensors and plain containers."""

    def __init__(self):
        super().__init__("torch")

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def load(f, *args, **kwargs):
        kwargs["weights_only"] = True
        return torch.load(f, *args, **kwargs)


@contextlib.contextmanager
def _safe_detoxify(huggingface_config_path: str):
    """Patch detoxify's module while a Detoxify is built: weights-only loading, local config only."""
    import detoxify.detoxify as detox_module

    original_builder = detox_module.get_model_and_tokenizer

    def local_builder(model_type, model_name, tokenizer_name, num_classes, state_dict, huggingface_config_path=None):
        # model_type is a hub name; the same files lie in the local folder, so read them there.
        return original_builder(huggingface_config_path, model_name, tokenizer_name, num_classes, state_dict,
                                huggingface_config_path=huggingface_config_path)

    with mock.patch.object(detox_module, "torch", _WeightsOnlyTorch()), \
            mock.patch.object(detox_module, "get_model_and_tokenizer", local_builder):
        yield


class ToxicityScorer:
    """Detoxify probability of the configured class for each text, batched."""

    def __init__(self, settings: ToxicitySettings, device: str | torch.device = "cpu"):
        from detoxify import Detoxify

        checkpoint, config_dir = settings.checkpoint, settings.huggingface_config_path
        if not checkpoint or not Path(checkpoint).is_file():
            raise FileNotFoundError(f"toxicity.checkpoint: Detoxify checkpoint {checkpoint!r} not found")
        if not config_dir or not Path(config_dir, "config.json").is_file():
            raise FileNotFoundError(f"toxicity.huggingface_config_path: {config_dir!r} has no config.json "
                                    "(the folder with the Detoxify model's config and tokenizer files)")
        with _safe_detoxify(str(config_dir)):
            self.detoxify = Detoxify(checkpoint=str(checkpoint), device=str(device),
                                     huggingface_config_path=str(config_dir))
        if settings.label not in self.detoxify.class_names:
            raise ValueError(f"toxicity.label {settings.label!r} is not a class of {checkpoint} "
                             f"(classes: {', '.join(self.detoxify.class_names)})")
        self.settings = settings

    def score(self, texts: Sequence[str]) -> torch.Tensor:
        """(n,) float32 probabilities in [0, 1]."""
        out: list[float] = []
        for start in range(0, len(texts), self.settings.batch_size):
            scores = self.detoxify.predict(list(texts[start:start + self.settings.batch_size]))[self.settings.label]
            out.extend(scores if isinstance(scores, list) else [scores])  # Detoxify squeezes a batch of one
        return torch.tensor(out, dtype=torch.float32)


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
