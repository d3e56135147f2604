"""The repository: a bare git repository plus gitree's conventions. What every command holds.

`Repo` opens and creates repositories, takes the writer lock, reads and moves branches (refs/heads/ only),
reads objects (by size bound and type; blobs larger than STREAM_BLOB are streamed by `git cat-file`, never held
whole), and writes commit objects. Reading trees (validated) is treeread's job and writing them is importer's:
`walk`, `verify`, `find`, `read_dir`, `commit_trees` and `transaction` here are thin entry points to them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from typing import Callable, Iterator

import pygit2

from . import lockfile, tools, treeread
from .entry import Entry
from .gittree import ContentRef
from .errors import BadInput, BranchMoved, CorruptObject, NotFound, RepoLocked, TargetExists, UsageError
from .importer import Progress, Transaction
from .packwriter import OBJ_BLOB, OBJ_COMMIT, OBJ_TREE

# gitree runs no program named by a repository (no hooks, filters or helpers), so a repository owned by
# another user (a build user's, opened by root in an image pipeline) is opened as git would for its owner.
pygit2.option(pygit2.enums.Option.SET_OWNER_VALIDATION, 0)

STREAM_BLOB = 32 << 20        # blobs larger than this are read through `git cat-file` streaming
_TYPE_NAMES = {OBJ_BLOB: "blob", OBJ_TREE: "tree", OBJ_COMMIT: "commit"}


def _c_quote(path: str) -> str:
    """A path as git reads a quoted entry of GIT_ALTERNATE_OBJECT_DIRECTORIES: in double quotes, with '"',
    '\\' and every byte outside printable ASCII as a backslash escape (octal)."""
    out = []
    for b in os.fsencode(path):
        if b in (0x22, 0x5C):
            out.append("\\" + chr(b))
        elif 0x20 <= b < 0x7F:
            out.append(chr(b))
        else:
            out.append("\\%03o" % b)
    return '"' + "".join(out) + '"'


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
            raise NotFound(f"cannot open repository {path}: {e}") from None
        self.path = self.git.path.rstrip("/")
        self.objects_dir = os.path.join(self.path, "objects")
        self._local = threading.local()
        self._gits: list[pygit2.Repository] = []      # the per-thread repositories (close frees them)
        self._extra_objects: tuple[str, ...] = ()   # a view's quarantine (with_objects)

    def with_objects(self, objects_dir: str) -> "Repo":
        """A second view of this repository that also reads the objects in `objects_dir` (a quarantine of
        packs not accepted yet: packwriter.Quarantine). Only this view reads them; `close` it when done."""
        view = Repo(self.path)
        view._extra_objects = (objects_dir,)
        view.git.odb.add_disk_alternate(objects_dir)
        return view

    def _open_git(self) -> pygit2.Repository:
        """A new pygit2 handle on this repository, reading a view's quarantine too."""
        g = pygit2.Repository(self.path, pygit2.enums.RepositoryOpenFlag.NO_SEARCH)
        for d in self._extra_objects:
            g.odb.add_disk_alternate(d)
        return g

    def close(self) -> None:
        """Release the object databases (their open and mapped packs) of this Repo's pygit2 repositories, the
        per-thread ones too. A view must not be used after: its repositories would reopen without the
        quarantine."""
        for g in [self.git, *self._gits]:
            g.free()

    # -- creation, locking, refs -------------------------------------------------------------

    @staticmethod
    def init(path: str) -> "Repo":
        if os.path.exists(os.path.join(path, "objects")) and os.path.exists(os.path.join(path, "HEAD")):
            raise TargetExists(f"a repository already exists at {path}")
        if os.path.exists(path) and not os.path.isdir(path):
            raise TargetExists(f"{path} exists and is not a directory")
        pygit2.init_repository(path, bare=True, initial_head="main")
        repo = Repo(path)
        cfg = repo.git.config
        cfg["gitree.format"] = "1"
        # Blobs of a rootfs are mostly binaries; deltas across versions are what make packs small.
        cfg["pack.window"] = "50"
        cfg["pack.depth"] = "50"
        return repo

    def _flock(self, name: str, op: int, wait: bool = True, on_wait: Callable[[], None] | None = None) -> int:
        def busy() -> None:
            raise RepoLocked(f"repository {self.path} is locked by another gitree writer")
        return lockfile.take(os.path.join(self.path, name), op, on_wait, None if wait else busy)

    @contextlib.contextmanager
    def lock(self, wait: bool = True, on_wait: Callable[[], None] | None = None):
        """Exclusive writer lock on the repository (flock on gitree.lock)."""
        fd = self._flock("gitree.lock", fcntl.LOCK_EX, wait, on_wait)
        try:
            yield
        finally:
            lockfile.release(fd)

    def objects_in_use(self, on_wait: Callable[[], None] | None = None) -> int:
        """Declare that this process counts on objects it finds present (a writer skips writing what the
        repository holds): a shared lock on gitree.objects.lock, which `gc` takes exclusively, so no repack
        drops an object between a writer's finding it and the branch that comes to name it. Returns the
        descriptor; `lockfile.release` releases it. Order: this before `lock()`, as gc does.

        Then this Repo's pygit2 handles are opened afresh: libgit2 keeps a pack it has mapped readable after
        a gc deleted the file, and answers for objects that are gone from disk; what this Repo read before
        the lock (make-bootable's source tree, a bundle's base) must not make a writer skip them."""
        fd = self._flock("gitree.objects.lock", fcntl.LOCK_SH, on_wait=on_wait)
        try:
            self.reopen()
        except BaseException:
            lockfile.release(fd)
            raise
        return fd

    def reopen(self) -> None:
        """Fresh pygit2 handles (the view's quarantine still added): objects are looked up on disk as it is
        now, not through packs opened before."""
        self.git = self._open_git()
        self._local = threading.local()
        self._gits = []

    @contextlib.contextmanager
    def objects_exclusive(self, on_wait: Callable[[], None] | None = None):
        """gc's side of objects_in_use: waits until no writer counts on present objects (calling on_wait()
        first if it must), and holds them off."""
        fd = self._flock("gitree.objects.lock", fcntl.LOCK_EX, on_wait=on_wait)
        try:
            yield
        finally:
            lockfile.release(fd)

    def transaction(self, *, keep_mtime: bool = False, level: int = 1, progress: Progress | None = None,
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
            raise UsageError(f"invalid branch name: {branch} (only branches, refs/heads/<name>, are written)")
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
            g = self._local.git = self._open_git()
            if self._extra_objects:
                self._gits.append(g)
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
        env = None
        if self._extra_objects:   # a view's quarantine, for git too (each path quoted: git splits on ':')
            env = {**os.environ, "GIT_ALTERNATE_OBJECT_DIRECTORIES": ":".join(map(_c_quote, self._extra_objects))}
        proc = tools.popen(["git", "-c", "core.packedGitWindowSize=32m", "-c", "core.packedGitLimit=128m",
                            "-c", "core.bigFileThreshold=32m", "--git-dir", self.path, "cat-file", "blob", oid.hex()],
                           env=env)
        got = 0
        try:
            while True:
                buf = proc.stdout.read(1 << 20)
                if not buf:
                    break
                got += len(buf)
                yield buf
        finally:
            rc, err = tools.finish(proc)
        if rc != 0 or got != size:
            why = tools.last_line(err, "git") or f"git exited with status {rc}, {got} of {size} bytes read"
            raise CorruptObject(f"cannot read blob {oid.hex()} ({where}): {why}")

    def read_bounded(self, oid: bytes, expect: int, limit: int, where: str = "") -> bytes:
        """An object's bytes, refused from its header (before it is inflated) when larger than `limit`."""
        size = self.object_size(oid, expect, where)
        if size > limit:
            raise CorruptObject(f"object {oid.hex()} ({where}) is {size} bytes, more than the limit of {limit}")
        return self.read(oid, expect, where)

    def write_commit(self, tree: bytes, parents: list[bytes], message: str, timestamp: int | None,
                     author: tuple[str, str] | None = None) -> bytes:
        """A commit object for `tree` (no branch moves); `author` defaults to default_identity. The tree must be
        in the repository and each parent a commit in it."""
        if not self._has_type(tree, OBJ_TREE):
            raise UsageError(f"a commit of tree {tree.hex()}, which is not a tree of the repository")
        return self.git.odb.write(pygit2.enums.ObjectType.COMMIT,
                                  self.commit_bytes(tree, parents, message, timestamp, author)).raw

    def commit_bytes(self, tree: bytes, parents: list[bytes], message: str, timestamp: int | None,
                     author: tuple[str, str] | None = None, written: frozenset | set = frozenset()) -> bytes:
        """The bytes of a commit object, the one encoder of commits gitree writes (write_commit, and
        Transaction.write_commit into a pack not installed yet). Each parent must be a commit of the
        repository or in `written` (commits the caller wrote). The signature is libgit2's as it parses the
        name and email; the time is written whole (libgit2's own writer cuts it to 32 bits: a commit of an
        OSTree timestamp past 2106 got another time), and must be 0..2^63-1 as the reader takes."""
        name, email = author or default_identity(self)
        ts = int(time.time()) if timestamp is None else int(timestamp)
        check_commit_fields(message, ts)
        if message and not message.endswith("\n"):
            message += "\n"
        for p in parents:
            if p not in written and not self._has_type(p, OBJ_COMMIT):
                raise UsageError(f"parent {p.hex()} is not a commit of the repository")
        sig = pygit2.Signature(name, email, ts, 0)
        who = f"{sig.name} <{sig.email}> {ts} +0000".encode()
        head = [b"tree " + tree.hex().encode()] + [b"parent " + p.hex().encode() for p in parents]
        return b"\n".join([*head, b"author " + who, b"committer " + who]) + b"\n\n" + message.encode()

    def check_commit(self, message: str, timestamp: int | None) -> None:
        """check_commit_fields, for writers that take a Repo."""
        check_commit_fields(message, timestamp)

    def _has_type(self, oid: bytes, want: int) -> bool:
        try:
            otype, _ = self._thread_git().odb.read_header(pygit2.Oid(raw=oid))   # the type, not the object
        except KeyError:
            return False
        return int(otype) == want

    # -- reading trees: entry points to treeread, the one validating reader ----------------------

    def commit_trees(self, commit: pygit2.Commit) -> tuple[bytes, bytes]:
        """(content root tree id, meta root tree id) of a gitree commit."""
        return treeread.commit_trees(self, commit)

    def top_entries(self, commit: pygit2.Commit) -> dict[bytes, ContentRef]:
        """The top tree's entries by name, each a ContentRef (git mode, oid)."""
        return {name: ContentRef(*ref) for name, ref in treeread.top_entries(self, commit).items()}

    def read_dir(self, path: bytes, content_oid: bytes, meta_oid: bytes) -> treeread.DirNode:
        return treeread.read_dir(self, path, content_oid, meta_oid)

    def walk(self, commit: pygit2.Commit, subpath: bytes = b"",
             problems: list | None = None) -> Iterator[Entry]:
        """Every entry of a commit in canonical order, validated (treeread.walk)."""
        return treeread.walk(self, commit, subpath, problems)

    def verify(self, commit: pygit2.Commit, problems: list | None = None,
               verified: treeread.Verified | None = None) -> None:
        """fsck's check of a whole commit (treeread.verify; `verified`: directories a batch checked before)."""
        treeread.verify(self, commit, problems, verified)

    def find(self, root: tuple[bytes, bytes], path: bytes) -> Entry | None:
        """The entry at `path` below root (content tree, meta tree), or None (treeread.find)."""
        return treeread.find(self, root, path)


def check_commit_fields(message: str, timestamp: int | None) -> None:
    """What a commit may hold (Repo.commit_bytes): a time of 0..2^63-1 seconds, as the reader takes, and no
    NUL in its message. Writers check it before they write anything."""
    if timestamp is not None and not 0 <= int(timestamp) < 1 << 63:
        raise BadInput(f"commit time {int(timestamp)} is outside 0..2^63-1 seconds since 1970")
    if "\0" in message:
        raise BadInput("a commit message cannot hold a NUL byte")


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


__all__ = ["Repo", "default_identity", "check_commit_fields", "STREAM_BLOB"]
