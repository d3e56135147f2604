"""U-Boot: prepare a sysroot for ostree's `uboot` bootloader backend and install a boot script for it.

ostree's uboot backend, on every `ostree admin deploy`, rewrites `boot/loader.N/uEnv.txt` with the
entries of the new boot loader configuration (`kernel_image`, `ramdisk_image`, `bootargs` for the
default deployment, `kernel_image2`... for the others, then the deployment's own
`usr/lib/ostree-boot/uEnv.txt` if it has one) and swaps `boot/loader` atomically. It is chosen by
`sysroot.bootloader=uboot` in the sysroot repository's config, or found by the presence of
`boot/loader/uEnv.txt`; it reads the current file before writing, so the very first deployment needs
an empty `boot/loader.0/uEnv.txt` with `boot/loader -> loader.0` (what image builders create).

The boot script (`boot/boot.cmd`, compiled by `mkimage` to `boot/boot.scr`) is found by U-Boot's
distro boot (`scan_dev_for_scripts` looks for `boot.scr` in `/` and `/boot/` of every bootable
partition), imports uEnv.txt, loads the kernel and initramfs it names from the same partition and
boots them with its `bootargs`. ostree writes the kernel paths relative to the filesystem that holds
`boot/loader`: `/boot/ostree/...` when /boot is a directory of the root filesystem, `/ostree/...`
when it is a partition of its own, so the script uses them as they are in both layouts.

The boot command depends on the kernel's format, read from the deployed kernel's header: an x86
bzImage boots with `zboot`, an ARM zImage with `bootz`, an arm64 Image with `booti` (with a device tree).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zlib

from .. import tools
from ..errors import BadInput, ToolFailed

SCRIPT_NAME = "boot.scr"
SOURCE_NAME = "boot.cmd"

# Where the initramfs goes on x86. U-Boot's qemu-x86 default (ramdisk_addr_r=0x4000000, 64 MiB) is
# overwritten by a current kernel's in-place decompression (its buffer starts at 16 MiB; bookworm's kernel
# has init_size 63 MiB), so the x86 script loads the initramfs at 256 MiB unless the board sets gitree_ramdisk_addr.
X86_RAMDISK_ADDR = "0x10000000"

_COMMON = """\
# gitree: boot the OSTree deployment that loader/uEnv.txt names (written by ostree's uboot backend on
# every `ostree admin deploy`). Found by U-Boot's distro boot, which sets devtype, devnum,
# distro_bootpart and prefix ("/" when /boot is its own partition, "/boot/" when it is a directory).
if test -z "${{devtype}}"; then setenv devtype {devtype}; fi
if test -z "${{devnum}}"; then setenv devnum 0; fi
if test -z "${{distro_bootpart}}"; then setenv distro_bootpart 1; fi
if test -z "${{prefix}}"; then setenv prefix /boot/; fi
setenv kernel_image
setenv ramdisk_image
setenv bootargs
echo "gitree: ${{prefix}}loader/uEnv.txt on ${{devtype}} ${{devnum}}:${{distro_bootpart}}"
load ${{devtype}} ${{devnum}}:${{distro_bootpart}} ${{loadaddr}} ${{prefix}}loader/uEnv.txt
env import -t ${{loadaddr}} ${{filesize}}
if test -z "${{kernel_image}}"; then echo "gitree: no kernel_image in uEnv.txt"; exit; fi
"""

_X86 = """\
if test -z "${{gitree_ramdisk_addr}}"; then setenv gitree_ramdisk_addr {ramdisk}; fi
load ${{devtype}} ${{devnum}}:${{distro_bootpart}} ${{gitree_ramdisk_addr}} ${{ramdisk_image}}
setenv gitree_ramdisk_size ${{filesize}}
load ${{devtype}} ${{devnum}}:${{distro_bootpart}} ${{kernel_addr_r}} ${{kernel_image}}
echo "gitree: booting ${{kernel_image}} with ${{bootargs}}"
zboot ${{kernel_addr_r}} 0 ${{gitree_ramdisk_addr}} ${{gitree_ramdisk_size}}
"""

_ARM = """\
load ${{devtype}} ${{devnum}}:${{distro_bootpart}} ${{ramdisk_addr_r}} ${{ramdisk_image}}
setenv gitree_ramdisk_size ${{filesize}}
load ${{devtype}} ${{devnum}}:${{distro_bootpart}} ${{kernel_addr_r}} ${{kernel_image}}
# the device tree: fdtfile (board environment, or usr/lib/ostree-boot/uEnv.txt in the deployment)
# from fdtdir, else the one U-Boot itself runs with
setenv gitree_fdt ${{fdtcontroladdr}}
if test -n "${{fdtdir}}" -a -n "${{fdtfile}}"; then
    if load ${{devtype}} ${{devnum}}:${{distro_bootpart}} ${{fdt_addr_r}} ${{fdtdir}}/${{fdtfile}}; then
        setenv gitree_fdt ${{fdt_addr_r}}
    fi
fi
echo "gitree: booting ${{kernel_image}} with ${{bootargs}}"
{boot} ${{kernel_addr_r}} ${{ramdisk_addr_r}}:${{gitree_ramdisk_size}} ${{gitree_fdt}}
"""

# kernel format -> (mkimage -A, script body, boot command)
ARCHES = {"x86": ("x86", _X86, "zboot"), "arm": ("arm", _ARM, "bootz"), "arm64": ("arm64", _ARM, "booti")}


def kernel_arch(path: str) -> str:
    """x86, arm or arm64, from the kernel image's header (bzImage, zImage, arm64 Image)."""
    with open(path, "rb") as f:
        return kernel_arch_of(iter(lambda: f.read(65536), b""), path)


def kernel_arch_of(chunks, where: str) -> str:
    """kernel_arch of a kernel given as an iterator of byte chunks (a file, or a blob of a gitree commit)."""
    head = b""
    for chunk in chunks:
        head += chunk
        if len(head) >= 0x210:
            break
    if head[:2] == b"\x1f\x8b":   # a gzip-compressed arm64 Image (Debian's arm64 vmlinuz): look inside
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        data, head = head, b""
        try:
            while len(head) < 0x40:
                head += d.decompress(data, 0x40 - len(head))
                data = d.unconsumed_tail
                if d.eof or len(head) >= 0x40:
                    break
                if not data:
                    data = next(chunks, b"")
                    if not data:
                        break
        except zlib.error as e:
            raise BadInput(f"{where}: bad gzip data ({e})") from None
    if len(head) >= 0x206 and head[0x202:0x206] == b"HdrS":
        return "x86"
    if len(head) >= 0x40 and head[0x38:0x3C] == b"ARM\x64":
        return "arm64"
    if len(head) >= 0x28 and head[0x24:0x28] == (0x016F2818).to_bytes(4, "little"):
        return "arm"
    raise BadInput(f"{where}: not an x86 bzImage, ARM zImage or arm64 Image; cannot write a U-Boot script for it")


def commit_kernel_arch(repo, commit, kver: str) -> str:
    """kernel_arch of usr/lib/modules/KVER/vmlinuz in a bootable gitree commit (checked before deploying)."""
    path = f"usr/lib/modules/{kver}/vmlinuz".encode()
    e = repo.find(repo.commit_trees(commit), path)
    if e is None:
        raise BadInput(f"{commit.id} has no /{path.decode()}")
    return kernel_arch_of(iter(repo.blob_chunks(e.oid, None, "/" + path.decode())), "/" + path.decode())


def script_source(arch: str, devtype: str = "virtio") -> str:
    if arch not in ARCHES:
        raise BadInput(f"unknown U-Boot architecture {arch!r} (one of {', '.join(ARCHES)})")
    _, body, boot = ARCHES[arch]
    return _COMMON.format(devtype=devtype) + body.format(ramdisk=X86_RAMDISK_ADDR, boot=boot)


def prepare_sysroot(sysroot: str) -> None:
    """Select ostree's uboot backend: the repository config key, and the uEnv.txt it reads first."""
    repo = os.path.join(sysroot, "ostree", "repo")
    tools.run(["ostree", f"--repo={repo}", "config", "set", "sysroot.bootloader", "uboot"],
              what="ostree config set sysroot.bootloader")
    boot = os.path.join(sysroot, "boot")
    loader = os.path.join(boot, "loader")
    if not os.path.lexists(loader):
        os.makedirs(os.path.join(boot, "loader.0"), exist_ok=True)
        tmp = os.path.join(boot, ".loader.gitree-tmp")
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink("loader.0", tmp)
        os.replace(tmp, loader)
    elif not os.path.islink(loader):
        raise BadInput(f"{loader} is not a symlink: not an OSTree sysroot's boot directory")
    uenv = os.path.join(loader, "uEnv.txt")
    if not os.path.exists(uenv):   # a sysroot deployed before with another boot loader
        open(uenv, "ab").close()


def install_script(sysroot: str, kernel: str, arch: str | None = None, devtype: str = "virtio") -> str:
    """Write boot/boot.cmd and boot/boot.scr (mkimage) for the kernel's architecture; returns the arch."""
    arch = arch or kernel_arch(kernel)
    mkimage = shutil.which("mkimage")
    if mkimage is None:
        raise ToolFailed("mkimage not found: install Debian's u-boot-tools", tool="mkimage", line="not installed")
    boot = os.path.join(sysroot, "boot")
    src = script_source(arch, devtype)
    with tempfile.TemporaryDirectory(dir=boot, prefix=".gitree-uboot-") as tmp:
        cmd_path = os.path.join(tmp, SOURCE_NAME)
        scr_path = os.path.join(tmp, SCRIPT_NAME)
        with open(cmd_path, "w", encoding="utf-8") as f:
            f.write(src)
        tools.run([mkimage, "-A", ARCHES[arch][0], "-O", "linux", "-T", "script", "-C", "none",
                   "-n", "gitree OSTree boot", "-d", cmd_path, scr_path], what="mkimage")
        for p in (cmd_path, scr_path):
            os.chmod(p, 0o644)
            os.replace(p, os.path.join(boot, os.path.basename(p)))
    return arch


def read_uenv(sysroot: str) -> dict[str, str]:
    """The current boot/loader/uEnv.txt as a dict (what U-Boot's `env import -t` reads)."""
    out = {}
    with open(os.path.join(sysroot, "boot", "loader", "uEnv.txt"), encoding="utf-8") as f:
        for line in f:
            key, sep, value = line.rstrip("\n").partition("=")
            if sep and key and not key.startswith("#"):
                out[key] = value
    return out


__all__ = ["prepare_sysroot", "install_script", "kernel_arch", "commit_kernel_arch", "script_source", "read_uenv",
           "ARCHES"]
