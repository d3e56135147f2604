"""deploy: export a bootable commit into a sysroot's OSTree repository and deploy it with the real ostree.

The one command an image builder needs after `make-bootable`: it prepares the sysroot when needed
(`ostree admin init-fs`, `ostree admin os-init`), exports with the whole first-parent history (so a
gitree commit always becomes the same OSTree commit, and deploying an older one is a true rollback),
and runs `ostree admin deploy`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from .. import tools
from .bootable import tree_metadata
from ..errors import BadInput, NeedsRoot, UsageError
from ..ostree.export import export_ostree
from ..repo import Repo


@dataclass
class BootEntry:
    path: str
    fields: dict[str, str]

    @property
    def options(self) -> str:
        return self.fields.get("options", "")


@dataclass
class DeployResult:
    checksum: str
    ref: str
    deployment: str          # the deployment's directory
    entry: BootEntry | None  # its boot loader entry
    export_seconds: float
    deploy_seconds: float


def _ostree_admin(*args: str) -> str:
    what = f"ostree admin {args[0] if not args[0].startswith('--') else args[1]}"
    return tools.run(["ostree", "admin", *args], what=what).stdout.decode(errors="replace")


def read_entries(sysroot: str) -> list[BootEntry]:
    """The BLS entries of the sysroot's current boot loader configuration (boot/loader/entries)."""
    d = os.path.join(sysroot, "boot", "loader", "entries")
    out = []
    for name in sorted(os.listdir(d)) if os.path.isdir(d) else []:
        if not name.endswith(".conf"):
            continue
        fields = {}
        with open(os.path.join(d, name), encoding="utf-8") as f:
            for line in f:
                key, _, value = line.rstrip("\n").partition(" ")
                if key:
                    fields[key] = value
        out.append(BootEntry(os.path.join(d, name), fields))
    return out


def entry_deployment(sysroot: str, entry: BootEntry) -> str | None:
    """The deployment directory an entry's ostree= argument leads to."""
    for arg in entry.options.split():
        if arg.startswith("ostree="):
            return os.path.realpath(os.path.join(sysroot, arg[len("ostree="):].lstrip("/")))
    return None


def deploy(repo: Repo, rev: str, sysroot: str, osname: str, ref: str | None = None,
           kargs: tuple[str, ...] = (), progress=None, bootloader: str | None = None, warn=None) -> DeployResult:
    """bootloader: None (ostree's own detection) or "uboot" (gitree.boot.uboot: uEnv.txt and a boot script)."""
    if os.geteuid() != 0:
        raise NeedsRoot("deploy writes a bare OSTree repository (file owners) and must run as root")
    commit = repo.resolve(rev)
    meta = dict(tree_metadata(repo, commit))
    if "ostree.linux" not in meta:
        raise BadInput(f"{rev} is not bootable (no ostree.linux metadata): run 'gitree make-bootable' first")
    used_ref = ref or _ref_of(repo, rev)  # before touching the sysroot
    if bootloader == "uboot":
        from . import uboot
        uboot.commit_kernel_arch(repo, commit, str(meta["ostree.linux"]))   # a kernel U-Boot can boot
    elif bootloader is not None:
        raise UsageError(f"unknown boot loader {bootloader!r} (supported: uboot)")
    os.makedirs(sysroot, exist_ok=True)
    ostree_repo = os.path.join(sysroot, "ostree", "repo")
    if not os.path.exists(os.path.join(ostree_repo, "config")):
        _ostree_admin("init-fs", sysroot)
    if not os.path.isdir(os.path.join(sysroot, "ostree", "deploy", osname, "var")):
        _ostree_admin(f"--sysroot={sysroot}", "os-init", osname)
    if bootloader == "uboot":
        uboot.prepare_sysroot(sysroot)
    t0 = time.monotonic()
    res = export_ostree(repo, rev, ostree_repo, ref=used_ref, mode="bare", history=True, progress=progress,
                        **({"warn": warn} if warn is not None else {}))
    t1 = time.monotonic()
    _ostree_admin(f"--sysroot={sysroot}", "deploy", f"--os={osname}", *[f"--karg={k}" for k in kargs], used_ref)
    t2 = time.monotonic()
    deployment = os.path.join(sysroot, "ostree", "deploy", osname, "deploy", res.checksum + ".0")
    entry = None
    for e in read_entries(sysroot):
        target = entry_deployment(sysroot, e)
        if target is not None and os.path.basename(target).startswith(res.checksum + "."):
            entry, deployment = e, target
            break
    if bootloader == "uboot" and entry is not None:
        uboot.install_script(sysroot, os.path.join(sysroot, "boot", entry.fields["linux"].lstrip("/")))
    return DeployResult(res.checksum, used_ref, deployment, entry, t1 - t0, t2 - t1)


def _ref_of(repo: Repo, rev: str) -> str:
    from ..ostree.export import _default_ref
    return _default_ref(repo, rev)


__all__ = ["deploy", "DeployResult", "read_entries", "entry_deployment"]
