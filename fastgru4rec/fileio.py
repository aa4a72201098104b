"""Atomic file output: every file this library writes (models, preprocessed data, benchmark
JSON, plots) appears whole or not at all.

``check_writable`` lets a command test its output paths before hours of work, with the same
one-line ``cannot write PATH: reason`` message that ``atomic_write`` gives when writing fails.
"""
from __future__ import annotations

import contextlib
import errno
import os
import uuid
from pathlib import Path
from typing import IO, Iterator, Union

__all__ = ["WriteError", "atomic_write", "check_writable"]


class WriteError(OSError):
    """An output file cannot be written. An OSError (errno, strerror, filename kept) whose str()
    is the one line ``cannot write PATH: reason``."""

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror}"


def check_writable(path: Union[str, Path]) -> Path:
    """Raise WriteError unless ``path`` can be written as a file by atomic_write: not empty,
    not a directory, and its nearest existing ancestor a writable directory (missing parent
    folders are created when writing). Creates nothing. Returns ``path`` as a Path."""
    if str(path) == "":
        raise WriteError(errno.ENOENT, "the path is empty", "''")
    path = Path(path)
    if path.is_dir():
        raise WriteError(errno.EISDIR, "is a directory (give a file name)", str(path))
    parent = path.parent
    while not parent.exists():
        if parent == parent.parent:   # a root that does not exist: nothing to climb to
            break
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise WriteError(errno.ENOTDIR, f"{parent} is not a directory", str(path))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise WriteError(errno.EACCES, f"no permission to write in {parent}", str(path))
    return path


@contextlib.contextmanager
def atomic_write(path: Union[str, Path], mode: str = "wb") -> Iterator[IO]:
    """Write to a temporary file in ``path``'s own directory (os.replace is atomic only within
    one file system), fsync it, then rename it over ``path``. On any error the temporary file
    is removed and an existing ``path`` is left untouched; an OSError is raised as WriteError
    naming ``path``. open() rather than mkstemp so the file gets the usual permissions (umask),
    not 0600."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write mode must be 'wb' or 'w' (got {mode!r})")
    path = check_writable(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteError(e.errno, e.strerror or str(e), str(path)) from None
    # The name is cut so that the temporary name stays within NAME_MAX when path's is near it.
    tmp = path.parent / f".{path.name[:200]}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, mode.replace("w", "x")) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and not isinstance(e, WriteError):
            # e.g. ENOSPC from a write: name the destination, not the temporary file
            raise WriteError(e.errno, e.strerror or " ".join(str(e).split()), str(path)) from None
        raise
