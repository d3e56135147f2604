"""The store: rootfs trees in a bare git repository, with per-directory side tables.

Commit layout (docs/format.md):
    format          blob "gitree 1\\n"
    rootfs/         the content tree: files, symlinks, directories (names escaped where git refuses them)
    meta/           one node per directory of rootfs/: `.gitree` (that directory's side table) and the
                    nodes of its subdirectories under the same (escaped) names
    ostree/         optional: what an OSTree import needs to reproduce the original commit bytes
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import fcntl
import hashlib
import os
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import pygit2

from . import limits, sidetable
from .entry import MAX_DEPTH, Entry, Kind, check_fields, split_path
from .exportcache import FILE, open_cache, record_key
from .errors import BadInput, BranchMoved, CorruptObject, GitreeError, NotFound, RepoLocked, UnsafePath, UsageError
from .gittree import MODE_DIR, MODE_EXEC, MODE_FILE, MODE_LINK, ContentRef, decode_tree, encode_tree
from .names import check_name, display, fs_name, git_name
from .packwriter import OBJ_BLOB, OBJ_COMMIT, OBJ_TREE, PackWriter, hash_and_compress, object_id

FORMAT_BLOB = b"gitree 1\n"
TABLE_NAME = b".gitree"
TOP_ROOTFS, TOP_META, TOP_FORMAT, TOP_OSTREE = b"rootfs", b"meta", b"format", b"ostree"

# gitree runs no program named by a repository (no hooks, filters or helpers), so a repository owned by
# another user (a build user's, opened by root in an image pipeline) is opened as git would for its owner.
pygit2.option(pygit2.enums.Option.SET_OWNER_VALIDATION, 0)

SMALL_FILE = 8 << 20          # files up to this size are hashed and compressed in worker threads
INFLIGHT_BYTES = 64 << 20     # bound on file bytes held in memory waiting for workers
STREAM_BLOB = 32 << 20        # blobs larger than this are read through `git cat-file` streaming
BATCH_BYTES = 4 << 20         # small files are hashed and compressed in batches of this many bytes...
BATCH_FILES = 512             # ...or this many files
WORKERS = max(2, min(4, os.cpu_count() or 2))
_TYPE_NAMES = {OBJ_BLOB: "blob", OBJ_TREE: "tree", OBJ_COMMIT: "commit"}


# ---------------------------------------------------------------------------------------------
# In-memory tree built during an import

class Inode:
    """A non-directory object; shared by every path that is a hard link to it."""

    __slots__ = ("kind", "mode", "uid", "gid", "xattrs", "rdev", "mtime_ns", "oid", "size", "sparse")

    def __init__(self, e: Entry):
        self.kind, self.mode, self.uid, self.gid = e.kind, e.mode, e.uid, e.gid
        self.xattrs, self.rdev, self.mtime_ns = e.xattrs, e.rdev, e.mtime_ns
        self.oid: bytes | None = None
        self.size = e.size
        self.sparse = e.sparse


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


def stderr_warn(msg: str) -> None:
    print(f"gitree: warning: {msg}", file=sys.stderr)


class Progress:
    """Interface for progress reporting; the CLI passes a terminal bar, tests pass nothing."""

    def update(self, files: int, nbytes: int, path: bytes = b"") -> None:  # pragma: no cover - interface
        pass

    def done(self) -> None:  # pragma: no cover - interface
        pass


class Repo:
    """A gitree repository: a bare git repository plus gitree's conventions."""

    def __init__(self, path: str):
        try:
            # never search parent directories: -C sub/dir must not open an enclosing repository
            self.git = pygit2.Repository(path, pygit2.enums.RepositoryOpenFlag.NO_SEARCH)
        except KeyError:
            raise NotFound(f"not a gitree repository: {path} (run 'gitree init')") from None
        except pygit2.GitError as e:
            if not os.path.isdir(path) or "could not find repository" in str(e):
                raise NotFound(f"not a gitree repository: {path} (run 'gitree init')") from None
            raise GitreeError(f"cannot open repository {path}: {e}") from None
        self.path = self.git.path.rstrip("/")
        self.objects_dir = os.path.join(self.path, "objects")
        self._local = threading.local()

    # -- creation, locking, refs -------------------------------------------------------------

    @staticmethod
    def init(path: str) -> "Repo":
        if os.path.exists(os.path.join(path, "objects")) and os.path.exists(os.path.join(path, "HEAD")):
            raise GitreeError(f"a repository already exists at {path}")
        if os.path.exists(path) and not os.path.isdir(path):
            raise GitreeError(f"{path} exists and is not a directory")
        pygit2.init_repository(path, bare=True, initial_head="main")
        repo = Repo(path)
        cfg = repo.git.config
        cfg["gitree.format"] = "1"
        # Blobs of a rootfs are mostly binaries; deltas across versions are what make packs small.
        cfg["pack.window"] = "50"
        cfg["pack.depth"] = "50"
        return repo

    @contextlib.contextmanager
    def lock(self, wait: bool = True, on_wait: Callable[[], None] | None = None):
        """Exclusive writer lock on the repository (flock on gitree.lock)."""
        fd = os.open(os.path.join(self.path, "gitree.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not wait:
                    raise RepoLocked(f"repository {self.path} is locked by another gitree writer") from None
                if on_wait:
                    on_wait()
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def transaction(self, *, keep_mtime: bool = False, level: int = 1, progress=None,
                    warn: Callable[[str], None] | None = None) -> "Transaction":
        """A Transaction on this repository (use it as a context manager: leaving without commit aborts)."""
        return Transaction(self, keep_mtime=keep_mtime, level=level, progress=progress, warn=warn)

    def branch_ref(self, branch: str) -> str:
        """refs/heads/<branch>: the only refs gitree moves for data (imports, bundles, fetches, clones).
        The name follows git's check-ref-format --branch; refs/<anything else> is refused, so nothing that
        arrives can create or move a ref gitree keeps for itself."""
        name = branch[len("refs/heads/"):] if branch.startswith("refs/heads/") else branch
        if not name or name == "HEAD" or name.startswith(("-", "refs/")) \
                or not pygit2.reference_is_valid_name("refs/heads/" + name):
            raise GitreeError(f"invalid branch name: {branch} (only branches, refs/heads/<name>, are written)")
        return "refs/heads/" + name

    def branch_tip(self, branch: str) -> bytes | None:
        try:
            ref = self.git.references[self.branch_ref(branch)]
        except KeyError:
            return None
        return ref.resolve().target.raw

    def set_branch(self, branch: str, new: bytes, old: bytes | None, message: str) -> None:
        """Move a branch from `old` to `new` atomically; fail if it moved meanwhile."""
        name = self.branch_ref(branch)
        cur = self.branch_tip(branch)
        if cur != old:
            raise BranchMoved(f"branch {branch} moved during the operation; nothing was changed")
        oid = pygit2.Oid(raw=new)
        if old is None:
            self.git.create_reference_direct(name, oid, False, message=message)
        else:
            self.git.references[name].set_target(oid, message)
        if self.git.head_is_unborn and self.git.references.get("HEAD") is not None:
            head = self.git.references["HEAD"]
            if head.type == pygit2.enums.ReferenceType.SYMBOLIC and head.target == "refs/heads/main" \
                    and name != "refs/heads/main":
                self.git.set_head(name)

    def resolve(self, rev: str) -> pygit2.Commit:
        try:
            obj = self.git.revparse_single(rev)
            commit = obj.peel(pygit2.Commit)
        except (KeyError, ValueError, pygit2.GitError, pygit2.InvalidSpecError):
            raise NotFound(f"unknown revision: {rev}") from None
        return commit

    # -- object access -------------------------------------------------------------------

    def _thread_git(self) -> pygit2.Repository:
        g = getattr(self._local, "git", None)
        if g is None:
            g = self._local.git = pygit2.Repository(self.path, pygit2.enums.RepositoryOpenFlag.NO_SEARCH)
        return g

    def exists(self, oid: bytes) -> bool:
        return self._thread_git().odb.exists(pygit2.Oid(raw=oid))

    def read(self, oid: bytes, expect: int | None = None, where: str = "") -> bytes:
        try:
            otype, data = self._thread_git().odb.read(pygit2.Oid(raw=oid))
        except KeyError:
            raise CorruptObject(f"missing object {oid.hex()} ({where})") from None
        if expect is not None and int(otype) != expect:
            raise CorruptObject(f"object {oid.hex()} ({where}) has the wrong type")
        return data

    def object_size(self, oid: bytes, expect: int, where: str = "") -> int:
        """An object's size from its header, checking that it exists and has type `expect`."""
        try:
            otype, size = self._thread_git().odb.read_header(pygit2.Oid(raw=oid))
        except KeyError:
            raise CorruptObject(f"missing object {oid.hex()} ({where})") from None
        if int(otype) != expect:
            raise CorruptObject(f"object {oid.hex()} ({where}) is not a {_TYPE_NAMES[expect]}")
        return size

    def blob_size(self, oid: bytes, where: str = "") -> int:
        return self.object_size(oid, OBJ_BLOB, where)

    def blob_chunks(self, oid: bytes, size: int | None = None, where: str = "") -> Iterator[bytes]:
        """A blob's bytes; large blobs are streamed by git itself, never held whole in memory."""
        if size is None:
            size = self.blob_size(oid, where)
        if size <= STREAM_BLOB:
            yield self.read(oid, OBJ_BLOB, where)
            return
        # small mmap windows: git maps the pack as it streams instead of mapping the whole blob at once
        proc = subprocess.Popen(["git", "-c", "core.packedGitWindowSize=32m", "-c", "core.packedGitLimit=128m",
                                 "-c", "core.bigFileThreshold=32m",
                                 "--git-dir", self.path, "cat-file", "blob", oid.hex()],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        got = 0
        try:
            while True:
                buf = proc.stdout.read(1 << 20)
                if not buf:
                    break
                got += len(buf)
                yield buf
        finally:
            proc.stdout.close()
            err = proc.stderr.read()
            proc.stderr.close()
            rc = proc.wait()
        if rc != 0 or got != size:
            raise CorruptObject(f"cannot read blob {oid.hex()} ({where}): {err.decode(errors='replace').strip()}")

    # -- reading a commit: the one validating reader (docs/security.md, "The git reader") ----------

    def read_bounded(self, oid: bytes, expect: int, limit: int, where: str = "") -> bytes:
        """An object's bytes, refused from its header (before it is inflated) when larger than `limit`."""
        size = self.object_size(oid, expect, where)
        if size > limit:
            raise CorruptObject(f"object {oid.hex()} ({where}) is {size} bytes, more than the limit of {limit}")
        return self.read(oid, expect, where)

    def commit_trees(self, commit: pygit2.Commit) -> tuple[bytes, bytes]:
        """(content root tree id, meta root tree id) of a gitree commit."""
        top = self.top_entries(commit)
        if TOP_ROOTFS not in top or TOP_META not in top or TOP_FORMAT not in top:
            raise NotFound(f"commit {commit.id} is not a gitree commit (no format, rootfs/ and meta/)")
        if top[TOP_FORMAT][0] != MODE_FILE or top[TOP_ROOTFS][0] != MODE_DIR or top[TOP_META][0] != MODE_DIR:
            raise CorruptObject(f"commit {commit.id}: format, rootfs/ or meta/ has the wrong type")
        fmt = self.read_bounded(top[TOP_FORMAT][1], OBJ_BLOB, limits.MAX_META_BYTES, "format")
        if fmt != FORMAT_BLOB:
            raise CorruptObject(f"commit {commit.id} has gitree format {fmt[:32]!r}; this gitree reads {FORMAT_BLOB!r}")
        return top[TOP_ROOTFS][1], top[TOP_META][1]

    def top_entries(self, commit: pygit2.Commit) -> dict[bytes, tuple[bytes, bytes]]:
        data = self.read_bounded(commit.tree_id.raw, OBJ_TREE, limits.MAX_META_BYTES, "top tree")
        out: dict[bytes, tuple[bytes, bytes]] = {}
        for mode, name, oid in decode_tree(data, "top"):
            if name in out:
                raise CorruptObject(f"commit {commit.id}: top tree names {name!r} twice")
            out[name] = (mode, oid)
        return out

    def read_dir(self, path: bytes, content_oid: bytes, meta_oid: bytes) -> "DirNode":
        return read_dir(self, path, content_oid, meta_oid)

    def walk(self, commit: pygit2.Commit, subpath: bytes = b"",
             problems: list | None = None) -> Iterator[Entry]:
        """Every entry of a commit in canonical order (depth first, names sorted by bytes), validated.

        With `problems` given, faults are appended as (path, message) and the walk goes on past them
        (a faulty directory is not entered); otherwise the first raises CorruptObject.
        """
        root = self.commit_trees(commit)
        content, meta = root
        prefix = b""
        for comp in split_path(subpath):
            node = self.read_dir(prefix, content, meta)
            row = node.row(comp)
            if row is None or row.kind is not Kind.DIR:
                raise NotFound(f"no directory {display(subpath)} in {commit.id}")
            content, meta = node.content[comp].oid, node.meta[comp]
            prefix = prefix + b"/" + comp if prefix else comp
        yield from _Walker(self, problems, root).walk_dir(prefix, content, meta)

    def verify(self, commit: pygit2.Commit, problems: list | None = None) -> None:
        """Read a whole commit as every command does (fsck's check): raise CorruptObject on the first
        fault, or with `problems` given, collect every fault. Also checks every file's blob exists."""
        try:
            for e in self.walk(commit, problems=problems):
                if e.kind is Kind.FILE and e.hardlink is None:
                    try:
                        size = self.blob_size(e.oid, display(e.path))
                        if e.sparse is not None and size != e.sparse.data_size:
                            raise CorruptObject(f"blob {e.oid.hex()} does not hold the {e.sparse.data_size} data "
                                                "bytes of its sparse map")
                    except CorruptObject as err:
                        if problems is None:
                            raise CorruptObject(f"{display(e.path)}: {err}") from None
                        problems.append((e.path, str(err)))
        except GitreeError as err:
            if problems is None:
                raise
            problems.append((b"", str(err)))

    def find(self, root: tuple[bytes, bytes], path: bytes) -> Entry | None:
        """The entry at `path` below root (content tree, meta tree), or None. Reads through read_dir."""
        return _lookup(self, root, path, {})


class TreeFault(CorruptObject):
    """A fault at one path of a stored tree."""

    def __init__(self, path: bytes, detail: str):
        super().__init__(f"{display(path)}: {detail}")
        self.path, self.detail = path, detail


_EXPECT_GIT_MODE = {Kind.DIR: MODE_DIR, Kind.SYMLINK: MODE_LINK}
_GIT_MODES = frozenset((MODE_DIR, MODE_FILE, MODE_EXEC, MODE_LINK))


@dataclass
class DirNode:
    """One directory as stored, validated: its table rows and its content and meta tree entries by
    real name."""

    self_row: sidetable.Row
    rows: list[sidetable.Row]
    content: dict[bytes, ContentRef]            # name -> (git mode, oid)
    meta: dict[bytes, bytes]                    # subdirectory name -> meta tree oid
    _by_name: dict[bytes, sidetable.Row] | None = None

    def row(self, name: bytes) -> sidetable.Row | None:
        if self._by_name is None:
            self._by_name = {r.name: r for r in self.rows}
        return self._by_name.get(name)


def _tree_order_key(mode: bytes, name: bytes) -> bytes:
    return name + b"/" if mode == MODE_DIR else name


def _decode_dir_tree(repo: "Repo", oid: bytes, path: bytes, what: str) -> dict[bytes | None, ContentRef]:
    """A directory's content or meta tree by real name: sizes bounded, names canonical (one stored form
    per name, so no aliases), git's order, no duplicates."""
    where = display(path)
    data = repo.read_bounded(oid, OBJ_TREE, limits.MAX_TREE_BYTES, f"{what} tree of {where}")
    out: dict[bytes | None, ContentRef] = {}
    prev = None
    for mode, gname, eoid in decode_tree(data, where):
        if mode not in _GIT_MODES:
            raise TreeFault(path, f"{what} tree entry {gname[:80]!r} has git mode {mode[:16]!r}, which gitree "
                                  "never writes")
        key = _tree_order_key(mode, gname)
        if prev is not None and key <= prev:
            raise TreeFault(path, f"{what} tree entries are repeated or not in git's order ({gname!r})")
        prev = key
        if what == "meta" and gname == TABLE_NAME:
            name = None  # the table: a directory named .gitree is stored escaped, so it cannot collide
        else:
            name = fs_name(gname)
            if git_name(name) != gname:
                raise TreeFault(path, f"{what} tree name {gname!r} is not the canonical stored form of "
                                    f"{name!r} (an alias)")
            try:
                check_name(name, path)
            except UnsafePath as e:
                raise TreeFault(path, f"{what} tree: {e}") from None
        if name in out:
            raise TreeFault(path, f"{what} tree names {name!r} twice")
        out[name] = ContentRef(mode, eoid)
        if len(out) > limits.MAX_DIR_ENTRIES + 1:
            raise TreeFault(path, f"more than {limits.MAX_DIR_ENTRIES} entries in one directory")
    return out


def read_dir(repo: "Repo", path: bytes, content_oid: bytes, meta_oid: bytes) -> DirNode:
    """Read and validate one directory: its content tree, meta tree and side table must agree on every
    name and kind. Raises CorruptObject naming the directory on the first fault."""
    where = display(path)
    cmap = _decode_dir_tree(repo, content_oid, path, "content")
    mtree = _decode_dir_tree(repo, meta_oid, path, "meta")
    table = mtree.pop(None, None)
    if table is None:
        raise TreeFault(path, "directory has no side table")
    if table[0] != MODE_FILE:
        raise TreeFault(path, "the side table is not a regular blob")
    mmap: dict[bytes, bytes] = {}
    for name, (mode, oid) in mtree.items():
        if mode != MODE_DIR:
            raise TreeFault(path, f"unexpected entry {git_name(name)!r} in the meta tree")
        mmap[name] = oid
    data = repo.read_bounded(table[1], OBJ_BLOB, limits.MAX_TABLE_BYTES, f"side table of {where}")
    self_row, rows = sidetable.decode_table(data, where)
    del data
    if len(rows) > limits.MAX_DIR_ENTRIES:
        raise TreeFault(path, f"more than {limits.MAX_DIR_ENTRIES} entries in one directory")
    for row in rows:
        cpath = path + b"/" + row.name if path else row.name
        c = cmap.get(row.name)
        kname = row.kind.name.lower()
        if row.kind is Kind.DIR:
            if c is None or c.mode != MODE_DIR:
                raise TreeFault(cpath, "directory in the side table but not in the tree")
            if row.name not in mmap:
                raise TreeFault(cpath, "directory has no node in the meta tree")
            if row.hardlink is not None:
                raise TreeFault(cpath, "a directory cannot be a hard link")
            continue
        if row.name in mmap:
            raise TreeFault(cpath, f"{kname} has a node in the meta tree")
        if row.kind in (Kind.FILE, Kind.SYMLINK):
            want = _EXPECT_GIT_MODE.get(row.kind) or (MODE_EXEC if row.mode & 0o100 else MODE_FILE)
            if c is None:
                raise TreeFault(cpath, f"{kname} in the side table but not in the tree")
            if c.mode != want:
                raise TreeFault(cpath, f"git mode {c.mode.decode(errors='replace')} disagrees with "
                                    f"the side table ({kname} {row.mode:o})")
        elif c is not None:
            raise TreeFault(cpath, f"{kname} must not appear in the content tree")
    seen = {r.name for r in rows}
    for name in list(cmap) + list(mmap):
        if name not in seen:
            raise TreeFault(path + b"/" + name if path else name, "in the "
                                f"{'content' if name in cmap else 'meta'} tree but not in the side table")
    return DirNode(self_row, rows, cmap, mmap)


def _lookup(repo: "Repo", root: tuple[bytes, bytes], path: bytes, cache: dict) -> Entry | None:
    """The entry at `path` from the root, read through read_dir (`cache`: directory path -> DirNode)."""
    content, meta = root
    parts = split_path(path)
    dpath = b""
    for i in range(len(parts) + 1):
        node = cache.get(dpath)
        if node is None:
            node = read_dir(repo, dpath, content, meta)
            if len(cache) >= 64:
                cache.clear()
            cache[dpath] = node
        if i == len(parts):
            r = node.self_row
            return Entry(path, Kind.DIR, r.mode, r.uid, r.gid, r.xattrs, mtime_ns=r.mtime_ns)
        comp = parts[i]
        row = node.row(comp)
        if row is None:
            return None
        if row.kind is not Kind.DIR:
            if i != len(parts) - 1:
                return None
            e = Entry(path, row.kind, row.mode, row.uid, row.gid, row.xattrs, rdev=row.rdev,
                      mtime_ns=row.mtime_ns, hardlink=row.hardlink, sparse=row.sparse)
            c = node.content.get(comp)
            e.oid = c.oid if c is not None else None
            return e
        content, meta = node.content[comp].oid, node.meta[comp]
        dpath = dpath + b"/" + comp if dpath else comp
    return None


class _Walker:
    """Walks one directory subtree iteratively (an explicit stack, one open listing per level).

    Hard links are checked against their leader, looked up from `root` (so a leader outside the walked
    subtree is found too): it must come earlier in canonical order, be neither a directory nor a hard
    link itself, and have the same metadata and content."""

    def __init__(self, repo: Repo, problems: list | None, root: tuple[bytes, bytes]):
        self.repo = repo
        self.problems = problems
        self.root = root
        self.count = 0
        self._dirs: dict = {}

    def fault(self, path: bytes, msg: str | CorruptObject) -> None:
        if isinstance(msg, TreeFault):
            path, msg = msg.path, msg.detail
        elif isinstance(msg, CorruptObject) and self.problems is None:
            raise msg  # its message already names the object
        if self.problems is None:
            raise TreeFault(path, str(msg))
        self.problems.append((path, str(msg)))

    def _read(self, path: bytes, content: bytes, meta: bytes) -> DirNode | None:
        try:
            return self.repo.read_dir(path, content, meta)
        except CorruptObject as e:
            self.fault(path, e)
            return None

    def _tick(self) -> None:
        self.count += 1
        if self.count > limits.MAX_COMMIT_ENTRIES:
            raise CorruptObject(f"the tree has more than {limits.MAX_COMMIT_ENTRIES} entries (the limit of one walk)")

    def walk_dir(self, path: bytes, content_oid: bytes, meta_oid: bytes) -> Iterator[Entry]:
        node = self._read(path, content_oid, meta_oid)
        if node is None:
            return
        base_depth = len(split_path(path))
        r = node.self_row
        self._tick()
        yield Entry(path, Kind.DIR, r.mode, r.uid, r.gid, r.xattrs, mtime_ns=r.mtime_ns)
        stack: list[tuple[bytes, DirNode, Iterator[sidetable.Row]]] = [(path, node, iter(node.rows))]
        while stack:
            dpath, node, rows = stack[-1]
            row = next(rows, None)
            if row is None:
                stack.pop()
                continue
            cpath = dpath + b"/" + row.name if dpath else row.name
            self._tick()
            if row.kind is Kind.DIR:
                if base_depth + len(stack) > limits.MAX_TREE_DEPTH:
                    self.fault(cpath[:200], f"deeper than {limits.MAX_TREE_DEPTH} directory levels (the depth limit)")
                    continue
                child = self._read(cpath, node.content[row.name].oid, node.meta[row.name])
                if child is None:
                    continue
                r = child.self_row
                yield Entry(cpath, Kind.DIR, r.mode, r.uid, r.gid, r.xattrs, mtime_ns=r.mtime_ns)
                stack.append((cpath, child, iter(child.rows)))
                continue
            ent = self.entry(cpath, node, row)
            if ent is not None:
                yield ent

    def entry(self, path: bytes, node: DirNode, row: sidetable.Row) -> Entry | None:
        """The entry of a non-directory row of a validated directory: its symlink target read (bounded)
        and checked, its hard link checked. None after a fault (with `problems`)."""
        ent = Entry(path, row.kind, row.mode, row.uid, row.gid, row.xattrs, rdev=row.rdev,
                    mtime_ns=row.mtime_ns, hardlink=row.hardlink, sparse=row.sparse)
        c = node.content.get(row.name)
        if c is not None:
            ent.oid = c.oid
        if row.kind is Kind.SYMLINK:
            try:
                ent.target = self.repo.read_bounded(c.oid, OBJ_BLOB, limits.SYMLINK_MAX, display(path))
            except CorruptObject as e:
                self.fault(path, str(e))
                return None
            why = check_fields(ent)
            if why is not None:
                self.fault(path, why)
                return None
        if row.hardlink is not None:
            why = self._check_link(path, ent)
            if why is not None:
                self.fault(path, why)
                return None
        return ent

    def _check_link(self, path: bytes, ent: Entry) -> str | None:
        target = ent.hardlink
        parts = split_path(target)
        if not parts or any(not p or p in (b".", b"..") or b"\0" in p for p in parts) or len(parts) > MAX_DEPTH:
            return f"hard link to {target[:200]!r}, which is not a path inside the tree"
        if parts >= split_path(path):
            return f"hard link to {display(target)}, which is not an earlier entry"
        try:
            lead = _lookup(self.repo, self.root, target, self._dirs)
        except CorruptObject as e:
            return f"hard link to {display(target)}: {e}"
        if lead is None or lead.kind is Kind.DIR or lead.hardlink is not None:
            return f"hard link to {display(target)}, which is not an earlier entry"
        if (lead.kind, lead.mode, lead.uid, lead.gid, lead.xattrs, lead.rdev, lead.oid, lead.sparse) != \
                (ent.kind, ent.mode, ent.uid, ent.gid, ent.xattrs, ent.rdev, ent.oid, ent.sparse):
            return f"hard link disagrees with {display(target)}"
        return None


# ---------------------------------------------------------------------------------------------
# Import

class Importer:
    """Builds one gitree commit from a stream of entries. Objects go into one new pack."""

    def __init__(self, repo: Repo, *, keep_mtime: bool = False, level: int = 6,
                 progress: Progress | None = None, warn: Callable[[str], None] | None = None):
        self.repo = repo
        self.keep_mtime = keep_mtime
        self.level = level
        self.progress = progress
        self.warn = warn or stderr_warn
        self.root = Dir()
        self.root_seen = False
        self.pack = PackWriter(repo.objects_dir)
        self.pool = concurrent.futures.ThreadPoolExecutor(WORKERS, thread_name_prefix="gitree-hash")
        self.pending: collections.deque = collections.deque()  # (inodes, bytes, future of a batch)
        self.pending_bytes = 0
        self.batch: list[tuple[Inode, bytes]] = []
        self.batch_bytes = 0
        self.stats = ImportStats()
        self._t0 = time.monotonic()
        # OSTree content checksums of the files, computed while their bytes pass through anyway, for the
        # export cache (keyed as export-ostree keys them: file header bytes + blob id); saved with the commit.
        self.checksums: dict[bytes, bytes] = {}
        self._prefixes: dict[tuple, bytes] = {}

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
        self.checksums[record_key(FILE, prefix, oid)] = digest

    def _save_checksums(self) -> None:
        if not self.checksums:
            return
        cache = open_cache(self.repo.path, self.warn)
        if cache is None:
            return
        try:
            for k, v in self.checksums.items():
                cache.put(k, v)
            cache.save()
        finally:
            cache.close()

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
            self.pack.add_raw(oid, hash_and_compress(otype, data, self.level)[1])
        return oid

    def _drain(self, limit_bytes: int, limit_count: int) -> None:
        while self.pending and (self.pending_bytes > limit_bytes or len(self.pending) > limit_count):
            inodes, size, fut = self.pending.popleft()
            self.pending_bytes -= size
            for (inode, prefix), (oid, entry, digest) in zip(inodes, fut.result(), strict=True):
                if entry is not None:
                    self.pack.add_raw(oid, entry)
                inode.oid = oid
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

    def add(self, e: Entry, data: Callable[[], Iterable[bytes]] | None = None, rereadable: bool = False) -> None:
        """Add one entry. `data` yields a regular file's bytes (e.size of them)."""
        self.stats.entries += 1
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
            return
        inode = Inode(e)
        parent.children[name] = inode
        if e.kind is Kind.SYMLINK:
            inode.oid = self.store(OBJ_BLOB, e.target or b"")
        elif e.kind is Kind.FILE:
            self._add_content(inode, e, data, rereadable)

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
        self._submit_batch()
        self._drain(-1, -1)
        counts: dict[int, int] = collections.Counter()
        self._count(self.root, counts)
        leaders: dict[int, bytes] = {}
        content, meta = self._write_dir(self.root, b"", counts, leaders)
        fmt = self.store(OBJ_BLOB, FORMAT_BLOB)
        top = [(MODE_FILE, TOP_FORMAT, fmt), (MODE_DIR, TOP_META, meta), (MODE_DIR, TOP_ROOTFS, content)]
        return self.store(OBJ_TREE, encode_tree(top + list(extra_top)))

    def _count(self, root: Dir, counts) -> None:
        todo = [root]
        while todo:
            for node in todo.pop().children.values():
                if isinstance(node, Dir):
                    todo.append(node)
                else:
                    counts[id(node)] += 1

    def _write_dir(self, root: Dir, path: bytes, counts, leaders) -> tuple[bytes, bytes]:
        """Write a directory's trees and tables, children first, without recursion: a frame per open
        directory, visited in canonical order (which decides which path of an inode leads)."""
        def frame(d: Dir, p: bytes):
            return (d, p, iter(sorted(d.children)), [], [], [])

        stack = [frame(root, path)]
        while True:
            d, dpath, names, centries, mentries, rows = stack[-1]
            name = next(names, None)
            if name is None:
                table = sidetable.encode_table(_row(sidetable.SELF, d, self.keep_mtime), rows)
                mentries.append((MODE_FILE, TABLE_NAME, self.store(OBJ_BLOB, table)))
                c, m = self.store(OBJ_TREE, encode_tree(centries)), self.store(OBJ_TREE, encode_tree(mentries))
                stack.pop()
                if not stack:
                    return c, m
                parent = stack[-1]
                gname = git_name(d_name := dpath.rpartition(b"/")[2])
                parent[3].append((MODE_DIR, gname, c))
                parent[4].append((MODE_DIR, gname, m))
                parent[5].append(_row(d_name, d, self.keep_mtime))
                continue
            node = d.children[name]
            cpath = dpath + b"/" + name if dpath else name
            gname = git_name(name)
            if isinstance(node, Dir):
                stack.append(frame(node, cpath))
                continue
            hl = None
            if counts[id(node)] > 1:
                hl = leaders.get(id(node))
                if hl is None:
                    leaders[id(node)] = cpath
            rows.append(_row(name, node, self.keep_mtime, hl))
            if node.kind is Kind.FILE:
                centries.append((MODE_EXEC if node.mode & 0o100 else MODE_FILE, gname, node.oid))
            elif node.kind is Kind.SYMLINK:
                centries.append((MODE_LINK, gname, node.oid))

    def commit_object(self, message: str, timestamp: int | None, parents: list[bytes], extra_top=(),
                      author: tuple[str, str] | None = None) -> bytes:
        """Finish, install the pack and write a commit object; no branch moves."""
        try:
            top = self.finish_tree(extra_top)
            self.pool.shutdown(wait=True)
            with self.repo.lock():
                self._install()
                cid = write_commit(self.repo, top, parents, message, timestamp, author)
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
        """Finish, install the pack, write the commit and move the branch (last, atomically)."""
        try:
            top = self.finish_tree(extra_top)
            self.pool.shutdown(wait=True)
            with self.repo.lock(on_wait=lock_wait):
                self._install()
                old = self.repo.branch_tip(branch)
                cid = write_commit(self.repo, top, [old] if old is not None else [], message, timestamp, author)
                self.repo.set_branch(branch, cid, old, f"gitree: {message.splitlines()[0] if message else ''}")
        except BaseException:
            self.abort()
            raise
        self._save_checksums()
        self.stats.seconds = time.monotonic() - self._t0
        if self.progress is not None:
            self.progress.done()
        return cid

    def abort(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.pack.abort()


class Transaction:
    """Writes that land whole or not at all, in libostree's shape::

        with repo.transaction(level=1) as tx:
            tx.add(entry, data)                  # files, directories... of the next tree
            tx.commit(branch="main", message="...")

    `add`/`store` build a tree in a new pack (gitree.store.Importer). `write_commit` turns the tree built so
    far into a commit object without moving a branch (a chain of commits: import-ostree); `set_ref` stages a
    branch move. `commit` writes the pending tree (if any) as a commit on `branch` (parents: the branch's tip,
    or `parents`), then moves every staged branch, each under the repository lock and only if it is still where
    it was (BranchMoved otherwise). Leaving the block without `commit` - an exception, a return - aborts: the
    temporary pack of the tree being built is deleted, no branch moves. Packs of commits already written stay
    (their objects are unreferenced; `gitree gc` drops them).
    """

    def __init__(self, repo: Repo, *, keep_mtime: bool = False, level: int = 1, progress: Progress | None = None,
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
            raise GitreeError("the transaction is finished")
        if self._tree is None:
            self._tree = Importer(self.repo, keep_mtime=self.keep_mtime, level=self.level, progress=self.progress,
                                  warn=self.warn)
            self.stats = self._tree.stats
        return self._tree

    def add(self, entry: Entry, data=None, rereadable: bool = False) -> None:
        self.tree.add(entry, data, rereadable)

    def store(self, otype: int, data: bytes) -> bytes:
        return self.tree.store(otype, data)

    def raw_pack(self) -> PackWriter:
        """A pack for objects that arrive whole (bundle apply). `install_packs` installs it; an abort before
        `commit` deletes it, installed or not (no branch refers to its objects then)."""
        if self.done:
            raise GitreeError("the transaction is finished")
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
            raise GitreeError("the transaction is finished")
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


def default_identity(repo: Repo) -> tuple[str, str]:
    cfg = repo.git.config
    name = os.environ.get("GIT_AUTHOR_NAME") or _cfg(cfg, "user.name") or "gitree"
    email = os.environ.get("GIT_AUTHOR_EMAIL") or _cfg(cfg, "user.email") or "gitree@localhost"
    return name, email


def _cfg(cfg, key):
    try:
        return cfg[key]
    except KeyError:
        return None


def write_commit(repo: Repo, tree: bytes, parents: list[bytes], message: str, timestamp: int | None,
                 author: tuple[str, str] | None = None) -> bytes:
    name, email = author or default_identity(repo)
    ts = int(time.time()) if timestamp is None else int(timestamp)
    sig = pygit2.Signature(name, email, ts, 0)
    if message and not message.endswith("\n"):
        message += "\n"
    cid = repo.git.create_commit(None, sig, sig, message, pygit2.Oid(raw=tree),
                                 [pygit2.Oid(raw=p) for p in parents])
    return cid.raw


__all__ = ["Repo", "Importer", "Transaction", "ImportStats", "Progress", "write_commit", "OBJ_COMMIT"]
