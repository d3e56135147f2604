"""The one runner for external programs (git, ostree, gpg, zstd, mkimage, lxc-*, chattr).

`run` raises ToolFailed naming the tool and the last meaningful line of its stderr: for git, the last
`fatal:`/`error:` line when there is one (git prints hints after them); for others the last non-empty line.
A missing program raises ToolFailed too ("X is not installed"). Long-running pipes (decompressors,
`git cat-file --batch`) start with `popen` and end with `wait`, which gives their exit status and the last
meaningful line of their stderr: the caller judges a failure (a decompressor failing on its input is bad
input, not a broken tool).
"""

from __future__ import annotations

import os
import subprocess
from typing import IO, Sequence

from .errors import ToolFailed

PIPE = subprocess.PIPE
TimeoutExpired = subprocess.TimeoutExpired
_GIT_PREFIXES = ("fatal:", "error:", " ! ")


def last_line(stderr: bytes | str, tool: str = "") -> str:
    """The last meaningful line of a tool's stderr, or "" when it printed nothing."""
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if os.path.basename(tool) == "git":
        useful = [ln for ln in lines if ln.startswith(_GIT_PREFIXES) and ln not in ("fatal:", "error:")]
        lines = useful or lines
    return lines[-1] if lines else ""


def failure(cmd: Sequence[str], what: str | None, stderr: bytes | str, returncode: int) -> ToolFailed:
    tool = os.path.basename(cmd[0])
    line = last_line(stderr, tool) or f"{tool} exited with status {returncode}"
    return ToolFailed(f"{what or tool}: {line}", tool=tool, line=line, returncode=returncode)


def popen(cmd: Sequence[str], *, stdin: IO | int | None = None, stdout: IO | int | None = subprocess.PIPE,
          cwd: str | None = None, env: dict | None = None) -> subprocess.Popen:
    """Start `cmd` as a streaming pipe, stderr captured; a missing program raises ToolFailed."""
    tool = os.path.basename(cmd[0])
    try:
        return subprocess.Popen(list(cmd), stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, cwd=cwd, env=env)
    except FileNotFoundError:
        raise ToolFailed(f"{tool} is not installed", tool=tool, line="not installed") from None


def wait(proc: subprocess.Popen, timeout: float | None = None) -> tuple[int, str]:
    """Wait for a `popen`ed program (its stdout read or closed first): (exit status, last meaningful line of its
    stderr, "" when none). `failure(proc.args, what, line, status)` makes the ToolFailed for a broken tool."""
    rc = proc.wait(timeout=timeout)
    err = proc.stderr.read() if proc.stderr is not None and not proc.stderr.closed else b""
    return rc, last_line(err, proc.args[0])


def run(cmd: Sequence[str], *, what: str | None = None, input: bytes | None = None, cwd: str | None = None,
        stdin: IO | None = None, stdout: IO | int | None = subprocess.PIPE, check: bool = True,
        env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `cmd` to completion, stderr captured. `what` prefixes the error message (default: the tool's name).

    With check=False a nonzero exit is returned for the caller to judge (a missing tool still raises)."""
    tool = os.path.basename(cmd[0])
    try:
        r = subprocess.run(list(cmd), input=input, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, cwd=cwd,
                           env=env)
    except FileNotFoundError:
        raise ToolFailed(f"{tool} is not installed", tool=tool, line="not installed") from None
    if check and r.returncode != 0:
        raise failure(cmd, what, r.stderr, r.returncode)
    return r
