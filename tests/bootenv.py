"""A bootable Debian rootfs for the boot tests: a real kernel, dracut and ostree-boot from Debian's packages.

Debian's ostree-boot ships OSTree's initramfs integration only for dracut (the dracut module 98ostree,
which runs ostree-prepare-root.service in the initramfs); initramfs-tools gets no hook. So the rootfs
uses dracut, whose kernel hook generates /boot/initrd.img-KVER inside the rootfs while the packages are
configured (ostree-boot's postinst triggers a regeneration, so the module is in it).

The tar is built once by mmdebstrap and cached like gitree.demo's rootfs.
"""

from __future__ import annotations

import os
import subprocess

from gitree.demo import CACHE

SUITE = "bookworm"
PACKAGES = "linux-image-amd64,dracut,systemd-sysv,ostree-boot,ostree,udev,kmod"
MARKER = "GITREE-BOOT-MARKER"
# Printed on the console by the deployed OS's own systemd once multi-user.target is reached.
MARKER_SCRIPT = f"""#!/bin/sh
booted=no
[ -e /run/ostree-booted ] && booted=yes
var=no
[ -s /var/lib/dpkg/status ] && [ -d /root/ ] && [ -d /var/roothome ] && var=yes
. /usr/lib/os-release
echo "{MARKER} ostree-booted=$booted var-from-tmpfiles=$var id=$ID $(grep -o 'ostree=[^ ]*' /proc/cmdline)" \
    >/dev/console
"""
MARKER_UNIT = """[Unit]
Description=gitree boot test marker
[Service]
Type=oneshot
ExecStart=/usr/libexec/gitree-boot-marker
[Install]
WantedBy=multi-user.target
"""
VERSION = 2  # bump when the recipe changes: it names the cached tar


def build_bootable_rootfs() -> str:
    """Path of the cached tar (built on first use, a few minutes)."""
    os.makedirs(CACHE, exist_ok=True)
    tar = os.path.join(CACHE, f"{SUITE}-bootable-v{VERSION}.tar")
    if os.path.exists(tar):
        return tar
    part = tar[:-4] + ".part.tar"
    hooks = [
        f"printf '%s' {_q(MARKER_SCRIPT)} > \"$1/usr/libexec/gitree-boot-marker\"",
        "chmod 755 \"$1/usr/libexec/gitree-boot-marker\"",
        f"printf '%s' {_q(MARKER_UNIT)} > \"$1/etc/systemd/system/gitree-boot-marker.service\"",
        "ln -s /etc/systemd/system/gitree-boot-marker.service "
        "\"$1/etc/systemd/system/multi-user.target.wants/gitree-boot-marker.service\"",
    ]
    cmd = ["mmdebstrap", "--variant=minbase", f"--include={PACKAGES}", "--mode=root", "--quiet",
           "--aptopt=Apt::Install-Recommends \"false\""]
    cmd += [f"--customize-hook={h}" for h in hooks]
    cmd += [SUITE, part]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    os.replace(part, tar)
    return tar


def _q(s: str) -> str:
    return "'" + s.replace("'", "'\"'\"'") + "'"


if __name__ == "__main__":
    print(build_bootable_rootfs())
