"""The main job on a built-in default: a real Debian rootfs through gitree, end to end.

Builds (once, cached: gitree.rootfs) a minimal Debian bookworm root filesystem with mmdebstrap, then runs the
same commands a user would: init, import-rootfs, checkout (tar and directory), log, show, ls, diff, fsck,
and the OSTree export checked by the real `ostree fsck`.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import time

from .rootfs import build_rootfs


def sh(*args: str, check: bool = True, quiet: bool = False) -> subprocess.CompletedProcess:
    print("$ " + " ".join(shlex.quote(a) for a in args), flush=True)
    r = subprocess.run(args, capture_output=quiet, text=True)
    if check and r.returncode != 0:
        sys.exit(f"demo: command failed ({r.returncode}): {' '.join(args)}")
    return r


def gitree(*args: str, **kw) -> subprocess.CompletedProcess:
    return sh(sys.executable, "-m", "gitree", *args, **kw)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gitree.demo", description=__doc__)
    ap.add_argument("--work", default="demo-work", help="working directory (recreated)")
    ap.add_argument("--suite", default="bookworm")
    ap.add_argument("--tar", help="use this rootfs tar instead of building one")
    a = ap.parse_args(argv)
    tar = a.tar or build_rootfs(a.suite)
    if os.path.exists(a.work):
        shutil.rmtree(a.work)
    os.makedirs(a.work)
    repo = os.path.join(a.work, "repo.git")
    t0 = time.monotonic()
    gitree("-C", repo, "init")
    gitree("-C", repo, "import-rootfs", tar, "--branch", f"debian/{a.suite}", "-m", f"Debian {a.suite} minbase")
    gitree("-C", repo, "import-rootfs", tar, "--branch", f"debian/{a.suite}", "-m", "same tree again: no new objects")
    gitree("-C", repo, "log", f"debian/{a.suite}")
    gitree("-C", repo, "show", f"debian/{a.suite}")
    gitree("-C", repo, "ls", "-l", f"debian/{a.suite}", "usr/bin/ping")
    gitree("-C", repo, "ls", "-l", f"debian/{a.suite}", "dev")
    gitree("-C", repo, "diff", f"debian/{a.suite}~1", f"debian/{a.suite}")
    gitree("-C", repo, "checkout", f"debian/{a.suite}", "--tar", os.path.join(a.work, "checkout.tar"))
    gitree("-C", repo, "checkout", f"debian/{a.suite}", os.path.join(a.work, "checkout"))
    gitree("-C", repo, "fsck")
    sh("git", "--git-dir", repo, "fsck", "--strict", "--no-progress")
    sh("git", "--git-dir", repo, "show", f"debian/{a.suite}:rootfs/usr/lib/os-release")
    help_ = gitree("--help", quiet=True)
    if "export-ostree" in help_.stdout:
        ostree_repo = os.path.join(a.work, "ostree-repo")
        gitree("-C", repo, "export-ostree", f"debian/{a.suite}", "--ostree-repo", ostree_repo, "--mode", "archive")
        sh("ostree", f"--repo={ostree_repo}", "fsck")
        sh("ostree", f"--repo={ostree_repo}", "log", f"debian/{a.suite}")
    print(f"demo: done in {time.monotonic() - t0:.1f} s; everything is under {a.work}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
