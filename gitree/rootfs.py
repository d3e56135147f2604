"""The real Debian root filesystem the demo, the tests and the benchmarks use: built once by mmdebstrap from
Debian's packages, cached in $GITREE_CACHE (default ~/.cache/gitree)."""

from __future__ import annotations

import os
import subprocess

from . import tools

CACHE = os.environ.get("GITREE_CACHE", os.path.expanduser("~/.cache/gitree"))
# A small but real Debian root filesystem: minbase, plus packages that carry a file capability
# (iputils-ping: security.capability on /usr/bin/ping) and the tools to inspect it.
ROOTFS_INCLUDE = "iputils-ping,libcap2-bin"


def build_rootfs(suite: str = "bookworm", verbose: bool = True) -> str:
    """A real Debian rootfs tar made by mmdebstrap from Debian's packages; built once, then cached."""
    os.makedirs(CACHE, exist_ok=True)
    tar = os.path.join(CACHE, f"{suite}-minbase-ping.tar")
    if not os.path.exists(tar):
        cmd = ["mmdebstrap", "--variant=minbase", f"--include={ROOTFS_INCLUDE}", "--mode=root", "--quiet",
               suite, tar[:-4] + ".part.tar"]  # mmdebstrap picks the output format from the extension
        if verbose:
            print(f"gitree: building a {suite} minbase rootfs with mmdebstrap (once; cached in {CACHE})",
                  flush=True)
        tools.run(cmd, what="mmdebstrap", stdout=None if verbose else subprocess.DEVNULL)
        os.replace(tar[:-4] + ".part.tar", tar)
    return tar
