"""Atomic file writes, the one helper every writer of the package uses.

A reader (or a resumed run) sees either the old file or the complete new one, never a part
of it: the data go to a temporary file beside the target, are flushed to disk (``fsync``)
and then renamed over the target (``os.replace``, atomic on POSIX and Windows).
"""

from __future__ import annotations

import errno
import os
import secrets
from pathlib import Path

#: Suffix of :func:`write_atomic`'s temporary files (``.<name>.<pid>-<hex><suffix>``).
TEMP_SUFFIX = ".part"

__all__ = ["TEMP_SUFFIX", "is_temporary_of", "write_atomic", "disk_fault", "DISK_FAULT_ERRNOS"]

#: ``errno`` values of a fault of the machine, not of the code that wrote: a full disk
#: (ENOSPC), a full disk quota (EDQUOT) and the process's file-size limit (EFBIG, ``ulimit -f``).
DISK_FAULT_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EFBIG, *([errno.EDQUOT] if hasattr(errno, "EDQUOT") else [])}
)


def disk_fault(exc: BaseException) -> OSError | None:
    """The full-disk or file-size-limit error behind ``exc``, or None.

    Such an error says nothing about the code that was running (a fitter that compiled and
    cached a kernel, a writer of the store): the same work succeeds once there is space, so
    it must stop the command (to be resumed) instead of being recorded as that code's
    failure.

    Parameters
    ----------
    exc : BaseException
        An exception; its ``__cause__``/``__context__`` chain is searched too.

    Returns
    -------
    OSError or None
        The first :class:`OSError` in the chain whose ``errno`` is in
        :data:`DISK_FAULT_ERRNOS`.

    Examples
    --------
    >>> try:
    ...     try:
    ...         raise OSError(errno.ENOSPC, "No space left on device")
    ...     except OSError as err:
    ...         raise RuntimeError("could not save the cache") from err
    ... except RuntimeError as err:
    ...     print(disk_fault(err))
    [Errno 28] No space left on device
    >>> disk_fault(FileNotFoundError(errno.ENOENT, "missing")) is None
    True
    """
    seen: list[BaseException] = []
    node: BaseException | None = exc
    while node is not None and not any(node is s for s in seen):
        if isinstance(node, OSError) and node.errno in DISK_FAULT_ERRNOS:
            return node
        seen.append(node)
        node = node.__cause__ or node.__context__
    return None


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
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}{TEMP_SUFFIX}")
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


def is_temporary_of(path: str | os.PathLike[str], name: str) -> bool:
    """Whether ``path`` is a temporary file :func:`write_atomic` left while writing ``name``.

    Examples
    --------
    >>> is_temporary_of(".run.json.4242-1a2b3c4d" + TEMP_SUFFIX, "run.json")
    True
    """
    base = Path(path).name
    return base.startswith(f".{name}.") and base.endswith(TEMP_SUFFIX)
