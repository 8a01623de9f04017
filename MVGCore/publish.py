"""The last step of an atomic write: a finished temporary file takes its final name, and a write
that failed for lack of space says so.

Without ``overwrite`` the final name must still be free at the moment the file appears there.
Checking first and renaming later (``os.replace``) lets two runs writing the same new output both
succeed, one silently replacing the other. ``os.link`` is the exclusive, atomic create that POSIX
and NTFS offer: it fails if the name exists, and the file appears complete. Where a filesystem has
no hard links (FAT, exFAT, some network shares) the name is reserved with ``O_EXCL`` and the
temporary file renamed over the reservation: the name is still never taken from another writer,
though for that moment it shows an empty file.

A full disk reaches Python as ITK's or NRRD's own text ("_nrrdEncodingGzip_write: expected to
write 1310720 bytes, but only wrote 327680"), which never says why; :func:`out_of_space` finds the
cause from the error and, failing that, from the free space left.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable
from pathlib import Path

_SPACE_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_SPACE_WORDS = ("no space left", "quota exceeded")


def publish(temporary: Path, path: Path, overwrite: bool) -> Callable[[], None]:
    """Give the complete file ``temporary`` the name ``path``; without ``overwrite`` only if no
    file has that name (FileExistsError naming it otherwise, and ``temporary`` is left as it is).

    Returns what undoes it: removing ``path`` if it is still the file published here and was new,
    so that a set of files can be written all or none.
    """
    made = os.stat(temporary)
    if overwrite:
        new = not os.path.lexists(path)
        os.replace(temporary, path)
    else:
        new = True
        try:
            os.link(temporary, path)
        except FileExistsError:
            raise _taken(path) from None
        except OSError:  # no hard links here: reserve the name, then rename over the reservation
            _reserve_and_replace(temporary, path)

    def undo() -> None:
        if new and _same_file(path, made):
            path.unlink()

    return undo


def out_of_space(error: BaseException, path: Path, needed: int) -> OSError | None:
    """An OSError saying the disk is full, if that is why writing ``path`` failed; else None.

    The error's own errno or words decide when they can; otherwise the disk is taken to be full
    when it has less free space than the ``needed`` (uncompressed) bytes, measured while the
    failed write's partial file still takes its space.
    """
    code = getattr(error, "errno", None)
    if code not in _SPACE_ERRNOS and not any(word in str(error).lower() for word in _SPACE_WORDS):
        try:
            free = shutil.disk_usage(path.parent).free
        except OSError:
            return None
        if free >= needed:
            return None
        code = errno.ENOSPC
    full = OSError(f"no space left on device writing {path}; free some space or write the file elsewhere")
    full.errno = code if code in _SPACE_ERRNOS else errno.ENOSPC  # no filename: str() stays one line
    return full


def _reserve_and_replace(temporary: Path, path: Path) -> None:
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        raise _taken(path) from None
    reservation = os.fstat(descriptor)
    os.close(descriptor)
    try:
        os.replace(temporary, path)
    except BaseException:
        if _same_file(path, reservation):
            path.unlink()
        raise


def _same_file(path: Path, status: os.stat_result) -> bool:
    try:
        now = os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    return (now.st_dev, now.st_ino) == (status.st_dev, status.st_ino)


def _taken(path: Path) -> FileExistsError:
    error = FileExistsError(
        f"{path} was created by another program while this one was writing it; it is kept, "
        "and this result is not written there"
    )
    error.errno = errno.EEXIST  # no filename: str() stays the message
    return error
