"""git packs, read in one place: random access to the repository's own packs by object id (through their .idx
files), and `read_pack`, the validating reader of a pack that arrives as a stream (bundle apply).

Used by export-ostree to copy a blob's deflate stream out of the pack without inflating it (copy_file_range:
the bytes go from the pack file to the new file inside the kernel): a pack entry that is not a delta is a zlib
stream (2-byte header, raw deflate, Adler-32), and an OSTree `.filez` body is raw deflate. Checkout and bare
exports inflate from the same entries. Indexes are mapped read-only; packs are read with pread, so what is read
does not stay in the process's memory. Everything read is bounds-checked against the files, and every entry's
CRC-32 (which the version-2 index keeps) is checked before its copy is used (`verified_copy`) or as it is
inflated (`inflate_chunks`), so a damaged pack is never passed on; anything this reader does not understand
yields None and the caller falls back to reading the object through libgit2.
"""

from __future__ import annotations

import bisect
import hashlib
import mmap
import os
import struct
import threading
import zlib
from dataclasses import dataclass
from typing import Callable, Iterator

from isal import isal_zlib

from . import limits
from .errors import CorruptObject
from .packwriter import OBJ_BLOB, OBJ_COMMIT, OBJ_TAG, OBJ_TREE

IDX_MAGIC = b"\xfftOc\x00\x00\x00\x02"
MAX_ALTERNATES = 5          # depth of objects/info/alternates followed (as git's own limit)
MAX_ENTRY_HEADER = 16       # bytes of a pack entry's type/size varint


READ_CHUNK = 1 << 20
crc32 = isal_zlib.crc32   # zlib's CRC-32, computed by ISA-L (about 2.5 times zlib.crc32's speed here)
_buffers = threading.local()   # per thread: one READ_CHUNK buffer that small entries are read into


def _read_buffer() -> bytearray:
    buf = getattr(_buffers, "buf", None)
    if buf is None:
        buf = _buffers.buf = bytearray(READ_CHUNK)
    return buf


@dataclass(frozen=True)
class PackSlice:
    """A whole (non-delta) object in a pack: its raw deflate stream is bytes [start, end) of the pack file;
    the entry is [entry_start, end + 4) (header, 2-byte zlib header, raw deflate, Adler-32), with CRC-32 `crc`.
    It keeps its PackFile (and so the open descriptor) alive."""

    otype: int
    size: int
    pack: "PackFile"
    entry_start: int
    start: int
    end: int
    crc: int

    @property
    def fd(self) -> int:
        return self.pack.fd

    def raw_chunks(self, n: int = READ_CHUNK):
        for pos in range(self.start, self.end, n):
            buf = os.pread(self.fd, min(n, self.end - pos), pos)
            if not buf:
                raise CorruptObject("pack file shorter than its index says")
            yield buf

    def read_raw(self) -> bytes:
        return b"".join(self.raw_chunks())

    def _crc_of(self, raw_crc_chunks) -> bool:
        crc = crc32(os.pread(self.fd, self.start - self.entry_start, self.entry_start))
        for buf in raw_crc_chunks:
            crc = crc32(buf, crc)
        return crc32(os.pread(self.fd, 4, self.end), crc) == self.crc

    def verify(self) -> bool:
        """Whether the entry's bytes match the CRC-32 the index keeps for it."""
        return self._crc_of(self.raw_chunks())

    def verified_copy(self, out_fd: int) -> bool:
        """Append the raw deflate to `out_fd` (kernel copy), after checking the entry's CRC; False if it fails."""
        if not self.verify():
            return False
        pos, left = self.start, self.end - self.start
        while left:
            try:
                n = os.copy_file_range(self.fd, out_fd, left, pos)
            except OSError:  # EXDEV/ENOSYS/EINVAL on older kernels or some file systems
                n = os.sendfile(out_fd, self.fd, pos, left)
            if n <= 0:
                raise CorruptObject("pack file shorter than its index says")
            pos += n
            left -= n
        return True


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


def plain_zlib_header(cmf: int, flg: int) -> bool:
    """Whether two bytes start a zlib stream (RFC 1950) of plain deflate: no preset dictionary, window <= 32K."""
    return cmf & 0x0F == 8 and cmf >> 4 <= 7 and not (cmf << 8 | flg) % 31 and not flg & 0x20


def zlib_to_raw(entry_data) -> memoryview | None:
    """The raw deflate inside a zlib stream, or None if its header is not plain deflate."""
    if len(entry_data) < 6 or not plain_zlib_header(entry_data[0], entry_data[1]):
        return None
    return memoryview(entry_data)[2:-4]


class PackFile:
    """One pack (read with pread) and its version-2 index (mapped)."""

    def __init__(self, pack_path: str):
        idx_path = pack_path[:-5] + ".idx"
        with open(idx_path, "rb") as fi:
            self.idx = mmap.mmap(fi.fileno(), 0, access=mmap.ACCESS_READ)
        self.fd = os.open(pack_path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            idx = self.idx
            if len(idx) < 8 + 1024 + 40 or idx[:8] != IDX_MAGIC:
                raise ValueError(f"{idx_path}: not a version-2 pack index")
            self.fanout = struct.unpack_from(">256I", idx, 8)
            n = self.count = self.fanout[255]
            self.oids_at = 8 + 1024
            self.crcs_at = self.oids_at + 20 * n
            self.offs_at = self.crcs_at + 4 * n
            self.large_at = self.offs_at + 4 * n
            size = os.fstat(self.fd).st_size
            if self.large_at + 40 > len(idx) or size < 32 or os.pread(self.fd, 4, 0) != b"PACK":
                raise ValueError(f"{idx_path}: index or pack truncated")
        except BaseException:
            self.close()
            raise
        self.pack_end = size - 20
        self._ends: list[int] | None = None

    def close(self) -> None:
        self.idx.close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self):  # a PackSet dropped without close() (a checkout's chunk source) gives its descriptors back
        if getattr(self, "fd", -1) >= 0:
            self.close()

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
        head = os.pread(self.fd, MAX_ENTRY_HEADER + 2, off)
        h = parse_entry_header(head, 0, len(head))
        if h is None:
            return None
        otype, size, hlen = h
        if otype not in (1, 2, 3, 4):   # OFS_DELTA / REF_DELTA (or invalid): the caller inflates via libgit2
            return None
        end = self._entry_end(off)
        if end - off < hlen + 6 or len(head) < hlen + 2 or not plain_zlib_header(head[hlen], head[hlen + 1]):
            return None
        crc = struct.unpack_from(">I", self.idx, self.crcs_at + 4 * i)[0]
        return PackSlice(otype, size, self, off, off + hlen + 2, end - 4, crc)


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

    def small_blob(self, oid: bytes, where: str, limit: int = READ_CHUNK) -> bytes | None:
        """The bytes of a blob stored whole whose pack entry and content are at most `limit` bytes (most files
        of a root filesystem), checked as inflate_chunks checks them (CRC-32 of the entry, stream end, size),
        read with one pread into this thread's buffer (no separate header read); None when the blob is not
        such an entry (larger, a delta, loose, not found): the caller takes the general path."""
        for p in self.packs:
            i = p._find(oid)
            if i is None:
                continue
            off = p._offset(i)
            if off is None:
                return None
            span = p._entry_end(off) - off
            if span > min(limit, READ_CHUNK):
                return None
            entry = memoryview(_read_buffer())[:span]
            if os.preadv(p.fd, [entry], off) != span:
                raise CorruptObject(f"{where}: pack file shorter than its index says")
            h = parse_entry_header(entry, 0, span)
            if h is None or h[0] != OBJ_BLOB or h[1] > limit or span < h[2] + 6 \
                    or not plain_zlib_header(entry[h[2]], entry[h[2] + 1]):
                return None
            _, size, hlen = h
            if crc32(entry) != struct.unpack_from(">I", p.idx, p.crcs_at + 4 * i)[0]:
                raise CorruptObject(f"{where}: pack entry does not match its index (size or CRC-32)")
            d = isal_zlib.decompressobj(-15)
            try:
                out = d.decompress(entry[hlen + 2:span - 4], size + 1)
            except isal_zlib.error:
                raise CorruptObject(f"{where}: bad deflate data in the pack") from None
            if len(out) != size or not d.eof or d.unused_data or d.unconsumed_tail:
                raise CorruptObject(f"{where}: pack entry does not match its index (size or CRC-32)")
            return out
        return None

    def close(self) -> None:
        for p in self.packs:
            p.close()
        self.packs = []


def inflate_chunks(ps: PackSlice, where: str, chunk: int = READ_CHUNK):
    """The bytes of a whole object, inflated from its raw deflate in chunks of at most `chunk` bytes; length,
    stream end and the entry's CRC-32 are checked, the last chunk being held back until they are.

    Inflated by ISA-L (isal_zlib: about twice zlib's speed on these level-1 streams, measured in
    docs/benchmarks.md; it releases the GIL, so checkout threads inflate in parallel). An entry of at most
    `chunk` bytes either way (most files of a root filesystem) is read with one pread and inflated in one call,
    all checks done before its bytes are handed out."""
    span = ps.end + 4 - ps.entry_start
    if span <= min(chunk, READ_CHUNK) and ps.size <= chunk:
        # read into this thread's buffer (no new allocation per file); everything is inflated out of it
        # before anything is handed out, so the next entry may reuse it
        entry = memoryview(_read_buffer())[:span]
        if os.preadv(ps.fd, [entry], ps.entry_start) != span or crc32(entry) != ps.crc:
            raise CorruptObject(f"{where}: pack entry does not match its index (size or CRC-32)")
        d = isal_zlib.decompressobj(-15)
        try:
            out = d.decompress(entry[ps.start - ps.entry_start:ps.end - ps.entry_start], ps.size + 1)
        except isal_zlib.error:
            raise CorruptObject(f"{where}: bad deflate data in the pack") from None
        if len(out) != ps.size or not d.eof or d.unused_data or d.unconsumed_tail:
            raise CorruptObject(f"{where}: pack entry does not match its index (size or CRC-32)")
        if out:
            yield out
        return
    d = isal_zlib.decompressobj(-15)
    crc = crc32(os.pread(ps.fd, ps.start - ps.entry_start, ps.entry_start))
    got = 0
    pending = b""
    try:
        for raw in ps.raw_chunks(chunk):
            crc = crc32(raw, crc)
            buf = d.decompress(raw, chunk)
            # ISA-L may take in more input than it has inflated (it keeps it, so unconsumed_tail can be empty
            # while output is pending): drain with bounded calls until one gives nothing
            while buf:
                got += len(buf)
                if got > ps.size:
                    raise CorruptObject(f"{where}: pack entry inflates to more than {ps.size} bytes")
                if pending:
                    yield pending
                pending = buf
                buf = d.decompress(d.unconsumed_tail, chunk)
            if d.unconsumed_tail and not d.eof:
                raise CorruptObject(f"{where}: bad deflate data in the pack")  # input left that gives nothing
        buf = d.flush()
        got += len(buf)
    except isal_zlib.error:
        raise CorruptObject(f"{where}: bad deflate data in the pack") from None
    crc = crc32(os.pread(ps.fd, 4, ps.end), crc)
    if got != ps.size or not d.eof or d.unused_data or crc != ps.crc:
        raise CorruptObject(f"{where}: pack entry does not match its index (size or CRC-32)")
    if pending:
        yield pending
    if buf:
        yield buf


# ---------------------------------------------------------------------------------------------
# Packs that arrive as a stream (a bundle's git bundle): whole objects only, validated while read

_PACK_TYPES = {OBJ_COMMIT, OBJ_TREE, OBJ_BLOB, OBJ_TAG}
_MAX_SIZE = {OBJ_COMMIT: limits.MAX_META_BYTES, OBJ_TAG: limits.MAX_META_BYTES, OBJ_TREE: limits.MAX_TREE_BYTES,
             OBJ_BLOB: limits.MAX_BUNDLE_BLOB}
_READ = 1 << 16
STREAM_OBJECT = 8 << 20   # objects larger than this are streamed into the pack, never held whole


def read_pack(read: Callable[[int], bytes], where: str) -> Iterator[tuple[int, int, Iterator[bytes]]]:
    """(type, size, chunks) of each object of a pack of whole objects; each `chunks` must be consumed
    before the next object. Sizes are checked against the limits from each object's header, before it is
    inflated; the trailer is checked at the end. Deltas are refused."""
    sha = hashlib.sha1()
    state = {"buf": b"", "total": 0}

    def take(n: int) -> bytes:
        b = read(n)
        if len(b) != n:
            raise CorruptObject(f"{where}: truncated pack")
        sha.update(b)
        return b

    def inflate(size: int) -> Iterator[bytes]:
        d = zlib.decompressobj()
        buf, got = state["buf"], 0
        while not d.eof:
            if not buf:
                buf = read(_READ)
                if not buf:
                    raise CorruptObject(f"{where}: truncated pack")
            try:
                part = d.decompress(buf, min(_READ * 16, size + 1 - got))
            except zlib.error:
                raise CorruptObject(f"{where}: bad zlib data in the pack") from None
            # at the end of the stream CPython leaves the rest of the input in unused_data (and a copy in
            # unconsumed_tail when max_length also stopped it); before it, in unconsumed_tail
            rest = d.unused_data if d.eof else d.unconsumed_tail
            used = len(buf) - len(rest)
            sha.update(buf[:used])
            buf = rest
            got += len(part)
            if got > size:
                raise CorruptObject(f"{where}: pack object larger than its header says")
            if part:
                yield part
            if not used and not part and not d.eof and buf:
                raise CorruptObject(f"{where}: bad zlib data in the pack")  # pragma: no cover - zlib stalls
        if got != size:
            raise CorruptObject(f"{where}: pack object size mismatch")
        state["buf"] = buf

    head = take(12)
    if head[:4] != b"PACK" or struct.unpack(">I", head[4:8])[0] not in (2, 3):
        raise CorruptObject(f"{where}: not a git pack")
    count = struct.unpack(">I", head[8:12])[0]
    if count > limits.MAX_BUNDLE_OBJECTS:
        raise CorruptObject(f"{where}: the pack holds {count} objects, more than the limit of "
                            f"{limits.MAX_BUNDLE_OBJECTS}")
    for _ in range(count):
        buf = state["buf"]
        if not buf:
            buf = read(_READ)
        hdr_len, otype, size, shift = 0, 0, 0, 0
        while True:
            if hdr_len >= len(buf):
                more = read(_READ)
                if not more:
                    raise CorruptObject(f"{where}: truncated pack")
                buf += more
            c = buf[hdr_len]
            if hdr_len == 0:
                otype, size, shift = (c >> 4) & 7, c & 15, 4
            else:
                size |= (c & 0x7F) << shift
                shift += 7
            hdr_len += 1
            if not c & 0x80:
                break
            if hdr_len > 10:
                raise CorruptObject(f"{where}: malformed pack object header")
        if otype not in _PACK_TYPES:
            raise CorruptObject(f"{where}: the pack holds a delta or unknown object (type {otype}); "
                                "gitree bundles hold whole objects")
        if size > _MAX_SIZE[otype]:
            raise CorruptObject(f"{where}: a pack object of {size} bytes is larger than the limit of "
                                f"{_MAX_SIZE[otype]} for its type")
        state["total"] += size
        if state["total"] > limits.MAX_BUNDLE_BYTES:
            raise CorruptObject(f"{where}: the pack's objects total more than the limit of "
                                f"{limits.MAX_BUNDLE_BYTES} bytes")
        sha.update(buf[:hdr_len])
        state["buf"] = buf[hdr_len:]
        chunks = inflate(size)
        yield otype, size, chunks
        for _ in chunks:  # whatever the consumer left
            pass
    buf = state["buf"]
    trailer = buf + read(20 - len(buf)) if len(buf) < 20 else buf
    if trailer[:20] != sha.digest() or len(trailer) != 20 or read(1):
        raise CorruptObject(f"{where}: pack checksum mismatch or trailing data")
