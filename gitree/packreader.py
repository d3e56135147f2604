"""Random access to the entries of the repository's own git packs, by object id, through their .idx files.

Used by export-ostree to copy a blob's deflate stream out of the pack without inflating it: a pack entry that is
not a delta is a zlib stream (2-byte header, raw deflate, Adler-32), and an OSTree `.filez` body is raw deflate.
Packs and indexes are mapped read-only. Everything read is bounds-checked against the files, and an entry is handed
out only after its CRC-32 (which the version-2 index keeps for every entry) matches, so a damaged pack is never
copied; anything this reader does not understand yields None and the caller falls back to reading the object
through libgit2.
"""

from __future__ import annotations

import bisect
import mmap
import os
import struct
import zlib
from dataclasses import dataclass

from .errors import CorruptObject
from .packwriter import OBJ_BLOB

IDX_MAGIC = b"\xfftOc\x00\x00\x00\x02"
MAX_ALTERNATES = 5          # depth of objects/info/alternates followed (as git's own limit)
MAX_ENTRY_HEADER = 16       # bytes of a pack entry's type/size varint


@dataclass(frozen=True)
class PackSlice:
    """A whole (non-delta) object in a pack: `raw_deflate` is a zero-copy view of its deflate stream."""

    otype: int
    size: int
    raw_deflate: memoryview


def parse_entry_header(buf, off: int, limit: int) -> tuple[int, int, int] | None:
    """(type, size, header length) of the pack entry at `off`, or None if malformed."""
    pos = off
    if pos >= limit:
        return None
    c = buf[pos]
    pos += 1
    otype, size, shift = (c >> 4) & 7, c & 0x0F, 4
    while c & 0x80:
        if pos >= limit or pos - off >= MAX_ENTRY_HEADER:
            return None
        c = buf[pos]
        pos += 1
        size |= (c & 0x7F) << shift
        shift += 7
    return otype, size, pos - off


def zlib_to_raw(entry_data) -> memoryview | None:
    """The raw deflate inside a zlib stream (RFC 1950), or None if its header is not plain deflate."""
    if len(entry_data) < 6:
        return None
    cmf, flg = entry_data[0], entry_data[1]
    if cmf & 0x0F != 8 or cmf >> 4 > 7 or (cmf << 8 | flg) % 31 or flg & 0x20:
        return None
    return memoryview(entry_data)[2:-4]


class PackFile:
    """One pack and its version-2 index, mapped."""

    def __init__(self, pack_path: str):
        idx_path = pack_path[:-5] + ".idx"
        with open(idx_path, "rb") as fi, open(pack_path, "rb") as fp:
            self.idx = mmap.mmap(fi.fileno(), 0, access=mmap.ACCESS_READ)
            self.pack = mmap.mmap(fp.fileno(), 0, access=mmap.ACCESS_READ)
        idx = self.idx
        if len(idx) < 8 + 1024 + 40 or idx[:8] != IDX_MAGIC:
            raise ValueError(f"{idx_path}: not a version-2 pack index")
        self.fanout = struct.unpack_from(">256I", idx, 8)
        n = self.count = self.fanout[255]
        self.oids_at = 8 + 1024
        self.crcs_at = self.oids_at + 20 * n
        self.offs_at = self.crcs_at + 4 * n
        self.large_at = self.offs_at + 4 * n
        if self.large_at + 40 > len(idx) or len(self.pack) < 32 or self.pack[:4] != b"PACK":
            raise ValueError(f"{idx_path}: index or pack truncated")
        self.pack_end = len(self.pack) - 20
        self._ends: list[int] | None = None

    def close(self) -> None:
        try:
            self.idx.close()
            self.pack.close()
        except BufferError:  # a PackSlice still refers to it: the mapping goes with the last view
            pass

    def _find(self, oid: bytes) -> int | None:
        lo = self.fanout[oid[0] - 1] if oid[0] else 0
        hi = self.fanout[oid[0]]
        idx, base = self.idx, self.oids_at
        while lo < hi:
            mid = (lo + hi) // 2
            cur = idx[base + 20 * mid:base + 20 * mid + 20]
            if cur < oid:
                lo = mid + 1
            elif cur > oid:
                hi = mid
            else:
                return mid
        return None

    def _offset(self, i: int) -> int | None:
        off = struct.unpack_from(">I", self.idx, self.offs_at + 4 * i)[0]
        if off & 0x80000000:
            at = self.large_at + 8 * (off & 0x7FFFFFFF)
            if at + 8 > len(self.idx) - 40:
                return None
            off = struct.unpack_from(">Q", self.idx, at)[0]
        return off if 12 <= off < self.pack_end else None

    def _entry_end(self, off: int) -> int:
        """Where the entry at `off` ends: the next entry's offset, or the pack's trailer."""
        if self._ends is None:
            ends = [self._offset(i) for i in range(self.count)]
            self._ends = sorted(o for o in ends if o is not None)
        k = bisect.bisect_right(self._ends, off)
        return self._ends[k] if k < len(self._ends) else self.pack_end

    def whole_object(self, oid: bytes) -> PackSlice | None | bool:
        """The object if it is stored whole; False if not in this pack; None if a delta or unusable."""
        i = self._find(oid)
        if i is None:
            return False
        off = self._offset(i)
        if off is None:
            return None
        h = parse_entry_header(self.pack, off, self.pack_end)
        if h is None:
            return None
        otype, size, hlen = h
        if otype not in (1, 2, 3, 4):   # OFS_DELTA / REF_DELTA (or invalid): the caller inflates via libgit2
            return None
        end = self._entry_end(off)
        entry = memoryview(self.pack)[off:end]
        crc = struct.unpack_from(">I", self.idx, self.crcs_at + 4 * i)[0]
        if zlib.crc32(entry) != crc:
            return None
        raw = zlib_to_raw(entry[hlen:])
        if raw is None:
            return None
        return PackSlice(otype, size, raw)


class PackSet:
    """Every pack of a repository (and of its alternates), searched in order."""

    def __init__(self, objects_dir: str):
        self.packs: list[PackFile] = []
        self._add(objects_dir, 0, set())

    def _add(self, objects_dir: str, depth: int, seen: set[str]) -> None:
        real = os.path.realpath(objects_dir)
        if real in seen or depth > MAX_ALTERNATES:
            return
        seen.add(real)
        pack_dir = os.path.join(objects_dir, "pack")
        try:
            names = sorted(os.listdir(pack_dir), reverse=True)
        except OSError:
            names = []
        for name in names:
            if name.startswith("pack-") and name.endswith(".pack") and os.path.exists(
                    os.path.join(pack_dir, name[:-5] + ".idx")):
                try:
                    self.packs.append(PackFile(os.path.join(pack_dir, name)))
                except (OSError, ValueError):
                    continue
        try:
            with open(os.path.join(objects_dir, "info", "alternates"), "rb") as f:
                lines = f.read(1 << 16).splitlines()
        except OSError:
            return
        for line in lines:
            line = line.strip()
            if not line or line.startswith(b"#"):
                continue
            path = os.fsdecode(line)
            if not os.path.isabs(path):
                path = os.path.join(objects_dir, path)
            self._add(path, depth + 1, seen)

    def blob(self, oid: bytes) -> PackSlice | None:
        """A blob stored whole in some pack, or None (loose, a delta, or not found)."""
        for p in self.packs:
            r = p.whole_object(oid)
            if r is False:
                continue
            if r is None or r.otype != OBJ_BLOB:
                return None
            return r
        return None

    def close(self) -> None:
        for p in self.packs:
            p.close()
        self.packs = []


def inflate_chunks(ps: PackSlice, where: str, chunk: int = 1 << 20):
    """The bytes of a whole object, inflated from its raw deflate in chunks of at most `chunk` bytes
    (zlib releases the GIL: checkout threads inflate in parallel); the length is checked against the header."""
    d = zlib.decompressobj(-15)
    raw = ps.raw_deflate
    got = 0
    try:
        for i in range(0, len(raw), chunk):
            buf = d.decompress(raw[i:i + chunk], chunk)
            while True:
                got += len(buf)
                if got > ps.size:
                    break
                if buf:
                    yield buf
                if not d.unconsumed_tail:
                    break
                buf = d.decompress(d.unconsumed_tail, chunk)
        buf = d.flush()
        got += len(buf)
        if buf and got <= ps.size:
            yield buf
    except zlib.error:
        raise CorruptObject(f"{where}: bad deflate data in the pack") from None
    if got != ps.size or not d.eof or d.unused_data:
        raise CorruptObject(f"{where}: pack entry inflates to {got} bytes, expected {ps.size}")
