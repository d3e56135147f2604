"""gitree as a library: one function per user command (docs/api.md).

Every function is `f(repo, ..., *, keyword options, progress=None, on_warning=None)`:

- `repo` is a `Repo` or the path of one (not for `init` and `clone`, which make one; nor `lxc_destroy`).
- `progress` is None or an object with `update(files, nbytes, path)` (gitree.progress.TerminalProgress is the
  CLI's), optionally with `waiting()`, called when an import waits for another writer's lock; the caller owns
  it (and calls its `done()` if it has one).
- `on_warning` receives each `GitreeWarning` as it happens; every result also lists them in `warnings`.
  Nothing here prints: the CLI (gitree.cli) prints results and warnings.
- Errors are subclasses of `GitreeError` (gitree.errors), one per condition, each with its CLI exit code.

Results are dataclasses; commit ids are hex strings, paths in trees are bytes (names are not always UTF-8).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from . import porcelain
from .errors import (BadInput, BranchMoved, CorruptObject, FsckFailed, GitreeError, GitreeWarning, NotFound,
                     OnWarning, RepoLocked, ToolFailed, UnsafePath, UnsupportedEntry, UsageError)
from .errors import NeedsRoot, NotFastForward, StrictWarnings, TargetExists, TimedOut, Unreadable, WriteFailed
from .diff import Change, diff_changes
from .porcelain import CommitInfo, LsItem, Problem, ShowInfo
from .entry import MAX_DEPTH  # noqa: F401 - the deepest tree gitree reads or writes (a front end sizes its stack)
from .importer import ImportStats
from .packwriter import remove_live_temporaries  # noqa: F401 - on an interrupt: delete packs being written
from .importer import cap_malloc_arenas  # noqa: F401 - a front end calls it before its first thread
from .repo import Repo



class _Warnings:
    """Collects warnings for a result and forwards each to the caller's callback."""

    def __init__(self, on_warning: OnWarning, kind: str):
        self.on_warning = on_warning
        self.kind = kind
        self.items: list[GitreeWarning] = []

    def __call__(self, message: str) -> None:
        self.add(GitreeWarning(self.kind, message))

    def add(self, w: GitreeWarning) -> None:
        self.items.append(w)
        if self.on_warning is not None:
            self.on_warning(w)


def open_repo(repo: Repo | str) -> Repo:
    """A Repo from a Repo or a path (NotFound/BadInput when it is not a gitree repository)."""
    return repo if isinstance(repo, Repo) else Repo(os.fspath(repo))


@dataclass
class Result:
    warnings: list[GitreeWarning] = field(default_factory=list, kw_only=True)


# --- init, import, checkout ----------------------------------------------------------------------------

@dataclass
class InitResult(Result):
    path: str


def init(path: str, *, on_warning: OnWarning = None) -> InitResult:
    """Create a new, empty gitree repository (a bare git repository) at `path`."""
    porcelain.init(path)
    return InitResult(os.path.abspath(path))


@dataclass
class ImportResult(Result):
    commit: str
    branch: str
    stats: ImportStats


def import_rootfs(repo: Repo | str, source: str, *, branch: str, message: str | None = None,
                  timestamp: int | None = None, keep_mtime: bool = False, one_file_system: bool = True,
                  level: int | None = None, strict: bool = False, skip_unreadable: bool = False, progress=None,
                  on_warning: OnWarning = None) -> ImportResult:
    """Import a directory, a tar file (any compression) or "-" (a tar on stdin) as a commit on `branch`.

    `strict`: anything read but not kept fails the import (StrictWarnings) instead of warning; nothing moves.
    A directory holding items that cannot be read fails the import (Unreadable) unless `skip_unreadable`,
    which leaves them out with a warning."""
    w = _Warnings(on_warning, "import")
    res = porcelain.import_rootfs(open_repo(repo), source, branch, message, timestamp, keep_mtime,
                                  one_file_system=one_file_system, level=level, warn=w, strict=strict,
                                  progress=progress, skip_unreadable=skip_unreadable)
    return ImportResult(res.commit.hex(), branch, res.stats, warnings=w.items)


@dataclass
class CheckoutResult(Result):
    dest: str
    files: int = 0            # with tar: files and bytes written
    bytes: int = 0
    not_restored: dict[str, list[bytes]] = field(default_factory=dict)  # directory: metadata not restored


def checkout(repo: Repo | str, rev: str, dest: str, *, progress=None, on_warning: OnWarning = None) -> CheckoutResult:
    """Write REV's tree into `dest`, a new or empty directory. Metadata an unprivileged process cannot
    restore (owners, devices...) is a warning ("checkout") and is listed in `not_restored`."""
    w = _Warnings(on_warning, "checkout")
    report = porcelain.checkout_dir(open_repo(repo), rev, dest, progress=progress)
    for line in report.lines():
        w(f"{line} (not running as root?)")
    return CheckoutResult(dest, not_restored=dict(report.failed), warnings=w.items)


def checkout_tar(repo: Repo | str, rev: str, out: str, *, sparse: bool = False, progress=None,
                 on_warning: OnWarning = None) -> CheckoutResult:
    """Write REV's tree as a POSIX pax tar to `out` (a file written atomically, or "-" for stdout);
    `sparse`: sparse files as GNU sparse 1.0 members."""
    files, nbytes = porcelain.checkout_tar(open_repo(repo), rev, out, sparse=sparse, progress=progress)
    return CheckoutResult(out, files, nbytes)


# --- inspection ----------------------------------------------------------------------------------------

@dataclass
class LsResult(Result):
    items: list[LsItem]

    def lines(self, long: bool = False) -> list[str]:
        return [i.line(long) for i in self.items]


def ls_iter(repo: Repo | str, rev: str, path: str = "", *, recursive: bool = False) -> Iterator[LsItem]:
    """The items `ls` returns, one at a time (a listing of a large tree starts at once)."""
    return porcelain.ls_items(open_repo(repo), rev, path, recursive)


def ls(repo: Repo | str, rev: str, path: str = "", *, recursive: bool = False,
       on_warning: OnWarning = None) -> LsResult:
    """The entries of `path` (default the root) in REV; with `recursive`, everything under it."""
    return LsResult(list(porcelain.ls_items(open_repo(repo), rev, path, recursive)))


@dataclass
class LogResult(Result):
    commits: list[CommitInfo]

    def lines(self) -> list[str]:
        return [line for c in self.commits for line in c.lines()]


def log(repo: Repo | str, rev: str = "HEAD", *, limit: int | None = None, on_warning: OnWarning = None) -> LogResult:
    """REV's first-parent history, newest first (at most `limit` commits)."""
    return LogResult(list(porcelain.log_commits(open_repo(repo), rev, limit)))


@dataclass
class ShowResult(Result):
    info: ShowInfo

    def lines(self) -> list[str]:
        return self.info.lines()


def show(repo: Repo | str, rev: str, *, on_warning: OnWarning = None) -> ShowResult:
    """A commit and a summary of its tree."""
    return ShowResult(porcelain.show_info(open_repo(repo), rev))


@dataclass
class DiffResult(Result):
    changes: list[Change]

    def lines(self) -> list[str]:
        return [c.line() for c in self.changes]


def diff_iter(repo: Repo | str, rev1: str, rev2: str) -> Iterator[Change]:
    """The changes `diff` returns, one at a time, in path order."""
    return diff_changes(open_repo(repo), rev1, rev2)


def diff(repo: Repo | str, rev1: str, rev2: str, *, on_warning: OnWarning = None) -> DiffResult:
    """Per-path changes from REV1 to REV2, content and metadata (gitree.diff.Change)."""
    return DiffResult(list(diff_changes(open_repo(repo), rev1, rev2)))


@dataclass
class FsckResult(Result):
    problems: list[Problem]

    @property
    def ok(self) -> bool:
        return not self.problems


def fsck(repo: Repo | str, revs: Iterable[str] = (), *, check: bool = False,
         on_warning: OnWarning = None) -> FsckResult:
    """Read commits as every command does and list every fault (default: every commit of every branch).
    `check`: raise FsckFailed when there is any."""
    w = _Warnings(on_warning, "fsck")
    problems = porcelain.fsck(open_repo(repo), list(revs), warn=w)
    if check and problems:
        raise FsckFailed(f"fsck found {len(problems)} problem(s)")
    return FsckResult(problems, warnings=w.items)


@dataclass
class GcResult(Result):
    pass


def gc(repo: Repo | str, *, window: int = 50, depth: int = 50, compression: int = 9, progress=None,
       on_warning: OnWarning = None) -> GcResult:
    """Repack the repository into one delta-compressed pack (every object recompressed at `compression`).
    It first waits for the open transactions of other writers (imports, bundle apply), calling
    `progress.waiting()` if it has to."""
    porcelain.gc(open_repo(repo), window, depth, compression, on_wait=getattr(progress, "waiting", None))
    return GcResult()


# --- OSTree ----------------------------------------------------------------------------------------------

@dataclass
class ExportResult(Result):
    checksum: str                         # the OSTree commit the ref now names
    ref: str | None
    commits: list[str]                    # OSTree commits written or found, oldest first
    skipped: list[tuple[bytes, str]]      # entries OSTree cannot hold (path, why); an error with strict
    files_written: int = 0
    files_cached: int = 0
    dirs_cached: int = 0


def export_ostree(repo: Repo | str, rev: str, ostree_repo: str, *, ref: str | None = None, mode: str | None = None,
                  bindings: bool = True, history: bool = False, strict: bool = False, update_summary: bool = False,
                  gpg_keys: Iterable[str] = (), gpg_homedir: str | None = None, collection_id: str | None = None,
                  ref_bindings: Iterable[str] = (), compression: str | int = "reuse", progress=None,
                  on_warning: OnWarning = None) -> ExportResult:
    """Export REV into a native OSTree repository (created in `mode`, default archive, when missing), byte-for-
    byte as `ostree commit` writes it. `compression`: "reuse" (archive: copy each file's deflate stream out of
    the git pack) or a zlib level 1-9. `gpg_keys`: sign each commit (and the summary with update_summary)."""
    from .ostree.export import export_ostree as run
    from .ostree.signing import GpgSigner
    if compression != "reuse" and not (isinstance(compression, int) and 1 <= compression <= 9):
        raise UsageError(f"compression must be 'reuse' or a zlib level 1-9, not {compression!r}")
    w = _Warnings(on_warning, "export")
    signers = [GpgSigner(k, gpg_homedir) for k in gpg_keys]
    res = run(open_repo(repo), rev, ostree_repo, ref=ref, mode=mode, bindings=bindings, history=history,
              strict=strict, update_summary=update_summary, warn=w, progress=progress, signers=signers,
              collection_id=collection_id, ref_bindings=tuple(ref_bindings), compression=compression)
    return ExportResult(res.checksum, ref, list(res.commits), list(res.skipped), res.files_written,
                        res.files_cached, res.dirs_cached, warnings=w.items)


@dataclass
class ImportOstreeResult(Result):
    commits: list[str]        # gitree commits made, oldest first; the last is the branch's new tip
    branch: str

    @property
    def commit(self) -> str:
        return self.commits[-1]


def import_ostree(repo: Repo | str, ostree_repo: str, ref: str, *, branch: str, progress=None,
                  on_warning: OnWarning = None) -> ImportOstreeResult:
    """Import REF (a ref or a commit checksum) of an OSTree repository with its parent chain onto `branch`."""
    from .ostree.importing import import_ostree as run
    w = _Warnings(on_warning, "import-ostree")
    made = run(open_repo(repo), ostree_repo, ref, branch, warn=w, progress=progress)
    return ImportOstreeResult([c.hex() for c in made], branch, warnings=w.items)


@dataclass
class BootableResult(Result):
    commit: str
    kernel: str
    changes: list[str]        # what the rewrite did, one line each
    seconds: float = 0.0


def make_bootable(repo: Repo | str, rev: str, *, branch: str, version: str | None = None, kernel: str | None = None,
                  message: str | None = None, timestamp: int | None = None, initramfs_check: bool = True,
                  metadata: Iterable[tuple[str, str]] = (), progress=None,
                  on_warning: OnWarning = None) -> BootableResult:
    """Rewrite REV into an OSTree-bootable tree (kernel and initramfs in usr/lib/modules, /etc in usr/etc...)
    as a new commit on `branch`. `metadata`: more OSTree string metadata (key, value)."""
    from .boot.bootable import make_bootable as run
    res = run(open_repo(repo), rev, branch, version, kernel, message, timestamp, initramfs_check,
              metadata=tuple(metadata), progress=progress)
    return BootableResult(res.commit.hex(), res.kernel, list(res.changes), res.seconds)


@dataclass
class DeployResult(Result):
    checksum: str
    ref: str
    deployment: str               # the deployment's directory
    boot_entry: str | None        # its BLS entry file
    options: str | None           # the kernel command line in it
    export_seconds: float
    deploy_seconds: float
    uboot_files: list[str] = field(default_factory=list)


def _deploy_result(res, extra=()) -> DeployResult:
    return DeployResult(res.checksum, res.ref, res.deployment, res.entry.path if res.entry else None,
                        res.entry.options if res.entry else None, res.export_seconds, res.deploy_seconds,
                        list(extra))


def deploy(repo: Repo | str, rev: str, *, sysroot: str, osname: str, ref: str | None = None,
           kargs: Iterable[str] = (), bootloader: str | None = None, progress=None,
           on_warning: OnWarning = None) -> DeployResult:
    """Export bootable REV into SYSROOT/ostree/repo and `ostree admin deploy` it (root only).
    `bootloader`: None (ostree's detection) or "uboot" (uEnv.txt and boot/boot.scr)."""
    from .boot.deploy import deploy as run
    w = _Warnings(on_warning, "deploy")
    res = run(open_repo(repo), rev, sysroot, osname, ref, tuple(kargs), progress=progress, bootloader=bootloader,
              warn=w)
    extra = ([os.path.join(sysroot, "boot", "loader", "uEnv.txt"), os.path.join(sysroot, "boot", "boot.scr")]
             if bootloader == "uboot" else [])
    out = _deploy_result(res, extra)
    out.warnings = w.items
    return out


# --- distribution ----------------------------------------------------------------------------------------

@dataclass
class TransferResult(Result):
    remote: str
    output: str = ""          # git's porcelain report


def push(repo: Repo | str, remote: str, branches: Iterable[str] = (), *, force: bool = False,
         on_warning: OnWarning = None) -> TransferResult:
    """Push branches (default: all) to REMOTE, a git remote name or URL, atomically."""
    from .transport.distribution import push as run
    return TransferResult(remote, run(open_repo(repo), remote, list(branches), force) or "")


def fetch(repo: Repo | str, remote: str, branches: Iterable[str] = (), *, depth: int | None = None,
          on_warning: OnWarning = None) -> TransferResult:
    """Fetch branches (default: all) from REMOTE into the same branches, fast-forward only, every incoming
    commit verified before any branch moves."""
    from .transport.distribution import fetch as run
    return TransferResult(remote, run(open_repo(repo), remote, list(branches), depth) or "")


@dataclass
class CloneResult(Result):
    url: str
    path: str


def clone(url: str, path: str, *, depth: int | None = None, branch: str | None = None,
          on_warning: OnWarning = None) -> CloneResult:
    """Clone the gitree repository at URL into PATH (bare, gitree config, verified)."""
    from .transport.distribution import clone as run
    run(url, path, depth, branch)
    return CloneResult(url, os.path.abspath(path))


# --- bundles ---------------------------------------------------------------------------------------------

@dataclass
class BundleCreateResult(Result):
    path: str
    branch: str
    old: str | None           # hex commit ids: the update goes from OLD (None: everything) to NEW
    new: str
    size: int                 # the file's bytes
    git_bundle_size: int      # the git bundle inside, uncompressed
    reference_bytes: int      # old objects zstd compressed against
    objects: int


def bundle_create(repo: Repo | str, spec: str, out: str, *, branch: str | None = None,
                  on_warning: OnWarning = None) -> BundleCreateResult:
    """Write the update [OLD..]NEW to the file `out` (docs/bundle.md)."""
    from .transport.bundle import create
    i = create(open_repo(repo), spec, out, branch)
    return BundleCreateResult(i.path, i.branch, i.old.hex() if i.old else None, i.new.hex(), i.size,
                              i.git_bundle_size, i.reference_bytes, i.objects)


@dataclass
class BundleApplyResult(Result):
    branch: str
    old: str | None
    new: str


def bundle_apply(repo: Repo | str, path: str, *, branch: str | None = None, strict: bool = False, progress=None,
                 on_warning: OnWarning = None) -> BundleApplyResult:
    """Add a bundle's objects, verify every incoming commit, then move its branch (fast-forward only).
    `strict`: a warning fails the apply (StrictWarnings) before the branch moves; nothing is kept.
    `progress.waiting()` is called when the apply waits for a gc or another writer."""
    import pygit2

    from .transport.bundle import apply
    from .ostree.storedcommit import warn_unchecked
    w = _Warnings(on_warning, "bundle")
    r = open_repo(repo)

    def before_move(view: Repo, old: bytes | None, new: bytes) -> None:
        # the arrived commits' stored OSTree metadata, which export would publish unchecked: named once
        walker = view.git.walk(pygit2.Oid(raw=new), pygit2.enums.SortMode.TOPOLOGICAL)
        if old is not None:
            walker.hide(pygit2.Oid(raw=old))
        warn_unchecked(view, walker, w, "bundle apply")
        if strict and w.items:
            raise StrictWarnings(f"--strict: {len(w.items)} warning(s) above; nothing was applied")

    name, old, new = apply(r, path, branch, before_move=before_move, progress=progress)
    return BundleApplyResult(name, old.hex() if old else None, new.hex(), warnings=w.items)


@dataclass
class BundleUnwrapResult(Result):
    path: str


def bundle_unwrap(repo: Repo | str | None, path: str, out: str, *, on_warning: OnWarning = None) -> BundleUnwrapResult:
    """Write the plain git bundle inside `path` to `out` (an update needs its base commit: give `repo`)."""
    from .transport.bundle import unwrap
    unwrap(open_repo(repo) if repo is not None else None, path, out)
    return BundleUnwrapResult(out)


# --- LXC -----------------------------------------------------------------------------------------------

@dataclass
class LxcResult(Result):
    name: str
    lxcpath: str
    config: str | None
    deploy: DeployResult


def lxc_create(repo: Repo | str, name: str, rev: str, *, lxcpath: str = "/var/lib/lxc", osname: str = "debian",
               kargs: Iterable[str] = (), ref: str | None = None, progress=None,
               on_warning: OnWarning = None) -> LxcResult:
    """Deploy bootable REV into a new LXC container NAME (root only)."""
    from .boot import lxc
    w = _Warnings(on_warning, "deploy")
    cont, res = lxc.create(open_repo(repo), name, rev, lxcpath, osname, tuple(kargs), ref, warn=w, progress=progress)
    return LxcResult(name, lxcpath, cont.config, _deploy_result(res), warnings=w.items)


def lxc_upgrade(repo: Repo | str, name: str, rev: str, *, lxcpath: str = "/var/lib/lxc", kargs: Iterable[str] = (),
                ref: str | None = None, progress=None, on_warning: OnWarning = None) -> LxcResult:
    """Deploy REV into container NAME's sysroot; its next start runs it."""
    from .boot import lxc
    w = _Warnings(on_warning, "deploy")
    res = lxc.upgrade(open_repo(repo), name, rev, lxcpath, ref, tuple(kargs), warn=w, progress=progress)
    return LxcResult(name, lxcpath, None, _deploy_result(res), warnings=w.items)


@dataclass
class LxcDestroyResult(Result):
    name: str


def lxc_destroy(name: str, *, lxcpath: str = "/var/lib/lxc", on_warning: OnWarning = None) -> LxcDestroyResult:
    """Stop and remove container NAME, its sysroot included."""
    from .boot import lxc
    w = _Warnings(on_warning, "lxc")
    note = lxc.destroy(name, lxcpath)
    if note:
        w(note)
    return LxcDestroyResult(name, warnings=w.items)


COMMANDS = ("init", "import_rootfs", "checkout", "checkout_tar", "ls", "ls_iter", "log", "show", "diff", "diff_iter",
            "fsck", "gc",
            "export_ostree", "import_ostree", "make_bootable", "deploy", "push", "fetch", "clone", "bundle_create",
            "bundle_apply", "bundle_unwrap", "lxc_create", "lxc_upgrade", "lxc_destroy")

__all__ = [*COMMANDS, "open_repo", "Repo", "Result", "GitreeError", "GitreeWarning", "UsageError", "CorruptObject",
           "UnsafePath", "UnsupportedEntry", "BadInput", "RepoLocked", "NotFound", "BranchMoved", "ToolFailed",
           "FsckFailed", "Change", "CommitInfo", "LsItem", "Problem", "ShowInfo", "ImportStats", "InitResult",
           "ImportResult", "CheckoutResult", "LsResult", "LogResult", "ShowResult", "DiffResult", "FsckResult",
           "GcResult", "ExportResult", "ImportOstreeResult", "BootableResult", "DeployResult", "TransferResult",
           "CloneResult", "BundleCreateResult", "BundleApplyResult", "BundleUnwrapResult", "LxcResult",
           "LxcDestroyResult"]
__all__ += ["TargetExists", "WriteFailed", "NotFastForward", "NeedsRoot", "TimedOut", "Unreadable"]
