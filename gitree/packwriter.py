"""Write git objects straight into a new packfile (as git fast-import does), then install it.

One pack file instead of thousands of loose objects: far fewer file creations, and the pack is
installed (renamed into objects/pack/) only when complete, so a killed import leaves no object visible.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from typing import NamedTuple

from isal import isal_zlib

OBJ_COMMIT, OBJ_TREE, OBJ_BLOB, OBJ_TAG = 1, 2, 3, 4
_TYPE_NAMES = {OBJ_COMMIT: b"commit", OBJ_TREE: b"tree", OBJ_BLOB: b"blob", OBJ_TAG: b"tag"}


def object_header(otype: int, size: int) -> bytes:
    return b"%s %d\0" % (_TYPE_NAMES[otype], size)


def object_id(otype: int, data: bytes) -> bytes:
    h = hashlib.sha1(object_header(otype, len(data)))
    h.update(data)
    return h.digest()


def pack_entry_header(otype: int, size: int) -> bytes:
    c = (otype << 4) | (size & 0x0F)
    size >>= 4
    out = bytearray()
    while size:
        out.append(c | 0x80)
        c = size & 0x7F
        size >>= 7
    out.append(c)
    return bytes(out)


# The fast zlib levels (1-3, 1 being the import's default) are written by ISA-L at its level 3: on a Debian
# root filesystem's files that is a third of zlib 1's CPU for 0.3% fewer bytes (docs/benchmarks.md, issue 13).
# Any reader inflates it: it is plain deflate in a zlib stream. Levels 0 and 4-9 stay with zlib.
ISAL_LEVELS = (1, 2, 3)
ISAL_LEVEL = 3


def compress(data: bytes, level: int) -> bytes:
    """A zlib stream of `data` at `level` (GIL released)."""
    if level in ISAL_LEVELS:
        return isal_zlib.compress(data, ISAL_LEVEL)
    return zlib.compress(data, level)


def compressobj(level: int):
    return isal_zlib.compressobj(ISAL_LEVEL) if level in ISAL_LEVELS else zlib.compressobj(level)


class PackedObject(NamedTuple):
    oid: bytes     # the git object id
    entry: bytes   # its whole pack entry: header and deflated body


def hash_and_compress(otype: int, data: bytes, level: int) -> PackedObject:
    """One object's id and pack entry; runs in worker threads (GIL released)."""
    oid = object_id(otype, data)
    return PackedObject(oid, pack_entry_header(otype, len(data)) + compress(data, level))


_LIVE: set[str] = set()  # temporary pack files being written, removed if the process is interrupted


def remove_live_temporaries() -> None:
    for p in list(_LIVE):
        for path in (p, p[:-5] + ".idx"):
            try:
                os.unlink(path)
            except OSError:
                pass


class PackWriter:
    """Appends objects to objects/pack/tmp_gitree_<pid>.pack; `install()` makes them visible."""

    def __init__(self, objects_dir: str):
        self.pack_dir = os.path.join(objects_dir, "pack")
        os.makedirs(self.pack_dir, exist_ok=True)
        self.tmp_path = os.path.join(self.pack_dir, f"tmp_gitree_{os.getpid()}_{id(self):x}.pack")
        self.f = open(self.tmp_path, "w+b")
        _LIVE.add(self.tmp_path)
        self.f.write(b"PACK" + struct.pack(">II", 2, 0))
        # oid -> offset << 32 | crc32: one int an object, not a tuple of two (an import of many small files
        # holds one per distinct file until the index is written)
        self.entries: dict[bytes, int] = {}
        self.bytes_written = 0

    def __contains__(self, oid: bytes) -> bool:
        return oid in self.entries

    def add_raw(self, oid: bytes, entry: bytes) -> None:
        """Append a ready pack entry (header + zlib data) for `oid` unless already written."""
        if oid in self.entries:
            return
        off = self.f.tell()
        self.f.write(entry)
        self.entries[oid] = off << 32 | zlib.crc32(entry)
        self.bytes_written += len(entry)

    def add_stream(self, otype: int, size: int, chunks, level: int, exists) -> bytes:
        """Stream an object of known size into the pack; drop it again if `exists(oid)` afterwards."""
        off = self.f.tell()
        sha = hashlib.sha1(object_header(otype, size))
        hdr = pack_entry_header(otype, size)
        crc = zlib.crc32(hdr)
        self.f.write(hdr)
        comp = compressobj(level)
        got = 0
        for chunk in chunks:
            got += len(chunk)
            sha.update(chunk)
            z = comp.compress(chunk)
            if z:
                crc = zlib.crc32(z, crc)
                self.f.write(z)
        if got != size:
            self.f.truncate(off)
            self.f.seek(off)
            raise ValueError(f"stream gave {got} bytes, expected {size}")
        z = comp.flush()
        crc = zlib.crc32(z, crc)
        self.f.write(z)
        oid = sha.digest()
        if oid in self.entries or exists(oid):
            self.f.truncate(off)
            self.f.seek(off)
        else:
            self.entries[oid] = off << 32 | (crc & 0xFFFFFFFF)
            self.bytes_written += self.f.tell() - off
        return oid

    def abort(self) -> None:
        if not self.f.closed:
            self.f.close()
        _LIVE.discard(self.tmp_path)
        try:
            os.unlink(self.tmp_path)
        except FileNotFoundError:
            pass

    def install(self, fsync: bool = True) -> str | None:
        """Finish the pack, write its index, rename both into place. Returns the pack path or None if empty."""
        if not self.entries:
            self.abort()
            return None
        f = self.f
        f.seek(8)
        f.write(struct.pack(">I", len(self.entries)))
        f.flush()
        f.seek(0)
        sha = hashlib.sha1()
        while True:
            buf = f.read(1 << 20)
            if not buf:
                break
            sha.update(buf)
        trailer = sha.digest()
        f.seek(0, os.SEEK_END)
        f.write(trailer)
        f.flush()
        if fsync:
            os.fsync(f.fileno())
        f.close()
        name = "pack-" + trailer.hex()
        idx_tmp = self.tmp_path[:-5] + ".idx"
        with open(idx_tmp, "wb") as fi:
            fi.write(build_index(self.entries, trailer))
            if fsync:
                os.fsync(fi.fileno())
        final = os.path.join(self.pack_dir, name)
        os.rename(self.tmp_path, final + ".pack")
        os.rename(idx_tmp, final + ".idx")
        _LIVE.discard(self.tmp_path)
        return final + ".pack"


def build_index(entries: dict[bytes, int], pack_sha: bytes) -> bytes:
    """A version-2 pack index for `entries` (oid -> offset << 32 | crc32)."""
    oids = sorted(entries)
    fanout = [0] * 256
    for oid in oids:
        fanout[oid[0]] += 1
    total = 0
    for i in range(256):
        total += fanout[i]
        fanout[i] = total
    small, large = [], []
    for oid in oids:
        off = entries[oid] >> 32
        if off < 0x80000000:
            small.append(off)
        else:
            small.append(0x80000000 | len(large))
            large.append(off)
    parts = [
        b"\xfftOc", struct.pack(">I", 2), struct.pack(">256I", *fanout),
        b"".join(oids),
        struct.pack(f">{len(oids)}I", *(entries[o] & 0xFFFFFFFF for o in oids)),
        struct.pack(f">{len(small)}I", *small),
        struct.pack(f">{len(large)}Q", *large) if large else b"",
        pack_sha,
    ]
    body = b"".join(parts)
    return body + hashlib.sha1(body).digest()
