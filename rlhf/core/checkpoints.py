"""Which checkpoint a stage may resume from: one manifest, written last, verified on resume (SFT, reward, PPO).

A checkpoint folder is *complete* once it holds ``manifest.json``, which lists every other file in it
with its size and sha256 and is written (and fsynced) after all of them: a run killed while writing
leaves a folder without one. It is *intact* when every listed file is there with its listed size and
hash, so a truncated file or bytes overwritten with other (even finite, loadable) values are caught.

Resuming takes the newest intact checkpoint. Each newer one that is not gets one line naming the bad
file and the checkpoint taken instead; the run then redoes those steps, and the stage deletes the
abandoned newer folders when it commits its next checkpoint (:func:`drop_newer`), so they can never
be mistaken for progress nor crowd intact ones out of the ``keep`` limit. Rotation deletes old checkpoints only
after the new one's manifest is written, so the newest intact checkpoint is never the one deleted.

Which run folder and which of its checkpoints a stage continues from is decided by ``rlhf.core.lifecycle.start_run``.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Callable, Sequence

from rlhf.core.config import ConfigError

MANIFEST = "manifest.json"
CHECKPOINTS = "checkpoints"  # <run>/checkpoints/<prefix>N/: every stage's checkpoints
_CHUNK = 1 << 20


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path``'s text in one step: a reader (or a killed run) sees the old file or the new, never half."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class CheckpointError(ConfigError):
    """No usable checkpoint where ``--resume`` points (one line, exit 2 through ``stage_cli``)."""


SHARDED = "sharded"  # in a checkpoint written under FSDP: torch.distributed.checkpoint's files, one per rank


def check_same_launch(checkpoint: Path, sharded: bool) -> None:
    """Refuse to resume ``checkpoint`` under another launch than the one that wrote it: a sharded checkpoint (a
    ``sharded/`` folder) holds no whole model or optimizer file a DDP run could read, and the other way round."""
    if (Path(checkpoint) / SHARDED).is_dir() != sharded:
        written, now = ("unsharded", "sharded (FSDP)") if sharded else ("sharded (FSDP)", "unsharded")
        raise CheckpointError(f"{checkpoint}: written {written}; this run is {now}: resume it under the launch "
                              "that wrote it")


def _digest_and_sync(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
        os.fsync(f.fileno())  # on disk before the manifest says it is: a power cut cannot un-complete it
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(folder: Path) -> Path:
    """List every file under ``folder`` (size, sha256) in ``manifest.json``, written atomically and last."""
    folder = Path(folder)
    own = {folder / MANIFEST, folder / f".{MANIFEST}.tmp"}
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p not in own)
    entries = {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": _digest_and_sync(p)}
               for p in files}
    tmp = folder / f".{MANIFEST}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"files": entries}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / MANIFEST)
    _fsync_dir(folder)
    return folder / MANIFEST


def is_complete(folder: Path) -> bool:
    """Cheap: the manifest is there (the write finished). :func:`problem` also checks the bytes."""
    return (Path(folder) / MANIFEST).is_file()


def problem(folder: Path) -> str | None:
    """Why ``folder`` is not an intact checkpoint, naming the file (None if it is)."""
    folder = Path(folder)
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return f"{folder}: no {MANIFEST} (the run stopped while writing this checkpoint)"
    try:
        entries = json.loads(manifest.read_text(encoding="utf-8"))["files"]
        listed = [(name, int(e["bytes"]), str(e["sha256"])) for name, e in entries.items()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        return f"{manifest}: unreadable ({err.__class__.__name__}: {err})"
    for name, size, sha256 in listed:
        path = folder / name
        if not path.is_file():
            return f"{path}: missing"
        if path.stat().st_size != size:
            return f"{path}: {path.stat().st_size} bytes, the manifest says {size} (truncated or overwritten)"
        with open(path, "rb") as f:
            digest = hashlib.sha256()
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
        if digest.hexdigest() != sha256:
            return f"{path}: sha256 differs from the manifest (the file was corrupted after it was written)"
    return None


def numbered(root: Path, prefix: str) -> list[tuple[int, Path]]:
    """``(step, folder)`` for the folders ``<prefix><digits>`` under ``root``, lowest step first."""
    root = Path(root)
    if not root.is_dir():
        return []
    pattern = re.compile(re.escape(prefix) + r"(\d+)")
    return sorted((int(m.group(1)), p) for p in root.iterdir() if (m := pattern.fullmatch(p.name)) and p.is_dir())


def say_resume(line: str) -> None:
    print(f"[resume] {line}", file=sys.stderr, flush=True)


_reported: set[str] = set()


def newest_intact(root: Path, prefix: str, say: Callable[[str], None] = say_resume) -> Path | None:
    """The newest intact checkpoint under ``root``; each newer one that is not gets one line saying so.

    A line is said once per process: PPO looks for the run's checkpoint both to pick the run and to load it.
    """
    candidates: Sequence[tuple[int, Path]] = numbered(root, prefix)
    rejected: list[str] = []
    for _, folder in reversed(candidates):
        bad = problem(folder)
        if bad is None:
            for line in rejected:
                _say_once(f"{line}; falling back to {folder.name}", say)
            return folder
        rejected.append(f"skipping {folder.name}: {bad}")
    for line in rejected:
        _say_once(f"{line}; no older intact checkpoint", say)
    return None


def _say_once(line: str, say: Callable[[str], None]) -> None:
    if line not in _reported:
        _reported.add(line)
        say(line)


def verified(folder: Path) -> Path:
    """``folder`` itself if intact, else CheckpointError naming the bad file (for an explicitly named checkpoint)."""
    bad = problem(folder)
    if bad is not None:
        raise CheckpointError(f"--resume {folder}: {bad}")
    return Path(folder)


def commit_folder(tmp: Path, final: Path) -> Path:
    """Write ``tmp``'s manifest, then rename it to ``final`` (replacing a stale one): atomic and verifiable."""
    write_manifest(tmp)
    if final.exists():  # a resumed run reaching the same step again
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    return final


def drop_newer(root: Path, prefix: str, step: int) -> None:
    """Delete the checkpoints after ``step``: a run that resumed from an earlier one has abandoned them."""
    for later_step, folder in numbered(root, prefix):
        if later_step > step:
            shutil.rmtree(folder, ignore_errors=True)


def rotate(root: Path, prefix: str, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints (``keep`` 0: keep all). Every stage calls this only after the
    newest checkpoint's manifest is written: a run killed at any moment of a save still has an intact one."""
    if keep > 0:
        for _, old in numbered(root, prefix)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


def read_file(path: Path, load: Callable[[Path], object]) -> object:
    """``load(path)``, with a failure named by its file (a checkpoint from another version, say)."""
    try:
        return load(path)
    except Exception as err:  # noqa: BLE001 - torch/safetensors raise many kinds; all mean "unreadable"
        raise CheckpointError(f"{path}: cannot be read ({err.__class__.__name__}: {str(err).splitlines()[0][:200]})"
                              ) from err


def remove_temporary(root: Path) -> list[Path]:
    """Delete what a run killed while writing a checkpoint left under ``root``: the hidden ``.step-N-*`` /
    ``.step-N.tmp`` folders and ``.*.tmp*`` files no completed checkpoint ever is. Returns what was deleted."""
    root = Path(root)
    if not root.is_dir():
        return []
    removed = [p for p in root.iterdir() if p.name.startswith(".")]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    return removed


def no_intact_checkpoint(run_dir: Path, prefix: str) -> CheckpointError:
    """One line naming the run folder and what is wrong with each of its checkpoints."""
    root = run_dir / CHECKPOINTS
    found = numbered(root, prefix)
    if not found:
        why = f"no {prefix}N folder in {root}" if root.is_dir() else f"no {root}"
    else:
        why = "; ".join(f"{folder.name}: {problem(folder).removeprefix(str(folder)).lstrip('/: ')}"
                        for _, folder in reversed(found))
    return CheckpointError(f"--resume {run_dir}: no intact checkpoint to continue from ({why})")
