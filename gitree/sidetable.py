"""Per-directory side tables: a pure codec (bytes in, rows out). Specified in docs/format.md.

A table lists the directory itself (row name ".") and every entry in it, sorted by raw name bytes:

    gitree-dirtable 1
    . d 755 0 0
    <name> <kind> <mode> <uid> <gid>[ r=MAJ,MIN][ h=LEADER][ t=SEC[.NSEC]][ s=SPARSEMAP][ x=NAME=VALUE]...

A table with a sparse file (an `s=` field) starts `gitree-dirtable 2` instead; every other table keeps
version 1, so trees without sparse files have the ids they always had (docs/format.md, 4.6).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from .entry import Entry, Kind, Xattrs, check_fields
from .errors import CorruptObject
from .limits import MAX_DIR_ENTRIES, NAME_MAX
from .names import esc, unesc
from . import sparse as sparsemap

MAGIC = b"gitree-dirtable 1\n"
MAGIC_SPARSE = b"gitree-dirtable 2\n"  # version 1 plus the `s=` field of sparse files
SELF = b"."

_KINDS = {k.value.encode(): k for k in Kind}


@dataclass(slots=True, frozen=True)
class Row:
    name: bytes
    kind: Kind
    mode: int
    uid: int
    gid: int
    rdev: tuple[int, int] | None = None
    hardlink: bytes | None = None
    mtime_ns: int | None = None
    xattrs: Xattrs = ()
    sparse: sparsemap.SparseMap | None = None


def _fmt_mtime(ns: int) -> bytes:
    sec, nsec = divmod(ns, 1_000_000_000)
    return b"%d" % sec if nsec == 0 else b"%d.%09d" % (sec, nsec)


def _parse_mtime(tok: bytes) -> int:
    sec, dot, nsec = tok.partition(b".")
    if dot and len(nsec) != 9:
        raise ValueError("mtime fraction must have 9 digits")
    return int(sec) * 1_000_000_000 + (int(nsec) if dot else 0)


def encode_row(row: Row) -> bytes:
    parts = [esc(row.name) if row.name != SELF else SELF, row.kind.value.encode(),
             b"%o" % row.mode, b"%d" % row.uid, b"%d" % row.gid]
    if row.rdev is not None:
        parts.append(b"r=%d,%d" % row.rdev)
    if row.hardlink is not None:
        parts.append(b"h=" + esc(row.hardlink))
    if row.mtime_ns is not None:
        parts.append(b"t=" + _fmt_mtime(row.mtime_ns))
    if row.sparse is not None:
        parts.append(b"s=" + sparsemap.encode(row.sparse))
    for name, value in row.xattrs:
        parts.append(b"x=" + esc(name) + b"=" + esc(value))
    return b" ".join(parts) + b"\n"


def encode_table(self_row: Row, rows: list[Row]) -> bytes:
    """Canonical bytes of one directory's table; `rows` are sorted here."""
    body = [encode_row(r) for r in sorted(rows, key=lambda r: r.name)]
    return table_from_lines(self_row, body, any(r.sparse is not None for r in rows))


def table_from_lines(self_row: Row, lines: list[bytes], sparse: bool) -> bytes:
    """encode_table of rows already encoded (encode_row) in name order; `sparse`: any row has a sparse map.
    (An import encodes each row as it goes, so a large directory is not held as Row objects too.)"""
    return b"".join([MAGIC_SPARSE if sparse else MAGIC, encode_row(self_row), *lines])


def decode_table(data: bytes, where: str = "") -> tuple[Row, list[Row]]:
    """Parse and validate a table; raise CorruptObject naming `where` on any fault."""
    if not data.startswith((MAGIC, MAGIC_SPARSE)):
        first = data.split(b"\n", 1)[0][:40]
        raise CorruptObject(f"side table {where}: unknown header {first!r}")
    v2 = data.startswith(MAGIC_SPARSE)
    start = len(MAGIC)
    if len(data) > start and not data.endswith(b"\n"):
        raise CorruptObject(f"side table {where}: missing final newline")
    if data.count(b"\n", start) > MAX_DIR_ENTRIES + 1:
        raise CorruptObject(f"side table {where}: more than {MAX_DIR_ENTRIES} rows (the limit of one directory)")
    rows = []
    prev = None
    first = None
    for lineno, line in enumerate(_lines(data, start), 2):
        row = _known_tail_row(line)
        if row is None:
            try:
                row = _decode_row(line)
                if encode_row(row) != line + b"\n":
                    raise ValueError("row is not in canonical form")
            except (ValueError, KeyError, IndexError) as e:
                raise CorruptObject(f"side table {where} line {lineno}: {e}") from None
            _remember_tail(line, row)
        if lineno == 2:
            first = line
            if row.name != SELF or row.kind is not Kind.DIR:
                raise CorruptObject(f"side table {where}: first row must describe the directory itself")
            continue
        if row.name == SELF or (prev is not None and row.name <= prev):
            raise CorruptObject(f"side table {where} line {lineno}: rows not sorted or repeated")
        prev = row.name
        rows.append(row)
    if first is None:
        raise CorruptObject(f"side table {where}: no row for the directory itself")
    if v2 != any(r.sparse is not None for r in rows):
        raise CorruptObject(f"side table {where}: version {2 if v2 else 1} marker with"
                            f"{'out' if v2 else ''} a sparse file (not in canonical form)")
    return _decode_row(first), rows


def _lines(data: bytes, pos: int) -> Iterator[bytes]:
    """The newline-ended lines of data[pos:], one at a time (a table may hold hundreds of thousands)."""
    end = len(data)
    while pos < end:
        nl = data.index(b"\n", pos)
        yield data[pos:nl]
        pos = nl + 1


# Most rows of a root filesystem differ only by name ("f 644 0 0"): the part after the name (the tail) of a
# row decoded, validated and found canonical is remembered, and a later row with the same tail is checked by
# its name alone (the same checks as _decode_row, and esc(name) must give the token back: canonical form).
# What a tail says does not depend on the name; a tail with a hard link or a sparse map is not remembered.
_TAILS: dict[bytes, tuple] = {}
MAX_TAILS = 4096


def _remember_tail(line: bytes, row: Row) -> None:
    if row.name == SELF or row.hardlink is not None or row.sparse is not None:
        return
    if len(_TAILS) >= MAX_TAILS:
        _TAILS.clear()
    _TAILS[line.partition(b" ")[2]] = (row.kind, row.mode, row.uid, row.gid, row.rdev, None, row.mtime_ns,
                                       row.xattrs, None)


def _known_tail_row(line: bytes) -> Row | None:
    """The row of a line whose tail was validated before, or None (then _decode_row decides)."""
    tok, _, tail = line.partition(b" ")
    fields = _TAILS.get(tail)
    if fields is None or tok == SELF:
        return None
    try:
        name = unesc(tok)
    except ValueError:
        return None
    if not name or b"/" in name or b"\0" in name or name in (SELF, b"..") or len(name) > NAME_MAX \
            or esc(name) != tok:
        return None
    return Row(name, *fields)


def _decode_row(line: bytes) -> Row:
    toks = line.split(b" ")
    if len(toks) < 5:
        raise ValueError("short row")
    name = SELF if toks[0] == SELF else unesc(toks[0])
    if not name or b"/" in name or b"\0" in name or name == b".." or (name == b"." and toks[0] != SELF):
        raise ValueError(f"bad name {toks[0][:80]!r}")
    if len(name) > NAME_MAX:
        raise ValueError(f"name longer than {NAME_MAX} bytes")
    kind = _KINDS[toks[1]]
    mode = int(toks[2], 8)
    if not 0 <= mode <= 0o7777:
        raise ValueError("mode out of range")
    uid, gid = int(toks[3]), int(toks[4])
    if uid < 0 or gid < 0:
        raise ValueError("negative id")
    rdev = hardlink = mtime = sparse = None
    xattrs = []
    for tok in toks[5:]:
        key, _, val = tok.partition(b"=")
        if key == b"r":
            maj, _, mnr = val.partition(b",")
            rdev = (int(maj), int(mnr))
        elif key == b"h":
            hardlink = unesc(val)
        elif key == b"t":
            mtime = _parse_mtime(val)
        elif key == b"s":
            if kind is not Kind.FILE:
                raise ValueError("sparse map on something that is not a regular file")
            sparse = sparsemap.decode(val)
        elif key == b"x":
            xn, sep, xv = val.partition(b"=")
            if not sep:
                raise ValueError("xattr without '='")
            xattrs.append((unesc(xn), unesc(xv)))
        else:
            raise ValueError(f"unknown field {key!r}")
    if xattrs != sorted(xattrs) or len({n for n, _ in xattrs}) != len(xattrs):
        raise ValueError("xattrs not sorted or repeated")
    if (rdev is not None) != (kind in (Kind.CHAR, Kind.BLOCK)):
        raise ValueError("device number present without a device, or missing")
    why = check_fields(Entry(name, kind, mode, uid, gid, tuple(xattrs), rdev=rdev))
    if why is not None:
        raise ValueError(why)
    return Row(name, kind, mode, uid, gid, rdev, hardlink, mtime, tuple(xattrs), sparse)
