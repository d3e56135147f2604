"""LXC: `gitree lxc-create/lxc-upgrade/lxc-destroy` with Debian's real LXC and the boot test's Debian tree.

The container's own systemd boots the deployment that the hooks mount as ostree-prepare-root would;
`ostree admin status` inside sees it booted; an upgrade runs at the next start with /etc merged and /var kept.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time

import pytest
from helpers import run_gitree

from gitree import api
from gitree.boot.lxc import wait_for
from gitree.errors import BadInput, NotFound, UsageError

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="LXC containers and bare OSTree repositories need root")


def attach(name: str, lxcpath: str, script: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["lxc-attach", "-n", name, "-P", lxcpath, "--", "sh", "-c", script], capture_output=True,
                       text=True)
    if check and r.returncode != 0:
        raise AssertionError(f"lxc-attach {script!r}: {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def lxc(*args: str) -> None:
    r = subprocess.run(list(args), capture_output=True, text=True)
    assert r.returncode == 0, f"{' '.join(args)}: {r.stderr}"


def start(name: str, lxcpath: str) -> float:
    t0 = time.monotonic()
    lxc("lxc-start", "-n", name, "-P", lxcpath, "-l", "INFO", "-o", os.path.join(lxcpath, name + ".log"))
    wait_for(name, lxcpath, "multi-user.target", timeout=300)
    return time.monotonic() - t0


def test_lxc_container_boots_upgrades_and_is_destroyed(bootable_repo, tmpfs_root):
    repo, _ = bootable_repo
    lxcpath = tempfile.mkdtemp(prefix="lxc-", dir=tmpfs_root)
    name = "gitree-t"
    cdir = os.path.join(lxcpath, name)
    t0 = time.monotonic()
    c1 = api.lxc_create(repo, name, "debian/boot~1", ref="debian/boot", lxcpath=lxcpath,
                        kargs=["quiet", "gitree.test=1"]).deploy.checksum
    t_create = time.monotonic() - t0
    try:
        with open(os.path.join(cdir, "config")) as f:
            config = f.read()
        assert f"lxc.rootfs.path = dir:{cdir}/rootfs" in config and "lxc.init.cmd = /sbin/init" in config
        assert "lxc.net.0.type = empty" in config
        for section in ("pre-mount", "mount", "stop", "destroy"):
            assert f"lxc.hook.{section} = {cdir}/gitree-hook" in config
        aa = os.path.isdir("/sys/kernel/security/apparmor")
        assert ("lxc.apparmor.profile = generated" if aa else "lxc.apparmor.profile = unconfined") in config
        # the container's sysroot, deployed by the real ostree admin
        status = subprocess.run(["ostree", "admin", f"--sysroot={cdir}/sysroot", "status"], check=True,
                                capture_output=True, text=True).stdout
        assert c1 in status

        t_start1 = start(name, lxcpath)
        inside = attach(name, lxcpath, "cat /proc/cmdline; test -e /run/ostree-booted && echo booted; "
                        "touch /usr/gitree-probe 2>/dev/null && echo usr-writable || echo usr-readonly; "
                        "touch /etc/gitree-probe && echo etc-writable; ostree admin status; "
                        "echo state > /var/lib/gitree-state; echo local > /etc/gitree-local; "
                        "systemctl is-active gitree-boot-marker.service || true").stdout
        lines = inside.splitlines()
        assert lines[0].startswith("quiet gitree.test=1 ostree=/ostree/boot.1/debian/"), inside
        assert "booted" in lines and "usr-readonly" in lines and "etc-writable" in lines, inside
        assert f"* debian {c1}.0" in inside, inside
        # /var is the stateroot's: what the container writes there is in the sysroot on the host
        with open(os.path.join(cdir, "sysroot/ostree/deploy/debian/var/lib/gitree-state")) as f:
            assert f.read() == "state\n"
        assert os.path.isfile(os.path.join(cdir, f"sysroot/ostree/deploy/debian/deploy/{c1}.0/etc/gitree-local"))
        # the deployment's own systemd ran its units (the boot test's marker service is enabled)
        journal = attach(name, lxcpath, "journalctl -b --no-pager -u gitree-boot-marker.service").stdout
        assert "Finished gitree-boot-marker.service" in journal, journal

        # upgrade: the next start runs version 2, /etc merged, /var kept
        t0 = time.monotonic()
        c2 = api.lxc_upgrade(repo, name, "debian/boot", lxcpath=lxcpath).deploy.checksum
        t_upgrade = time.monotonic() - t0
        assert c2 != c1
        assert f"* debian {c1}.0" in attach(name, lxcpath, "ostree admin status").stdout   # still running v1
        lxc("lxc-stop", "-n", name, "-P", lxcpath)
        t_start2 = start(name, lxcpath)
        inside = attach(name, lxcpath, "ostree admin status; cat /etc/gitree-local /var/lib/gitree-state; "
                        "grep -o 'ostree=[^ ]*' /proc/cmdline; . /usr/lib/os-release; echo id=$ID").stdout
        assert f"* debian {c2}.0" in inside and f"{c1}.0 (rollback)" in inside, inside
        assert "Version: 12.1" in inside and "local\nstate\n" in inside and "id=debian" in inside, inside
        assert "ostree=/ostree/boot.0/debian/" in inside, inside

        # rollback as on a board: undeploy the new one; the next start runs version 1 again
        lxc("lxc-stop", "-n", name, "-P", lxcpath)
        subprocess.run(["ostree", "admin", f"--sysroot={cdir}/sysroot", "undeploy", "0"], check=True,
                       capture_output=True)
        start(name, lxcpath)
        inside = attach(name, lxcpath, "ostree admin status; cat /var/lib/gitree-state").stdout
        assert f"* debian {c1}.0" in inside and c2 not in inside and "state" in inside, inside
        print(f"\nLXC: create {t_create:.1f} s, start to multi-user.target {t_start1:.1f} s, "
              f"upgrade {t_upgrade:.1f} s, restart to multi-user.target {t_start2:.1f} s")
    finally:
        try:
            destroyed = api.lxc_destroy(name, lxcpath=lxcpath)
        except api.GitreeError as e:
            destroyed = e
    assert isinstance(destroyed, api.LxcDestroyResult) and destroyed.warnings == [], destroyed  # hook did chattr -i
    assert not os.path.exists(cdir)


def test_lxc_create_refuses_bad_input(bootable_repo, tmpfs_root):
    repo, _ = bootable_repo
    lxcpath = tempfile.mkdtemp(prefix="lxc-bad-", dir=tmpfs_root)
    for args, msg, cls in ((["../x", "debian/boot"], "bad container name", UsageError),
                           (["ok", "no/such/branch"], "gitree: error:", NotFound),
                           (["ok", "debian/rootfs"], "not bootable", BadInput),
                           (["ok", "debian/boot", "--os", "a/b"], "bad OS name", UsageError)):
        if args[0] == "../x":  # the command line: one error line
            r = run_gitree("-C", repo, "lxc-create", *args, "--lxcpath", lxcpath, check=False)
            err = r.stderr.decode().strip().splitlines()
            assert r.returncode == cls.exit_code and len(err) == 1 and msg in err[0], (args, err)
        else:
            kw = {"osname": args[3]} if len(args) > 2 else {}
            with pytest.raises(cls) as e:
                api.lxc_create(repo, args[0], args[1], lxcpath=lxcpath, **kw)
            assert msg == "gitree: error:" or msg in str(e.value), (args, str(e.value))
    assert os.listdir(lxcpath) == []
    with pytest.raises(api.GitreeError, match="not a container made by gitree lxc-create"):
        api.lxc_upgrade(repo, "nope", "debian/boot", lxcpath=lxcpath)
