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

import gitree_compat as oc
from gitree_compat.gvariant import frame

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="building the source tree with owners needs root")


@pytest.fixture(scope="module")
def base_repo(tmpfs_root):
    """A real archive repository made by `ostree commit`, reused (copied) by every case."""
    d = os.path.join(tmpfs_root, "hostile-ostree")
    src = os.path.join(d, "src")
    os.makedirs(os.path.join(src, "sub"))
    with open(os.path.join(src, "hello.txt"), "w") as f:
        f.write("hello world\n")
    with open(os.path.join(src, "sub", "x"), "w") as f:
        f.write("x\n")
    repo = os.path.join(d, "repo")
    subprocess.run(["ostree", "init", f"--repo={repo}", "--mode=archive"], check=True)
    csum = subprocess.run(["ostree", f"--repo={repo}", "commit", f"--tree=dir={src}", "-b", "os/main",
                           "--timestamp=@0", "-s", "base"], check=True, capture_output=True, text=True).stdout.strip()
    return repo, csum


@pytest.fixture
def case(base_repo, work):
    src, csum = base_repo
    repo = os.path.join(work, "ostree")
    shutil.copytree(src, repo, symlinks=True)
    g = os.path.join(work, "g.git")
    run_gitree("-C", g, "init")
    return repo, csum, g


def _obj(repo: str, csum: str, suffix: str) -> str:
    return os.path.join(repo, "objects", csum[:2], f"{csum[2:]}.{suffix}")


def _commit(repo: str, csum: str) -> oc.Commit:
    with open(_obj(repo, csum, "commit"), "rb") as f:
        return oc.decode_commit(f.read())


def _write_object(repo: str, data: bytes, suffix: str) -> str:
    csum = hashlib.sha256(data).hexdigest()
    path = _obj(repo, csum, suffix)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return csum


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


def _import(g: str, repo: str) -> subprocess.CompletedProcess:
    return run_gitree("-C", g, "import-ostree", repo, "os/main", "--branch", "imported", check=False)


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
    _assert_refused(_import(g, repo), g, tree)


def test_truncated_commit(case):
    repo, csum, g = case
    path = _obj(repo, csum, "commit")
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:40])
    _assert_refused(_import(g, repo), g, csum)


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
    _assert_refused(_import(g, repo), g, fcsum)


def test_deflate_bomb_in_filez(case):
    repo, csum, g = case
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = b"".join(z.compress(b"\0" * (1 << 20)) for _ in range(512)) + z.flush()  # 512 MiB inflated
    fcsum = _replace_hello_payload(repo, csum, bomb)
    _assert_refused(_import(g, repo), g, fcsum)


@pytest.mark.parametrize("name", [b"a/b", b"..", b".", b"a\0b", b"", b"\xff"])
def test_hostile_dirtree_names(case, name):
    repo, csum, g = case
    tree = oc.decode_dirtree(open(_obj(repo, _commit(repo, csum).root_tree, "dirtree"), "rb").read())
    fcsum = dict(tree.files)["hello.txt"]
    bad = _write_object(repo, _raw_dirtree([(name, bytes.fromhex(fcsum))]), "dirtree")
    _point_ref_at_tree(repo, csum, bad)
    _assert_refused(_import(g, repo), g, bad)


def test_missing_content_object(case):
    repo, csum, g = case
    tree = oc.decode_dirtree(open(_obj(repo, _commit(repo, csum).root_tree, "dirtree"), "rb").read())
    fcsum = dict(tree.files)["hello.txt"]
    os.unlink(_obj(repo, fcsum, "filez"))
    _assert_refused(_import(g, repo), g, fcsum)


def test_missing_dirmeta(case):
    repo, csum, g = case
    meta = _commit(repo, csum).root_meta
    os.unlink(_obj(repo, meta, "dirmeta"))
    _assert_refused(_import(g, repo), g, meta)


def test_ref_pointing_nowhere(case):
    repo, csum, g = case
    ghost = "ab" * 32
    with open(os.path.join(repo, "refs", "heads", "os", "main"), "w") as f:
        f.write(ghost + "\n")
    _assert_refused(_import(g, repo), g, ghost)


def test_ref_with_garbage(case):
    repo, csum, g = case
    with open(os.path.join(repo, "refs", "heads", "os", "main"), "w") as f:
        f.write("not a checksum\n")
    _assert_refused(_import(g, repo), g, "os/main")


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
    _assert_refused(_import(g, repo), g, "ee" * 32)
