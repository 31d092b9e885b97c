"""Atomic writes: the target appears only complete, and a failure leaves nothing behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from cosmicai.atomic import AtomicFile, atomic_path


def test_atomic_path_replaces_the_target_only_on_success(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "model.safetensors"
    with atomic_path(target) as partial:
        assert partial.parent == target.parent and partial.name.endswith(".part")
        partial.write_bytes(b"new")
        assert not target.exists()  # readers see nothing until the block ends
    assert target.read_bytes() == b"new"
    with pytest.raises(RuntimeError), atomic_path(target) as partial:
        partial.write_bytes(b"half")
        raise RuntimeError("download failed")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.safetensors"]


def test_atomic_file_discard_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "manifest.json"
    target.write_text("old")
    out = AtomicFile(target)
    out.handle.write(b"new")
    out.discard()
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]
    out = AtomicFile(target)
    out.handle.write(b"new")
    assert out.commit() == 3 and target.read_text() == "new"
