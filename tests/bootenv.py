"""A bootable Debian rootfs for the boot tests: a real kernel, dracut and ostree-boot from Debian's packages.

Debian's ostree-boot ships OSTree's initramfs integration only for dracut (the dracut module 98ostree,
which runs ostree-prepare-root.service in the initramfs); initramfs-tools gets no hook. So the rootfs
uses dracut, whose kernel hook generates /boot/initrd.img-KVER inside the rootfs while the packages are
configured (ostree-boot's postinst triggers a regeneration, so the module is in it).

The tar is built once by mmdebstrap and cached like gitree.rootfs's.
"""

from __future__ import annotations

import os
import subprocess

from gitree.rootfs import CACHE

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


def run_to_marker(cmd: list[str], timeout: float = 420, marker: str = MARKER,
                  stall: float = 150) -> tuple[str | None, float, list[str]]:
    """Run a qemu command line until `marker` appears on its serial console (stdout): (the marker line or
    None, seconds, console lines). qemu is killed either way.

    Under TCG on a loaded 2-core host a guest now and then hangs in early kernel boot (seen once: no console
    line for 290 s after 1.25 s of guest time, while the same image booted in the runs before and after).
    A console silent for `stall` seconds before the marker is that hang, not a slow boot: the boot is tried
    once more from the start, and that second try's result is the answer."""
    found, seconds, log = _run_once(cmd, timeout, marker, stall)
    if found is None and log and log[-1] == _STALLED:
        found, more, log2 = _run_once(cmd, timeout, marker, stall)
        seconds += more
        log = log + ["(qemu restarted after the console stalled)"] + log2
    return found, seconds, log


_STALLED = "(no console output for the stall time: qemu stopped)"


def _run_once(cmd: list[str], timeout: float, marker: str, stall: float) -> tuple[str | None, float, list[str]]:
    import select
    import time
    log: list[str] = []
    found = None
    t0 = last = time.monotonic()
    q = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        buf = b""
        while found is None and time.monotonic() - t0 < timeout:
            ready, _, _ = select.select([q.stdout], [], [], 5)
            if not ready:
                if q.poll() is not None:
                    break
                if time.monotonic() - last > stall:
                    log.append(_STALLED)
                    break
                continue
            chunk = os.read(q.stdout.fileno(), 65536)
            if not chunk:
                break
            last = time.monotonic()
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                text = line.decode("utf-8", "replace").rstrip("\r")
                log.append(text)
                if found is None and marker in text:
                    found = text
    finally:
        seconds = time.monotonic() - t0
        q.kill()
        q.wait()
    return found, seconds, log


def partitioned_image(sysroot: str, image: str) -> None:
    """A disk image with an MBR partition table and one bootable ext4 partition (from 1 MiB) holding
    the sysroot, made by sfdisk and `mke2fs -d` (firmware such as U-Boot's distro boot scans partitions)."""
    size = int(subprocess.run(["du", "-sb", sysroot], check=True, capture_output=True).stdout.split()[0])
    mib = (size * 13 // 10 + (256 << 20)) >> 20
    with open(image, "wb") as f:
        f.truncate((mib + 1) << 20)
    subprocess.run(["sfdisk", "-q", image], input=b"start=2048, type=83, bootable\n", check=True)
    subprocess.run(["mke2fs", "-q", "-t", "ext4", "-d", sysroot, "-L", "root", "-E", "root_owner=0:0,offset=1048576",
                    image, f"{mib}M"], check=True)


def _q(s: str) -> str:
    return "'" + s.replace("'", "'\"'\"'") + "'"


if __name__ == "__main__":
    print(build_bootable_rootfs())
