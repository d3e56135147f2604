"""Property tests: random trees with every kind of entry and metadata round-trip exactly."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import pygit2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from treegen import shuffled, to_directory, to_tar, trees
from helpers import dir_summary, tar_summary

from gitree import porcelain
from gitree.repo import Repo

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))


def _import_bytes(repo: Repo, tar: bytes, work: str, branch: str = "t", ts: int = 0) -> bytes:
    path = tempfile.mktemp(dir=work, suffix=".tar")
    with open(path, "wb") as f:
        f.write(tar)
    return porcelain.import_rootfs(repo, path, branch, "m", ts).commit


def _tree_id(repo: Repo, cid: bytes) -> str:
    return str(repo.git[pygit2.Oid(raw=cid)].tree_id)


def _export_tar(repo: Repo, cid: bytes, work: str) -> str:
    out = tempfile.mktemp(dir=work, suffix=".out.tar")
    porcelain.checkout_tar(repo, cid.hex(), out)
    return out


@pytest.fixture
def fresh(work):
    def make():
        return Repo.init(tempfile.mkdtemp(dir=work, suffix=".git"))
    return make


@SETTINGS
@given(nodes=trees(), seed=st.integers(0, 2 ** 32))
def test_tar_roundtrip_and_member_order(fresh, work, nodes, seed):
    repo = fresh()
    tar_a = to_tar(nodes)
    tar_b = to_tar(shuffled(nodes, seed))
    ca = _import_bytes(repo, tar_a, work, "a")
    cb = _import_bytes(repo, tar_b, work, "b")
    # determinism: any member order gives the same tree
    assert _tree_id(repo, ca) == _tree_id(repo, cb)
    out = _export_tar(repo, ca, work)
    assert tar_summary(out) == tar_summary(tar_a)
    assert porcelain.fsck(repo) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="restoring ownership and device nodes needs root")
@SETTINGS
@given(nodes=trees(for_directory=True))
def test_directory_roundtrip_as_root(fresh, work, nodes):
    repo = fresh()
    src = tempfile.mkdtemp(dir=work, suffix=".src")
    to_directory(nodes, src)
    c_dir = porcelain.import_rootfs(repo, src, "d", "m", 0).commit
    c_tar = _import_bytes(repo, to_tar(nodes), work, "t")
    # a directory and a tar of the same tree give the same git tree
    assert _tree_id(repo, c_dir) == _tree_id(repo, c_tar)
    dest = os.path.join(tempfile.mkdtemp(dir=work), "dest")
    report = porcelain.checkout_dir(repo, c_dir.hex(), dest)
    assert report.failed == {}
    assert dir_summary(dest) == dir_summary(src)
    shutil.rmtree(src)


def test_keep_mtime_roundtrip(fresh, work):
    repo = fresh()
    src = os.path.join(work, "src")
    os.makedirs(os.path.join(src, "d"))
    with open(os.path.join(src, "d", "f"), "w") as f:
        f.write("x")
    os.symlink("f", os.path.join(src, "d", "l"))
    os.utime(os.path.join(src, "d", "f"), ns=(5, 1_600_000_000_123_456_789))
    os.utime(os.path.join(src, "d", "l"), ns=(5, 1_500_000_000_000_000_000), follow_symlinks=False)
    os.utime(os.path.join(src, "d"), ns=(5, 1_400_000_000_000_000_001))
    with_m = porcelain.import_rootfs(repo, src, "m", "m", 0, keep_mtime=True).commit
    without = porcelain.import_rootfs(repo, src, "n", "m", 0).commit
    dest = os.path.join(work, "dest")
    porcelain.checkout_dir(repo, with_m.hex(), dest)
    assert dir_summary(dest, keep_mtime=True)[0][b"d/f"] == dir_summary(src, keep_mtime=True)[0][b"d/f"]
    assert os.lstat(os.path.join(dest, "d", "l")).st_mtime_ns == 1_500_000_000_000_000_000
    assert os.lstat(os.path.join(dest, "d")).st_mtime_ns == 1_400_000_000_000_000_001
    out = _export_tar(repo, with_m, work)
    members = tar_summary(out, keep_mtime=True)[0]
    assert members[b"d/f"][-1] == 1_600_000_000_123_456_789
    # without --keep-mtime no time is stored: the tree does not depend on mtimes
    os.utime(os.path.join(src, "d", "f"), ns=(5, 7))
    again = porcelain.import_rootfs(repo, src, "n", "m", 0).commit
    assert _tree_id(repo, again) == _tree_id(repo, without)
    assert _tree_id(repo, with_m) != _tree_id(repo, without)


def test_large_file_streams(fresh, work):
    """A file above the in-memory limit goes through the streaming path, in and out."""
    from gitree.repo import STREAM_BLOB
    repo = fresh()
    size = STREAM_BLOB + 3 * 1024 * 1024 + 7
    src = os.path.join(work, "big")
    os.makedirs(src)
    block = os.urandom(1 << 20)
    with open(os.path.join(src, "blob.bin"), "wb") as f:
        left = size
        while left:
            n = min(left, len(block))
            f.write(block[:n])
            left -= n
    c1 = porcelain.import_rootfs(repo, src, "b", "m", 0).commit
    c2 = porcelain.import_rootfs(repo, src, "b", "m", 0)
    assert c2.stats.new_objects == 0  # no blob, no tree: only the commit object (written loose)
    out = _export_tar(repo, c1, work)
    assert tar_summary(out) == tar_summary(_tar_of_dir(src, work))
    dest = os.path.join(work, "dest")
    porcelain.checkout_dir(repo, c1.hex(), dest)
    assert dir_summary(dest) == dir_summary(src)


def _tar_of_dir(src: str, work: str) -> str:
    out = os.path.join(work, "gnu.tar")
    subprocess.run(["tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-C", src, "-cf", out, "."],
                   check=True)
    return out


def test_clone_carries_metadata(fresh, work):
    """A plain git clone, fetch and bundle carry a complete rootfs: metadata included."""
    repo = fresh()
    src = os.path.join(work, "src")
    os.makedirs(os.path.join(src, "etc", ".git"))
    os.makedirs(os.path.join(src, "empty"))
    with open(os.path.join(src, "etc", "shadow"), "w") as f:
        f.write("root:*:1::::::\n")
    os.chown(os.path.join(src, "etc", "shadow"), 0, 42)
    os.chmod(os.path.join(src, "etc", "shadow"), 0o640)
    with open(os.path.join(src, "etc", ".git", "HEAD"), "w") as f:
        f.write("ref: refs/heads/master\n")
    with open(os.path.join(src, "ping"), "wb") as f:
        f.write(b"\x7fELF")
    os.chmod(os.path.join(src, "ping"), 0o4755)
    os.setxattr(os.path.join(src, "ping"), "security.capability",
                bytes.fromhex("0100000200200000000000000000000000000000"))
    os.mkfifo(os.path.join(src, "fifo"))
    os.mknod(os.path.join(src, "null"), 0o20666, os.makedev(1, 3))
    os.link(os.path.join(src, "ping"), os.path.join(src, "ping-link"))
    cid = porcelain.import_rootfs(repo, src, "main", "m", 0).commit
    want = tar_summary(_export_tar(repo, cid, work))
    subprocess.run(["git", "--git-dir", repo.path, "fsck", "--strict", "--no-progress"], check=True)
    clone = os.path.join(work, "clone.git")
    subprocess.run(["git", "clone", "-q", "--bare", "file://" + repo.path, clone], check=True)
    assert tar_summary(_export_tar(Repo(clone), cid, work)) == want
    bundle = os.path.join(work, "all.bundle")
    subprocess.run(["git", "--git-dir", repo.path, "bundle", "create", "-q", bundle, "main"], check=True)
    fetched = Repo.init(os.path.join(work, "fetched.git"))
    subprocess.run(["git", "--git-dir", fetched.path, "fetch", "-q", bundle, "main:main"], check=True)
    assert tar_summary(_export_tar(fetched, cid, work)) == want
    members = want[0]
    assert members[b"ping"][1] == 0o4755
    cap = bytes.fromhex("0100000200200000000000000000000000000000")
    assert members[b"ping"][-1] == ((b"security.capability", cap),)
    assert members[b"null"][6] == (1, 3)
    assert frozenset({b"ping", b"ping-link"}) in want[1]
    assert b"etc/.git/HEAD" in members and b"empty" in members


def test_git_sees_content(fresh, work):
    repo = fresh()
    src = os.path.join(work, "src")
    os.makedirs(os.path.join(src, "etc"))
    with open(os.path.join(src, "etc", "os-release"), "w") as f:
        f.write("ID=debian\n")
    cid = porcelain.import_rootfs(repo, src, "main", "m", 0).commit
    out = subprocess.run(["git", "--git-dir", repo.path, "show", f"{cid.hex()}:rootfs/etc/os-release"],
                         capture_output=True, check=True).stdout
    assert out == b"ID=debian\n"


def test_unchanged_reimport_and_small_change_share_objects(fresh, work):
    repo = fresh()
    src = os.path.join(work, "src")
    for d in ("a/x", "a/y", "b"):
        os.makedirs(os.path.join(src, d))
        for i in range(5):
            with open(os.path.join(src, d, f"f{i}"), "w") as f:
                f.write(f"{d} {i}\n")
    first = porcelain.import_rootfs(repo, src, "main", "m", 0)
    again = porcelain.import_rootfs(repo, src, "main", "m", 1)
    assert again.stats.new_objects == 0 and again.stats.pack_bytes == 0
    with open(os.path.join(src, "a", "x", "f1"), "w") as f:
        f.write("changed\n")
    os.chmod(os.path.join(src, "b", "f2"), 0o600)
    third = porcelain.import_rootfs(repo, src, "main", "m", 2)
    # New objects: the changed blob; content trees on its path (/, a, a/x); b's table (the chmod) and the
    # meta trees on its path (/, b); the top tree. a/x's table is unchanged (content is not in tables),
    # so meta/a and meta/a/x are shared with the previous version.
    assert third.stats.new_objects == 1 + 3 + 1 + 2 + 1
    assert first.stats.new_objects > third.stats.new_objects
