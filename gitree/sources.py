"""Sources: readers that turn a tar archive or a directory into a stream of entries.

Each yields (Entry, data, rereadable): `data` is None or a callable giving a regular file's bytes in
chunks; for a tar stream it must be consumed before the next entry is taken.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import sys
import threading
from typing import BinaryIO, Callable, Iterator, NamedTuple

from . import tools
from .entry import Entry, Kind, sorted_xattrs
from .errors import BadInput, UnsafePath
from .infile import open_regular
from .names import display, normalize_member_path
from .sparse import SparseMap, coarsen
from .sparse import canonical as sparse_canonical
from .tarformat import LNKTYPE, TarReader


class SourceItem(NamedTuple):
    """One entry a source yields: `data` is None or a callable giving a regular file's bytes; `rereadable`:
    calling it again gives the same bytes (a directory's file; not a tar stream's)."""

    entry: Entry
    data: Callable | None
    rereadable: bool


Item = SourceItem


# (first bytes, format name, decompressor command): recognised by content, never by file name
_MAGICS = [
    (b"\x1f\x8b", "gzip", ["gzip", "-dc"]),
    (b"\x1f\x9d", "compress (.Z)", ["gzip", "-dc"]),  # gzip reads LZW .Z files
    (b"\xfd7zXZ\x00", "xz", ["xz", "-dc", "-T2"]),
    (b"\x28\xb5\x2f\xfd", "zstd", ["zstd", "-dc", "-q"]),
    (b"BZh", "bzip2", ["bzip2", "-dc"]),
    (b"\x04\x22\x4d\x18", "lz4", ["lz4", "-dc"]),
    (b"\x02\x21\x4c\x18", "lz4 (legacy)", ["lz4", "-dc"]),
    (b"\x89LZO\x00\r\n\x1a\n", "lzo", ["lzop", "-dc"]),
    (b"LZIP", "lzip", ["lzip", "-dc"]),
]
_SKIPPABLE_PEEK = 1 << 20  # how far past skippable frames (zstd and lz4 share them) we look for the real one


def _is_skippable(head: bytes) -> bool:
    return len(head) >= 8 and 0x50 <= head[0] <= 0x5F and head[1:4] == b"\x2a\x4d\x18"


class TarInput:
    """A tar archive from a file or stdin, decompressed by an external process when compressed.

    The format is recognised from its first bytes, not the file name.
    """

    def __init__(self, source: str | BinaryIO):
        self.proc = None
        self.closed = False
        self._pump = None
        self._pump_error: BaseException | None = None
        self.format = "tar"
        self.eof = False
        self.name = source if isinstance(source, str) else "<stdin>"
        if isinstance(source, str):
            self.raw = open_regular(source, "tar", stdin_hint=True)  # a FIFO or device is refused, not read
        else:
            self.raw = source
        head = self._peek(12)
        pos = 0
        while _is_skippable(head[pos:]):
            pos += 8 + int.from_bytes(head[pos + 4:pos + 8], "little")
            if pos + 12 > _SKIPPABLE_PEEK:
                break
            head += self._peek(pos + 12 - len(head))
        magic_at = head[pos:] if pos < len(head) else b""
        for magic, fmt, cmd in _MAGICS:
            if magic_at.startswith(magic) or (pos and fmt == "zstd" and not magic_at):
                if shutil.which(cmd[0]) is None:
                    raise BadInput(f"{self.name} is compressed with {fmt}; '{cmd[0]}' is not installed: "
                                   "decompress it first, or pipe it in")
                self.format = fmt
                self._start(cmd, head)
                return
        if pos:
            self.format = "zstd"
            self._start(["zstd", "-dc", "-q"], head)
            return
        self._prefix = head
        self.read = self._read_plain

    def _peek(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            more = self.raw.read(n - len(buf))
            if not more:
                break
            buf += more
        return buf

    def _read_plain(self, n: int) -> bytes:
        if self._prefix:
            out, self._prefix = self._prefix[:n], self._prefix[n:]
            if len(out) < n:
                out += self.raw.read(n - len(out))
            return out
        return self.raw.read(n)

    def _start(self, cmd: list[str], head: bytes) -> None:
        self.proc = tools.popen(cmd, stdin=tools.PIPE)

        def pump():
            try:
                self.proc.stdin.write(head)
                while True:
                    buf = self.raw.read(1 << 20)
                    if not buf:
                        break
                    self.proc.stdin.write(buf)
            except BrokenPipeError:
                pass
            except BaseException as e:  # reported by close()
                self._pump_error = e
            finally:
                try:
                    self.proc.stdin.close()
                except BrokenPipeError:
                    pass

        self._pump = threading.Thread(target=pump, daemon=True)
        self._pump.start()
        self.read = self._read_proc

    def _read_proc(self, n: int) -> bytes:
        buf = self.proc.stdout.read(n)
        if len(buf) < n:  # a buffered pipe read is short only at the end of the stream
            self.eof = True
        return buf

    def failure(self) -> str | None:
        """Why the decompressor failed, if its output ended and it exited with an error: the reader's own
        complaint about a cut stream is then only a consequence."""
        if self.proc is None or self.closed or not self.eof:
            return None  # the reader stopped inside the stream: the fault is in the tar, not the compression
        try:
            rc, line = tools.wait(self.proc, timeout=60)
        except (OSError, ValueError, tools.TimeoutExpired):
            return None
        if rc == 0:
            return None
        return f"{self.name}: {self.format} decompression failed: {line or rc}"

    def close(self, ok: bool = True) -> None:
        """Release the input; with ok, check the decompressor finished cleanly. Safe to call twice."""
        if self.closed:
            return
        self.closed = True
        try:
            if self.proc is not None:
                if ok:
                    # Let the decompressor finish: what follows the end-of-archive blocks (record padding)
                    # is read and dropped, so it never dies of SIGPIPE.
                    while self.proc.stdout.read(1 << 20):
                        pass
                else:
                    self.proc.kill()
                self.proc.stdout.close()
                rc, line = tools.wait(self.proc)
                if ok and self._pump is not None:
                    self._pump.join()
                if ok and self._pump_error is not None:
                    raise BadInput(f"{self.name}: read failed: {self._pump_error}")
                if ok and rc != 0:
                    raise BadInput(f"{self.name}: {self.format} decompression failed: {line or rc}")
        finally:
            if self.raw is not sys.stdin.buffer:
                self.raw.close()


class WarningLog(list):
    """The warning lines of one import, bounded whatever the input: the first KEEP lines, each cut to
    LINE_MAX characters; `total` counts every line, and close() adds one that says how many were not
    kept. (An import prints its warnings at its end, after --strict could still refuse it: a tar of a
    million warned members, or of 8 MiB pax paths, would otherwise hold them all.)"""

    KEEP = 1000
    LINE_MAX = 4400          # a whole PATH_MAX path and its message

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def append(self, line: str) -> None:
        self.total += 1
        if len(self) < self.KEEP:
            super().append(line if len(line) <= self.LINE_MAX else line[:self.LINE_MAX] + "...")

    def extend(self, lines) -> None:
        for line in lines:
            self.append(line)

    def close(self) -> None:
        if self.total > len(self):
            super().append(f"{self.total - len(self)} more warning(s) not shown")


def tar_entries(inp: TarInput, warnings: list[str] | None = None) -> Iterator[Item]:
    """Entries of a tar; what was read but not kept is appended to `warnings`, one line each."""
    reader = TarReader(inp.read)
    if warnings is None:
        warnings = []
    for m in reader:
        warnings.extend(reader.warnings)
        warnings.extend(m.warnings)
        reader.warnings.clear()
        path = normalize_member_path(m.path)
        kind = Kind.from_mode(m.ifmt | m.mode)
        e = Entry(path, kind, m.mode, m.uid, m.gid, sorted_xattrs(m.xattrs), mtime_ns=m.mtime_ns, size=m.size,
                  sparse=m.sparse)
        if m.typeflag == LNKTYPE:
            e.hardlink = normalize_member_path(m.linkname)
            e.size = 0
            yield SourceItem(e, None, False)
            continue
        if kind is Kind.SYMLINK:
            e.target = m.linkname
        elif kind in (Kind.CHAR, Kind.BLOCK):
            e.rdev = (m.devmajor, m.devminor)
        if kind is Kind.FILE:
            yield SourceItem(e, reader.iter_data, False)
        else:
            yield SourceItem(e, None, False)
    warnings.extend(reader.warnings)
    if reader.end_missing:
        warnings.append(f"{inp.name}: the archive ends at byte {reader.pos} without its end-of-archive blocks "
                        f"(truncated?); imported the {reader.members} members it holds")


# ---------------------------------------------------------------------------------------------

class DirectoryReport:
    """What a directory walk could not capture (unreadable files, xattrs, other filesystems)."""

    def __init__(self):
        self.unreadable: list[tuple[bytes, str]] = []
        self.mountpoints: list[bytes] = []
        self.excluded: list[bytes] = []
        self.exclude: tuple[int, int] | None = None

    def unreadable_items(self) -> str:
        """The first few unreadable items, each with why."""
        first = ", ".join(f"{display(p)} ({why})" for p, why in self.unreadable[:5])
        return first + (" ..." if len(self.unreadable) > 5 else "")

    def lines(self) -> list[str]:
        out = []
        if self.unreadable:
            out.append(f"could not read {len(self.unreadable)} item(s), not captured: {self.unreadable_items()}")
        if self.mountpoints:
            out.append(f"did not cross into {len(self.mountpoints)} other filesystem(s), stored as empty "
                       f"directories: " + ", ".join(display(p) for p in self.mountpoints[:5]))
        for p in self.excluded:
            out.append(f"left out {display(p)}: it is the gitree repository being written")
        return out


# The walk reaches everything from open directory descriptors, one name below one of them at a time, so a
# path never grows past what one syscall takes (a tree at the depth limit has paths far longer than
# PATH_MAX). Only the deepest WALK_FDS directories of the walk (and its root) keep a descriptor; a closed
# one is reopened through ".." of its child when the walk climbs back, else one component at a time from
# the nearest ancestor that holds one. Every directory or file opened is checked to be the inode lstat saw
# (st_dev, st_ino): one swapped in meanwhile is reported, never read or followed.
WALK_FDS = 32
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # a FIFO swapped in never blocks
_CHUNK = 1 << 20


class _Changed(OSError):
    """What was opened is not the inode the walk saw at that name: the tree changed under the walk."""


def _open_at(dfd: int | None, name: bytes, flags: int, key: tuple[int, int]) -> int:
    """`name` below directory descriptor `dfd` (None: `name` is a path), opened with `flags`, checked to be
    the inode `key` (st_dev, st_ino)."""
    fd = os.open(name, flags, dir_fd=dfd)
    st = os.fstat(fd)
    if st.st_ino != key[1] or st.st_dev != key[0]:
        os.close(fd)
        raise _Changed(errno.ESTALE, "changed while it was read")
    return fd


def _open_file(dfd: int, name: bytes, key: tuple[int, int], noatime: bool) -> int:
    """A regular file for reading, without updating its access time when we may."""
    if noatime:
        try:
            return _open_at(dfd, name, _FILE_FLAGS | os.O_NOATIME, key)
        except PermissionError:  # O_NOATIME needs the file's owner or CAP_FOWNER
            pass
    return _open_at(dfd, name, _FILE_FLAGS, key)


class _Dir:
    """A directory of the walk: its parent, its name there (the root's: the path it was given), its
    (st_dev, st_ino) when entered, and its descriptor while it holds one."""

    __slots__ = ("parent", "name", "key", "fd")

    def __init__(self, parent: _Dir | None, name: bytes, key: tuple[int, int], fd: int | None = None):
        self.parent, self.name, self.key, self.fd = parent, name, key, fd

    def reopen(self) -> int:
        """A new descriptor of this directory, opened one component at a time down from its nearest
        ancestor that holds one (the root's path if none does), each level checked to be the one entered."""
        chain = []
        d = self
        while d.fd is None and d.parent is not None:
            chain.append(d)
            d = d.parent
        own = d.fd is None
        fd = _open_at(None, d.name, _DIR_FLAGS, d.key) if own else d.fd
        try:
            for c in reversed(chain):
                nfd = _open_at(fd, c.name, _DIR_FLAGS, c.key)
                if own:
                    os.close(fd)
                fd, own = nfd, True
        except BaseException:
            if own:
                os.close(fd)
            raise
        return fd if own else os.dup(fd)


class _FileData:
    """A regular file's bytes in chunks, as a callable: the first call takes the descriptor the walk opened
    (the walk closes it when it goes on, if it was not taken); a later call opens the file again below its
    directory. Each reader closes its descriptor when done."""

    __slots__ = ("dir", "name", "key", "segs", "fd")

    def __init__(self, d: _Dir, name: bytes, key: tuple[int, int], segs, fd: int):
        self.dir, self.name, self.key, self.segs, self.fd = d, name, key, segs, fd

    def __call__(self) -> Iterator[bytes]:
        fd, self.fd = self.fd, None
        try:
            if fd is None:
                fd = self._reopen()
            for off, n in self.segs:
                while n > 0:
                    buf = os.pread(fd, min(n, _CHUNK), off)
                    if not buf:
                        return
                    off += len(buf)
                    n -= len(buf)
                    yield buf
        finally:
            if fd is not None:
                os.close(fd)

    def _reopen(self) -> int:
        dfd = self.dir.fd
        own = dfd is None
        if own:
            dfd = self.dir.reopen()
        try:
            return _open_file(dfd, self.name, self.key, True)
        finally:
            if own:
                os.close(dfd)

    def close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)


def _read_xattrs(target: int | bytes, report: DirectoryReport, rel: bytes) -> tuple:
    """The xattrs of an open descriptor, or of a path (its last component not followed)."""
    follow = isinstance(target, int)  # a descriptor takes no follow_symlinks=False
    try:
        names = os.listxattr(target, follow_symlinks=follow)
    except OSError as e:
        if e.errno in (95, 61):  # EOPNOTSUPP, ENODATA
            return ()
        report.unreadable.append((rel, f"xattrs: {e.strerror}"))
        return ()
    out = []
    for n in names:
        try:
            v = os.getxattr(target, n, follow_symlinks=follow)
        except OSError as e:
            if e.errno == 61:
                continue
            report.unreadable.append((rel, f"xattr {n}: {e.strerror}"))
            continue
        out.append((os.fsencode(n), v))
    return sorted_xattrs(out)


def _data_segments(fd: int, size: int) -> list[tuple[int, int]] | None:
    """Where a file's data lies (SEEK_DATA/SEEK_HOLE), or None if the file system cannot tell."""
    segs = []
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # only a hole up to the end
                break
            return None
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        if end <= start:
            return None
        segs.append((start, end - start))
        pos = end
    return segs


def _sparse_map(fd: int, st: os.stat_result) -> SparseMap | None:
    """A file with fewer allocated blocks than its size has holes: its map, if it has holes at all."""
    if st.st_blocks * 512 >= st.st_size:
        return None
    segs = _data_segments(fd, st.st_size)
    if segs is None:
        return None
    try:
        return sparse_canonical(st.st_size, coarsen(segs))
    except ValueError:
        return None  # over the logical-size limit: read as an ordinary file, as before


def directory_entries(root: str | bytes, report: DirectoryReport, one_file_system: bool = True,
                      exclude: str | None = None) -> Iterator[Item]:
    """Walk a directory tree without following symlinks; entries in canonical order."""
    root_b = os.fsencode(root)
    try:
        st = os.lstat(root_b)
    except OSError as e:
        raise BadInput(f"cannot read {os.fsdecode(root_b)}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise BadInput(f"{os.fsdecode(root_b)} is not a directory or a tar archive")
    if exclude is not None:
        try:
            xs = os.stat(exclude)
            report.exclude = (xs.st_dev, xs.st_ino)
        except OSError:
            pass
    yield from _Walk(root_b, report, st.st_dev if one_file_system else None).run(st)


def _entry_from_stat(rel: bytes, st: os.stat_result, xattrs) -> Entry:
    kind = Kind.from_mode(st.st_mode)
    e = Entry(rel, kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, xattrs, mtime_ns=st.st_mtime_ns)
    if kind in (Kind.CHAR, Kind.BLOCK):
        e.rdev = (os.major(st.st_rdev), os.minor(st.st_rdev))
    if kind is Kind.FILE:
        e.size = st.st_size
    return e


class _Walk:
    """The tree below a root directory in canonical order, walked with an explicit stack (no recursion
    per level: docs/security.md, "Bounded resources") from directory descriptors (see WALK_FDS)."""

    def __init__(self, root: bytes, report: DirectoryReport, dev: int | None):
        self.root = root
        self.report = report
        self.dev = dev
        self.seen: dict[tuple[int, int], bytes] = {}
        self.euid = os.geteuid()
        self.proc = os.path.isdir("/proc/self/fd")
        # (directory, its path, its sorted names not yet taken); the top one always holds a descriptor
        self.stack: list[tuple[_Dir, bytes, Iterator[bytes]]] = []

    def run(self, st) -> Iterator[Item]:
        stack, report = self.stack, self.report
        try:
            item = self._enter(None, self.root, b"", st)
            if item is not None:
                yield item
            while stack:
                d, rel, names = stack[-1]
                if d.fd is None:  # closed to bound the descriptors, and not reached through ".."
                    try:
                        d.fd = d.reopen()
                    except OSError as e:
                        report.unreadable.append((rel, e.strerror))
                        stack.pop()
                        continue
                name = next(names, None)
                if name is None:
                    self._leave()
                    continue
                crel = rel + b"/" + name if rel else name
                try:
                    cst = os.lstat(name, dir_fd=d.fd)
                except OSError as e:
                    report.unreadable.append((crel, e.strerror))
                    continue
                if stat.S_ISDIR(cst.st_mode):
                    if (cst.st_dev, cst.st_ino) == report.exclude:
                        report.excluded.append(crel)
                        continue
                    item = self._enter(d, name, crel, cst)
                    if item is not None:
                        yield item
                    continue
                item = self._leaf(d, name, crel, cst)
                if item is None:
                    continue
                if item.data is None:
                    yield item
                    continue
                try:
                    yield item
                finally:
                    item.data.close()
        finally:
            for d, _, _ in stack:
                if d.fd is not None:
                    os.close(d.fd)
                    d.fd = None
            stack.clear()

    def _path(self, d: _Dir | None, name: bytes, rel: bytes) -> bytes:
        """A path to `name` in `d` that stays short: through /proc/self/fd when there is a /proc."""
        if d is None:
            return name
        if self.proc:
            return b"/proc/self/fd/%d/" % d.fd + name
        return self.root + b"/" + rel

    def _enter(self, parent: _Dir | None, name: bytes, rel: bytes, st) -> Item | None:
        """A directory's own item (None if it changed under the walk); it is pushed on the stack when it is
        to be descended (not another file system, and readable)."""
        report = self.report
        key = (st.st_dev, st.st_ino)
        try:
            fd = _open_at(parent.fd if parent is not None else None, name, _DIR_FLAGS, key)
        except _Changed as e:
            if parent is None:
                raise BadInput(f"cannot read {os.fsdecode(name)}: {e.strerror}") from None
            report.unreadable.append((rel, e.strerror))
            return None
        except OSError as e:  # listed as before: the item, then why it could not be listed
            item = SourceItem(_entry_from_stat(rel, st, _read_xattrs(self._path(parent, name, rel), report,
                                                                       rel)), None, False)
            if self.dev is not None and st.st_dev != self.dev:
                report.mountpoints.append(rel)
            else:
                report.unreadable.append((rel, f"directory listing: {e.strerror}"))
            return item
        try:
            item = SourceItem(_entry_from_stat(rel, st, _read_xattrs(fd, report, rel)), None, False)
            if self.dev is not None and st.st_dev != self.dev:
                report.mountpoints.append(rel)
                os.close(fd)
                return item
            try:
                names = sorted(map(os.fsencode, os.listdir(fd)))
            except OSError as e:
                report.unreadable.append((rel, f"directory listing: {e.strerror}"))
                os.close(fd)
                return item
        except BaseException:
            os.close(fd)
            raise
        stack = self.stack
        stack.append((_Dir(parent, name, key, fd), rel, iter(names)))
        old = len(stack) - 1 - WALK_FDS
        if old > 0:
            d = stack[old][0]
            if d.fd is not None:
                os.close(d.fd)
                d.fd = None
        return item

    def _leave(self) -> None:
        """Done with the top directory: its parent gets its descriptor back through "..", if it lost it
        and ".." is still that directory (else the loop reopens it from above)."""
        d = self.stack.pop()[0]
        try:
            parent = d.parent
            if self.stack and parent.fd is None:
                try:
                    parent.fd = _open_at(d.fd, b"..", _DIR_FLAGS, parent.key)
                except OSError:
                    pass
        finally:
            os.close(d.fd)
            d.fd = None

    def _leaf(self, d: _Dir, name: bytes, crel: bytes, cst) -> Item | None:
        """The item of one entry that is not a directory (None when it cannot be read)."""
        report, seen = self.report, self.seen
        if cst.st_nlink > 1:
            first = seen.get((cst.st_dev, cst.st_ino))
            if first is not None:
                e = _entry_from_stat(crel, cst, ())
                e.hardlink = first
                e.size = 0
                return SourceItem(e, None, False)
        if stat.S_ISREG(cst.st_mode):
            key = (cst.st_dev, cst.st_ino)
            try:
                fd = _open_file(d.fd, name, key, self.euid == 0 or cst.st_uid == self.euid)
            except OSError as err:
                report.unreadable.append((crel, "permission denied" if err.errno == errno.EACCES
                                          else err.strerror))
                return None
            try:
                e = _entry_from_stat(crel, cst, _read_xattrs(fd, report, crel))
                smap = _sparse_map(fd, cst)
            except BaseException:
                os.close(fd)
                raise
            if smap is not None:
                e.sparse, e.size = smap, smap.data_size
                segs = smap.segments
            else:
                segs = ((0, e.size),)
            if cst.st_nlink > 1:
                seen[key] = crel
            return SourceItem(e, _FileData(d, name, key, segs, fd), True)
        e = _entry_from_stat(crel, cst, _read_xattrs(self._path(d, name, crel), report, crel))
        if e.kind is Kind.SYMLINK:
            try:
                e.target = os.readlink(name, dir_fd=d.fd)
            except OSError as err:
                report.unreadable.append((crel, err.strerror))
                return None
        if cst.st_nlink > 1:
            seen[(cst.st_dev, cst.st_ino)] = crel
        return SourceItem(e, None, False)


__all__ = ["TarInput", "WarningLog", "tar_entries", "directory_entries", "DirectoryReport", "UnsafePath"]
