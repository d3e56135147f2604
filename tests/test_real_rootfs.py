"""A real Debian root filesystem (mmdebstrap minbase + iputils-ping, from Debian's packages) round-trips."""

from __future__ import annotations

import os
import subprocess

import pytest
from helpers import dir_summary, tar_summary

from gitree import api

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="building a Debian rootfs with mmdebstrap needs root")


def _git(repo, *args) -> str:
    return subprocess.run(["git", "--git-dir", repo, *args], check=True, capture_output=True).stdout.decode().strip()


@pytest.fixture(scope="module")
def imported(rootfs_tar, tmpfs_root):
    """The real rootfs imported from its tar, and extracted by GNU tar onto the tmpfs."""
    base = os.path.join(tmpfs_root, "real")
    os.makedirs(base)
    repo = os.path.join(base, "repo.git")
    api.init(repo)
    cid = api.import_rootfs(repo, rootfs_tar, branch="deb", timestamp=0, message="from tar").commit
    extracted = os.path.join(base, "extracted")
    os.makedirs(extracted)
    subprocess.run(["tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf", rootfs_tar,
                    "-C", extracted], check=True)
    return repo, cid, extracted


def test_tar_roundtrip(imported, rootfs_tar, tmpfs_root):
    repo, cid, _ = imported
    out = os.path.join(tmpfs_root, "real", "out.tar")
    api.checkout_tar(repo, cid, out)
    want = tar_summary(rootfs_tar)
    got = tar_summary(out)
    assert got == want
    members = got[0]
    assert len(members) > 5000
    # the real file capability of ping survived, and setuid bits did
    assert dict(members[b"usr/bin/ping"][-1])[b"security.capability"][:4] == b"\x01\x00\x00\x02"
    assert members[b"usr/bin/passwd"][1] & 0o4000
    assert members[b"dev/null"][6] == (1, 3)


def test_directory_import_matches_tar_and_checkout_restores(imported, tmpfs_root):
    repo, cid, extracted = imported
    cid2 = api.import_rootfs(repo, extracted, branch="dir", timestamp=0, message="from tar").commit
    assert _git(repo, "rev-parse", cid2 + "^{tree}") == _git(repo, "rev-parse", cid + "^{tree}")
    dest = os.path.join(tmpfs_root, "real", "checkout")
    r = api.checkout(repo, cid2, dest)
    assert r.warnings == [] and r.not_restored == {}
    assert dir_summary(dest) == dir_summary(extracted)


def test_fsck_clean(imported):
    repo, cid, _ = imported
    api.fsck(repo, check=True)
    subprocess.run(["git", "--git-dir", repo, "fsck", "--strict", "--no-progress"], check=True)


def test_security_update_writes_only_changed_paths(imported, tmpfs_root):
    """Change a few files like a package update does: only their blobs, and the trees and tables on their
    paths, are new objects."""
    repo, cid, extracted = imported
    work = os.path.join(tmpfs_root, "real", "v2")
    subprocess.run(["cp", "-a", extracted, work], check=True)
    with open(os.path.join(work, "etc", "debian_version"), "a") as f:
        f.write("# patched\n")
    with open(os.path.join(work, "usr", "bin", "ping"), "ab") as f:
        f.write(b"\0")  # content change; the capability xattr stays
    os.setxattr(os.path.join(work, "usr", "bin", "ping"), "security.capability",
                bytes.fromhex("0100000200200000000000000000000000000000"))
    os.chmod(os.path.join(work, "etc", "motd"), 0o600)
    before = set(_git(repo, "cat-file", "--batch-all-objects", "--batch-check=%(objectname)").split())
    r = api.import_rootfs(repo, work, branch="deb", message="update")
    v2 = r.commit
    after = set(_git(repo, "cat-file", "--batch-all-objects", "--batch-check=%(objectname)").split())
    new = after - before
    kinds = {}
    for oid in new:
        t = _git(repo, "cat-file", "-t", oid)
        kinds[t] = kinds.get(t, 0) + 1
    # blobs: etc/debian_version, usr/bin/ping, and etc/'s table (the chmod); usr/bin's table is unchanged
    # because tables hold metadata only
    assert kinds["blob"] == 3
    # content trees: /, etc, usr, usr/bin; meta trees: / and etc; the top tree
    assert kinds["tree"] == 7
    assert kinds["commit"] == 1
    diff = api.diff(repo, cid, v2).lines()
    assert diff == ["M /etc/debian_version  content", "M /etc/motd  mode 0644 -> 0600", "M /usr/bin/ping  content"]
