"""A native OSTree repository on the file system: create/open, objects in every mode, refs, summary.

Writes are staged in ``tmp/`` and renamed into ``objects/`` (atomic); content is streamed, never held whole.
Reads verify checksums as they go and raise BadOstreeObject / MissingObject naming the object.
Thread-safe for concurrent writers (unique staging names; hashlib and zlib release the GIL).

A repository may come from someone else, so reading trusts nothing in it (docs/security.md, "OSTree input and
initramfs"):
every file inside it is opened relative to the repository's directory, one component at a time, without
following a symlink (only a bare repository's symlink content objects are symlinks, and those are read
with readlink); what is not a regular file is refused before it is read (a FIFO cannot block, a device
is never opened); every read is bounded by the limits below; every object is verified against its name,
symlinks included; and no error message quotes the bytes of a file.
"""

from __future__ import annotations

import configparser
import contextlib
import errno
import hashlib
import os
import posixpath
import re
import secrets
import stat
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, Self

from . import objects as ob
from .errors import (
    BadOstreeObject,
    BadRepo,
    GVariantError,
    InvalidObject,
    MissingObject,
    RefError,
    UnsupportedContent,
)
from .gvariant import Variant
from .objects import Commit, DirMeta, DirTree, FileMeta, Metadata, ObjectType, Summary, SummaryRef

__all__ = ["REPO_MODES", "ContentObject", "OstreeRepo", "validate_ref_name"]

#: Supported modes as accepted by ``OstreeRepo.create``; ``archive`` is written as ``archive-z2``.
REPO_MODES = ("archive", "bare", "bare-user", "bare-user-only")
_CONFIG_MODES = {"archive-z2": "archive", "archive": "archive", "bare": "bare", "bare-user": "bare-user",
                 "bare-user-only": "bare-user-only"}
_INIT_DIRS = ("extensions", "objects", "refs", "refs/heads", "refs/mirrors", "refs/remotes", "state", "tmp",
              "tmp/cache")
_SUFFIX_TYPE = {t.suffix: t for t in ObjectType} | {"filez": ObjectType.FILE}

#: Largest commit, dirtree, dirmeta or detached-metadata (.commitmeta) object read: libostree's hard limit
#: on metadata objects before 2020 (OSTREE_MAX_METADATA_SIZE; later versions warn above 7 MiB).
MAX_METADATA_SIZE = 10 * 1024 * 1024
#: Largest dirmeta object read: fixed fields and xattrs, bounded like a file header.
MAX_DIRMETA_SIZE = ob.MAX_HEADER_SIZE
#: Largest ``config`` or ref file read (a ref is 65 bytes; ostree's own configs are a few hundred).
MAX_SMALL_FILE = 64 * 1024
#: Ref aliases (symlinks inside refs/heads, ``ostree refs --alias``) followed at most this many times.
MAX_REF_ALIASES = 8

_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO that slipped in between the lstat and the open must not wait for a writer.
_O_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

_REF_RE = re.compile(r"([\w\d][-._\w\d]*/)*[\w\d][-._\w\d]*", re.ASCII)
_REMOTE_RE = re.compile(r"[\w\d][-._\w\d]*", re.ASCII)
_CHUNK = 1 << 20


def validate_ref_name(ref: str) -> str:
    if not isinstance(ref, str) or not _REF_RE.fullmatch(ref):
        raise RefError(f"invalid ref name {ref!r:.120}")
    return ref


def _kind(st_mode: int) -> str:
    """What a file is, for messages."""
    return {stat.S_IFLNK: "a symlink", stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO",
            stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket",
            stat.S_IFREG: "a regular file"}.get(stat.S_IFMT(st_mode), "an unknown file type")


def _open_same_file(pfd: int, last: str, st: os.stat_result,
                    fail: Callable[[str], Exception]) -> tuple[int, os.stat_result]:
    """Open `last` (in directory `pfd`), which lstat found a regular file `st`, without following a symlink;
    refused if it is no longer that same regular file. Returns the fd (caller closes) and its fstat."""
    try:
        fd = os.open(last, _O_FILE, dir_fd=pfd)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise fail("replaced by a symlink while being opened (refused)") from None
        raise
    st2 = os.fstat(fd)
    if not stat.S_ISREG(st2.st_mode) or (st2.st_dev, st2.st_ino) != (st.st_dev, st.st_ino):
        os.close(fd)
        raise fail("replaced while being opened (refused)")
    return fd, st2


def _read_bounded(fd: int, limit: int, limit_name: str, fail: Callable[[str], Exception]) -> bytes:
    """Read ``fd`` to its end, refusing more than ``limit`` bytes (the file may grow while read)."""
    parts = []
    n = 0
    while True:
        b = os.read(fd, min(_CHUNK, limit + 1 - n))
        if not b:
            return b"".join(parts)
        n += len(b)
        if n > limit:
            raise fail(f"more than the {limit}-byte limit ({limit_name})")
        parts.append(b)


def _objname(csum: str, objtype: ObjectType) -> str:
    return f"{csum}.{objtype.suffix}"


def _read_xattrs(target: int | bytes, follow: bool = True) -> ob.Xattrs:
    """All xattrs of an fd or path, canonical order (sorted by name, empty values dropped)."""
    try:
        names = os.listxattr(target, follow_symlinks=follow)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return ()
        raise
    out = []
    for n in names:
        out.append((os.fsencode(n), os.getxattr(target, n, follow_symlinks=follow)))
    return ob.canonical_xattrs(out)


class ContentObject:
    """An open content object: ``meta`` now, payload via ``chunks()`` (checksum verified at its end).

    Use as a context manager (or call ``close``). ``chunks()`` raises BadOstreeObject after the last
    chunk if the object does not hash to its name, so commit nothing derived from it before then.
    """

    def __init__(self, checksum: str, path: str | Path, meta: FileMeta, size: int,
                 fileobj: BinaryIO | None, payload: Iterator[bytes]) -> None:
        self.checksum = checksum
        self.path = Path(path)
        self.meta = meta
        self.size = size
        self._f = fileobj
        self._payload = payload

    def chunks(self) -> Iterator[bytes]:
        h = ob.ContentHasher(self.meta)
        name = _objname(self.checksum, ObjectType.FILE)
        try:
            for c in self._payload:
                h.update(c)
                yield c
        except InvalidObject as e:
            raise BadOstreeObject(f"{name}: {e}", checksum=self.checksum, objtype="file",
                                path=str(self.path)) from None
        finally:
            self.close()
        if h.hexdigest() != self.checksum:
            raise BadOstreeObject(f"{name}: corrupted file object, content hashes to {h.hexdigest()}",
                                checksum=self.checksum, objtype="file", path=str(self.path))

    def read(self) -> bytes:
        """The whole payload (verified). Only for small files."""
        return b"".join(self.chunks())

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _holds(path: str, data: bytes) -> bool:
    """Whether `path` is a regular file (not followed if a symlink) holding exactly `data`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != len(data):
            return False
        got = bytearray()
        while len(got) <= len(data):
            b = os.read(fd, len(data) + 1 - len(got))
            if not b:
                break
            got += b
        return got == data
    finally:
        os.close(fd)


def _file_chunks(f: BinaryIO) -> Iterator[bytes]:
    while True:
        b = f.read(_CHUNK)
        if not b:
            return
        yield b


class OstreeRepo:
    """An OSTree repository in mode ``archive``, ``bare``, ``bare-user`` or ``bare-user-only``."""

    def __init__(self, path: str | os.PathLike, *, fsync: bool = False) -> None:
        self.path = Path(path)
        self.fsync = fsync
        cfg_path = self.path / "config"
        try:
            # The repository's own path is the caller's choice and may go through symlinks; nothing inside it may.
            self._root_fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise BadRepo(f"{self.path}: not an OSTree repository ({e.strerror})") from None
        weakref.finalize(self, os.close, self._root_fd)
        try:
            raw = self._read_file("config", MAX_SMALL_FILE, "MAX_SMALL_FILE",
                                  lambda msg: BadRepo(f"{cfg_path}: {msg}"))
        except FileNotFoundError:
            raise BadRepo(f"{self.path}: not an OSTree repository (no config)") from None
        except OSError as e:
            raise BadRepo(f"{cfg_path}: cannot read: {e.strerror}") from None
        cfg = configparser.ConfigParser(interpolation=None)
        try:
            cfg.read_string(raw.decode("utf-8"), source=str(cfg_path))
        except UnicodeDecodeError:
            raise BadRepo(f"{cfg_path}: not UTF-8 text") from None
        except configparser.Error as e:
            # configparser quotes the offending line: name the line only, never print file contents.
            where = f" at line {e.lineno}" if isinstance(getattr(e, "lineno", None), int) else ""
            raise BadRepo(f"{cfg_path}: invalid config{where} ({type(e).__name__})") from None
        if cfg.get("core", "repo_version", fallback=None) != "1":
            raise BadRepo(f"{cfg_path}: unsupported or missing core.repo_version")
        self.config_mode = cfg.get("core", "mode", fallback="bare")
        if self.config_mode not in _CONFIG_MODES:
            shown = f" {self.config_mode!r}" if re.fullmatch(r"[a-z0-9-]{1,32}", self.config_mode) else ""
            raise BadRepo(f"{cfg_path}: unsupported repository mode{shown}")
        #: One of REPO_MODES.
        self.mode: str = _CONFIG_MODES[self.config_mode]
        self.collection_id: str | None = cfg.get("core", "collection-id", fallback=None)
        self.tombstone_commits = cfg.get("core", "tombstone-commits", fallback="false") == "true"
        try:
            self.zlib_level = int(cfg.get("archive", "zlib-level", fallback=str(ob.DEFAULT_ZLIB_LEVEL)))
        except ValueError:
            raise BadRepo(f"{cfg_path}: invalid archive.zlib-level") from None
        if not 1 <= self.zlib_level <= 9:
            raise BadRepo(f"{cfg_path}: invalid archive.zlib-level {self.zlib_level}")
        try:
            st = os.stat("objects", dir_fd=self._root_fd, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is None or not stat.S_ISDIR(st.st_mode):
            raise BadRepo(f"{self.path}: no objects/ directory" + ("" if st is None else f" ({_kind(st.st_mode)})"))
        self._objdir = os.fspath(self.path / "objects")
        self._tmpdir = os.fspath(self.path / "tmp")
        self._tmp_ready = False  # tmp/ is made on the first write: reading a repository writes nothing to it
        self._layout_checked = False

    @classmethod
    def create(cls, path: str | os.PathLike, mode: str = "bare", *, fsync: bool = False,
               collection_id: str | None = None) -> OstreeRepo:
        """Create a repository like ``ostree init --mode=MODE`` (same ``config`` and directories)."""
        if mode == "archive-z2":
            mode = "archive"
        if mode not in REPO_MODES:
            raise BadRepo(f"unsupported repository mode {mode!r}")
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        if (p / "config").exists():
            raise BadRepo(f"{p}: already contains a repository config")
        for d in _INIT_DIRS:
            (p / d).mkdir(mode=0o775, exist_ok=True)
        cfg = f"[core]\nrepo_version=1\nmode={'archive-z2' if mode == 'archive' else mode}\n"
        if collection_id is not None:
            cfg += f"collection-id={collection_id}\n"
        (p / "config").write_text(cfg, encoding="utf-8")
        return cls(p, fsync=fsync)

    def __repr__(self) -> str:
        return f"OstreeRepo({str(self.path)!r}, mode={self.mode!r})"

    # ------------------------------------------------------------------------------------------
    # Object paths

    def _rel(self, checksum: str, objtype: ObjectType) -> str:
        """``objects/XX/REST.SUFFIX``, relative to the repository."""
        if not ob.is_valid_checksum(checksum):
            raise InvalidObject(f"invalid checksum {checksum!r:.80}")
        objtype = ObjectType(objtype)
        suffix = "filez" if objtype is ObjectType.FILE and self.mode == "archive" else objtype.suffix
        return f"objects/{checksum[:2]}/{checksum[2:]}.{suffix}"

    def _obj(self, checksum: str, objtype: ObjectType) -> str:
        return f"{self._objdir}/{self._rel(checksum, objtype)[len('objects/'):]}"

    def object_path(self, checksum: str, objtype: ObjectType) -> Path:
        """``objects/XX/REST.SUFFIX`` of an object (``.filez`` for content in archive repos), for a writer
        outside this class (so the write layout is checked first)."""
        self.check_write_layout()
        return Path(self._obj(checksum, objtype))

    def has_object(self, checksum: str, objtype: ObjectType) -> bool:
        return os.path.lexists(self._obj(checksum, objtype))

    def list_objects(self, objtype: ObjectType | None = None) -> Iterator[tuple[str, ObjectType]]:
        """Every (checksum, type) under objects/ (in no particular order)."""
        objdir = self.path / "objects"
        for sub in sorted(os.listdir(objdir)):
            if len(sub) != 2:
                continue
            for name in os.listdir(objdir / sub):
                rest, _, suffix = name.partition(".")
                t = _SUFFIX_TYPE.get(suffix)
                csum = sub + rest
                if t is None or not ob.is_valid_checksum(csum):
                    continue
                if objtype is None or t == objtype:
                    yield csum, t

    # ------------------------------------------------------------------------------------------
    # Reading files inside the repository: no symlink followed, only regular files, bounded

    def _parent_dir(self, rel: str, fail: Callable[[str], Exception]) -> tuple[int, str]:
        """An open fd (caller closes) of the directory holding ``rel``, and its last component.

        Each directory is opened relative to the one before with O_NOFOLLOW, so a symlinked ``objects/``
        or ``objects/XX`` cannot lead a read out of the repository. FileNotFoundError when one is missing.
        """
        *dirs, last = rel.split("/")
        fd = self._root_fd
        try:
            for i, comp in enumerate(dirs):
                try:
                    nfd = os.open(comp, _O_DIR, dir_fd=fd)
                except OSError as e:
                    if e.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise fail(f"{'/'.join(dirs[:i + 1])} is a symlink or not a directory (refused)") from None
                    raise
                if fd != self._root_fd:
                    os.close(fd)
                fd = nfd
        except BaseException:
            if fd != self._root_fd:
                os.close(fd)
            raise
        return (fd if fd != self._root_fd else os.dup(fd)), last

    def _open_regular(self, rel: str, fail: Callable[[str], Exception]) -> tuple[int, os.stat_result]:
        """An open fd (caller closes) of the regular file ``rel``; anything else is refused before it is
        opened (a FIFO would block, a device could be anything). FileNotFoundError when absent."""
        pfd, last = self._parent_dir(rel, fail)
        try:
            st = os.stat(last, dir_fd=pfd, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                raise fail(f"{_kind(st.st_mode)}, not a regular file (refused)")
            return _open_same_file(pfd, last, st, fail)
        finally:
            os.close(pfd)

    def _read_file(self, rel: str, limit: int, limit_name: str, fail: Callable[[str], Exception]) -> bytes:
        """The bytes of the regular file ``rel``, refused if longer than ``limit``."""
        fd, st = self._open_regular(rel, fail)
        try:
            if st.st_size > limit:
                raise fail(f"{st.st_size} bytes, more than the {limit}-byte limit ({limit_name})")
            return _read_bounded(fd, limit, limit_name, fail)
        finally:
            os.close(fd)

    # ------------------------------------------------------------------------------------------
    # Staging

    def check_write_layout(self) -> None:
        """Before the first write: every directory a write goes through (tmp/, objects/ and each objects/XX,
        refs/ and its namespaces) must be a real directory, not a symlink, so that a repository prepared by
        someone else cannot send an object or a ref elsewhere. Raises BadRepo naming the directory."""
        if self._layout_checked:
            return
        for rel in _INIT_DIRS:
            self._require_dir_or_absent(rel)
        with os.scandir(self._objdir) as it:
            for e in it:
                if len(e.name) == 2 and not e.is_dir(follow_symlinks=False):
                    raise BadRepo(f"{self.path}: objects/{e.name} is not a directory (a symlink?): "
                                  "refusing to write through it")
        self._layout_checked = True

    def _require_dir_or_absent(self, rel: str) -> None:
        try:
            st = os.stat(rel, dir_fd=self._root_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(st.st_mode):
            raise BadRepo(f"{self.path}: {rel} is {_kind(st.st_mode)}, not a directory: refusing to write through it")

    def _tmp_path(self) -> str:
        if not self._tmp_ready:
            self.check_write_layout()
            os.makedirs(self._tmpdir, exist_ok=True)
            self._tmp_ready = True
        return f"{self._tmpdir}/gitree-{secrets.token_hex(12)}"

    def _commit_tmp(self, tmp: str, dest: str) -> None:
        try:
            os.rename(tmp, dest)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            os.rename(tmp, dest)

    def stage_object(self, checksum: str, objtype: ObjectType, write: Callable[[int], bool]) -> bool:
        """Install an object whose bytes the caller writes itself (already checksummed: nothing is verified
        here). `write(fd)` fills a new staging file in tmp/ (O_EXCL|O_NOFOLLOW) and sets its metadata; the
        file is fsynced if the repository asks for it and renamed into objects/, over a file already there
        (which may not be what its name says: callers that trust a present object check it before calling).
        `write` returning False abandons it (nothing is installed). True when the object is there afterwards."""
        self.check_write_layout()
        dest = self._obj(checksum, objtype)
        tmp = self._staged_tmp(write)
        if tmp is None:
            return False
        self._commit_tmp(tmp, dest)
        return True

    def _staged_tmp(self, write: Callable[[int], bool]) -> str | None:
        """A new file under tmp/ (exclusive, not following a symlink) that `write(fd)` fills, synced: its path,
        or None when `write` returned False (the file is removed, as on any exception)."""
        tmp = self._tmp_path()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            ok = write(fd)
            if ok and self.fsync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        if not ok:
            os.unlink(tmp)
            return None
        return tmp

    def _write_tmp_file(self, data: bytes, mode: int = 0o644) -> str:
        def write(fd: int) -> bool:
            with os.fdopen(fd, "wb", closefd=False) as f:
                f.write(data)
            os.fchmod(fd, mode)
            return True
        return self._staged_tmp(write)

    # ------------------------------------------------------------------------------------------
    # Metadata objects

    def write_metadata(self, objtype: ObjectType, data: bytes, *, validate: bool = True) -> str:
        """Store a dirtree/dirmeta/commit given as serialized bytes; return its checksum.

        With ``validate`` the bytes are parsed first (normal form and OSTree rules).
        """
        objtype = ObjectType(objtype)
        if objtype not in (ObjectType.DIR_TREE, ObjectType.DIR_META, ObjectType.COMMIT):
            raise InvalidObject(f"write_metadata cannot write {objtype.suffix} objects")
        if validate:
            _DECODERS[objtype](data)
        csum = hashlib.sha256(data).hexdigest()
        dest = self._obj(csum, objtype)
        if not _holds(dest, data):  # a file already there that holds other bytes is replaced, not trusted
            self._commit_tmp(self._write_tmp_file(data), dest)
        return csum

    def write_dirtree(self, files: Iterable[tuple[str, str]], dirs: Iterable[tuple[str, str, str]] = ()) -> str:
        return self.write_metadata(ObjectType.DIR_TREE, ob.encode_dirtree(files, dirs), validate=False)

    def write_dirmeta(self, meta: DirMeta) -> str:
        return self.write_metadata(ObjectType.DIR_META, ob.encode_dirmeta(meta), validate=False)

    def write_commit(self, commit: Commit) -> str:
        return self.write_metadata(ObjectType.COMMIT, ob.encode_commit(commit), validate=False)

    def write_commitmeta(self, commit_checksum: str, metadata: Iterable[tuple[str, Variant]]) -> None:
        """Write (or replace) the detached metadata of a commit."""
        dest = self._obj(commit_checksum, ObjectType.COMMIT_META)
        self._commit_tmp(self._write_tmp_file(ob.encode_commitmeta(metadata)), dest)

    def read_metadata(self, objtype: ObjectType, checksum: str) -> bytes:
        """Raw bytes of a metadata object (at most MAX_METADATA_SIZE); content-addressed types are verified
        against ``checksum``."""
        objtype = ObjectType(objtype)
        if objtype is ObjectType.FILE:
            raise InvalidObject("use open_content() for file objects")
        name = _objname(checksum, objtype)
        path = self._obj(checksum, objtype)

        def corrupt(msg: str) -> BadOstreeObject:
            return BadOstreeObject(f"{name}: {msg}", checksum=checksum, objtype=objtype.suffix, path=path)

        limit, limit_name = ((MAX_DIRMETA_SIZE, "MAX_DIRMETA_SIZE") if objtype is ObjectType.DIR_META
                             else (MAX_METADATA_SIZE, "MAX_METADATA_SIZE"))
        try:
            data = self._read_file(self._rel(checksum, objtype), limit, limit_name, corrupt)
        except FileNotFoundError:
            raise MissingObject(f"{name}: no such object in {self.path}", checksum=checksum,
                                objtype=objtype.suffix) from None
        except OSError as e:
            raise corrupt(f"cannot read: {e.strerror}") from None
        if objtype in (ObjectType.DIR_TREE, ObjectType.DIR_META, ObjectType.COMMIT):
            actual = hashlib.sha256(data).hexdigest()
            if actual != checksum:
                raise corrupt(f"corrupted object, hashes to {actual}")
        return data

    def _read_decoded(self, objtype: ObjectType, checksum: str):
        data = self.read_metadata(objtype, checksum)
        try:
            return _DECODERS[objtype](data)
        except (GVariantError, InvalidObject) as e:
            raise BadOstreeObject(f"{_objname(checksum, objtype)}: {e}", checksum=checksum,
                                objtype=objtype.suffix,
                                path=self._obj(checksum, objtype)) from None

    def read_dirtree(self, checksum: str) -> DirTree:
        return self._read_decoded(ObjectType.DIR_TREE, checksum)

    def read_dirmeta(self, checksum: str) -> DirMeta:
        return self._read_decoded(ObjectType.DIR_META, checksum)

    def read_commit(self, checksum: str) -> Commit:
        return self._read_decoded(ObjectType.COMMIT, checksum)

    def read_commitmeta(self, commit_checksum: str) -> Metadata | None:
        """Detached metadata of a commit, or None if it has none."""
        try:
            return self._read_decoded(ObjectType.COMMIT_META, commit_checksum)
        except MissingObject:
            return None

    # ------------------------------------------------------------------------------------------
    # Content objects

    def write_content(self, meta: FileMeta, chunks: Iterable[bytes] = (), *,
                      expected: str | None = None, trust_present: bool = True) -> str:
        """Store a file or symlink streamed from ``chunks``; return its checksum.

        With ``expected``, a different resulting checksum raises BadOstreeObject, and an object already
        present under that name is not rewritten (``chunks`` is not consumed) unless ``trust_present`` is
        False: then what is installed is always what was just hashed, whatever file had the name.
        """
        if expected is not None and trust_present and self.has_object(expected, ObjectType.FILE):
            return expected
        self._check_mode_support(meta)
        tmp = self._tmp_path()
        try:
            if meta.is_symlink:
                csum = self._stage_symlink(tmp, meta, chunks)
            else:
                csum = self._stage_regular(tmp, meta, chunks)
            if expected is not None and csum != expected:
                raise BadOstreeObject(f"{expected}.file: content hashes to {csum}", checksum=expected,
                                    objtype="file")
            # an object already under that name is replaced by the one just hashed: it may not be what its name
            # says (a target repository prepared by someone else), and checking it would cost a read
            self._commit_tmp(tmp, self._obj(csum, ObjectType.FILE))
        except BaseException:
            if os.path.lexists(tmp):
                os.unlink(tmp)
            raise
        return csum

    def _check_mode_support(self, meta: FileMeta) -> None:
        if self.mode == "bare-user-only":
            if meta.uid or meta.gid or meta.xattrs:
                raise UnsupportedContent("bare-user-only repositories store only uid/gid 0 and no xattrs "
                                         "(use canonical permissions)")
            if not meta.is_symlink and meta.mode & 0o7777 & ~0o775:
                raise UnsupportedContent(f"mode {meta.mode:#o} has bits outside 0775, refused in bare-user-only")
        elif self.mode == "bare" and meta.xattrs != ob.canonical_xattrs(meta.xattrs):
            raise UnsupportedContent("bare repositories need xattrs sorted by name without empty values "
                                     "(the file system returns them that way; fsck would fail)")

    def _stage_symlink(self, tmp: str, meta: FileMeta, chunks: Iterable[bytes]) -> str:
        for c in chunks:
            if c:
                raise InvalidObject("a symlink has no payload")
        csum = ob.ContentHasher(meta).hexdigest()
        if self.mode in ("bare", "bare-user-only"):
            os.symlink(meta.symlink_target, tmp)
            if self.mode == "bare":
                os.chown(tmp, meta.uid, meta.gid, follow_symlinks=False)
                for n, v in meta.xattrs:
                    os.setxattr(tmp, n, v, follow_symlinks=False)
        elif self.mode == "bare-user":
            self._write_file(tmp, [meta.symlink_target + b"\0"], 0o644, ob.encode_ostreemeta(meta))
        else:
            self._write_archive(tmp, meta, ())
        return csum

    def _stage_regular(self, tmp: str, meta: FileMeta, chunks: Iterable[bytes]) -> str:
        h = ob.ContentHasher(meta)

        def hashed() -> Iterator[bytes]:
            for c in chunks:
                if isinstance(c, ob.ZeroRun):
                    h.update_zeros(c)
                else:
                    h.update(c)
                yield c

        if self.mode == "archive":
            self._write_archive(tmp, meta, hashed())
        elif self.mode == "bare":
            self._write_file(tmp, hashed(), meta.mode & 0o7777, None, meta)
        elif self.mode == "bare-user":
            self._write_file(tmp, hashed(), (meta.mode & 0o775) | 0o400, ob.encode_ostreemeta(meta))
        else:
            self._write_file(tmp, hashed(), meta.mode & 0o7777, None)
        return h.hexdigest()

    def _write_file(self, tmp: str, chunks: Iterable[bytes], perms: int, ostreemeta: bytes | None,
                    owner: FileMeta | None = None) -> None:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            hole = False
            for c in chunks:
                if isinstance(c, ob.ZeroRun):  # a hole stays a hole
                    if c:
                        os.lseek(fd, c, os.SEEK_CUR)
                        hole = True
                    continue
                hole = hole and not c
                mv = memoryview(c)
                while mv:
                    mv = mv[os.write(fd, mv):]
            if hole:
                os.ftruncate(fd, os.lseek(fd, 0, os.SEEK_CUR))
            if owner is not None:
                os.fchown(fd, owner.uid, owner.gid)
                for n, v in owner.xattrs:
                    os.setxattr(fd, n, v)
                os.utime(fd, ns=(0, 0))
            if ostreemeta is not None:
                os.setxattr(fd, ob.OSTREEMETA_XATTR, ostreemeta)
            os.fchmod(fd, perms)  # after fchown, which clears setuid/setgid
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def _write_archive(self, tmp: str, meta: FileMeta, chunks: Iterable[bytes]) -> None:
        with open(tmp, "xb") as f:
            header = ob.encode_filez_header(meta, 0)
            f.write(header)
            size = 0
            if not meta.is_symlink:
                z = ob.FilezCompressor(self.zlib_level)
                for c in chunks:
                    if isinstance(c, ob.ZeroRun):
                        size += c
                        for out in z.compress_zeros(c):
                            f.write(out)
                        continue
                    size += len(c)
                    out = z.compress(c)
                    if out:
                        f.write(out)
                f.write(z.flush())
            if size:
                # The header length does not depend on the size value: patch it in place.
                f.seek(0)
                f.write(ob.encode_filez_header(meta, size))
            os.fchmod(f.fileno(), 0o644)
            if self.fsync:
                f.flush()
                os.fsync(f.fileno())

    def open_content(self, checksum: str) -> ContentObject:
        """Open a content object for streaming reads (see ContentObject).

        A symlink object (it has no payload) is verified here, before it is returned; a regular file's
        payload is verified at the end of ``chunks()``.
        """
        rel = self._rel(checksum, ObjectType.FILE)
        path = self._obj(checksum, ObjectType.FILE)
        name = _objname(checksum, ObjectType.FILE)

        def corrupt(msg: str) -> BadOstreeObject:
            return BadOstreeObject(f"{name}: {msg}", checksum=checksum, objtype="file", path=path)

        def missing() -> MissingObject:
            return MissingObject(f"{name}: no such object in {self.path}", checksum=checksum, objtype="file")

        try:
            pfd, last = self._parent_dir(rel, corrupt)
        except FileNotFoundError:
            raise missing() from None
        try:
            try:
                st = os.stat(last, dir_fd=pfd, follow_symlinks=False)
            except FileNotFoundError:
                raise missing() from None
            if stat.S_ISLNK(st.st_mode):
                if self.mode not in ("bare", "bare-user-only"):
                    raise corrupt(f"a symlink, which a {self.mode} repository does not hold (refused)")
                target = os.readlink(os.fsencode(last), dir_fd=pfd)
                xattrs: ob.Xattrs = ()
                if self.mode == "bare":
                    # the object itself, reached through the already opened directory, not followed
                    xattrs = _read_xattrs(os.fsencode(f"/proc/self/fd/{pfd}/{last}"), False)
                try:
                    meta = FileMeta(st.st_uid if self.mode == "bare" else 0,
                                    st.st_gid if self.mode == "bare" else 0, st.st_mode, target, xattrs)
                except (InvalidObject, UnsupportedContent) as e:
                    raise corrupt(str(e)) from None
                return self._verified_symlink(checksum, path, meta, corrupt)
            if not stat.S_ISREG(st.st_mode):
                raise corrupt(f"{_kind(st.st_mode)}, not a regular file or symlink (refused)")
            fd, st = _open_same_file(pfd, last, st, corrupt)
        finally:
            os.close(pfd)
        f = os.fdopen(fd, "rb")  # handed to ContentObject, which closes it
        try:
            if self.mode == "archive":
                r = ob.FilezReader(f.read)
                if r.meta.is_symlink:
                    for _ in r.chunks():  # refuses a payload after the header
                        pass
                    f.close()
                    return self._verified_symlink(checksum, path, r.meta, corrupt)
                return ContentObject(checksum, path, r.meta, r.size, f, r.chunks())
            if self.mode == "bare":
                meta = FileMeta(st.st_uid, st.st_gid, st.st_mode, b"", _read_xattrs(fd))
            elif self.mode == "bare-user-only":
                meta = FileMeta(0, 0, st.st_mode)
            else:
                try:
                    raw = os.getxattr(fd, ob.OSTREEMETA_XATTR)
                except OSError as e:
                    raise corrupt(f"missing user.ostreemeta xattr ({e.strerror})") from None
                uid, gid, mode, xattrs = ob.decode_ostreemeta(raw)
                if stat.S_ISLNK(mode):
                    # the target and its NUL terminator
                    data = _read_bounded(fd, ob.MAX_SYMLINK_TARGET + 1, "MAX_SYMLINK_TARGET", corrupt)
                    if not data.endswith(b"\0"):
                        raise corrupt("bare-user symlink content is not NUL-terminated")
                    meta = FileMeta(uid, gid, mode, data[:-1], xattrs)
                    f.close()
                    return self._verified_symlink(checksum, path, meta, corrupt)
                meta = FileMeta(uid, gid, mode, b"", xattrs)
            return ContentObject(checksum, path, meta, st.st_size, f, _file_chunks(f))
        except (InvalidObject, GVariantError, UnsupportedContent) as e:
            f.close()
            raise corrupt(str(e)) from None
        except BaseException:
            f.close()
            raise

    @staticmethod
    def _verified_symlink(checksum: str, path: str, meta: FileMeta,
                          corrupt: Callable[[str], BadOstreeObject]) -> ContentObject:
        actual = ob.ContentHasher(meta).hexdigest()
        if actual != checksum:
            raise corrupt(f"corrupted symlink object, hashes to {actual}")
        return ContentObject(checksum, path, meta, 0, None, iter(()))

    def read_content(self, checksum: str) -> tuple[FileMeta, bytes]:
        """Metadata and whole payload of a (small) content object, verified."""
        with self.open_content(checksum) as obj:
            return obj.meta, obj.read()

    def verify_object(self, checksum: str, objtype: ObjectType) -> None:
        """Raise BadOstreeObject / MissingObject unless the object is intact (like one ``ostree fsck`` step)."""
        objtype = ObjectType(objtype)
        if objtype is ObjectType.FILE:
            with self.open_content(checksum) as obj:
                for _ in obj.chunks():
                    pass
        elif objtype in _DECODERS:
            self._read_decoded(objtype, checksum)
        else:
            self.read_metadata(objtype, checksum)

    # ------------------------------------------------------------------------------------------
    # Refs

    def _ref_base(self, ref: str) -> tuple[str, str]:
        """(directory of the namespace relative to the repository, ref name within it)."""
        remote, sep, name = ref.rpartition(":")
        validate_ref_name(name)
        if sep:
            if not _REMOTE_RE.fullmatch(remote):
                raise RefError(f"invalid remote name {remote!r:.80}")
            return f"refs/remotes/{remote}", name
        return "refs/heads", name

    def _ref_path(self, ref: str) -> Path:
        base, name = self._ref_base(ref)
        return self.path / base / name

    def resolve_ref(self, ref: str) -> str:
        """Checksum a ref points to: ``NAME`` (refs/heads) or ``REMOTE:NAME`` (refs/remotes).

        A ref that is a symlink is an alias (``ostree refs --create=A --alias B``) and is followed only to
        another ref of the same namespace; any other symlink, or anything but a regular file, is refused.
        The file's bytes are never quoted in an error.
        """
        base, name = self._ref_base(ref)

        def fail(msg: str) -> RefError:
            return RefError(f"ref {ref!r}: {msg}")

        for _ in range(MAX_REF_ALIASES + 1):
            rel = f"{base}/{name}"
            try:
                pfd, last = self._parent_dir(rel, fail)
            except (FileNotFoundError, NotADirectoryError):
                raise RefError(f"ref {ref!r} not found in {self.path}") from None
            try:
                st = os.stat(last, dir_fd=pfd, follow_symlinks=False)
                link = os.readlink(last, dir_fd=pfd) if stat.S_ISLNK(st.st_mode) else None
            except FileNotFoundError:
                raise RefError(f"ref {ref!r} not found in {self.path}") from None
            finally:
                os.close(pfd)
            if link is None:
                break
            # an alias names another ref relative to the alias's own directory
            target = posixpath.normpath(posixpath.join(posixpath.dirname(name), link))
            if link.startswith("/") or target.startswith("../") or not _REF_RE.fullmatch(target):
                raise fail(f"a symlink that is not an alias to another ref in {base}/ (refused)")
            name = target
        else:
            raise fail(f"more than {MAX_REF_ALIASES} aliases in a row (MAX_REF_ALIASES)")
        try:
            raw = self._read_file(rel, MAX_SMALL_FILE, "MAX_SMALL_FILE", fail)
        except (FileNotFoundError, NotADirectoryError):
            raise RefError(f"ref {ref!r} not found in {self.path}") from None
        except OSError as e:
            raise fail(f"cannot read: {e.strerror}") from None
        csum = raw.strip().decode("ascii", "replace")
        if not ob.is_valid_checksum(csum):
            raise fail("the file does not hold a checksum")
        return csum

    def resolve_rev(self, rev: str) -> str:
        """A full commit checksum (which must be present) or a ref, as ``ostree rev-parse`` takes them."""
        if ob.is_valid_checksum(rev):
            if not self.has_object(rev, ObjectType.COMMIT):
                raise MissingObject(f"{rev}.commit: no such object in {self.path}", checksum=rev,
                                    objtype="commit")
            return rev
        return self.resolve_ref(rev)

    def list_refs(self, remote: str | None = None) -> dict[str, str]:
        """``{name: checksum}`` of refs/heads (or refs/remotes/REMOTE), sorted by name."""
        if remote is None:
            base = self.path / "refs" / "heads"
        else:
            if not _REMOTE_RE.fullmatch(remote):
                raise RefError(f"invalid remote name {remote!r:.80}")
            base = self.path / "refs" / "remotes" / remote
        out = {}
        for dirpath, _dirs, files in os.walk(base):
            for fn in files:
                name = os.path.relpath(os.path.join(dirpath, fn), base).replace(os.sep, "/")
                out[name] = self.resolve_ref(name if remote is None else f"{remote}:{name}")
        return dict(sorted(out.items(), key=lambda kv: kv[0].encode("utf-8")))

    def set_ref(self, ref: str, checksum: str) -> None:
        """Point a ref at a commit checksum, atomically (``hex\\n``)."""
        if not ob.is_valid_checksum(checksum):
            raise RefError(f"invalid checksum {checksum!r:.80} for ref {ref!r}")
        p = self._ref_path(ref)
        parts = p.relative_to(self.path).parts
        for i in range(1, len(parts)):  # refs/heads/a/b: no directory on the way may be a symlink
            self._require_dir_or_absent("/".join(parts[:i]))
        tmp = self._write_tmp_file(f"{checksum}\n".encode("ascii"))
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, p)
        except OSError as e:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise RefError(f"cannot set ref {ref!r}: {e}") from None

    def delete_ref(self, ref: str) -> None:
        p = self._ref_path(ref)
        try:
            p.unlink()
        except FileNotFoundError:
            raise RefError(f"ref {ref!r} not found in {self.path}") from None

    # ------------------------------------------------------------------------------------------
    # Summary

    def _static_deltas(self) -> list[tuple[str, Variant]]:
        base = self.path / "deltas"
        out = []
        if not base.is_dir():
            return out
        for pre in sorted(os.listdir(base)):
            try:
                rests = sorted(os.listdir(base / pre))
            except NotADirectoryError:
                continue
            for rest in rests:
                frm, sep, to = (pre + rest).partition("-")
                try:
                    name = (f"{ob.delta_name_decode(frm)}-{ob.delta_name_decode(to)}" if sep
                            else ob.delta_name_decode(frm))
                except InvalidObject:
                    continue
                rel = f"deltas/{pre}/{rest}/superblock"
                try:  # opened as every object is: no symlink followed, a regular file, bounded
                    data = self._read_file(rel, MAX_METADATA_SIZE, "MAX_METADATA_SIZE",
                                           lambda msg, rel=rel: BadRepo(f"{self.path}/{rel}: {msg}"))
                except (FileNotFoundError, NotADirectoryError):
                    continue
                out.append((name, Variant("ay", hashlib.sha256(data).digest())))
        return out

    def build_summary(self, last_modified: int | None = None) -> Summary:
        """The summary ``ostree summary -u`` would write for refs/heads (unsigned)."""
        refs = []
        for name, csum in self.list_refs().items():
            data = self.read_metadata(ObjectType.COMMIT, csum)
            commit = self.read_commit(csum)
            # Key order as ostree 2022.7 writes them (its GHashTable order), for byte-identical output.
            md: Metadata = []
            version = commit.get("version")
            if isinstance(version, str):
                md.append(("ostree.commit.version", Variant("s", version)))
            md.append(("ostree.commit.timestamp", Variant("t", ob.bswap64(commit.timestamp))))
            refs.append(SummaryRef(name, len(data), csum, md))
        if last_modified is None:
            last_modified = int(time.time())
        md = [("ostree.summary.mode", Variant("s", self.config_mode)),
              ("ostree.summary.last-modified", Variant("t", ob.bswap64(last_modified))),
              ("ostree.summary.tombstone-commits", Variant("b", self.tombstone_commits))]
        deltas = self._static_deltas()
        if deltas:
            md.append(("ostree.static-deltas", Variant("a{sv}", deltas)))
        md.append(("ostree.summary.indexed-deltas", Variant("b", True)))
        if self.collection_id:
            md.append(("ostree.summary.collection-id", Variant("s", self.collection_id)))
        return Summary(refs, md)

    def write_summary(self, last_modified: int | None = None) -> bytes:
        """Write ``summary`` atomically (and drop a stale unsigned-mismatching ``summary.sig``)."""
        data = ob.encode_summary(self.build_summary(last_modified))
        tmp = self._write_tmp_file(data)
        os.replace(tmp, self.path / "summary")
        # A signature of an older summary would make verifying clients fail.
        (self.path / "summary.sig").unlink(missing_ok=True)
        return data

    def read_summary(self) -> Summary | None:
        try:
            data = (self.path / "summary").read_bytes()
        except FileNotFoundError:
            return None
        try:
            return ob.decode_summary(data)
        except (GVariantError, InvalidObject) as e:
            raise BadOstreeObject(f"{self.path / 'summary'}: {e}", path=str(self.path / "summary")) from None


_DECODERS = {
    ObjectType.DIR_TREE: ob.decode_dirtree,
    ObjectType.DIR_META: ob.decode_dirmeta,
    ObjectType.COMMIT: ob.decode_commit,
    ObjectType.COMMIT_META: ob.decode_commitmeta,
    ObjectType.TOMBSTONE_COMMIT: ob.decode_commitmeta,
}
