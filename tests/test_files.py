from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from tta_cli.files import atomic_folder, atomic_path, write_atomic


def names(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def test_an_atomic_path_replaces_the_file_only_when_the_block_succeeds(tmp_path: Path) -> None:
    out = tmp_path / "image.png"
    out.write_bytes(b"old")
    with atomic_path(out) as temporary:
        assert temporary.parent == tmp_path and temporary != out
        temporary.write_bytes(b"new")
        assert out.read_bytes() == b"old"
    assert out.read_bytes() == b"new" and names(tmp_path) == ["image.png"]
    with pytest.raises(RuntimeError, match="half"), atomic_path(out) as temporary:
        temporary.write_bytes(b"half")
        raise RuntimeError("half written")
    assert out.read_bytes() == b"new" and names(tmp_path) == ["image.png"]


def test_written_files_and_folders_get_the_permissions_of_open_and_mkdir(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        write_atomic(tmp_path / "a.txt", "text")
        with atomic_path(tmp_path / "b.bin") as temporary:
            temporary.write_bytes(b"\x00")
        with atomic_folder(tmp_path / "c") as folder:
            (folder / "inside.txt").write_text("x")
    finally:
        os.umask(umask)
    assert [(tmp_path / name).stat().st_mode & 0o777 for name in ("a.txt", "b.bin", "c")] == [0o644, 0o644, 0o755]


def test_an_atomic_folder_appears_whole_or_not_at_all(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(RuntimeError), atomic_folder(out) as staging:
        (staging / "half.txt").write_text("x")
        raise RuntimeError("stopped")
    assert names(tmp_path) == []
    out.mkdir()  # an empty folder is replaced
    with atomic_folder(out) as staging:
        (staging / "run.toml").write_text("x")
        assert not (out / "run.toml").exists()
    assert names(tmp_path) == ["run"] and names(out) == ["run.toml"]


def test_an_atomic_folder_never_replaces_one_that_holds_files(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("kept")
    with pytest.raises(OSError), atomic_folder(out) as staging:
        (staging / "new.txt").write_text("x")
    assert names(tmp_path) == ["run"] and names(out) == ["keep.txt"]


def test_a_destination_that_cannot_be_written_is_named_in_the_error(tmp_path: Path) -> None:
    out = tmp_path / "missing" / "model.onnx"
    with pytest.raises(FileNotFoundError) as raised, atomic_path(out):
        pass
    assert raised.value.filename == str(out)
    with pytest.raises(FileNotFoundError) as raised, atomic_folder(out):
        pass
    assert raised.value.filename == str(out)


def test_write_atomic_syncs_the_file_then_renames_it_then_syncs_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A history row names a snapshot only after ``write_atomic`` returned: by then the rename
    must survive a power cut, not only the file's bytes."""
    calls: list[str] = []
    fsync, replace = os.fsync, os.replace

    def recording_fsync(descriptor: int) -> None:
        calls.append("sync folder" if os.fstat(descriptor).st_ino == tmp_path.stat().st_ino else "sync file")
        fsync(descriptor)

    def recording_replace(source: str | Path, destination: str | Path) -> None:
        calls.append(f"rename to {Path(destination).name}")
        replace(source, destination)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)
    write_atomic(tmp_path / "snapshot.safetensors", b"state")
    assert calls == ["sync file", "rename to snapshot.safetensors", "sync folder"]


def test_a_file_written_without_replace_never_takes_the_place_of_one_already_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two writers of the same new file (two trainings into one bundle): the second is refused,
    the first file stays whole, and no temporary file is left; the same where the file system has
    no hard links (checked just before the rename there)."""
    path = tmp_path / "mgg.safetensors"
    write_atomic(path, b"first", replace=False)
    with pytest.raises(FileExistsError):
        write_atomic(path, b"second", replace=False)
    assert path.read_bytes() == b"first" and names(tmp_path) == ["mgg.safetensors"]

    def no_links(source: object, target: object) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    with pytest.raises(FileExistsError):
        write_atomic(path, b"second", replace=False)
    write_atomic(tmp_path / "other.safetensors", b"other", replace=False)
    assert path.read_bytes() == b"first" and (tmp_path / "other.safetensors").read_bytes() == b"other"
    assert names(tmp_path) == ["mgg.safetensors", "other.safetensors"]
