"""export-ostree / import-ostree against the real `ostree` as the oracle."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time

import pytest
from helpers import run_gitree
from hypothesis import HealthCheck, given, settings
from treegen import to_directory, trees

from gitree import api
from gitree import porcelain
from gitree.ostree.export import export_ostree
from gitree.repo import Repo

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="ostree commit of arbitrary owners needs root")

MODES = ["archive", "bare", "bare-user", "bare-user-only"]


def ostree(*args, check=True) -> str:
    r = subprocess.run(["ostree", *args], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise AssertionError(f"ostree {' '.join(args)}: {r.stderr}")
    return r.stdout.strip()


def ostree_commit(repo: str, tree: str, branch: str, ts: int, subject: str = "", *extra: str) -> str:
    return ostree(f"--repo={repo}", "commit", f"--tree=dir={tree}", "-b", branch, f"--timestamp=@{ts}",
                  "-s", subject, *extra)


def fresh_ostree(path: str, mode: str) -> str:
    ostree("init", f"--repo={path}", f"--mode={mode}")
    return path


def build_t1(root: str) -> None:
    """Tree T1 of the reference (section 9.1)."""
    os.makedirs(os.path.join(root, "bin"))
    os.makedirs(os.path.join(root, "empty"))
    os.chmod(root, 0o755)
    for name, data in (("empty.txt", b""), ("hello.txt", b"hello world\n"), ("owned.txt", b"owned\n"),
                       ("xattr.txt", b"xattr file\n"), ("bin/run.sh", b"#!/bin/sh\necho hi\n")):
        with open(os.path.join(root, name), "wb") as f:
            f.write(data)
    os.chmod(os.path.join(root, "bin/run.sh"), 0o755)
    os.chown(os.path.join(root, "owned.txt"), 1000, 1000)
    os.chmod(os.path.join(root, "owned.txt"), 0o640)
    os.setxattr(os.path.join(root, "xattr.txt"), "user.abc", b"v1")
    os.setxattr(os.path.join(root, "xattr.txt"), "user.foo", b"bar")
    os.symlink("hello.txt", os.path.join(root, "link"))


def test_reference_vector_t1(work):
    src = os.path.join(work, "tree")
    os.makedirs(src)
    build_t1(src)
    repo = os.path.join(work, "g.git")
    api.init(repo)
    api.import_rootfs(repo, src, branch="test/dir", timestamp=1577836800, message="dir commit\n\nthe body")
    out = api.export_ostree(repo, "test/dir", os.path.join(work, "o"), mode="archive").checksum
    assert out == "e953e1a1dc1dc84e69bad2ea6725bcdd25047d8401fe9f95477fb2dba574f66d"
    # exporting the same commit again is a no-op (no new commit parented on the old one)
    again = api.export_ostree(repo, "test/dir", os.path.join(work, "o")).checksum
    assert again == out
    assert ostree(f"--repo={os.path.join(work, 'o')}", "log", "test/dir").count("commit ") == 1
    # bare-user-only forces canonical permissions, as real ostree does
    out = api.export_ostree(repo, "test/dir", os.path.join(work, "u"), mode="bare-user-only").checksum
    assert out == "9b60b584273363914476ce50e71f2f1ca47b85a74bfbd8815dc2f029c7a21823"
    # --no-bindings, timestamp 0, empty message
    api.import_rootfs(repo, src, branch="nb", timestamp=0, message="")
    out = api.export_ostree(repo, "nb", os.path.join(work, "n"), bindings=False).checksum
    assert out == "c06691f22cabf9442b024c0217bfab8024759a6252d7c1914372db8a48218de4"


def _utf8_only(nodes):
    out = []
    for n in nodes:
        try:
            n.path.decode("utf-8")
            n.target.decode("utf-8")
        except UnicodeDecodeError:
            return None
        if n.kind in "cbp":
            continue
        out.append(n)
    return out


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(nodes=trees(for_directory=True, max_entries=15))
def test_random_trees_match_ostree_commit_in_every_mode(work, nodes):
    nodes = _utf8_only(nodes)
    if nodes is None:
        return
    src = tempfile.mkdtemp(dir=work)
    to_directory(nodes, src)
    g = Repo.init(tempfile.mkdtemp(dir=work, suffix=".git"))
    porcelain.import_rootfs(g, src, "b", "subject", 1234)
    for mode in MODES:
        real = fresh_ostree(tempfile.mkdtemp(dir=work), mode)
        want = ostree_commit(real, src, "b", 1234, "subject")
        mine = os.path.join(tempfile.mkdtemp(dir=work), "repo")
        res = export_ostree(g, "b", mine, mode=mode)
        assert res.checksum == want, mode
        ostree(f"--repo={mine}", "fsck")
    # ostree checkout of the export equals gitree's own checkout (archive repo: user-mode checkout)
    a = os.path.join(tempfile.mkdtemp(dir=work), "repo")
    export_ostree(g, "b", a, mode="bare")
    co_ostree = os.path.join(work, "co-ostree")
    co_gitree = os.path.join(work, "co-gitree")
    shutil.rmtree(co_ostree, ignore_errors=True)
    shutil.rmtree(co_gitree, ignore_errors=True)
    ostree(f"--repo={a}", "checkout", "b", co_ostree)
    porcelain.checkout_dir(g, "b", co_gitree)
    from helpers import dir_summary
    # members only: ostree checkout hard-links every use of one object, so link groups differ by design
    s1, s2 = dir_summary(co_ostree)[0], dir_summary(co_gitree)[0]
    assert s1 == s2


def test_history_and_incremental_export(work):
    src = os.path.join(work, "tree")
    os.makedirs(src)
    build_t1(src)
    g = Repo.init(os.path.join(work, "g.git"))
    real = fresh_ostree(os.path.join(work, "real"), "archive")
    want = []
    for i in range(3):
        with open(os.path.join(src, "bin", "run.sh"), "a") as f:
            f.write(f"echo {i}\n")
        porcelain.import_rootfs(g, src, "os/main", f"version {i}", 1000 + i)
        want.append(ostree_commit(real, src, "os/main", 1000 + i, f"version {i}"))
    mine = os.path.join(work, "mine")
    res = export_ostree(g, "os/main", mine, mode="archive", history=True)
    assert res.commits == want
    ostree(f"--repo={mine}", "fsck")
    # a fourth version into the repo that holds the first three: only its new objects are written
    with open(os.path.join(src, "hello.txt"), "a") as f:
        f.write("more\n")
    porcelain.import_rootfs(g, src, "os/main", "version 3", 1003)
    want.append(ostree_commit(real, src, "os/main", 1003, "version 3"))
    before = set(_objects(mine))
    res = export_ostree(g, "os/main", mine, mode="archive", history=True)
    assert res.commits == want
    new = set(_objects(mine)) - before
    # hello.txt's content object, the root dirtree (dirmeta unchanged) and the commit
    assert sorted(os.path.splitext(p)[1] for p in new) == [".commit", ".dirtree", ".filez"]
    assert res.files_written == 1


def _objects(repo: str):
    for dirpath, _, files in os.walk(os.path.join(repo, "objects")):
        for f in files:
            yield os.path.join(os.path.basename(dirpath), f)


def test_unsupported_entries_are_skipped_with_a_count_or_refused(work):
    src = os.path.join(work, "tree")
    os.makedirs(src)
    build_t1(src)
    os.mknod(os.path.join(src, "null"), 0o20666, os.makedev(1, 3))
    os.mkfifo(os.path.join(src, "fifo"))
    with open(os.path.join(os.fsencode(src), b"bad\xffname"), "w") as f:
        f.write("x")
    repo = os.path.join(work, "g.git")
    api.init(repo)
    api.import_rootfs(repo, src, branch="b")
    r = api.export_ostree(repo, "b", os.path.join(work, "o"))
    err = "\n".join(w.message for w in r.warnings)
    assert "skipped 3 entries OSTree cannot hold" in err and "/null" in err and "/fifo" in err
    assert len(r.skipped) == 3, r.skipped
    r = run_gitree("-C", repo, "export-ostree", "b", "--ostree-repo", os.path.join(work, "s"), "--strict",
                   check=False)
    assert r.returncode != 0
    lines = r.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gitree: error:") and "OSTree cannot hold" in lines[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_http_pull_of_an_archive_export(work):
    src = os.path.join(work, "tree")
    os.makedirs(src)
    build_t1(src)
    repo = os.path.join(work, "g.git")
    api.init(repo)
    api.import_rootfs(repo, src, branch="os/stable")
    served = os.path.join(work, "www", "repo")
    csum = api.export_ostree(repo, "os/stable", served, update_summary=True).checksum
    port = _free_port()
    server = subprocess.Popen(["python3", "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                              cwd=os.path.join(work, "www"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        client = fresh_ostree(os.path.join(work, "client"), "bare-user")
        ostree(f"--repo={client}", "remote", "add", "--no-gpg-verify", "origin", f"http://127.0.0.1:{port}/repo")
        assert "os/stable" in ostree(f"--repo={client}", "remote", "refs", "origin")
        ostree(f"--repo={client}", "pull", "origin", "os/stable")
        assert ostree(f"--repo={client}", "rev-parse", "origin:os/stable") == csum
        ostree(f"--repo={client}", "fsck")
    finally:
        server.kill()
        server.wait()


def _real_history_repo(work: str, mode: str) -> tuple[str, list[str]]:
    """An OSTree repo made by real ostree: 3 commits with metadata, nested variants, detached metadata."""
    src = os.path.join(work, f"src-{mode}")
    os.makedirs(src)
    build_t1(src)
    if mode == "bare-user-only":
        for p in ("owned.txt",):
            os.chown(os.path.join(src, p), 0, 0)
    repo = fresh_ostree(os.path.join(work, f"real-{mode}"), mode)
    commits = []
    for i in range(3):
        with open(os.path.join(src, "hello.txt"), "a") as f:
            f.write(f"v{i}\n")
        commits.append(ostree_commit(
            repo, src, "os/x86_64/stable", 100 + i, f"release {i}",
            f"--body=body of {i}\nsecond line", f"--add-metadata-string=version=1.{i}",
            "--add-metadata=nested=<(@t 5, [<'x'>])>", "--add-metadata=num=uint32 7",
            f"--add-detached-metadata-string=signed-by=test {i}"))
    return repo, commits


@pytest.mark.parametrize("mode", MODES)
def test_import_then_export_reproduces_every_checksum(work, mode):
    real, commits = _real_history_repo(work, mode)
    repo = os.path.join(work, "g.git")
    api.init(repo)
    r = api.import_ostree(repo, real, "os/x86_64/stable", branch="imported")
    head = r.commit
    assert len(r.commits) == len(commits)
    log = "\n".join(api.log(repo, "imported").lines())
    assert "release 2" in log and "body of 0" in log
    out = os.path.join(work, "again")
    got = api.export_ostree(repo, "imported", out, history=True, ref="os/x86_64/stable", mode="archive").checksum
    assert got == commits[-1]
    for c in commits:
        assert ostree(f"--repo={out}", "show", "--print-detached-metadata-key=signed-by", c).startswith("'test")
    ostree(f"--repo={out}", "fsck")
    # re-import is idempotent in content: the same git trees
    subprocess.run(["git", "--git-dir", repo, "fsck", "--strict", "--no-progress"], check=True)
    assert len(head) == 40


def test_real_rootfs_export_matches_ostree_commit(rootfs_tar, work):
    """The real Debian rootfs: archive and bare-user exports equal `ostree commit` of the same tree."""
    extracted = os.path.join(work, "rootfs")
    os.makedirs(extracted)
    subprocess.run(["tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf", rootfs_tar, "-C",
                    extracted], check=True)
    repo = os.path.join(work, "g.git")
    api.init(repo)
    api.import_rootfs(repo, rootfs_tar, branch="debian", timestamp=1700000000, message="bookworm")
    # OSTree cannot hold device nodes: gitree skips them (with a warning); give ostree the same tree
    subprocess.run(["find", extracted, "(", "-type", "c", "-o", "-type", "b", "-o", "-type", "p", ")",
                    "-delete"], check=True)
    for mode in ("archive", "bare-user"):
        real = fresh_ostree(os.path.join(work, f"real-{mode}"), mode)
        want = ostree_commit(real, extracted, "debian", 1700000000, "bookworm")
        mine = os.path.join(work, f"mine-{mode}")
        r = api.export_ostree(repo, "debian", mine, mode=mode)
        assert r.checksum == want
        assert "char node" in "\n".join(w.message for w in r.warnings)
        ostree(f"--repo={mine}", "fsck")


def test_tar_source_matches_ostree_tar_import(work):
    """Reference 9.2: a GNU tar of T1 imported by gitree and exported equals `ostree commit --tree=tar=`."""
    src = os.path.join(work, "tree")
    os.makedirs(src)
    build_t1(src)
    tar = os.path.join(work, "tar_a.tar")
    subprocess.run(["tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-C", src, "-cf", tar, "."],
                   check=True)
    repo = os.path.join(work, "g.git")
    api.init(repo)
    api.import_rootfs(repo, tar, branch="test/tar", timestamp=1577836800, message="dir commit\n\nthe body")
    out = api.export_ostree(repo, "test/tar", os.path.join(work, "o")).checksum
    assert out == "b24ee0ee7a21b9d265abe692594742c76951871918178d7d88582f8ab28feac2"
    real = fresh_ostree(os.path.join(work, "real"), "archive")
    want = ostree(f"--repo={real}", "commit", f"--tree=tar={tar}", "-b", "test/tar", "--timestamp=@1577836800",
                  "-s", "dir commit", "--body=the body")
    assert out == want


def test_import_keeps_unsorted_xattrs_of_tar_imports(work):
    """ostree's tar import keeps libarchive's (reversed pax) xattr order and empty values; gitree's side
    tables sort xattrs, so the import records the order and the export reproduces the checksums."""
    import io
    import stat as st

    from gitree.tarformat import TarWriter
    buf = io.BytesIO()
    w = TarWriter(buf.write)
    w.add(b"./", st.S_IFDIR, 0o755, 0, 0)
    w.add(b"./x", st.S_IFREG, 0o644, 0, 0, size=2, xattrs=[(b"user.b", b"B"), (b"user.c", b"C"), (b"user.a", b"A")])
    w.add_data(b"x\n")
    w.pad(2)
    w.add(b"./y", st.S_IFREG, 0o644, 0, 0, size=2, xattrs=[(b"user.empty", b""), (b"user.a", b"A")])
    w.add_data(b"y\n")
    w.pad(2)
    w.close()
    tar = os.path.join(work, "x.tar")
    with open(tar, "wb") as f:
        f.write(buf.getvalue())
    real = fresh_ostree(os.path.join(work, "real"), "archive")
    want = ostree(f"--repo={real}", "commit", f"--tree=tar={tar}", "-b", "t", "--timestamp=@0")
    assert ostree(f"--repo={real}", "ls", "-C", "t", "/x").split()[4] == \
        "bad388414fe03305827ddde1c43f0bb902627ddcb23d2b4d86c321ff63e9843b"
    repo = os.path.join(work, "g.git")
    api.init(repo)
    api.import_ostree(repo, real, "t", branch="t")
    got = api.export_ostree(repo, "t", os.path.join(work, "again"), history=True).checksum
    assert got == want
