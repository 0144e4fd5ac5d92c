"""Atomic writes: a reader sees the old file or folder or the new one, and a failed write leaves the old one."""

from __future__ import annotations

import pytest
import torch

from shared_model.files import atomic_folder, atomic_torch_save, atomic_write, write_pointer


def test_atomic_write_replaces_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "sub" / "ledger.json"
    atomic_write(path, b"old")
    atomic_write(path, b"new")
    assert path.read_bytes() == b"new"
    assert [p.name for p in path.parent.iterdir()] == ["ledger.json"]
    write_pointer(tmp_path / "LATEST", "v0002")
    assert (tmp_path / "LATEST").read_text() == "v0002"


def test_a_failed_save_keeps_the_previous_file(tmp_path):
    path = tmp_path / "state.pt"
    atomic_torch_save(path, {"x": torch.ones(2)})

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot save this")

    with pytest.raises(RuntimeError, match="cannot save this"):
        atomic_torch_save(path, {"x": Unpicklable()})
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]


def test_atomic_folder_replaces_a_whole_folder_or_nothing(tmp_path):
    final = tmp_path / "round-0001"
    with atomic_folder(final) as tmp:
        (tmp / "a.txt").write_text("1")
    with pytest.raises(ValueError):
        with atomic_folder(final) as tmp:
            (tmp / "a.txt").write_text("2")
            raise ValueError("killed half way")
    assert (final / "a.txt").read_text() == "1"
    with atomic_folder(final) as tmp:
        (tmp / "b.txt").write_text("3")
    assert sorted(p.name for p in final.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["round-0001"]
