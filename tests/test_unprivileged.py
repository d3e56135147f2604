"""Behaviour as an unprivileged user, and the progress display on a terminal."""

from __future__ import annotations

import concurrent.futures.thread  # noqa: F401 - imported before dropping privileges (the stdlib is in /root)
import json
import os
import pty
import select
import subprocess
import sys

import pytest

from gitree import porcelain
from gitree.repo import Repo

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching to another user needs root")


def as_nobody(fn, *args):
    """Run fn(*args) in a forked child with uid/gid 65534 and no groups; return its JSON-able result."""
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
    res = porcelain.import_rootfs(Repo(repo_path), src, "main", "m", 0, warn=warnings.append)
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
