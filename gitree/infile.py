"""Opening an input file the user named (a tar to import, a bundle to apply) without blocking on it.

A path on a USB stick or in a download directory may be a FIFO (opening it blocks until a writer comes,
forever), a device (/dev/zero reads forever; opening a tape or terminal has side effects) or a socket. Such a
path is refused in one line before it is opened: it is `stat`ed first (following symlinks, since the user may
name a file through one), opened only when that says regular file, with O_NONBLOCK (if it was swapped for a
FIFO in between, the open does not block), and `fstat` must then show the same regular file. A stream on
standard input is still read as `-`.
"""

from __future__ import annotations

import fcntl
import os
import stat
from typing import BinaryIO

from .errors import BadInput


def kind_name(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symlink")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str, what: str, stdin_hint: bool = False) -> BinaryIO:
    """Open `path` for reading if it is a regular file; BadInput in one line otherwise (`what` names the
    input in the message: "tar", "bundle"). With `stdin_hint`, a non-regular file's message says to pipe it
    to `-`."""
    def refuse(mode: int) -> BadInput:
        hint = "; to read a stream, pipe it to '-'" if stdin_hint else ""
        return BadInput(f"{what} {path}: {kind_name(mode)}, not a regular file (refused{hint})")

    try:
        st = os.stat(path)
    except OSError as e:
        raise BadInput(f"cannot open {what} {path}: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise refuse(st.st_mode)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise BadInput(f"cannot open {what} {path}: {e.strerror}") from None
    try:
        st2 = os.fstat(fd)
        if not stat.S_ISREG(st2.st_mode):
            raise refuse(st2.st_mode)
        if (st2.st_dev, st2.st_ino) != (st.st_dev, st.st_ino):
            raise BadInput(f"{what} {path}: replaced while it was opened (refused)")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


__all__ = ["open_regular", "kind_name"]
