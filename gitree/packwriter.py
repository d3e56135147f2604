"""Write git objects straight into a new packfile (as git fast-import does), then install it.

One pack file instead of thousands of loose objects: far fewer file creations, and the pack is
installed (renamed into objects/pack/) only when complete, so a killed import leaves no object visible.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import struct
import zlib
from typing import NamedTuple

from isal import isal_zlib

from .scratch import ScratchDB, remove_live

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


RECENT_IDS = 1 << 16   # object ids a pack writer remembers in memory (the rest are in its scratch index)

_LIVE: set[str] = set()  # temporary pack files being written, removed if the process is interrupted
_LIVE_DIRS: set[str] = set()   # quarantine directories, removed if the process is interrupted


def remove_live_temporaries() -> None:
    remove_live()
    for p in list(_LIVE):
        for path in (p, p[:-5] + ".idx"):
            try:
                os.unlink(path)
            except OSError:
                pass
    for d in list(_LIVE_DIRS):
        shutil.rmtree(d, ignore_errors=True)


class PackWriter:
    """Appends objects to objects/pack/tmp_gitree_<pid>.pack; `install()` makes them visible."""

    def __init__(self, objects_dir: str):
        self.pack_dir = os.path.join(objects_dir, "pack")
        os.makedirs(self.pack_dir, exist_ok=True)
        self.tmp_path = os.path.join(self.pack_dir, f"tmp_gitree_{os.getpid()}_{id(self):x}.pack")
        self.f = open(self.tmp_path, "w+b")
        _LIVE.add(self.tmp_path)
        self.f.write(b"PACK" + struct.pack(">II", 2, 0))
        # oid -> offset << 32 | crc32 of every object written, on disk (a pack of many small objects - an
        # import of many small files, a bundle - would otherwise hold one dict entry per object)
        self.index: ScratchDB | None = None
        self.count = 0
        self.bytes_written = 0
        self.recent: set[bytes] = set()    # ids written lately: a check without the database (bounded)

    def _db(self) -> ScratchDB:
        if self.index is None:
            self.index = ScratchDB(self.pack_dir, f"{id(self):x}_idx",
                                   "CREATE TABLE obj(oid BLOB PRIMARY KEY, v INTEGER NOT NULL) WITHOUT ROWID")
        return self.index

    def __contains__(self, oid: bytes) -> bool:
        if oid in self.recent:
            return True
        if not self.count:
            return False
        return self.index.execute("SELECT 1 FROM obj WHERE oid=?", (oid,)).fetchone() is not None

    def might_contain(self, oid: bytes) -> bool:
        """True: the pack holds `oid`; False: it may not (a cheap check for threads about to compress)."""
        return oid in self.recent

    def _claim(self, oid: bytes, v: int) -> bool:
        """Record `oid` at v = offset << 32 | crc32, unless the pack holds it already."""
        if oid in self.recent:
            return False
        if not self._db().execute("INSERT OR IGNORE INTO obj VALUES (?, ?)", (oid, v)).rowcount:
            return False
        self.count += 1
        if len(self.recent) >= RECENT_IDS:
            self.recent.clear()
        self.recent.add(oid)
        return True

    def add_raw(self, oid: bytes, entry: bytes) -> None:
        """Append a ready pack entry (header + zlib data) for `oid` unless already written."""
        off = self.f.tell()
        if self._claim(oid, off << 32 | zlib.crc32(entry)):
            self.f.write(entry)
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
        if oid in self.recent or exists(oid) or not self._claim(oid, off << 32 | (crc & 0xFFFFFFFF)):
            self.f.truncate(off)
            self.f.seek(off)
        else:
            self.bytes_written += self.f.tell() - off
        return oid

    def _close_index(self) -> None:
        if self.index is not None:
            self.index.close()
            self.index = None

    def abort(self) -> None:
        if not self.f.closed:
            self.f.close()
        self._close_index()
        _LIVE.discard(self.tmp_path)
        try:
            os.unlink(self.tmp_path)
        except FileNotFoundError:
            pass

    def install(self, fsync: bool = True, into: str | None = None) -> str | None:
        """Finish the pack, write its index, rename both into place (objects/pack, or the directory `into`: a
        Quarantine's). Returns the pack path or None if empty."""
        if not self.count:
            self.abort()
            return None
        f = self.f
        f.seek(8)
        f.write(struct.pack(">I", self.count))
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
        with open(idx_tmp, "w+b") as fi:
            rows = self.index.execute("SELECT oid, v FROM obj ORDER BY oid")
            write_index(fi, rows, self.count, trailer)
            if fsync:
                os.fsync(fi.fileno())
        self._close_index()
        final = os.path.join(into or self.pack_dir, name)
        os.rename(self.tmp_path, final + ".pack")
        os.rename(idx_tmp, final + ".idx")
        _LIVE.discard(self.tmp_path)
        return final + ".pack"


class Quarantine:
    """A private objects directory for packs that arrived and are not accepted yet (bundle apply), in
    objects/pack/tmp_gitree_<pid>_<random>.q/ (mode 0700; git and libgit2 take only *.idx/*.pack names there).

    Only a view of the repository that names it reads its objects (Repo.with_objects). Every other reader and
    writer, in this process or another, sees none of them until `publish` moves the packs into objects/pack:
    so a writer that finds an object present (an import skips what the repository holds) can count on it,
    as a published pack is never deleted again (gc drops objects no branch holds). Refused, the quarantine is
    removed whole (`remove`); an interrupted process removes it too, and gc removes one left for an hour."""

    def __init__(self, objects_dir: str):
        self.pack_dir = os.path.join(objects_dir, "pack")
        os.makedirs(self.pack_dir, exist_ok=True)
        self.path = os.path.join(self.pack_dir, f"tmp_gitree_{os.getpid()}_{secrets.token_hex(6)}.q")
        os.mkdir(self.path, 0o700)
        _LIVE_DIRS.add(self.path)
        os.mkdir(os.path.join(self.path, "pack"), 0o700)
        self.packs: list[str] = []      # pack paths inside

    def add(self, pack: PackWriter) -> None:
        """Finish `pack` into the quarantine."""
        path = pack.install(into=os.path.join(self.path, "pack"))
        if path is not None:            # None: the pack was empty
            self.packs.append(path)

    def publish(self) -> None:
        """Move every pack into objects/pack (the pack before its index, as git does), then remove the
        quarantine. Safe without the repository lock: gc's repack deletes only the packs it listed when it
        began."""
        for path in self.packs:
            final = os.path.join(self.pack_dir, os.path.basename(path)[:-5])
            os.rename(path, final + ".pack")
            os.rename(path[:-5] + ".idx", final + ".idx")
        self.packs.clear()
        self.remove()

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        _LIVE_DIRS.discard(self.path)


def write_index(f, rows, count: int, pack_sha: bytes) -> None:
    """Write a version-2 pack index to the empty file `f`: `rows` are the pack's `count` objects as
    (oid, offset << 32 | crc32), sorted by oid. One pass, each table written at its place (the index is
    never held whole), then the fanout, the pack's checksum and the index's own."""
    base = 8 + 256 * 4
    tables = [base, base + 20 * count, base + 24 * count]     # oids, crcs, offsets
    bufs: list[list[bytes]] = [[], [], []]
    fanout = [0] * 256
    large: list[int] = []
    n = 0

    def flush() -> None:
        for t, buf in enumerate(bufs):
            data = b"".join(buf)
            os.pwrite(f.fileno(), data, tables[t])
            tables[t] += len(data)
            buf.clear()

    for oid, v in rows:
        n += 1
        fanout[oid[0]] += 1
        off = v >> 32
        if off >= 0x80000000:
            large.append(off)    # objects past 2 GiB: only in packs that big
            off = 0x80000000 | (len(large) - 1)
        bufs[0].append(oid)
        bufs[1].append(struct.pack(">I", v & 0xFFFFFFFF))
        bufs[2].append(struct.pack(">I", off))
        if len(bufs[0]) >= 65536:
            flush()
    flush()
    if n != count:
        raise AssertionError(f"pack index: {n} objects listed, {count} written")
    total = 0
    for i in range(256):
        total += fanout[i]
        fanout[i] = total
    os.pwrite(f.fileno(), b"\xfftOc" + struct.pack(">I", 2) + struct.pack(">256I", *fanout), 0)
    f.seek(0, os.SEEK_END)
    if large:
        f.write(struct.pack(f">{len(large)}Q", *large))
    f.write(pack_sha)
    f.flush()
    f.seek(0)
    sha = hashlib.sha1()
    while chunk := f.read(1 << 20):
        sha.update(chunk)
    f.write(sha.digest())
