"""Scratch databases: the working set of one operation kept on disk, so that its memory does not grow with
its input (docs/security.md, "Import memory").

An import has to hold every entry of the tree it builds until the trees are written (a tar may add to any
directory at any time), and a pack being written has to know every object id it holds. Both live in a
private SQLite database beside the pack being written, whose page cache is bounded (`CACHE_KIB`): whatever
does not fit goes to the file. The database is this process's alone (created exclusively, mode 0600, in the
repository), never synced, and deleted when the operation ends, or by `remove_live` on an interrupt, or by
`gitree gc` after an hour (its name starts with `tmp_gitree_` like a pack being written).
"""

from __future__ import annotations

import os
import sqlite3

CACHE_KIB = 8192            # SQLite page cache of one scratch database (KiB): its memory bound

_LIVE: set[str] = set()     # scratch files of this process, removed on an interrupt


class ScratchDB:
    """One scratch database at `directory/tmp_gitree_<pid>_<tag>.db`, inside one open transaction (never
    committed: the file is thrown away). Shareable between threads (SQLite serializes the connection)."""

    def __init__(self, directory: str, tag: str, schema: str):
        self.path = os.path.join(directory, f"tmp_gitree_{os.getpid()}_{tag}.db")
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        os.close(fd)
        _LIVE.add(self.path)
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            for pragma in ("journal_mode=OFF", "synchronous=OFF", "locking_mode=EXCLUSIVE",
                           f"cache_size=-{CACHE_KIB}", "temp_store=FILE", "mmap_size=0"):
                self.db.execute(f"PRAGMA {pragma}")
            self.db.execute("BEGIN")
            for stmt in schema.split(";"):
                if stmt.strip():
                    self.db.execute(stmt)
        except BaseException:
            self.close()
            raise

    def execute(self, sql: str, args=()) -> sqlite3.Cursor:
        return self.db.execute(sql, args)

    def close(self) -> None:
        db = getattr(self, "db", None)
        if db is not None:
            self.db = None
            db.close()
        _LIVE.discard(self.path)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def remove_live() -> None:
    """Delete this process's scratch files (on an interrupt; the operation is abandoned)."""
    for p in list(_LIVE):
        try:
            os.unlink(p)
        except OSError:
            pass
