"""make-bootable, deploy with the real `ostree admin`, and a boot of the deployment in qemu (TCG).

A small synthetic tree (a fake kernel, and an initramfs made by bsdtar) covers the rewrite rules and the
deploy sequence quickly; a real Debian rootfs (linux-image-amd64, dracut, systemd, ostree-boot; see
bootenv.py) is deployed and booted.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time

import pytest
from bootenv import run_to_marker
from helpers import run_gitree

from gitree import api
from gitree.initramfs import member_names

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="deploying into a bare OSTree repository needs root")

KVER = "5.10.0-test"


def sh(*args, **kw) -> str:
    r = subprocess.run(args, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise AssertionError(f"{' '.join(args)}: {r.stderr}")
    return r.stdout


def _write(path: str, data: bytes | str, mode: int = 0o644) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    os.chmod(path, mode)


def make_initramfs(work: str, out: str, with_prepare_root: bool = True, compress: str = "gzip",
                   early: bool = False) -> None:
    """An initramfs as dracut lays it out: [plain early cpio] + compressed newc cpio, made by bsdtar."""
    d = os.path.join(work, "initramfs-tree")
    shutil.rmtree(d, ignore_errors=True)
    _write(os.path.join(d, "init"), "#!/bin/sh\n", 0o755)
    if with_prepare_root:
        _write(os.path.join(d, "usr/lib/ostree/ostree-prepare-root"), b"\x7fELF fake", 0o755)
    main = subprocess.run(["bsdtar", "--format", "newc", "-cf", "-", "-C", d, "."], check=True,
                          capture_output=True).stdout
    main = subprocess.run([compress, "-c"], input=main, check=True, capture_output=True).stdout
    head = b""
    if early:
        e = os.path.join(work, "early-tree")
        shutil.rmtree(e, ignore_errors=True)
        _write(os.path.join(e, "kernel/x86/microcode/GenuineIntel.bin"), b"ucode")
        head = subprocess.run(["bsdtar", "--format", "newc", "-cf", "-", "-C", e, "."], check=True,
                              capture_output=True).stdout
    _write(out, head + main)


def synthetic_rootfs(work: str, kernel: bool = True, prepare_root: bool = True) -> str:
    root = os.path.join(work, "rootfs")
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    _write(f"{root}/usr/lib/os-release", 'PRETTY_NAME="Test OS 1"\nID=testos\nVERSION_ID=1\n')
    os.makedirs(f"{root}/etc")
    os.symlink("../usr/lib/os-release", f"{root}/etc/os-release")
    _write(f"{root}/etc/hostname", "test\n")
    _write(f"{root}/etc/shadow", "root:*:1::::::\n", 0o640)
    os.chown(f"{root}/etc/shadow", 0, 42)
    _write(f"{root}/usr/bin/sh", "#!fake\n", 0o755)
    _write(f"{root}/var/lib/thing/state", "state\n", 0o600)
    os.chown(f"{root}/var/lib/thing/state", 5, 6)
    os.link(f"{root}/var/lib/thing/state", f"{root}/usr/bin/state-link")  # leader in /var, follower stays
    os.makedirs(f"{root}/var/log")
    os.makedirs(f"{root}/var/cache/space dir")
    os.symlink("../run", f"{root}/var/run")
    os.makedirs(f"{root}/var/tmp")
    os.chmod(f"{root}/var/tmp", 0o1777)
    _write(f"{root}/root/.profile", "# root\n")
    os.chmod(f"{root}/root", 0o700)
    os.makedirs(f"{root}/home/user")
    os.makedirs(f"{root}/usr/local/bin")
    os.makedirs(f"{root}/tmp")
    _write(f"{root}/tmp/junk", "x")
    os.makedirs(f"{root}/dev")
    os.mknod(f"{root}/dev/null", 0o20666, os.makedev(1, 3))
    for d in ("proc", "sys", "run", "opt", "srv", "mnt", "media"):
        os.makedirs(f"{root}/{d}")
    os.makedirs(f"{root}/boot")
    if kernel:
        _write(f"{root}/boot/vmlinuz-{KVER}", "KERNEL\n")
        _write(f"{root}/boot/config-{KVER}", "CONFIG_X=y\n")
        make_initramfs(work, f"{root}/boot/initrd.img-{KVER}", prepare_root)
        os.symlink(f"boot/vmlinuz-{KVER}", f"{root}/vmlinuz")
    return root


def gitree_ls(repo: str, rev: str, path: str) -> str:
    """`gitree ls -l REV PATH`'s text, from gitree.api."""
    return "".join(line + "\n" for line in api.ls(repo, rev, path).lines(long=True))


def show(repo: str, spec: str) -> bytes:
    return subprocess.run(["git", "--git-dir", repo, "show", spec], check=True, capture_output=True).stdout


# ---------------------------------------------------------------------------------------------
# the initramfs reader against archives made by bsdtar and compressed by the real tools

@pytest.mark.parametrize("compress", ["gzip", "xz", "zstd", "bzip2"])
def test_initramfs_member_names(work, compress):
    out = os.path.join(work, "initrd")
    make_initramfs(work, out, compress=compress, early=True)
    with open(out, "rb") as f:
        names = member_names(f.read())
    assert {b"init", b"usr/lib/ostree/ostree-prepare-root", b"kernel/x86/microcode/GenuineIntel.bin"} <= names


# ---------------------------------------------------------------------------------------------
# make-bootable on a synthetic tree

@pytest.fixture
def synthetic(work):
    src = synthetic_rootfs(work)
    repo = os.path.join(work, "g.git")
    api.init(repo)
    api.import_rootfs(repo, src, branch="os/plain", timestamp=1700000000, message="v1")
    return repo


def test_make_bootable_rewrites_the_tree(synthetic):
    repo = synthetic
    r = api.make_bootable(repo, "os/plain", branch="os/boot", message="bootable v1")
    assert r.kernel == KVER and r.commit == sh("git", "--git-dir", repo, "rev-parse", "os/boot").strip()
    err = "\n".join(r.changes)
    assert f"kernel {KVER}: /boot/vmlinuz-{KVER} -> /usr/lib/modules/{KVER}/vmlinuz" in err
    assert "has ostree-prepare-root" in err
    b = "os/boot"
    kdir = f"usr/lib/modules/{KVER}"
    assert show(repo, f"{b}:rootfs/{kdir}/vmlinuz") == b"KERNEL\n"
    assert show(repo, f"{b}:rootfs/{kdir}/config") == b"CONFIG_X=y\n"
    assert show(repo, f"{b}:rootfs/{kdir}/initramfs.img") == show(repo, f"os/plain:rootfs/boot/initrd.img-{KVER}")
    # /etc -> /usr/etc with its metadata; /dev, /boot, /tmp contents gone; /var empty
    assert "-rw-r-----     0    42" in gitree_ls(repo, b, "usr/etc/shadow")
    names = " ".join(api.ls(repo, b).lines()).split()
    assert "etc" not in names and "vmlinuz" not in names
    for d in ("dev", "boot", "var", "sysroot", "proc", "sys", "run"):
        assert api.ls(repo, b, d).items == [], d
    links = {line.split()[-3]: line.split()[-1] for line in gitree_ls(repo, b, "").splitlines() if " -> " in line}
    assert links["home"] == "var/home" and links["root"] == "var/roothome" and links["opt"] == "var/opt"
    assert links["srv"] == "var/srv" and links["mnt"] == "var/mnt" and links["media"] == "run/media"
    assert links["tmp"] == "sysroot/tmp" and links["ostree"] == "sysroot/ostree"
    assert gitree_ls(repo, b, "usr/local").rstrip().endswith("usr/local -> ../var/usrlocal")
    # /var (and what moved into it) is recreated by tmpfiles.d from /usr/share/factory/var
    conf = show(repo, f"{b}:rootfs/usr/lib/tmpfiles.d/gitree-var.conf").decode().splitlines()
    assert "d /var/lib/thing 0755 0 0 -" in conf
    assert "C /var/lib/thing/state - - - - /usr/share/factory/var/lib/thing/state" in conf
    assert "d /var/tmp 1777 0 0 -" in conf
    assert "L /var/run - - - - ../run" in conf
    assert "d /var/roothome 0700 0 0 -" in conf
    assert "C /var/roothome/.profile - - - - /usr/share/factory/var/roothome/.profile" in conf
    assert "d /var/home/user 0755 0 0 -" in conf and "d /var/usrlocal/bin 0755 0 0 -" in conf
    assert r"d /var/cache/space\x20dir 0755 0 0 -" in conf
    assert "-rw-------     5     6" in gitree_ls(repo, b, "usr/share/factory/var/lib/thing/state")
    # the hard link whose leader moved keeps its group
    assert "=> /usr/bin/state-link" in gitree_ls(repo, b, "usr/share/factory/var/lib/thing/state") or \
        "=> /usr/share/factory/var/lib/thing/state" in gitree_ls(repo, b, "usr/bin/state-link")
    assert show(repo, f"{b}:ostree-meta") == (b"gitree-ostree-meta 1\nostree.linux s 5.10.0-test\n"
                                             b"version s 1.0\nostree.bootable b true\n")
    api.fsck(repo, check=True)
    subprocess.run(["git", "--git-dir", repo, "fsck", "--strict", "--no-progress"], check=True)
    # the version counts up on the branch; old commits without ostree-meta stay readable
    api.make_bootable(repo, "os/plain", branch="os/boot")
    assert b"version s 1.1\n" in show(repo, f"{b}:ostree-meta")
    with pytest.raises(api.BadInput, match="already bootable"):
        api.make_bootable(repo, b, branch="again")
    api.export_ostree(repo, "os/plain", os.path.join(os.path.dirname(repo), "o"))


def test_bootable_export_equals_ostree_commit_bootable(synthetic, work):
    """The exported commit is the one `ostree commit --bootable --add-metadata-string=version=...` makes."""
    repo = synthetic
    api.make_bootable(repo, "os/plain", branch="os/boot", message="bootable v1\n\nbody", version="1.0")
    co = os.path.join(work, "co")
    api.checkout(repo, "os/boot", co)
    real = os.path.join(work, "real")
    sh("ostree", "init", f"--repo={real}", "--mode=archive")
    want = sh("ostree", f"--repo={real}", "commit", "--bootable", "--add-metadata-string=version=1.0",
              f"--tree=dir={co}", "-b", "os/boot", "--timestamp=@1700000000", "-s", "bootable v1",
              "-m", "body").strip()
    got = api.export_ostree(repo, "os/boot", os.path.join(work, "mine")).checksum
    assert got == want
    out = sh("ostree", f"--repo={os.path.join(work, 'mine')}", "show", "os/boot")
    assert "ostree.linux" in out or sh("ostree", f"--repo={os.path.join(work, 'mine')}", "show",
                                          "--print-metadata-key=ostree.linux", "os/boot").strip() == f"'{KVER}'"


def test_make_bootable_refuses_without_kernel_or_prepare_root(work):
    repo = os.path.join(work, "g.git")
    api.init(repo)
    api.import_rootfs(repo, synthetic_rootfs(work, kernel=False), branch="nokernel")
    r = run_gitree("-C", repo, "make-bootable", "nokernel", "--branch", "b", check=False)
    lines = r.stderr.decode().strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1 and lines[0].startswith("gitree: error: no kernel in"), lines
    api.import_rootfs(repo, synthetic_rootfs(work, prepare_root=False), branch="nohook")
    with pytest.raises(api.BadInput, match="has no ostree-prepare-root"):
        api.make_bootable(repo, "nohook", branch="b")
    assert subprocess.run(["git", "--git-dir", repo, "rev-parse", "--verify", "-q", "b"],
                          capture_output=True).returncode != 0
    r = api.make_bootable(repo, "nohook", branch="b", initramfs_check=False)
    assert "(not checked)" in "\n".join(r.changes)
    # deploy refuses a commit that is not bootable, before touching the sysroot
    sysroot = os.path.join(work, "sysroot")
    with pytest.raises(api.BadInput, match="not bootable"):
        api.deploy(repo, "nohook", sysroot=sysroot, osname="t")
    assert not os.path.exists(sysroot)


# ---------------------------------------------------------------------------------------------
# deploy with the real ostree admin

def entries(sysroot: str) -> list[dict]:
    from gitree.boot.deploy import read_entries
    return [dict(e.fields, path=e.path) for e in read_entries(sysroot)]


def check_entry(sysroot: str, entry: dict, osname: str, csum: str, vmlinuz: bytes, initramfs: bytes) -> None:
    bootcsum = hashlib.sha256(vmlinuz + initramfs).hexdigest()
    kver = entry["linux"].rsplit("/vmlinuz-", 1)[1]
    assert entry["linux"] == f"/ostree/{osname}-{bootcsum}/vmlinuz-{kver}"
    assert entry["initrd"] == f"/ostree/{osname}-{bootcsum}/initramfs-{kver}.img"
    with open(os.path.join(sysroot, "boot", entry["linux"].lstrip("/")), "rb") as f:
        assert f.read() == vmlinuz
    with open(os.path.join(sysroot, "boot", entry["initrd"].lstrip("/")), "rb") as f:
        assert f.read() == initramfs
    m = re.search(r"\bostree=(/ostree/boot\.[01]/" + osname + "/" + bootcsum + r"/\d+)\b", entry["options"])
    assert m, entry["options"]
    target = os.path.realpath(os.path.join(sysroot, m.group(1).lstrip("/")))
    assert os.path.basename(target).startswith(csum + ".")
    assert os.path.dirname(target) == os.path.join(sysroot, "ostree", "deploy", osname, "deploy")


def remove_sysroot(path: str) -> None:
    """rm -rf, after clearing the immutable flag ostree admin sets on each deployment's root."""
    for d in glob.glob(os.path.join(glob.escape(path), "**", "ostree", "deploy", "*", "deploy", "*.*"), recursive=True):
        if os.path.isdir(d) and not os.path.islink(d):
            subprocess.run(["chattr", "-i", d], capture_output=True)
    shutil.rmtree(path, ignore_errors=True)


def deploy_sequence(repo: str, work: str, osname: str, branch: str, kver: str) -> dict:
    """Deploy v1, then v2 (loader swap, two entries), undeploy, and roll back to v1; returns timings."""
    sysroot = os.path.join(work, "sysroot")
    rel = f"rootfs/usr/lib/modules/{kver}"
    vmlinuz, initramfs = show(repo, f"{branch}:{rel}/vmlinuz"), show(repo, f"{branch}:{rel}/initramfs.img")
    t0 = time.monotonic()
    r = api.deploy(repo, branch + "~1", sysroot=sysroot, osname=osname, ref=branch, kargs=["console=ttyS0", "quiet"])
    t_first = time.monotonic() - t0
    c1 = r.checksum
    assert r.ref == branch and r.options is not None and r.options.split()[:2] == ["console=ttyS0", "quiet"]
    assert os.readlink(os.path.join(sysroot, "boot", "loader")) == "loader.1"
    (e1,) = entries(sysroot)
    assert e1["options"].split()[:2] == ["console=ttyS0", "quiet"]
    check_entry(sysroot, e1, osname, c1, vmlinuz, initramfs)
    dep1 = os.path.join(sysroot, "ostree", "deploy", osname, "deploy", c1 + ".0")
    assert os.path.isfile(os.path.join(dep1, "etc", "os-release")) or os.path.islink(
        os.path.join(dep1, "etc", "os-release"))
    assert os.path.isdir(os.path.join(dep1, "sysroot")) and os.readlink(os.path.join(dep1, "ostree")) == \
        "sysroot/ostree"
    t0 = time.monotonic()
    c2 = api.deploy(repo, branch, sysroot=sysroot, osname=osname).checksum
    t_second = time.monotonic() - t0
    assert c2 != c1
    assert os.readlink(os.path.join(sysroot, "boot", "loader")) == "loader.0"
    es = entries(sysroot)
    assert len(es) == 2
    by_version = {e["version"]: e for e in es}
    check_entry(sysroot, by_version["2"], osname, c2, vmlinuz, initramfs)   # newest: highest number
    check_entry(sysroot, by_version["1"], osname, c1, vmlinuz, initramfs)
    status = sh("ostree", "admin", f"--sysroot={sysroot}", "status")
    assert c1 in status and c2 in status and status.index(c2) < status.index(c1)
    assert sh("ostree", f"--repo={sysroot}/ostree/repo", "show", "--print-metadata-key=ostree.linux",
              c2).strip() == f"'{kver}'"
    # rollback 1: undeploy the new one
    sh("ostree", "admin", f"--sysroot={sysroot}", "undeploy", "0")
    status = sh("ostree", "admin", f"--sysroot={sysroot}", "status")
    assert c1 in status and c2 not in status
    (e,) = entries(sysroot)
    check_entry(sysroot, e, osname, c1, vmlinuz, initramfs)
    # rollback 2: deploy v2 again, then the older commit: the same OSTree commit as the first time
    api.deploy(repo, branch, sysroot=sysroot, osname=osname)
    again = api.deploy(repo, branch + "~1", sysroot=sysroot, osname=osname, ref=branch).checksum
    assert again == c1
    status = sh("ostree", "admin", f"--sysroot={sysroot}", "status")
    assert status.index(c1) < status.index(c2)
    es = entries(sysroot)
    assert len(es) == 2
    return {"first deploy": t_first, "second deploy": t_second, "sysroot": sysroot, "c2": c2}


def test_deploy_sequence_synthetic(synthetic, work):
    repo = synthetic
    api.make_bootable(repo, "os/plain", branch="os/boot")
    api.make_bootable(repo, "os/plain", branch="os/boot")
    deploy_sequence(repo, work, "testos", "os/boot", KVER)
    remove_sysroot(os.path.join(work, "sysroot"))


# ---------------------------------------------------------------------------------------------
# a real Debian rootfs: deploy and boot

@pytest.fixture(scope="module")
def debian_bootable(bootable_repo, tmpfs_root):
    """The session's bootable Debian repository (conftest.bootable_repo: versions 12.0 and 12.1 on debian/boot),
    with a directory of this module's own for sysroots and images."""
    repo, kver = bootable_repo
    base = tempfile.mkdtemp(prefix="debian-boot-", dir=tmpfs_root)
    yield repo, base, kver
    remove_sysroot(base)


def test_real_debian_deploy_sequence(debian_bootable, tmpfs_root):
    repo, base, kver = debian_bootable
    assert b"version s 12.1\n" in show(repo, "debian/boot:ostree-meta")
    work = os.path.join(base, "seq")
    os.makedirs(work)
    times = deploy_sequence(repo, work, "debian", "debian/boot", kver)
    print(f"\nreal rootfs: first deploy {times['first deploy']:.1f} s, second {times['second deploy']:.1f} s")
    remove_sysroot(work)


@pytest.mark.slow
def test_boot_deployment_in_qemu(debian_bootable):
    """The deployed kernel and initramfs boot the disk image; the deployment's own systemd prints the marker."""
    repo, base, kver = debian_bootable
    sysroot = os.path.join(base, "boot-sysroot")
    t0 = time.monotonic()
    r = api.deploy(repo, "debian/boot", sysroot=sysroot, osname="debian")
    t_deploy = time.monotonic() - t0
    csum = r.checksum
    (entry,) = entries(sysroot)
    image = os.path.join(base, "disk.img")
    size = int(sh("du", "-sb", sysroot).split()[0])
    t0 = time.monotonic()
    sh("mke2fs", "-q", "-t", "ext4", "-d", sysroot, "-L", "root", "-E", "root_owner=0:0", image,
       f"{(size * 13 // 10 + (256 << 20)) >> 20}M")
    t_image = time.monotonic() - t0
    kernel = os.path.join(sysroot, "boot", entry["linux"].lstrip("/"))
    initrd = os.path.join(sysroot, "boot", entry["initrd"].lstrip("/"))
    append = f"{entry['options']} root=/dev/vda rw console=ttyS0 panic=-1 systemd.show_status=1"
    cmd = ["qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "1536",
           "-kernel", kernel, "-initrd", initrd, "-append", append,
           "-drive", f"file={image},format=raw,if=virtio", "-nic", "none",
           "-display", "none", "-serial", "stdio", "-monitor", "none", "-no-reboot"]
    found, t_boot, log = run_to_marker(cmd, timeout=300)
    tail = "\n".join(log[-40:])
    assert found is not None, f"no marker after {t_boot:.0f} s; console tail:\n{tail}"
    print(f"\ndeploy {t_deploy:.1f} s (export {r.export_seconds:.1f} s, ostree admin deploy "
          f"{r.deploy_seconds:.1f} s), disk image {t_image:.1f} s, "
          f"boot to marker under TCG {t_boot:.1f} s")
    print(found)
    assert "ostree-booted=yes" in found and "id=debian" in found
    assert "var-from-tmpfiles=yes" in found  # /var (and /root) filled by gitree-var.conf at first boot
    m = re.search(r"ostree=(\S+)", found)
    assert m and os.path.basename(os.path.realpath(os.path.join(sysroot, m.group(1).lstrip("/")))) \
        .startswith(csum + ".")
