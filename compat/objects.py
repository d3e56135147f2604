"""OSTree object encodings and checksums. Pure: bytes in, bytes out, no file system access.

Byte order: OSTree stores uid/gid/mode, commit timestamps, the archive size field and a few summary values
big-endian inside otherwise little-endian GVariants. The functions here take and return plain Python ints
and do the byteswap themselves; callers never see swapped values.

Extended attributes are passed as ``(name, value)`` pairs of bytes with the name *without* its trailing NUL
(this layer adds/strips it). Encoders keep the order given; use ``canonical_xattrs`` to get the order
``ostree commit DIR`` uses (sorted by name, empty values dropped).
"""

from __future__ import annotations

import array
import enum
import heapq
import itertools
import hashlib
import stat
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import gvariant
from .errors import GVariantError, InvalidName, InvalidObject, UnsupportedContent
from .gvariant import Variant

Xattrs = tuple[tuple[bytes, bytes], ...]

#: Largest file header (``.filez``) accepted by readers: the fixed fields, a symlink target and the xattrs.
#: Linux caps one inode's xattr names at 64 KiB in all (XATTR_LIST_MAX) and each value at 64 KiB; 1 MiB
#: holds more than any file system stores per inode in practice (ext4: one 4 KiB block without ea_inode).
MAX_HEADER_SIZE = 1024 * 1024
#: Longest symlink target: Linux's PATH_MAX (4096) less the terminating NUL.
MAX_SYMLINK_TARGET = 4095
#: Linux's limits on xattrs (linux/limits.h): XATTR_NAME_MAX, XATTR_SIZE_MAX, XATTR_LIST_MAX.
XATTR_NAME_MAX = 255
XATTR_SIZE_MAX = 65536
XATTR_LIST_MAX = 65536
#: The namespaces Linux accepts an xattr name in (with a non-empty rest).
XATTR_NAMESPACES = (b"security.", b"system.", b"trusted.", b"user.")
#: Default deflate level of archive repos (``archive.zlib-level``).
DEFAULT_ZLIB_LEVEL = 6

FILE_HEADER_TYPE = "(uuuusa(ayay))"
FILEZ_HEADER_TYPE = "(tuuuusa(ayay))"
DIRTREE_TYPE = "(a(say)a(sayay))"
DIRMETA_TYPE = "(uuua(ayay))"
COMMIT_TYPE = "(a{sv}aya(say)sstayay)"
COMMITMETA_TYPE = "a{sv}"
OSTREEMETA_TYPE = "(uuua(ayay))"
SUMMARY_TYPE = "(a(s(taya{sv}))a{sv})"
DELTA_SUPERBLOCK_TYPE = "(a{sv}tayay" + COMMIT_TYPE + "aya(uayttay)a(yaytt))"

#: What ``ostree commit`` 2022.7 stores instead of a symlink target that is not valid UTF-8 (GLib refuses
#: the string; ostree substitutes this text). OSTree cannot represent such targets faithfully.
OSTREE_INVALID_UTF8_TARGET = b"[Invalid UTF-8]"


class ObjectType(enum.IntEnum):
    """OSTree object types (the numbers are OSTree's ``OstreeObjectType``)."""

    FILE = 1
    DIR_TREE = 2
    DIR_META = 3
    COMMIT = 4
    TOMBSTONE_COMMIT = 5
    COMMIT_META = 6

    @property
    def suffix(self) -> str:
        """File-name suffix in bare repositories (archive content objects use ``filez``)."""
        return _SUFFIX[self]

    @property
    def is_meta(self) -> bool:
        return self is not ObjectType.FILE


_SUFFIX = {
    ObjectType.FILE: "file", ObjectType.DIR_TREE: "dirtree", ObjectType.DIR_META: "dirmeta",
    ObjectType.COMMIT: "commit", ObjectType.TOMBSTONE_COMMIT: "tombstone-commit",
    ObjectType.COMMIT_META: "commitmeta",
}


# ---------------------------------------------------------------------------------------------
# Checksums and byte order

_HEX = frozenset("0123456789abcdef")


def is_valid_checksum(csum: object) -> bool:
    """True for a 64-character lowercase hex string."""
    return isinstance(csum, str) and len(csum) == 64 and _HEX.issuperset(csum)


def checksum_to_bytes(csum: str | bytes) -> bytes:
    """64 lowercase hex chars (or 32 raw bytes, returned as is) -> 32 raw bytes."""
    if isinstance(csum, (bytes, bytearray)) and len(csum) == 32:
        return bytes(csum)
    if not is_valid_checksum(csum):
        raise InvalidObject(f"invalid checksum {csum!r:.80}")
    return bytes.fromhex(csum)


def checksum_from_bytes(raw: bytes) -> str:
    """32 raw bytes -> 64 lowercase hex chars."""
    if len(raw) != 32:
        raise InvalidObject(f"checksum has {len(raw)} bytes, expected 32")
    return bytes(raw).hex()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def bswap32(x: int) -> int:
    """Swap a 32-bit value between host (LE) and the big-endian form OSTree stores."""
    return int.from_bytes(x.to_bytes(4, "big"), "little")


def bswap64(x: int) -> int:
    return int.from_bytes(x.to_bytes(8, "big"), "little")


# ---------------------------------------------------------------------------------------------
# Extended attributes

def _to_bytes(x: bytes | str) -> bytes:
    if isinstance(x, str):
        return x.encode("utf-8", "surrogateescape")
    return bytes(x)


def normalize_xattrs(xattrs: Iterable[tuple[bytes | str, bytes | str]]) -> Xattrs:
    """Validate ``(name, value)`` pairs and return them as a tuple of bytes pairs, order kept."""
    out = []
    for name, value in xattrs:
        n = _to_bytes(name)
        if not n or b"\0" in n:
            raise InvalidObject(f"invalid xattr name {n!r}")
        out.append((n, _to_bytes(value)))
    return tuple(out)


def canonical_xattrs(xattrs: Iterable[tuple[bytes | str, bytes | str]]) -> Xattrs:
    """The order ``ostree commit DIR`` uses: sorted by name (byte order), empty values dropped."""
    return tuple(sorted((x for x in normalize_xattrs(xattrs) if x[1]), key=lambda x: x[0]))


def _xattrs_to_gv(xattrs: Xattrs) -> list[tuple[bytes, bytes]]:
    return [(n + b"\0", v) for n, v in xattrs]


def _xattrs_from_gv(items: list[tuple[bytes, bytes]]) -> Xattrs:
    """xattrs read from an object: names and values within Linux's limits (no data quoted in errors)."""
    out = []
    listed = 0
    for n, v in items:
        if len(n) < 2 or n[-1] != 0 or b"\0" in n[:-1]:
            raise InvalidObject("invalid xattr name (must be non-empty, NUL-terminated, without other NUL)")
        if not any(n.startswith(ns) and len(n) > len(ns) + 1 for ns in XATTR_NAMESPACES):
            raise InvalidObject("xattr name outside Linux's namespaces (security., system., trusted., user.) "
                                "or with an empty suffix")
        if len(n) - 1 > XATTR_NAME_MAX:
            raise InvalidObject(f"xattr name of {len(n) - 1} bytes, longer than XATTR_NAME_MAX ({XATTR_NAME_MAX})")
        if len(v) > XATTR_SIZE_MAX:
            raise InvalidObject(f"xattr value of {len(v)} bytes, longer than XATTR_SIZE_MAX ({XATTR_SIZE_MAX})")
        listed += len(n)
        if listed > XATTR_LIST_MAX:
            raise InvalidObject(f"xattr names take more than XATTR_LIST_MAX ({XATTR_LIST_MAX}) bytes")
        out.append((n[:-1], v))
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# Content (file) objects

@dataclass(frozen=True)
class FileMeta:
    """Metadata of a content object: regular file (``S_IFREG``) or symlink (``S_IFLNK``)."""

    uid: int
    gid: int
    mode: int
    symlink_target: bytes = b""
    xattrs: Xattrs = ()

    def __post_init__(self) -> None:
        if isinstance(self.symlink_target, str):
            object.__setattr__(self, "symlink_target", self.symlink_target.encode("utf-8", "surrogateescape"))
        object.__setattr__(self, "xattrs", normalize_xattrs(self.xattrs))
        fmt = stat.S_IFMT(self.mode)
        if fmt not in (stat.S_IFREG, stat.S_IFLNK) or self.mode & ~(stat.S_IFMT(self.mode) | 0o7777):
            raise InvalidObject(f"content mode {self.mode:#o} is not a regular file or symlink mode")
        if fmt == stat.S_IFLNK:
            # targets are not quoted in errors: a reader may meet them before the object is verified
            if not self.symlink_target or b"\0" in self.symlink_target:
                raise InvalidObject("invalid symlink target (empty or containing NUL)")
            if len(self.symlink_target) > MAX_SYMLINK_TARGET:
                raise InvalidObject(f"symlink target of {len(self.symlink_target)} bytes, longer than "
                                    f"MAX_SYMLINK_TARGET ({MAX_SYMLINK_TARGET}, Linux's PATH_MAX less its NUL)")
            try:
                self.symlink_target.decode("utf-8")
            except UnicodeDecodeError:
                raise UnsupportedContent(
                    "symlink target is not valid UTF-8: OSTree cannot store it "
                    f"(ostree commit writes {OSTREE_INVALID_UTF8_TARGET.decode()!r} instead)") from None
        elif self.symlink_target:
            raise InvalidObject("a regular file cannot have a symlink target")
        for x in (self.uid, self.gid):
            if not 0 <= x <= 0xFFFFFFFF:
                raise InvalidObject(f"uid/gid {x} out of range")

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)


def _xattrs_gv_bytes(xattrs: Xattrs) -> bytes:
    return gvariant.encode("a(ayay)", _xattrs_to_gv(xattrs)) if xattrs else b""


def encode_file_header(meta: FileMeta) -> bytes:
    """The ``(uuuusa(ayay))`` header GVariant (BE uid/gid/mode, rdev 0, target, xattrs)."""
    # Hand-framed (hot path; equal to gvariant.encode(FILE_HEADER_TYPE, ...), tested): the members are
    # 1-aligned after the 16 fixed bytes, and only the string's end needs a framing offset.
    body = struct.pack(">IIII", meta.uid, meta.gid, meta.mode, 0) + meta.symlink_target + b"\0"
    return gvariant.frame(body + _xattrs_gv_bytes(meta.xattrs), [len(body)])


def _prefix(header: bytes) -> bytes:
    return struct.pack(">II", len(header), 0) + header


def file_stream_prefix(meta: FileMeta) -> bytes:
    """The start of the hashed stream: BE32 header length, 4 zero bytes, header. The payload follows."""
    return _prefix(encode_file_header(meta))


def _meta_from_header(uid: int, gid: int, mode: int, rdev: int, target: str,
                      xattrs: list[tuple[bytes, bytes]]) -> FileMeta:
    if rdev != 0:
        raise InvalidObject(f"file header has non-zero rdev {rdev}")
    return FileMeta(bswap32(uid), bswap32(gid), bswap32(mode), target.encode("utf-8"), _xattrs_from_gv(xattrs))


def decode_file_header(data: bytes) -> FileMeta:
    """Parse a ``(uuuusa(ayay))`` file header (without the 8-byte prefix)."""
    return _meta_from_header(*gvariant.decode(FILE_HEADER_TYPE, data))


class ZeroRun(int):
    """A run of this many zero bytes in a payload stream (a hole of a sparse file). Writers that accept
    ``Iterable[bytes | ZeroRun]`` hash and store it without the bytes ever existing: an archive object gets
    deflate blocks made once per level and repeated, a bare object gets a hole."""

    __slots__ = ()


ZERO_BLOCK = 1 << 20
_ZEROS = bytes(ZERO_BLOCK)
_ZERO_DEFLATE: dict[int, bytes] = {}


def zero_deflate_block(level: int) -> bytes:
    """Raw deflate of ZERO_BLOCK zero bytes, ended by a full flush: byte-aligned, not final, and referring to
    nothing before it, so it may be spliced between two full flushes of any raw deflate stream."""
    b = _ZERO_DEFLATE.get(level)
    if b is None:
        z = zlib.compressobj(level, zlib.DEFLATED, -15)
        b = _ZERO_DEFLATE[level] = z.compress(_ZEROS) + z.flush(zlib.Z_FULL_FLUSH)
    return b


class ContentHasher:
    """Streaming checksum of a content object: feed the payload with ``update`` (or ``update_zeros``)."""

    __slots__ = ("_h",)

    def __init__(self, meta: FileMeta) -> None:
        self._h = hashlib.sha256(file_stream_prefix(meta))

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._h.update(data)

    def update_zeros(self, n: int) -> None:
        full, rest = divmod(n, ZERO_BLOCK)
        for _ in range(full):
            self._h.update(_ZEROS)
        self._h.update(_ZEROS[:rest])

    def digest(self) -> bytes:
        return self._h.digest()

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def content_checksum(uid: int, gid: int, mode: int, symlink_target: bytes | str = b"",
                     xattrs: Iterable[tuple[bytes | str, bytes | str]] = (),
                     chunks: Iterable[bytes] = ()) -> str:
    """Checksum of a file or symlink. ``xattrs`` are hashed in the order given (see canonical_xattrs)."""
    h = ContentHasher(FileMeta(uid, gid, mode, symlink_target, tuple(xattrs)))
    for c in chunks:
        h.update(c)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Archive (.filez) content objects

def encode_filez_header(meta: FileMeta, size: int) -> bytes:
    """Prefix of a ``.filez`` file: BE32 length, 4 zero bytes, ``(tuuuusa(ayay))`` with BE64 size.

    The size is the uncompressed payload length; OSTree writes 0 for symlinks.
    """
    if meta.is_symlink:
        size = 0
    body = struct.pack(">QIIII", size, meta.uid, meta.gid, meta.mode, 0) + meta.symlink_target + b"\0"
    return _prefix(gvariant.frame(body + _xattrs_gv_bytes(meta.xattrs), [len(body)]))


class FilezCompressor:
    """Raw deflate (no zlib header) as archive repos store payloads; ``flush`` once at the end."""

    __slots__ = ("_z", "_level")

    def __init__(self, level: int = DEFAULT_ZLIB_LEVEL) -> None:
        self._z = zlib.compressobj(level, zlib.DEFLATED, -15)
        self._level = level

    def compress(self, data: bytes | bytearray | memoryview) -> bytes:
        return self._z.compress(data)

    def compress_zeros(self, n: int) -> Iterator[bytes]:
        """The deflate of n zero bytes: whole blocks spliced from zero_deflate_block after a full flush
        (the stream stays valid: nothing after a full flush refers to what came before it), the rest
        compressed as usual."""
        full, rest = divmod(n, ZERO_BLOCK)
        if full:
            yield self._z.flush(zlib.Z_FULL_FLUSH)
            block = zero_deflate_block(self._level)
            for _ in range(full):
                yield block
        if rest:
            yield self._z.compress(_ZEROS[:rest])

    def flush(self) -> bytes:
        return self._z.flush()


def encode_filez(meta: FileMeta, chunks: Iterable[bytes], size: int,
                 level: int = DEFAULT_ZLIB_LEVEL) -> Iterator[bytes]:
    """Yield the bytes of a ``.filez`` object for a payload of known ``size`` (checked)."""
    yield encode_filez_header(meta, size)
    if meta.is_symlink:
        for c in chunks:
            if c:
                raise InvalidObject("a symlink has no payload")
        return
    z = FilezCompressor(level)
    total = 0
    for c in chunks:
        total += len(c)
        out = z.compress(c)
        if out:
            yield out
    if total != size:
        raise InvalidObject(f"payload has {total} bytes, header says {size}")
    yield z.flush()


class FilezReader:
    """Reads a ``.filez`` stream from a ``read(n)`` callable.

    The header is parsed on construction (``meta``, ``size``); ``chunks()`` yields the decompressed
    payload and never produces more than ``size`` bytes (deflate-bomb safe). Raises InvalidObject.
    """

    def __init__(self, read: Callable[[int], bytes], chunk_size: int = 1 << 20) -> None:
        self._read = read
        self._chunk_size = chunk_size
        prefix = self._read_exact(8, "header prefix")
        hlen, zero = struct.unpack(">II", prefix)
        if zero != 0:
            raise InvalidObject("filez header padding is not zero")
        if hlen > MAX_HEADER_SIZE:
            raise InvalidObject(f"filez header length {hlen} too large, more than MAX_HEADER_SIZE ({MAX_HEADER_SIZE})")
        raw = self._read_exact(hlen, "header")
        try:
            size, *rest = gvariant.decode(FILEZ_HEADER_TYPE, raw)
        except GVariantError as e:
            raise InvalidObject(f"bad filez header: {e}") from None
        self.meta: FileMeta = _meta_from_header(*rest)
        self.size: int = bswap64(size)
        if self.meta.is_symlink and self.size != 0:
            raise InvalidObject(f"symlink filez header has size {self.size}")
        self._started = False

    def _read_exact(self, n: int, what: str) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            b = self._read(n - len(buf))
            if not b:
                raise InvalidObject(f"filez truncated in {what}")
            buf += b
        return bytes(buf)

    def chunks(self) -> Iterator[bytes]:
        if self._started:
            raise RuntimeError("FilezReader.chunks() can be iterated only once")
        self._started = True
        if self.meta.is_symlink:
            if self._read(1):
                raise InvalidObject("symlink filez has trailing payload")
            return
        d = zlib.decompressobj(-15)
        remaining = self.size
        cs = self._chunk_size
        while not d.eof:
            data = d.unconsumed_tail or self._read(cs)
            if not data:
                raise InvalidObject("filez payload truncated (deflate stream not finished)")
            try:
                out = d.decompress(data, max(1, min(remaining + 1, cs)))
            except zlib.error as e:
                raise InvalidObject(f"filez payload is not valid deflate: {e}") from None
            if len(out) > remaining:
                raise InvalidObject(f"filez payload is larger than its declared size {self.size}")
            remaining -= len(out)
            if out:
                yield out
        if d.unused_data or self._read(1):
            raise InvalidObject("filez has trailing bytes after the deflate stream")
        if remaining:
            raise InvalidObject(f"filez payload is {self.size - remaining} bytes, declared {self.size}")


# ---------------------------------------------------------------------------------------------
# Names

def validate_filename(name: str | bytes) -> str:
    """Check a dirtree entry name as OSTree does and return it as str."""
    raw = filename_bytes(name)
    return name if isinstance(name, str) else raw.decode("utf-8")


def filename_bytes(name: str | bytes) -> bytes:
    """validate_filename, returning the name as UTF-8 bytes (a bytes name is returned as is, not copied)."""
    if isinstance(name, str):
        try:
            raw = name.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidName(f"invalid UTF-8 in file name {name!r:.80}") from None
    elif isinstance(name, (bytes, bytearray)):
        raw = bytes(name)
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidName(f"invalid UTF-8 in file name {name!r:.80}") from None
    else:
        raise InvalidName(f"file name must be str or bytes, not {type(name).__name__}")
    if not raw or raw in (b".", b"..") or b"/" in raw or b"\0" in raw:
        raise InvalidName(f"invalid file name {name!r:.80}")
    return raw


# ---------------------------------------------------------------------------------------------
# dirtree / dirmeta

@dataclass(frozen=True)
class DirTree:
    """Directory listing: files/symlinks ``(name, content checksum)`` and subdirectories
    ``(name, dirtree checksum, dirmeta checksum)``, each sorted by UTF-8 byte order."""

    files: tuple[tuple[str, str], ...] = ()
    dirs: tuple[tuple[str, str, str], ...] = ()


EMPTY_DIRTREE = b"\0"
EMPTY_DIRTREE_CHECKSUM = "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"


def encode_dirtree(files: Iterable[tuple[str | bytes, str | bytes]],
                   dirs: Iterable[tuple[str | bytes, str | bytes, str | bytes]] = ()) -> bytes:
    """Serialize a dirtree. Entries may come in any order; they are sorted. Duplicate names raise.

    A directory may hold hundreds of thousands of files: they are kept as two flat lists (names given as
    bytes are not copied), sorted only when not already in order, and serialized into one buffer."""
    fnames: list[bytes] = []
    fsums: list[bytes] = []
    for n, c in files:
        fnames.append(filename_bytes(n))
        fsums.append(checksum_to_bytes(c))
    if any(a >= b for a, b in itertools.pairwise(fnames)):
        order = sorted(range(len(fnames)), key=fnames.__getitem__)
        fnames = [fnames[i] for i in order]
        fsums = [fsums[i] for i in order]
        del order
    d = sorted(((filename_bytes(n), checksum_to_bytes(t), checksum_to_bytes(m)) for n, t, m in dirs),
               key=lambda e: e[0])
    prev = None
    for name in heapq.merge(fnames, (e[0] for e in d)):
        if name == prev:
            raise InvalidName("duplicate name in dirtree")
        prev = name
    # Hand-framed (hot path; equal to gvariant.encode(DIRTREE_TYPE, ...), tested): every member is
    # 1-aligned, so elements are plain concatenations plus their framing offsets.
    frame = gvariant.frame
    out = bytearray()
    ends = array.array("Q")
    for name, csum in zip(fnames, fsums, strict=True):
        out += frame(name + b"\0" + csum, [len(name) + 1])
        ends.append(len(out))
    del fnames, fsums
    gvariant.append_frame(out, 0, ends)
    files_len = len(out)
    ends = array.array("Q")
    for name, tree, meta in d:
        n = len(name) + 1
        out += frame(name + b"\0" + tree + meta, [n + 32, n])
        ends.append(len(out) - files_len)
    gvariant.append_frame(out, files_len, ends)
    gvariant.append_frame(out, 0, [files_len])
    return bytes(out)


def decode_dirtree(data: bytes) -> DirTree:
    """Parse and validate a dirtree (names, order, checksum sizes)."""
    f_raw, d_raw = gvariant.decode(DIRTREE_TYPE, data)
    files = []
    prev = None
    for name, csum in f_raw:
        validate_filename(name)
        key = name.encode("utf-8")
        if prev is not None and key <= prev:
            raise InvalidObject(f"dirtree file names not sorted/unique at {name!r:.80}")
        prev = key
        files.append((name, checksum_from_bytes(csum)))
    dirs = []
    prev = None
    file_names = {n for n, _ in files}
    for name, tree, meta in d_raw:
        validate_filename(name)
        key = name.encode("utf-8")
        if prev is not None and key <= prev:
            raise InvalidObject(f"dirtree directory names not sorted/unique at {name!r:.80}")
        if name in file_names:
            raise InvalidObject(f"dirtree name {name!r:.80} is both a file and a directory")
        prev = key
        dirs.append((name, checksum_from_bytes(tree), checksum_from_bytes(meta)))
    return DirTree(tuple(files), tuple(dirs))


@dataclass(frozen=True)
class DirMeta:
    """Directory metadata: owner, full ``st_mode`` (with S_IFDIR) and xattrs."""

    uid: int
    gid: int
    mode: int
    xattrs: Xattrs = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "xattrs", normalize_xattrs(self.xattrs))
        if not stat.S_ISDIR(self.mode) or self.mode & ~(stat.S_IFDIR | 0o7777):
            raise InvalidObject(f"dirmeta mode {self.mode:#o} is not a directory mode")


def encode_dirmeta(meta: DirMeta) -> bytes:
    return struct.pack(">III", meta.uid, meta.gid, meta.mode) + _xattrs_gv_bytes(meta.xattrs)


def decode_dirmeta(data: bytes) -> DirMeta:
    uid, gid, mode, xattrs = gvariant.decode(DIRMETA_TYPE, data)
    return DirMeta(bswap32(uid), bswap32(gid), bswap32(mode), _xattrs_from_gv(xattrs))


# ---------------------------------------------------------------------------------------------
# bare-user metadata xattr

OSTREEMETA_XATTR = b"user.ostreemeta"


def encode_ostreemeta(meta: FileMeta) -> bytes:
    """Value of the ``user.ostreemeta`` xattr of a bare-user object: ``(uuua(ayay))``, BE fields."""
    return struct.pack(">III", meta.uid, meta.gid, meta.mode) + _xattrs_gv_bytes(meta.xattrs)


def decode_ostreemeta(data: bytes) -> tuple[int, int, int, Xattrs]:
    """Parse a ``user.ostreemeta`` value into (uid, gid, mode, xattrs)."""
    uid, gid, mode, xattrs = gvariant.decode(OSTREEMETA_TYPE, data)
    return bswap32(uid), bswap32(gid), bswap32(mode), _xattrs_from_gv(xattrs)


# ---------------------------------------------------------------------------------------------
# commit / commitmeta

Metadata = list[tuple[str, Variant]]


def commit_content_checksum(root_tree: str, root_meta: str) -> str:
    """The "ContentChecksum" ``ostree show`` prints: SHA-256(root dirtree raw ‖ root dirmeta raw)."""
    return hashlib.sha256(checksum_to_bytes(root_tree) + checksum_to_bytes(root_meta)).hexdigest()


@dataclass
class Commit:
    """A commit object. ``metadata`` is an ordered list of (key, Variant); ``parent`` hex or None."""

    root_tree: str
    root_meta: str
    metadata: Metadata = field(default_factory=list)
    parent: str | None = None
    related: list[tuple[str, str]] = field(default_factory=list)
    subject: str = ""
    body: str = ""
    timestamp: int = 0

    @property
    def content_checksum(self) -> str:
        return commit_content_checksum(self.root_tree, self.root_meta)

    def get(self, key: str, default: Any = None) -> Any:
        """Value (not the Variant) of the first metadata entry ``key``."""
        v = gvariant.asv_get(self.metadata, key)
        return default if v is None else v.value


def encode_commit(c: Commit) -> bytes:
    for k, _ in c.metadata:
        if not k:
            raise InvalidObject("commit metadata key is empty")
    return gvariant.encode(COMMIT_TYPE, (
        [(k, Variant(*v)) for k, v in c.metadata],
        checksum_to_bytes(c.parent) if c.parent else b"",
        [(name, checksum_to_bytes(csum)) for name, csum in c.related],
        c.subject, c.body, bswap64(c.timestamp),
        checksum_to_bytes(c.root_tree), checksum_to_bytes(c.root_meta)))


def decode_commit(data: bytes) -> Commit:
    md, parent, related, subject, body, ts, tree, meta = gvariant.decode(COMMIT_TYPE, data)
    for k, _ in md:
        if not k:
            raise InvalidObject("commit metadata key is empty")
    if parent and len(parent) != 32:
        raise InvalidObject(f"commit parent has {len(parent)} bytes")
    return Commit(
        root_tree=checksum_from_bytes(tree), root_meta=checksum_from_bytes(meta), metadata=md,
        parent=checksum_from_bytes(parent) if parent else None,
        related=[(n, checksum_from_bytes(c)) for n, c in related],
        subject=subject, body=body, timestamp=bswap64(ts))


def encode_commitmeta(metadata: Iterable[tuple[str, Variant]]) -> bytes:
    """Detached commit metadata (``.commitmeta``), an ``a{sv}``."""
    return gvariant.encode_asv(metadata)


def decode_commitmeta(data: bytes) -> Metadata:
    return gvariant.decode_asv(data)


# ---------------------------------------------------------------------------------------------
# summary

@dataclass
class SummaryRef:
    name: str
    commit_size: int
    checksum: str
    metadata: Metadata = field(default_factory=list)


@dataclass
class Summary:
    refs: list[SummaryRef] = field(default_factory=list)
    metadata: Metadata = field(default_factory=list)


def encode_summary(s: Summary) -> bytes:
    """Serialize a summary; refs are sorted by name as OSTree requires. Metadata values are taken as is
    (BE fields such as ``ostree.commit.timestamp`` must already be swapped; see repo.py)."""
    refs = sorted(s.refs, key=lambda r: r.name.encode("utf-8"))
    return gvariant.encode(SUMMARY_TYPE, (
        [(r.name, (r.commit_size, checksum_to_bytes(r.checksum), [(k, Variant(*v)) for k, v in r.metadata]))
         for r in refs],
        [(k, Variant(*v)) for k, v in s.metadata]))


def decode_summary(data: bytes) -> Summary:
    refs, md = gvariant.decode(SUMMARY_TYPE, data)
    return Summary([SummaryRef(name, size, checksum_from_bytes(c), m) for name, (size, c, m) in refs], md)


# ---------------------------------------------------------------------------------------------
# static delta superblock (read side only)

@dataclass
class DeltaPartHeader:
    version: int
    checksum: str
    compressed_size: int
    uncompressed_size: int
    objects: list[tuple[ObjectType, str]]


@dataclass
class DeltaSuperblock:
    metadata: Metadata
    timestamp: int
    from_checksum: str | None
    to_checksum: str
    commit: Commit
    parts: list[DeltaPartHeader]
    fallback: list[tuple[ObjectType, str, int, int]]


def _objtype(n: int) -> ObjectType:
    try:
        return ObjectType(n)
    except ValueError:
        raise InvalidObject(f"unknown object type {n}") from None


def decode_delta_superblock(data: bytes) -> DeltaSuperblock:
    md, ts, frm, to, commit, _deps, parts, fallback = gvariant.decode(DELTA_SUPERBLOCK_TYPE, data)
    headers = []
    for version, csum, csize, usize, objs in parts:
        if len(objs) % 33:
            raise InvalidObject("delta part object list length is not a multiple of 33")
        headers.append(DeltaPartHeader(version, checksum_from_bytes(csum), csize, usize,
                                       [(_objtype(objs[i]), objs[i + 1:i + 33].hex())
                                        for i in range(0, len(objs), 33)]))
    return DeltaSuperblock(
        metadata=md, timestamp=bswap64(ts), from_checksum=checksum_from_bytes(frm) if frm else None,
        to_checksum=checksum_from_bytes(to), commit=decode_commit(gvariant.encode(COMMIT_TYPE, commit)),
        parts=headers,
        fallback=[(_objtype(t), checksum_from_bytes(c), s, u) for t, c, s, u in fallback])


def delta_name_encode(csum: str) -> str:
    """OSTree's "modified base64" of a checksum used in delta paths (no '=', '/' -> '_')."""
    import base64
    return base64.b64encode(checksum_to_bytes(csum)).decode("ascii").rstrip("=").replace("/", "_")


def delta_name_decode(name: str) -> str:
    import base64
    try:
        raw = base64.b64decode(name.replace("_", "/") + "=", validate=True)
    except ValueError:
        raise InvalidObject(f"invalid delta name component {name!r:.80}") from None
    return checksum_from_bytes(raw)


def sorted_names(names: Sequence[str]) -> list[str]:
    """Sort names the way OSTree does (strcmp on UTF-8 bytes)."""
    return sorted(names, key=lambda n: n.encode("utf-8"))
