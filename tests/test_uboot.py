"""U-Boot: `gitree deploy --bootloader uboot` and a boot by Debian's real U-Boot for qemu.

ostree's uboot backend writes boot/loader/uEnv.txt; gitree's boot script (mkimage from u-boot-tools)
imports it and boots the kernel and initramfs it names. The firmware is u-boot-qemu's 32-bit qemu-x86
build (its 64-bit qemu-x86_64 build loads the bzImage but cannot start it: "many features are missing").
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile

import pytest
from bootenv import MARKER, partitioned_image, run_to_marker
from helpers import run_gitree
from test_boot import remove_sysroot, synthetic_rootfs

from gitree import api
from gitree.errors import BadInput
from gitree.boot.uboot import kernel_arch, read_uenv, script_source

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="deploying into a bare OSTree repository needs root")

UBOOT_ROM = "/usr/lib/u-boot/qemu-x86/u-boot.rom"   # Debian's u-boot-qemu
KARGS = ("root=/dev/vda1", "rw", "console=ttyS0", "panic=-1")


def test_uboot_script_per_architecture():
    x86, arm, arm64 = script_source("x86"), script_source("arm"), script_source("arm64")
    for s in (x86, arm, arm64):
        assert "env import -t ${loadaddr} ${filesize}" in s and "${prefix}loader/uEnv.txt" in s
    assert "zboot ${kernel_addr_r} 0 ${gitree_ramdisk_addr} ${gitree_ramdisk_size}" in x86
    assert "bootz ${kernel_addr_r} ${ramdisk_addr_r}:${gitree_ramdisk_size} ${gitree_fdt}" in arm
    assert "booti ${kernel_addr_r} ${ramdisk_addr_r}:${gitree_ramdisk_size} ${gitree_fdt}" in arm64


def test_kernel_arch_from_the_header(work):
    def kernel(name: str, data: bytes) -> str:
        path = os.path.join(work, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    image = bytearray(0x1000)
    image[0x38:0x3C] = b"ARM\x64"
    zimage = bytearray(0x1000)
    zimage[0x24:0x28] = (0x016F2818).to_bytes(4, "little")
    assert kernel_arch(kernel("Image", bytes(image))) == "arm64"
    gz = subprocess.run(["gzip", "-c"], input=bytes(image), capture_output=True, check=True).stdout
    assert kernel_arch(kernel("vmlinuz-arm64", gz)) == "arm64"     # Debian's arm64 vmlinuz is gzip
    assert kernel_arch(kernel("zImage", bytes(zimage))) == "arm"
    for name, data in (("empty", b""), ("text", b"#!/bin/sh\n" * 100), ("badgz", b"\x1f\x8b" + b"\xff" * 64)):
        with pytest.raises(BadInput):
            kernel_arch(kernel(name, data))


def test_uboot_deploy_refuses_a_kernel_uboot_cannot_boot(work):
    """The synthetic tree's kernel is text: refused before the sysroot is touched."""
    repo = os.path.join(work, "g.git")
    api.init(repo)
    api.import_rootfs(repo, synthetic_rootfs(work), branch="os/plain")
    api.make_bootable(repo, "os/plain", branch="os/boot")
    sysroot = os.path.join(work, "sysroot")
    r = run_gitree("-C", repo, "deploy", "--sysroot", sysroot, "--os", "t", "--bootloader", "uboot", "os/boot",
                   check=False)
    err = r.stderr.decode().strip().splitlines()
    assert r.returncode != 0 and len(err) == 1 and "not an x86 bzImage, ARM zImage or arm64 Image" in err[0], err
    assert not os.path.exists(sysroot)


def uboot_boot(sysroot: str, image: str, marker: str = MARKER) -> tuple[str, float, list[str]]:
    partitioned_image(sysroot, image)
    cmd = ["qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "1536", "-bios", UBOOT_ROM,
           "-drive", f"file={image},format=raw,if=virtio", "-nic", "none", "-display", "none", "-serial", "stdio",
           "-monitor", "none", "-no-reboot"]
    found, seconds, log = run_to_marker(cmd, marker=marker)
    os.unlink(image)
    tail = "\n".join(log[-40:])
    assert found is not None, f"no marker after {seconds:.0f} s; console tail:\n{tail}"
    assert any("Found U-Boot script /boot/boot.scr" in line for line in log), tail
    return found, seconds, log


def booted_deployment(sysroot: str, marker: str) -> str:
    m = re.search(r"ostree=(\S+)", marker)
    assert m, marker
    return os.path.basename(os.path.realpath(os.path.join(sysroot, m.group(1).lstrip("/"))))


@pytest.mark.slow
def test_uboot_boots_the_deployment_and_the_swapped_uenv(bootable_repo, tmpfs_root):
    repo, kver = bootable_repo
    base = tempfile.mkdtemp(prefix="uboot-", dir=tmpfs_root)
    sysroot = os.path.join(base, "sysroot")
    try:
        r = api.deploy(repo, "debian/boot~1", sysroot=sysroot, osname="debian", bootloader="uboot",
                       ref="debian/boot", kargs=KARGS)
        c1 = r.checksum
        assert r.uboot_files == [os.path.join(sysroot, "boot", "loader", "uEnv.txt"),
                                 os.path.join(sysroot, "boot", "boot.scr")]
        with open(os.path.join(sysroot, "ostree", "repo", "config")) as f:
            assert "bootloader=uboot" in f.read()
        env = read_uenv(sysroot)
        assert re.fullmatch(rf"/boot/ostree/debian-[0-9a-f]{{64}}/vmlinuz-{re.escape(kver)}", env["kernel_image"])
        assert env["ramdisk_image"].endswith(f"/initramfs-{kver}.img")
        assert env["bootargs"].startswith(" ".join(KARGS) + " ostree=/ostree/boot.1/debian/")
        assert "kernel_image2" not in env
        kernel = os.path.join(sysroot, env["kernel_image"].lstrip("/"))
        assert kernel_arch(kernel) == "x86"
        info = subprocess.run(["mkimage", "-l", os.path.join(sysroot, "boot", "boot.scr")], check=True,
                              capture_output=True, text=True).stdout
        assert "Script" in info and "x86" in info
        with open(os.path.join(sysroot, "boot", "boot.cmd")) as f:
            assert f.read() == script_source("x86")

        # version 1: U-Boot runs the script, which boots what uEnv.txt names, to the deployed systemd's marker
        found, t1, log = uboot_boot(sysroot, os.path.join(base, "disk.img"))
        print(f"\nU-Boot boot of version 1 to the deployed systemd's marker under TCG: {t1:.1f} s\n{found}")
        assert "ostree-booted=yes" in found and "var-from-tmpfiles=yes" in found
        assert booted_deployment(sysroot, found).startswith(c1 + ".")
        assert any(f"Command line: {env['bootargs']}" in line for line in log)
        assert any(f"gitree: booting {env['kernel_image']} with {env['bootargs']}" in line for line in log)

        # a second deploy: ostree swaps boot/loader to a uEnv.txt whose first entry is the new version
        c2 = api.deploy(repo, "debian/boot", sysroot=sysroot, osname="debian", bootloader="uboot").checksum
        assert c2 != c1
        assert os.readlink(os.path.join(sysroot, "boot", "loader")) == "loader.0"
        env2 = read_uenv(sysroot)
        assert env2["bootargs"].startswith(" ".join(KARGS) + " ostree=/ostree/boot.0/debian/")
        assert env2["bootargs2"].split("ostree=")[1].endswith("/1")    # version 1, the rollback entry
        found, t2, log = uboot_boot(sysroot, os.path.join(base, "disk.img"))
        print(f"U-Boot boot of version 2 to the deployed systemd's marker under TCG: {t2:.1f} s\n{found}")
        assert "ostree-booted=yes" in found and "var-from-tmpfiles=yes" in found
        assert booted_deployment(sysroot, found).startswith(c2 + ".")
        assert any(f"gitree: booting {env2['kernel_image']} with {env2['bootargs']}" in line for line in log)
    finally:
        remove_sysroot(base)
