"""Git tree objects as a pure codec: bytes in, entries out (names stay bytes)."""

from __future__ import annotations

from .errors import CorruptObject

MODE_DIR = b"40000"
MODE_FILE = b"100644"
MODE_EXEC = b"100755"
MODE_LINK = b"120000"


def encode_tree(entries: list[tuple[bytes, bytes, bytes]]) -> bytes:
    """entries: (git mode, name, 20-byte id). Sorted here in git's order (a tree sorts as name + '/')."""
    entries = sorted(entries, key=lambda e: e[1] + b"/" if e[0] == MODE_DIR else e[1])
    return b"".join(mode + b" " + name + b"\0" + oid for mode, name, oid in entries)


def decode_tree(data: bytes, where: str = "") -> list[tuple[bytes, bytes, bytes]]:
    out = []
    pos = 0
    n = len(data)
    while pos < n:
        sp = data.find(b" ", pos)
        nul = data.find(b"\0", sp + 1)
        if sp < 0 or nul < 0 or nul + 21 > n:
            raise CorruptObject(f"git tree {where}: malformed")
        out.append((data[pos:sp], data[sp + 1:nul], data[nul + 1:nul + 21]))
        pos = nul + 21
    return out
