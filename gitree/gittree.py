"""Git tree objects as a pure codec: bytes in, entries out (names stay bytes)."""

from __future__ import annotations

from typing import Iterator, NamedTuple

from .errors import CorruptObject

MODE_DIR = b"40000"
MODE_FILE = b"100644"
MODE_EXEC = b"100755"
MODE_LINK = b"120000"


class TreeEntry(NamedTuple):
    """One entry of a git tree object."""

    mode: bytes      # git's octal mode as stored: MODE_DIR, MODE_FILE, MODE_EXEC, MODE_LINK (or others read)
    name: bytes      # the stored name (escaped where git refuses the real one: gitree.names)
    oid: bytes       # 20-byte object id


class ContentRef(NamedTuple):
    """A directory's content-tree entry as the store keeps it, by real name: git mode and object id."""

    mode: bytes
    oid: bytes


def encode_tree(entries: list[tuple[bytes, bytes, bytes]]) -> bytes:
    """entries: (git mode, name, 20-byte id). Sorted here in git's order (a tree sorts as name + '/')."""
    entries = sorted(entries, key=lambda e: e[1] + b"/" if e[0] == MODE_DIR else e[1])
    return b"".join(mode + b" " + name + b"\0" + oid for mode, name, oid in entries)


_MODES = {m: m for m in (MODE_DIR, MODE_FILE, MODE_EXEC, MODE_LINK)}  # one object per mode, not one per entry


def iter_tree(data: bytes, where: str = "") -> Iterator[TreeEntry]:
    """The entries of a git tree object one at a time (a tree may hold hundreds of thousands)."""
    pos = 0
    n = len(data)
    modes = _MODES
    while pos < n:
        sp = data.find(b" ", pos)
        nul = data.find(b"\0", sp + 1)
        if sp < 0 or nul < 0 or nul + 21 > n:
            raise CorruptObject(f"git tree {where}: malformed")
        mode = data[pos:sp]
        yield TreeEntry(modes.get(mode, mode), data[sp + 1:nul], data[nul + 1:nul + 21])
        pos = nul + 21


def decode_tree(data: bytes, where: str = "") -> list[TreeEntry]:
    return list(iter_tree(data, where))
