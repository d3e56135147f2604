"""LXC containers that run an OSTree deployment as a board boots it, with LXC hooks in the initramfs' role.

A container NAME lives in LXCPATH/NAME:

    config          the LXC configuration (written by create)
    sysroot/        an OSTree sysroot that belongs to the container: gitree.boot.deploy writes it with the
                    real `ostree admin`, so upgrade, rollback and undeploy work as on a board
    rootfs/         an empty directory: LXC's rootfs.path, the mount point the hooks fill
    gitree-hook     the hook program (POSIX sh, written by create), registered for pre-mount, mount,
                    stop and destroy

* pre-mount (in the container's mount namespace, before LXC mounts the root): reads the default boot
  entry of the sysroot (boot/loader/entries, the highest `version`, as a boot loader would), takes the
  deployment from its `ostree=` argument and mounts what ostree-prepare-root mounts in the initramfs:
  the deployment as the root, `/usr` read-only, the deployment's own `/etc` (writable), the
  stateroot's `/var`, and the physical root at `/sysroot`.
* mount (after LXC's proc/sys/cgroup mounts): makes the container look booted: the entry's options
  (the --karg arguments and `ostree=`) over `/proc/cmdline`, a tmpfs on `/run` with `/run/ostree-booted`.
* stop: nothing is mounted in the host's namespace, so it only logs; destroy: `chattr -i` on every
  deployment root (ostree marks them immutable) so that lxc-destroy can remove the directory.

AppArmor: LXC's `generated` profile where the host has AppArmor enabled; `unconfined`, with a note in
the config, where it does not (LXC refuses `generated` without AppArmor).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass

from .. import tools
from .deploy import DeployResult, deploy
from ..errors import BadInput, NeedsRoot, TargetExists, TimedOut, ToolFailed, UsageError
from ..outfile import atomic_output
from ..repo import Repo

DEFAULT_LXCPATH = "/var/lib/lxc"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
OSNAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
HOOK_NAME = "gitree-hook"

HOOK = r"""#!/bin/sh
# gitree LXC hook: does the OSTree initramfs' work for this container (written by `gitree lxc-create`).
# LXC calls it as: gitree-hook NAME lxc SECTION (pre-mount, mount, stop, destroy).
set -eu
here=$(dirname "$(readlink -f "$0")")
sysroot="$here/sysroot"
section="${3:-}"
say() { echo "gitree-hook $section: $*" >&2; }

# the default boot entry (highest version), as a boot loader picks it; prints its options
default_options() {
    best=""; bestv=-1
    for f in "$sysroot"/boot/loader/entries/*.conf; do
        [ -f "$f" ] || continue
        v=$(awk '$1 == "version" { print $2; exit }' "$f")
        case "$v" in ''|*[!0-9]*) continue ;; esac
        if [ "$v" -gt "$bestv" ]; then bestv=$v; best=$f; fi
    done
    [ -n "$best" ] || { say "no boot entry in $sysroot/boot/loader/entries"; exit 1; }
    awk '$1 == "options" { $1 = ""; sub(/^ /, ""); print; exit }' "$best"
}

deployment() {
    arg=""
    for a in $(default_options); do
        case "$a" in ostree=*) arg=${a#ostree=} ;; esac
    done
    case "$arg" in
        /ostree/boot.[01]/*) ;;
        *) say "no usable ostree= argument in the default boot entry"; exit 1 ;;
    esac
    d=$(readlink -f "$sysroot$arg")
    case "$d" in
        "$sysroot"/ostree/deploy/*/deploy/*.[0-9]*) ;;
        *) say "ostree=$arg does not lead to a deployment ($d)"; exit 1 ;;
    esac
    [ -d "$d/usr" ] || { say "$d is not a deployment"; exit 1; }
    echo "$d"
}

case "$section" in
pre-mount)
    root="$LXC_ROOTFS_PATH"
    case "$root" in dir:*) root=${root#dir:} ;; esac
    dep=$(deployment)
    stateroot=$(dirname "$(dirname "$dep")")
    mount --bind "$dep" "$root"
    mount --bind "$root/usr" "$root/usr"
    mount -o remount,bind,ro "$root/usr"
    mount --bind "$stateroot/var" "$root/var"
    mount --bind "$sysroot" "$root/sysroot"
    # /boot is the sysroot's boot directory, as ostree-prepare-root binds it when it is not a partition
    if [ -L "$sysroot/boot/loader" ]; then mount --bind "$sysroot/boot" "$root/boot"; fi
    say "root $dep (/usr read-only, /etc of the deployment, /var of $(basename "$stateroot"), /sysroot)"
    ;;
mount)
    root="$LXC_ROOTFS_MOUNT"
    mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$root/run"
    : > "$root/run/ostree-booted"
    default_options > "$root/run/gitree-cmdline"
    mount --bind "$root/run/gitree-cmdline" "$root/proc/cmdline"
    ;;
stop)
    say "stopped (the mounts lived in the container's namespace)"
    ;;
destroy)
    for d in "$sysroot"/ostree/deploy/*/deploy/*.[0-9]*; do
        if [ -d "$d" ] && [ ! -L "$d" ]; then chattr -i "$d"; fi
    done
    say "cleared the immutable flag of the deployment roots"
    ;;
*)
    say "unknown hook section"; exit 1 ;;
esac
"""


@dataclass
class Container:
    name: str
    path: str

    @property
    def sysroot(self) -> str:
        return os.path.join(self.path, "sysroot")

    @property
    def config(self) -> str:
        return os.path.join(self.path, "config")


def _container(name: str, lxcpath: str) -> Container:
    if not NAME_RE.fullmatch(name):
        raise UsageError(f"bad container name {name!r} (letters, digits, '_', '.', '-'; at most 64)")
    return Container(name, os.path.join(os.path.abspath(lxcpath), name))


def apparmor_enabled() -> bool:
    try:
        with open("/sys/module/apparmor/parameters/enabled") as f:
            return f.read().strip() == "Y" and os.path.isdir("/sys/kernel/security/apparmor")
    except OSError:
        return False


def config_text(c: Container, osname: str, apparmor: bool) -> str:
    hook = os.path.join(c.path, HOOK_NAME)
    if apparmor:
        aa = "lxc.apparmor.profile = generated\nlxc.apparmor.allow_nesting = 1\n"
    else:
        aa = ("# AppArmor is not enabled on this host (no /sys/kernel/security/apparmor): LXC cannot load its\n"
              "# generated profile, so the container runs unconfined. On an AppArmor host, gitree lxc-create\n"
              "# writes lxc.apparmor.profile = generated.\nlxc.apparmor.profile = unconfined\n")
    return f"""# written by gitree lxc-create: OSTree stateroot {osname} in {c.sysroot}
lxc.uts.name = {c.name}
lxc.include = /usr/share/lxc/config/common.conf
lxc.rootfs.path = dir:{os.path.join(c.path, "rootfs")}
lxc.init.cmd = /sbin/init
lxc.mount.auto = proc:mixed sys:mixed cgroup:mixed
lxc.autodev = 1
lxc.net.0.type = empty
lxc.hook.pre-mount = {hook}
lxc.hook.mount = {hook}
lxc.hook.stop = {hook}
lxc.hook.destroy = {hook}
{aa}"""


def _write(path: str, data: str, mode: int) -> None:
    with atomic_output(path, mode) as f:
        f.write(data.encode("utf-8"))
        os.fchmod(f.fileno(), mode)     # exactly this mode: the hook must be executable whatever the umask


def create(repo: Repo, name: str, rev: str, lxcpath: str = DEFAULT_LXCPATH, osname: str = "debian",
           kargs: tuple[str, ...] = (), ref: str | None = None, warn=None,
           progress=None) -> tuple[Container, DeployResult]:
    if os.geteuid() != 0:
        raise NeedsRoot("lxc-create deploys into a bare OSTree repository and runs LXC: run it as root")
    if not OSNAME_RE.fullmatch(osname):
        raise UsageError(f"bad OS name {osname!r}")
    c = _container(name, lxcpath)
    if os.path.lexists(c.path):
        raise TargetExists(f"{c.path} exists: container {name} already exists (gitree lxc-destroy {name})")
    repo.resolve(rev)                      # refuse a bad REV before creating anything
    os.makedirs(c.path, mode=0o700)
    try:
        os.makedirs(os.path.join(c.path, "rootfs"))
        res = deploy(repo, rev, c.sysroot, osname, ref, kargs, warn=warn, progress=progress)
        _write(os.path.join(c.path, HOOK_NAME), HOOK, 0o755)
        _write(c.config, config_text(c, osname, apparmor_enabled()), 0o644)
    except BaseException:
        _remove_tree(c)
        raise
    return c, res


def upgrade(repo: Repo, name: str, rev: str, lxcpath: str = DEFAULT_LXCPATH, ref: str | None = None,
            kargs: tuple[str, ...] = (), warn=None, progress=None) -> DeployResult:
    """Deploy REV into the container's sysroot: the next start runs it (the previous one stays for rollback)."""
    c = _existing(name, lxcpath)
    osname = _osname(c)
    return deploy(repo, rev, c.sysroot, osname, ref, kargs, warn=warn, progress=progress)


def destroy(name: str, lxcpath: str = DEFAULT_LXCPATH) -> str | None:
    """Stop and remove the container with the real lxc-destroy (its destroy hook clears the immutable
    deployment roots). Returns None, or a note when lxc-destroy failed and gitree removed what it left."""
    c = _existing(name, lxcpath)
    r = tools.run(["lxc-destroy", "-n", name, "-P", os.path.dirname(c.path), "-f"], check=False)
    if not os.path.lexists(c.path) and r.returncode == 0:
        return None
    _remove_tree(c)
    msg = tools.last_line(r.stderr) or f"exit status {r.returncode}"
    if os.path.lexists(c.path):
        raise ToolFailed(f"lxc-destroy {name}: {msg}; could not remove {c.path}", tool="lxc-destroy", line=msg,
                         returncode=r.returncode)
    return f"lxc-destroy failed ({msg}); removed {c.path} after clearing the immutable deployment roots"


def _existing(name: str, lxcpath: str) -> Container:
    c = _container(name, lxcpath)
    if not os.path.isfile(c.config) or not os.path.isdir(os.path.join(c.sysroot, "ostree", "deploy")):
        raise BadInput(f"{c.path} is not a container made by gitree lxc-create")
    return c


def _osname(c: Container) -> str:
    names = sorted(os.listdir(os.path.join(c.sysroot, "ostree", "deploy")))
    if len(names) != 1:
        raise BadInput(f"{c.sysroot} has {len(names)} staterooots; expected one")
    return names[0]


def _remove_tree(c: Container) -> None:
    deploy_root = os.path.join(c.sysroot, "ostree", "deploy")
    if os.path.isdir(deploy_root):
        for osname in os.listdir(deploy_root):
            d = os.path.join(deploy_root, osname, "deploy")
            for name in os.listdir(d) if os.path.isdir(d) else []:
                p = os.path.join(d, name)
                if os.path.isdir(p) and not os.path.islink(p):
                    tools.run(["chattr", "-i", p], check=False)
    shutil.rmtree(c.path, ignore_errors=True)


def wait_for(name: str, lxcpath: str, target: str = "multi-user.target", timeout: float = 300) -> float:
    """Seconds until the container's systemd reports TARGET active (lxc-attach systemctl is-active)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        r = tools.run(["lxc-attach", "-n", name, "-P", lxcpath, "--", "systemctl", "is-active", target],
                      check=False)
        if r.stdout.strip() == b"active":
            return time.monotonic() - t0
        time.sleep(0.5)
    raise TimedOut(f"{name}: {target} not active after {timeout:.0f} s")


__all__ = ["create", "upgrade", "destroy", "config_text", "apparmor_enabled", "wait_for", "DEFAULT_LXCPATH"]
