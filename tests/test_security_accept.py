"""Variants of issue 9's classes found by the acceptance attack that the other security tests do not hold:
each runs the real CLI on a crafted server or input and checks one error line, a nonzero exit, and every
ref as it was."""

from __future__ import annotations

import os
import pathlib
import stat
import subprocess
import tarfile

import pygit2
import pytest
from helpers import run_gitree
from test_safety import refs
from test_security_git import _server, assert_one_error, base, commit, run_limited  # noqa: F401  (base is a fixture)


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


def test_directory_near_the_depth_limit_imports_within_64_descriptors(work):
    """A directory 2,000 levels deep has paths of about 10 KB, past PATH_MAX: its deep items were
    `Unreadable` (exit 18). The walk reaches each item from an open descriptor of its directory, keeping a
    bounded number of them: the import runs under a limit of 64 open files, and the bottom file, its hard
    link, symlink and xattrs come back from a tar checkout."""
    src, repo = os.path.join(work, "src"), os.path.join(work, "repo.git")
    depth = 2000
    os.mkdir(src)
    fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):   # the path is too long for any call but one relative to a descriptor
            os.mkdir("dddd", 0o750, dir_fd=fd)
            nfd = os.open("dddd", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        f = os.open("f", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640, dir_fd=fd)
        os.write(f, b"the bottom\n")
        os.setxattr(f, "user.where", b"\x00deep\xff")
        os.fchown(f, 1234, 5678)
        os.close(f)
        os.link("f", "h", src_dir_fd=fd, dst_dir_fd=fd)
        os.symlink(b"../dddd/f", "l", dir_fd=fd)
        os.setxattr(fd, "user.dir", b"bottom")
    finally:
        os.close(fd)
    rel = "/".join(["dddd"] * depth)
    assert len(os.path.join(src, rel, "f")) > 2 * 4096
    try:
        run_gitree("-C", repo, "init")
        r = run_limited("-C", repo, "import-rootfs", src, "-b", "deep", nofile=64)
        assert r.returncode == 0, r.stderr.decode()
        out = os.path.join(work, "out.tar")
        run_gitree("-C", repo, "checkout", "deep", "--tar", out)
        with tarfile.open(out) as t:
            got = {m.name.removeprefix("./"): m for m in t.getmembers()}
            f, h, lnk, d = got[rel + "/f"], got[rel + "/h"], got[rel + "/l"], got[rel]
            assert t.extractfile(f).read() == b"the bottom\n"
            assert (f.mode, f.uid, f.gid) == (0o640, 1234, 5678)
            assert f.pax_headers["SCHILY.xattr.user.where"].encode("utf-8", "surrogateescape") == \
                b"\x00deep\xff"
            assert h.islnk() and h.linkname.removeprefix("./") == rel + "/f"
            assert lnk.issym() and lnk.linkname == "../dddd/f"
            assert d.isdir() and d.mode == 0o750 and d.pax_headers["SCHILY.xattr.user.dir"] == "bottom"
            assert len(got) == depth + 4   # the root, the directories, f, h and l
    finally:
        subprocess.run(["rm", "-rf", src], check=True)  # shutil.rmtree recurses once per level


def test_a_directory_file_read_later_is_reached_again_and_checked(work):
    """A directory source's file may be read again after the walk went on (it is rereadable): it is
    opened again one directory at a time from the root, each checked to be the directory walked. One moved
    away and replaced by another of the same name is refused, its file never read."""
    from gitree.sources import DirectoryReport, directory_entries
    src = pathlib.Path(work, "src")
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "b" / "f").write_bytes(b"walked")
    (src / "z").write_bytes(b"after")
    items = {item.entry.path: item for item in directory_entries(str(src), DirectoryReport())}
    f = items[b"a/b/f"]
    assert f.rereadable and b"".join(f.data()) == b"walked" == b"".join(f.data())
    (src / "a").rename(src / "moved")
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "b" / "f").write_bytes(b"swapped in")
    with pytest.raises(OSError, match="changed while it was read"):
        b"".join(f.data())
    (src / "a").rename(src / "other")
    (src / "moved").rename(src / "a")
    assert b"".join(f.data()) == b"walked"
