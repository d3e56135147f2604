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
        # git's object check (transfer.fsckObjects) says what is wrong first, then "index-pack failed"
        fsck = [ln for ln in lines if ln.startswith("error: object ") and ": " in ln[14:]]
        if fsck:
            return fsck[0]
        useful = [ln for ln in lines if ln.startswith(_GIT_PREFIXES) and ln not in ("fatal:", "error:")]
        lines = useful or lines
    return lines[-1] if lines else ""


def failure(cmd: Sequence[str], what: str | None, stderr: bytes | str, returncode: int) -> ToolFailed:
    tool = os.path.basename(cmd[0])
    line = last_line(stderr, tool) or f"{tool} exited with status {returncode}"
    return ToolFailed(f"{what or tool}: {line}", tool=tool, line=line, returncode=returncode)


def wait(proc: subprocess.Popen, timeout: float | None = None) -> tuple[int, str]:
    """Wait for a `popen`ed program (its stdout read or closed first): (exit status, last meaningful line of its
    stderr, "" when none). `failure(proc.args, what, line, status)` makes the ToolFailed for a broken tool."""
    done = getattr(proc, "gitree_result", None)
    if done is not None:
        return done
    rc = proc.wait(timeout=timeout)
    err = proc.gitree_stderr
    err.seek(0)
    data = err.read()
    err.close()
    proc.gitree_result = (rc, last_line(data, proc.args[0]))
    return proc.gitree_result


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


# -- long-running pipes: a tool whose output is read while it runs -----------------------------------------

def popen(cmd: Sequence[str], *, stdin: IO | int | None = None, stdout: IO | int | None = subprocess.PIPE,
          cwd: str | None = None, env: dict | None = None) -> subprocess.Popen:
    """Start `cmd` to stream its output (stdout a pipe unless given). Its stderr goes to an unnamed temporary
    file, so a tool that writes much there never blocks; `finish` reads it back. A missing program raises
    ToolFailed as `run` does."""
    import tempfile
    tool = os.path.basename(cmd[0])
    err = tempfile.TemporaryFile()
    try:
        proc = subprocess.Popen(list(cmd), stdin=stdin, stdout=stdout, stderr=err, cwd=cwd, env=env)
    except FileNotFoundError:
        err.close()
        raise ToolFailed(f"{tool} is not installed", tool=tool, line="not installed") from None
    proc.gitree_stderr = err
    return proc


def finish(proc: subprocess.Popen) -> tuple[int, bytes]:
    """Close a `popen` tool's stdout (a tool still writing gets SIGPIPE), wait for it, and return its exit
    status and stderr. The caller judges the status: `raise failure(cmd, what, err, rc)` when it must be 0."""
    if proc.stdout is not None:
        proc.stdout.close()
    rc = proc.wait()
    err = proc.gitree_stderr
    err.seek(0)
    data = err.read()
    err.close()
    return rc, data
