"""Measuring primitives: timed child processes (wall, CPU, peak RSS from wait4), sizes on disk, the machine."""

from __future__ import annotations

import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass


class CommandFailed(Exception):
    def __init__(self, cmd: list[str], rc: int, output: str):
        self.cmd, self.rc, self.output = cmd, rc, output
        tail = " | ".join(output.strip().splitlines()[-3:])
        super().__init__(f"{shlex.join(cmd)} exited {rc}: {tail}")


@dataclass
class Timing:
    wall_s: float
    cpu_s: float        # user + system of the child and every descendant it waited for
    user_s: float
    sys_s: float
    peak_rss_mib: float  # ru_maxrss of the largest process in the tree

    def as_dict(self) -> dict:
        return {k: round(v, 3) for k, v in asdict(self).items()}


# ru_maxrss of a child counts the address space it was forked from: at exec the kernel keeps the larger of
# the old image's peak and the new one's. A child forked straight from this process (or from pytest, which
# holds far more) would carry the parent's size in its figure. So the command is started by a small spawner
# (python -S, about 10 MiB) that reports the command's own wall time and rusage, and nothing of the parent.
_SPAWNER = """
import os, signal, sys, time
report, argv = sys.argv[1], sys.argv[2:]
t0 = time.perf_counter()
pid = os.posix_spawnp(argv[0], argv, os.environ, setsigdef=(signal.SIGPIPE, signal.SIGXFSZ))
_, status, ru = os.wait4(pid, 0)
wall = time.perf_counter() - t0
with open(report, "w") as f:
    f.write("%r %r %r %d" % (wall, ru.ru_utime, ru.ru_stime, ru.ru_maxrss))
if os.WIFSIGNALED(status):   # end as the command did: by its signal, handled or ignored here or not
    try:
        signal.signal(os.WTERMSIG(status), signal.SIG_DFL)
    except (OSError, ValueError):
        pass
    os.kill(os.getpid(), os.WTERMSIG(status))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def measured(cmd: list[str], report: str) -> list[str]:
    """`cmd` run by the spawner, which writes the command's own figures to the file `report` (read_measure)."""
    return [sys.executable, "-S", "-c", _SPAWNER, report, *cmd]


def read_measure(report: str) -> Timing:
    with open(report) as f:
        wall, user, system, maxrss = f.read().split()
    return Timing(float(wall), float(user) + float(system), float(user), float(system), int(maxrss) / 1024)


def run_timed(cmd: list[str], cwd: str | None = None, env: dict | None = None,
              stdin_path: str | None = None, stdout_path: str | None = None) -> tuple[Timing, str]:
    """Run `cmd` to completion and measure it with wait4 (through the spawner above); returns the timing and
    its stdout (if not redirected).

    Output goes to files, not pipes, so nothing in this process competes with the child while it runs.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile(prefix="measure-") as report:
        stdin = open(stdin_path, "rb") if stdin_path else subprocess.DEVNULL
        stdout = open(stdout_path, "wb") if stdout_path else out
        try:
            p = subprocess.Popen(measured(cmd, report.name), cwd=cwd, env=env, stdin=stdin, stdout=stdout,
                                 stderr=err)
            p.wait()
        finally:
            if stdin_path:
                stdin.close()
            if stdout_path:
                stdout.close()
        out.seek(0)
        err.seek(0)
        text = out.read().decode("utf-8", "replace")
        if p.returncode != 0:
            raise CommandFailed(cmd, p.returncode, err.read().decode("utf-8", "replace") + text)
        return read_measure(report.name), text


def run(cmd: list[str], cwd: str | None = None, env: dict | None = None, input: bytes | None = None) -> str:
    r = subprocess.run(cmd, cwd=cwd, env=env, input=input, capture_output=True)
    if r.returncode != 0:
        raise CommandFailed(cmd, r.returncode, r.stderr.decode("utf-8", "replace"))
    return r.stdout.decode("utf-8", "replace")


def tree_size(path: str) -> dict:
    """du-style size of a tree: allocated blocks and apparent bytes, each inode counted once; file count."""
    seen: set[tuple[int, int]] = set()
    blocks = apparent = files = 0
    stack = [path]
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except FileNotFoundError:
            continue
        with it:
            for e in it:
                st = e.stat(follow_symlinks=False)
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
                blocks += st.st_blocks * 512
                apparent += st.st_size
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                else:
                    files += 1
    return {"du_bytes": blocks, "apparent_bytes": apparent, "files": files}


def filesystem_of(path: str) -> dict:
    """Which filesystem `path` is on (from /proc/mounts, longest matching mount point)."""
    path = os.path.realpath(path)
    best = ("", "?", "?")
    with open("/proc/mounts") as f:
        for line in f:
            dev, mnt, fstype = line.split()[:3]
            mnt = mnt.replace("\\040", " ")
            if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best[0]):
                best = (mnt, fstype, dev)
    return {"path": path, "mount": best[0], "fstype": best[1], "device": best[2]}


def _first_line(cmd: list[str]) -> str:
    try:
        return run(cmd).strip().splitlines()[0]
    except (OSError, CommandFailed, IndexError) as e:
        return f"unavailable: {e}"


def machine() -> dict:
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(re.search(r"MemTotal:\s+(\d+)", f.read()).group(1))
    return {"cpu_model": cpu, "cores": os.cpu_count(), "ram_gib": round(mem_kib / 2**20, 1),
            "kernel": platform.release(), "os": _first_line(["sh", "-c", ". /etc/os-release; echo $PRETTY_NAME"])}


def tool_versions() -> dict:
    import pygit2
    ostree = run(["ostree", "--version"])
    m = re.search(r"Version:\s*'?([\w.]+)", ostree)
    return {
        "ostree": m.group(1) if m else ostree.strip()[:40],
        "git": _first_line(["git", "--version"]).replace("git version ", ""),
        "pygit2": pygit2.__version__,
        "libgit2": ".".join(map(str, pygit2.LIBGIT2_VER)),
        "python": platform.python_version(),
        "zstd": _first_line(["zstd", "--version"]),
        "mmdebstrap": _first_line(["mmdebstrap", "--version"]),
        "gitree": _first_line([sys.executable, "-c", "import importlib.metadata as m; print(m.version('gitree'))"]),
        "gitree_source": gitree_source(),
    }


def gitree_source() -> str:
    """Which gitree the `gitree` on PATH runs: its package directory and the git commit it comes from."""
    try:
        where = run([sys.executable, "-c",
                     "import gitree, os; print(os.path.dirname(os.path.realpath(gitree.__file__)))"])
    except (OSError, CommandFailed):
        return "unknown"
    where = where.strip()
    try:
        commit = run(["git", "-C", where, "rev-parse", "HEAD"]).strip()
        dirty = run(["git", "-C", where, "status", "--porcelain", "--", "."]).strip()
    except (OSError, CommandFailed):
        return where
    return f"{where} @ {commit}{' (with uncommitted changes)' if dirty else ''}"
