"""OstreeRepo against the real ostree 2022.7: writer checksums, fsck, checkout, summary, HTTP pull, reader."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from test_compat_support import (
    commit_as_ostree,
    make_rich_tree,
    make_t1,
    ostree,
    read_xattrs,
    tree_listing,
)

from gitree_compat import (
    BadOstreeObject,
    BadRepo,
    Commit,
    DirMeta,
    FileMeta,
    MissingObject,
    ObjectType,
    OstreeRepo,
    RefError,
    UnsupportedContent,
    Variant,
    decode_delta_superblock,
    decode_summary,
    encode,
    encode_filez_header,
    sha256_hex,
)
from gitree_compat.objects import DIRTREE_TYPE, bswap64

MODES = ["archive", "bare", "bare-user", "bare-user-only"]
TS = 1577836800


@pytest.fixture(scope="module")
def work():
    """A tmpfs (fast, supports user.* and trusted.* xattrs) for trees and repos."""
    d = tempfile.mkdtemp(prefix="gitree-compat-")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "tmpfs", d], capture_output=True, check=False).returncode == 0
    try:
        yield Path(d)
    finally:
        if mounted:
            subprocess.run(["umount", "-l", d], check=False)
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def tree(work):
    root = work / "tree"
    make_rich_tree(str(root))
    return root


@pytest.fixture(scope="module")
def repos(work, tree):
    """For every mode: (our repo, our commit, real repo, real commit) of the rich tree."""
    out = {}
    for mode in MODES:
        real = work / f"real-{mode}"
        ostree("init", f"--repo={real}", f"--mode={mode}")
        extra = ["--add-metadata-string=version=1.0"]
        real_c = ostree("commit", f"--repo={real}", "-b", "os/x", f"--timestamp=@{TS}", "-s", "subj",
                        *extra, f"--tree=dir={tree}").strip()
        ours = OstreeRepo.create(work / f"ours-{mode}", mode)
        c = _commit_with_version(ours, tree, canonical=(mode == "bare-user-only"))
        out[mode] = (ours, c, real, real_c)
    return out


def _commit_with_version(repo: OstreeRepo, tree: Path, canonical: bool) -> str:
    from test_compat_support import commit_tree

    root_tree, root_meta = commit_tree(repo, str(tree), canonical)
    c = Commit(root_tree, root_meta, [("version", Variant("s", "1.0")),
                                      ("ostree.ref-binding", Variant("as", ["os/x"]))],
               None, [], "subj", "", TS)
    csum = repo.write_commit(c)
    repo.set_ref("os/x", csum)
    return csum


# ---------------------------------------------------------------------------------------------
# create / open

@pytest.mark.parametrize("mode", MODES)
def test_create_matches_ostree_init(work, mode):
    ours = OstreeRepo.create(work / f"init-ours-{mode}", mode)
    real = work / f"init-real-{mode}"
    ostree("init", f"--repo={real}", f"--mode={mode}")
    assert (ours.path / "config").read_bytes() == (real / "config").read_bytes()
    listing = sorted(str(p.relative_to(real)) for p in real.rglob("*"))
    assert sorted(str(p.relative_to(ours.path)) for p in ours.path.rglob("*")) == listing
    assert OstreeRepo(real).mode == mode
    # Real ostree opens ours.
    ostree("refs", f"--repo={ours.path}")


def test_open_errors(work):
    with pytest.raises(BadRepo, match="no config"):
        OstreeRepo(work)
    d = work / "weird"
    d.mkdir()
    (d / "objects").mkdir()
    (d / "config").write_text("[core]\nrepo_version=1\nmode=bare-split-xattrs\n")
    with pytest.raises(BadRepo, match="bare-split-xattrs"):
        OstreeRepo(d)
    (d / "config").write_text("garbage")
    with pytest.raises(BadRepo):
        OstreeRepo(d)
    with pytest.raises(BadRepo):
        OstreeRepo.create(work / "x", "bogus")


# ---------------------------------------------------------------------------------------------
# writer == real ostree

@pytest.mark.parametrize("mode", MODES)
def test_writer_checksums_equal_real_ostree(repos, mode):
    ours, c, real, real_c = repos[mode]
    assert c == real_c
    assert ours.resolve_ref("os/x") == c
    assert ostree("rev-parse", f"--repo={ours.path}", "os/x").strip() == c


@pytest.mark.parametrize("mode", MODES)
def test_writer_objects_on_disk_equal_real(repos, mode):
    """Same object files, same types/permissions/owners/sizes/xattrs; archive files byte-identical."""
    ours, _c, real, _ = repos[mode]

    def listing(root: Path):
        out = {}
        for p in sorted((root / "objects").rglob("*")):
            st = os.lstat(p)
            xattrs = read_xattrs(str(p))
            out[str(p.relative_to(root))] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid,
                                             st.st_gid, st.st_size, xattrs)
        return out

    assert listing(ours.path) == listing(real)
    if mode == "archive":
        for p in (real / "objects").rglob("*.filez"):
            assert (ours.path / p.relative_to(real)).read_bytes() == p.read_bytes(), p.name


@pytest.mark.parametrize("mode", MODES)
def test_fsck_clean(repos, mode):
    ours = repos[mode][0]
    out = ostree("fsck", f"--repo={ours.path}")
    assert "no errors found" in out


@pytest.mark.parametrize("mode", MODES)
def test_checkout_equals_source(repos, tree, work, mode):
    ours, c, real, _ = repos[mode]
    user = ["-U"] if mode in ("bare-user-only",) else []
    ours_out = work / f"co-ours-{mode}"
    real_out = work / f"co-real-{mode}"
    ostree("checkout", f"--repo={ours.path}", *user, c, str(ours_out))
    ostree("checkout", f"--repo={real}", *user, c, str(real_out))
    assert tree_listing(str(ours_out)) == tree_listing(str(real_out))
    if mode != "bare-user-only":
        assert tree_listing(str(ours_out)) == tree_listing(str(tree))
    else:
        src = tree_listing(str(tree), owners=False)
        got = tree_listing(str(ours_out), owners=False)
        assert got.keys() == src.keys()
        for k, (fmt, perms, body) in src.items():
            assert got[k][0] == fmt and got[k][2] == body, k
            if fmt != stat.S_IFLNK:
                assert got[k][1] == perms & 0o755, k
    shutil.rmtree(ours_out)
    shutil.rmtree(real_out)


def test_writer_t1_vectors(work):
    src = work / "t1"
    make_t1(str(src))
    repo = OstreeRepo.create(work / "t1-repo", "archive")
    c = commit_as_ostree(repo, str(src), "test/dir", TS, "dir commit")
    commit = repo.read_commit(c)
    assert commit.root_tree == "03c6b577919b4c43cbed8953705c83f77c1544d6f764485e8c1d91356dd100e3"
    # body differs from e953 (no body here): recompute e953 itself.
    commit.body = "the body"
    assert repo.write_commit(commit) == "e953e1a1dc1dc84e69bad2ea6725bcdd25047d8401fe9f95477fb2dba574f66d"
    # A second commit on the branch gets the first as parent, like `ostree commit -b`.
    c2 = commit_as_ostree(repo, str(src), "test/dir", TS + 1)
    assert repo.read_commit(c2).parent == c


@pytest.mark.parametrize("fsync", [False, True])
def test_write_content_options(work, fsync):
    repo = OstreeRepo.create(work / f"wc-{fsync}", "archive", fsync=fsync)
    meta = FileMeta(0, 0, 0o100644)
    csum = repo.write_content(meta, [b"hello ", b"world\n"])
    assert csum == "81381808c56d4f3d643ec12f6a18fcf2993af8daba7c2a1b2cbfc315b39424c6"

    def never():
        raise AssertionError("chunks consumed although the object exists")
        yield b""

    assert repo.write_content(meta, never(), expected=csum) == csum
    with pytest.raises(BadOstreeObject, match="hashes to"):
        repo.write_content(meta, [b"other"], expected="ab" * 32)
    assert [p.name for p in (repo.path / "tmp").iterdir()] == ["cache"], "staging file left behind"
    # Many threads writing the same and different objects.
    errors = []

    def worker(i):
        try:
            for j in range(20):
                repo.write_content(meta, [f"{j % 5}".encode() * (i + 1)])
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for csum, t in repo.list_objects(ObjectType.FILE):
        repo.verify_object(csum, t)


def test_mode_restrictions(work):
    buo = OstreeRepo.create(work / "buo", "bare-user-only")
    with pytest.raises(UnsupportedContent):
        buo.write_content(FileMeta(0, 0, 0o104755), [b"x"])
    with pytest.raises(UnsupportedContent):
        buo.write_content(FileMeta(1000, 0, 0o100644), [b"x"])
    with pytest.raises(UnsupportedContent):
        buo.write_content(FileMeta(0, 0, 0o100644, b"", [(b"user.a", b"1")]), [b"x"])
    bare = OstreeRepo.create(work / "bare-unsorted", "bare")
    with pytest.raises(UnsupportedContent):
        bare.write_content(FileMeta(0, 0, 0o100644, b"", [(b"user.b", b"1"), (b"user.a", b"2")]), [b"x"])


# ---------------------------------------------------------------------------------------------
# refs, commitmeta, summary, pull

def test_refs(work):
    repo = OstreeRepo.create(work / "refs", "archive")
    c1, c2 = "11" * 32, "22" * 32
    repo.set_ref("a/b/c", c1)
    repo.set_ref("z", c2)
    repo.set_ref("origin:remote/ref", c2)
    assert (repo.path / "refs/heads/a/b/c").read_text() == c1 + "\n"
    assert repo.list_refs() == {"a/b/c": c1, "z": c2}
    assert repo.list_refs("origin") == {"remote/ref": c2}
    assert repo.resolve_ref("origin:remote/ref") == c2
    for bad in ["", "/a", "a/", "a//b", "-a", "a b", "../x"]:
        with pytest.raises(RefError):
            repo.set_ref(bad, c1)
    with pytest.raises(RefError):
        repo.resolve_ref("missing")
    with pytest.raises(RefError):
        repo.set_ref("x", "nothex")
    (repo.path / "refs/heads/garbage").write_text("nope\n")
    with pytest.raises(RefError, match="garbage"):
        repo.resolve_ref("garbage")
    repo.delete_ref("garbage")
    assert repo.resolve_rev("z") == c2
    with pytest.raises(MissingObject):
        repo.resolve_rev(c1)  # a checksum must name a present commit
    # Real ostree sees the same refs.
    assert sorted(ostree("refs", f"--repo={repo.path}").split()) == ["a/b/c", "origin:remote/ref", "z"]


def test_commitmeta_read_by_ostree(repos):
    ours, c, _, _ = repos["archive"]
    assert ours.read_commitmeta(c) is None
    ours.write_commitmeta(c, [("dk", Variant("s", "dv"))])
    assert ours.read_commitmeta(c) == [("dk", Variant("s", "dv"))]
    out = ostree("show", f"--repo={ours.path}", c, "--print-detached-metadata-key=dk")
    assert out.strip() == "'dv'"


def test_summary_matches_ostree_summary_u(repos, work):
    ours, c, _, _ = repos["archive"]
    # Add a from-scratch static delta made by real ostree so the summary carries ostree.static-deltas.
    ostree("static-delta", "generate", f"--repo={ours.path}", "--empty", f"--to={c}")
    ostree("summary", f"--repo={ours.path}", "-u")
    real_bytes = (ours.path / "summary").read_bytes()
    real = decode_summary(real_bytes)
    last_modified = bswap64(dict(real.metadata)["ostree.summary.last-modified"].value)
    mine = ours.write_summary(last_modified=last_modified)
    assert decode_summary(mine) == real
    assert mine == real_bytes
    view = ostree("summary", f"--repo={ours.path}", "--view")
    assert "os/x" in view and c in view and "Version (ostree.commit.version): 1.0" in view
    # The delta superblock is readable.
    sb_path = next((ours.path / "deltas").rglob("superblock"))
    sb = decode_delta_superblock(sb_path.read_bytes())
    assert sb.to_checksum == c and sb.from_checksum is None
    assert sb.commit == ours.read_commit(c)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def http_server(directory: Path):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                             "--directory", str(directory)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                urllib.request.urlopen(url + "/config", timeout=1).read()
                break
            except OSError:
                time.sleep(0.05)
        yield url
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("client_mode", ["archive", "bare-user"])
def test_http_pull_from_our_archive(repos, work, client_mode):
    ours, c, _, _ = repos["archive"]
    ours.write_summary()
    client = work / f"client-{client_mode}"
    ostree("init", f"--repo={client}", f"--mode={client_mode}")
    with http_server(ours.path) as url:
        ostree("remote", "add", f"--repo={client}", "--no-gpg-verify", "origin", url)
        assert "origin:os/x" in ostree("remote", "refs", f"--repo={client}", "origin")
        ostree("pull", f"--repo={client}", "--disable-static-deltas", "origin", "os/x")
    assert ostree("rev-parse", f"--repo={client}", "origin:os/x").strip() == c
    assert "no errors found" in ostree("fsck", f"--repo={client}")
    # Our reader sees the pulled remote ref and objects.
    pulled = OstreeRepo(client)
    assert pulled.list_refs("origin") == {"os/x": c}
    assert pulled.read_commit(c).get("version") == "1.0"


# ---------------------------------------------------------------------------------------------
# reader on repos written by real ostree

def walk_commit(repo: OstreeRepo, csum: str) -> dict[str, tuple]:
    """path -> (kind, uid, gid, mode, xattrs, content-or-target), read and verified through our reader."""
    commit = repo.read_commit(csum)
    out = {}

    def walk(prefix: str, tree: str, meta: str):
        dm = repo.read_dirmeta(meta)
        out[prefix or "."] = ("d", dm.uid, dm.gid, dm.mode, dm.xattrs, None)
        t = repo.read_dirtree(tree)
        for name, fc in t.files:
            with repo.open_content(fc) as obj:
                body = obj.read()
                m = obj.meta
            out[f"{prefix}{name}"] = ("f", m.uid, m.gid, m.mode, m.xattrs, m.symlink_target or body)
        for name, sub_tree, sub_meta in t.dirs:
            walk(f"{prefix}{name}/", sub_tree, sub_meta)

    walk("", commit.root_tree, commit.root_meta)
    return out


def source_listing(root: Path, canonical: bool) -> dict[str, tuple]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [".", *dirnames, *filenames]:
            p = Path(dirpath) / name if name != "." else Path(dirpath)
            if name == "." and p != root:
                continue
            st = os.lstat(p)
            rel = str(p.relative_to(root))
            key = rel if rel == "." else (rel + "/" if stat.S_ISDIR(st.st_mode) else rel)
            key = key.rstrip("/") if stat.S_ISDIR(st.st_mode) and key != "." else key
            uid, gid, mode, xattrs = st.st_uid, st.st_gid, st.st_mode, read_xattrs(str(p))
            if canonical:
                uid = gid = 0
                xattrs = ()
                if not stat.S_ISLNK(mode):
                    mode &= stat.S_IFMT(mode) | 0o755
            if stat.S_ISDIR(st.st_mode):
                out[key] = ("d", uid, gid, mode, xattrs, None)
            elif stat.S_ISLNK(st.st_mode):
                out[key] = ("f", uid, gid, mode, xattrs, os.readlink(os.fsencode(p)))
            else:
                out[key] = ("f", uid, gid, mode, xattrs, p.read_bytes())
    return out


@pytest.mark.parametrize("mode", MODES)
def test_reader_on_real_repos(repos, tree, mode):
    _, _, real, real_c = repos[mode]
    repo = OstreeRepo(real)
    assert repo.mode == mode
    assert repo.list_refs() == {"os/x": real_c}
    got = walk_commit(repo, real_c)
    want = source_listing(tree, canonical=(mode == "bare-user-only"))
    assert {k.rstrip("/") for k in got} == set(want)
    for k, v in got.items():
        assert v == want[k.rstrip("/")], k
    for csum, t in repo.list_objects():
        repo.verify_object(csum, t)


# ---------------------------------------------------------------------------------------------
# corrupt input

@pytest.fixture
def scratch(repos, work, request):
    """A throwaway copy of the real repo of a mode (parametrized indirectly)."""
    mode = request.param
    src = repos[mode][2]
    dst = work / f"scratch-{mode}-{os.getpid()}-{time.monotonic_ns()}"
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
    yield OstreeRepo(dst), repos[mode][3]
    shutil.rmtree(dst)


def _flip(path: Path, offset: int = -3) -> None:
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("scratch", MODES, indirect=True)
def test_flipped_byte_in_content(scratch):
    repo, c = scratch
    root = repo.read_dirtree(repo.read_commit(c).root_tree)
    big = repo.read_dirtree(dict((n, t) for n, t, _ in root.dirs)["sub"])
    csum = dict(big.files)["big.bin"]
    path = repo.object_path(csum, ObjectType.FILE)
    _flip(path, len(path.read_bytes()) // 2)
    with pytest.raises(BadOstreeObject) as ei, repo.open_content(csum) as obj:
        for _ in obj.chunks():
            pass
    assert csum in str(ei.value) and ei.value.checksum == csum


@pytest.mark.parametrize("scratch", ["archive", "bare"], indirect=True)
def test_flipped_byte_in_metadata(scratch):
    repo, c = scratch
    tree = repo.read_commit(c).root_tree
    _flip(repo.object_path(tree, ObjectType.DIR_TREE))
    with pytest.raises(BadOstreeObject, match=tree):
        repo.read_dirtree(tree)
    _flip(repo.object_path(c, ObjectType.COMMIT))
    with pytest.raises(BadOstreeObject, match=c):
        repo.read_commit(c)


@pytest.mark.parametrize("name", ["a/b", "..", ".", "a\0b", ""])
def test_bad_dirtree_names_in_repo(work, name):
    repo = OstreeRepo.create(work / f"badnames-{len(os.listdir(work))}", "archive")
    data = encode(DIRTREE_TYPE, ([("a", bytes(32))], [])).replace(b"a\0", name.encode() + b"\0", 1)
    if not name:
        data = encode(DIRTREE_TYPE, ([("", bytes(32))], []))
    csum = sha256_hex(data)
    path = repo.object_path(csum, ObjectType.DIR_TREE)
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)
    with pytest.raises(BadOstreeObject) as ei:
        repo.read_dirtree(csum)
    assert f"{csum}.dirtree" in str(ei.value)
    with pytest.raises(Exception):  # noqa: B017 - writer refuses too, with its own typed error
        repo.write_metadata(ObjectType.DIR_TREE, data)


def test_truncated_and_missing_objects(work):
    repo = OstreeRepo.create(work / "trunc", "bare")
    good = Commit("00" * 32, "11" * 32)
    from gitree_compat import encode_commit

    data = encode_commit(good)[:-5]
    csum = sha256_hex(data)
    p = repo.object_path(csum, ObjectType.COMMIT)
    p.parent.mkdir(exist_ok=True)
    p.write_bytes(data)
    with pytest.raises(BadOstreeObject, match=f"{csum}.commit"):
        repo.read_commit(csum)
    missing = "ab" * 32
    for fn in (repo.read_commit, repo.read_dirtree, repo.read_dirmeta, repo.open_content):
        with pytest.raises(MissingObject, match=missing):
            fn(missing)


def test_deflate_bomb_in_repo(work):
    import zlib

    repo = OstreeRepo.create(work / "bomb", "archive")
    z = zlib.compressobj(6, zlib.DEFLATED, -15)
    blob = encode_filez_header(FileMeta(0, 0, 0o100644), 16) + z.compress(bytes(64 << 20)) + z.flush()
    csum = "cd" * 32
    p = repo.object_path(csum, ObjectType.FILE)
    p.parent.mkdir(exist_ok=True)
    p.write_bytes(blob)
    total = 0
    with pytest.raises(BadOstreeObject, match=f"{csum}.file.*larger than its declared size"), \
            repo.open_content(csum) as obj:
        for chunk in obj.chunks():
            total += len(chunk)
    assert total <= 16


def test_bare_user_missing_ostreemeta(repos, work):
    ours = repos["bare-user"][0]
    csum = ours.write_content(FileMeta(0, 0, 0o100644), [b"unique-for-this-test\n"])
    p = ours.object_path(csum, ObjectType.FILE)
    os.removexattr(p, "user.ostreemeta")
    with pytest.raises(BadOstreeObject, match="ostreemeta"):
        ours.open_content(csum)
    os.unlink(p)


def test_write_metadata_validates(work):
    repo = OstreeRepo.create(work / "wm", "bare")
    with pytest.raises(Exception):  # noqa: B017
        repo.write_metadata(ObjectType.DIR_META, b"\x00" * 12)  # mode 0: not a directory
    csum = repo.write_metadata(ObjectType.DIR_META, bytes.fromhex("00000000" "00000000" "000041ed"))
    assert csum == "446a0ef11b7cc167f3b603e585c7eeeeb675faa412d5ec73f62988eb0b6c5488"
    assert repo.read_dirmeta(csum) == DirMeta(0, 0, 0o40755)


def test_non_utf8_symlink_target_matches_ostree_substitution(work):
    """ostree commit stores '[Invalid UTF-8]' for a non-UTF-8 target; our writer refuses such a target."""
    from gitree_compat.objects import OSTREE_INVALID_UTF8_TARGET

    d = work / "badlink"
    d.mkdir()
    os.symlink(b"\xff\xfe/t", os.fsencode(d / "l"))
    real = work / "badlink-real"
    ostree("init", f"--repo={real}", "--mode=archive")
    ostree("commit", f"--repo={real}", "-b", "x", f"--tree=dir={d}")
    repo = OstreeRepo(real)
    (name, csum), = repo.read_dirtree(repo.read_commit(repo.resolve_ref("x")).root_tree).files
    assert repo.read_content(csum)[0].symlink_target == OSTREE_INVALID_UTF8_TARGET
    ours = OstreeRepo.create(work / "badlink-ours", "archive")
    with pytest.raises(UnsupportedContent):
        ours.write_content(FileMeta(0, 0, 0o120777, os.readlink(os.fsencode(d / "l"))))
