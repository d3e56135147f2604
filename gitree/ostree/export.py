"""Export of gitree commits to native OSTree repositories, over gitree_compat's public API (the other
direction is gitree.ostree.importing).

Export walks a gitree commit directory by directory and writes dirtree/dirmeta/content objects whose
checksums equal what `ostree commit` computes for the same tree. The export cache (gitree/exportcache.py: a
file store under the git directory, every record authenticated) maps git trees and blobs (with their metadata)
to OSTree checksums, so a later export skips unchanged directories without reading them, and never rehashes an
unchanged file; import-rootfs records each file's checksum there as the bytes pass through. Into an archive
repository a file's `.filez` body is, by default, the raw deflate stream copied out of its git pack entry.

A commit made by import-ostree keeps the original commit and detached-metadata bytes in its `ostree/`
subtree; export writes them back, so every original checksum is reproduced bit for bit.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import os
import re
import stat
import struct
from dataclasses import dataclass, field
from typing import Iterator

import pygit2

import gitree_compat as oc
from gitree_compat import Commit, DirMeta, FileMeta, ObjectType, OstreeRepo, Variant

from .. import limits, ostreemeta, treeread
from ..entry import Kind
from ..exportcache import COMMIT, DIRMETA, DIRTREE, FILE, KeyMaker, open_cache, record_key
from .storedcommit import mismatch as stored_mismatch
from .targettrust import TargetObjects, object_stamp, stat_stamp
from ..errors import BadInput, CorruptObject, UnsupportedEntry, UsageError, warner
from ..gittree import decode_tree
from ..names import display, esc, unesc
from ..packreader import PackSet, inflate_chunks
from ..packwriter import OBJ_BLOB, OBJ_TREE
from ..sparse import MAX_EXPANDED_HOLES, SparseMap
from ..sparse import encode as sparse_encode
from ..sparse import logical_chunks as sparse_logical_chunks
from ..layout import TOP_OSTREE
from ..repo import Repo
from ..workers import Workers

CACHE_REF = "refs/gitree/ostree-cache"   # the old cache (git objects any transport could plant): deleted
COMPRESSION_REUSE = "reuse"
DEFAULT_COMPRESSION = COMPRESSION_REUSE  # docs/ostree-bridge.md, "Compression": chosen by measurement
WORKERS = max(2, min(4, os.cpu_count() or 2))

# Names in the ostree/ subtree of an imported commit (docs/ostree-bridge.md).
OSTREE_COMMIT = b"commit"          # the original .commit object bytes
OSTREE_COMMITMETA = b"commitmeta"  # the original .commitmeta bytes, when there was one
OSTREE_XATTR_ORDER = b"xattr-order"  # xattr order of objects whose xattrs were not sorted (tar imports)


def encode_xattr_order(order: dict[bytes, list[bytes]]) -> bytes:
    """Lines `PATH NAME...`, token-escaped (docs/format.md 4.2), sorted by path; the root is `.`."""
    lines = []
    for path in sorted(order):
        toks = [esc(path) if path else b"."] + [esc(n) for n in order[path]]
        lines.append(b" ".join(toks) + b"\n")
    return b"".join(lines)


def decode_xattr_order(data: bytes) -> dict[bytes, list[bytes]]:
    out = {}
    for line in data.splitlines():
        toks = line.split(b" ")
        try:
            out[b"" if toks[0] == b"." else unesc(toks[0])] = [unesc(t) for t in toks[1:]]
        except ValueError:
            raise CorruptObject("ostree/xattr-order: bad escape") from None
    return out


# A directory the pre-export check (treeread.verify) found fault-free and without hard links, recorded once an
# export that checked it succeeded: key (VERIFIED_DIR, VERIFY_RULES, content tree, meta tree), value its height
# and entry count (BE64 each) and 16 zero bytes. A later export skips the whole subtree - neither checks nor
# reads it - only when this record is authentic, the depth and entry limits let it stand where it is now, and
# its dirtree and dirmeta are vouched for in the target (docs/ostree-bridge.md, "Updates").
VERIFIED_DIR = b"verified-dir"
VERIFY_RULES = b"treeread-3 %d %d %d %d %d %d %d" % (
    limits.MAX_TREE_DEPTH, limits.MAX_DIR_ENTRIES, limits.MAX_TABLE_BYTES, limits.MAX_TREE_BYTES,
    limits.MAX_COMMIT_ENTRIES, limits.SYMLINK_MAX, limits.MAX_OPEN_ENTRIES)  # made under other rules: not used
KEEP_ROWS = 1 << 15  # table rows of directories the check read, kept for the plan (about 460 bytes each: under
#                      15 MiB); beyond, the plan reads them again


class _CheckedDirs(treeread.Verified):
    """The pre-export check's memory: directories verified by this run, those an authenticated record
    vouches for (skipped), and the nodes the check read, which the plan takes instead of reading them again."""

    def __init__(self, exporter: "Exporter"):
        super().__init__()
        self.ex = exporter
        self.nodes: dict[tuple[bytes, bytes], treeread.DirNode] = {}
        self.rows = 0

    def known(self, content: bytes, meta: bytes) -> tuple[int, int] | None:
        return self.dirs.get((content, meta)) or self.ex._verified_export(content, meta)

    def read(self, content: bytes, meta: bytes, node: treeread.DirNode) -> None:
        if self.rows + len(node.rows) < KEEP_ROWS:
            self.rows += len(node.rows) + 1
            self.nodes[(content, meta)] = node

    def take(self, content: bytes, meta: bytes) -> treeread.DirNode | None:
        node = self.nodes.pop((content, meta), None)
        if node is not None:
            self.rows -= len(node.rows) + 1
        return node

    def drop_nodes(self) -> None:
        self.nodes.clear()
        self.rows = 0


class _NoCache:
    """Stands in when the cache cannot be opened: every lookup misses."""

    def get(self, key: bytes) -> None:
        return None

    def put(self, key: bytes, value: bytes) -> None:
        pass

    put_new = put

    def save(self) -> None:
        pass

    def close(self) -> None:
        pass

    new: dict = {}   # records waiting to be saved: never any


# ---------------------------------------------------------------------------------------------
# Export

@dataclass
class ExportOptions:
    ref: str
    mode: str = "archive"
    bindings: bool = True
    history: bool = False
    strict: bool = False
    update_summary: bool = False
    extra_metadata: list[tuple[str, Variant]] = field(default_factory=list)
    signers: list = field(default_factory=list)  # gitree.ostree.signing.Signer: sign each commit and the summary
    ref_bindings: tuple[str, ...] = ()  # bound besides `ref` (ostree commit --bind-ref)
    compression: str | int = DEFAULT_COMPRESSION  # archive .filez bodies: "reuse" (pack deflate) or zlib 1-9


@dataclass
class ExportResult:
    checksum: str
    commits: list[str]
    skipped: list[tuple[bytes, str]]
    files_written: int = 0
    files_cached: int = 0
    dirs_cached: int = 0


# Content objects are written by worker processes (the GIL would otherwise serialise the Python around zlib
# and hashlib), in batches to keep the messaging cheap. A job is (meta, blob id, path for messages, checksum the
# export cache vouches for or None, produce): `produce` is None when the file's bytes are the blob as stored, or
# a picklable callable returning (size, chunks) for a file whose content must be produced from its blob.
# Into an archive repository with compression "reuse", a blob stored whole in a pack has its raw deflate stream
# copied into the .filez (inflated only to hash it when no checksum is known); a delta, a loose object or a
# produced file is read (inflated from the pack, or through libgit2) and compressed at the target's level.
# Bare modes inflate from the pack and, under a checksum the cache vouches for, write without hashing again.
BATCH_FILES = 32
INLINE_JOBS = 64
# Memory bounds of one export (docs/security.md, "Export memory"): files planned and not yet in a written
# dirtree before the oldest planned directories are finished (children first); batches of content writes
# queued for the workers; entries of the maps that spot repeats (an identical file or subtree elsewhere:
# forgotten past the bound, a repeat is then written again); export-cache records held before they are
# merged into the cache file.
WINDOW_FILES = 1 << 14
INFLIGHT_JOBS = 8 * WORKERS
REPEAT_MAPS = 1 << 16
FLUSH_RECORDS = 1 << 16   # an update's few hundred cheap writes are done here: starting processes would cost more
_W: dict = {}


def _worker_init(repo_path: str, target_path: str, compression) -> None:
    _W["repo"] = Repo(repo_path)
    _W["target"] = OstreeRepo(target_path)
    _W["compression"] = compression
    _W["packs"] = None


def _packs() -> PackSet:
    if _W.get("packs") is None:
        _W["packs"] = PackSet(_W["repo"].objects_dir)
    return _W["packs"]


def _worker_write(jobs: list) -> list[tuple[str, int, bool, bytes | None]]:
    """(checksum, bytes, whether the checksum was computed here, the written object's stamp) per job: the
    stamp (targettrust.object_stamp) is taken here, right after the write, not by the planning process."""
    target = _W["target"]
    out = []
    for job in jobs:
        csum, size, hashed, st = _write_one(*job)
        out.append((csum, size, hashed, stat_stamp(st) if st is not None else
                    object_stamp(os.fspath(target.object_path(csum, ObjectType.FILE)))))
    return out


def _write_one(meta, blob, where, known, produce) -> tuple[str, int, bool, os.stat_result | None]:
    """(checksum, bytes, whether hashed here, the installed file's stat when this code staged it itself)."""
    repo, target, compression = _W["repo"], _W["target"], _W["compression"]
    if meta.is_symlink:
        return target.write_content(meta, ()), 0, True, None
    if produce is not None:  # content made by a function (not the blob as stored): hashed and compressed
        size, chunks = produce()
        return (target.write_content(meta, chunks, expected=known, trust_present=False), size, known is None,
                None)
    ps = _packs().blob(blob)
    if ps is not None and compression == COMPRESSION_REUSE and target.mode == "archive":
        csum = known or _hash_raw_deflate(meta, ps.size, ps, where)
        st = _write_filez_raw(target, meta, csum, ps)
        if st is not None:
            return csum, ps.size, known is None, st
        ps = None  # the entry fails its CRC-32: read the object through libgit2 instead
    if ps is not None:
        size, chunks = ps.size, inflate_chunks(ps, f"blob of {where}")
    else:
        size = repo.blob_size(blob, where)
        chunks = repo.blob_chunks(blob, size, where)
    st = _write_bare_known(target, meta, known, chunks) if known is not None else None
    if st is not None:
        return known, size, False, st
    return target.write_content(meta, chunks, expected=known, trust_present=False), size, known is None, None


OSTREEMETA_XATTR = b"user.ostreemeta"  # bare-user: the file's real uid, gid, mode and xattrs


def _stage_file(target: OstreeRepo, csum: str, fill) -> os.stat_result | None:
    """Install content object `csum` over any file of its name, from a staged file that `fill(fd)` writes
    (False: abandon it). The installed file's stat, taken by fstat before the rename (which changes none of
    the fields a stamp holds), or None when nothing was installed."""
    got = []

    def write(fd: int) -> bool:
        if not fill(fd):
            return False
        got.append(os.fstat(fd))
        return True

    return got[0] if target.stage_object(csum, ObjectType.FILE, write) else None


def _write_bare_known(target: OstreeRepo, meta: FileMeta, csum: str, chunks) -> os.stat_result | None:
    """Write a regular file into a bare or bare-user repository as `ostree commit` stores it, under a checksum
    the export cache vouches for (so without hashing it again): its stat (_stage_file); None if this is not
    such a case."""
    if target.mode == "bare-user":
        perms = (meta.mode & 0o775) | 0o400
    elif target.mode == "bare" and meta.xattrs == oc.canonical_xattrs(meta.xattrs):
        perms = meta.mode & 0o7777
    else:
        return None

    def write(fd: int) -> bool:
        for c in chunks:
            mv = memoryview(c)
            while mv:
                mv = mv[os.write(fd, mv):]
        if target.mode == "bare":
            os.fchown(fd, meta.uid, meta.gid)
            for n, v in meta.xattrs:
                os.setxattr(fd, n, v)
            os.utime(fd, ns=(0, 0))
        else:
            os.setxattr(fd, OSTREEMETA_XATTR, oc.encode_ostreemeta(meta))
        os.fchmod(fd, perms)  # after fchown, which clears setuid/setgid
        return True

    return _stage_file(target, csum, write)


def _hash_raw_deflate(meta: FileMeta, size: int, ps, where: str) -> str:
    """The content checksum of a file whose payload is a pack entry's raw deflate, inflated in bounded chunks."""
    h = oc.ContentHasher(meta)
    for buf in inflate_chunks(ps, f"blob of {where}"):
        h.update(buf)
    return h.hexdigest()


def _write_filez_raw(target: OstreeRepo, meta: FileMeta, csum: str, ps) -> os.stat_result | None:
    """The .filez header and the pack entry's raw deflate (copied by the kernel), installed as
    objects/XX/REST.filez over any file of that name: its stat (_stage_file). None if the entry fails its
    CRC-32 (nothing installed)."""
    def write(fd: int) -> bool:
        part = memoryview(oc.encode_filez_header(meta, ps.size))
        while part:
            part = part[os.write(fd, part):]
        if not ps.verified_copy(fd):
            return False
        os.fchmod(fd, 0o644)
        return True

    return _stage_file(target, csum, write)


def sparse_file_content(repo: Repo, blob: bytes, smap: SparseMap, where: str) -> Iterator[bytes]:
    """The logical content of a sparse file (OSTree has no sparse files): its blob's data segments placed by
    its map, each hole a ZeroRun. The checksum still hashes every logical byte (SHA-256 over the zeros,
    about 1.7 GB/s here); the archive object gets precomputed deflate blocks for the holes, a bare object
    keeps them as holes. Never the logical size in memory."""
    size = repo.blob_size(blob, where)
    if size != smap.data_size:
        raise CorruptObject(f"{where}: blob holds {size} bytes, its sparse map {smap.data_size}")
    return sparse_logical_chunks(smap, repo.blob_chunks(blob, size, where), hole=oc.ZeroRun)


def _produce_sparse(blob: bytes, smap: SparseMap, where: str) -> tuple[int, Iterator[bytes]]:
    """A content job's `produce` for a sparse file (picklable: it runs in a worker process)."""
    return smap.size, sparse_file_content(_W["repo"], blob, smap, where)


class _Slot:
    """One content object to write: its cache key until its batch's job finishes, then its raw checksum."""

    __slots__ = ("fkey", "csum")

    def __init__(self, fkey: bytes):
        self.fkey: bytes | None = fkey
        self.csum: bytes | None = None


@dataclass
class _PendingDir:
    """A planned directory. Its files are two flat lists, not a tuple each: a directory may hold
    MAX_DIR_ENTRIES of them (about 130 bytes a file while planned: docs/security.md, "Export memory")."""

    path: bytes
    dkeys: tuple[bytes, bytes]   # cache keys of its dirtree and dirmeta
    self_row: object
    names: list = field(default_factory=list)   # file names (bytes, valid UTF-8)
    sums: list = field(default_factory=list)    # per file: its raw checksum, or the _Slot that will hold it
    dirs: list = field(default_factory=list)    # (name, (dirtree, dirmeta) | _PendingDir)
    result: tuple[str, str] | None = None


def _ostree_name(name: bytes) -> str | None:
    try:
        return name.decode("utf-8")
    except UnicodeDecodeError:
        return None


class Exporter:
    def __init__(self, repo: Repo, target: OstreeRepo, opts: ExportOptions, warn=None, progress=None):
        self.repo = repo
        self.target = target
        self.opts = opts
        self.warn = warn = warn or warner(None, "export")
        self.progress = progress
        self.canonical = target.mode == "bare-user-only"
        self.variant = self.base_variant = b"canonical" if self.canonical else b"full"
        self.xorder: dict[bytes, list[bytes]] | None = None  # set while exporting an imported commit
        self.cache = open_cache(repo.path, warn) or _NoCache()
        self.present = TargetObjects(self.cache, target, warn)  # what the target holds that may be referenced unread
        self.prefixes: dict[tuple, KeyMaker] = {}  # file keys by metadata (few distinct values per tree)
        self.inline_jobs = 0
        self.inline_packs: PackSet | None = None
        self.pool: Workers | None = None  # started on the first write
        self.batch: list = []
        self.batch_path = b""
        self.skipped: list[tuple[bytes, str]] = []
        self.files_written = self.files_cached = self.dirs_cached = 0
        self.planned_files: dict[bytes, _Slot] = {}
        self.planned_dirs: dict[bytes, _PendingDir] = {}
        self.nbytes = 0
        self.holes = 0        # bytes of holes this export spells out as zeros (OSTree has no sparse files)
        self.unfinished: collections.deque = collections.deque()   # planned directories, children first
        self.unfinished_files = 0
        self.inflight: collections.deque = collections.deque()     # futures of batches given to workers
        self.checked = _CheckedDirs(self)
        self.skips: dict[tuple[bytes, bytes], tuple[str, str]] = {}  # subtrees the check skipped: their export

    # content

    def _xattrs(self, path: bytes, xattrs):
        """xattrs as OSTree will hash them: as `ostree commit` of a directory does (sorted, empty values
        dropped), or, for a commit imported from OSTree, exactly as the original objects had them."""
        if self.xorder is None:
            return oc.canonical_xattrs(xattrs) if xattrs else ()
        order = self.xorder.get(path)
        if order is None:
            return tuple(xattrs)
        values = dict(xattrs)
        if len(order) != len(values) or set(order) != set(values):
            # the recorded order must be a permutation of the xattrs the tree holds: anything else (an
            # order that leaves one out, say) would export other xattrs than fsck and checkout see
            return oc.canonical_xattrs(xattrs)
        return tuple((n, values[n]) for n in order)

    def _file_meta(self, path: bytes, e_kind: Kind, mode: int, uid: int, gid: int, xattrs,
                   target: bytes) -> FileMeta:
        if self.canonical:
            perms = mode & 0o755 if e_kind is Kind.FILE else mode
            return FileMeta(0, 0, e_kind.ifmt | perms, target, ())
        return FileMeta(uid, gid, e_kind.ifmt | mode, target, self._xattrs(path, xattrs))

    def _dir_meta(self, path: bytes, mode: int, uid: int, gid: int, xattrs) -> DirMeta:
        if self.canonical:
            return DirMeta(0, 0, stat.S_IFDIR | (mode & 0o755), ())
        return DirMeta(uid, gid, stat.S_IFDIR | mode, self._xattrs(path, xattrs))

    # directories

    def export_dir(self, path: bytes, content: bytes, meta: bytes) -> tuple[str, str]:
        """(dirtree, dirmeta) checksums of one directory, written with everything under it."""
        return self._finish(self._plan(path, content, meta))

    def _plan(self, path: bytes, content: bytes, meta: bytes):
        """Queue the content writes of a whole subtree without waiting (so both cores stay busy);
        returns (dirtree, dirmeta) for a cached directory, else a _PendingDir for _finish."""
        hit = self.skips.get((content, meta))
        dkeys = self._dir_keys(content, meta)
        if hit is None:
            hit = self._cached_dir(dkeys)
        if hit is not None:
            self.dirs_cached += 1
            return hit
        dkey = dkeys[0]
        same = self.planned_dirs.get(dkey)
        if same is not None:  # an identical subtree elsewhere in this export
            self.dirs_cached += 1
            return same
        node = self.checked.take(content, meta) or self.repo.read_dir(path, content, meta)
        self._finish_oldest(len(node.rows))   # room for this directory's files first
        if len(self.planned_dirs) >= REPEAT_MAPS:
            self.planned_dirs.clear()
        pending = self.planned_dirs[dkey] = _PendingDir(path, dkeys, node.self_row)
        # each row is let go as it is planned, so the directory as read and its plan are not both whole
        rows, contents, metas = node.rows, node.content, node.meta
        del node
        for i in range(len(rows)):
            row, rows[i] = rows[i], None
            ref = contents.pop(row.name, None)
            cpath = path + b"/" + row.name if path else row.name
            name = _ostree_name(row.name)
            if name is None:
                self._skip(cpath, "file name that is not valid UTF-8")
                continue
            if row.kind is Kind.DIR:
                pending.dirs.append((row.name, self._plan(cpath, ref.oid, metas.pop(row.name))))
                continue
            if row.kind not in (Kind.FILE, Kind.SYMLINK):
                self._skip(cpath, f"{row.kind.name.lower()} node")
                continue
            blob = ref.oid
            target = self.repo.read(blob, OBJ_BLOB, display(cpath)) if row.kind is Kind.SYMLINK else b""
            if row.kind is Kind.SYMLINK and (not target or b"\0" in target or _ostree_name(target) is None):
                # ostree commit stores the text '[Invalid UTF-8]' for such a target, which its fsck refuses
                self._skip(cpath, "symlink whose target is empty or not valid UTF-8")
                continue
            fmeta = self._file_meta(cpath, row.kind, row.mode, row.uid, row.gid, row.xattrs, target)
            fkey = self._file_key(fmeta)(blob, *((b"sparse", sparse_encode(row.sparse)) if row.sparse is not None
                                                 else ()))
            csum = self.cache.get(fkey)
            known = csum.hex() if csum is not None else None
            pending.names.append(row.name)
            if known is not None and self.present.usable(known, ObjectType.FILE):
                self.files_cached += 1
                pending.sums.append(csum)
                continue
            slot = self.planned_files.get(fkey)
            if slot is None:
                if row.sparse is not None:
                    self._count_holes(cpath, row.sparse)
                if len(self.planned_files) >= REPEAT_MAPS:
                    self.planned_files.clear()
                slot = self.planned_files[fkey] = _Slot(fkey)
                produce = (functools.partial(_produce_sparse, blob, row.sparse, display(cpath))
                           if row.sparse is not None else None)
                self.batch.append((slot, (fmeta, blob, display(cpath), known, produce)))
                self.batch_path = cpath   # shown by the progress line when the batch is written
                if len(self.batch) >= BATCH_FILES:
                    self._submit()
            else:
                self.files_cached += 1
            pending.sums.append(slot.csum or slot)
        self.unfinished.append((pending, len(pending.names)))
        self.unfinished_files += len(pending.names)
        self._finish_oldest(0)
        return pending

    def _finish_oldest(self, room: int) -> None:
        """Finish the oldest planned directories (their subdirectories were planned before them) until the
        files planned and not finished, plus `room` more, fit in WINDOW_FILES."""
        while self.unfinished and self.unfinished_files + room > WINDOW_FILES:
            oldest, n = self.unfinished.popleft()
            self.unfinished_files -= n
            self._finish(oldest)

    def _count_holes(self, cpath: bytes, smap: SparseMap) -> None:
        """OSTree has no sparse files: a sparse file's holes are written (and hashed) as zeros. A 4 KB tar may
        declare a 16 TiB file, so the zeros one export spells out are bounded as `checkout --tar`'s are."""
        self.holes += smap.size - smap.data_size
        if self.holes > MAX_EXPANDED_HOLES:
            raise UnsupportedEntry(f"{display(cpath)}: a sparse file of {smap.size} bytes; OSTree has no sparse "
                                   f"files, and this export would spell out more than {MAX_EXPANDED_HOLES} bytes "
                                   "of holes as zeros (MAX_EXPANDED_HOLES)")

    def _dir_keys(self, content: bytes, meta: bytes) -> tuple[bytes, bytes]:
        return record_key(DIRTREE, self.variant, content, meta), record_key(DIRMETA, self.variant, content, meta)

    def _cached_dir(self, dkeys: tuple[bytes, bytes]) -> tuple[str, str] | None:
        """(dirtree, dirmeta) of a directory exported before, when both are vouched for in the target."""
        ht, hm = self.cache.get(dkeys[0]), self.cache.get(dkeys[1])
        if ht is not None and hm is not None:
            t, m = ht.hex(), hm.hex()
            if self.present.vouched(t, ObjectType.DIR_TREE) and self.present.vouched(m, ObjectType.DIR_META):
                return t, m
        return None

    def _verified_export(self, content: bytes, meta: bytes) -> tuple[int, int] | None:
        """(height, entries) of a directory an authentic record says an export checked whole, when its export
        is vouched for in this target: the check may skip it (and the plan takes it from the cache)."""
        v = self.cache.get(record_key(VERIFIED_DIR, VERIFY_RULES, content, meta))
        if v is None or v[16:] != bytes(16):
            return None
        hit = self._cached_dir(self._dir_keys(content, meta))
        if hit is None:
            return None
        self.skips[(content, meta)] = hit
        height, entries = struct.unpack(">QQ", v[:16])
        return height, entries

    def _record_checked(self) -> None:
        """After a successful export: the directories this run checked whole, for later exports to skip."""
        for (content, meta), (height, entries) in self.checked.dirs.items():
            self.cache.put(record_key(VERIFIED_DIR, VERIFY_RULES, content, meta),
                           struct.pack(">QQ16x", height, entries))

    def _file_key(self, fmeta: FileMeta) -> KeyMaker:
        """The cache keys of files of this metadata: record_key(FILE, OSTree file header, blob, ...)."""
        k = (fmeta.uid, fmeta.gid, fmeta.mode, fmeta.symlink_target, fmeta.xattrs)
        p = self.prefixes.get(k)
        if p is None:
            if len(self.prefixes) > 4096:
                self.prefixes.clear()
            p = self.prefixes[k] = KeyMaker(FILE, oc.file_stream_prefix(fmeta))
        return p

    def _submit(self, final: bool = False) -> None:
        """Hand the queued content writes to a worker process as one job (a last small batch of a small
        export is written here: starting processes would cost more than it saves)."""
        if not self.batch:
            return
        slots = [s for s, _ in self.batch]
        jobs = [job for _, job in self.batch]
        self.batch = []
        cheap = all(job[3] is not None for job in jobs)  # checksums known: copies, no hashing
        if self.pool is None and (final or (cheap and self.inline_jobs + len(jobs) <= INLINE_JOBS)):
            self.inline_jobs += len(jobs)
            if self.inline_packs is None:
                self.inline_packs = PackSet(self.repo.objects_dir)
            _W.update(repo=self.repo, target=self.target, compression=self.opts.compression,
                      packs=self.inline_packs)
            try:
                results = _worker_write(jobs)
            finally:
                _W.clear()
            self._done(slots, results, self.batch_path)
            return
        if self.pool is None:
            self.pool = Workers(WORKERS, _worker_write, _worker_init,
                                (self.repo.path, str(self.target.path), self.opts.compression))
        self.inflight.append((self.pool.submit(jobs), slots, self.batch_path))
        while len(self.inflight) > INFLIGHT_JOBS:   # the workers' queue is bounded, not the whole tree
            self._done_oldest()

    def _done_oldest(self) -> None:
        worker, slots, where = self.inflight.popleft()
        self._done(slots, self.pool.result(worker), where)

    def _done(self, slots: list[_Slot], results: list, where: bytes) -> None:
        """A batch is written: each slot gets its checksum, recorded as written into the target (and, when
        computed here, as the file's checksum)."""
        for slot, (csum, size, hashed, stamp) in zip(slots, results, strict=True):
            raw = bytes.fromhex(csum)
            self.present.record(csum, ObjectType.FILE, stamp)  # written (or replaced) by this export
            if hashed:
                self.cache.put(slot.fkey, raw)
            slot.csum, slot.fkey = raw, None
            self.nbytes += size
            self.files_written += 1
        if self.progress:
            self.progress.update(self.files_written, self.nbytes, where)

    def _resolve(self, slot: _Slot) -> bytes:
        while slot.csum is None:   # batches are waited for in the order they were given
            if self.inflight:
                self._done_oldest()
            else:
                self._submit(final=True)
        return slot.csum

    def _finish(self, p) -> tuple[str, str]:
        if isinstance(p, tuple):
            return p
        if p.result is not None:
            return p.result
        dirs = [(name, *self._finish(child)) for name, child in p.dirs]
        sums = p.sums
        for i, v in enumerate(sums):
            if not isinstance(v, bytes):
                sums[i] = self._resolve(v)
        r = p.self_row
        m = self.target.write_dirmeta(self._dir_meta(p.path, r.mode, r.uid, r.gid, r.xattrs))
        t = self.target.write_dirtree(zip(p.names, sums, strict=True), dirs)
        self.present.record(t, ObjectType.DIR_TREE)
        self.present.record(m, ObjectType.DIR_META)
        self.cache.put(p.dkeys[0], bytes.fromhex(t))
        self.cache.put(p.dkeys[1], bytes.fromhex(m))
        p.result = (t, m)
        p.names = p.sums = p.dirs = None     # written: only its result is kept
        if len(self.cache.new) >= FLUSH_RECORDS:
            self.cache.save()       # records of objects written (their content was checked before any write)
        return t, m

    def _skip(self, path: bytes, why: str) -> None:
        if self.opts.strict:
            raise UnsupportedEntry(f"{display(path)}: OSTree cannot hold a {why}")
        self.skipped.append((path, why))

    # commits

    def export_commit(self, commit: pygit2.Commit, parent: str | None) -> str:
        content, meta = self.repo.commit_trees(commit)
        top = self.repo.top_entries(commit)
        original = None
        self.xorder, self.variant = None, self.base_variant
        if TOP_OSTREE in top:
            original = self._original(top[TOP_OSTREE].oid, commit)
            if original is not None and not self.canonical:
                order_blob = original[2]
                self.xorder = decode_xattr_order(order_blob) if order_blob is not None else {}
                self.variant = self.base_variant + b"-as-imported-" + hashlib.sha1(order_blob or b"").digest()
        try:
            # the git reader's checks, as fsck: a tree fsck refuses is never exported. Subtrees an earlier
            # export checked and exported into this target (an authenticated record, _verified_export) are
            # skipped; the directories it reads are kept for the plan, which then reads no directory twice.
            self.repo.verify(commit, verified=self.checked)
            root_tree, root_meta = self.export_dir(b"", content, meta)
        finally:
            self.xorder, self.variant = None, self.base_variant
            self.checked.drop_nodes()
            self.skips.clear()
            self.unfinished.clear()
            self.unfinished_files = 0
        if original is not None:
            data, detached, _ = original
            oc_commit = oc.decode_commit(data)
            # written as it is only when all git can check agrees (gitree/storedcommit.py)
            why = stored_mismatch(oc_commit, hashlib.sha256(data).hexdigest(), commit, parent, (root_tree, root_meta))
            if why is None:
                csum = self.target.write_metadata(ObjectType.COMMIT, data)
                if detached is not None:
                    self.target.write_commitmeta(csum, oc.decode_commitmeta(detached))
                return csum
            self.warn(f"commit {commit.id}: {why}; writing a new commit")
        subject, _, body = commit.message.partition("\n")
        body = body.lstrip("\n").rstrip("\n")
        md = list(self.opts.extra_metadata)
        if ostreemeta.BLOB_NAME in top:  # a bootable commit's keys (ostree.linux, version, ...)
            md += ostreemeta.to_variants(ostreemeta.decode(
                self.repo.read_bounded(top[ostreemeta.BLOB_NAME].oid, OBJ_BLOB, limits.MAX_META_BYTES,
                                       "ostree-meta")))
        if self.opts.bindings:   # as ostree commit: the sorted refs, and the repository's collection ID
            md.append(("ostree.ref-binding", Variant("as", sorted({self.opts.ref, *self.opts.ref_bindings}))))
            if self.target.collection_id:
                md.append(("ostree.collection-binding", Variant("s", self.target.collection_id)))
        c = Commit(root_tree=root_tree, root_meta=root_meta, metadata=md, parent=parent, subject=subject,
                   body=body, timestamp=commit.commit_time)
        return self.target.write_commit(c)

    def _original(self, tree_oid: bytes, commit) -> tuple[bytes, bytes | None, bytes | None] | None:
        ent = {n: o for _, n, o in decode_tree(self.repo.read(tree_oid, OBJ_TREE, "ostree/"))}
        if OSTREE_COMMIT not in ent:
            return None
        big = limits.MAX_OSTREE_OBJECT_BYTES
        data = self.repo.read_bounded(ent[OSTREE_COMMIT], OBJ_BLOB, big, "ostree/commit")
        detached = self.repo.read_bounded(ent[OSTREE_COMMITMETA], OBJ_BLOB, big, "ostree/commitmeta") \
            if OSTREE_COMMITMETA in ent else None
        order = self.repo.read_bounded(ent[OSTREE_XATTR_ORDER], OBJ_BLOB, limits.MAX_XATTR_ORDER_BYTES,
                                       "ostree/xattr-order") if OSTREE_XATTR_ORDER in ent else None
        return data, detached, order

    def run(self, rev: str) -> ExportResult:
        tip = self.repo.resolve(rev)
        self._drop_old_cache_ref()
        chain = [tip]
        if self.opts.history:
            c = tip
            while c.parents:
                c = c.parents[0]
                chain.append(c)
            chain.reverse()
        parent = None
        if not self.opts.history:
            try:
                parent = self.target.resolve_ref(self.opts.ref)
            except oc.RefError:
                parent = None
        written = []
        done = False
        try:
            if parent is not None and self.present.vouched(parent, ObjectType.COMMIT) and \
                    self.cache.get(self._commit_key(tip, self._parent_of(parent))) == bytes.fromhex(parent):
                # the ref already names the export of REV: exporting again changes nothing
                chain, written = [], [parent]
            for c in chain:
                ckey = self._commit_key(c, parent)
                hit = self.cache.get(ckey)
                if hit is not None and self.present.vouched(hit.hex(), ObjectType.COMMIT):
                    csum = hit.hex()
                else:
                    csum = self.export_commit(c, parent)
                    self.cache.put(ckey, bytes.fromhex(csum))
                    self.present.record(csum, ObjectType.COMMIT)
                written.append(csum)
                parent = csum
            self._record_checked()
            done = True
        finally:
            if self.pool is not None and done:
                self.pool.close()
            elif self.pool is not None:
                self.pool.kill()   # a failed export: what the workers still do is of no use
            if self.inline_packs is not None:
                self.inline_packs.close()
            try:
                if done:   # a failed export records nothing: not what it wrote, checked or verified
                    self.cache.save()
            finally:
                self.cache.close()
        if self.opts.signers:  # before the ref moves: a client never sees an unsigned tip
            from .signing import sign_commit
            for csum in written:
                sign_commit(self.target, csum, self.opts.signers)
        self.target.set_ref(self.opts.ref, written[-1])
        if self.opts.update_summary:
            self.target.write_summary()
            if self.opts.signers:
                from .signing import sign_summary
                sign_summary(self.target, self.opts.signers)
        return ExportResult(written[-1], written, self.skipped, self.files_written, self.files_cached,
                            self.dirs_cached)

    def _drop_old_cache_ref(self) -> None:
        """The cache once lived in git objects under CACHE_REF, where a bundle or fetch could plant it."""
        if self.repo.git.references.get(CACHE_REF) is not None:
            with self.repo.lock():
                self.repo.git.references.delete(CACHE_REF)
            self.warn(f"ignored and deleted {CACHE_REF} (the export cache now lives in gitree/ostree-cache/)")

    def _parent_of(self, csum: str) -> str | None:
        return self.target.read_commit(csum).parent

    def _commit_key(self, c: pygit2.Commit, parent: str | None) -> bytes:
        return record_key(COMMIT, self.variant, c.id.raw, (parent or "").encode(),
                          "\n".join([self.opts.ref, *sorted(self.opts.ref_bindings)]
                                    + ([f"collection={self.target.collection_id}"] if self.target.collection_id
                                       else [])).encode() if self.opts.bindings else b"",
                    oc.encode_commitmeta(self.opts.extra_metadata) if self.opts.extra_metadata else b"")


def export_ostree(repo: Repo, rev: str, ostree_path: str, *, ref: str | None = None, mode: str = "archive",
                  bindings: bool = True, history: bool = False, strict: bool = False,
                  update_summary: bool = False, warn=None, progress=None,
                  extra_metadata: list | None = None, signers: list | None = None,
                  collection_id: str | None = None, ref_bindings: tuple[str, ...] = (),
                  compression: str | int = DEFAULT_COMPRESSION) -> ExportResult:
    if compression != COMPRESSION_REUSE and not (isinstance(compression, int) and 1 <= compression <= 9):
        raise UsageError(f"--compression must be 'reuse' or a zlib level 1-9, not {compression!r}")
    warn = warn or warner(None, "export")
    if ref is None:
        ref = _default_ref(repo, rev)
    try:
        oc.validate_ref_name(ref)
    except oc.RefError:
        raise UsageError(f"invalid OSTree ref name {ref!r} (give one with --ref)") from None
    if collection_id is not None and (len(collection_id) > 255 or not re.fullmatch(
            r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+", collection_id)):
        raise UsageError(f"invalid collection ID {collection_id!r} (reverse DNS: at least two dot-separated "
                         "elements of letters, digits and '_', not starting with a digit)")
    for r in ref_bindings:
        try:
            oc.validate_ref_name(r)
        except oc.RefError:
            raise UsageError(f"invalid OSTree ref name {r!r} in --ref-binding") from None
    try:
        if os.path.exists(os.path.join(ostree_path, "config")):
            target = OstreeRepo(ostree_path)
            if mode and target.mode != ("archive" if mode == "archive-z2" else mode):
                raise UsageError(f"{ostree_path} is a {target.mode} repository, not {mode}")
            if collection_id is not None and target.collection_id != collection_id:
                raise UsageError(f"{ostree_path} has collection ID {target.collection_id or '(none)'}, "
                                 f"not {collection_id}")
        else:
            target = OstreeRepo.create(ostree_path, mode or "archive", collection_id=collection_id)
    except oc.OstreeFormatError as e:
        raise BadInput(str(e)) from None
    if isinstance(compression, int):
        target.zlib_level = compression
    opts = ExportOptions(ref, target.mode, bindings, history, strict, update_summary, extra_metadata or [],
                         signers or [], tuple(ref_bindings), compression)
    ex = Exporter(repo, target, opts, warn, progress)
    try:
        res = ex.run(rev)
    except oc.UnsupportedContent as e:
        raise UnsupportedEntry(str(e)) from None
    except oc.OstreeFormatError as e:
        raise BadInput(f"OSTree export: {e}") from None
    if res.skipped:
        first = ", ".join(f"{display(p)} ({why})" for p, why in res.skipped[:5])
        warn(f"skipped {len(res.skipped)} entr{'y' if len(res.skipped) == 1 else 'ies'} OSTree cannot hold: "
             f"{first}{' ...' if len(res.skipped) > 5 else ''}")
    return res


def _default_ref(repo: Repo, rev: str) -> str:
    ref = repo.git.references.get("refs/heads/" + rev)
    if ref is not None:
        return rev
    try:
        full = repo.git.lookup_reference_dwim(rev).name
    except (KeyError, pygit2.InvalidSpecError):
        raise UsageError(f"{rev} is not a branch name; give the OSTree ref with --ref") from None
    if full.startswith("refs/heads/"):
        return full[len("refs/heads/"):]
    raise UsageError(f"{rev} is not a branch name; give the OSTree ref with --ref")


__all__ = ["export_ostree", "ExportResult", "ExportOptions", "CACHE_REF"]
