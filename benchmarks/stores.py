"""The stores under comparison, each driven through its real command line: gitree, plain git, OSTree.

Every method that a benchmark times returns a `Timing`; sizes are read from disk after the fact.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass

from .measure import CommandFailed, Timing, run, run_timed, tree_size

GIT_ENV = {
    "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@localhost",
    "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@localhost",
    "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null",
}


def git_env(timestamp: int | None = None) -> dict:
    env = dict(os.environ, **GIT_ENV)
    if timestamp is not None:
        env["GIT_AUTHOR_DATE"] = env["GIT_COMMITTER_DATE"] = f"@{timestamp} +0000"
    return env


def wipe(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# git repositories (gitree's and plain git's)

def git_objects(git_dir: str) -> int:
    out = run(["git", "--git-dir", git_dir, "count-objects", "-v"])
    f = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
    return int(f.get("count", 0)) + int(f.get("in-pack", 0))


def git_size(git_dir: str) -> dict:
    """Size of the object store (objects/), plus the object count."""
    s = tree_size(os.path.join(git_dir, "objects"))
    return {"du_bytes": s["du_bytes"], "apparent_bytes": s["apparent_bytes"], "objects": git_objects(git_dir)}


def repack(git_dir: str, window: int, depth: int, full: bool) -> Timing:
    cmd = ["git", "--git-dir", git_dir, "repack", "-a", "-d", "-q", f"--window={window}", f"--depth={depth}"]
    if full:
        cmd.insert(5, "-f")
    return run_timed(cmd, env=git_env())[0]


def borrow_objects(git_dir: str, from_git: str) -> None:
    """Let git_dir read every object of from_git (git alternates): no copy, and `repack -a` still packs them."""
    info = os.path.join(git_dir, "objects", "info")
    os.makedirs(info, exist_ok=True)
    with open(os.path.join(info, "alternates"), "w") as f:
        f.write(os.path.join(os.path.abspath(from_git), "objects") + "\n")


def copy_branches(src_git: str, dst_git: str) -> None:
    for ref_line in run(["git", "--git-dir", src_git, "for-each-ref", "--format=%(objectname) %(refname)",
                         "refs/heads/"]).splitlines():
        oid, ref = ref_line.split()
        run(["git", "--git-dir", dst_git, "update-ref", ref, oid])


def reachable_breakdown(git_dir: str) -> dict:
    """On-disk bytes of every reachable object, split by top-level tree of gitree's layout (meta/, rootfs/...)."""
    listing = run(["git", "--git-dir", git_dir, "rev-list", "--objects", "--all"])
    top_of: dict[str, str] = {}
    for line in listing.splitlines():
        oid, _, path = line.partition(" ")
        top_of[oid] = path.split("/", 1)[0] if path else "(commits)"
    out = run(["git", "--git-dir", git_dir, "cat-file", "--batch-check=%(objectname) %(objectsize) %(objectsize:disk)"],
              input="\n".join(top_of).encode() + b"\n")
    disk: dict[str, int] = {}
    size: dict[str, int] = {}
    count: dict[str, int] = {}
    for line in out.splitlines():
        oid, osize, odisk = line.split()
        top = top_of[oid]
        disk[top] = disk.get(top, 0) + int(odisk)
        size[top] = size.get(top, 0) + int(osize)
        count[top] = count.get(top, 0) + 1
    return {"disk": disk, "size": size, "count": count}


def ref_oid(git_dir: str, ref: str) -> str | None:
    r = subprocess.run(["git", "--git-dir", git_dir, "rev-parse", "--verify", "-q", ref], capture_output=True,
                       text=True)
    return r.stdout.strip() if r.returncode == 0 else None


def set_ref(git_dir: str, ref: str, oid: str | None) -> None:
    if oid:
        run(["git", "--git-dir", git_dir, "update-ref", ref, oid])
    else:
        subprocess.run(["git", "--git-dir", git_dir, "update-ref", "-d", ref], capture_output=True)


def export_cache_bytes(git_dir: str) -> dict:
    """Size and record count of gitree's OSTree export cache (gitree/ostree-cache/records in the git dir)."""
    path = os.path.join(git_dir, "gitree", "ostree-cache", "records")
    size = os.path.getsize(path) if os.path.exists(path) else 0
    return {"disk_bytes": size, "records": max(0, (size - 16) // 68)}


def ref_only_bytes(git_dir: str, ref: str) -> dict:
    """On-disk bytes and count of the objects reachable from `ref` and from no branch."""
    if not ref_oid(git_dir, ref):
        return {"disk_bytes": 0, "objects": 0}
    listing = run(["git", "--git-dir", git_dir, "rev-list", "--objects", ref, "--not", "--branches"])
    oids = [line.split(" ", 1)[0] for line in listing.splitlines() if line]
    if not oids:
        return {"disk_bytes": 0, "objects": 0}
    out = run(["git", "--git-dir", git_dir, "cat-file", "--batch-check=%(objectsize:disk)"],
              input="\n".join(oids).encode() + b"\n")
    return {"disk_bytes": sum(int(x) for x in out.split()), "objects": len(oids)}


def thin_pack_size(git_dir: str, new: str, old: str | None, window: int, depth: int) -> tuple[int, Timing]:
    """Bytes of `git pack-objects --thin --stdout --revs` for new ^old (a full pack when old is None)."""
    revs = f"{new}\n" + (f"^{old}\n" if old else "")
    path = os.path.join(git_dir, "bench-thin.pack")
    with open(path + ".in", "w") as f:
        f.write(revs)
    cmd = ["git", "--git-dir", git_dir, "pack-objects", "--stdout", "--revs", "-q",
           f"--window={window}", f"--depth={depth}"]
    if old:
        cmd.insert(4, "--thin")
    t, _ = run_timed(cmd, stdin_path=path + ".in", stdout_path=path, env=git_env())
    n = os.path.getsize(path)
    os.unlink(path)
    os.unlink(path + ".in")
    return n, t


# gitree's command line as this interpreter runs it, not the `gitree` found on PATH: under pyenv that is a
# shell shim which starts about 40 processes before Python (measured: 0.05 s CPU and 0.15 s wall per command,
# an eighth of a checkout's wall time), a cost of the development setup, not of gitree.
GITREE = [sys.executable, "-m", "gitree"]


class Gitree:
    """gitree's command line on one repository."""

    def __init__(self, path: str):
        self.path = path

    def cmd(self, *args: str) -> list[str]:
        return [*GITREE, "-q", "-C", self.path, *args]

    def init(self) -> None:
        run(self.cmd("init"))

    def import_rootfs(self, tar: str, branch: str, message: str, timestamp: int) -> tuple[Timing, str]:
        t, out = run_timed(self.cmd("import-rootfs", tar, "-b", branch, "-m", message, "--timestamp",
                                    str(timestamp)))
        return t, out.strip().splitlines()[-1]

    def checkout_dir(self, rev: str, dest: str) -> Timing:
        return run_timed(self.cmd("checkout", rev, dest))[0]

    def checkout_tar(self, rev: str, dest: str) -> Timing:
        return run_timed(self.cmd("checkout", rev, "--tar", dest))[0]

    def export_ostree(self, rev: str, ostree_repo: str, mode: str, ref: str | None, history: bool,
                      compression: str | None = None) -> tuple[Timing, str]:
        args = ["export-ostree", rev, "--ostree-repo", ostree_repo, "--mode", mode]
        if compression:
            args += ["--compression", compression]
        if ref:
            args += ["--ref", ref]
        if history:
            args.append("--history")
        t, out = run_timed(self.cmd(*args))
        lines = out.strip().splitlines()
        return t, lines[-1].strip() if lines else ""

    def bundle_create(self, old: str, new: str, dest: str, branch: str) -> Timing:
        return run_timed(self.cmd("bundle", "create", "-b", branch, f"{old}..{new}", dest))[0]


def gitree_subcommand(name: str) -> tuple[bool, str]:
    """Whether `gitree NAME` exists, and its help text (or why not)."""
    r = subprocess.run([*GITREE, name, "--help"], capture_output=True, text=True)
    if r.returncode == 0:
        return True, r.stdout
    return False, (r.stderr or r.stdout).strip().splitlines()[-1] if (r.stderr or r.stdout).strip() else \
        f"exit {r.returncode}"


class PlainGit:
    """A plain git repository committing an extracted tree: content only."""

    def __init__(self, git_dir: str, work_tree: str):
        self.git_dir, self.work_tree = git_dir, work_tree

    def init(self) -> None:
        run(["git", "init", "-q", "--bare", self.git_dir], env=git_env())
        run(["git", "--git-dir", self.git_dir, "config", "core.bare", "false"], env=git_env())
        run(["git", "--git-dir", self.git_dir, "config", "core.excludesFile", "/dev/null"], env=git_env())

    def extract(self, tar: str) -> None:
        wipe(self.work_tree)
        os.makedirs(self.work_tree)
        run(["tar", "-xpf", tar, "-C", self.work_tree, "--numeric-owner"])

    def add_commit(self, message: str, timestamp: int) -> Timing:
        env = git_env(timestamp)
        env.update(GIT_DIR=self.git_dir, GIT_WORK_TREE=self.work_tree)
        return run_timed(["sh", "-c", 'git add -A && git commit -q --no-verify -m "$0"', message],
                         cwd=self.work_tree, env=env)[0]

    def rev(self, ref: str = "HEAD") -> str:
        return run(["git", "--git-dir", self.git_dir, "rev-parse", ref]).strip()


def tar_drops(tar: str) -> dict:
    """What a content-only git commit of this tree loses: counted from the tar's entries."""
    c = dict(entries=0, ownership_not_root=0, xattrs=0, hardlinks=0, special_files=0, empty_dirs=0,
             file_modes_beyond_644_755=0, setuid_setgid_sticky=0, dir_modes_not_755=0, symlinks=0)
    dirs: set[str] = set()
    parents: set[str] = set()
    with tarfile.open(tar) as tf:
        for m in tf:
            c["entries"] += 1
            name = m.name.rstrip("/").removeprefix("./")
            parents.add(os.path.dirname(name))
            if m.uid or m.gid:
                c["ownership_not_root"] += 1
            if any(k.startswith("SCHILY.xattr.") for k in m.pax_headers):
                c["xattrs"] += 1
            if m.islnk():
                c["hardlinks"] += 1
            elif m.isdir():
                dirs.add(name)
                if m.mode & 0o7777 != 0o755:
                    c["dir_modes_not_755"] += 1
            elif m.issym():
                c["symlinks"] += 1
            elif m.isreg():
                if m.mode & 0o7777 not in (0o644, 0o755):
                    c["file_modes_beyond_644_755"] += 1
            else:
                c["special_files"] += 1
            if m.mode & 0o7000:
                c["setuid_setgid_sticky"] += 1
    c["empty_dirs"] = len(dirs - parents - {""})
    return c


# ---------------------------------------------------------------------------------------------
# OSTree

def ostree_init(path: str, mode: str) -> None:
    wipe(path)
    run(["ostree", "init", f"--repo={path}", f"--mode={mode}"])


def ostree_commit_tar(repo: str, tar: str, branch: str, subject: str, timestamp: int) -> tuple[Timing, str]:
    import datetime
    when = datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S +0000")
    t, out = run_timed(["ostree", "commit", f"--repo={repo}", f"--branch={branch}", f"--tree=tar={tar}",
                        f"--subject={subject}", f"--timestamp={when}"])
    return t, out.strip().splitlines()[-1]


def ostree_checkout(repo: str, rev: str, dest: str) -> Timing:
    return run_timed(["ostree", "checkout", f"--repo={repo}", rev, dest])[0]


def ostree_objects(repo: str) -> dict[str, int]:
    """Every object file of an OSTree repository: 'xx/yyyy.kind' -> apparent bytes."""
    objs: dict[str, int] = {}
    root = os.path.join(repo, "objects")
    for d in os.listdir(root):
        sub = os.path.join(root, d)
        if len(d) != 2 or not os.path.isdir(sub):
            continue
        with os.scandir(sub) as it:
            for e in it:
                objs[f"{d}/{e.name}"] = e.stat(follow_symlinks=False).st_size
    return objs


def ostree_size(repo: str) -> dict:
    s = tree_size(repo)
    return {"du_bytes": s["du_bytes"], "apparent_bytes": s["apparent_bytes"],
            "objects": len(ostree_objects(repo))}


@dataclass
class DeltaSize:
    superblock_and_parts: int
    fallback: int
    parts: int
    fallback_objects: int

    @property
    def transfer(self) -> int:
        return self.superblock_and_parts + self.fallback

    def as_dict(self) -> dict:
        return {"transfer_bytes": self.transfer, "superblock_and_parts_bytes": self.superblock_and_parts,
                "fallback_bytes": self.fallback, "parts": self.parts, "fallback_objects": self.fallback_objects}


def _delta_dirs(repo: str) -> set[str]:
    found = set()
    for dp, _, files in os.walk(os.path.join(repo, "deltas")):
        if "superblock" in files:
            found.add(dp)
    return found


def static_delta(repo: str, to: str, frm: str | None) -> tuple[DeltaSize, Timing]:
    """Generate a static delta (from `frm`, or --empty) and size it: superblock + parts + fallback objects."""
    before = _delta_dirs(repo)
    cmd = ["ostree", "static-delta", "generate", f"--repo={repo}", f"--to={to}"]
    cmd.append(f"--from={frm}" if frm else "--empty")
    t, _ = run_timed(cmd)
    new = _delta_dirs(repo) - before
    if len(new) != 1:
        raise CommandFailed(cmd, 0, f"expected one new delta directory, found {len(new)}")
    ddir = new.pop()
    on_disk = sum(os.path.getsize(os.path.join(ddir, f)) for f in os.listdir(ddir))
    name = frm + "-" + to if frm else to
    show = run(["ostree", "static-delta", "show", f"--repo={repo}", name])
    fb = re.search(r"Total Fallback Size:\s*(\d+)", show)
    nfb = re.search(r"Number of fallback entries:\s*(\d+)", show)
    nparts = re.search(r"Number of parts:\s*(\d+)", show)
    return DeltaSize(on_disk, int(fb.group(1)) if fb else 0, int(nparts.group(1)) if nparts else 0,
                     int(nfb.group(1)) if nfb else 0), t
