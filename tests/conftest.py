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

from gitree import api  # noqa: E402


@pytest.fixture(autouse=True)
def _no_process_state_leaks():
    """Most tests call gitree.api in this process: none may leave the working directory, the umask or the
    environment changed for the next test."""
    cwd, env = os.getcwd(), dict(os.environ)
    umask = os.umask(0o022)
    os.umask(umask)
    yield
    now = os.umask(umask)
    assert now == umask, f"the test left the umask at {now:o} (was {umask:o})"
    assert os.getcwd() == cwd, f"the test left the working directory at {os.getcwd()}"
    changed = {k for k in set(env) | set(os.environ)
               if env.get(k) != os.environ.get(k) and k != "PYTEST_CURRENT_TEST"}
    assert not changed, f"the test changed the environment: {sorted(changed)}"


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
    api.init(path)
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
    api.init(repo)
    api.import_rootfs(repo, tar, branch="debian/rootfs", message="bookworm bootable")
    t0 = time.monotonic()
    r = api.make_bootable(repo, "debian/rootfs", branch="debian/boot")
    print(f"\nmake-bootable of the real rootfs: {time.monotonic() - t0:.1f} s\n" + "\n".join(r.changes))
    api.make_bootable(repo, "debian/rootfs", branch="debian/boot")
    kver = re.search(r"kernel (\S+):", "\n".join(r.changes)).group(1)
    assert kver == r.kernel
    return repo, kver
