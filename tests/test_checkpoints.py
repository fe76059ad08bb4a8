"""The shared checkpoint rule (rlhf.core.checkpoints): complete = manifest written last; intact = sizes and sha256
match; resume takes the newest intact one and says in one line which it skipped and why."""
from __future__ import annotations

import hashlib
import json

import pytest

from rlhf.core import checkpoints
from rlhf.core.checkpoints import CheckpointError, MANIFEST


def make(root, step: int, manifest: bool = True):
    folder = root / f"step-{step:06d}"
    (folder / "adapter").mkdir(parents=True)
    (folder / "optimizer.pt").write_bytes(bytes(range(256)) * 4)
    (folder / "adapter" / "adapter_model.safetensors").write_bytes(b"w" * 100)
    if manifest:
        checkpoints.write_manifest(folder)
    return folder


def test_manifest_lists_every_file_with_size_and_sha256(tmp_path):
    folder = make(tmp_path, 1)
    files = json.loads((folder / MANIFEST).read_text())["files"]
    assert set(files) == {"optimizer.pt", "adapter/adapter_model.safetensors"}
    assert files["optimizer.pt"]["bytes"] == 1024
    assert files["adapter/adapter_model.safetensors"]["sha256"] == hashlib.sha256(b"w" * 100).hexdigest()
    assert checkpoints.problem(folder) is None


@pytest.mark.parametrize("damage, expected", [
    (lambda f: (f / MANIFEST).unlink(), "no manifest.json (the run stopped while writing"),
    (lambda f: (f / "optimizer.pt").write_bytes(b"\0" * 10), "optimizer.pt: 10 bytes, the manifest says 1024"),
    (lambda f: (f / "optimizer.pt").write_bytes(bytes(range(255, -1, -1)) * 4), "optimizer.pt: sha256 differs"),
    (lambda f: (f / "adapter" / "adapter_model.safetensors").unlink(), "adapter_model.safetensors: missing"),
    (lambda f: (f / MANIFEST).write_text("{"), "manifest.json: unreadable"),
])
def test_each_kind_of_damage_is_named_by_its_file(tmp_path, damage, expected):
    folder = make(tmp_path, 1)
    damage(folder)
    assert expected in checkpoints.problem(folder)
    with pytest.raises(CheckpointError, match="--resume .*step-000001"):
        checkpoints.verified(folder)


def test_newest_intact_falls_back_with_one_line_per_skipped_checkpoint(tmp_path):
    make(tmp_path, 2)
    make(tmp_path, 4)
    (make(tmp_path, 6) / "optimizer.pt").write_bytes(b"x" * 1024)  # same size, other bytes
    make(tmp_path, 8, manifest=False)  # killed while writing
    (tmp_path / ".step-000010.tmp").mkdir()  # a temporary folder is never a candidate
    lines = []
    assert checkpoints.newest_intact(tmp_path, "step-", say=lines.append) == tmp_path / "step-000004"
    assert lines == [f"skipping step-000008: {tmp_path / 'step-000008'}: no manifest.json (the run stopped while "
                     "writing this checkpoint); falling back to step-000004",
                     f"skipping step-000006: {tmp_path / 'step-000006' / 'optimizer.pt'}: sha256 differs from the "
                     "manifest (the file was corrupted after it was written); falling back to step-000004"]
    (tmp_path / "step-000002" / "optimizer.pt").unlink()
    (tmp_path / "step-000004" / MANIFEST).unlink()
    lines.clear()
    assert checkpoints.newest_intact(tmp_path, "step-", say=lines.append) is None
    assert len(lines) == 4 and all(line.endswith("no older intact checkpoint") for line in lines)
    assert checkpoints.newest_intact(tmp_path / "nowhere", "step-") is None


def test_commit_is_a_rename_after_the_manifest_and_drops_abandoned_later_steps(tmp_path):
    make(tmp_path, 4)
    make(tmp_path, 8, manifest=False)  # from before a resume at step 4
    tmp = make(tmp_path, 99, manifest=False).rename(tmp_path / ".tmp-6")
    final = checkpoints.commit_folder(tmp, tmp_path / "step-000006")
    assert checkpoints.problem(final) is None and not tmp.exists()
    checkpoints.drop_newer(tmp_path, "step-", 6)
    assert [p.name for _, p in checkpoints.numbered(tmp_path, "step-")] == ["step-000004", "step-000006"]


def test_an_unreadable_file_is_named(tmp_path):
    (tmp_path / "scheduler.pt").write_bytes(b"not a pickle")
    import torch

    with pytest.raises(CheckpointError, match=r"scheduler\.pt: cannot be read \(UnpicklingError"):
        checkpoints.read_file(tmp_path / "scheduler.pt", lambda f: torch.load(f, weights_only=True))
