"""Behaviour as an unprivileged user, and the progress display on a terminal."""

from __future__ import annotations

import concurrent.futures.thread  # noqa: F401 - imported before dropping privileges (the stdlib is in /root)
import contextlib
import importlib
import io
import json
import os
import pkgutil
import pty
import select
import subprocess
import sys

import pytest

from gitree import cli, porcelain
from gitree.errors import WARNINGS_EXIT, NeedsRoot, Unreadable
from gitree.repo import Repo

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching to another user needs root")


def _preload() -> None:
    """Import every gitree module (and so the stdlib modules they load lazily, e.g. configparser, mmap) while
    the stdlib under /root is still readable."""
    import gitree
    import gitree_compat  # noqa: F401
    for m in pkgutil.walk_packages(gitree.__path__, "gitree."):  # subpackages' modules too
        if m.name != "gitree.__main__":
            importlib.import_module(m.name)


def as_nobody(fn, *args):
    """Run fn(*args) in a forked child with uid/gid 65534 and no groups; return its JSON-able result."""
    _preload()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            # a real user has a home of its own; root's is unreadable now (libgit2 stats ~/.gitconfig)
            os.environ["HOME"] = "/nonexistent"
            import pygit2
            for level in (pygit2.enums.ConfigLevel.GLOBAL, pygit2.enums.ConfigLevel.XDG):
                pygit2.settings.search_path[level] = "/nonexistent"
            out = {"ok": fn(*args)}
        except BaseException as e:  # reported to the parent
            out = {"error": f"{type(e).__name__}: {e}"}
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return json.loads(data)


def _open_to_nobody(path: str) -> None:
    while path != "/":
        st = os.stat(path)
        os.chmod(path, st.st_mode | 0o005)
        path = os.path.dirname(path)


def _import_as_user(repo_path: str, src: str):
    warnings: list[str] = []
    res = porcelain.import_rootfs(Repo(repo_path), src, "main", "m", 0, warn=warnings.append,
                                   skip_unreadable=True)
    return {"commit": res.commit.hex(), "warnings": warnings}


@needs_root
def test_directory_import_as_non_root_captures_what_it_can(work):
    _open_to_nobody(work)
    src = os.path.join(work, "src")
    os.makedirs(os.path.join(src, "private"))
    os.makedirs(os.path.join(src, "pub"))
    for p, mode in (("pub/readable", 0o644), ("secret", 0o600), ("private/inner", 0o644)):
        with open(os.path.join(src, p), "w") as f:
            f.write(p)
        os.chmod(os.path.join(src, p), mode)
    os.chmod(os.path.join(src, "private"), 0o700)
    repo = os.path.join(work, "repo.git")
    Repo.init(repo)
    subprocess.run(["chown", "-R", f"{NOBODY}:{NOBODY}", repo], check=True)
    out = as_nobody(_import_as_user, repo, src)
    assert "ok" in out, out
    warn = " ".join(out["ok"]["warnings"])
    assert "/secret (permission denied)" in warn
    assert "/private (directory listing: Permission denied)" in warn
    paths = [line for line in porcelain.ls(Repo(repo), "main", "", recursive=True)]
    assert "/pub/readable" in paths and "/private" in paths
    assert "/secret" not in paths and "/private/inner" not in paths


def _cli_as_user(argv: list[str]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli._main(argv)
    return {"code": code, "stderr": err.getvalue().splitlines()}


@needs_root
def test_import_of_a_directory_with_unreadable_files_fails_unless_told_to_skip_them(work):
    """An unreadable item fails the import (Unreadable, nothing written), as `ostree commit` fails; with
    --skip-unreadable it is left out with a warning and the exit is 0; adding either --strict (the command's
    or gitree's) makes that warning a failing exit (WARNINGS_EXIT) with nothing written: no branch, no pack."""
    _open_to_nobody(work)
    src = os.path.join(work, "src")
    os.makedirs(src)
    for p, mode in (("readable", 0o644), ("secret", 0o600)):
        with open(os.path.join(src, p), "w") as f:
            f.write(p)
        os.chmod(os.path.join(src, p), mode)
    repo = os.path.join(work, "repo.git")
    Repo.init(repo)
    subprocess.run(["chown", "-R", f"{NOBODY}:{NOBODY}", repo], check=True)
    pack_dir = os.path.join(repo, "objects", "pack")

    def nothing_written():
        assert Repo(repo).branch_tip("s") is None
        assert not any(n.startswith("tmp") for n in (os.listdir(pack_dir) if os.path.isdir(pack_dir) else []))

    out = as_nobody(_cli_as_user, ["-C", repo, "import-rootfs", src, "-b", "s"])["ok"]
    assert out == {"code": Unreadable.exit_code, "stderr": [
        f"gitree: error: could not read 1 item(s) of {src}: /secret (permission denied); nothing was imported "
        "(--skip-unreadable imports the rest)"]}, out
    nothing_written()
    want_warning = "gitree: warning: could not read 1 item(s), not captured: /secret (permission denied)"
    for argv in (["-C", repo, "import-rootfs", src, "-b", "s", "--skip-unreadable", "--strict"],
                 ["-C", repo, "--strict", "import-rootfs", src, "-b", "s", "--skip-unreadable"]):
        out = as_nobody(_cli_as_user, argv)["ok"]
        assert out["code"] == WARNINGS_EXIT, out
        assert out["stderr"][-1] == "gitree: error: --strict: 1 warning(s) above; nothing was imported", out
        assert want_warning in out["stderr"], out
        nothing_written()
    out = as_nobody(_cli_as_user, ["-C", repo, "import-rootfs", src, "-b", "s", "--skip-unreadable"])["ok"]
    assert out["code"] == 0, out
    assert [line for line in out["stderr"] if line.startswith("gitree: warning:")] == [want_warning], out
    assert list(porcelain.ls(Repo(repo), "s", "", recursive=True)) == ["/", "/readable"]


@needs_root
def test_root_only_commands_refuse_with_needs_root(work):
    _open_to_nobody(work)
    repo = os.path.join(work, "repo.git")
    Repo.init(repo)
    subprocess.run(["chown", "-R", f"{NOBODY}:{NOBODY}", repo], check=True)
    sysroot, lxcpath = os.path.join(work, "sysroot"), os.path.join(work, "lxc")
    for argv, says in (
            (["deploy", "main", "--sysroot", sysroot, "--os", "debian"],
             "deploy writes a bare OSTree repository (file owners) and must run as root"),
            (["lxc-create", "c1", "main", "--lxcpath", lxcpath],
             "lxc-create deploys into a bare OSTree repository and runs LXC: run it as root")):
        out = as_nobody(_cli_as_user, ["-C", repo, *argv])["ok"]
        assert out == {"code": NeedsRoot.exit_code, "stderr": [f"gitree: error: {says}"]}, out
    assert not os.path.exists(sysroot) and not os.path.exists(lxcpath)


def _checkout_as_user(repo_path: str, dest: str):
    report = porcelain.checkout_dir(Repo(repo_path), "main", dest)
    return report.lines()


@needs_root
def test_checkout_as_non_root_says_what_it_could_not_restore(work):
    _open_to_nobody(work)
    src = os.path.join(work, "src")
    os.makedirs(src)
    with open(os.path.join(src, "owned"), "w") as f:
        f.write("x")
    os.chown(os.path.join(src, "owned"), 1234, 1234)
    os.setxattr(os.path.join(src, "owned"), "trusted.label", b"v")
    os.setxattr(os.path.join(src, "owned"), "user.ok", b"fine")
    os.mknod(os.path.join(src, "null"), 0o20666, os.makedev(1, 3))
    os.mkfifo(os.path.join(src, "fifo"))
    repo = os.path.join(work, "repo.git")
    porcelain.import_rootfs(Repo.init(repo), src, "main", "m", 0)
    dest_parent = os.path.join(work, "out")
    os.makedirs(dest_parent)
    os.chown(dest_parent, NOBODY, NOBODY)
    dest = os.path.join(dest_parent, "dest")
    out = as_nobody(_checkout_as_user, repo, dest)
    assert "ok" in out, out
    lines = "\n".join(out["ok"])
    assert "could not restore ownership" in lines
    assert "could not restore char node for 1 item(s), e.g. /null" in lines
    assert "could not restore xattr trusted.label for 1 item(s), e.g. /owned" in lines
    # what an unprivileged user can restore is restored
    assert os.getxattr(os.path.join(dest, "owned"), "user.ok") == b"fine"
    assert os.path.exists(os.path.join(dest, "fifo"))


def _run_on_pty(args: list[str]) -> bytes:
    """Run the CLI with its stderr on a pseudo-terminal; return what the terminal received."""
    master, slave = pty.openpty()
    p = subprocess.Popen([sys.executable, "-m", "gitree", *args], stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    out = b""
    while True:
        ready, _, _ = select.select([master], [], [], 30)
        if not ready:
            break
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    p.wait()
    os.close(master)
    assert p.returncode == 0, out
    return out


def test_progress_on_a_terminal_and_quiet(work, rootfs_tar):
    repo = os.path.join(work, "repo.git")
    Repo.init(repo)
    shown = _run_on_pty(["-C", repo, "import-rootfs", rootfs_tar, "--branch", "a"])
    assert b"import: " in shown and b" files, " in shown and b"MiB" in shown and b"\r" in shown
    shown = _run_on_pty(["-C", repo, "checkout", "a", "--tar", os.path.join(work, "o.tar")])
    assert b"checkout: " in shown and b" files, " in shown
    quiet = _run_on_pty(["-q", "-C", repo, "import-rootfs", rootfs_tar, "--branch", "b"])
    assert b"import: " not in quiet
    # not a terminal: no progress either
    r = subprocess.run([sys.executable, "-m", "gitree", "-C", repo, "import-rootfs", rootfs_tar, "--branch", "c"],
                       capture_output=True)
    assert b"\r" not in r.stderr and b"import: " not in r.stderr
