"""Atomic file writes, the one helper every writer of the package uses.

A reader (or a resumed run) sees either the old file or the complete new one, never a part
of it: the data go to a temporary file beside the target, are flushed to disk (``fsync``)
and then renamed over the target (``os.replace``, atomic on POSIX and Windows).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

__all__ = ["write_atomic"]


def write_atomic(path: str | os.PathLike[str], data: str | bytes) -> Path:
    """Write ``data`` to ``path`` atomically and durably.

    Parameters
    ----------
    path : str or path-like
        The file to write; its folder must exist. An existing file is replaced.
    data : str or bytes
        The content; text is written as UTF-8, unchanged (no newline translation).

    Returns
    -------
    pathlib.Path
        The path written.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     _ = write_atomic(Path(tmp) / "a.txt", "one")
    ...     _ = write_atomic(Path(tmp) / "a.txt", "two")
    ...     print((Path(tmp) / "a.txt").read_text(), [p.name for p in Path(tmp).iterdir()])
    two ['a.txt']
    """
    path = Path(path)
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.part")
    # O_EXCL: never write through someone else's file; mode 0o666 minus the umask, like open()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
