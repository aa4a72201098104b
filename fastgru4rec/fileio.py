"""Atomic file output: every file this library writes (models, preprocessed data, benchmark
JSON) appears whole or not at all."""
from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import IO, Iterator, Union


@contextlib.contextmanager
def atomic_write(path: Union[str, Path], mode: str = "wb") -> Iterator[IO]:
    """Write to a temporary file beside ``path`` (os.replace is atomic only within one file
    system), fsync it, then rename it over ``path``. On any error the temporary file is
    removed and an existing ``path`` is left untouched. open() rather than mkstemp so the file
    gets the usual permissions (umask), not 0600."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write mode must be 'wb' or 'w' (got {mode!r})")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, mode.replace("w", "x")) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
