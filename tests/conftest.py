"""Shared fixtures: real repositories, a tmpfs for write-heavy tests, and a real Debian rootfs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from helpers import run_gitree  # noqa: E402,F401

@pytest.fixture(scope="session")
def tmpfs_root():
    """A tmpfs mounted for this test session (fast file creation; supports user/trusted/security xattrs)."""
    base = tempfile.mkdtemp(prefix="gitree-tmpfs-")
    mounted = False
    if os.geteuid() == 0:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8g,mode=0755", "tmpfs", base])
        mounted = r.returncode == 0
    yield base
    if mounted:
        subprocess.run(["umount", "-l", base])
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def work(tmpfs_root, request):
    """A fresh directory on the tmpfs for one test."""
    d = tempfile.mkdtemp(prefix=request.node.name[:40].replace("/", "_") + "-", dir=tmpfs_root)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def repo(work):
    path = os.path.join(work, "repo.git")
    run_gitree("-C", path, "init")
    return path


@pytest.fixture(scope="session")
def rootfs_tar():
    """Path of a real Debian rootfs tar built with mmdebstrap from Debian's packages, cached."""
    from gitree.rootfs import build_rootfs
    return build_rootfs("bookworm", verbose=False)


# --- issue 12 (U-Boot, LXC, debos): the bootable Debian tree, imported and made bootable once a session
@pytest.fixture(scope="session")
def bootable_repo(tmpfs_root):
    """(repo, kver): the cached bootable Debian rootfs (tests/bootenv.py) imported on debian/rootfs and made
    bootable twice on debian/boot (versions 12.0 and 12.1). Tests deploy from it and never move its branches."""
    import re
    import time

    from bootenv import build_bootable_rootfs
    tar = build_bootable_rootfs()
    base = tempfile.mkdtemp(prefix="bootable-repo-", dir=tmpfs_root)
    repo = os.path.join(base, "g.git")
    run_gitree("-C", repo, "init")
    run_gitree("-C", repo, "import-rootfs", tar, "--branch", "debian/rootfs", "-m", "bookworm bootable")
    t0 = time.monotonic()
    r = run_gitree("-C", repo, "make-bootable", "debian/rootfs", "--branch", "debian/boot")
    print(f"\nmake-bootable of the real rootfs: {time.monotonic() - t0:.1f} s\n{r.stderr.decode()}")
    run_gitree("-C", repo, "make-bootable", "debian/rootfs", "--branch", "debian/boot")
    kver = re.search(rb"kernel (\S+):", r.stderr).group(1).decode()
    return repo, kver
