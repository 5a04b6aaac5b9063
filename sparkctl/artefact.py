"""Logs given to `doctor`, read in chunks: a 200 MB log costs time, not memory.

The readers that need a second look (the NCCL log reader learns every rank's host
name first) start the file over; stdin is spooled to a temporary file for that.
"""

from __future__ import annotations

import codecs
import os
import sys
import tempfile
from typing import BinaryIO, Iterator

from sparkctl.errors import InputError
from sparkctl.files import NotARegularFile, open_regular
from sparkctl.logtext import iter_lines

MAX_BYTES = 256 * 1024 * 1024
CHUNK = 1024 * 1024


class Artefact:
    def __init__(self, handle: BinaryIO):
        self._handle = handle

    def chunks(self) -> Iterator[str]:
        """The text from the start, decoded as pasted text is: bad bytes replaced."""
        self._handle.seek(0)
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        while data := self._handle.read(CHUNK):
            yield decoder.decode(data)
        if tail := decoder.decode(b"", final=True):
            yield tail

    def lines(self) -> Iterator[str]:
        return iter_lines(self.chunks())

    @property
    def ends_open(self) -> bool:
        """The last line has no line end (the output may have been cut)."""
        size = self._handle.seek(0, os.SEEK_END)
        if size == 0:
            return False
        self._handle.seek(size - 1)
        return self._handle.read(1) not in (b"\n", b"\r")

    def __enter__(self) -> Artefact:
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.close()


def open_artefact(path: str) -> Artefact:
    """A regular file, or '-' for stdin (the way to give doctor a pipe)."""
    if path == "-":
        return Artefact(_spool(sys.stdin.buffer, path))
    try:
        handle = open_regular(path)
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, expected a log file") from None
    except NotARegularFile as exc:
        raise InputError(f"{path}: {exc.strerror}, expected a log file", hint="to read a pipe: ... | sparkctl doctor ... -") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from None
    if os.fstat(handle.fileno()).st_size > MAX_BYTES:
        handle.close()
        raise _too_large(path)
    return Artefact(handle)


def _spool(stream: BinaryIO, path: str) -> BinaryIO:
    spool = tempfile.TemporaryFile()
    total = 0
    while data := stream.read(CHUNK):
        total += len(data)
        if total > MAX_BYTES:
            spool.close()
            raise _too_large(path)
        spool.write(data)
    return spool


def _too_large(path: str) -> InputError:
    return InputError(f"{path}: larger than {MAX_BYTES // (1024 * 1024)} MiB; pass the relevant part")
