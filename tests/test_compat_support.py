"""Shared helpers for the compat tests (no tests here).

Makes ``gitree_compat`` importable when the project is not installed, by loading the ``compat/``
folder under its installed name exactly as pyproject.toml maps it.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

try:
    import gitree_compat  # noqa: F401
except ImportError:
    _root = Path(__file__).resolve().parents[1] / "compat"
    _spec = importlib.util.spec_from_file_location(
        "gitree_compat", _root / "__init__.py", submodule_search_locations=[str(_root)])
    _mod = importlib.util.module_from_spec(_spec)
    sys.modules["gitree_compat"] = _mod
    _spec.loader.exec_module(_mod)

import os
import stat
import subprocess

from gitree_compat import DirMeta, FileMeta, OstreeRepo, Variant, canonical_xattrs
from gitree_compat.objects import Commit

OSTREE = "/usr/bin/ostree"


def ostree(*args: str, check: bool = True, env: dict | None = None) -> str:
    """Run the real ostree (the oracle) and return its stdout."""
    p = subprocess.run([OSTREE, *args], check=False, capture_output=True, text=True, env=env)
    if check and p.returncode != 0:
        raise AssertionError(f"ostree {' '.join(args)} failed ({p.returncode}): {p.stderr}")
    return p.stdout


def read_xattrs(path: str | bytes) -> tuple[tuple[bytes, bytes], ...]:
    out = []
    for n in os.listxattr(path, follow_symlinks=False):
        out.append((os.fsencode(n), os.getxattr(path, n, follow_symlinks=False)))
    return canonical_xattrs(out)


def write_file(path: str, data: bytes, mode: int, uid: int = 0, gid: int = 0,
               xattrs: dict[str, bytes] | None = None) -> None:
    with open(path, "wb") as f:
        f.write(data)
    os.chown(path, uid, gid)
    os.chmod(path, mode)
    for k, v in (xattrs or {}).items():
        os.setxattr(path, k, v)


def make_t1(root: str) -> None:
    """Tree T1 of the reference §9.1."""
    os.makedirs(root)
    os.chmod(root, 0o755)
    write_file(f"{root}/empty.txt", b"", 0o644)
    write_file(f"{root}/hello.txt", b"hello world\n", 0o644)
    os.symlink("hello.txt", f"{root}/link")
    write_file(f"{root}/owned.txt", b"owned\n", 0o640, 1000, 1000)
    write_file(f"{root}/xattr.txt", b"xattr file\n", 0o644, xattrs={"user.foo": b"bar", "user.abc": b"v1"})
    os.mkdir(f"{root}/bin", 0o755)
    write_file(f"{root}/bin/run.sh", b"#!/bin/sh\necho hi\n", 0o755)
    os.mkdir(f"{root}/empty", 0o755)


def make_rich_tree(root: str) -> None:
    """T1 plus suid/sticky bits, hardlinks, unusual names, a multi-chunk file, xattrs on dirs/symlinks."""
    make_t1(root)
    write_file(f"{root}/suid", b"suid\n", 0o4755)
    os.mkdir(f"{root}/tmpdir")
    os.chmod(f"{root}/tmpdir", 0o1777)
    os.link(f"{root}/hello.txt", f"{root}/hardlink")
    for name in [".hidden", "10", "9", "B", "Z", "_", "a", "a-b", "a.b", "ab", "sp ace", "é"]:
        write_file(f"{root}/bin/{name}", name.encode() + b"\n", 0o644)
    os.setxattr(f"{root}/bin/a", "user.empty", b"")
    os.mkdir(f"{root}/adir")
    os.setxattr(f"{root}/adir", "user.dirattr", b"dv")
    os.mkdir(f"{root}/Adir")
    os.chown(f"{root}/Adir", 5, 6)
    os.chmod(f"{root}/Adir", 0o2750)
    os.mkdir(f"{root}/sub")
    os.symlink("/abs/target", f"{root}/sub/abslink")
    os.setxattr(f"{root}/sub/abslink", "trusted.foo", b"tv", follow_symlinks=False)
    os.symlink("../a", f"{root}/sub/rel")
    os.chown(f"{root}/sub/rel", 7, 8, follow_symlinks=False)
    big = bytes(range(256)) * 4096 + os.urandom(3 << 20)  # ~4 MiB: several read/compress chunks
    write_file(f"{root}/sub/big.bin", big, 0o600)


def _canonical_mode(mode: int) -> int:
    if stat.S_ISLNK(mode):
        return mode
    return mode & (stat.S_IFMT(mode) | 0o755)


def commit_tree(repo: OstreeRepo, root: str, canonical: bool = False) -> tuple[str, str]:
    """A tiny directory walker: write every object of ``root`` with our writer; return root (tree, meta)."""

    def meta_of(path: str, st: os.stat_result) -> tuple[int, int, int, tuple]:
        if canonical:
            return 0, 0, _canonical_mode(st.st_mode), ()
        return st.st_uid, st.st_gid, st.st_mode, read_xattrs(path)

    def walk(path: str) -> tuple[str, str]:
        files, dirs = [], []
        for e in os.scandir(path):
            st = e.stat(follow_symlinks=False)
            uid, gid, mode, xattrs = meta_of(e.path, st)
            if e.is_dir(follow_symlinks=False):
                dirs.append((e.name, *walk(e.path)))
            elif e.is_symlink():
                meta = FileMeta(uid, gid, mode, os.readlink(os.fsencode(e.path)), xattrs)
                files.append((e.name, repo.write_content(meta)))
            else:
                with open(e.path, "rb") as f:
                    chunks = iter(lambda: f.read(1 << 20), b"")
                    files.append((e.name, repo.write_content(FileMeta(uid, gid, mode, b"", xattrs), chunks)))
        uid, gid, mode, xattrs = meta_of(path, os.lstat(path))
        return repo.write_dirtree(files, dirs), repo.write_dirmeta(DirMeta(uid, gid, mode, xattrs))

    return walk(root)


def commit_as_ostree(repo: OstreeRepo, root: str, branch: str, timestamp: int, subject: str = "",
                     canonical: bool = False) -> str:
    """Write ``root`` and a commit equal to ``ostree commit -b BRANCH --timestamp=@T -s SUBJECT``."""
    tree, meta = commit_tree(repo, root, canonical)
    parent = None
    if branch in repo.list_refs():
        parent = repo.resolve_ref(branch)
    c = Commit(tree, meta, [("ostree.ref-binding", Variant("as", [branch]))], parent, [], subject, "", timestamp)
    csum = repo.write_commit(c)
    repo.set_ref(branch, csum)
    return csum


def tree_listing(root: str, owners: bool = True) -> dict[str, tuple]:
    """path -> (type, mode, uid, gid, xattrs, content-or-target) for comparing trees."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            if stat.S_ISLNK(st.st_mode):
                body = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    body = f.read()
            else:
                body = None
            own = (st.st_uid, st.st_gid, read_xattrs(p)) if owners else ()
            out[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), *own, body)
    return out
