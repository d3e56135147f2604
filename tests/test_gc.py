"""`gitree gc` (bounded memory) and export from its deltified pack: deltas fall back to recompression."""

from __future__ import annotations

import os
import subprocess

import pytest

from gitree import api
from helpers import GITREE
from test_ostree_bridge import build_t1, fresh_ostree, ostree, ostree_commit

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="ostree commit of arbitrary owners needs root")


def test_gc_then_export_matches_ostree_commit(work):
    src = os.path.join(work, "tree")
    os.makedirs(src)
    build_t1(src)
    base = b"".join(b"shared line %d of a library\n" % i for i in range(4000))
    repo = os.path.join(work, "g.git")
    api.init(repo)
    for i in range(3):  # similar files across versions: git repack stores most of them as deltas
        with open(os.path.join(src, "lib.so"), "wb") as f:
            f.write(base + b"version %d\n" % i)
        api.import_rootfs(repo, src, branch="b", timestamp=10 + i, message=f"v{i}")
    api.gc(repo)
    packs = [p for p in os.listdir(os.path.join(repo, "objects", "pack")) if p.endswith(".pack")]
    assert len(packs) == 1
    subprocess.run(["git", "--git-dir", repo, "fsck", "--strict", "--no-progress"], check=True,
                   capture_output=True)
    verify = subprocess.run(["git", "verify-pack", "-v", os.path.join(repo, "objects", "pack", packs[0])],
                            capture_output=True, text=True, check=True).stdout
    assert "chain length" in verify  # some objects are deltas
    from gitree.packreader import PackSet
    from gitree.repo import Repo
    g = Repo(repo)
    ps = PackSet(g.objects_dir)
    libs = [g.find(g.commit_trees(g.resolve(f"b~{n}")), b"lib.so").oid for n in range(3)]
    assert any(ps.blob(oid) is None for oid in libs)  # a delta: the export must recompress it
    assert any(ps.blob(oid) is not None for oid in libs)
    ps.close()
    # the real ostree, fed the same three versions, is the oracle for the whole chain
    real = fresh_ostree(os.path.join(work, "real"), "archive")
    want = []
    for i in range(3):
        with open(os.path.join(src, "lib.so"), "wb") as f:
            f.write(base + b"version %d\n" % i)
        want.append(ostree_commit(real, src, "b", 10 + i, f"v{i}"))
    for mode in ("archive", "bare-user"):
        out = os.path.join(work, f"o-{mode}")
        r = api.export_ostree(repo, "b", out, mode=mode, history=True)
        assert r.checksum == want[-1] and r.commits == want
        assert ostree(f"--repo={out}", "log", "b").count("commit ") == 3
        ostree(f"--repo={out}", "fsck")
    co = os.path.join(work, "co")
    api.checkout(repo, "b", co)
    assert open(os.path.join(co, "lib.so"), "rb").read() == base + b"version 2\n"


def test_gc_waits_for_a_writer_that_counts_on_present_objects(work):
    """A writer skips the objects the repository holds. A branch deleted by hand leaves its objects in a pack,
    named by nothing: an import of the same files finds them present and writes only its commit. A gc that
    repacked in between would drop them and leave the new branch naming a missing tree; gc waits for the
    writer instead (gitree.objects.lock), then keeps them, now named."""
    import time

    from gitree.entry import Entry, Kind
    repo = os.path.join(work, "g.git")
    r = api.open_repo(api.init(repo).path)
    files = {b"f%02d" % i: os.urandom(4000) for i in range(20)}

    def add_all(tx) -> None:
        for name, data in files.items():
            tx.add(Entry(name, Kind.FILE, 0o644, size=len(data)), lambda data=data: [data])
    with r.transaction() as tx:
        add_all(tx)
        tx.commit(branch="old", message="old", timestamp=10)
    subprocess.run(["git", "--git-dir", repo, "update-ref", "-d", "refs/heads/old"], check=True)
    gc = None
    try:
        with r.transaction() as tx:
            add_all(tx)
            gc = subprocess.Popen([*GITREE, "-q", "-C", repo, "gc"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            time.sleep(2)
            assert gc.poll() is None, gc.communicate()     # waiting: this transaction counts on the objects
            assert os.read(gc.stderr.fileno(), 4096).startswith(b"gitree: waiting for another writer")
            new = tx.commit(branch="new", message="new", timestamp=20)
        assert tx.stats.new_objects == 0                   # no tree or blob: each was found present
        _, err = gc.communicate(timeout=120)
        assert gc.returncode == 0, err
    finally:
        if gc is not None and gc.poll() is None:
            gc.kill()
            gc.wait()
    subprocess.run(["git", "--git-dir", repo, "fsck", "--strict", "--no-progress"], check=True, capture_output=True)
    api.fsck(repo, check=True)
    assert api.ls(r, new.hex()).items and len(api.ls(r, new.hex()).items) == len(files)
