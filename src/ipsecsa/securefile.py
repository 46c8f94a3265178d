"""Writing files that hold keys: 0600 from the first byte, atomically, durably.

SA files and Wireshark's ESP SA table both carry key material. They are written through one
function so that every such file gets the same guarantees:

* the temporary file is created with ``O_EXCL`` and mode 0600 (then ``fchmod`` to exactly 0600,
  whatever the umask), so it is never readable by others, not even briefly;
* it is fsynced, then ``os.replace``-d over the target, so a reader (or a crash) sees the old
  file or the new one, never a partial one; the directory is fsynced so the rename survives.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

#: Owner read/write only.
SECRET_FILE_MODE = 0o600


def write_secret_file(path: str | os.PathLike[str], payload: bytes) -> None:
    """Atomically replace ``path`` with ``payload``, mode 0600 throughout."""
    path = Path(path)
    directory = path.parent
    # A unique, unguessable name; O_EXCL makes sure we never open someone else's file.
    tmp = directory / f".{path.name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0),
                 SECRET_FILE_MODE)
    try:
        try:
            os.fchmod(fd, SECRET_FILE_MODE)  # the umask may only have narrowed it
            view = memoryview(payload)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    try:
        dfd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # not supported on this platform; the data itself is already synced
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)
