"""The one entry model that flows through every source, the store, every sink and the OSTree bridge.

Paths are bytes relative to the root, components joined by b"/", the root itself is b"".
"""

from __future__ import annotations

import enum
import stat
from dataclasses import dataclass, field

from .limits import MAX_DEPTH  # noqa: F401 - entry.MAX_DEPTH: the depth every reader and writer accepts
from .sparse import SparseMap


class Kind(enum.Enum):
    FILE = "f"
    DIR = "d"
    SYMLINK = "l"
    CHAR = "c"
    BLOCK = "b"
    FIFO = "p"
    SOCKET = "s"

    @property
    def ifmt(self) -> int:
        return _IFMT[self]

    @classmethod
    def from_mode(cls, st_mode: int) -> "Kind":
        try:
            return _FROM_IFMT[stat.S_IFMT(st_mode)]
        except KeyError:
            raise ValueError(f"unknown file type {st_mode:o}") from None


_IFMT = {
    Kind.FILE: stat.S_IFREG,
    Kind.DIR: stat.S_IFDIR,
    Kind.SYMLINK: stat.S_IFLNK,
    Kind.CHAR: stat.S_IFCHR,
    Kind.BLOCK: stat.S_IFBLK,
    Kind.FIFO: stat.S_IFIFO,
    Kind.SOCKET: stat.S_IFSOCK,
}
_FROM_IFMT = {v: k for k, v in _IFMT.items()}

Xattrs = tuple[tuple[bytes, bytes], ...]


@dataclass(slots=True)
class Entry:
    """One filesystem object as every layer sees it.

    `mode` holds only the permission bits (07777); the type is `kind`.
    `hardlink` names an earlier path this entry is a hard link to (its own metadata is then the target's).
    `oid` is the git object id of the content (regular file bytes or symlink target) once stored.
    `sparse` is the map of a sparse regular file; `size` and the blob then hold only its data segments.
    """

    path: bytes
    kind: Kind
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    xattrs: Xattrs = ()
    rdev: tuple[int, int] | None = None
    target: bytes | None = None
    hardlink: bytes | None = None
    mtime_ns: int | None = None
    size: int = 0
    oid: bytes | None = None
    extra: dict = field(default_factory=dict)
    sparse: SparseMap | None = None

    @property
    def name(self) -> bytes:
        return self.path.rpartition(b"/")[2]

    @property
    def st_mode(self) -> int:
        return self.kind.ifmt | self.mode


def sorted_xattrs(pairs) -> Xattrs:
    """Canonical xattr order: by name, byte-wise; the last value wins for a repeated name."""
    return tuple(sorted(dict(pairs).items()))


def split_path(path: bytes) -> list[bytes]:
    return path.split(b"/") if path else []


_U32 = 1 << 32


def check_fields(e: "Entry") -> str | None:
    """Why Linux cannot hold this entry's metadata, or None. Shared by the import and table checks."""
    if not 0 <= e.mode <= 0o7777:
        return f"mode {e.mode:o} out of range"
    if not (0 <= e.uid < _U32 and 0 <= e.gid < _U32):
        return f"owner {e.uid}:{e.gid} does not fit 32 bits"
    if e.kind is Kind.SYMLINK and e.target is not None and (not e.target or b"\0" in e.target):
        return "symlink target is empty or contains NUL"
    if e.rdev is not None and not (0 <= e.rdev[0] < 4096 and 0 <= e.rdev[1] < (1 << 20)):
        return f"device number {e.rdev[0]},{e.rdev[1]} out of Linux's range (major < 4096, minor < 2^20)"
    if e.kind is Kind.SYMLINK and e.target is not None and len(e.target) > 4095:
        return "symlink target is longer than 4095 bytes (Linux's PATH_MAX less the NUL)"
    if e.xattrs:
        from .xattrs import check_xattrs  # imported here: only entries with xattrs need it
        return check_xattrs(e.xattrs, e.kind is Kind.DIR)
    return None
