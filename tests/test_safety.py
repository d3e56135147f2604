"""Hostile inputs and safety: hostile tars, checkout confinement, killed imports, concurrent writers.

Everything runs the real CLI (`python -m gitree`) against real repositories; hostile archives are built
byte for byte here. An import that fails must leave the repository and its surroundings exactly as they
were: same refs, no new pack, no temporary files, nothing written anywhere else.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import io
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import uuid
from functools import partial

import pygit2
import pytest
from helpers import GITREE, api_refuses, dir_summary, last_line, run_gitree, tar_summary

from gitree import api
from gitree.limits import SYMLINK_MAX
from gitree.tarformat import LNKTYPE, TarWriter

# ---------------------------------------------------------------------------------------------
# helpers


def git(repo: str, *args: str, check: bool = True) -> str:
    r = subprocess.run(["git", "--git-dir", repo, *args], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed ({r.returncode}): {r.stderr}")
    return r.stdout.strip()


def refs(repo: str) -> dict[str, str]:
    """Every ref of the repository, plus what HEAD points at."""
    g = pygit2.Repository(repo)
    out = {name: str(g.references[name].target) for name in g.references}
    with open(os.path.join(repo, "HEAD")) as f:
        out["<HEAD file>"] = f.read()
    return out


def installed_packs(repo: str) -> set[str]:
    d = os.path.join(repo, "objects", "pack")
    return {n for n in os.listdir(d) if not n.startswith("tmp_")} if os.path.isdir(d) else set()


def snapshot(root: str) -> dict[str, tuple]:
    """Every path under root with its type, permissions, owner, and content hash or link target."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            extra = None
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    extra = hashlib.sha1(f.read()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                extra = os.readlink(p)
            out[os.path.relpath(p, root)] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode),
                                             st.st_uid, st.st_gid, extra)
    return out


def assert_one_error_line(r: subprocess.CompletedProcess, *keywords: str) -> str:
    err = r.stderr.decode("utf-8", "replace")
    assert r.returncode != 0, f"expected failure, got success: {r.stdout!r} {err!r}"
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, f"expected exactly one stderr line, got: {err!r}"
    assert lines[0].startswith("gitree: error:"), lines[0]
    low = lines[0].lower()
    for k in keywords:
        alts = k.split("|")
        assert any(a.lower() in low for a in alts), f"{k!r} not in {lines[0]!r}"
    return lines[0]


def blob_at(repo: str, rev: str, path: str) -> bytes:
    g = pygit2.Repository(repo)
    tree = g.revparse_single(rev).peel(pygit2.Commit).tree
    return g[(tree / ("rootfs/" + path)).id].data


def git_entry(repo: str, rev: str, path: str):
    g = pygit2.Repository(repo)
    tree = g.revparse_single(rev).peel(pygit2.Commit).tree
    try:
        return tree / ("rootfs/" + path)
    except KeyError:
        return None


class Tar:
    """Build a tar archive member by member, with full control of names and structure."""

    def __init__(self):
        self.buf = io.BytesIO()
        self.w = TarWriter(self.buf.write)

    def file(self, path: bytes, data: bytes = b"x", mode: int = 0o644, size: int | None = None) -> "Tar":
        self.w.add(path, stat.S_IFREG, mode, 0, 0, size=len(data) if size is None else size)
        self.w.add_data(data)
        self.w.pad(len(data))
        return self

    def dir(self, path: bytes, mode: int = 0o755) -> "Tar":
        self.w.add(path, stat.S_IFDIR, mode, 0, 0)
        return self

    def symlink(self, path: bytes, target: bytes) -> "Tar":
        self.w.add(path, stat.S_IFLNK, 0o777, 0, 0, linkname=target)
        return self

    def hardlink(self, path: bytes, target: bytes) -> "Tar":
        self.w.add(path, stat.S_IFREG, 0o644, 0, 0, linkname=target, hardlink=True)
        return self

    def raw_header(self, name: bytes, typeflag: bytes, size: int = 0, linkname: bytes = b"") -> "Tar":
        self.buf.write(TarWriter._header(name, 0o644, b"%07o\0" % 0, b"%07o\0" % 0, b"%011o\0" % size,
                                         b"%011o\0" % 0, typeflag, linkname, b"%07o\0" % 0, b"%07o\0" % 0))
        return self

    def raw(self, data: bytes) -> "Tar":
        self.buf.write(data)
        return self

    def bytes(self, end: bool = True) -> bytes:
        if end:
            self.w.close()
        return self.buf.getvalue()


def gnu_longname(name: bytes) -> Tar:
    data = name + b"\0"
    t = Tar().raw_header(b"././@LongLink", b"L", len(data))
    return t.raw(data + b"\0" * (-len(data) % 512))


def pax_only(records: bytes) -> Tar:
    """A pax extended header whose records are given raw, not followed by anything yet."""
    t = Tar().raw_header(b"././@PaxHeader", b"x", len(records))
    return t.raw(records + b"\0" * (-len(records) % 512))


# ---------------------------------------------------------------------------------------------
# fixtures

BASE_TS = 1_600_000_000


@pytest.fixture(scope="module")
def base_repo(tmpfs_root):
    """A repository with one commit on main, built once and copied per test."""
    d = tempfile.mkdtemp(prefix="safety-base-", dir=tmpfs_root)
    src = os.path.join(d, "src")
    os.makedirs(os.path.join(src, "etc"))
    with open(os.path.join(src, "etc", "hostname"), "w") as f:
        f.write("base\n")
    repo = os.path.join(d, "repo.git")
    api.init(repo)
    yield repo, api.import_rootfs(repo, src, branch="main", message="base", timestamp=BASE_TS).commit
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def prepared(work, base_repo):
    """(repo, base commit, outside dir): a copy of the base repository and an empty directory beside it."""
    repo = os.path.join(work, "repo.git")
    shutil.copytree(base_repo[0], repo, symlinks=True)
    outside = os.path.join(work, "outside")
    os.mkdir(outside)
    return repo, base_repo[1], outside


# ---------------------------------------------------------------------------------------------
# hostile tars: each must fail with one clear line and change nothing at all

LONG = b"deep/" + b"d" * 120


def _cases(outside: bytes) -> dict[str, tuple[bytes, str]]:
    return {
        "dotdot-leading": (Tar().file(b"../evil").bytes(), ".."),
        "dotdot-middle": (Tar().dir(b"a/").file(b"a/../../evil").bytes(), ".."),
        "dotdot-dir": (Tar().dir(b"a/../../evil/").bytes(), ".."),
        "dotdot-only": (Tar().dir(b"..").bytes(), ".."),
        "dotdot-abs": (Tar().file(b"/../../evil").bytes(), ".."),
        "dotdot-pax-path": (Tar().file(LONG + b"/../../../../evil").bytes(), ".."),
        "dotdot-gnu-longname": (gnu_longname(LONG + b"/../../../evil").file(b"placeholder").bytes(), ".."),
        "dotdot-hardlink-target": (Tar().file(b"a").hardlink(b"b", b"../a").bytes(), ".."),
        "nul-in-pax-path": (pax_only(b"19 path=a\0/../evil\n").file(b"placeholder").bytes(), "nul"),
        "through-symlink-abs": (Tar().symlink(b"lnk", outside).file(b"lnk/pwned").bytes(),
                                "not a directory"),
        "through-symlink-rel": (Tar().symlink(b"lnk", b"../../outside").file(b"lnk/pwned").bytes(),
                                "not a directory"),
        "through-symlink-dot": (Tar().symlink(b"lnk", b".").file(b"lnk/lnk/pwned").bytes(), "not a directory"),
        "through-symlink-mkdir": (Tar().symlink(b"lnk", outside).dir(b"lnk/sub/").bytes(), "not a directory"),
        "through-symlink-deep": (Tar().symlink(b"lnk", outside).file(b"lnk/a/b/c").bytes(), "not a directory"),
        "through-file": (Tar().file(b"f").file(b"f/x").bytes(), "not a directory"),
        "symlink-replaces-nonempty-dir": (
            Tar().dir(b"d/").file(b"d/x").symlink(b"d", outside).file(b"d/y").bytes(), "non-empty"),
        "file-replaces-nonempty-dir": (Tar().file(b"d/x").file(b"d", b"2").bytes(), "non-empty"),
        "hardlink-missing": (Tar().file(b"a").hardlink(b"h", b"nothere").bytes(), "hard link"),
        "hardlink-forward": (Tar().hardlink(b"h", b"a").file(b"a").bytes(), "hard link"),
        "hardlink-through-symlink": (Tar().symlink(b"lnk", outside).hardlink(b"h", b"lnk/x").bytes(),
                                     "hard link"),
        "hardlink-to-directory": (Tar().dir(b"d/").hardlink(b"h", b"d").bytes(), "directory"),
        "root-is-a-file": (Tar().file(b".").bytes(), "root"),
        "truncated-data": (Tar().file(b"a", b"y" * 3000).bytes()[:512 + 1000], "truncated"),
        "truncated-header": (Tar().file(b"a").file(b"b").bytes()[:1024 + 300], "truncated"),
        # an archive that stops at a header boundary is read, as GNU tar does: tests/test_tar_fidelity.py
        "truncated-after-pax": (Tar().file(LONG + b"/x").bytes()[:1024], "truncated|end-of-archive"),
        "huge-size-claim": (Tar().file(b"big", b"abc", size=1 << 40).bytes(end=False), "truncated"),
        "pax-without-member": (pax_only(b"11 path=ab\n").bytes(), "extended header"),
        "corrupt-checksum": (_flip(Tar().file(b"a").file(b"b").bytes(), 512 + 512 + 3), "checksum"),
        "not-a-tar": (b"hello, I am not a tar archive\n" * 40, "checksum|tar"),
        "empty-file": (b"", "truncated|end-of-archive|empty"),
        "unsupported-type": (Tar().raw_header(b"weird", b"S").bytes(), "unsupported"),
    }


def _flip(data: bytes, pos: int) -> bytes:
    b = bytearray(data)
    b[pos] ^= 0x20
    return bytes(b)


CASE_IDS = list(_cases(b"/x"))
# the cases run through the command line (one error line on stderr, no traceback, nothing on stdout); the
# others call gitree.api and check the typed error
CLI_CASES = {"dotdot-leading", "nul-in-pax-path", "through-symlink-abs", "hardlink-missing", "root-is-a-file",
             "truncated-data", "corrupt-checksum", "not-a-tar", "unsupported-type"}


@pytest.mark.parametrize("case", CASE_IDS)
def test_hostile_tar_rejected(work, prepared, case):
    repo, base, outside = prepared
    data, keyword = _cases(os.fsencode(outside))[case]
    path = os.path.join(work, "hostile.tar")
    with open(path, "wb") as f:
        f.write(data)
    before_refs, before = refs(repo), snapshot(work)
    if case in CLI_CASES:
        r = run_gitree("-C", repo, "import-rootfs", path, "-b", "main", check=False)
        assert_one_error_line(r, keyword)
        assert r.stdout == b""
    else:
        api_refuses(lambda: api.import_rootfs(repo, path, branch="main"), keyword)
    assert refs(repo) == before_refs
    assert git(repo, "rev-parse", "main") == base
    # no new pack, no temporary file left, nothing created or changed anywhere under the work dir
    assert snapshot(work) == before
    assert os.listdir(outside) == []


@pytest.mark.parametrize("case,how", [
    ("through-symlink-abs", "stdin"), ("truncated-data", "stdin"), ("dotdot-leading", "gzip"),
    ("hardlink-missing", "gzip"),
])
def test_hostile_tar_rejected_from_stdin_and_gzip(work, prepared, case, how):
    repo, base, outside = prepared
    data, keyword = _cases(os.fsencode(outside))[case]
    if how == "gzip":  # the file is written before the snapshot
        with open(os.path.join(work, "hostile.tar.gz"), "wb") as f:
            f.write(gzip.compress(data))
    before_refs, before = refs(repo), snapshot(work)
    if how == "stdin":
        r = run_gitree("-C", repo, "import-rootfs", "-", "-b", "main", input=data, check=False)
    else:
        r = run_gitree("-C", repo, "import-rootfs", os.path.join(work, "hostile.tar.gz"), "-b", "main",
                       check=False)
    assert_one_error_line(r, keyword)
    assert refs(repo) == before_refs
    assert snapshot(work) == before
    assert os.listdir(outside) == []


def test_truncated_compressed_archive(work, prepared):
    repo, base, outside = prepared
    body = Tar().file(b"a", os.urandom(200_000)).file(b"b", b"bbb").bytes()
    for name, comp in (("t.tar.gz", ["gzip", "-c"]), ("t.tar.xz", ["xz", "-c"]), ("t.tar.zst", ["zstd", "-q", "-c"])):
        packed = subprocess.run(comp, input=body, capture_output=True, check=True).stdout
        with open(os.path.join(work, name), "wb") as f:
            f.write(packed[: len(packed) // 2])
    before_refs, before = refs(repo), snapshot(work)
    for name in ("t.tar.gz", "t.tar.xz", "t.tar.zst"):
        if name == "t.tar.gz":
            r = run_gitree("-C", repo, "import-rootfs", os.path.join(work, name), "-b", "main", check=False)
            assert_one_error_line(r, "truncated|decompression|end-of-archive")
        else:
            api_refuses(partial(api.import_rootfs, repo, os.path.join(work, name), branch="main"),
                        "truncated|decompression|end-of-archive")
    assert refs(repo) == before_refs
    assert snapshot(work) == before


def test_invalid_branch_does_not_create_anything(work, prepared):
    repo, base, outside = prepared
    path = os.path.join(work, "ok.tar")
    with open(path, "wb") as f:
        f.write(Tar().file(b"a").bytes())
    before_refs, before = refs(repo), snapshot(work)
    r = run_gitree("-C", repo, "import-rootfs", path, "-b", "a..b", check=False)
    assert_one_error_line(r, "branch")
    api_refuses(lambda: api.import_rootfs(repo, path, branch="end.lock"), "branch")
    assert refs(repo) == before_refs
    assert snapshot(work) == before


def _pax_member(records: list[tuple[bytes, bytes]], add) -> bytes:
    """A pax extended header with the given records, then the member written by `add(TarWriter)`."""
    from gitree.tarformat import pax_record
    data = b"".join(pax_record(k, v) for k, v in records)
    t = Tar().raw_header(b"././@PaxHeader", b"x", len(data)).raw(data + b"\0" * (-len(data) % 512))
    add(t.w)
    return t.bytes()


def _reg(w):
    w.add(b"f", stat.S_IFREG, 0o644, 0, 0)


UNREPRESENTABLE = {
    "nul-in-symlink-target": ([(b"linkpath", b"a\0b")], lambda w: w.add(b"l", stat.S_IFLNK, 0o777, 0, 0,
                                                                         linkname=b"x")),
    "empty-symlink-target": ([], lambda w: w.add(b"l", stat.S_IFLNK, 0o777, 0, 0, linkname=b"")),
    "nul-in-xattr-name": ([(b"SCHILY.xattr.user.a\0b", b"v")], _reg),
    "empty-xattr-name": ([(b"SCHILY.xattr.", b"v")], _reg),
    "uid-beyond-32-bits": ([(b"uid", b"%d" % (1 << 32))], _reg),
    "gid-beyond-32-bits": ([(b"gid", b"%d" % (1 << 40))], _reg),
    "device-major-beyond-32-bits": ([(b"SCHILY.devmajor", b"%d" % (1 << 40))],
                                    lambda w: w.add(b"c", stat.S_IFCHR, 0o644, 0, 0, rdev=(1, 1))),
}


@pytest.mark.parametrize("case", list(UNREPRESENTABLE))
def test_metadata_linux_cannot_hold_is_refused(work, prepared, case):
    """A member no Linux filesystem can hold must be refused at import, not stored as a commit that fsck
    calls clean but checkout cannot write (today: 'internal error' at checkout)."""
    repo, base, outside = prepared
    records, add = UNREPRESENTABLE[case]
    path = os.path.join(work, "odd.tar")
    with open(path, "wb") as f:
        f.write(_pax_member(records, add))
    before_refs, before = refs(repo), snapshot(work)
    if case in ("nul-in-symlink-target", "uid-beyond-32-bits"):
        r = run_gitree("-C", repo, "import-rootfs", path, "-b", "main", check=False)
        assert_one_error_line(r)
    else:
        api_refuses(lambda: api.import_rootfs(repo, path, branch="main"))
    assert refs(repo) == before_refs
    assert snapshot(work) == before


def test_deeply_nested_tar(work, prepared):
    """1100 nested directories (a 2.2 KB path, well within Linux limits and MAX_DEPTH): imported and
    checked out, every member back."""
    repo, base, outside = prepared
    deep = b"/".join([b"d"] * 1100) + b"/f"
    path = os.path.join(work, "deep.tar")
    with open(path, "wb") as f:
        f.write(Tar().dir(b"./").file(deep, b"bottom").bytes())
    r = run_gitree("-C", repo, "import-rootfs", path, "-b", "main", check=False)
    err = r.stderr.decode()
    assert r.returncode == 0 and "internal error" not in err and "Traceback" not in err, err
    cid = last_line(r)
    out = os.path.join(work, "out.tar")
    api.checkout_tar(repo, cid, out)
    with open(path, "rb") as f:
        want = tar_summary(f.read())[0]
    got = tar_summary(out)[0]
    # every input member comes back; the missing parents were created (documented: 755, 0:0)
    assert {p: got[p] for p in want} == want
    assert len(got) == 1100 + 2
    api.fsck(repo, [cid], check=True)


def _deep_tar(levels: int, how: str) -> bytes:
    """A tar of one file `levels` path components deep (levels-1 directories `d`), its ~4 KB name in a pax
    `path` record (TarWriter's choice) or a GNU long name; the directories are implied, not members."""
    deep = b"/".join([b"d"] * (levels - 1)) + b"/f"
    if how == "pax":
        return Tar().file(deep, b"bottom").bytes()
    return gnu_longname(deep).raw_header(b"f", b"0", 6).raw(b"bottom" + b"\0" * 506).bytes()


@pytest.mark.parametrize("how", ["pax", "gnu"])
def test_tar_deeper_than_max_depth_is_refused(work, prepared, how):
    """A member MAX_DEPTH + 1 (and 2,100) levels deep: one line naming the limit, nothing imported, no branch;
    exactly MAX_DEPTH levels imports, and fsck accepts the commit (the tree reader's limit is the same)."""
    from gitree.entry import MAX_DEPTH
    repo, base, outside = prepared
    before_refs, before = refs(repo), snapshot(work)
    for levels in (MAX_DEPTH + 1, 2100):
        path = os.path.join(work, "deep.tar")
        with open(path, "wb") as f:
            f.write(_deep_tar(levels, how))
        r = run_gitree("-C", repo, "import-rootfs", path, "-b", "deep", check=False)
        os.unlink(path)
        assert_one_error_line(r, f"deeper than {MAX_DEPTH} levels")
        assert refs(repo) == before_refs and snapshot(work) == before
    path = os.path.join(work, "deep.tar")
    with open(path, "wb") as f:
        f.write(_deep_tar(MAX_DEPTH, how))
    cid = last_line(run_gitree("-C", repo, "import-rootfs", path, "-b", "deep"))
    api.fsck(repo, [cid], check=True)
    assert blob_at(repo, cid, "/".join(["d"] * (MAX_DEPTH - 1)) + "/f") == b"bottom"


@pytest.mark.parametrize("length", [SYMLINK_MAX, SYMLINK_MAX + 1, 1 << 20])
def test_tar_symlink_target_longer_than_linux_allows(work, prepared, length):
    """A symlink whose pax `linkpath` is longer than Linux's 4,095 bytes (SYMLINK_MAX) is refused in one line
    naming the limit, nothing imported; exactly 4,095 bytes imports."""
    repo, base, outside = prepared
    path = os.path.join(work, "link.tar")
    with open(path, "wb") as f:
        f.write(_pax_member([(b"linkpath", b"t" * length)],
                            lambda w: w.add(b"l", stat.S_IFLNK, 0o777, 0, 0, linkname=b"x")))
    before_refs, before = refs(repo), snapshot(work)
    r = run_gitree("-C", repo, "import-rootfs", path, "-b", "link", check=False)
    if length <= SYMLINK_MAX:
        assert r.returncode == 0, r.stderr
        assert blob_at(repo, last_line(r), "l") == b"t" * length
        return
    assert_one_error_line(r, "symlink target", f"longer than {SYMLINK_MAX} bytes")
    assert refs(repo) == before_refs and snapshot(work) == before


# ---------------------------------------------------------------------------------------------
# documented safe handling: accepted, stored inside the tree, nothing written elsewhere


def test_absolute_and_dot_paths_are_stored_relative(work, prepared):
    repo, base, outside = prepared
    top = f"gitree-abs-{uuid.uuid4().hex[:12]}"
    data = (Tar().dir(b"./").file(b"/" + top.encode() + b"/etc/passwd", b"pw")
            .file(b"./a/./b//c", b"c").file(b"//double/slash", b"d").symlink(b"/abs-link", outside.encode())
            .bytes())
    path = os.path.join(work, "abs.tar")
    with open(path, "wb") as f:
        f.write(data)
    before = snapshot(work)
    cid = api.import_rootfs(repo, path, branch="main").commit
    assert not os.path.lexists("/" + top)
    assert os.listdir(outside) == []
    after = snapshot(work)
    # only the repository changed, and only by new objects and the moved branch
    changed = {p for p in set(before) | set(after) if before.get(p) != after.get(p)}
    assert all(p.startswith("repo.git" + os.sep) for p in changed), changed
    assert blob_at(repo, cid, f"{top}/etc/passwd") == b"pw"
    assert blob_at(repo, cid, "a/b/c") == b"c"
    assert blob_at(repo, cid, "double/slash") == b"d"
    link = git_entry(repo, cid, "abs-link")
    assert link.filemode == pygit2.GIT_FILEMODE_LINK
    assert blob_at(repo, cid, "abs-link") == outside.encode()
    assert git(repo, "rev-parse", cid + "^") == base


@pytest.mark.parametrize("case", ["file-file", "empty-dir-then-file", "file-then-dir", "hardlink-leader-replaced",
                                  "symlink-then-file", "dir-meta-twice"])
def test_duplicate_members_later_wins(work, prepared, case):
    repo, base, outside = prepared
    t = Tar()
    if case == "file-file":
        t.file(b"a", b"first").file(b"a", b"second", mode=0o600)
    elif case == "empty-dir-then-file":
        t.dir(b"a/").file(b"a", b"second", mode=0o600)
    elif case == "file-then-dir":
        t.file(b"a", b"first").dir(b"a/", mode=0o700).file(b"a/inner", b"in")
    elif case == "hardlink-leader-replaced":
        t.file(b"a", b"first").hardlink(b"b", b"a").file(b"a", b"second", mode=0o600)
    elif case == "symlink-then-file":
        t.symlink(b"a", outside.encode()).file(b"a", b"second", mode=0o600)
    elif case == "dir-meta-twice":
        t.dir(b"a/", mode=0o755).file(b"a/inner", b"in").dir(b"a/", mode=0o700)
    path = os.path.join(work, "dup.tar")
    with open(path, "wb") as f:
        f.write(t.bytes())
    cid = api.import_rootfs(repo, path, branch="main").commit
    assert os.listdir(outside) == []
    listing = api.ls(repo, cid).lines(long=True)
    if case in ("file-file", "empty-dir-then-file", "symlink-then-file"):
        assert blob_at(repo, cid, "a") == b"second"
        assert listing == ["-rw-------     0     0          6 a"]
    elif case in ("file-then-dir", "dir-meta-twice"):
        assert blob_at(repo, cid, "a/inner") == b"in"
        assert listing == ["drwx------     0     0          0 a"]
    elif case == "hardlink-leader-replaced":
        # b still names the first inode; a is a new, unrelated file
        assert blob_at(repo, cid, "a") == b"second"
        assert blob_at(repo, cid, "b") == b"first"
        assert listing == ["-rw-------     0     0          6 a", "-rw-r--r--     0     0          5 b"]
    assert api.fsck(repo, [cid]).problems == []
    git(repo, "fsck", "--strict")


# ---------------------------------------------------------------------------------------------
# checkout confinement


def _make_linky_tree(src: str, outside: str) -> None:
    os.makedirs(os.path.join(src, "d", "sub"))
    with open(os.path.join(src, "d", "sub", "file"), "wb") as f:
        f.write(b"inside\n")
    os.symlink(outside, os.path.join(src, "evil"))                      # absolute, to an outside directory
    os.symlink("../../../../../../outside", os.path.join(src, "d", "rel"))  # relative, climbing out
    os.symlink(os.path.join(outside, "newfile"), os.path.join(src, "dangling"))
    os.symlink(".", os.path.join(src, "d", "loop"))
    with open(os.path.join(src, "zz-after-links"), "wb") as f:
        f.write(b"written after the links\n")
    os.link(os.path.join(src, "zz-after-links"), os.path.join(src, "d", "hl"))
    os.symlink("evil", os.path.join(src, "d", "sub", "chain"))
    os.link(os.path.join(src, "evil"), os.path.join(src, "hl-to-symlink"), follow_symlinks=False)


def test_checkout_never_follows_symlinks(work, prepared):
    repo, base, outside = prepared
    src = os.path.join(work, "src")
    os.mkdir(src)
    _make_linky_tree(src, outside)
    cid = api.import_rootfs(repo, src, branch="links").commit
    want = dir_summary(src)
    outside_before = snapshot(outside)

    dest = os.path.join(work, "dest-new")
    api.checkout(repo, cid, dest)
    assert dir_summary(dest) == want
    assert snapshot(outside) == outside_before == {}

    empty = os.path.join(work, "dest-empty")
    os.mkdir(empty)
    api.checkout(repo, cid, empty)
    assert dir_summary(empty) == want
    assert os.readlink(os.path.join(empty, "evil")) == outside
    assert snapshot(outside) == {}

    out_tar = os.path.join(work, "out.tar")
    api.checkout_tar(repo, cid, out_tar)
    assert tar_summary(out_tar) == want
    assert snapshot(outside) == {}


@pytest.mark.parametrize("kind", ["nonempty-dir", "symlink-to-empty-dir", "dangling-symlink", "file",
                                  "symlink-to-nonexistent-in-outside"])
def test_checkout_refuses_unsafe_dest(work, prepared, kind):
    repo, base, outside = prepared
    dest = os.path.join(work, "dest")
    if kind == "nonempty-dir":
        os.mkdir(dest)
        with open(os.path.join(dest, "keep"), "w") as f:
            f.write("mine")
    elif kind == "symlink-to-empty-dir":
        os.symlink(outside, dest)
    elif kind == "dangling-symlink":
        os.symlink(os.path.join(work, "nowhere"), dest)
    elif kind == "file":
        with open(dest, "w") as f:
            f.write("mine")
    elif kind == "symlink-to-nonexistent-in-outside":
        os.symlink(os.path.join(outside, "new"), dest)
    before = snapshot(work)
    if kind in ("nonempty-dir", "symlink-to-empty-dir"):
        r = run_gitree("-C", repo, "checkout", "main", dest, check=False)
        assert_one_error_line(r)
    else:
        api_refuses(lambda: api.checkout(repo, "main", dest))
    assert snapshot(work) == before
    assert os.listdir(outside) == []


def _write_tree(g: pygit2.Repository, entries: list[tuple[bytes, bytes, bytes]]) -> bytes:
    from gitree.gittree import encode_tree
    return g.odb.write(pygit2.enums.ObjectType.TREE, encode_tree(entries)).raw


def _craft(repo: str, base_rev: str, root_rows: bytes, root_content: list, root_meta: list,
           branch: str) -> str:
    """A commit whose root directory has the given table rows, content tree entries and meta entries."""
    from gitree.gittree import MODE_DIR, MODE_FILE
    g = pygit2.Repository(repo)
    base = g.revparse_single(base_rev).peel(pygit2.Commit)
    table = b"gitree-dirtable 1\n. d 755 0 0\n" + root_rows
    table_oid = g.create_blob(table).raw
    content = _write_tree(g, root_content)
    meta = _write_tree(g, root_meta + [(MODE_FILE, b".gitree", table_oid)])
    fmt = g.create_blob(b"gitree 1\n").raw
    top = _write_tree(g, [(MODE_FILE, b"format", fmt), (MODE_DIR, b"meta", meta), (MODE_DIR, b"rootfs", content)])
    sig = pygit2.Signature("t", "t@localhost", BASE_TS, 0)
    cid = g.create_commit("refs/heads/" + branch, sig, sig, "crafted\n", pygit2.Oid(raw=top), [base.id])
    return str(cid)


def test_checkout_of_crafted_commit_symlink_posing_as_directory(work, prepared):
    """A crafted commit whose table says `evil` is a directory while the tree holds a symlink to outside."""
    from gitree.gittree import MODE_DIR, MODE_FILE, MODE_LINK
    repo, base, outside = prepared
    g = pygit2.Repository(repo)
    link = g.create_blob(outside.encode()).raw
    inner_file = g.create_blob(b"pwned\n").raw
    sub_content = _write_tree(g, [(MODE_FILE, b"pwned", inner_file)])
    sub_table = g.create_blob(b"gitree-dirtable 1\n. d 755 0 0\npwned f 644 0 0\n").raw
    sub_meta = _write_tree(g, [(MODE_FILE, b".gitree", sub_table)])
    cid = _craft(repo, base, b"evil d 755 0 0\n", [(MODE_LINK, b"evil", link)],
                 [(MODE_DIR, b"evil", sub_meta)], "crafted-link")
    cid2 = _craft(repo, base, b"evil l 777 0 0\n", [(MODE_DIR, b"evil", sub_content)],
                  [(MODE_DIR, b"evil", sub_meta)], "crafted-dir")
    before = snapshot(outside)
    for rev in (cid, cid2):
        dest = os.path.join(work, "dest-" + rev[:8])
        if rev == cid:
            r = run_gitree("-C", repo, "checkout", rev, dest, check=False)
            assert_one_error_line(r, "evil")
        else:
            api_refuses(partial(api.checkout, repo, rev, dest), "evil")
        assert snapshot(outside) == before == {}
        if rev == cid2:
            r = run_gitree("-C", repo, "checkout", rev, "--tar", os.path.join(work, rev + ".tar"), check=False)
            assert_one_error_line(r, "evil")
        else:
            api_refuses(partial(api.checkout_tar, repo, rev, os.path.join(work, rev + ".tar")), "evil")
        assert not os.path.exists(os.path.join(work, rev + ".tar"))
        res = api.fsck(repo, [rev])
        assert not res.ok
        assert "/evil" in "\n".join(p.line() for p in res.problems)
        with pytest.raises(api.FsckFailed):
            api.fsck(repo, [rev], check=True)
    assert snapshot(outside) == {}


def test_checkout_of_crafted_commit_escaping_names_and_links(work, prepared):
    """Table rows naming '..', or hard links to paths outside the tree, are refused, never followed."""
    from gitree.gittree import MODE_FILE
    repo, base, outside = prepared
    g = pygit2.Repository(repo)
    blob = g.create_blob(b"x").raw
    revs = [
        _craft(repo, base, b".. f 644 0 0\n", [], [], "crafted-dotdot"),
        _craft(repo, base, b"a f 644 0 0\nh f 644 0 0 h=../../outside/a\n",
               [(MODE_FILE, b"a", blob), (MODE_FILE, b"h", blob)], [], "crafted-hardlink"),
        _craft(repo, base, b"a f 644 0 0\nh f 644 0 0 h=" + os.fsencode(outside)[1:] + b"/x\n",
               [(MODE_FILE, b"a", blob), (MODE_FILE, b"h", blob)], [], "crafted-hardlink-abs"),
    ]
    parent = os.path.dirname(work)
    parent_before = sorted(os.listdir(parent))
    before = snapshot(work)
    for rev in revs:
        dest = os.path.join(work, "dest-" + rev[:8])
        if rev == revs[0]:
            r = run_gitree("-C", repo, "checkout", rev, dest, check=False)
            assert_one_error_line(r)
        else:
            api_refuses(partial(api.checkout, repo, rev, dest))
        assert api.fsck(repo, [rev]).problems
    after = snapshot(work)
    changed = {p for p in set(before) | set(after) if before.get(p) != after.get(p)}
    # at most the (partial) destination directories themselves appeared; nothing else anywhere
    assert all(p.startswith("dest-") for p in changed), changed
    assert os.listdir(outside) == []
    assert sorted(os.listdir(parent)) == parent_before


# ---------------------------------------------------------------------------------------------
# killed imports


def _big_tar(nfiles: int = 48, size: int = 256 << 10) -> bytes:
    t = Tar().dir(b"./")
    for i in range(nfiles):
        t.file(b"data/f%03d" % i, os.urandom(size))
    return t.bytes()


def _popen_import(repo: str, source: str, branch: str = "main", stdin=subprocess.DEVNULL, stderr_path=None):
    env = dict(os.environ)
    env.pop("GITREE_REPO", None)
    err = open(stderr_path, "wb") if stderr_path else subprocess.PIPE
    try:
        return subprocess.Popen(GITREE + ["-q", "-C", repo, "import-rootfs", source, "-b", branch],
                                stdin=stdin, stdout=subprocess.PIPE, stderr=err, env=env)
    finally:
        if stderr_path:
            err.close()


def _after_kill_checks(work: str, repo: str, base: str, before_refs: dict, before_packs: set, tar: bytes) -> None:
    assert refs(repo) == before_refs
    assert installed_packs(repo) == before_packs
    assert git(repo, "rev-parse", "main") == base
    r = subprocess.run(["git", "--git-dir", repo, "fsck", "--strict"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "error" not in r.stderr.lower()
    api.fsck(repo, check=True)
    # a later import works, on top of the unchanged tip
    path = os.path.join(work, "full.tar")
    with open(path, "wb") as f:
        f.write(tar)
    cid = api.import_rootfs(repo, path, branch="main").commit
    assert git(repo, "rev-parse", "main") == cid
    assert git(repo, "rev-parse", cid + "^") == base
    assert len(api.ls(repo, cid, "data").items) == 48
    git(repo, "fsck", "--strict")


def _signal_half_way(repo: str, tar: bytes, sig: int, ready) -> tuple[int, bytes, bytes]:
    """Import the first half of `tar` on stdin, send `sig` once ready() (or a started import) says so, and
    return (exit status, stdout, stderr)."""
    p = _popen_import(repo, "-", stdin=subprocess.PIPE)
    try:
        # Writing blocks until gitree has consumed all but a pipe buffer of it: it is half-way for sure.
        p.stdin.write(tar[: len(tar) // 2])
        p.stdin.flush()
        _wait_for(lambda: ready() or p.poll() is not None, 30)
        assert p.poll() is None, p.stderr.read()
        p.send_signal(sig)
        p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        try:
            p.stdin.close()
        except BrokenPipeError:
            pass
    out, err = p.stdout.read(), p.stderr.read()
    p.stdout.close()
    p.stderr.close()
    return p.returncode, out, err


def test_import_killed_half_way_through_stdin(work, prepared):
    repo, base, outside = prepared
    tar = _big_tar()
    before_refs, before_packs = refs(repo), installed_packs(repo)
    start = time.monotonic()
    rc, out, _ = _signal_half_way(repo, tar, signal.SIGKILL, lambda: time.monotonic() - start > 0.3)
    assert rc == -signal.SIGKILL and out == b""
    _after_kill_checks(work, repo, base, before_refs, before_packs, tar)


def test_import_terminated_half_way_removes_its_temporaries(work, prepared):
    """SIGTERM (systemd, timeout) ends a command as Ctrl-C does: its temporary pack and scratch files are
    removed, exit code 130, one line; a quarantine of bundle apply is removed by the same cleanup."""
    from gitree import packwriter
    repo, base, outside = prepared
    tar = _big_tar()
    before_refs, before_packs = refs(repo), installed_packs(repo)
    pack_dir = os.path.join(repo, "objects", "pack")
    rc, _, err = _signal_half_way(repo, tar, signal.SIGTERM,
                                  lambda: any(n.startswith("tmp_gitree_") for n in os.listdir(pack_dir)))
    assert rc == 130 and err.strip().splitlines() == [b"gitree: terminated"], (rc, err)
    assert not [n for n in os.listdir(pack_dir) if n.startswith("tmp")]
    _after_kill_checks(work, repo, base, before_refs, before_packs, tar)
    q = packwriter.Quarantine(os.path.join(repo, "objects"))
    assert os.path.isdir(q.path)
    packwriter.remove_live_temporaries()
    assert not os.path.exists(q.path)


def _mark_and_sleep(path: str) -> None:
    with open(path, "w"):
        pass
    time.sleep(30)


def test_a_forked_worker_ends_on_sigterm_instead_of_running_the_clis_handler(work):
    """export's workers fork from the CLI, whose SIGTERM handler raises in the main thread: a worker must
    not inherit it (it took the signal for a failed job and went on); it ends, and the parent says so."""
    from gitree import cli, workers
    from gitree.errors import WriteFailed
    marker = os.path.join(work, "started")
    old = signal.signal(signal.SIGTERM, cli._terminated)
    pool = None
    try:
        pool = workers.Workers(1, _mark_and_sleep, lambda: None, ())
        job = pool.submit(marker)
        _wait_for(lambda: os.path.exists(marker), 30)
        os.kill(pool.workers[0].pid, signal.SIGTERM)
        with pytest.raises(WriteFailed, match="killed by signal 15"):
            pool.result(job)
    finally:
        signal.signal(signal.SIGTERM, old)
        if pool is not None:
            pool.kill()


def test_import_killed_while_waiting_to_commit(work, prepared):
    """Killed at the last step (all objects written, waiting for the lock): nothing becomes visible."""
    repo, base, outside = prepared
    tar = _big_tar(48, 16 << 10)
    src = os.path.join(work, "in.tar")
    with open(src, "wb") as f:
        f.write(tar)
    before_refs, before_packs = refs(repo), installed_packs(repo)
    errpath = os.path.join(work, "stderr.txt")
    fd = os.open(os.path.join(repo, "gitree.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        p = _popen_import(repo, src, stderr_path=errpath)
        _wait_for(lambda: b"waiting" in _read(errpath) or p.poll() is not None, 30)
        assert p.poll() is None, _read(errpath)
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=10)
    finally:
        os.close(fd)
    p.stdout.close()
    assert p.returncode == -signal.SIGKILL
    os.unlink(errpath)
    os.unlink(src)
    _after_kill_checks(work, repo, base, before_refs, before_packs, tar)


# ---------------------------------------------------------------------------------------------
# concurrent writers


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return b""


def _wait_for(cond, timeout: float) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError("timed out")
        time.sleep(0.05)


def _small_tar(work: str, name: str, files: dict[bytes, bytes]) -> str:
    t = Tar().dir(b"./")
    for p, d in files.items():
        t.file(p, d)
    path = os.path.join(work, name)
    with open(path, "wb") as f:
        f.write(t.bytes())
    return path


def _first_parent_chain(repo: str, rev: str) -> list[str]:
    return git(repo, "rev-list", "--first-parent", rev).split()


def test_import_waits_for_the_lock(work, prepared):
    repo, base, outside = prepared
    src = _small_tar(work, "a.tar", {b"a": b"aaa"})
    errpath = os.path.join(work, "stderr.txt")
    fd = os.open(os.path.join(repo, "gitree.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        p = _popen_import(repo, src, stderr_path=errpath)
        _wait_for(lambda: b"waiting" in _read(errpath) or p.poll() is not None, 30)
        time.sleep(0.5)
        assert p.poll() is None, "import did not wait for the lock: " + _read(errpath).decode()
        assert git(repo, "rev-parse", "main") == base
    finally:
        os.close(fd)  # releases the lock
    out, _ = p.communicate(timeout=30)
    assert p.returncode == 0, _read(errpath)
    cid = out.decode().strip().splitlines()[-1]
    assert git(repo, "rev-parse", "main") == cid
    assert git(repo, "rev-parse", cid + "^") == base
    assert "Traceback" not in _read(errpath).decode()


@pytest.mark.parametrize("contended", [False, True], ids=["free", "forced-contention"])
def test_two_writers_on_one_branch_lose_nothing(work, prepared, contended):
    repo, base, outside = prepared
    n = 2 if contended else 3
    tars = [_small_tar(work, f"w{i}.tar", {b"w%d" % i: b"writer %d" % i, b"data/%d" % i: os.urandom(300_000)})
            for i in range(n)]
    errs = [os.path.join(work, f"err{i}.txt") for i in range(n)]
    fd = None
    if contended:
        fd = os.open(os.path.join(repo, "gitree.lock"), os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        procs = [_popen_import(repo, t, stderr_path=e) for t, e in zip(tars, errs, strict=True)]
        if contended:
            _wait_for(lambda: all(b"waiting" in _read(e) or p.poll() is not None
                                  for e, p in zip(errs, procs, strict=True)), 30)
            assert all(p.poll() is None for p in procs)
    finally:
        if fd is not None:
            os.close(fd)
    commits = []
    for p, e in zip(procs, errs, strict=True):
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0, _read(e).decode()
        assert "Traceback" not in _read(e).decode()
        commits.append(out.decode().strip().splitlines()[-1])
    chain = _first_parent_chain(repo, "main")
    # every writer's commit is in the history, stacked one on another, on top of the base
    assert len(chain) == n + 1
    assert set(chain[:n]) == set(commits)
    assert chain[n] == base
    # the tip carries only its own writer's tree (a new commit, not a merge)
    for c in commits:
        i = commits.index(c)
        assert blob_at(repo, c, "w%d" % i) == b"writer %d" % i
    git(repo, "fsck", "--strict")
    api.fsck(repo, check=True)


def test_hardlink_member_typeflag_is_link():
    # sanity check of the tar builder used above: a hard-link member really is typeflag '1'
    data = Tar().file(b"a").hardlink(b"b", b"a").bytes()
    assert data[512 * 2 + 156:512 * 2 + 157] == LNKTYPE
