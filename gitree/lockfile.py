"""Lock files (flock(2)) in a repository: taken in one place, so each is opened the same careful way.

A lock file is opened read-only (flock needs no more, so a lock file root created stays usable by the
repository's owner), never through a symlink (root would create or open a file wherever the owner pointed it),
and only if it is a regular file. A process forked without exec (export's workers) closes its copies at once:
they share the open file description, and the lock would otherwise last as long as the child.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from typing import Callable

from .errors import UnsafePath

_HELD: set[int] = set()     # descriptors of the lock files this process holds


def take(path: str, op: int, on_wait: Callable[[], None] | None = None,
         busy: Callable[[], None] | None = None) -> int:
    """A descriptor of the lock file `path` holding flock `op` (LOCK_EX or LOCK_SH). If another holds it:
    busy() (which raises) when given, else on_wait() and wait. `release` releases it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UnsafePath(f"the lock file {path} is a symlink, which is refused") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePath(f"the lock file {path} is not a regular file")
        if st.st_uid == os.geteuid() and st.st_mode & 0o777 != 0o644:
            os.fchmod(fd, 0o644)    # readable by the repository's owner whatever the umask (flock needs no more)
        try:
            fcntl.flock(fd, op | fcntl.LOCK_NB)
        except BlockingIOError:
            if busy is not None:
                busy()
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, op)
    except BaseException:
        os.close(fd)
        raise
    _HELD.add(fd)
    return fd


def release(fd: int) -> None:
    _HELD.discard(fd)
    os.close(fd)


def _close_in_child() -> None:
    for fd in _HELD:
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


os.register_at_fork(after_in_child=_close_in_child)

__all__ = ["take", "release"]
