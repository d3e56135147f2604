"""checkout to a directory leaves out metadata calls that would change nothing (gitree/sinks.py): files are
created with their permission bits when the umask keeps them, and not chowned to the owner they get anyway.
What it writes must not depend on that: the umask, a setgid destination (whose group new files inherit) and
owners other than the checkout's own all give the tree as imported."""

from __future__ import annotations

import os

import pytest
from helpers import dir_summary

from gitree import api

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="ownership and setuid bits need root")


def _tree(src: str) -> None:
    os.makedirs(os.path.join(src, "etc", "sub"))
    os.makedirs(os.path.join(src, "srv", "shared"))
    files = [("etc/plain", 0o644, 0, 0), ("etc/exec", 0o755, 0, 0), ("etc/suid", 0o4755, 0, 0),
             ("etc/sgid", 0o2755, 0, 42), ("etc/user", 0o640, 1000, 1000), ("etc/none", 0o000, 0, 0),
             ("etc/sub/group", 0o664, 0, 43), ("etc/sub/sticky", 0o1644, 0, 0), ("srv/shared/x", 0o600, 7, 0)]
    for path, mode, uid, gid in files:
        p = os.path.join(src, path)
        with open(p, "wb") as f:
            f.write(path.encode() + b"\n")
        os.chown(p, uid, gid)
        os.chmod(p, mode)
    os.setxattr(os.path.join(src, "etc", "plain"), "user.note", b"kept")
    os.symlink("plain", os.path.join(src, "etc", "link-root"))
    os.symlink("user", os.path.join(src, "etc", "link-user"))
    os.chown(os.path.join(src, "etc", "link-user"), 1000, 1000, follow_symlinks=False)
    os.chown(os.path.join(src, "srv", "shared"), 0, 50)
    os.chmod(os.path.join(src, "srv", "shared"), 0o2775)
    os.chmod(os.path.join(src, "srv"), 0o1777)
    os.chmod(src, 0o755)


@pytest.fixture
def imported(work):
    src = os.path.join(work, "src")
    os.makedirs(src)
    _tree(src)
    repo = os.path.join(work, "g.git")
    api.init(repo)
    api.import_rootfs(repo, src, branch="t", timestamp=0)
    return repo, src


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o000])
def test_checkout_restores_modes_and_owners_whatever_the_umask(work, imported, umask):
    repo, src = imported
    dest = os.path.join(work, "dest")
    old = os.umask(umask)
    try:
        report = api.checkout(repo, "t", dest)
    finally:
        os.umask(old)
    assert report.not_restored == {} and report.warnings == []
    assert dir_summary(dest) == dir_summary(src)


def test_checkout_into_a_setgid_destination_gives_the_tree_its_own_groups(work, imported):
    """New files below a setgid directory inherit its group: the checkout must chown them all."""
    repo, src = imported
    dest = os.path.join(work, "dest")
    os.mkdir(dest)
    os.chown(dest, 0, 1234)
    os.chmod(dest, 0o2700)
    assert api.checkout(repo, "t", dest).not_restored == {}
    assert dir_summary(dest) == dir_summary(src)
