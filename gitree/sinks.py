"""Sinks: writers that turn a stream of entries (from Repo.walk) into a tar archive or a directory."""

from __future__ import annotations

import collections
import concurrent.futures
import errno
import os
import resource
import stat
from typing import Callable, Iterable, Iterator

from .entry import Entry, Kind
from .errors import CorruptObject, TargetExists, UnsafePath, UnsupportedEntry, WriteFailed
from .names import display
from .outfile import make_private_dir, require_private_dir
from .sparse import logical_chunks
from .tarformat import TarWriter

ChunksFor = Callable[[Entry], Iterator[bytes]]


def _tar_name(e: Entry) -> bytes:
    if not e.path:
        return b"./"
    return b"./" + e.path + (b"/" if e.kind is Kind.DIR else b"")


def write_tar(entries: Iterable[Entry], write, chunks_for: ChunksFor, sizes: Callable[[Entry], int],
              keep_mtime: bool = False, tick=None, sparse: bool = False) -> tuple[int, int]:
    """Write every entry as a pax tar member; returns (files, bytes).

    A sparse file becomes a GNU sparse 1.0 member with `sparse`, else a plain member of its logical bytes."""
    w = TarWriter(write)
    files = nbytes = 0
    for e in entries:
        mtime = (e.mtime_ns or 0) if keep_mtime else 0
        if e.hardlink is not None:
            w.add(_tar_name(e), e.kind.ifmt, e.mode, e.uid, e.gid, linkname=b"./" + e.hardlink, hardlink=True,
                  mtime_ns=mtime, xattrs=e.xattrs)
            continue
        if e.kind is Kind.FILE:
            size = sizes(e)
            data = chunks_for(e)
            if e.sparse is not None:
                if size != e.sparse.data_size:
                    raise CorruptObject(f"{display(e.path)}: blob holds {size} bytes, its sparse map "
                                        f"{e.sparse.data_size}")
                if not sparse:
                    size, data = e.sparse.size, logical_chunks(e.sparse, data)
            w.add(_tar_name(e), e.kind.ifmt, e.mode, e.uid, e.gid, size=size, mtime_ns=mtime, xattrs=e.xattrs,
                  sparse=e.sparse if sparse else None)
            got = 0
            for chunk in data:
                got += len(chunk)
                w.add_data(chunk)
            if got != size:
                raise CorruptObject(f"{display(e.path)}: blob gave {got} bytes, expected {size}")
            w.pad(size)
            files += 1
            nbytes += size
            if tick:
                tick(files, nbytes, e.path)
        else:
            w.add(_tar_name(e), e.kind.ifmt, e.mode, e.uid, e.gid, linkname=e.target or b"",
                  rdev=e.rdev or (0, 0), mtime_ns=mtime, xattrs=e.xattrs)
    w.close()
    return files, nbytes


class CheckoutReport:
    """Metadata a non-root checkout could not restore, counted per kind."""

    def __init__(self):
        self.failed: dict[str, list[bytes]] = {}

    def add(self, what: str, path: bytes) -> None:
        self.failed.setdefault(what, []).append(path)

    def lines(self) -> list[str]:
        return [f"could not restore {what} for {len(paths)} item(s), e.g. "
                + ", ".join(display(p) for p in paths[:3]) for what, paths in sorted(self.failed.items())]


FD_WINDOW = 32  # directory descriptors a checkout keeps open, whatever the depth
_NOFOLLOW_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# File contents are written by threads (inflating and write(2) release the GIL), in batches to keep the per-file
# cost of handing work over small; at most WRITE_BATCHES * BATCH_FILES files are open and waiting.
WRITERS = 2
BATCH_FILES = 32
BATCH_BYTES = 1 << 20
WRITE_BATCHES = 4
FD_RESERVE = 12   # descriptors left for everything else: std streams, packs, pipes, the process's own


def _open_files_budget() -> int:
    """Created files whose content is pending may hold at most this many descriptors: BATCH_FILES per
    batch in flight, fewer when RLIMIT_NOFILE leaves less beside the directory window (down to one)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    most = BATCH_FILES * (WRITE_BATCHES + 1)
    if soft == resource.RLIM_INFINITY:
        return most
    return max(1, min(most, soft - FD_WINDOW - 1 - FD_RESERVE))


def _proc_path(dirfd: int, name: bytes) -> bytes:
    return b"/proc/self/fd/%d/" % dirfd + name


def _umask() -> int | None:
    """The process's umask, read without changing it (os.umask would, for every thread); None if unknown."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


class DirectoryWriter:
    """Writes entries under DEST. Never follows a symlink inside DEST, never writes outside it.

    Every object is created relative to an open descriptor of its parent with O_NOFOLLOW/O_EXCL, so a
    symlink already in DEST (or created by the tree itself) is never traversed.
    """

    def __init__(self, dest: str, chunks_for: ChunksFor, keep_mtime: bool = False, tick=None):
        self.dest = os.fsencode(dest)
        self.chunks_for = chunks_for
        self.keep_mtime = keep_mtime
        self.tick = tick
        self.report = CheckoutReport()
        self.is_root = os.geteuid() == 0
        self.files = self.nbytes = 0
        # [path, fd or None, entry, (st_dev, st_ino)] of the directories being written, root first; only the
        # deepest FD_WINDOW (and the root) keep a descriptor, so any depth needs a bounded number of fds
        self.stack: list[list] = []
        self.pool: concurrent.futures.ThreadPoolExecutor | None = None
        self.batch: list[tuple[int, Entry, bool]] = []   # created files (open descriptors, created with their
        # mode) whose content is pending
        self.batch_bytes = 0
        self.writing: collections.deque = collections.deque()  # futures of submitted batches
        self.max_open = _open_files_budget()
        self.batch_files = min(BATCH_FILES, self.max_open)
        # Per-file metadata calls that would change nothing are left out (a root filesystem is mostly files
        # of root:root, modes without special bits): fchown is skipped for the owner a new file gets anyway -
        # known once the first file is created and checked with fstat (an id-mapped or root-squashed file
        # system gives another, and then every file is chowned), and never assumed below a setgid
        # destination (its group is inherited); a file of that owner is created with its permission bits
        # (no fchmod) when the umask keeps them all and it has no setuid/setgid/sticky bit.
        self.umask = _umask()
        self.own: tuple[int, int] | None = None   # (uid, gid) new files get here, once checked
        self.own_checked = False

    def run(self, entries: Iterable[Entry]) -> CheckoutReport:
        if os.path.lexists(self.dest):
            if not os.path.isdir(self.dest) or os.path.islink(self.dest):
                raise TargetExists(f"{os.fsdecode(self.dest)} exists and is not a directory")
            if os.listdir(self.dest):
                raise TargetExists(f"{os.fsdecode(self.dest)} is not empty")
            require_private_dir(os.fsdecode(self.dest), "checkout destination")
        else:
            make_private_dir(self.dest)
        try:
            for e in entries:
                try:
                    self._add(e)
                except OSError as err:
                    raise WriteFailed(f"{display(e.path)}: {err.strerror or err}") from None
                except (ValueError, OverflowError) as err:
                    raise UnsupportedEntry(f"{display(e.path)}: cannot create: {err}") from None
            self._submit()
            self._wait(0)
            while self.stack:
                self._close_dir()
        finally:
            for fd, *_ in self.batch:
                os.close(fd)
            self.batch = []
            if self.pool is not None:
                self.pool.shutdown(wait=True, cancel_futures=True)
                for fut in self.writing:  # a cancelled batch still owns its open descriptors
                    if fut.cancelled():
                        for fd, *_ in fut.gitree_batch:
                            os.close(fd)
            for frame in self.stack:
                if frame[1] is not None:
                    os.close(frame[1])
        return self.report

    def _submit(self) -> None:
        if not self.batch:
            return
        if self.pool is None:
            self.pool = concurrent.futures.ThreadPoolExecutor(WRITERS, thread_name_prefix="gitree-checkout")
        batch, self.batch, self.batch_bytes = self.batch, [], 0
        fut = self.pool.submit(self._write_batch, batch)
        fut.gitree_batch = batch
        self.writing.append(fut)
        self._wait(WRITE_BATCHES)

    def _make_room(self) -> None:
        """Before a file is created: the descriptors of pending files stay within the budget."""
        while len(self.batch) + sum(len(f.gitree_batch) for f in self.writing) >= self.max_open:
            if self.batch:
                self._submit()
            if self.writing:
                self._wait(len(self.writing) - 1)

    def _wait(self, keep: int) -> None:
        while len(self.writing) > keep:
            for path, nbytes in self.writing.popleft().result():
                self.files += 1
                self.nbytes += nbytes
                if self.tick:
                    self.tick(self.files, self.nbytes, path)

    def _write_batch(self, batch: list[tuple[int, Entry, bool]]) -> list[tuple[bytes, int]]:
        """Content and metadata of created files; every descriptor of the batch is closed, whatever happens."""
        out = []
        it = iter(batch)
        try:
            for fd, e, direct in it:
                try:
                    n = 0
                    if e.sparse is not None:
                        n = self._write_sparse(fd, e)
                    else:
                        for chunk in self.chunks_for(e):
                            view = memoryview(chunk)
                            while view:
                                k = os.write(fd, view)
                                view = view[k:]
                                n += k
                    self._meta_fd(fd, e, created=True, mode_set=direct)
                except OSError as err:
                    raise WriteFailed(f"{display(e.path)}: {err.strerror or err}") from None
                except (ValueError, OverflowError) as err:
                    raise UnsupportedEntry(f"{display(e.path)}: cannot write: {err}") from None
                finally:
                    os.close(fd)
                out.append((e.path, n))
        finally:
            for fd, *_ in it:
                os.close(fd)
        return out

    def _parent_fd(self, path: bytes) -> int:
        parent = path.rpartition(b"/")[0] if b"/" in path else b""
        while self.stack and self.stack[-1][0] != parent:
            self._close_dir()
        if not self.stack:
            raise UnsafePath(f"{display(path)}: parent directory not open (entries out of order)")
        return self.stack[-1][1]

    def _check_owner(self, fd: int) -> None:
        """The owner the first new file got: the one fchown may be skipped for (see __init__)."""
        self.own_checked = True
        st = os.fstat(fd)
        root = self.stack[0][1] if self.stack and self.stack[0][1] is not None else None
        if root is None or os.fstat(root).st_mode & stat.S_ISGID:
            return
        if (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid()):
            self.own = (st.st_uid, st.st_gid)

    def _add(self, e: Entry) -> None:
        if e.path == b"":
            self._push(b"", os.open(self.dest, _NOFOLLOW_DIR), e)
            return
        pfd = self._parent_fd(e.path)
        name = e.name
        if e.hardlink is not None:
            # the reader guarantees the leader is an earlier entry that is neither a directory nor a link
            ppath, _, lname = e.hardlink.rpartition(b"/")
            src_fd = self._open_dir(ppath)
            try:
                os.link(lname, name, src_dir_fd=src_fd, dst_dir_fd=pfd, follow_symlinks=False)
            finally:
                os.close(src_fd)
            return
        if e.kind is Kind.DIR:
            os.mkdir(name, 0o700, dir_fd=pfd)
            self._push(e.path, os.open(name, _NOFOLLOW_DIR, dir_fd=pfd), e)
            return
        if e.kind is Kind.FILE:
            self._make_room()
            perms = e.mode & 0o7777
            # with its final mode only when it also has its final owner: never readable by others than
            # those its mode and owner will admit
            direct = self.umask is not None and not perms & (0o7000 | self.umask) and (e.uid, e.gid) == self.own
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         perms if direct else 0o600, dir_fd=pfd)
            if not self.own_checked:
                self._check_owner(fd)
            self.batch.append((fd, e, direct))
            self.batch_bytes += e.size or 0
            if len(self.batch) >= self.batch_files or self.batch_bytes >= BATCH_BYTES:
                self._submit()
            return
        if e.kind is Kind.SYMLINK:
            os.symlink(e.target, name, dir_fd=pfd)
        else:
            try:
                os.mknod(name, e.st_mode, os.makedev(*e.rdev) if e.rdev else 0, dir_fd=pfd)
            except PermissionError:
                self.report.add(f"{e.kind.name.lower()} node", e.path)
                return
        self._meta_path(pfd, name, e)

    def _write_sparse(self, fd: int, e: Entry) -> int:
        """Only the data segments are written, each at its offset; the holes stay holes (the file system
        allocates nothing for them), and the file is cut to its logical size. Returns the bytes written."""
        segs = iter(e.sparse.segments)
        pos = end = written = 0
        for chunk in self.chunks_for(e):
            view = memoryview(chunk)
            while view:
                if pos == end:
                    seg = next(segs, None)
                    if seg is None:
                        raise CorruptObject(f"{display(e.path)}: blob is longer than its sparse map")
                    pos, end = seg[0], seg[0] + seg[1]
                n = os.pwrite(fd, view[:end - pos], pos)
                view = view[n:]
                pos += n
                written += n
        if pos != end or next(segs, None) is not None:
            raise CorruptObject(f"{display(e.path)}: blob is shorter than its sparse map")
        os.ftruncate(fd, e.sparse.size)
        return written

    def _open_dir(self, path: bytes) -> int:
        fd = os.open(self.dest, _NOFOLLOW_DIR)
        for comp in (path.split(b"/") if path else []):
            nfd = os.open(comp, _NOFOLLOW_DIR, dir_fd=fd)
            os.close(fd)
            fd = nfd
        return fd

    def _push(self, path: bytes, fd: int, e: Entry) -> None:
        st = os.fstat(fd)
        self.stack.append([path, fd, e, (st.st_dev, st.st_ino)])
        old = len(self.stack) - 1 - FD_WINDOW
        if old > 0 and self.stack[old][1] is not None:
            os.close(self.stack[old][1])
            self.stack[old][1] = None

    def _close_dir(self) -> None:
        path, fd, e, _ = self.stack.pop()
        try:
            parent = self.stack[-1] if self.stack else None
            if parent is not None and parent[1] is None:
                # reopen the parent through "..", before this directory's own mode can forbid the lookup,
                # and make sure it is the same directory
                pfd = os.open(b"..", _NOFOLLOW_DIR, dir_fd=fd)
                st = os.fstat(pfd)
                if (st.st_dev, st.st_ino) != parent[3]:
                    os.close(pfd)
                    raise UnsafePath(f"{display(parent[0])}: the directory was moved during the checkout")
                parent[1] = pfd
            self._meta_fd(fd, e, created=bool(path))   # the destination itself may be someone else's
        finally:
            os.close(fd)

    def _meta_fd(self, fd: int, e: Entry, created: bool = False, mode_set: bool = False) -> None:
        """`created`: a file this checkout made (its owner is self.own when that is known); `mode_set`: it was
        created with its permission bits (and has no special bit a chown would clear)."""
        if not (created and (e.uid, e.gid) == self.own):
            self._chown(lambda: os.fchown(fd, e.uid, e.gid), e)
        if not mode_set:
            os.fchmod(fd, e.mode)
        for n, v in e.xattrs:
            self._setxattr(os.setxattr, (fd, n, v), {}, n, e)
        if self.keep_mtime and e.mtime_ns is not None:
            os.utime(fd, ns=(e.mtime_ns, e.mtime_ns))

    def _meta_path(self, pfd: int, name: bytes, e: Entry) -> None:
        if (e.uid, e.gid) != self.own:   # made here (a symlink or a node): see __init__
            self._chown(lambda: os.chown(name, e.uid, e.gid, dir_fd=pfd, follow_symlinks=False), e)
        if e.kind is not Kind.SYMLINK:
            os.chmod(name, e.mode, dir_fd=pfd)
        pp = _proc_path(pfd, name)
        for n, v in e.xattrs:
            self._setxattr(os.setxattr, (pp, n, v), {"follow_symlinks": False}, n, e)
        if self.keep_mtime and e.mtime_ns is not None:
            os.utime(name, ns=(e.mtime_ns, e.mtime_ns), dir_fd=pfd, follow_symlinks=False)

    def _chown(self, fn, e: Entry) -> None:
        try:
            fn()
        except PermissionError:
            self.report.add("ownership", e.path)

    def _setxattr(self, fn, args, kwargs, name: bytes, e: Entry) -> None:
        try:
            fn(*args, **kwargs)
        except OSError as err:
            if err.errno in (errno.EPERM, errno.EACCES, errno.EOPNOTSUPP, errno.ENOTSUP):
                self.report.add(f"xattr {name.decode('utf-8', 'backslashreplace')}", e.path)
            else:
                raise

