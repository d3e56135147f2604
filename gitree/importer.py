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
import contextlib
import hashlib
import os
import stat
import time
from dataclasses import dataclass
from typing import Callable, Iterable

from . import limits, sidetable
from .entry import MAX_DEPTH, Entry, Kind, check_fields, split_path
from .errors import BadInput, BranchMoved, UnsafePath, UsageError, warner
from .exportcache import FILE, KEY_LEN, VALUE_LEN, open_cache, record_key
from .gittree import MODE_DIR, MODE_EXEC, MODE_FILE, MODE_LINK, encode_tree
from .layout import FORMAT_BLOB, TABLE_NAME, TOP_FORMAT, TOP_META, TOP_ROOTFS
from .names import check_name, display, git_name
from .packwriter import OBJ_BLOB, OBJ_TREE, PackWriter, hash_and_compress, object_id

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
# In-memory tree built during an import

META_INTERN = 1 << 16        # distinct (kind, mode, owner, xattrs...) tuples shared between inodes
OID_INTERN = 1 << 12         # recent blob ids shared between inodes of equal content


class Inode:
    """A non-directory object; shared by every path that is a hard link to it.

    Kept small, as an import holds one per entry until the trees are written (docs/security.md, "Import
    memory"): the fields most entries have in common - (kind, mode, uid, gid, xattrs, rdev, sparse) - are
    one tuple shared by all inodes that have them (`meta`), and equal blob ids are one bytes object."""

    __slots__ = ("meta", "oid", "size", "mtime_ns")

    def __init__(self, meta: tuple, e: Entry):
        self.meta = meta
        self.oid: bytes | None = None
        self.size = e.size
        self.mtime_ns = e.mtime_ns

    kind = property(lambda self: self.meta[0])
    mode = property(lambda self: self.meta[1])
    uid = property(lambda self: self.meta[2])
    gid = property(lambda self: self.meta[3])
    xattrs = property(lambda self: self.meta[4])
    rdev = property(lambda self: self.meta[5])
    sparse = property(lambda self: self.meta[6])


class Dir:
    __slots__ = ("kind", "mode", "uid", "gid", "xattrs", "mtime_ns", "children", "explicit")

    def __init__(self, e: Entry | None = None):
        self.kind = Kind.DIR
        self.children: dict[bytes, Inode | Dir] = {}
        self.explicit = e is not None
        self.set_meta(e)

    def set_meta(self, e: Entry | None) -> None:
        if e is None:
            self.mode, self.uid, self.gid, self.xattrs, self.mtime_ns = 0o755, 0, 0, (), None
        else:
            self.mode, self.uid, self.gid, self.xattrs, self.mtime_ns = e.mode, e.uid, e.gid, e.xattrs, e.mtime_ns
            self.explicit = True


def _row(name: bytes, node, keep_mtime: bool, hardlink: bytes | None = None) -> sidetable.Row:
    return sidetable.Row(name, node.kind, node.mode, node.uid, node.gid,
                         getattr(node, "rdev", None), hardlink,
                         node.mtime_ns if keep_mtime else None, node.xattrs, getattr(node, "sparse", None))


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
    """Builds one gitree commit from a stream of entries. Objects go into one new pack."""

    def __init__(self, repo, *, keep_mtime: bool = False, level: int = 6,
                 progress: Progress | None = None, warn: Callable[[str], None] | None = None):
        self.repo = repo
        self.keep_mtime = keep_mtime
        self.level = level
        self.progress = progress
        self.warn = warn or warner(None, "export-cache")   # the caller's channel, else errors.print_warning
        self.root = Dir()
        self.root_seen = False
        self.pack = PackWriter(repo.objects_dir)
        cap_malloc_arenas()
        self.pool = concurrent.futures.ThreadPoolExecutor(WORKERS, thread_name_prefix="gitree-hash")
        self.pending: collections.deque = collections.deque()  # (inodes, bytes, future of a batch)
        self.pending_bytes = 0
        self.batch: list[tuple[Inode, bytes]] = []
        self.batch_bytes = 0
        self.stats = ImportStats()
        self._t0 = time.monotonic()
        # OSTree content checksums of the files, computed while their bytes pass through anyway, for the
        # export cache (keyed as export-ostree keys them: file header bytes + blob id); saved with the commit.
        # Records of KEY_LEN + VALUE_LEN bytes, one per distinct (header, blob) (`_recent` skips repeats).
        self.checksums = bytearray()
        self._recent: dict[tuple[bytes, bytes], None] = {}
        self._prefixes: dict[tuple, bytes] = {}
        self._metas: dict[tuple, tuple] = {}
        self._oids: dict[bytes, bytes] = {}
        self._linked: dict[int, Inode] = {}     # inodes a hard link was made to, by id

    # objects

    def _file_prefix(self, inode: Inode) -> bytes:
        """The OSTree file header export-ostree hashes for this file (sorted xattrs, empty values dropped)."""
        k = (inode.uid, inode.gid, inode.mode, inode.xattrs)
        p = self._prefixes.get(k)
        if p is None:
            import gitree_compat as oc  # here: commands that never import files need not load it
            p = self._prefixes[k] = oc.file_stream_prefix(oc.FileMeta(
                inode.uid, inode.gid, stat.S_IFREG | inode.mode, b"", oc.canonical_xattrs(inode.xattrs)))
        return p

    def _record_checksum(self, prefix: bytes, oid: bytes, digest: bytes) -> None:
        k = (prefix, oid)
        if k in self._recent:   # many files of the same header and content: one record
            return
        if len(self._recent) >= OID_INTERN:
            self._recent.clear()
        self._recent[k] = None
        self.checksums += record_key(FILE, prefix, oid) + digest

    def _save_checksums(self) -> None:
        if not self.checksums:
            return
        cache = open_cache(self.repo.path, self.warn)
        if cache is None:
            return
        try:
            rec, n = memoryview(self.checksums), len(self.checksums)
            step = KEY_LEN + VALUE_LEN
            for i in range(0, n, step):
                cache.put(bytes(rec[i:i + KEY_LEN]), bytes(rec[i + KEY_LEN:i + step]))
            del rec
            cache.save()
        finally:
            cache.close()

    def _meta(self, e: Entry) -> tuple:
        """The shared (kind, mode, uid, gid, xattrs, rdev, sparse) tuple of an entry."""
        m = (e.kind, e.mode, e.uid, e.gid, e.xattrs, e.rdev, e.sparse)
        if e.sparse is not None:
            return m
        shared = self._metas.get(m)
        if shared is None:
            if len(self._metas) >= META_INTERN:
                return m
            shared = self._metas[m] = m
        return shared

    def _intern_oid(self, oid: bytes) -> bytes:
        shared = self._oids.get(oid)
        if shared is None:
            if len(self._oids) >= OID_INTERN:
                self._oids.clear()
            shared = self._oids[oid] = oid
        return shared

    def _exists(self, oid: bytes) -> bool:
        return oid in self.pack or self.repo.exists(oid)

    def _hash_job(self, datas: list[bytes], prefixes: list[bytes]) -> list[tuple[bytes, bytes | None, bytes]]:
        out = []
        for data, prefix in zip(datas, prefixes, strict=True):
            h = hashlib.sha256(prefix)
            h.update(data)
            oid = object_id(OBJ_BLOB, data)
            if self._exists(oid):
                out.append((oid, None, h.digest()))
            else:
                out.append((*hash_and_compress(OBJ_BLOB, data, self.level), h.digest()))
        return out

    def _submit_batch(self) -> None:
        """Hand the collected small files to a worker as one job (a future per file costs too much)."""
        if not self.batch:
            return
        inodes = [i for i, _ in self.batch]
        prefixes = [self._file_prefix(i) for i in inodes]
        fut = self.pool.submit(self._hash_job, [d for _, d in self.batch], prefixes)
        inodes = list(zip(inodes, prefixes, strict=True))
        self.pending.append((inodes, self.batch_bytes, fut))
        self.pending_bytes += self.batch_bytes
        self.batch, self.batch_bytes = [], 0
        self._drain(INFLIGHT_BYTES, 2 * WORKERS)

    def store(self, otype: int, data: bytes) -> bytes:
        oid = object_id(otype, data)
        if not self._exists(oid):
            self.pack.add_raw(oid, hash_and_compress(otype, data, self.level).entry)
        return oid

    def _drain(self, limit_bytes: int, limit_count: int) -> None:
        while self.pending and (self.pending_bytes > limit_bytes or len(self.pending) > limit_count):
            inodes, size, fut = self.pending.popleft()
            self.pending_bytes -= size
            for (inode, prefix), (oid, entry, digest) in zip(inodes, fut.result(), strict=True):
                if entry is not None:
                    self.pack.add_raw(oid, entry)
                inode.oid = self._intern_oid(oid)
                self._record_checksum(prefix, oid, digest)

    # tree building

    def _lookup_dir(self, parts: list[bytes], path: bytes) -> Dir:
        d = self.root
        for i, comp in enumerate(parts):
            child = d.children.get(comp)
            if child is None:
                child = d.children[comp] = Dir()
            elif not isinstance(child, Dir):
                raise UnsafePath(f"{display(path)}: parent {display(b'/'.join(parts[:i + 1]))} is not a "
                                 "directory (a member through a symlink or file?)")
            d = child
        return d

    def _lookup(self, path: bytes) -> Inode | Dir | None:
        node = self.root
        for comp in split_path(path):
            if not isinstance(node, Dir):
                return None
            node = node.children.get(comp)
            if node is None:
                return None
        return node

    def add(self, e: Entry, data: Callable[[], Iterable[bytes]] | None = None, rereadable: bool = False, *,
            oid: bytes | None = None) -> None:
        """Add one entry. `data` yields a regular file's bytes (e.size of them). A regular file given `oid`
        (a blob of this repository, or of this import: see blob_id) takes that blob and e.size, after the same
        checks of its name, fields and parents, without reading any data."""
        if oid is not None and (e.kind is not Kind.FILE or e.hardlink is not None or data is not None):
            raise UsageError(f"{display(e.path)}: only a regular file without data or hard link takes a blob id")
        self.stats.entries += 1
        if self.stats.entries > limits.MAX_COMMIT_ENTRIES:
            raise BadInput(f"more than {limits.MAX_COMMIT_ENTRIES} entries in one tree (MAX_COMMIT_ENTRIES, "
                           "the limit of one walk)")
        why = check_fields(e)
        if why is not None:
            raise BadInput(f"{display(e.path)}: {why}")
        if e.path == b"":
            if e.kind is not Kind.DIR:
                raise UnsafePath("the root of the tree must be a directory")
            self.root.set_meta(e)
            self.root_seen = True
            return
        parts = split_path(e.path)
        if len(parts) > MAX_DEPTH:
            raise BadInput(f"{display(e.path[:200])}...: deeper than {MAX_DEPTH} levels")
        for comp in parts:
            check_name(comp, e.path)
        parent = self._lookup_dir(parts[:-1], e.path)
        name = parts[-1]
        old = parent.children.get(name)
        if old is None and len(parent.children) >= limits.MAX_DIR_ENTRIES:
            raise BadInput(f"{display(e.path)}: more than {limits.MAX_DIR_ENTRIES} entries in one directory "
                           "(MAX_DIR_ENTRIES)")
        if e.kind is Kind.DIR and e.hardlink is None:
            if isinstance(old, Dir):
                old.set_meta(e)
            else:
                parent.children[name] = Dir(e)
            return
        if isinstance(old, Dir) and old.children:
            raise UnsafePath(f"{display(e.path)}: replaces a non-empty directory")
        if e.hardlink is not None:
            target = self._lookup(e.hardlink)
            if target is None:
                raise BadInput(f"{display(e.path)}: hard link to {display(e.hardlink)}, which does not exist "
                               "earlier in the archive")
            if isinstance(target, Dir):
                raise UnsafePath(f"{display(e.path)}: hard link to a directory {display(e.hardlink)}")
            parent.children[name] = target
            self._linked[id(target)] = target
            return
        inode = Inode(self._meta(e), e)
        parent.children[name] = inode
        if oid is not None:
            inode.oid = self._known_blob(oid, e.path)
            self.stats.files += 1
            self.stats.bytes += e.size
            self._tick(e.path)
        elif e.kind is Kind.SYMLINK:
            inode.oid = self._intern_oid(self.store(OBJ_BLOB, e.target or b""))
        elif e.kind is Kind.FILE:
            self._add_content(inode, e, data, rereadable)

    def _known_blob(self, oid: bytes, path: bytes) -> bytes:
        """`oid` for a file added with it: a blob in the repository or this import's pack. One still waiting
        in a batch of small files (blob_id of a file just added) is hashed first."""
        if not self._exists(oid) and (self.batch or self.pending):
            self._flush()
        if not self._exists(oid):
            raise UsageError(f"{display(path)}: blob {oid.hex()} is neither in the repository nor in this import")
        return self._intern_oid(oid)

    def _flush(self) -> None:
        self._submit_batch()
        self._drain(-1, -1)

    def blob_id(self, path: bytes) -> bytes:
        """The git blob id of the regular file added at `path` in the tree being built (to add more files of
        the same content with `add(..., oid=)`); a file still waiting in a batch of small files is hashed
        first."""
        node = self._lookup(path)
        if not isinstance(node, Inode) or node.kind is not Kind.FILE:
            raise UsageError(f"{display(path)}: no regular file at this path of the tree being built")
        if node.oid is None:
            self._flush()
        return node.oid

    def _add_content(self, inode: Inode, e: Entry, data, rereadable: bool) -> None:
        size = e.size
        self.stats.files += 1
        self.stats.bytes += size
        if data is None:
            data = lambda: [b""]  # noqa: E731
        if size <= SMALL_FILE:
            buf = b"".join(data())
            if len(buf) != size:
                raise BadInput(f"{display(e.path)}: read {len(buf)} bytes, expected {size} (file changed?)")
            self.batch.append((inode, buf))
            self.batch_bytes += size
            if self.batch_bytes >= BATCH_BYTES or len(self.batch) >= BATCH_FILES:
                self._submit_batch()
        else:
            prefix = self._file_prefix(inode)
            csum = hashlib.sha256(prefix)
            if rereadable:
                from .packwriter import object_header
                h = hashlib.sha1(object_header(OBJ_BLOB, size))
                for chunk in data():
                    h.update(chunk)
                    csum.update(chunk)
                if self._exists(h.digest()):
                    inode.oid = h.digest()
                    self._record_checksum(prefix, inode.oid, csum.digest())
                    self._tick(e.path)
                    return
                csum = hashlib.sha256(prefix)

            def hashed():
                for chunk in data():
                    csum.update(chunk)
                    yield chunk
            try:
                inode.oid = self.pack.add_stream(OBJ_BLOB, size, hashed(), self.level, self._exists)
            except ValueError as err:
                raise BadInput(f"{display(e.path)}: {err}") from None
            self._record_checksum(prefix, inode.oid, csum.digest())
        self._tick(e.path)

    def _tick(self, path: bytes) -> None:
        if self.progress is not None:
            self.progress.update(self.stats.files, self.stats.bytes, path)

    # finishing

    def finish_tree(self, extra_top=()) -> bytes:
        """Write every tree and table; return the top tree id. `extra_top`: more (mode, name, oid) entries."""
        self._flush()
        counts: dict[int, int] = collections.Counter()
        self._count(self.root, counts)
        leaders: dict[int, bytes] = {}
        content, meta = self._write_dir(self.root, b"", counts, leaders)
        self.root, self._linked = Dir(), {}   # the tree is written: let it go before the commit and cache
        fmt = self.store(OBJ_BLOB, FORMAT_BLOB)
        top = [(MODE_FILE, TOP_FORMAT, fmt), (MODE_DIR, TOP_META, meta), (MODE_DIR, TOP_ROOTFS, content)]
        return self.store(OBJ_TREE, encode_tree(top + list(extra_top)))

    def _count(self, root: Dir, counts) -> None:
        """How many paths name each inode a hard link was made to (a link's target may have been
        replaced since, leaving one path); other inodes have one path each and are not counted."""
        linked = self._linked
        if not linked:
            return
        todo = [root]
        while todo:
            for node in todo.pop().children.values():
                if isinstance(node, Dir):
                    todo.append(node)
                elif id(node) in linked:
                    counts[id(node)] += 1

    def _write_dir(self, root: Dir, path: bytes, counts, leaders) -> tuple[bytes, bytes]:
        """Write a directory's trees and tables, children first, without recursion: a frame per open
        directory, visited in canonical order (which decides which path of an inode leads)."""
        def frame(d: Dir, p: bytes):
            return (d, p, iter(sorted(d.children)), [], [], [])

        stack = [frame(root, path)]
        sparse = [False]     # per frame: a row has a sparse map (the table's magic line says so)
        while True:
            d, dpath, names, centries, mentries, rows = stack[-1]
            name = next(names, None)
            if name is None:
                table = sidetable.table_from_lines(_row(sidetable.SELF, d, self.keep_mtime), rows, sparse[-1])
                del rows[:]
                mentries.append((MODE_FILE, TABLE_NAME, self.store(OBJ_BLOB, table)))
                c, m = self.store(OBJ_TREE, encode_tree(centries)), self.store(OBJ_TREE, encode_tree(mentries))
                stack.pop()
                sparse.pop()
                if not stack:
                    return c, m
                parent = stack[-1]
                gname = git_name(d_name := dpath.rpartition(b"/")[2])
                parent[3].append((MODE_DIR, gname, c))
                parent[4].append((MODE_DIR, gname, m))
                parent[5].append(sidetable.encode_row(_row(d_name, d, self.keep_mtime)))
                continue
            node = d.children[name]
            cpath = dpath + b"/" + name if dpath else name
            gname = git_name(name)
            if isinstance(node, Dir):
                stack.append(frame(node, cpath))
                sparse.append(False)
                continue
            hl = None
            if counts.get(id(node), 0) > 1:
                hl = leaders.get(id(node))
                if hl is None:
                    leaders[id(node)] = cpath
            rows.append(sidetable.encode_row(_row(name, node, self.keep_mtime, hl)))  # in name order
            if node.sparse is not None:
                sparse[-1] = True
            if node.kind is Kind.FILE:
                centries.append((MODE_EXEC if node.mode & 0o100 else MODE_FILE, gname, node.oid))
            elif node.kind is Kind.SYMLINK:
                centries.append((MODE_LINK, gname, node.oid))

    def commit_object(self, message: str, timestamp: int | None, parents: list[bytes], extra_top=(),
                      author: tuple[str, str] | None = None, *, branch: str | None = None,
                      lock_wait: Callable[[], None] | None = None) -> bytes:
        """Finish, install the pack and write a commit object. With `branch`, the branch's tip is the parent
        (instead of `parents`) and the branch moves to the commit, last and atomically, under the lock."""
        try:
            top = self.finish_tree(extra_top)
            self.pool.shutdown(wait=True)
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
        self._save_checksums()
        self.stats.seconds = time.monotonic() - self._t0
        return cid

    def _install(self) -> None:
        self.stats.new_objects = len(self.pack.entries)
        self.stats.pack_bytes = self.pack.bytes_written
        self.pack.install()

    def commit(self, branch: str, message: str, timestamp: int | None, extra_top=(),
               author: tuple[str, str] | None = None, lock_wait: Callable[[], None] | None = None) -> bytes:
        """commit_object on `branch` (its tip the parent; the branch moves last). The caller owns the progress
        display and ends it."""
        return self.commit_object(message, timestamp, [], extra_top, author, branch=branch, lock_wait=lock_wait)

    def abort(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.pack.abort()


class Transaction:
    """Writes that land whole or not at all, in libostree's shape::

        with repo.transaction(level=1) as tx:
            tx.add(entry, data)                  # files, directories... of the next tree
            tx.commit(branch="main", message="...")

    `add`/`store` build a tree in a new pack (gitree.importer.Importer). `write_commit` turns the tree built so
    far into a commit object without moving a branch (a chain of commits: import-ostree); `set_ref` stages a
    branch move. `commit` writes the pending tree (if any) as a commit on `branch` (parents: the branch's tip,
    or `parents`), then moves every staged branch, each under the repository lock and only if it is still where
    it was (BranchMoved otherwise). Leaving the block without `commit` - an exception, a return - aborts: the
    temporary pack of the tree being built is deleted, no branch moves. Packs of commits already written stay
    (their objects are unreferenced; `gitree gc` drops them).
    """

    def __init__(self, repo, *, keep_mtime: bool = False, level: int = 1, progress: Progress | None = None,
                 warn: Callable[[str], None] | None = None):
        self.repo = repo
        self.keep_mtime, self.level, self.progress, self.warn = keep_mtime, level, progress, warn
        self._tree: Importer | None = None
        self._raw: list[PackWriter] = []        # packs of objects that arrive whole, not yet installed
        self._installed: list[str] = []         # packs installed by this transaction before it commits
        self._refs: list[tuple[str, bytes, bytes | None, str]] = []
        self.stats = ImportStats()
        self.done = False

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
                                  warn=self.warn)
            self.stats = self._tree.stats
        return self._tree

    def add(self, entry: Entry, data=None, rereadable: bool = False, *, oid: bytes | None = None) -> None:
        """Importer.add on the tree being built (`oid`: a regular file whose blob is known)."""
        self.tree.add(entry, data, rereadable, oid=oid)

    def blob_id(self, path: bytes) -> bytes:
        """Importer.blob_id: the blob of the file added at `path` in the tree being built."""
        return self.tree.blob_id(path)

    def store(self, otype: int, data: bytes) -> bytes:
        return self.tree.store(otype, data)

    def raw_pack(self) -> PackWriter:
        """A pack for objects that arrive whole (bundle apply). `install_packs` installs it; an abort before
        `commit` deletes it, installed or not (no branch refers to its objects then)."""
        if self.done:
            raise UsageError("the transaction is finished")
        p = PackWriter(self.repo.objects_dir)
        self._raw.append(p)
        return p

    def install_packs(self) -> None:
        """Install the raw packs (under the repository lock, held by the caller), so their objects can be read
        and verified before any branch moves."""
        while self._raw:
            path = self._raw.pop(0).install()
            if path is not None:          # None: the pack was empty
                self._installed.append(path)

    def write_commit(self, *, message: str, timestamp: int | None = None, parents: list[bytes] = (),
                     extra_top=(), author: tuple[str, str] | None = None) -> bytes:
        """The tree built so far as a commit object with these parents; no branch moves. The next `add`
        starts a new tree."""
        imp, self._tree = self.tree, None
        return imp.commit_object(message, timestamp, list(parents), extra_top, author)

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
            if self._refs:
                with self.repo.lock(on_wait=lock_wait):
                    for b, _new, old, _ in self._refs:   # all or nothing: check every branch first
                        if self.repo.branch_tip(b) != old:
                            raise BranchMoved(f"branch {b} moved during the operation; nothing was changed")
                    for b, new, old, msg in self._refs:
                        self.repo.set_branch(b, new, old, msg)
            self.install_packs()
        except BaseException:
            self.abort()
            raise
        self._installed.clear()
        self.done = True
        return cid

    def abort(self) -> None:
        """Drop the tree being built (its temporary pack included) and every staged branch move."""
        if self._tree is not None:
            self._tree.abort()
            self._tree = None
        for p in self._raw:
            p.abort()
        self._raw.clear()
        for pack in self._installed:
            for path in (pack, pack[:-5] + ".idx"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        self._installed.clear()
        self._refs.clear()
        self.done = True


__all__ = ["Importer", "Transaction", "ImportStats", "Progress"]
