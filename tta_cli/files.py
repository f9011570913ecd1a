"""Files: the one way tta-cli writes a file or a folder that someone may be reading, a file's
SHA-256, and TOML reading on every supported Python (JetPack 6 ships 3.10, which lacks ``tomllib``).

Whatever is written goes to a temporary name beside its destination and takes the
destination's place in one rename once complete, so a reader sees the old version or the
new one, never half, and a failed write leaves nothing behind.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = ["atomic_folder", "atomic_path", "file_sha256", "tomllib", "write_atomic"]


def file_sha256(path: Path) -> str:
    """The hex SHA-256 of a file's content, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_atomic(path: Path, text: str | bytes, *, replace: bool = True) -> None:
    """Write ``text`` (or bytes) to ``path`` atomically (``atomic_path``) and durably: the file
    is flushed to the disk before the rename, so that a crash right after cannot leave an empty
    file, and its folder after it, so that a power cut cannot undo the rename once this returns
    (a history row written next may name the file). ``replace=False``: a file already at
    ``path``, even one that appeared while this one was written, stays (``FileExistsError``)."""
    mode = "wb" if isinstance(text, bytes) else "w"
    with atomic_path(path, replace=replace) as temporary, temporary.open(mode) as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    _sync_folder(Path(path).parent)


def _sync_folder(folder: Path) -> None:
    """Flush a folder's entries (a rename into it) to the disk."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    except OSError as error:
        # Some file systems (network ones, some FUSE) cannot sync a folder; they say EINVAL.
        if error.errno != errno.EINVAL:
            raise
    finally:
        os.close(descriptor)


@contextmanager
def atomic_path(path: Path, *, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary file beside ``path`` (in the same folder, which must exist) for the
    caller to write; when the block ends normally it replaces ``path`` in one rename, and when
    it raises it is removed. Whoever writes must not need it fsynced, or use ``write_atomic``.
    ``replace=False``: the file takes ``path`` only if nothing is there at that moment (a hard
    link, which fails on an existing name; where the file system has none, a check just before
    the rename), else ``FileExistsError`` and ``path`` is untouched.
    """
    path = Path(path)
    with _naming(path):
        handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        # mkstemp creates 0600; give the file the permissions a plain open() would.
        temporary.chmod(0o666 & ~_umask())
        if replace:
            os.replace(temporary, path)
        else:
            _place_new(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _place_new(temporary: Path, path: Path) -> None:
    """Give ``temporary`` the name ``path`` unless something already has it."""
    try:
        os.link(temporary, path)
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
        # A file system without hard links (FAT, some network and FUSE ones): a check, then the
        # rename, which a writer in between the two can still lose to.
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path)) from error
        os.replace(temporary, path)
        return
    temporary.unlink()


@contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path`` for the caller to fill; when the block
    ends normally the folder takes ``path``'s place in one rename, and when it raises it is
    removed with what it holds. ``path`` must then be absent or an empty folder: a folder that
    holds anything is never replaced (``OSError``), so whoever means to replace one removes it
    first, inside the block.
    """
    path = Path(path)
    with _naming(path):
        temporary = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        yield temporary
        # mkdtemp creates 0700; give the folder the permissions a plain mkdir() would.
        temporary.chmod(0o777 & ~_umask())
        if path.is_dir():
            path.rmdir()
        os.rename(temporary, path)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


@contextmanager
def _naming(path: Path) -> Iterator[None]:
    """Report a temporary file or folder that cannot be made as the destination it was for."""
    try:
        yield
    except OSError as error:
        raise type(error)(error.errno, error.strerror, str(path)) from error


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask
