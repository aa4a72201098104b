"""Atomic file output: every file this library writes (models, preprocessed data, benchmark
JSON, plots) appears whole or not at all.

``check_writable`` lets a command test its output paths before hours of work (and against its
own input files), with the same one-line ``cannot write PATH: reason`` message that
``atomic_write`` gives when writing fails. Only regular files are ever replaced; a symlink is
written through (its target is replaced, the link stays).
"""
from __future__ import annotations

import contextlib
import errno
import os
import uuid
from pathlib import Path
from typing import IO, Iterable, Iterator, Union

from .errors import one_line

__all__ = ["WriteError", "atomic_write", "check_writable"]


class WriteError(OSError):
    """An output file cannot be written. An OSError (errno, strerror, filename kept) whose str()
    is the one line ``cannot write PATH: reason``."""

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror}"


def check_writable(path: Union[str, Path], inputs: Iterable[Union[str, Path]] = ()) -> Path:
    """Raise WriteError unless ``path`` can be written as a file by atomic_write, and return
    the path atomic_write will replace (a symlink's target: writing goes through the link).

    Refused: an empty path or one ending in a separator; a directory, device, FIFO or socket
    (only regular files are replaced); a path that is the same file as one of ``inputs`` (the
    command's input files: the output would destroy them); a folder where no file can be
    created (probed by creating and removing a file in the nearest existing folder, so a file
    system that refuses writes is found before the work, not after it). Missing parent folders
    are fine (atomic_write creates them)."""
    text = os.fspath(path)
    if text == "":
        raise WriteError(errno.ENOENT, "the path is empty", "''")
    if text.endswith(("/", os.sep)):
        raise WriteError(errno.EISDIR, "ends in a path separator (give a file name)", text)
    try:
        return _check_writable(text, inputs)
    except WriteError:
        raise
    except OSError as e:   # e.g. ENAMETOOLONG from a stat: the usual one-line form
        raise WriteError(e.errno, e.strerror or str(e), text) from None


def _check_writable(text: str, inputs) -> Path:
    path = Path(text)
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    if path.is_dir():
        raise WriteError(errno.EISDIR, "is a directory (give a file name)", text)
    if path.exists() and not path.is_file():
        raise WriteError(errno.EEXIST, "exists and is not a regular file (a device, FIFO or "
                         "socket is never replaced)", text)
    for inp in inputs:
        if path.exists() and _same_file(path, inp):
            raise WriteError(errno.EEXIST, f"is an input of this command ({inp}); "
                             "writing there would destroy it", text)
    parent = path.parent
    while not parent.exists():
        if parent == parent.parent:   # a root that does not exist: nothing to climb to
            break
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise WriteError(errno.ENOTDIR, f"{parent} is not a directory", text)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise WriteError(errno.EACCES, f"no permission to write in {parent}", text)
    probe = parent / f".fastgru4rec-probe.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    try:
        with open(probe, "xb"):
            pass
    except OSError as e:
        raise WriteError(e.errno, f"cannot create a file in {parent} ({e.strerror or e})",
                         text) from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(probe)
    return path


def _same_file(a: Path, b: Union[str, Path]) -> bool:
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):   # b missing or unreadable: not the same file
        return False


@contextlib.contextmanager
def atomic_write(path: Union[str, Path], mode: str = "wb") -> Iterator[IO]:
    """Write to a temporary file in ``path``'s own directory (os.replace is atomic only within
    one file system), fsync it, then rename it over ``path`` (checked by check_writable first:
    a symlink's target is the file replaced). On any error the temporary file
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
            raise WriteError(e.errno, e.strerror or one_line(e), str(path)) from None
        raise
