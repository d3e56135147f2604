"""debos: the recipe in docs/examples/debos/ run by the real debos, with gitree in place of its OSTree actions.

debos runs `run` actions with `chroot: false` on the host, so the gitree they call is this checkout's
(`python -m gitree` with this process's PYTHONPATH). The options that mirror debos' ostree-commit ones
(--metadata, --collection-id, --ref-binding) are checked against `ostree commit`.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tempfile
import time

import pytest
from bootenv import build_bootable_rootfs
from helpers import run_gitree

from gitree import api
from test_boot import remove_sysroot, synthetic_rootfs

from gitree.errors import UsageError

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="debos --disable-fakemachine and deploy need root")

RECIPE = os.path.join(os.path.dirname(__file__), "..", "docs", "examples", "debos", "gitree-bootable.yaml")


def sh(*args: str) -> str:
    r = subprocess.run(args, capture_output=True, text=True)
    assert r.returncode == 0, f"{' '.join(args)}: {r.stdout}\n{r.stderr}"
    return r.stdout


def test_debos_commit_options_against_ostree_commit(work):
    """collection-id and ref-binding give the very commit `ostree commit` makes with the same options; the
    metadata of a bootable commit holds the same keys and values (ostree orders the keys by its hash table,
    gitree keeps the order given), with the same content."""
    src = synthetic_rootfs(work)
    repo = os.path.join(work, "g.git")
    api.init(repo)
    api.import_rootfs(repo, src, branch="os/plain", timestamp=1700000000, message="s")
    co_plain = os.path.join(work, "co-plain")
    api.checkout(repo, "os/plain", co_plain)
    os.unlink(os.path.join(co_plain, "dev", "null"))   # OSTree holds no device nodes; export skips it too
    real = os.path.join(work, "real")
    sh("ostree", "init", f"--repo={real}", "--mode=archive", "--collection-id=org.example.Os")
    binds = ["--bind-ref=os/stable", "--bind-ref=os/alpha"]
    want = sh("ostree", f"--repo={real}", "commit", *binds, f"--tree=dir={co_plain}", "-b", "os/plain",
              "--timestamp=@1700000000", "-s", "s").strip()
    mine = os.path.join(work, "mine")
    got = api.export_ostree(repo, "os/plain", mine, collection_id="org.example.Os",
                            ref_bindings=["os/stable", "os/alpha"]).checksum
    assert got == want

    api.make_bootable(repo, "os/plain", branch="os/boot", message="subject", version="1.0",
                      metadata=[("vendor.build", "42"), ("debos.recipe", "gitree-bootable.yaml")])
    co = os.path.join(work, "co")
    api.checkout(repo, "os/boot", co)
    want = sh("ostree", f"--repo={real}", "commit", "--bootable", "--add-metadata-string=version=1.0",
              "--add-metadata-string=vendor.build=42", "--add-metadata-string=debos.recipe=gitree-bootable.yaml",
              *binds, f"--tree=dir={co}", "-b", "os/boot", "--timestamp=@1700000000", "-s", "subject").strip()
    got = api.export_ostree(repo, "os/boot", mine, collection_id="org.example.Os",
                            ref_bindings=["os/stable", "os/alpha"]).checksum
    for key in ("ostree.linux", "version", "ostree.bootable", "vendor.build", "debos.recipe",
                "ostree.collection-binding", "ostree.ref-binding"):
        assert sh("ostree", f"--repo={mine}", "show", f"--print-metadata-key={key}", got) == \
            sh("ostree", f"--repo={real}", "show", f"--print-metadata-key={key}", want), key
    raw_mine = sh("ostree", f"--repo={mine}", "show", "--raw", got)
    raw_real = sh("ostree", f"--repo={real}", "show", "--raw", want)
    assert raw_mine.split("uint64 1700000000", 1)[1] == raw_real.split("uint64 1700000000", 1)[1]  # tree, meta
    # an existing repository with another collection ID, and malformed IDs and refs, are refused
    r = run_gitree("-C", repo, "export-ostree", "os/boot", "--ostree-repo", mine, "--collection-id", "org.x\n[core]",
                   check=False)
    assert r.returncode == UsageError.exit_code and "invalid collection ID" in r.stderr.decode(), r.stderr
    for kw, msg in (({"collection_id": "org.other.Os"}, "has collection ID org.example.Os"),
                    ({"collection_id": "nodots"}, "invalid collection ID"),
                    ({"ref_bindings": ["../x"]}, "invalid OSTree ref name")):
        with pytest.raises(UsageError, match=re.escape(msg)):
            api.export_ostree(repo, "os/boot", mine, **kw)
    with pytest.raises(UsageError, match="set by make-bootable"):
        api.make_bootable(repo, "os/plain", branch="x", metadata=[("version", "2")])


@pytest.mark.slow
def test_debos_recipe_builds_the_bootable_image(tmpfs_root):
    out = tempfile.mkdtemp(prefix="debos-", dir=tmpfs_root)
    os.symlink(build_bootable_rootfs(), os.path.join(out, "rootfs.tar"))   # unpack: relative to $ARTIFACTDIR
    gitree = shlex.join([sys.executable, "-m", "gitree", "-q"])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    cmd = ["debos", "--disable-fakemachine", f"--artifactdir={out}", "-t", "rootfs_tar:rootfs.tar",
           "-t", f"gitree:{gitree}", "-t", "branch:debian/bookworm", "-t", "subject:bookworm by debos",
           "-t", "metadata:vendor.build=7 vendor.pipeline=debos", "-t", "collection_id:org.example.Debian",
           "-t", "ref_binding:debian/stable", "-t", "os:debian", "-t", "cmdline:root=/dev/vda rw console=ttyS0",
           os.path.abspath(RECIPE)]
    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    t_build = time.monotonic() - t0
    try:
        assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
        print(f"\ndebos build (unpack, import, make-bootable, archive export, deploy, mke2fs): {t_build:.1f} s")
        repo = os.path.join(out, "gitree.git")
        api.fsck(repo, ["debian/bookworm"], check=True)
        log = "\n".join(api.log(repo, "debian/bookworm").lines())
        assert "bookworm by debos" in log
        meta = subprocess.run(["git", "--git-dir", repo, "show", "debian/bookworm:ostree-meta"], check=True,
                              capture_output=True).stdout
        assert b"vendor.build s 7\n" in meta and b"vendor.pipeline s debos\n" in meta
        # the export for serving: fsck clean, the commit's bindings and metadata as ostree-commit writes them
        ostree_repo = os.path.join(out, "ostree-repo")
        fsck = sh("ostree", f"--repo={ostree_repo}", "fsck")
        assert "corrupted" not in fsck.lower()
        csum = sh("ostree", f"--repo={ostree_repo}", "rev-parse", "debian/bookworm").strip()
        for key, value in (("ostree.collection-binding", "'org.example.Debian'"),
                           ("ostree.ref-binding", "['debian/bookworm', 'debian/stable']"),
                           ("vendor.build", "'7'"), ("version", "'12.0'")):
            assert sh("ostree", f"--repo={ostree_repo}", "show", f"--print-metadata-key={key}", csum).strip() == value
        assert os.path.isfile(os.path.join(ostree_repo, "summary"))
        # the deployed sysroot and its image
        sysroot = os.path.join(out, "sysroot")
        deployed = sh("ostree", f"--repo={sysroot}/ostree/repo", "rev-parse", "debian/bookworm").strip()
        status = sh("ostree", "admin", f"--sysroot={sysroot}", "status")
        assert f"debian {deployed}.0\n    Version: 12.0" in status, status
        entries = os.listdir(os.path.join(out, "sysroot", "boot", "loader", "entries"))
        with open(os.path.join(out, "sysroot", "boot", "loader", "entries", entries[0])) as f:
            assert "options root=/dev/vda rw console=ttyS0 ostree=/ostree/boot.1/debian/" in f.read()
        assert "Filesystem volume name:   root" in sh("dumpe2fs", "-h", os.path.join(out, "disk.img"))
    finally:
        remove_sysroot(out)
