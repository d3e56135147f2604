"""The import engine: builds one gitree commit from a stream of entries (directory walks, tar members, OSTree
commits, a rewritten tree), and Transaction, the one way writes land (whole, or not at all).

Importer hashes and compresses small files in worker threads and streams large ones, all into one new pack;
it writes the directory trees and side tables (docs/format.md) and the commit. It takes a `repo.Repo` (object
existence, the lock, branch moves, writing the commit object) and imports nothing of it.
"""

from __future__ import annotations

import collections
import concurrent.futures
import ctypes
import hashlib
import os
import pickle
import stat
import time
from dataclasses import dataclass
from typing import Callable, Iterable, NamedTuple

from . import limits, lockfile, sidetable
from .entry import MAX_DEPTH, Entry, Kind, check_fields, split_path
from .errors import BadInput, BranchMoved, UnsafePath, UsageError, warner
from .exportcache import FILE, open_cache, record_key
from .gittree import MODE_DIR, MODE_EXEC, MODE_FILE, MODE_LINK, encode_tree
from .layout import FORMAT_BLOB, TABLE_NAME, TOP_FORMAT, TOP_META, TOP_ROOTFS
from .names import check_name, display, git_name
from .packwriter import OBJ_BLOB, OBJ_COMMIT, OBJ_TREE, PackWriter, Quarantine, hash_and_compress, object_id
from .scratch import ScratchDB

SMALL_FILE = 8 << 20          # files up to this size are hashed and compressed in worker threads
INFLIGHT_BYTES = 64 << 20     # bound on file bytes held in memory waiting for workers
BATCH_BYTES = 4 << 20         # small files are hashed and compressed in batches of this many bytes...
BATCH_FILES = 512             # ...or this many files
WORKERS = max(2, min(4, os.cpu_count() or 2))
MALLOC_ARENAS = 1             # glibc malloc arenas once worker threads run (see _cap_malloc_arenas)


def cap_malloc_arenas() -> None:
    """Keep glibc from giving each thread its own malloc arena: each reserves 64 MiB of address space, so
    the CLI's thread, the tar pump and four workers cost 384 MiB of it, which a 300 MiB RLIMIT_AS
    (docs/security.md, "Import memory") cannot spare. The threads' allocations are mostly a batch's
    compressed objects; sharing one arena costs them little. The CLI calls this before it starts its first
    thread (arenas made before stay); Importer too, for library callers. A no-op without glibc's mallopt."""
    global _arenas_capped
    if _arenas_capped:
        return
    _arenas_capped = True
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(-8, MALLOC_ARENAS)   # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


_arenas_capped = False


# ---------------------------------------------------------------------------------------------
# The tree built during an import, on disk

META_INTERN = 1 << 16        # distinct (kind, mode, owner, xattrs...) tuples remembered by value...
META_INTERN_BYTES = 8 << 20  # ...and the most bytes of xattrs and sparse maps they may hold together
OID_INTERN = 1 << 12         # recent (header, blob) pairs whose checksum record is already written
PARENT_CACHE = 1 << 12       # recent parent directories remembered by path
KNOWN_DIRS = 1 << 15         # directories a transaction remembers by key for its later trees (Transaction.add_known)

ROOT = 1                     # the root's directory id
_KINDS = list(Kind)          # a non-directory's kind is stored in its metadata tuple

# The tree as tables (gitree/scratch.py): `node` is every name in a directory: a directory (`dir`, ref its
# id) or an inode (ref its number, shared by hard links; its metadata, blob and mtime are on each of its
# names); `meta` holds the metadata tuples (kind, mode, uid, gid, xattrs, rdev, sparse), most of them
# shared. `lkey` marks the names of inodes a hard link was made to, with their path as a sort key
# (components joined by NUL, so it sorts as the canonical walk visits).
_SCHEMA = """
CREATE TABLE meta(id INTEGER PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE dir(id INTEGER PRIMARY KEY, depth INTEGER NOT NULL, meta INTEGER, mtime INTEGER,
                 n INTEGER NOT NULL DEFAULT 0, key BLOB, sealed INTEGER NOT NULL DEFAULT 0);
CREATE INDEX dir_depth ON dir(depth);
CREATE TABLE node(parent INTEGER NOT NULL, name BLOB NOT NULL, isdir INTEGER NOT NULL, ref INTEGER NOT NULL,
                  lkey BLOB, meta INTEGER, oid BLOB, mtime INTEGER, PRIMARY KEY(parent, name)) WITHOUT ROWID;
CREATE INDEX node_linked ON node(ref, lkey) WHERE lkey IS NOT NULL;
CREATE TABLE leader(ino INTEGER PRIMARY KEY, lkey BLOB NOT NULL);
CREATE TABLE written(id INTEGER PRIMARY KEY, c BLOB NOT NULL, m BLOB NOT NULL, n INTEGER NOT NULL,
                     h INTEGER NOT NULL, linked INTEGER NOT NULL);
CREATE TABLE csum(key BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID
"""

_DEFAULT_DIR_META = (Kind.DIR, 0o755, 0, 0, (), None, None)


class _Node(NamedTuple):
    isdir: bool
    ref: int                # directory id or inode number
    lkey: bytes | None
    meta: int | None        # an inode's metadata id, blob id and mtime
    oid: bytes | None
    mtime: int | None


def _row(name: bytes, meta: tuple, mtime_ns: int | None, keep_mtime: bool,
         hardlink: bytes | None = None) -> sidetable.Row:
    kind, mode, uid, gid, xattrs, rdev, sparse = meta
    return sidetable.Row(name, kind, mode, uid, gid, rdev, hardlink, mtime_ns if keep_mtime else None, xattrs,
                         sparse)


def _path_key(parts: list[bytes]) -> bytes:
    """A path's sort key: NUL sorts below every byte a name may hold, so keys sort as the walk visits."""
    return b"\0".join(parts)


@dataclass
class ImportStats:
    files: int = 0
    bytes: int = 0
    entries: int = 0
    new_objects: int = 0
    pack_bytes: int = 0
    seconds: float = 0.0


class Progress:
    """Interface for progress reporting; the CLI passes a terminal bar, tests pass nothing."""

    def update(self, files: int, nbytes: int, path: bytes = b"") -> None:  # pragma: no cover - interface
        pass

    def done(self) -> None:  # pragma: no cover - interface
        pass


# ---------------------------------------------------------------------------------------------
# Import

class Importer:
    """Builds one gitree commit from a stream of entries. Objects go into one new pack; the tree being built
    is kept in a scratch database (gitree/scratch.py), so memory stays bounded whatever the entry count."""

    def __init__(self, repo, *, keep_mtime: bool = False, level: int = 6,
                 progress: Progress | None = None, warn: Callable[[str], None] | None = None,
                 pack: PackWriter | None = None):
        self.repo = repo
        self.keep_mtime = keep_mtime
        self.level = level
        self.progress = progress
        self.warn = warn or warner(None, "export-cache")   # the caller's channel, else errors.print_warning
        # `pack`: the pack of earlier trees of a Transaction (their caller installs or aborts it)
        self._own_pack = pack is None
        self.pack = PackWriter(repo.objects_dir) if pack is None else pack
        try:
            self.t = ScratchDB(self.pack.pack_dir, f"{id(self):x}_tree", _SCHEMA)
        except BaseException:
            if self._own_pack:
                self.pack.abort()
            raise
        self._sql = self.t.db.execute
        self._sql("INSERT INTO dir(id, depth) VALUES (?, 0)", (ROOT,))
        cap_malloc_arenas()
        self.pool = concurrent.futures.ThreadPoolExecutor(WORKERS, thread_name_prefix="gitree-hash")
        self.pending: collections.deque = collections.deque()  # (inodes, bytes, future of a batch)
        self.pending_bytes = 0
        self.batch: list[tuple[tuple, tuple, bytes]] = []        # ((parent, name, inode), metadata, data)
        self.batch_bytes = 0
        self.stats = ImportStats()
        self._t0 = time.monotonic()
        # OSTree content checksums of the files, computed while their bytes pass through anyway, for the
        # export cache (keyed as export-ostree keys them: file header bytes + blob id); saved with the commit.
        # One record per distinct (header, blob) (`_recent` skips most repeats, the table the rest).
        self._recent: dict[tuple[bytes, bytes], None] = {}
        self._prefixes: dict[tuple, bytes] = {}
        self._meta_ids: dict[tuple, int] = {}
        self._meta_bytes = 0
        self._metas: dict[int, tuple] = {}       # id -> tuple, for writing the trees (bounded as _meta_ids)
        self._parents: dict[bytes, int] = {}     # parent path -> directory id (a directory named as a parent
                                                 # holds a child, so it can never be replaced)
        self._counts: dict[int, int] = {}        # entries of the directories in _parents (the rest: dir.n)
        self._inodes = 0                         # inode numbers given out
        self._link_pending: set[int] = set()     # linked inodes whose blob a worker is still hashing
        self._csums: list[tuple[bytes, bytes]] = []
        self._keys = 0                           # directories added with a key (see Transaction.add_known)
        self._nsealed = 0                        # directories added whole, their trees already written
        # after finish_tree: (key, c, m, n, h, digest of the directory's own fields) of the keyed directories
        self.keyed: list[tuple[bytes, bytes, bytes, int, int, bytes]] = []

    # objects

    def _file_prefix(self, meta: tuple) -> bytes:
        """The OSTree file header export-ostree hashes for a file of this metadata (sorted xattrs, empty
        values dropped)."""
        _, mode, uid, gid, xattrs, _, _ = meta
        k = (uid, gid, mode, xattrs)
        p = self._prefixes.get(k)
        if p is None:
            import gitree_compat as oc  # here: commands that never import files need not load it
            p = oc.file_stream_prefix(oc.FileMeta(uid, gid, stat.S_IFREG | mode, b"", oc.canonical_xattrs(xattrs)))
            if len(self._prefixes) >= META_INTERN:
                self._prefixes.clear()
            self._prefixes[k] = p
        return p

    def _record_checksum(self, prefix: bytes, oid: bytes, digest: bytes) -> None:
        k = (prefix, oid)
        if k in self._recent:   # many files of the same header and content: one record
            return
        if len(self._recent) >= OID_INTERN:
            self._recent.clear()
        self._recent[k] = None
        self._csums.append((record_key(FILE, prefix, oid), digest))
        if len(self._csums) >= 4096:
            self._flush_csums()

    def _flush_csums(self) -> None:
        self.t.db.executemany("INSERT OR IGNORE INTO csum VALUES (?, ?)", self._csums)
        self._csums.clear()

    def _save_checksums(self) -> None:
        cache = open_cache(self.repo.path, self.warn)
        if cache is None:
            return
        try:
            self._flush_csums()
            n = self._sql("SELECT count(*) FROM csum").fetchone()[0]
            if n:
                cache.save(self._sql("SELECT key, value FROM csum ORDER BY key"), n)
        finally:
            cache.close()

    def _meta(self, e: Entry) -> int:
        """The id of an entry's (kind, mode, uid, gid, xattrs, rdev, sparse) tuple, shared by equal ones."""
        m = (e.kind, e.mode, e.uid, e.gid, e.xattrs, e.rdev, e.sparse)
        mid = self._meta_ids.get(m) if e.sparse is None else None
        if mid is None:
            mid = self._sql("INSERT INTO meta(data) VALUES (?)",
                                 (pickle.dumps(m, pickle.HIGHEST_PROTOCOL),)).lastrowid
            if e.sparse is None:
                weight = sum(len(k) + len(v) for k, v in e.xattrs)
                if len(self._meta_ids) >= META_INTERN or self._meta_bytes + weight > META_INTERN_BYTES:
                    self._meta_ids.clear()
                    self._meta_bytes = 0
                self._meta_ids[m] = mid
                self._meta_bytes += weight
        return mid

    def _meta_of(self, mid: int | None) -> tuple:
        if mid is None:
            return _DEFAULT_DIR_META
        m = self._metas.get(mid)
        if m is None:
            m = pickle.loads(self._sql("SELECT data FROM meta WHERE id=?", (mid,)).fetchone()[0])
            if len(self._metas) >= META_INTERN or len(m[4]) > 64 or m[6] is not None:
                self._metas.clear()   # big or one-off tuples are not kept
            else:
                self._metas[mid] = m
        return m

    def _exists(self, oid: bytes) -> bool:
        return oid in self.pack or self.repo.exists(oid)

    def _hash_job(self, datas: list[bytes], prefixes: list[bytes]) -> list[tuple[bytes, bytes | None, bytes]]:
        out = []
        for data, prefix in zip(datas, prefixes, strict=True):
            h = hashlib.sha256(prefix)
            h.update(data)
            oid = object_id(OBJ_BLOB, data)
            if self.pack.might_contain(oid) or self.repo.exists(oid):   # else add_raw drops a repeat
                out.append((oid, None, h.digest()))
            else:
                out.append((*hash_and_compress(OBJ_BLOB, data, self.level), h.digest()))
        return out

    def _submit_batch(self) -> None:
        """Hand the collected small files to a worker as one job (a future per file costs too much)."""
        if not self.batch:
            return
        inodes = [(where, self._file_prefix(meta)) for where, meta, _ in self.batch]
        fut = self.pool.submit(self._hash_job, [d for _, _, d in self.batch], [p for _, p in inodes])
        self.pending.append((inodes, self.batch_bytes, fut))
        self.pending_bytes += self.batch_bytes
        self.batch, self.batch_bytes = [], 0
        self._drain(INFLIGHT_BYTES, 2 * WORKERS)

    def store(self, otype: int, data: bytes) -> bytes:
        oid = object_id(otype, data)
        if not (self.pack.might_contain(oid) or self.repo.exists(oid)):
            self.pack.add_raw(oid, hash_and_compress(otype, data, self.level).entry)
        return oid

    def _drain(self, limit_bytes: int, limit_count: int) -> None:
        while self.pending and (self.pending_bytes > limit_bytes or len(self.pending) > limit_count):
            inodes, size, fut = self.pending.popleft()
            self.pending_bytes -= size
            done = []
            for ((parent, name, ino), prefix), (oid, entry, digest) in zip(inodes, fut.result(), strict=True):
                if entry is not None:
                    self.pack.add_raw(oid, entry)
                done.append((oid, parent, name, ino))
                self._record_checksum(prefix, oid, digest)
                if ino in self._link_pending:
                    self._link_pending.discard(ino)
                    self._sql("UPDATE node SET oid=? WHERE lkey IS NOT NULL AND ref=?", (oid, ino))
            # (the name may have been replaced meanwhile: then its inode differs and nothing is updated)
            self.t.db.executemany("UPDATE node SET oid=? WHERE parent=? AND name=? AND ref=? AND isdir=0", done)

    # tree building

    def _child(self, parent: int, name: bytes) -> _Node | None:
        r = self._sql("SELECT isdir, ref, lkey, meta, oid, mtime FROM node WHERE parent=? AND name=?",
                           (parent, name)).fetchone()
        return None if r is None else _Node(bool(r[0]), *r[1:])

    def _count_child(self, parent: int, path: bytes) -> None:
        """One more entry in directory `parent`: refused past MAX_DIR_ENTRIES (the reader's limit)."""
        n = self._counts.get(parent)
        if n is None:
            n = self._sql("UPDATE dir SET n=n+1 WHERE id=? RETURNING n", (parent,)).fetchone()[0]
        else:
            n = self._counts[parent] = n + 1
        if n > limits.MAX_DIR_ENTRIES:
            raise BadInput(f"{display(path)}: more than {limits.MAX_DIR_ENTRIES} entries in one directory "
                           "(MAX_DIR_ENTRIES)")

    def _new_dir(self, parent: int, name: bytes, depth: int, meta: int | None, mtime: int | None,
                 key: bytes | None = None, sealed: int = 0) -> int:
        d = self._sql("INSERT INTO dir(depth, meta, mtime, key, sealed) VALUES (?, ?, ?, ?, ?)",
                      (depth, meta, mtime, key, sealed)).lastrowid
        self._sql("INSERT OR REPLACE INTO node(parent, name, isdir, ref) VALUES (?, ?, 1, ?)", (parent, name, d))
        return d

    def _dir_id(self, parts: list[bytes], path: bytes) -> int:
        """The directory holding the entry at `parts`, made (as implicit directories) where missing."""
        key = _path_key(parts[:-1])
        d = self._parents.get(key)
        if d is not None:
            return d
        d = ROOT
        for i, comp in enumerate(parts[:-1]):
            child = self._child(d, comp)
            if child is None:
                self._count_child(d, path)
                d = self._new_dir(d, comp, i + 1, None, None)
            elif not child.isdir:
                raise UnsafePath(f"{display(path)}: parent {display(b'/'.join(parts[:i + 1]))} is not a "
                                 "directory (a member through a symlink or file?)")
            else:
                d = child.ref
                if self._sealed(d):
                    raise UsageError(f"{display(path)}: inside {display(b'/'.join(parts[:i + 1]))}, a directory "
                                     "added whole")
        if len(self._parents) >= PARENT_CACHE:
            self._parents.clear()
            self.t.db.executemany("UPDATE dir SET n=? WHERE id=?", [(n, i) for i, n in self._counts.items()])
            self._counts.clear()
        self._parents[key] = d
        if d not in self._counts:
            self._counts[d] = self._sql("SELECT n FROM dir WHERE id=?", (d,)).fetchone()[0]
        return d

    def _sealed(self, d: int) -> bool:
        """Whether directory `d` was added whole (add_written_dir): nothing may be added inside it."""
        return bool(self._nsealed) and self._sql("SELECT sealed FROM dir WHERE id=?", (d,)).fetchone()[0] == 1

    def _lookup(self, path: bytes) -> tuple[int, bytes, _Node] | None:
        """(parent directory id, name, node) of the entry at `path` in the tree being built, or None."""
        parts = split_path(path)
        if not parts:
            return None
        d = self._parents.get(_path_key(parts[:-1]))
        if d is None:
            d = ROOT
            for comp in parts[:-1]:
                child = self._child(d, comp)
                if child is None or not child.isdir:
                    return None
                d = child.ref
        node = self._child(d, parts[-1])
        return None if node is None else (d, parts[-1], node)

    def add(self, e: Entry, data: Callable[[], Iterable[bytes]] | None = None, rereadable: bool = False, *,
            oid: bytes | None = None, key: bytes | None = None) -> None:
        """Add one entry. `data` yields a regular file's bytes (e.size of them). A regular file given `oid`
        (a blob of this repository, or of this import: see blob_id) takes that blob and e.size, after the same
        checks of its name, fields and parents, without reading any data. A directory given `key` has its
        written trees listed under it in `keyed` once the tree is finished (Transaction.add_known)."""
        if oid is not None and (e.kind is not Kind.FILE or e.hardlink is not None or data is not None):
            raise UsageError(f"{display(e.path)}: only a regular file without data or hard link takes a blob id")
        if key is not None:
            if e.kind is not Kind.DIR or e.hardlink is not None:
                raise UsageError(f"{display(e.path)}: only a directory takes a key")
            self._keys += 1
        self._admit(e, 1)
        if e.path == b"":
            if e.kind is not Kind.DIR:
                raise UnsafePath("the root of the tree must be a directory")
            self._sql("UPDATE dir SET meta=?, mtime=?, key=? WHERE id=?", (self._meta(e), e.mtime_ns, key, ROOT))
            return
        parts = split_path(e.path)
        if len(parts) > MAX_DEPTH:
            raise BadInput(f"{display(e.path[:200])}...: deeper than {MAX_DEPTH} levels")
        for comp in parts:
            check_name(comp, e.path)
        parent = self._dir_id(parts, e.path)
        name = parts[-1]
        old = self._child(parent, name)
        if old is None:
            self._count_child(parent, e.path)
        elif old.isdir and self._sealed(old.ref):
            raise UsageError(f"{display(e.path)}: replaces a directory added whole")
        if e.kind is Kind.DIR and e.hardlink is None:
            if old is not None and old.isdir:
                self._sql("UPDATE dir SET meta=?, mtime=?, key=? WHERE id=?",
                          (self._meta(e), e.mtime_ns, key, old.ref))
            else:
                self._new_dir(parent, name, len(parts), self._meta(e), e.mtime_ns, key)
            return
        if old is not None and old.isdir:
            if self._sql("SELECT 1 FROM node WHERE parent=? LIMIT 1", (old.ref,)).fetchone():
                raise UnsafePath(f"{display(e.path)}: replaces a non-empty directory")
            self._sql("DELETE FROM dir WHERE id=?", (old.ref,))
        if e.hardlink is not None:
            self._add_link(e, parent, name, parts)
            return
        meta = self._meta(e)
        self._inodes += 1
        ino = self._inodes
        if oid is not None:
            oid = self._known_blob(oid, e.path)
            self.stats.files += 1
            self.stats.bytes += e.size
            self._tick(e.path)
        elif e.kind is Kind.SYMLINK:
            oid = self.store(OBJ_BLOB, e.target or b"")
        elif e.kind is Kind.FILE:
            oid = self._add_content((parent, name, ino), e, data, rereadable)
        self._sql("INSERT OR REPLACE INTO node VALUES (?, ?, 0, ?, NULL, ?, ?, ?)",
                       (parent, name, ino, meta, oid, e.mtime_ns))

    def _admit(self, e: Entry, entries: int) -> None:
        """The checks of every entry added: the tree's entry limit (`entries` more), the fields, the root."""
        self.stats.entries += entries
        if self.stats.entries > limits.MAX_COMMIT_ENTRIES:
            raise BadInput(f"more than {limits.MAX_COMMIT_ENTRIES} entries in one tree (MAX_COMMIT_ENTRIES, "
                           "the limit of one walk)")
        why = check_fields(e)
        if why is not None:
            raise BadInput(f"{display(e.path)}: {why}")
        if self._sealed(ROOT):
            raise UsageError(f"{display(e.path)}: the tree's root was added whole")

    def add_written_dir(self, e: Entry, c: bytes, m: bytes, n: int, h: int, key: bytes | None = None) -> None:
        """Add directory `e` whole: its content tree `c` and meta tree `m` are already written (by an earlier
        tree of this transaction: Transaction.add_known), with `n` entries beneath it, `h` levels deep. Its
        entries count toward MAX_COMMIT_ENTRIES and its depth toward MAX_DEPTH; nothing can be added inside it
        afterwards. The trees must hold no hard link (its leader's path would be another tree's): only
        directories without one are keyed. With `key`, it is listed in `keyed` again."""
        if e.kind is not Kind.DIR or e.hardlink is not None:
            raise UsageError(f"{display(e.path)}: only a directory is added whole")
        if key is not None:
            self._keys += 1
        if not (self._exists(c) and self._exists(m)):
            raise UsageError(f"{display(e.path)}: its trees are not in the repository")
        self._admit(e, 1 + n)
        parts = split_path(e.path)
        if len(parts) + h > MAX_DEPTH:
            raise BadInput(f"{display(e.path[:200])}: its directories reach deeper than {MAX_DEPTH} levels")
        self._nsealed += 1
        if not parts:
            if self._sql("SELECT 1 FROM node LIMIT 1").fetchone() is not None:
                raise UsageError("the root is added whole into a tree already holding entries")
            self._sql("UPDATE dir SET meta=?, mtime=?, key=?, sealed=1 WHERE id=?",
                      (self._meta(e), e.mtime_ns, key, ROOT))
            d = ROOT
        else:
            for comp in parts:
                check_name(comp, e.path)
            parent = self._dir_id(parts, e.path)
            if self._child(parent, parts[-1]) is not None:
                raise UsageError(f"{display(e.path)}: already in the tree being built")
            self._count_child(parent, e.path)
            d = self._new_dir(parent, parts[-1], len(parts), self._meta(e), e.mtime_ns, key, sealed=1)
        self._sql("INSERT INTO written VALUES (?, ?, ?, ?, ?, 0)", (d, c, m, n, h))

    def _add_link(self, e: Entry, parent: int, name: bytes, parts: list[bytes]) -> None:
        """A hard link: the name shares the inode its target names now."""
        found = self._lookup(e.hardlink)
        if found is None:
            raise BadInput(f"{display(e.path)}: hard link to {display(e.hardlink)}, which does not exist "
                           "earlier in the archive")
        tparent, tname, target = found
        if target.isdir:
            raise UnsafePath(f"{display(e.path)}: hard link to a directory {display(e.hardlink)}")
        if target.lkey is None:
            self._sql("UPDATE node SET lkey=? WHERE parent=? AND name=?",
                           (_path_key(split_path(e.hardlink)), tparent, tname))
        if target.oid is None and self._meta_of(target.meta)[0] is Kind.FILE:
            self._link_pending.add(target.ref)     # its blob comes when its batch is hashed
        self._sql("INSERT OR REPLACE INTO node VALUES (?, ?, 0, ?, ?, ?, ?, ?)",
                       (parent, name, target.ref, _path_key(parts), target.meta, target.oid, target.mtime))

    def _known_blob(self, oid: bytes, path: bytes) -> bytes:
        """`oid` for a file added with it: a blob in the repository or this import's pack. One still waiting
        in a batch of small files (blob_id of a file just added) is hashed first."""
        if not self._exists(oid) and (self.batch or self.pending):
            self._flush()
        if not self._exists(oid):
            raise UsageError(f"{display(path)}: blob {oid.hex()} is neither in the repository nor in this import")
        return oid

    def _flush(self) -> None:
        self._submit_batch()
        self._drain(-1, -1)

    def blob_id(self, path: bytes) -> bytes:
        """The git blob id of the regular file added at `path` in the tree being built (to add more files of
        the same content with `add(..., oid=)`); a file still waiting in a batch of small files is hashed
        first."""
        found = self._lookup(path)
        if found is None or found[2].isdir or self._meta_of(found[2].meta)[0] is not Kind.FILE:
            raise UsageError(f"{display(path)}: no regular file at this path of the tree being built")
        if found[2].oid is not None:
            return found[2].oid
        self._flush()
        return self._lookup(path)[2].oid

    def _add_content(self, where: tuple[int, bytes, int], e: Entry, data, rereadable: bool) -> bytes | None:
        """Hash and pack a regular file's bytes: its blob id, or None while its batch waits for a worker."""
        size = e.size
        self.stats.files += 1
        self.stats.bytes += size
        if data is None:
            data = lambda: [b""]  # noqa: E731
        meta = (e.kind, e.mode, e.uid, e.gid, e.xattrs, e.rdev, e.sparse)
        if size <= SMALL_FILE:
            buf = b"".join(data())
            if len(buf) != size:
                raise BadInput(f"{display(e.path)}: read {len(buf)} bytes, expected {size} (file changed?)")
            self.batch.append((where, meta, buf))
            self.batch_bytes += size
            if self.batch_bytes >= BATCH_BYTES or len(self.batch) >= BATCH_FILES:
                self._submit_batch()
            self._tick(e.path)
            return None
        else:
            prefix = self._file_prefix(meta)
            csum = hashlib.sha256(prefix)
            oid = None
            if rereadable:
                from .packwriter import object_header
                h = hashlib.sha1(object_header(OBJ_BLOB, size))
                for chunk in data():
                    h.update(chunk)
                    csum.update(chunk)
                if self._exists(h.digest()):
                    oid = h.digest()
                else:
                    csum = hashlib.sha256(prefix)
            if oid is None:
                def hashed():
                    for chunk in data():
                        csum.update(chunk)
                        yield chunk
                try:
                    oid = self.pack.add_stream(OBJ_BLOB, size, hashed(), self.level, self._exists)
                except ValueError as err:
                    raise BadInput(f"{display(e.path)}: {err}") from None
            self._record_checksum(prefix, oid, csum.digest())
        self._tick(e.path)
        return oid

    def _tick(self, path: bytes) -> None:
        if self.progress is not None:
            self.progress.update(self.stats.files, self.stats.bytes, path)

    # finishing

    def finish_tree(self, extra_top=()) -> bytes:
        """Write every tree and table; return the top tree id. `extra_top`: more (mode, name, oid) entries."""
        self._flush()
        t = self.t
        # the leader of each inode named more than once: its first path in canonical order
        t.execute("INSERT INTO leader SELECT ref, min(lkey) FROM node WHERE lkey IS NOT NULL "
                  "GROUP BY ref HAVING count(*) > 1")
        dirs = t.db.cursor()
        # children before parents; a directory added whole is written already
        dirs.execute("SELECT id, meta, mtime FROM dir WHERE sealed=0 ORDER BY depth DESC")
        for d, dmeta, dmtime in dirs:
            t.execute("INSERT INTO written VALUES (?, ?, ?, ?, ?, ?)", (d, *self._write_dir(d, dmeta, dmtime)))
        c, m = t.execute("SELECT c, m FROM written WHERE id=?", (ROOT,)).fetchone()
        if self._keys:   # the shallowest first: each stands for all it holds
            self.keyed = [(k, wc, wm, n, h, fields_digest(self._meta_of(meta), mtime)) for k, wc, wm, n, h, meta, mtime
                          in t.execute("SELECT d.key, w.c, w.m, w.n, w.h, d.meta, d.mtime FROM dir d JOIN written w "
                                       "ON w.id=d.id WHERE d.key IS NOT NULL AND w.linked=0 ORDER BY d.depth "
                                       "LIMIT ?", (KNOWN_DIRS,))]
        fmt = self.store(OBJ_BLOB, FORMAT_BLOB)
        top = [(MODE_FILE, TOP_FORMAT, fmt), (MODE_DIR, TOP_META, m), (MODE_DIR, TOP_ROOTFS, c)]
        return self.store(OBJ_TREE, encode_tree(top + list(extra_top)))

    def _write_dir(self, d: int, dmeta: int | None, dmtime: int | None) -> tuple[bytes, bytes, int, int, int]:
        """Write one directory's content tree, meta tree and side table (its subdirectories are written);
        return the two trees, the entries beneath it, its height in levels and whether a name beneath it is
        hard-linked."""
        centries, mentries, rows = [], [], []
        sparse = False
        beneath = height = linked = 0
        children = self._sql(
            "SELECT n.name, n.isdir, n.lkey, l.lkey, n.meta, n.oid, n.mtime, w.c, w.m, s.meta, s.mtime, w.n, w.h, "
            "w.linked "
            "FROM node n LEFT JOIN leader l ON n.lkey IS NOT NULL AND l.ino=n.ref "
            "LEFT JOIN written w ON n.isdir=1 AND w.id=n.ref "
            "LEFT JOIN dir s ON n.isdir=1 AND s.id=n.ref "
            "WHERE n.parent=? ORDER BY n.name", (d,))
        for name, isdir, lkey, lead, imeta, oid, imtime, wc, wm, smeta, smtime, wn, wh, wl in children:
            gname = git_name(name)
            beneath += 1
            if isdir:
                beneath += wn
                height = max(height, wh + 1)
                linked |= wl
                centries.append((MODE_DIR, gname, wc))
                mentries.append((MODE_DIR, gname, wm))
                rows.append(sidetable.encode_row(_row(name, self._meta_of(smeta), smtime, self.keep_mtime)))
                continue
            meta = self._meta_of(imeta)
            hl = lead.replace(b"\0", b"/") if lead is not None and lead != lkey else None
            if lkey is not None:
                linked = 1
            rows.append(sidetable.encode_row(_row(name, meta, imtime, self.keep_mtime, hl)))  # in name order
            kind = meta[0]
            if meta[6] is not None:
                sparse = True
            if kind is Kind.FILE:
                centries.append((MODE_EXEC if meta[1] & 0o100 else MODE_FILE, gname, oid))
            elif kind is Kind.SYMLINK:
                centries.append((MODE_LINK, gname, oid))
        table = sidetable.table_from_lines(_row(sidetable.SELF, self._meta_of(dmeta), dmtime, self.keep_mtime),
                                           rows, sparse)
        del rows
        mentries.append((MODE_FILE, TABLE_NAME, self.store(OBJ_BLOB, table)))
        return self.store(OBJ_TREE, encode_tree(centries)), self.store(OBJ_TREE, encode_tree(mentries)), \
            beneath, height, linked

    def commit_object(self, message: str, timestamp: int | None, parents: list[bytes], extra_top=(),
                      author: tuple[str, str] | None = None, *, branch: str | None = None,
                      lock_wait: Callable[[], None] | None = None, keep_pack: bool = False,
                      written: frozenset | set = frozenset()) -> bytes:
        """Finish, install the pack and write a commit object. With `branch`, the branch's tip is the parent
        (instead of `parents`) and the branch moves to the commit, last and atomically, under the lock.
        With `keep_pack` (or a pack this importer was given), the commit goes into the pack, which is not
        installed: the caller installs it (a chain of commits, one pack: Transaction.write_commit); a parent
        may then be one of the commits in `written`, those it holds."""
        try:
            self.repo.check_commit(message, timestamp)   # before the pack is installed
            top = self.finish_tree(extra_top)
            self.pool.shutdown(wait=True)
            if branch is None and (keep_pack or not self._own_pack):
                cid = self.store(OBJ_COMMIT, self.repo.commit_bytes(top, parents, message, timestamp, author,
                                                                     written))
                self.stats.new_objects = self.pack.count
                self.stats.pack_bytes = self.pack.bytes_written
                self._done()            # may fail: the pack is still this importer's to delete (or the caller's)
                self._own_pack = False
                return cid
            with self.repo.lock(on_wait=lock_wait):
                self._install()
                if branch is not None:
                    old = self.repo.branch_tip(branch)
                    parents = [old] if old is not None else []
                cid = self.repo.write_commit(top, parents, message, timestamp, author)
                if branch is not None:
                    self.repo.set_branch(branch, cid, old, f"gitree: {message.splitlines()[0] if message else ''}")
        except BaseException:
            self.abort()
            raise
        finally:
            self._done()
        return cid

    def _done(self) -> None:
        if self.t.db is None:   # aborted
            return
        try:
            self._save_checksums()
        finally:
            self.t.close()
        self.stats.seconds = time.monotonic() - self._t0

    def _install(self) -> None:
        self.stats.new_objects = self.pack.count
        self.stats.pack_bytes = self.pack.bytes_written
        self.pack.install()

    def commit(self, branch: str, message: str, timestamp: int | None, extra_top=(),
               author: tuple[str, str] | None = None, lock_wait: Callable[[], None] | None = None) -> bytes:
        """commit_object on `branch` (its tip the parent; the branch moves last). The caller owns the progress
        display and ends it."""
        return self.commit_object(message, timestamp, [], extra_top, author, branch=branch, lock_wait=lock_wait)

    def abort(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        if self._own_pack:
            self.pack.abort()
        self.t.close()


def fields_digest(meta: tuple, mtime_ns: int | None) -> bytes:
    """A digest of a directory's own fields (its metadata tuple and mtime), to tell that a directory taken
    whole (Transaction.add_known) has the fields of the one that was written."""
    _, mode, uid, gid, xattrs, rdev, sparse = meta
    fields = (mode, uid, gid, tuple(tuple(x) for x in xattrs), rdev, sparse, mtime_ns)
    return hashlib.sha256(pickle.dumps(fields, pickle.HIGHEST_PROTOCOL)).digest()


class Transaction:
    """Writes that land whole or not at all, in libostree's shape::

        with repo.transaction(level=1) as tx:
            tx.add(entry, data)                  # files, directories... of the next tree
            tx.commit(branch="main", message="...")

    `add`/`store` build a tree in a new pack (gitree.importer.Importer). `write_commit` turns the tree built so
    far into a commit object without moving a branch (a chain of commits: import-ostree); the commit goes into
    the same pack, which the next tree goes on filling, so a chain of any length is one pack. `set_ref` stages
    a branch move. `commit` writes the pending tree (if any) as a commit on `branch` (parents: the branch's
    tip, or `parents`), then, under the repository lock, checks that every staged branch is still where it
    was (BranchMoved otherwise), installs the pack (never deleted after) and moves them. Leaving the block
    without `commit` - an exception, a return - aborts: the temporary pack is deleted, commits written by
    `write_commit` with it, and no branch moves.
    """

    def __init__(self, repo, *, keep_mtime: bool = False, level: int = 1, progress: Progress | None = None,
                 warn: Callable[[str], None] | None = None):
        self.repo = repo
        self.keep_mtime, self.level, self.progress, self.warn = keep_mtime, level, progress, warn
        self._tree: Importer | None = None
        self._chain: PackWriter | None = None   # the pack of the commits write_commit wrote, and later trees
        self._commits: set[bytes] = set()         # the commits in it
        self._raw: list[PackWriter] = []        # packs of objects that arrive whole, not yet staged
        self._quarantine: Quarantine | None = None   # where they are staged: readable by a view only
        self._refs: list[tuple[str, bytes, bytes | None, str]] = []
        # key -> (c, m, entries beneath, height, fields digest), the least recently used first
        self._known: collections.OrderedDict[bytes, tuple] = collections.OrderedDict()
        self.stats = ImportStats()
        self.done = False
        # held until the transaction ends: gc waits, so nothing this transaction finds present (and skips)
        # is repacked away before a branch names it
        self._in_use = repo.objects_in_use(getattr(progress, "waiting", None))

    def _release(self) -> None:
        self.done = True
        if self._in_use >= 0:
            lockfile.release(self._in_use)
            self._in_use = -1

    def __del__(self) -> None:      # a transaction dropped unfinished must not hold gc off forever
        if getattr(self, "_in_use", -1) >= 0:
            try:
                lockfile.release(self._in_use)
            except OSError:
                pass
            self._in_use = -1

    def __enter__(self) -> "Transaction":
        return self

    def __exit__(self, et, ev, tb) -> bool:
        if not self.done:
            self.abort()
        return False

    @property
    def tree(self) -> Importer:
        """The tree being built (started on first use)."""
        if self.done:
            raise UsageError("the transaction is finished")
        if self._tree is None:
            self._tree = Importer(self.repo, keep_mtime=self.keep_mtime, level=self.level, progress=self.progress,
                                  warn=self.warn, pack=self._chain)
            self.stats = self._tree.stats
        return self._tree

    def add(self, entry: Entry, data=None, rereadable: bool = False, *, oid: bytes | None = None,
            key: bytes | None = None) -> None:
        """Importer.add on the tree being built (`oid`: a regular file whose blob is known). A directory given
        `key` is remembered under it once its tree is written: later trees of this transaction can then take
        it whole (add_known). The key is the caller's name for the directory's whole content (an OSTree
        dirtree and dirmeta checksum), given once all of it was added; a directory with a hard-linked name
        beneath it is not remembered (its leaders' paths belong to this tree)."""
        self.tree.add(entry, data, rereadable, oid=oid, key=key)

    def add_known(self, entry: Entry, key: bytes) -> bool:
        """Add directory `entry` whole, as an earlier tree of this transaction wrote the directory added with
        `key`, without its entries (they count toward the tree's limits): True, or False when no directory
        of that key is remembered (KNOWN_DIRS of them, the least recently written or taken out first; the
        shallowest of a tree stay longest). `entry`'s own fields must be those of the directory that was
        added with `key`."""
        known = self._known.get(key)
        if known is None:
            return False
        c, m, n, h, digest = known
        if fields_digest((Kind.DIR, entry.mode, entry.uid, entry.gid, entry.xattrs, entry.rdev, entry.sparse),
                         entry.mtime_ns) != digest:
            raise UsageError(f"{display(entry.path)}: its fields differ from those of the directory added with "
                             "that key")
        self._known.move_to_end(key)
        self.tree.add_written_dir(entry, c, m, n, h, key)
        return True

    def _remember(self, imp: Importer) -> None:
        for k, *v in reversed(imp.keyed):   # the deepest first: a tree's shallowest stay longest
            self._known[k] = tuple(v)
            self._known.move_to_end(k)
        while len(self._known) > KNOWN_DIRS:
            self._known.popitem(last=False)

    def blob_id(self, path: bytes) -> bytes:
        """Importer.blob_id: the blob of the file added at `path` in the tree being built."""
        return self.tree.blob_id(path)

    def store(self, otype: int, data: bytes) -> bytes:
        return self.tree.store(otype, data)

    def raw_pack(self) -> PackWriter:
        """A pack for objects that arrive whole (bundle apply). `stage_packs` finishes it into a quarantine,
        `publish_packs` (or `commit`) makes it part of the repository; an abort before that deletes it."""
        if self.done:
            raise UsageError("the transaction is finished")
        p = PackWriter(self.repo.objects_dir)
        self._raw.append(p)
        return p

    def stage_packs(self) -> str | None:
        """Finish the raw packs into a quarantine (packwriter.Quarantine) and return its objects directory,
        for a view that verifies them (Repo.with_objects); None when no object arrived. No other reader or
        writer sees them yet, so refusing them (abort) cannot take an object from anybody."""
        if self._raw and self._quarantine is None:
            self._quarantine = Quarantine(self.repo.objects_dir)
        while self._raw:
            self._quarantine.add(self._raw.pop(0))
        return self._quarantine.path if self._quarantine is not None and self._quarantine.packs else None

    def publish_packs(self) -> None:
        """Move the staged packs into the repository. Never deleted by the transaction after this: other writers
        may count on their objects from then on."""
        self.stage_packs()
        if self._quarantine is not None:
            q, self._quarantine = self._quarantine, None
            q.publish()

    def write_commit(self, *, message: str, timestamp: int | None = None, parents: list[bytes] = (),
                     extra_top=(), author: tuple[str, str] | None = None) -> bytes:
        """The tree built so far as a commit object with these parents; no branch moves. The next `add`
        starts a new tree."""
        imp, self._tree = self.tree, None
        cid = imp.commit_object(message, timestamp, list(parents), extra_top, author, keep_pack=True,
                                written=self._commits)
        self._chain = imp.pack
        self._commits.add(cid)
        self._remember(imp)
        return cid

    def set_ref(self, branch: str, new: bytes, old: bytes | None, message: str = "gitree") -> None:
        """Move `branch` from `old` (None: it must not exist) to `new` when the transaction commits."""
        self.repo.branch_ref(branch)
        self._refs.append((branch, new, old, message))

    def commit(self, *, branch: str | None = None, message: str = "", timestamp: int | None = None,
               extra_top=(), author: tuple[str, str] | None = None,
               lock_wait: Callable[[], None] | None = None) -> bytes | None:
        """Finish: the pending tree as a commit on `branch` (its tip is the parent), then the staged branch
        moves. Returns the new commit (None when no tree was pending)."""
        if self.done:
            raise UsageError("the transaction is finished")
        cid = None
        try:
            if self._tree is not None:
                if branch is None:
                    raise UsageError("a tree is pending: commit it on a branch, or write_commit it")
                imp, self._tree = self._tree, None
                cid = imp.commit(branch, message, timestamp, extra_top, author, lock_wait)
                self._chain = None      # it installed the chain's pack (its own)
            if self._refs or self._chain is not None:
                with self.repo.lock(on_wait=lock_wait):
                    for b, _new, old, _ in self._refs:   # all or nothing: check every branch first
                        if self.repo.branch_tip(b) != old:
                            raise BranchMoved(f"branch {b} moved during the operation; nothing was changed")
                    if self._chain is not None:
                        # installed after every check, before a branch names what it holds, and never
                        # deleted after: from then on other writers may count on its objects (gc drops
                        # them if no branch comes to hold them)
                        chain, self._chain = self._chain, None
                        chain.install()
                    self.publish_packs()    # raw packs too, before a branch names what they hold
                    for b, new, old, msg in self._refs:
                        self.repo.set_branch(b, new, old, msg)
            # raw packs no staged branch names (bundle apply publishes its own under its lock): a pack
            # appearing is safe without the lock (gc's repack deletes only the packs it listed when it began)
            self.publish_packs()
        except BaseException:
            self.abort()
            raise
        self._release()
        return cid

    def abort(self) -> None:
        """Drop the tree being built (its temporary pack included) and every staged branch move."""
        if self._tree is not None:
            self._tree.abort()
            self._tree = None
        if self._chain is not None:
            self._chain.abort()
            self._chain = None
        for p in self._raw:
            p.abort()
        self._raw.clear()
        if self._quarantine is not None:
            self._quarantine.remove()
            self._quarantine = None
        self._refs.clear()
        self._release()


__all__ = ["Importer", "Transaction", "ImportStats", "Progress"]
