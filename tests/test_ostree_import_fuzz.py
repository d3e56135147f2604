"""Fuzzing import-ostree with mutated objects of a real repository made by `ostree commit`.

Each example spoils one object (commit, dirtree, dirmeta, .filez header or body, symlink object): in place,
keeping its name, or renamed to its new checksum with every dirtree and commit above it rewritten (so the
mutation reaches the decoders instead of stopping at a checksum). import-ostree must then either succeed
with a result whose re-export reproduces the repository's commit checksum, or fail with one stderr line
and a nonzero exit; never a traceback, a hang, a ref created, or a write outside the gitree repository.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
import tempfile

import pytest
from helpers import run_gitree

from gitree import api
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from ostreeforge import all_objects, filez_checksum, obj_path, ostree_commit, replace_object
from test_safety import snapshot

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the source tree has files owned by other users")


@pytest.fixture(scope="module")
def fuzz_base(tmpfs_root):
    """The repository (made once) and an empty gitree repository to copy for every example."""
    d = os.path.join(tmpfs_root, "fuzz-ostree")
    src = os.path.join(d, "src")
    os.makedirs(os.path.join(src, "etc", "ssh"))
    os.makedirs(os.path.join(src, "usr", "bin"))
    files = {"etc/hostname": (b"fuzz\n", 0o644, 0, 0), "etc/shadow": (b"root:*:1::::::\n", 0o640, 0, 42),
             "etc/ssh/sshd_config": (b"PermitRootLogin no\n" * 20, 0o600, 0, 0),
             "usr/bin/tool": (b"\x7fELF" + bytes(range(256)) * 8, 0o4755, 0, 0),
             "home": (b"", 0o644, 1000, 1000)}
    for rel, (data, mode, uid, gid) in files.items():
        p = os.path.join(src, rel)
        with open(p, "wb") as f:
            f.write(data)
        os.chown(p, uid, gid)
        os.chmod(p, mode)
    os.symlink("../usr/bin/tool", os.path.join(src, "etc", "tool-link"))
    os.symlink("/etc/hostname", os.path.join(src, "usr", "bin", "abs-link"))
    os.setxattr(os.path.join(src, "usr", "bin", "tool"), "user.b", b"2")
    os.setxattr(os.path.join(src, "usr", "bin", "tool"), "user.a", b"1")
    os.setxattr(os.path.join(src, "etc", "ssh"), "user.dir", b"ssh")
    repo = os.path.join(d, "repo")
    csum = ostree_commit(src, repo, "fuzz base")
    subprocess.run(["ostree", f"--repo={repo}", "commit", "-b", "os/main", f"--tree=dir={src}", "--timestamp=@1",
                    "-s", "second", "--add-detached-metadata-string=k=v"], check=True, capture_output=True)
    g = os.path.join(d, "g.git")
    api.init(g)
    objects = [(c, sfx) for sfx in ("commit", "commitmeta", "dirtree", "dirmeta", "filez")
               for c in all_objects(repo, sfx)]
    assert any(sfx == "commitmeta" for _, sfx in objects) and csum
    return repo, g, objects


MUTATIONS = ("flip", "truncate", "insert", "overwrite", "header-flip")


def _mutate(data: bytes, how: str, draw) -> bytes:
    n = len(data)
    if how == "truncate":
        return data[:draw(st.integers(0, max(0, n - 1)))]
    if how == "insert":
        at = draw(st.integers(0, n))
        return data[:at] + draw(st.binary(min_size=1, max_size=16)) + data[at:]
    if how == "overwrite":
        at = draw(st.integers(0, max(0, n - 1)))
        span = draw(st.binary(min_size=1, max_size=16))
        return data[:at] + span + data[at + len(span):]
    if how == "header-flip" and n >= 8:  # within a .filez header (the start of any other object)
        end = min(n, 8 + struct.unpack(">I", data[:4])[0])
        at = draw(st.integers(0, max(0, end - 1)))
    else:
        at = draw(st.integers(0, max(0, n - 1)))
    out = bytearray(data)
    if out:
        out[at] ^= draw(st.integers(1, 255))
    return bytes(out)


def _ref(repo: str) -> str:
    with open(os.path.join(repo, "refs", "heads", "os", "main")) as f:
        return f.read().strip()


@settings(max_examples=int(os.environ.get('FUZZN', 50)), deadline=None, derandomize=not os.environ.get('FUZZN'),
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_object_imports_faithfully_or_is_refused(fuzz_base, tmpfs_root, data):
    base_repo, base_g, objects = fuzz_base
    csum, suffix = data.draw(st.sampled_from(objects), label="object")
    how = data.draw(st.sampled_from(MUTATIONS), label="mutation")
    rename = data.draw(st.booleans(), label="renamed to its new checksum")
    w = tempfile.mkdtemp(prefix="fuzz-", dir=tmpfs_root)
    try:
        repo, g = os.path.join(w, "ostree"), os.path.join(w, "g.git")
        shutil.copytree(base_repo, repo, symlinks=True)
        shutil.copytree(base_g, g, symlinks=True)
        path = obj_path(repo, csum, suffix)
        with open(path, "rb") as f:
            old = f.read()
        new = _mutate(old, how, data.draw)
        if rename and suffix != "commitmeta":
            name = (filez_checksum(new) if suffix == "filez" else None) or hashlib.sha256(new).hexdigest()
            replace_object(repo, csum, suffix, new, name)
        else:
            with open(path, "wb") as f:
                f.write(new)
        tip = _ref(repo)
        before, around = snapshot(repo), sorted(os.listdir(w))
        r = run_gitree("-C", g, "import-ostree", repo, "os/main", "--branch", "imported", check=False, timeout=120)
        err = r.stderr.decode(errors="replace")
        assert "Traceback" not in err and "internal error" not in err, err
        assert snapshot(repo) == before, "import-ostree wrote into the source repository"
        assert sorted(os.listdir(w)) == around, "import-ostree wrote beside its target"
        refs = subprocess.run(["git", "--git-dir", g, "for-each-ref", "--format=%(refname)"],
                              capture_output=True, text=True, check=True).stdout.split()
        event(f"{suffix}: {'imported' if r.returncode == 0 else 'refused'}")
        if r.returncode == 0:
            assert refs == ["refs/heads/imported"]
            back = os.path.join(w, "back")
            out = api.export_ostree(g, "imported", back, ref="os/main", history=True)
            assert out.checksum == tip, "the re-export does not reproduce the commit checksum"
        else:
            lines = err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("gitree: error:"), err
            assert refs == [], refs
    finally:
        shutil.rmtree(w, ignore_errors=True)
