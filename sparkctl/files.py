"""Open files named on the command line without ever blocking on them.

A FIFO given as `-i`, `-p` or a doctor file used to hang the command in open() or
read(); a device (/dev/zero) would be read until a size limit. Both are refused here:
the file is opened non-blocking and checked with fstat, so nothing can be swapped in
between the check and the read.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import BinaryIO


class NotARegularFile(OSError):
    def __init__(self, kind: str):
        super().__init__(errno.EINVAL, f"not a regular file (a {kind})")
        self.kind = kind


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "special file"


def open_regular(path: str | os.PathLike[str]) -> BinaryIO:
    """Open a regular file for reading. Raises FileNotFoundError, IsADirectoryError,
    NotARegularFile, or another OSError."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory")
        if not stat.S_ISREG(mode):
            raise NotARegularFile(_kind(mode))
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
