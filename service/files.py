"""Reading and writing files safely: bounded reads of regular files only, all-or-nothing writes."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from service.errors import InputError


def read_bounded(path: Path, limit: int) -> bytes:
    """The file's bytes, refusing anything that is not a regular file or is larger than ``limit``.

    Reads at most ``limit + 1`` bytes, so neither a huge file nor a device (/dev/zero) nor a pipe that
    never ends is pulled into memory to be rejected.
    """
    try:
        if not path.is_file():
            what = "does not exist" if not path.exists() else "is not a regular file"
            raise InputError(f"the path {what}", source=str(path))
        with path.open("rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise InputError(f"cannot read the file: {exc.strerror}", source=str(path)) from exc
    if len(data) > limit:
        raise InputError(f"the file is larger than the limit of {limit:,} bytes", source=str(path))
    return data


def write_atomically(path: Path, data: bytes) -> None:
    """Write all or nothing: a temporary file beside the target, then an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
