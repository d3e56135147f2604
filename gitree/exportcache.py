"""The OSTree export cache: git objects (+ the metadata OSTree hashes) -> OSTree checksums.

A local file store under the git directory, `$GIT_DIR/gitree/ostree-cache/`, outside refs/ and objects/: no git
transport writes there, and gitree's fetch, clone and bundle apply never do. Every record carries an HMAC-SHA256
(truncated to 16 bytes) under a per-repository secret key (`key`, 32 random bytes, mode 0600), so a record copied
from elsewhere, planted or edited fails its MAC: it is dropped with one warning and rebuilt by the export.
Format and trust argument: docs/ostree-bridge.md, "The export cache and its trust"; docs/format.md.

Files in the cache directory:
    key        32 random bytes (created once, O_EXCL|O_NOFOLLOW, mode 0600; never copied by clone or bundle)
    records    HEADER then fixed-size records sorted by key: key (20) | value (32) | mac (16)
    lock       flock'ed while `records` is rewritten (write a new file, fsync, rename)
"""

from __future__ import annotations

import array
import bisect
import fcntl
import hashlib
import heapq
import hmac
import itertools
import operator
import os
import stat
import struct
from typing import Iterable, Iterator

from .errors import GitreeError, WriteFailed

CACHE_DIR = ("gitree", "ostree-cache")
MAGIC = b"gitreeOC"
VERSION = 1
KEY_LEN, VALUE_LEN, MAC_LEN = 20, 32, 16
RECORD = KEY_LEN + VALUE_LEN + MAC_LEN
HEADER = MAGIC + struct.pack(">HHI", VERSION, RECORD, 0)   # 16 bytes
SECRET_LEN = 32
MAX_RECORDS = 1 << 20          # 68 MiB: beyond this a save starts the cache over with this run's records
COPY_RECORDS = 1 << 14         # records copied by one read when a save rewrites the file (1.1 MiB)
_KEY_PREFIX = struct.Struct(">Q%dx" % (RECORD - 8))   # a record's first 8 key bytes, as the index holds them

# Record kinds (the first part hashed into a key).
FILE, DIRTREE, DIRMETA, COMMIT = b"file", b"dirtree", b"dirmeta", b"commit"

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def record_key(kind: bytes, *parts: bytes) -> bytes:
    """The 20-byte key of a record: BLAKE2b over the kind and the length-prefixed parts."""
    return KeyMaker(kind)(*parts)


class KeyMaker:
    """record_key(kind, *fixed, *parts) as a function of `parts`: the hash state of the leading parts (a
    file header, a target repository) is made once, and copied per key."""

    __slots__ = ("_h",)

    def __init__(self, kind: bytes, *fixed: bytes):
        h = self._h = hashlib.blake2b(digest_size=KEY_LEN)
        for p in (kind, *fixed):
            h.update(len(p).to_bytes(4, "big") + p)

    def __call__(self, *parts: bytes) -> bytes:
        h = self._h.copy()
        for p in parts:
            h.update(len(p).to_bytes(4, "big") + p)
        return h.digest()


def _open_dir(parent_fd: int | None, name: str) -> int:
    """Open (creating, mode 0700) a real directory, never through a symlink."""
    try:
        os.mkdir(name, 0o700, dir_fd=parent_fd)
    except FileExistsError:
        pass
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except OSError as e:
        raise WriteFailed(f"export cache directory {name}: {e.strerror} (not a directory, or a symlink?)") from None


class ExportCache:
    """Lookups verify the record's MAC; `put` collects new records; `save` merges them in, atomically."""

    def __init__(self, git_dir: str, warn):
        self.warn = warn
        self.warned = False
        self.dfd = -1
        gfd = os.open(git_dir, _DIR_FLAGS)
        try:
            top = _open_dir(gfd, CACHE_DIR[0])
        finally:
            os.close(gfd)
        try:
            self.dfd = _open_dir(top, CACHE_DIR[1])
        finally:
            os.close(top)
        try:
            self.secret = self._secret()
        except BaseException:
            self.close()
            raise
        self._hmac = hmac.new(self.secret, HEADER, hashlib.sha256)  # copied per record: the key schedule once
        self.rfd = -1                                   # the records file as indexed
        # the records' first 8 key bytes, in file order (sorted by key): found by bisection, 8 bytes a record
        # where a dict would cost ~100 (read on the first lookup; a save needs none)
        self.index: array.array | None = None
        self.new: dict[bytes, bytes] = {}
        self.bad: dict[bytes, bytes] = {}   # keys whose record failed its MAC -> that record

    def close(self) -> None:
        self._unload()
        if self.dfd >= 0:
            os.close(self.dfd)
            self.dfd = -1

    def __del__(self):
        if getattr(self, "dfd", -1) >= 0:
            self.close()

    # the secret key

    def _secret(self) -> bytes:
        try:
            fd = os.open("key", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=self.dfd)
        except FileNotFoundError:
            return self._new_secret()
        except OSError:  # a symlink (ELOOP) or worse: not ours
            fd = -1
        if fd >= 0:
            try:
                st = os.fstat(fd)
                data = os.read(fd, SECRET_LEN + 1) if stat.S_ISREG(st.st_mode) else b""
            finally:
                os.close(fd)
            if len(data) == SECRET_LEN and st.st_uid == os.geteuid() and not st.st_mode & 0o077:
                return data
        self._note("its key file is not a private 32-byte file of this user; making a new key")
        try:
            os.unlink("key", dir_fd=self.dfd)
        except OSError as e:
            raise WriteFailed(f"cannot replace its key file: {e.strerror}") from None
        return self._new_secret()

    def _new_secret(self) -> bytes:
        secret = os.urandom(SECRET_LEN)
        tmp = f"key.tmp.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=self.dfd)
        try:
            os.write(fd, secret)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            # link() never replaces: of two processes creating the key at once, one key wins for both
            os.link(tmp, "key", src_dir_fd=self.dfd, dst_dir_fd=self.dfd, follow_symlinks=False)
        except FileExistsError:
            os.unlink(tmp, dir_fd=self.dfd)
            return self._secret()
        os.unlink(tmp, dir_fd=self.dfd)
        os.fsync(self.dfd)
        return secret

    # records

    def _note(self, why: str) -> None:
        if not self.warned:
            self.warned = True
            self.warn(f"the OSTree export cache: {why}; dropped records are rebuilt by this export")

    def _open_records(self) -> tuple[int, int] | None:
        """(descriptor, record count) of the records file when it is a regular file of at most the documented
        size with our header and whole records; else None (with one note)."""
        try:
            fd = os.open("records", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=self.dfd)
        except FileNotFoundError:
            return None
        except OSError:
            self._note("its records file is not a regular file")
            return None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > len(HEADER) + MAX_RECORDS * RECORD:
            os.close(fd)
            self._note("its records file is not a regular file of at most the documented size")
            return None
        if os.pread(fd, len(HEADER), 0) != HEADER or (st.st_size - len(HEADER)) % RECORD:
            os.close(fd)
            self._note("its records file has an unknown header or a partial record")
            return None
        return fd, (st.st_size - len(HEADER)) // RECORD

    def _chunks(self, fd: int, n: int) -> Iterator[bytes]:
        """The `n` records of an open records file, a few thousand at a time."""
        for start in range(0, n, 4096):
            chunk = os.pread(fd, min(4096, n - start) * RECORD, len(HEADER) + start * RECORD)
            if len(chunk) != min(4096, n - start) * RECORD:
                raise WriteFailed("the export cache's records file shrank while it was read")
            yield chunk

    def _load(self) -> None:
        """Index the records file: its descriptor stays open (a save elsewhere renames a new file over it,
        this one stays as it was), and only the first 8 bytes of each key are held."""
        opened = self._open_records()
        self.index = array.array("Q")
        if opened is None:
            return
        self.rfd, n = opened
        self.index = self._index_of(self.rfd, n)

    def _index_of(self, fd: int, n: int) -> array.array:
        """The first 8 bytes of each key of an open records file, as big-endian integers (their order is
        the keys' order)."""
        index = array.array("Q")
        for chunk in self._chunks(fd, n):
            index.extend(itertools.chain.from_iterable(_KEY_PREFIX.iter_unpack(chunk)))
        return index

    def _find(self, key: bytes) -> bytes | None:
        """`key`'s record in the file as indexed, or None. (A file not sorted by key - planted - makes
        lookups miss, and the next save starts the file over.)"""
        if self.index is None:
            self._load()
        idx = self.index
        p = int.from_bytes(key[:8], "big")
        i = bisect.bisect_left(idx, p)
        while i < len(idx) and idx[i] == p:
            rec = os.pread(self.rfd, RECORD, len(HEADER) + i * RECORD)
            if rec[:KEY_LEN] == key and len(rec) == RECORD:
                return rec
            i += 1
        return None

    def _mac(self, key: bytes, value: bytes) -> bytes:
        h = self._hmac.copy()
        h.update(key + value)
        return h.digest()[:MAC_LEN]

    def get(self, key: bytes) -> bytes | None:
        v = self.new.get(key)
        if v is not None:
            return v
        rec = self._find(key)
        if rec is None or key in self.bad:
            return None
        value = rec[KEY_LEN:KEY_LEN + VALUE_LEN]
        if not hmac.compare_digest(rec[KEY_LEN + VALUE_LEN:], self._mac(key, value)):
            self.bad[key] = rec
            self._note("a record fails its authentication (planted, edited or copied from elsewhere)")
            return None
        return value

    def keys(self) -> list[bytes]:
        """The keys of the records in the file (authenticated or not)."""
        if self.index is None:
            self._load()
        if self.rfd < 0:
            return []
        return [c[i:i + KEY_LEN] for c in self._chunks(self.rfd, len(self.index)) for i in range(0, len(c), RECORD)]

    def put(self, key: bytes, value: bytes) -> None:
        if len(value) != VALUE_LEN:
            raise ValueError("an export cache value is 32 bytes")
        if self.get(key) != value:
            self.new[key] = value

    def put_new(self, key: bytes, value: bytes) -> None:
        """put() without looking the key up first: for a value the file cannot hold yet (the stamp of an
        object just written). Saving an unchanged record again only costs its rewrite."""
        if len(value) != VALUE_LEN:
            raise ValueError("an export cache value is 32 bytes")
        self.new[key] = value

    @property
    def dirty(self) -> bool:
        return bool(self.new or self.bad)

    def save(self, more: Iterable[tuple[bytes, bytes]] = (), more_count: int = 0) -> None:
        """Merge the new records into the file as it is now (another export may have saved meanwhile).
        `more`: `more_count` further (key, value) records, sorted by key (an import's checksums, streamed
        from its scratch database). Each new record goes in at its place, found by bisection; the file's
        records between two places are copied as bytes, in chunks: the work is that of the new records plus
        a copy of the file, and memory that of the new records and 8 bytes a record of the file."""
        if not (self.dirty or more_count):
            return
        lfd = os.open("lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=self.dfd)
        cur_fd = -1
        try:
            fcntl.flock(lfd, fcntl.LOCK_EX)
            opened = self._open_records()
            cur_fd, n_cur = opened if opened is not None else (-1, 0)
            if n_cur + len(self.new) + more_count > MAX_RECORDS:
                n_cur = 0            # past the documented size: start over with this run's records
            tmp = f"records.tmp.{os.getpid()}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=self.dfd)
            try:
                with os.fdopen(fd, "wb", closefd=False) as f:
                    f.write(HEADER)
                    self._merge_into(f, cur_fd, n_cur, more)
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                os.unlink(tmp, dir_fd=self.dfd)
                raise
            os.close(fd)
            os.rename(tmp, "records", src_dir_fd=self.dfd, dst_dir_fd=self.dfd)
            os.fsync(self.dfd)
        finally:
            if cur_fd >= 0:
                os.close(cur_fd)
            os.close(lfd)
        self.new.clear()
        self.bad.clear()
        self._unload()      # indexed again on the next lookup

    def _merge_into(self, f, cur_fd: int, n_cur: int, more: Iterable[tuple[bytes, bytes]]) -> None:
        """Write the file's first `n_cur` records (less those that failed their MAC) and the new ones, sorted
        by key; a new record replaces an old one of its key. At most MAX_RECORDS records are written (the
        caller passes n_cur = 0 when the file's and the new records together would pass it)."""
        if n_cur and self.rfd >= 0 and _same_file(self.rfd, cur_fd):
            index = self.index            # the file this cache indexed is still the one in place
        else:
            index = self._index_of(cur_fd, n_cur) if n_cur else array.array("Q")
        if n_cur and not all(map(operator.le, index, itertools.islice(index, 1, None))):   # no copy of it
            self._note("its records file is not sorted by key")   # not written by gitree: start over
            n_cur, index = 0, array.array("Q")

        def key_at(i: int) -> bytes:
            return os.pread(cur_fd, KEY_LEN, len(HEADER) + i * RECORD)

        def lower_bound(k: bytes) -> int:   # the first old record whose key is not below k
            p = int.from_bytes(k[:8], "big")
            i = bisect.bisect_left(index, p)
            while i < n_cur and index[i] == p and key_at(i) < k:
                i += 1
            return i

        skips = []    # positions of the records that failed their MAC
        for k, rec in self.bad.items():
            i = lower_bound(k)
            while i < n_cur and key_at(i) == k:
                if os.pread(cur_fd, RECORD, len(HEADER) + i * RECORD) == rec:
                    skips.append(i)
                i += 1
        skips.sort()
        cursor = written = 0

        def copy_to(end: int) -> None:   # the old records [cursor, end), as bytes, less the skipped ones
            nonlocal cursor, written
            while cursor < end:
                j = bisect.bisect_left(skips, cursor)
                if j < len(skips) and skips[j] == cursor:
                    cursor += 1
                    continue
                stop = min(end, skips[j] if j < len(skips) else end, cursor + COPY_RECORDS)
                data = os.pread(cur_fd, (stop - cursor) * RECORD, len(HEADER) + cursor * RECORD)
                if len(data) != (stop - cursor) * RECORD:
                    raise WriteFailed("the export cache's records file shrank while it was read")
                f.write(data)
                written += stop - cursor
                cursor = stop

        last = None
        for k, v in heapq.merge(sorted(self.new.items()), more):
            if len(v) != VALUE_LEN or len(k) != KEY_LEN:
                raise ValueError("an export cache record is a 20-byte key and a 32-byte value")
            if k == last:
                continue
            last = k
            copy_to(lower_bound(k))
            while cursor < n_cur and key_at(cursor) == k:
                cursor += 1               # the new record replaces it
            if written < MAX_RECORDS:
                f.write(k + v + self._mac(k, v))
                written += 1
        copy_to(n_cur)

    def _unload(self) -> None:
        if getattr(self, "rfd", -1) >= 0:
            os.close(self.rfd)
        self.rfd, self.index = -1, None


def _same_file(a: int, b: int) -> bool:
    sa, sb = os.fstat(a), os.fstat(b)
    return (sa.st_dev, sa.st_ino, sa.st_size) == (sb.st_dev, sb.st_ino, sb.st_size)


def open_cache(git_dir: str, warn) -> ExportCache | None:
    """The repository's cache, or None (with a warning) if it cannot be opened: exports then run uncached."""
    try:
        return ExportCache(git_dir, warn)
    except (GitreeError, OSError) as e:
        warn(f"the OSTree export cache cannot be used ({e}); exporting without it")
        return None
