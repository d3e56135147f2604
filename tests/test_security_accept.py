"""Variants of issue 9's classes found by the acceptance attack that the other security tests do not hold:
each runs the real CLI on a crafted server or input and checks one error line, a nonzero exit, and every
ref as it was."""

from __future__ import annotations

import os
import pathlib
import stat
import subprocess

import pygit2
import pytest
from helpers import run_gitree
from test_safety import refs
from test_security_git import _server, assert_one_error, base, commit  # noqa: F401  (base is a fixture)


def _child(server: str, cid: str) -> str:
    """A clean gitree commit on top of `cid` (the same tree)."""
    g = pygit2.Repository(server)
    top = g[pygit2.Oid(hex=cid)].tree
    return commit(server, (top["rootfs"].id.raw, top["meta"].id.raw), "clean child", [cid])


@pytest.mark.parametrize("kind", ["tag", "tree"])
def test_fetch_of_a_branch_naming_a_tag_or_tree_moves_nothing(work, base, kind):  # noqa: F811
    """A server branch naming an annotated tag (or a tree) ended fetch in `internal error: InvalidError`
    from the fast-forward check; it is refused with one line before that check, moving no branch."""
    repo, cid = base
    server = _server(work, repo)
    local = os.path.join(work, "local.git")
    run_gitree("clone", server, local)
    g = pygit2.Repository(server)
    child = _child(server, cid)
    if kind == "tag":
        target = g.create_tag("t1", pygit2.Oid(hex=child), pygit2.enums.ObjectType.COMMIT,
                              pygit2.Signature("t", "t@example.invalid", 1700000000, 0), "tag\n")
    else:
        target = g[pygit2.Oid(hex=child)].tree_id
    g.references["refs/heads/main"].set_target(target)
    before = refs(local)
    r = run_gitree("-C", local, "fetch", server, check=False)
    assert_one_error(r, "not a commit")
    assert refs(local) == before
    assert not [n for n in pygit2.Repository(local).references if "gitree-fetch" in n]


def test_clone_never_keeps_head_detached_at_what_the_server_named(work, base):  # noqa: F811
    """A server whose HEAD points outside refs/heads/ (at refs/gitree/ostree-cache, say) left the clone's
    HEAD detached at that commit, which no branch holds and nothing verified. The clone's HEAD names one
    of its (verified) branches."""
    repo, cid = base
    server = _server(work, repo)
    other = _child(server, cid)
    subprocess.run(["git", "--git-dir", server, "update-ref", "refs/gitree/ostree-cache", other], check=True)
    subprocess.run(["git", "--git-dir", server, "symbolic-ref", "HEAD", "refs/gitree/ostree-cache"], check=True)
    dest = os.path.join(work, "clone.git")
    run_gitree("clone", server, dest)
    g = pygit2.Repository(dest)
    assert not g.head_is_detached
    assert g.head.name == "refs/heads/main"
    assert set(g.references) == {"refs/heads/main"}


# ---------------------------------------------------------------------------------------------
# tars: the fuzz suite names tars beside side tables, trees, bundles and OSTree objects; only the
# sparse map had a mutation test (at the TarReader level). This one runs import-rootfs on mutants.

from hypothesis import event, given, strategies as st  # noqa: E402
from test_security_fuzz import SETTINGS, byte_edit, check_outcome, cli  # noqa: E402
from test_security_git import BASE_MEMBERS, make_tar  # noqa: E402

_LINK_DIR_MEMBERS = BASE_MEMBERS + [
    (b"./etc/long", stat.S_IFLNK, 0o777, {"linkname": b"x" * 200}),           # a pax linkpath
    (b"./etc/" + b"n" * 120, stat.S_IFREG, 0o600, {"data": b"long name"}),    # a pax path
    (b"./etc/attr", stat.S_IFREG, 0o644, {"data": b"a", "xattrs": ((b"user.k", b"v"), (b"trusted.t", b"\0\xff"))}),
]


def _headers(tar: bytes) -> list[int]:
    """Offsets of the header blocks of a well-formed tar (pax and member headers alike)."""
    out, off = [], 0
    while off + 512 <= len(tar) and tar[off:off + 512] != bytes(512):
        out.append(off)
        size = int(tar[off + 124:off + 136].strip(b"\0 ") or b"0", 8)
        off += 512 + (size + 511) // 512 * 512
    return out


def _fix_checksums(tar: bytes, headers: list[int]) -> bytes:
    """Every header block's checksum recomputed, so a mutation reaches the fields behind it."""
    buf = bytearray(tar)
    for off in headers:
        if off + 512 > len(buf):
            break
        buf[off + 148:off + 156] = b" " * 8
        buf[off + 148:off + 156] = b"%06o\0 " % sum(buf[off:off + 512])
    return bytes(buf)


@pytest.fixture(scope="module")
def tar_world():
    import tempfile
    root = tempfile.mkdtemp(prefix="gitree-tarfuzz-", dir="/dev/shm")
    tar = make_tar(os.path.join(root, "base.tar"), _LINK_DIR_MEMBERS)
    with open(tar, "rb") as f:
        raw = f.read()
    yield root, raw, _headers(raw)
    import shutil
    shutil.rmtree(root, ignore_errors=True)


@SETTINGS
@given(data=st.data())
def test_mutated_tars_import_faithfully_or_are_refused(tar_world, data):
    """Byte edits anywhere in a tar (header checksums recomputed half the time, so the edit reaches the
    fields, pax records and names behind them): import-rootfs either succeeds with a tree that fsck
    accepts and that round-trips through `checkout --tar`, or refuses with one line and no branch."""
    import shutil
    import tempfile
    root, raw, headers = tar_world
    mutated = data.draw(byte_edit(raw))
    if data.draw(st.booleans()):
        mutated = _fix_checksums(mutated, headers)
    scratch = tempfile.mkdtemp(prefix="m-", dir=root)
    try:
        src = os.path.join(scratch, "m.tar")
        pathlib.Path(src).write_bytes(mutated)
        repo = os.path.join(scratch, "r.git")
        assert cli("-C", repo, "init")[0] == 0
        rc, out, err = cli("-C", repo, "import-rootfs", src, "-b", "main")
        if not check_outcome(rc, err, "import-rootfs"):
            event("refused")
            assert list(refs(repo)) == ["<HEAD file>"]
            return
        event("imports")
        rev = out.strip().splitlines()[-1]
        rc, _, err = cli("-C", repo, "fsck")
        assert rc == 0, err
        back_tar = os.path.join(scratch, "back.tar")
        rc, _, err = cli("-C", repo, "checkout", rev, "--tar", back_tar)
        assert rc == 0, err
        back = os.path.join(scratch, "back.git")
        assert cli("-C", back, "init")[0] == 0
        rc, out2, err = cli("-C", back, "import-rootfs", back_tar, "-b", "main")
        assert rc == 0, err
        listing = [cli("-C", r, "ls", "-R", "-l", c) for r, c in ((repo, rev), (back, out2.strip().splitlines()[-1]))]
        assert listing[0] == listing[1] and listing[0][0] == 0
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def test_tar_fuzz_base_imports(tar_world):
    """The mutants start from a tar that imports (so refusals come from the mutation)."""
    root, raw, headers = tar_world
    assert len(headers) >= len(_LINK_DIR_MEMBERS) and _fix_checksums(raw, headers) == raw
    repo = os.path.join(root, "base.git")
    assert cli("-C", repo, "init")[0] == 0
    src = os.path.join(root, "base.tar")
    rc, _, err = cli("-C", repo, "import-rootfs", src, "-b", "main")
    assert rc == 0, err


def test_directory_walk_does_not_recurse_per_level(work):
    """A directory source is walked with an explicit stack: 600 levels are read under a Python recursion
    limit of 150 (the old walk nested one generator per level), in canonical order."""
    import sys

    from gitree.sources import DirectoryReport, directory_entries
    src = os.path.join(work, "src")
    os.mkdir(src)
    fd = os.open(src, os.O_RDONLY)
    try:
        for _ in range(600):
            os.mkdir("d", dir_fd=fd)
            os.close(os.open("f", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
            nfd = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = nfd
    finally:
        os.close(fd)
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(150)
    try:
        paths = [item.entry.path for item in directory_entries(src, DirectoryReport())]
    finally:
        sys.setrecursionlimit(old)
    # each level lists d before f: down the d chain first, then each level's f on the way back up
    want = [b""] + [b"/".join([b"d"] * i) for i in range(1, 601)] + \
        [b"/".join([b"d"] * i + [b"f"]) for i in range(599, -1, -1)]
    assert paths == want
