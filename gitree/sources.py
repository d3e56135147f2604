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


def _read_xattrs(path: bytes, report: DirectoryReport, rel: bytes) -> tuple:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        if e.errno in (95, 61):  # EOPNOTSUPP, ENODATA
            return ()
        report.unreadable.append((rel, f"xattrs: {e.strerror}"))
        return ()
    out = []
    for n in names:
        try:
            v = os.getxattr(path, n, follow_symlinks=False)
        except OSError as e:
            if e.errno == 61:
                continue
            report.unreadable.append((rel, f"xattr {n}: {e.strerror}"))
            continue
        out.append((os.fsencode(n), v))
    return sorted_xattrs(out)


def _file_reader(path: bytes, size: int):
    def chunks():
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            left = size
            while left > 0:
                buf = os.read(fd, min(left, 1 << 20))
                if not buf:
                    break
                left -= len(buf)
                yield buf
        finally:
            os.close(fd)
    return chunks


def _data_segments(path: bytes, size: int) -> list[tuple[int, int]] | None:
    """Where a file's data lies (SEEK_DATA/SEEK_HOLE), or None if the file system cannot tell."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
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
    finally:
        os.close(fd)


def _sparse_reader(path: bytes, segs: tuple[tuple[int, int], ...]):
    def chunks():
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            for off, n in segs:
                while n > 0:
                    buf = os.pread(fd, min(n, 1 << 20), off)
                    if not buf:
                        return
                    off += len(buf)
                    n -= len(buf)
                    yield buf
        finally:
            os.close(fd)
    return chunks


def _sparse_map(path: bytes, st: os.stat_result) -> SparseMap | None:
    """A file with fewer allocated blocks than its size has holes: its map, if it has holes at all."""
    if st.st_blocks * 512 >= st.st_size:
        return None
    segs = _data_segments(path, st.st_size)
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
    seen_inodes: dict[tuple[int, int], bytes] = {}
    if exclude is not None:
        try:
            xs = os.stat(exclude)
            report.exclude = (xs.st_dev, xs.st_ino)
        except OSError:
            pass
    yield from _walk(root_b, b"", st, report, seen_inodes, st.st_dev if one_file_system else None)


def _entry_from_stat(rel: bytes, st: os.stat_result, xattrs) -> Entry:
    kind = Kind.from_mode(st.st_mode)
    e = Entry(rel, kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, xattrs, mtime_ns=st.st_mtime_ns)
    if kind in (Kind.CHAR, Kind.BLOCK):
        e.rdev = (os.major(st.st_rdev), os.minor(st.st_rdev))
    if kind is Kind.FILE:
        e.size = st.st_size
    return e


def _walk(abs_: bytes, rel: bytes, st, report, seen, dev) -> Iterator[Item]:
    """The tree below `abs_` in canonical order, walked with an explicit stack (no recursion per level:
    docs/security.md, "Bounded resources")."""
    stack: list[tuple[bytes, bytes, Iterator[bytes]]] = []
    entered = _enter(abs_, rel, st, report, dev)
    yield entered[0]
    if entered[1] is not None:
        stack.append((abs_, rel, iter(entered[1])))
    while stack:
        abs_, rel, names = stack[-1]
        name = next(names, None)
        if name is None:
            stack.pop()
            continue
        cabs = abs_ + b"/" + name
        crel = rel + b"/" + name if rel else name
        try:
            cst = os.lstat(cabs)
        except OSError as e:
            report.unreadable.append((crel, e.strerror))
            continue
        if stat.S_ISDIR(cst.st_mode):
            if (cst.st_dev, cst.st_ino) == report.exclude:
                report.excluded.append(crel)
                continue
            item, children = _enter(cabs, crel, cst, report, dev)
            yield item
            if children is not None:
                stack.append((cabs, crel, iter(children)))
            continue
        yield from _leaf(cabs, crel, cst, report, seen)


def _enter(abs_: bytes, rel: bytes, st, report, dev) -> tuple[Item, list[bytes] | None]:
    """A directory's own item and its sorted names (None: not to be descended: another file system, or
    unreadable)."""
    item = SourceItem(_entry_from_stat(rel, st, _read_xattrs(abs_, report, rel)), None, False)
    if dev is not None and st.st_dev != dev:
        report.mountpoints.append(rel)
        return item, None
    try:
        return item, sorted(os.listdir(abs_))
    except OSError as e:
        report.unreadable.append((rel, f"directory listing: {e.strerror}"))
        return item, None


def _leaf(cabs: bytes, crel: bytes, cst, report, seen) -> Iterator[Item]:
    """The item of one entry that is not a directory (nothing when it cannot be read)."""
    if cst.st_nlink > 1:
        key = (cst.st_dev, cst.st_ino)
        first = seen.get(key)
        if first is not None:
            e = _entry_from_stat(crel, cst, ())
            e.hardlink = first
            e.size = 0
            yield SourceItem(e, None, False)
            return
    e = _entry_from_stat(crel, cst, _read_xattrs(cabs, report, crel))
    if e.kind is Kind.SYMLINK:
        try:
            e.target = os.readlink(cabs)
        except OSError as err:
            report.unreadable.append((crel, err.strerror))
            return
    elif e.kind is Kind.FILE:
        if not os.access(cabs, os.R_OK) and os.geteuid() != 0:
            report.unreadable.append((crel, "permission denied"))
            return
        smap = _sparse_map(cabs, cst)
        if smap is not None:
            e.sparse, e.size = smap, smap.data_size
            data = _sparse_reader(cabs, smap.segments)
        else:
            data = _file_reader(cabs, e.size)
        if cst.st_nlink > 1:
            seen[(cst.st_dev, cst.st_ino)] = crel
        yield SourceItem(e, data, True)
        return
    if cst.st_nlink > 1:
        seen[(cst.st_dev, cst.st_ino)] = crel
    yield SourceItem(e, None, False)


__all__ = ["TarInput", "tar_entries", "directory_entries", "DirectoryReport", "UnsafePath"]
