"""import-ostree on corrupt or hostile OSTree repositories: one clear line naming the object, no ref moved."""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
import zlib

import pytest
from helpers import run_gitree
from ostreeforge import filez_checksum, obj_path, ostree_commit, replace_object, write_object

import gitree_compat as oc
from gitree import api
from gitree_compat.gvariant import frame
from gitree.ostree.importing import MAX_OSTREE_DEPTH

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="building the source tree with owners needs root")


@pytest.fixture(scope="module")
def base_repo(tmpfs_root):
    """A real archive repository made by `ostree commit`, reused (copied) by every case."""
    d = os.path.join(tmpfs_root, "hostile-ostree")
    src = os.path.join(d, "src")
    _base_files(src)
    repo = os.path.join(d, "repo")
    return repo, ostree_commit(src, repo, "base")


def _base_files(src: str) -> None:
    os.makedirs(os.path.join(src, "sub"))
    with open(os.path.join(src, "hello.txt"), "w") as f:
        f.write("hello world\n")
    with open(os.path.join(src, "sub", "x"), "w") as f:
        f.write("x\n")


def _copy(made: tuple[str, str], work: str) -> tuple[str, str, str]:
    """A copy of a made repository to spoil, and an empty gitree repository to import into."""
    src, csum = made
    repo = os.path.join(work, "ostree")
    shutil.copytree(src, repo, symlinks=True)
    g = os.path.join(work, "g.git")
    api.init(g)
    return repo, csum, g


@pytest.fixture
def case(base_repo, work):
    return _copy(base_repo, work)


_obj = obj_path


def _commit(repo: str, csum: str) -> oc.Commit:
    with open(_obj(repo, csum, "commit"), "rb") as f:
        return oc.decode_commit(f.read())


_write_object = write_object


def _raw_dirtree(files: list[tuple[bytes, bytes]]) -> bytes:
    """A dirtree whose file names are arbitrary bytes (bypassing every check), framed like GVariant."""
    arr = bytearray()
    ends = []
    for name, csum in files:
        arr += frame(name + b"\0" + csum, [len(name) + 1])
        ends.append(len(arr))
    files_bytes = frame(bytes(arr), ends)
    return frame(files_bytes + b"", [len(files_bytes)])


def _point_ref_at_tree(repo: str, base: str, tree: str) -> str:
    c = _commit(repo, base)
    new = oc.Commit(root_tree=tree, root_meta=c.root_meta, subject="hostile", timestamp=1)
    csum = _write_object(repo, oc.encode_commit(new), "commit")
    with open(os.path.join(repo, "refs", "heads", "os", "main"), "w") as f:
        f.write(csum + "\n")
    return csum


def _import(g: str, repo: str, timeout: float | None = None) -> subprocess.CompletedProcess:
    return run_gitree("-C", g, "import-ostree", repo, "os/main", "--branch", "imported", check=False,
                      timeout=timeout)


def _assert_refused(r, g: str, *needles: str) -> None:
    assert r.returncode != 0
    err = r.stderr.decode()
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("gitree: error:") and "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    refs = subprocess.run(["git", "--git-dir", g, "for-each-ref"], capture_output=True, text=True).stdout
    assert refs == ""


def test_good_repo_imports(case):
    repo, csum, g = case
    r = _import(g, repo)
    assert r.returncode == 0, r.stderr


def test_truncated_dirtree(case):
    repo, csum, g = case
    tree = _commit(repo, csum).root_tree
    path = _obj(repo, tree, "dirtree")
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:-3])
    _refused(g, repo, tree)


def test_truncated_commit(case):
    repo, csum, g = case
    path = _obj(repo, csum, "commit")
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:40])
    _refused(g, repo, csum)


def _replace_hello_payload(repo: str, csum: str, payload: bytes) -> str:
    """Keep hello.txt's .filez header, put `payload` (raw deflate) after it; return the object's checksum."""
    tree = oc.decode_dirtree(open(_obj(repo, _commit(repo, csum).root_tree, "dirtree"), "rb").read())
    fcsum = dict(tree.files)["hello.txt"]
    path = _obj(repo, fcsum, "filez")
    with open(path, "rb") as f:
        data = f.read()
    hdr_len = struct.unpack(">I", data[:4])[0] + 8
    with open(path, "wb") as f:
        f.write(data[:hdr_len] + payload)
    return fcsum


def test_wrong_checksum_of_a_content_object(case):
    repo, csum, g = case
    # another valid deflate stream of the same length: the content differs from what the name says
    z = zlib.compressobj(6, zlib.DEFLATED, -15)
    fcsum = _replace_hello_payload(repo, csum, z.compress(b"HELLO WORLD\n") + z.flush())
    _refused(g, repo, fcsum)


def test_deflate_bomb_in_filez(case):
    repo, csum, g = case
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = b"".join(z.compress(b"\0" * (1 << 20)) for _ in range(512)) + z.flush()  # 512 MiB inflated
    fcsum = _replace_hello_payload(repo, csum, bomb)
    _refused(g, repo, fcsum)
    # the inflation stops at the declared size: under the memory limit, one line (a reader that inflated
    # the payload whole would need 512 MiB)
    _assert_refused(_import_limited(g, repo), g, fcsum)


@pytest.mark.parametrize("name", [b"a/b", b"..", b".", b"a\0b", b"", b"\xff"])
def test_hostile_dirtree_names(case, name):
    repo, csum, g = case
    tree = oc.decode_dirtree(open(_obj(repo, _commit(repo, csum).root_tree, "dirtree"), "rb").read())
    fcsum = dict(tree.files)["hello.txt"]
    bad = _write_object(repo, _raw_dirtree([(name, bytes.fromhex(fcsum))]), "dirtree")
    _point_ref_at_tree(repo, csum, bad)
    _refused(g, repo, bad)


def test_missing_content_object(case):
    repo, csum, g = case
    tree = oc.decode_dirtree(open(_obj(repo, _commit(repo, csum).root_tree, "dirtree"), "rb").read())
    fcsum = dict(tree.files)["hello.txt"]
    os.unlink(_obj(repo, fcsum, "filez"))
    _refused(g, repo, fcsum)


def test_missing_dirmeta(case):
    repo, csum, g = case
    meta = _commit(repo, csum).root_meta
    os.unlink(_obj(repo, meta, "dirmeta"))
    _refused(g, repo, meta)


def test_ref_pointing_nowhere(case):
    repo, csum, g = case
    ghost = "ab" * 32
    with open(os.path.join(repo, "refs", "heads", "os", "main"), "w") as f:
        f.write(ghost + "\n")
    _refused(g, repo, ghost)


def test_ref_with_garbage(case):
    repo, csum, g = case
    with open(os.path.join(repo, "refs", "heads", "os", "main"), "w") as f:
        f.write("not a checksum\n")
    _refused(g, repo, "os/main")


def test_not_an_ostree_repo(case, work):
    repo, csum, g = case
    _assert_refused(run_gitree("-C", g, "import-ostree", work, "os/main", "--branch", "x", check=False), g)


def test_failure_in_a_later_commit_moves_no_ref(case):
    """A chain whose newest commit is corrupt: the good older commits are not left on any branch."""
    repo, csum, g = case
    c = _commit(repo, csum)
    child = oc.Commit(root_tree="ee" * 32, root_meta=c.root_meta, parent=csum, subject="child", timestamp=5)
    new = _write_object(repo, oc.encode_commit(child), "commit")
    with open(os.path.join(repo, "refs", "heads", "os", "main"), "w") as f:
        f.write(new + "\n")
    _refused(g, repo, "ee" * 32)


# ---------------------------------------------------------------------------------------------
# Issue 9: verify every object, open nothing through a symlink, only regular files, bounded reads,
# no file contents in errors, xattrs within Linux's rules, bounded depth and sharing, bounded memory.

SECRET = "SECRET-ROOT-ONLY-CONTENT"


def _root_tree(repo: str, csum: str) -> oc.DirTree:
    return oc.decode_dirtree(open(_obj(repo, _commit(repo, csum).root_tree, "dirtree"), "rb").read())


@pytest.fixture(scope="module")
def rich_repo(tmpfs_root):
    """A real archive repository with a symlink, a subdirectory and xattrs, made by `ostree commit`."""
    d = os.path.join(tmpfs_root, "hostile-ostree-rich")
    src = os.path.join(d, "src")
    os.makedirs(os.path.join(src, "etc"))
    with open(os.path.join(src, "etc", "motd"), "w") as f:
        f.write("welcome\n")
    os.symlink("../usr/share/zoneinfo/UTC", os.path.join(src, "etc", "localtime"))
    os.setxattr(os.path.join(src, "etc"), "user.note", b"dir")
    os.setxattr(os.path.join(src, "etc", "motd"), "user.note", b"file")
    repo = os.path.join(d, "repo")
    return repo, ostree_commit(src, repo, "rich")


@pytest.fixture
def rich(rich_repo, work):
    return _copy(rich_repo, work)


def _etc(repo: str, csum: str) -> tuple[str, str, oc.DirTree]:
    (name, tree, meta), = _root_tree(repo, csum).dirs
    assert name == "etc"
    return tree, meta, oc.decode_dirtree(open(_obj(repo, tree, "dirtree"), "rb").read())


def _refused(g: str, repo: str, *needles: str) -> str:
    """import-ostree through gitree.api: a typed gitree error (never another exception) naming each needle,
    and no ref in G. Returns the message. (_assert_refused checks the command line's one error line.)"""
    from gitree.cli import one_line
    with pytest.raises(api.GitreeError) as e:
        api.import_ostree(g, repo, "os/main", branch="imported")
    msg = one_line(str(e.value))
    for n in needles:
        assert n in msg, (n, msg)
    refs = subprocess.run(["git", "--git-dir", g, "for-each-ref"], capture_output=True, text=True).stdout
    assert refs == ""
    return msg


def _ostree_fsck_fails(repo: str) -> bool:
    return subprocess.run(["ostree", f"--repo={repo}", "fsck"], capture_output=True).returncode != 0


def test_rich_repo_imports_and_exports_back(rich, work):
    repo, csum, g = rich
    api.import_ostree(g, repo, "os/main", branch="imported")
    out = os.path.join(work, "back")
    assert api.export_ostree(g, "imported", out, ref="os/main").checksum == csum


def test_symlink_object_rewritten_to_etc_shadow(rich):
    """Issue point 2: the .filez of a symlink now points at /etc/shadow but keeps its name."""
    repo, csum, g = rich
    link = dict(_etc(repo, csum)[2].files)["localtime"]
    path = _obj(repo, link, "filez")
    meta = oc.FilezReader(open(path, "rb").read).meta
    evil = oc.FileMeta(meta.uid, meta.gid, meta.mode, b"/etc/shadow", meta.xattrs)
    with open(path, "wb") as f:
        f.write(oc.encode_filez_header(evil, 0))
    assert _ostree_fsck_fails(repo)  # the oracle agrees the object is corrupt
    r = _import(g, repo)
    _assert_refused(r, g, link, "symlink")
    assert b"/etc/shadow" not in r.stderr


def test_symlink_object_with_trailing_payload(rich):
    repo, csum, g = rich
    link = dict(_etc(repo, csum)[2].files)["localtime"]
    with open(_obj(repo, link, "filez"), "ab") as f:
        f.write(b"\x03\x00")  # an empty deflate stream after a symlink's header
    _refused(g, repo, link)


def test_dirmeta_rewritten_keeping_its_name(rich):
    repo, csum, g = rich
    meta = _etc(repo, csum)[1]
    with open(_obj(repo, meta, "dirmeta"), "wb") as f:
        f.write(oc.encode_dirmeta(oc.DirMeta(0, 0, 0o40777)))  # world-writable /etc
    assert _ostree_fsck_fails(repo)
    _refused(g, repo, meta)


def test_ref_symlinked_to_a_root_only_file(case, work):
    repo, csum, g = case
    secret = os.path.join(work, "secret")
    with open(secret, "w") as f:
        f.write(SECRET + "\n")
    os.chmod(secret, 0o600)
    ref = os.path.join(repo, "refs", "heads", "os", "main")
    os.unlink(ref)
    os.symlink(secret, ref)
    r = _import(g, repo)
    _assert_refused(r, g, "os/main", "symlink")
    assert SECRET.encode() not in r.stderr


def test_ref_alias_is_followed(case):
    """`ostree refs --alias` makes a ref a symlink to another ref: that one is followed."""
    repo, csum, g = case
    subprocess.run(["ostree", f"--repo={repo}", "refs", "--create=a/b/alias", "--alias", "os/main"], check=True)
    api.import_ostree(g, repo, "a/b/alias", branch="imported")


def test_ref_file_with_secret_text(case):
    """A ref holding text, not a checksum: the text is not echoed."""
    repo, csum, g = case
    with open(os.path.join(repo, "refs", "heads", "os", "main"), "w") as f:
        f.write(SECRET + "\n")
    r = _import(g, repo)
    _assert_refused(r, g, "os/main", "checksum")
    assert SECRET.encode() not in r.stderr


def test_config_symlinked_to_a_secret(case, work):
    repo, csum, g = case
    secret = os.path.join(work, "secret")
    with open(secret, "w") as f:
        f.write(f"[core]\n{SECRET}\n")
    os.unlink(os.path.join(repo, "config"))
    os.symlink(secret, os.path.join(repo, "config"))
    r = _import(g, repo)
    _assert_refused(r, g, "config", "symlink")
    assert SECRET.encode() not in r.stderr


def test_config_with_garbage_is_not_quoted(case):
    repo, csum, g = case
    with open(os.path.join(repo, "config"), "w") as f:
        f.write(f"{SECRET}\n")
    r = _import(g, repo)
    _assert_refused(r, g, "config", "line 1")
    assert SECRET.encode() not in r.stderr


def test_commitmeta_symlinked_to_dev_zero(case):
    repo, csum, g = case
    os.symlink("/dev/zero", _obj(repo, csum, "commitmeta"))
    _assert_refused(_import(g, repo, timeout=60), g, f"{csum}.commitmeta", "symlink")


def test_commitmeta_larger_than_the_limit(case):
    repo, csum, g = case
    with open(_obj(repo, csum, "commitmeta"), "wb") as f:
        f.truncate((10 << 20) + 1)  # sparse: the size alone is refused, nothing is read
    _refused(g, repo, f"{csum}.commitmeta", "MAX_METADATA_SIZE")


def test_dirtree_larger_than_the_limit(case):
    repo, csum, g = case
    tree = _commit(repo, csum).root_tree
    with open(_obj(repo, tree, "dirtree"), "r+b") as f:
        f.truncate(64 << 20)
    _refused(g, repo, f"{tree}.dirtree", "MAX_METADATA_SIZE")


def test_fifo_in_place_of_a_dirtree(case):
    repo, csum, g = case
    tree = _commit(repo, csum).root_tree
    os.unlink(_obj(repo, tree, "dirtree"))
    os.mkfifo(_obj(repo, tree, "dirtree"))
    _assert_refused(_import(g, repo, timeout=60), g, f"{tree}.dirtree", "FIFO")


def test_device_in_place_of_a_content_object(case):
    repo, csum, g = case
    fcsum = dict(_root_tree(repo, csum).files)["hello.txt"]
    os.unlink(_obj(repo, fcsum, "filez"))
    os.mknod(_obj(repo, fcsum, "filez"), 0o20644, os.makedev(1, 5))  # /dev/zero's numbers
    _assert_refused(_import(g, repo, timeout=60), g, f"{fcsum}.file", "character device")


def test_content_object_symlinked_out_of_an_archive_repo(case, work):
    repo, csum, g = case
    fcsum = dict(_root_tree(repo, csum).files)["hello.txt"]
    os.unlink(_obj(repo, fcsum, "filez"))
    os.symlink("/etc/passwd", _obj(repo, fcsum, "filez"))
    _refused(g, repo, f"{fcsum}.file", "symlink")


def test_symlinked_object_directory(case, work):
    """objects/XX a symlink to a directory elsewhere: refused, even though the object there is intact."""
    repo, csum, g = case
    tree = _commit(repo, csum).root_tree
    sub = os.path.join(repo, "objects", tree[:2])
    elsewhere = os.path.join(work, "elsewhere")
    shutil.move(sub, elsewhere)
    os.symlink(elsewhere, sub)
    _refused(g, repo, f"objects/{tree[:2]}", "symlink")


@pytest.mark.parametrize("name,why", [(b"trusted.", "namespace"), (b"foo.bar", "namespace"),
                                      (b"user." + b"n" * 251, "XATTR_NAME_MAX")])
def test_dirmeta_xattr_outside_linux_rules(rich, name, why):
    repo, csum, g = rich
    meta = _etc(repo, csum)[1]
    bad = oc.encode_dirmeta(oc.DirMeta(0, 0, 0o40755, ((name, b"v"),)))
    replace_object(repo, meta, "dirmeta", bad)
    _refused(g, repo, why)


def test_file_header_xattr_value_too_large(rich):
    repo, csum, g = rich
    motd = dict(_etc(repo, csum)[2].files)["motd"]
    meta = oc.FileMeta(0, 0, 0o100644, b"", ((b"user.big", b"x" * 65537),))
    z = oc.FilezCompressor()
    data = oc.encode_filez_header(meta, 8) + z.compress(b"welcome\n") + z.flush()
    replace_object(repo, motd, "filez", data, filez_checksum(data))
    _refused(g, repo, "XATTR_SIZE_MAX")


def test_symlink_target_longer_than_path_max(rich):
    repo, csum, g = rich
    link = dict(_etc(repo, csum)[2].files)["localtime"]
    meta = oc.FilezReader(open(_obj(repo, link, "filez"), "rb").read).meta
    header = bytearray(open(_obj(repo, link, "filez"), "rb").read())
    # build the header by hand: FileMeta itself refuses such a target
    body = struct.pack(">QIIII", 0, meta.uid, meta.gid, meta.mode, 0) + b"a" * 5000 + b"\0"
    data = struct.pack(">II", len(frame(body, [len(body)])), 0) + frame(body, [len(body)])
    assert header != data
    new = hashlib.sha256(b"any name: the header is refused before hashing" + data).hexdigest()
    replace_object(repo, link, "filez", data, new)
    _refused(g, repo, "MAX_SYMLINK_TARGET")


def _chain_of_dirtrees(repo: str, depth: int, fanout: int, meta: str) -> str:
    """A dirtree `depth` levels deep whose every level names the level below `fanout` times."""
    tree = oc.EMPTY_DIRTREE_CHECKSUM
    _write_object(repo, oc.encode_dirtree([]), "dirtree")
    for _ in range(depth):
        tree = _write_object(repo, oc.encode_dirtree([], [(f"d{i}", tree, meta) for i in range(fanout)]),
                             "dirtree")
    return tree


def test_tree_deeper_than_ostree_allows(case):
    repo, csum, g = case
    tree = _chain_of_dirtrees(repo, 300, 1, _commit(repo, csum).root_meta)
    _point_ref_at_tree(repo, csum, tree)
    _refused(g, repo, "MAX_OSTREE_DEPTH")


def test_shared_subtrees_expanding_exponentially(case):
    """40 dirtree objects describing 2^40 directories: refused before anything is walked."""
    repo, csum, g = case
    tree = _chain_of_dirtrees(repo, 40, 2, _commit(repo, csum).root_meta)
    _point_ref_at_tree(repo, csum, tree)
    _assert_refused(_import(g, repo, timeout=120), g, "MAX_SHARING_FACTOR")


def test_commit_with_no_tmp_dir_is_not_written_to(case):
    """Importing reads the source: it creates nothing in it (not even tmp/)."""
    repo, csum, g = case
    shutil.rmtree(os.path.join(repo, "tmp"))
    before = sorted(os.walk(repo))
    api.import_ostree(g, repo, "os/main", branch="imported")
    assert sorted(os.walk(repo)) == before


# ---------------------------------------------------------------------------------------------
# Peak memory on hostile inputs of at most 1 MB: under an address-space limit of 300 MiB the command
# ends with its one refusal line (or succeeds), never with MemoryError.

MEMORY_LIMIT = 300 << 20


def _import_limited(g: str, repo: str) -> subprocess.CompletedProcess:
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    return run_gitree("-C", g, "import-ostree", repo, "os/main", "--branch", "imported", check=False,
                      preexec_fn=limit, timeout=300)


def _input_size(repo: str) -> int:
    return sum(os.lstat(os.path.join(d, f)).st_size for d, _, fs in os.walk(repo) for f in fs)


def test_memory_bounded_on_exponential_sharing(case):
    repo, csum, g = case
    tree = _chain_of_dirtrees(repo, 40, 2, _commit(repo, csum).root_meta)
    _point_ref_at_tree(repo, csum, tree)
    assert _input_size(repo) < 1 << 20
    _assert_refused(_import_limited(g, repo), g, "MAX_SHARING_FACTOR")


def test_memory_bounded_on_a_header_full_of_xattrs(case):
    repo, csum, g = case
    fcsum = dict(_root_tree(repo, csum).files)["hello.txt"]
    xattrs = tuple((b"user.%x" % i, b"") for i in range(60000))  # ~600 KB of names
    meta = oc.FileMeta(0, 0, 0o100644, b"", xattrs)
    z = oc.FilezCompressor()
    data = oc.encode_filez_header(meta, 12) + z.compress(b"hello world\n") + z.flush()
    assert len(data) < 1 << 20
    replace_object(repo, fcsum, "filez", data, filez_checksum(data))
    _assert_refused(_import_limited(g, repo), g, "XATTR_LIST_MAX")


def test_memory_bounded_on_a_wide_dirtree(case):
    """A 1 MB dirtree of 20,000 names sharing one content object imports within the limit."""
    repo, csum, g = case
    fcsum = dict(_root_tree(repo, csum).files)["hello.txt"]
    tree = _write_object(repo, oc.encode_dirtree([(f"{i:06d}", fcsum) for i in range(20000)]),
                         "dirtree")
    _point_ref_at_tree(repo, csum, tree)
    assert _input_size(repo) < 1 << 20
    r = _import_limited(g, repo)
    assert r.returncode == 0, r.stderr


def test_memory_bounded_on_a_commitmeta_of_tiny_entries(case):
    repo, csum, g = case
    md = [(f"k{i}", oc.Variant("y", 0)) for i in range(50000)]
    data = oc.encode_commitmeta(md)
    assert len(data) < 1 << 20
    with open(_obj(repo, csum, "commitmeta"), "wb") as f:
        f.write(data)
    r = _import_limited(g, repo)
    assert r.returncode == 0, r.stderr


def test_symlink_object_of_a_bare_repo_retargeted(rich_repo, work):
    """In a bare repository content symlinks are symlinks: one retargeted at /etc/shadow keeps its name."""
    src = os.path.join(os.path.dirname(rich_repo[0]), "src")
    repo = os.path.join(work, "bare")
    subprocess.run(["ostree", "init", f"--repo={repo}", "--mode=bare"], check=True)
    csum = subprocess.run(["ostree", f"--repo={repo}", "commit", f"--tree=dir={src}", "-b", "os/main"],
                          check=True, capture_output=True, text=True).stdout.strip()
    g = os.path.join(work, "g.git")
    api.init(g)
    link = dict(_etc(repo, csum)[2].files)["localtime"]
    path = _obj(repo, link, "file")
    assert os.path.islink(path)
    os.unlink(path)
    os.symlink("/etc/shadow", path)
    assert _ostree_fsck_fails(repo)
    r = _import(g, repo)
    _assert_refused(r, g, link, "symlink")
    assert b"/etc/shadow" not in r.stderr


def test_memory_bounded_on_a_large_declared_payload(case):
    """A .filez of 256 KB inflating to the 256 MiB its header declares: streamed, never held whole (the
    checksum, checked at the end, then fails)."""
    repo, csum, g = case
    fcsum = dict(_root_tree(repo, csum).files)["hello.txt"]
    z = oc.FilezCompressor(9)
    size = 256 << 20
    body = b"".join(z.compress(bytes(1 << 20)) for _ in range(size >> 20)) + z.flush()
    data = oc.encode_filez_header(oc.FileMeta(0, 0, 0o100644), size) + body
    assert len(data) < 1 << 20
    with open(_obj(repo, fcsum, "filez"), "wb") as f:
        f.write(data)
    _assert_refused(_import_limited(g, repo), g, fcsum)


@pytest.mark.parametrize("depth,fanout", [(MAX_OSTREE_DEPTH, 1), (1, 300), (3, 12)])
def test_trees_within_the_depth_and_sharing_limits_import(case, depth, fanout):
    """256 levels deep is allowed (as in ostree); wide directories and some sharing too."""
    repo, csum, g = case
    tree = _chain_of_dirtrees(repo, depth, fanout, _commit(repo, csum).root_meta)
    _point_ref_at_tree(repo, csum, tree)
    r = _import(g, repo)
    assert r.returncode == 0, r.stderr


def _many_names(repo: str, csum: str, n: int) -> str:
    """Point the commit's root at a dirtree naming each of its two files `n` times (`big` is 16 MiB of
    zeros: its .filez is a few KB, so the dirtree is most of the repository)."""
    root = _root_tree(repo, csum)
    files = dict(root.files)
    names = [(f"b{i:05d}", files["big"]) for i in range(n)] + [(f"s{i:05d}", files["small"]) for i in range(n)]
    tree = _write_object(repo, oc.encode_dirtree(sorted(names), []), "dirtree")
    return _point_ref_at_tree(repo, csum, tree)


def test_a_content_object_named_many_times_is_read_once(work, monkeypatch):
    """A dirtree naming one content object thousands of times (a 256 MiB .filez of zeros named 4,000 times:
    a 456 KB repository that took hours) costs one read and one verification of the object: import counts
    the payload bytes it inflates, and they are those of the distinct objects, not names x size. The commit
    still exports back to the same checksum, and every name holds the right bytes."""
    from gitree import api
    from gitree_compat import repo as ocrepo

    src = os.path.join(work, "src")
    os.makedirs(src)
    with open(os.path.join(src, "big"), "wb") as f:
        f.truncate(16 << 20)
    with open(os.path.join(src, "small"), "wb") as f:
        f.write(b"small\n")
    repo = os.path.join(work, "ostree")
    csum = _many_names(repo, ostree_commit(src, repo, "base"), 2000)
    g = os.path.join(work, "g.git")
    run_gitree("-C", g, "init")

    opened: list[str] = []
    inflated = [0]
    real_open, real_chunks = ocrepo.OstreeRepo.open_content, ocrepo.ContentObject.chunks

    def counting_open(self, checksum):
        opened.append(checksum)
        return real_open(self, checksum)

    def counting_chunks(self):
        for c in real_chunks(self):
            inflated[0] += len(c)
            yield c
    monkeypatch.setattr(ocrepo.OstreeRepo, "open_content", counting_open)
    monkeypatch.setattr(ocrepo.ContentObject, "chunks", counting_chunks)
    api.import_ostree(g, repo, "os/main", branch="imported")
    assert sorted(opened) == sorted(set(opened)) and len(opened) == 2, opened
    assert inflated[0] == (16 << 20) + len(b"small\n")
    monkeypatch.undo()

    out = os.path.join(work, "out")
    r = run_gitree("-C", g, "export-ostree", "imported", "--history", "--ostree-repo", out, "--ref", "os/main")
    assert r.stdout.decode().split()[-1] == csum
    listing = run_gitree("-C", g, "ls", "-l", "imported").stdout.decode().splitlines()
    sizes = sorted({(line.split()[-1][0], line.split()[-2]) for line in listing})
    assert sizes == [("b", str(16 << 20)), ("s", "6")], sizes
    run_gitree("-C", g, "fsck")


def test_a_shared_object_is_read_once_over_a_commit_chain(base_repo, work, monkeypatch):
    """The memory of verified objects spans the whole imported chain: a parent and child commit sharing
    their files read each object once."""
    from gitree import api
    from gitree_compat import repo as ocrepo

    src, first = base_repo
    repo = os.path.join(work, "ostree")
    shutil.copytree(src, repo, symlinks=True)
    tree_src = os.path.join(work, "tree")
    _base_files(tree_src)
    with open(os.path.join(tree_src, "new"), "w") as f:
        f.write("new\n")
    subprocess.run(["ostree", f"--repo={repo}", "commit", f"--tree=dir={tree_src}", "-b", "os/main",
                    "--timestamp=@1", "-s", "second"], check=True, capture_output=True)
    g = os.path.join(work, "g.git")
    run_gitree("-C", g, "init")
    opened: list[str] = []
    real_open = ocrepo.OstreeRepo.open_content

    def counting_open(self, checksum):
        opened.append(checksum)
        return real_open(self, checksum)
    monkeypatch.setattr(ocrepo.OstreeRepo, "open_content", counting_open)
    res = api.import_ostree(g, repo, "os/main", branch="imported")
    assert len(res.commits) == 2
    assert len(opened) == len(set(opened)) == 3, opened


def _listed_dirtrees(monkeypatch) -> list[str]:
    """The dirtrees import-ostree walks from now on, one item each time it lists one."""
    from gitree.ostree import importing
    listed: list[str] = []
    real_items = importing._dir_items

    def counting_items(src, tree):
        listed.append(tree)
        return real_items(src, tree)
    monkeypatch.setattr(importing, "_dir_items", counting_items)
    return listed


def _chain_sharing_one_tree(repo: str, base: str, commits: int, xattrs) -> str:
    """`commits` commits in a parent chain, each naming the same root: 64 directories naming one dirtree
    of 64 names for one content object with `xattrs` (in that order), 4,160 entries from 130 distinct ones."""
    meta = oc.FileMeta(0, 0, 0o100644, b"", tuple(xattrs))
    z = oc.FilezCompressor()
    data = oc.encode_filez_header(meta, 2) + z.compress(b"x\n") + z.flush()
    fcsum = filez_checksum(data)
    os.makedirs(os.path.dirname(_obj(repo, fcsum, "filez")), exist_ok=True)
    with open(_obj(repo, fcsum, "filez"), "wb") as f:
        f.write(data)
    dmeta = _commit(repo, base).root_meta
    leaf = _write_object(repo, oc.encode_dirtree([(f"f{i:02}", fcsum) for i in range(64)]), "dirtree")
    root = _write_object(repo, oc.encode_dirtree([], [(f"d{i:02}", leaf, dmeta) for i in range(64)]), "dirtree")
    parent = None
    for i in range(commits):
        c = oc.Commit(root_tree=root, root_meta=dmeta, parent=parent, subject=f"c{i}", timestamp=1 + i)
        parent = _write_object(repo, oc.encode_commit(c), "commit")
    with open(os.path.join(repo, "refs", "heads", "os", "main"), "w") as f:
        f.write(parent + "\n")
    return parent


def test_a_commit_chain_sharing_its_tree_walks_each_directory_once(case, work, monkeypatch):
    """A directory an earlier commit of the chain wrote (same dirtree and dirmeta) is taken whole: 200
    commits of one 4,160-entry root (37 KB of commits) walk it in the first commit only (it cost the whole
    walk per commit, 42 s of CPU for 40 commits of a 65,536-entry root). Re-export gives every commit back."""
    repo, csum, g = case
    tip = _chain_sharing_one_tree(repo, csum, 200, [(b"user.a", b"A"), (b"user.b", b"B")])
    listed = _listed_dirtrees(monkeypatch)
    res = api.import_ostree(g, repo, "os/main", branch="imported")
    monkeypatch.undo()
    assert len(res.commits) == 200
    assert len(listed) == 1 + 64, len(listed)   # the first commit's root, and its leaf at each of 64 places
    out = os.path.join(work, "out")
    got = api.export_ostree(g, "imported", out, history=True).checksum
    assert got == tip
    log = subprocess.run(["ostree", f"--repo={out}", "log", got], check=True, capture_output=True,
                         text=True).stdout
    assert log.count("commit ") == 200
    assert subprocess.run(["ostree", f"--repo={out}", "fsck"], capture_output=True).returncode == 0
    run_gitree("-C", g, "fsck")


def test_a_tree_of_more_directories_than_the_transaction_remembers_is_still_taken_whole(case, monkeypatch):
    """A transaction remembers KNOWN_DIRS directories, the least recently used out: with more directories
    than that, a commit that took an unchanged subtree whole keys it again, so the next commit takes it
    too. (It used to forget everything at once: every other commit walked the whole tree, and a long
    chain of a large root filesystem was refused at MAX_SHARING_FACTOR.)"""
    from gitree import importer
    repo, csum, g = case
    monkeypatch.setattr(importer, "KNOWN_DIRS", 16)
    empty = _write_object(repo, oc.encode_dirtree([]), "dirtree")
    metas = [_write_object(repo, oc.encode_dirmeta(oc.DirMeta(j, 0, 0o40755, ())), "dirmeta") for j in range(40)]
    a = _write_object(repo, oc.encode_dirtree([], [(f"d{j:02}", empty, m) for j, m in enumerate(metas)]),
                      "dirtree")
    dmeta = _commit(repo, csum).root_meta
    stamp = dict(_root_tree(repo, csum).files)["hello.txt"]
    parent = None
    for i in range(30):   # each commit renames the one file at the top
        root = _write_object(repo, oc.encode_dirtree([(f"stamp{i:02}", stamp)], [("a", a, dmeta)]), "dirtree")
        parent = _write_object(repo, oc.encode_commit(oc.Commit(root_tree=root, root_meta=dmeta, parent=parent,
                                                                subject=f"c{i}", timestamp=1 + i)), "commit")
    with open(os.path.join(repo, "refs", "heads", "os", "main"), "w") as f:
        f.write(parent + "\n")
    listed = _listed_dirtrees(monkeypatch)
    assert len(api.import_ostree(g, repo, "os/main", branch="imported").commits) == 30
    assert listed.count(a) == 1 and len(listed) == 1 + 1 + 40 + 29, (listed.count(a), len(listed))


def test_a_commit_chain_sharing_a_tree_it_cannot_take_whole_is_refused(case):
    """Unsorted xattrs are recorded by path, so a directory holding them is walked in each commit: the
    chain's walks are bounded together, MAX_SHARING_FACTOR times the entries of its directory objects."""
    repo, csum, g = case
    _chain_sharing_one_tree(repo, csum, 200, [(b"user.b", b"B"), (b"user.a", b"A")])
    _assert_refused(_import(g, repo, timeout=300), g, "MAX_SHARING_FACTOR", "commit chain")


# ---------------------------------------------------------------------------------------------
# Issue 9 (review): the branch written, ref aliases and directories of refs, and the small-file limits.

@pytest.mark.parametrize("branch", ["refs/gitree/ostree-cache", "HEAD", "refs/heads/HEAD", "a..b", "-x",
                                    "end.lock", ""])
def test_invalid_branch_is_a_usage_error(case, branch):
    """import-ostree writes only refs/heads/<valid branch>: anything else (gitree's own export cache above
    all) is refused as a usage error (exit 2) before the source is read, and no ref is created."""
    repo, csum, g = case
    r = run_gitree("-C", g, "import-ostree", repo, "os/main", f"--branch={branch}", check=False)
    _assert_refused(r, g, "invalid branch name")
    assert r.returncode == 2


def _alias_chain(repo: str, n: int) -> str:
    """n aliases made by `ostree refs --alias`, each naming the next, the last naming os/main; the first."""
    target = "os/main"
    for i in range(n):
        subprocess.run(["ostree", f"--repo={repo}", "refs", f"--create=alias/a{i}", "--alias", target],
                       check=True)
        target = f"alias/a{i}"
    return target


def test_ref_alias_chains_are_bounded(case):
    """MAX_REF_ALIASES aliases in a row are followed; one more is refused in one line naming the limit."""
    from gitree_compat.repo import MAX_REF_ALIASES
    repo, csum, g = case
    first = _alias_chain(repo, MAX_REF_ALIASES + 1)  # alias/a8 -> a7 -> ... -> a0 -> os/main
    within = f"alias/a{MAX_REF_ALIASES - 1}"         # MAX_REF_ALIASES symlinks to follow
    r = run_gitree("-C", g, "import-ostree", repo, within, "--branch", "imported", check=False)
    assert r.returncode == 0, r.stderr
    subprocess.run(["git", "--git-dir", g, "update-ref", "-d", "refs/heads/imported"], check=True)
    r = run_gitree("-C", g, "import-ostree", repo, first, "--branch", "imported", check=False)
    _assert_refused(r, g, first, f"more than {MAX_REF_ALIASES} aliases", "MAX_REF_ALIASES")


def test_ref_alias_loop_is_refused(case):
    repo, csum, g = case
    os.symlink("b", os.path.join(repo, "refs", "heads", "a"))
    os.symlink("a", os.path.join(repo, "refs", "heads", "b"))
    r = run_gitree("-C", g, "import-ostree", repo, "a", "--branch", "imported", check=False, timeout=60)
    _assert_refused(r, g, "MAX_REF_ALIASES")


@pytest.mark.parametrize("linked", ["refs", "refs/heads", "refs/heads/os"])
def test_symlinked_refs_directory_is_not_followed(case, work, linked):
    """refs/, refs/heads or refs/heads/os a symlink to a directory elsewhere that holds a valid ref to the
    repository's own commit: refused naming the directory, never followed."""
    repo, csum, g = case
    elsewhere = os.path.join(work, "elsewhere")
    shutil.move(os.path.join(repo, linked), elsewhere)
    os.symlink(elsewhere, os.path.join(repo, linked))
    assert open(os.path.join(repo, "refs", "heads", "os", "main")).read().strip() == csum  # valid through it
    r = _import(g, repo)
    _assert_refused(r, g, "os/main", linked, "symlink")


@pytest.mark.parametrize("what", ["config", "ref"])
def test_small_file_larger_than_the_limit(case, what):
    """A config or ref file of 1 GiB (sparse; its first bytes valid): refused from its size in one line
    naming MAX_SMALL_FILE, under the 300 MiB address-space limit (read whole, it could not fit)."""
    repo, csum, g = case
    path = os.path.join(repo, "config") if what == "config" else os.path.join(repo, "refs", "heads", "os", "main")
    with open(path, "r+b") as f:
        f.truncate(1 << 30)
    _assert_refused(_import_limited(g, repo), g, "MAX_SMALL_FILE", "config" if what == "config" else "os/main")


def test_small_file_just_over_the_limit(case):
    """A ref file of MAX_SMALL_FILE + 1 real bytes (a checksum then blanks, which strip() would accept):
    refused; at MAX_SMALL_FILE bytes it is read."""
    from gitree_compat.repo import MAX_SMALL_FILE
    repo, csum, g = case
    ref = os.path.join(repo, "refs", "heads", "os", "main")
    with open(ref, "w") as f:
        f.write(csum + "\n" * (MAX_SMALL_FILE - len(csum)))
    api.import_ostree(g, repo, "os/main", branch="imported")
    subprocess.run(["git", "--git-dir", g, "update-ref", "-d", "refs/heads/imported"], check=True)
    with open(ref, "a") as f:
        f.write("\n")
    _assert_refused(_import(g, repo), g, "os/main", f"{MAX_SMALL_FILE + 1} bytes", "MAX_SMALL_FILE")


def test_dirmeta_larger_than_its_limit(case):
    """A dirmeta of MAX_DIRMETA_SIZE + 1 bytes (below MAX_METADATA_SIZE, which bounds the other metadata
    objects): refused from its size, naming MAX_DIRMETA_SIZE, under the 300 MiB address-space limit."""
    from gitree_compat.repo import MAX_DIRMETA_SIZE, MAX_METADATA_SIZE
    repo, csum, g = case
    meta = _commit(repo, csum).root_meta
    assert MAX_DIRMETA_SIZE + 1 < MAX_METADATA_SIZE
    with open(_obj(repo, meta, "dirmeta"), "r+b") as f:
        f.truncate(MAX_DIRMETA_SIZE + 1)
    _assert_refused(_import_limited(g, repo), g, f"{meta}.dirmeta", "MAX_DIRMETA_SIZE")



def test_ref_symlink_climbing_out_of_the_repository_is_refused(case, work):
    repo, csum, g = case
    outside = os.path.join(os.path.dirname(repo), "outside-ref")
    with open(outside, "w") as f:
        f.write(csum + "\n")
    ref = os.path.join(repo, "refs", "heads", "os", "main")
    os.unlink(ref)
    os.symlink("../../../../outside-ref", ref)
    r = _import(g, repo)
    _assert_refused(r, g, "not an alias")


def test_a_shared_subtree_met_deeper_than_first_is_refused(case):
    """X (250 levels) under b/ at depth 1, and again under a/ below 10 more levels: 261 levels deep."""
    repo, csum, g = case
    meta = _commit(repo, csum).root_meta
    x = _chain_of_dirtrees(repo, 250, 1, meta)
    w = x
    for _ in range(10):
        w = _write_object(repo, oc.encode_dirtree([], [("w", w, meta)]), "dirtree")
    root = _write_object(repo, oc.encode_dirtree([], [("a", w, meta), ("b", x, meta)]), "dirtree")
    _point_ref_at_tree(repo, csum, root)
    _refused(g, repo, "MAX_OSTREE_DEPTH")


def test_an_ostree_commit_timestamp_git_cannot_keep_is_refused(case):
    """An OSTree timestamp is unsigned 64-bit, git's is signed: 2^63 ended import-ostree in `internal error:
    OverflowError` from the commit signature; it is refused in one line (`ostree log` calls it invalid)."""
    repo, csum, g = case
    c = _commit(repo, csum)
    new = oc.Commit(root_tree=c.root_tree, root_meta=c.root_meta, subject="late", timestamp=1 << 63)
    with open(os.path.join(repo, "refs", "heads", "os", "main"), "w") as f:
        f.write(_write_object(repo, oc.encode_commit(new), "commit") + "\n")
    _refused(g, repo, "past 2^63-1 seconds")
