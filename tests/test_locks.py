"""The repository's lock files (gitree/lockfile.py) and what gc's objects lock guarantees to a writer."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest
from helpers import GITREE

from gitree import api, lockfile
from gitree.entry import Entry, Kind
from gitree.errors import UnsafePath

FILES = {b"f%02d" % i: bytes([i]) * 3000 + os.urandom(1000) for i in range(20)}


def _add_all(tx) -> None:
    for name, data in FILES.items():
        tx.add(Entry(name, Kind.FILE, 0o644, size=len(data)), lambda data=data: [data])


def _git(repo: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "--git-dir", repo, *args], capture_output=True, text=True)


def test_a_repo_opened_before_a_gc_does_not_take_dropped_objects_for_present(work):
    """libgit2 keeps a pack it mapped readable after gc deleted the file, and answers for its objects. A
    long-lived Repo (an API user; make-bootable reads its source before its transaction) must not make the
    next transaction skip objects that are gone: the transaction opens its handles afresh."""
    repo = os.path.join(work, "g.git")
    r = api.open_repo(api.init(repo).path)
    with r.transaction() as tx:
        _add_all(tx)
        tx.commit(branch="old", message="old", timestamp=10)
    blobs = [hashlib.sha1(b"blob %d\0" % len(d) + d).hexdigest() for d in FILES.values()]
    assert all(r.exists(bytes.fromhex(b)) for b in blobs)        # this Repo has the pack mapped now
    assert _git(repo, "update-ref", "-d", "refs/heads/old").returncode == 0
    gc = subprocess.run([*GITREE, "-q", "-C", repo, "gc"], capture_output=True, text=True)
    assert gc.returncode == 0, gc.stderr
    assert all(_git(repo, "cat-file", "-e", b).returncode != 0 for b in blobs)   # dropped: named by nothing
    with r.transaction() as tx:
        _add_all(tx)
        new = tx.commit(branch="new", message="new", timestamp=20)
    assert tx.stats.new_objects > len(FILES)                      # written again, not skipped
    fsck = _git(repo, "fsck", "--strict", "--no-progress")
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    api.fsck(repo, check=True)
    assert len(api.ls(r, new.hex()).items) == len(FILES)


def test_lock_files_are_never_opened_through_a_symlink_or_as_a_special_file(work):
    repo = api.init(os.path.join(work, "g.git")).path
    target = os.path.join(work, "nologin")
    os.symlink(target, os.path.join(repo, "gitree.objects.lock"))
    src = os.path.join(work, "src")
    os.makedirs(src)
    with pytest.raises(UnsafePath):
        api.import_rootfs(repo, src, branch="main")
    assert not os.path.lexists(target)
    os.unlink(os.path.join(repo, "gitree.objects.lock"))
    os.mkfifo(os.path.join(repo, "gitree.lock"))
    with pytest.raises(UnsafePath):
        with api.open_repo(repo).lock():
            pass
    r = subprocess.run([*GITREE, "-C", repo, "gc"], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and "not a regular file" in r.stderr, r.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to leave a root-owned lock file")
def test_a_lock_file_root_left_stays_usable_by_the_owner():
    """Lock files are opened read-only: root's import into a user's repository leaves gitree.objects.lock
    root-owned 0644, and the owner must still lock it."""
    d = tempfile.mkdtemp(prefix="gitree-owner-", dir="/dev/shm")   # every level searchable by the owner
    os.chmod(d, 0o755)
    os.chown(d, 65534, 65534)
    path = os.path.join(d, "gitree.objects.lock")
    old_umask = os.umask(0o077)       # a strict umask must not make it root's alone
    try:
        lockfile.release(lockfile.take(path, fcntl.LOCK_SH))
        os.umask(old_umask)
        assert os.stat(path).st_uid == 0 and os.stat(path).st_mode & 0o777 == 0o644
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.setgid(65534)
                os.setuid(65534)
                lockfile.release(lockfile.take(path, fcntl.LOCK_EX))
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        os.umask(old_umask)
        shutil.rmtree(d)


def test_a_child_forked_without_exec_does_not_keep_a_lock(work):
    """export's workers fork without exec; a lock its parent releases must end then, not with the child."""
    path = os.path.join(work, "gitree.objects.lock")
    fd = lockfile.take(path, fcntl.LOCK_SH)
    pid = os.fork()
    if pid == 0:
        time.sleep(5)
        os._exit(0)
    try:
        lockfile.release(fd)
        probe = ("import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDONLY)\n"
                 "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)")
        r = subprocess.run([sys.executable, "-c", probe, path], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr          # nobody holds it: the child closed its copy at fork
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)


def test_a_transaction_that_cannot_start_releases_the_objects_lock(work, monkeypatch):
    """Opening fresh handles can fail (out of descriptors): the shared lock taken just before must not stay
    held, or every later gc waits for good."""
    from gitree.repo import Repo
    repo = api.init(os.path.join(work, "g.git")).path
    r = api.open_repo(repo)

    def failing(self):
        raise OSError(24, "Too many open files")
    monkeypatch.setattr(Repo, "reopen", failing)
    with pytest.raises(OSError):
        r.transaction()
    monkeypatch.undo()
    probe = ("import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDONLY)\n"
             "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)")
    p = subprocess.run([sys.executable, "-c", probe, os.path.join(repo, "gitree.objects.lock")],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
