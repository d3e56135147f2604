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
    from gitree.demo import build_rootfs
    return build_rootfs("bookworm", verbose=False)
