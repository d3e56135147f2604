"""One function per user command. The CLI only parses arguments and calls these."""

from __future__ import annotations

import datetime
import os
import re
import shutil
import stat
import sys
from dataclasses import dataclass, field
from typing import Callable, Iterator, NamedTuple

import pygit2

from . import tools
from .entry import Entry, Kind
from .errors import BadInput, CorruptObject, NotFound, StrictWarnings, Unreadable, warner
from .gittree import MODE_DIR
from .names import display
from .outfile import atomic_output
from .diff import Change, diff_changes
from .sinks import CheckoutReport, DirectoryWriter, write_tar
from .sparse import bounded_holes
from .sources import DirectoryReport, TarInput, WarningLog, directory_entries, tar_entries
from .importer import ImportStats
from .repo import Repo, check_commit_fields

Warn = Callable[[str], None]


def init(path: str) -> Repo:
    return Repo.init(path)


@dataclass
class ImportResult:
    commit: bytes
    stats: ImportStats
    warnings: list[str] = field(default_factory=list)


def import_rootfs(repo: Repo, source: str, branch: str, message: str | None = None,
                  timestamp: int | None = None, keep_mtime: bool = False,
                  one_file_system: bool = True, level: int | None = None, warn: Warn | None = None,
                  strict: bool = False, progress=None, skip_unreadable: bool = False) -> ImportResult:
    """Import a directory, a tar file (any compression) or '-' (a tar on stdin) as a commit on `branch`.

    With `strict`, anything read but not kept (each a warning otherwise) fails the import; nothing moves.
    A directory holding items that cannot be read fails the import (Unreadable), as `ostree commit` does,
    unless `skip_unreadable`: then they are left out with a warning."""
    repo.branch_ref(branch)  # validate the name, the time and the message before any work
    check_commit_fields(message or "", timestamp)
    warn = warn or warner(None, "import")
    if level is None:
        level = _compression_level(repo)
    if source != "-" and not os.path.lexists(source):
        raise BadInput(f"no such file or directory: {source}")
    warnings = WarningLog()
    tar_in = None
    try:  # the transaction aborts on any exit that did not commit: its pack is deleted, no branch moves
        with repo.transaction(keep_mtime=keep_mtime, level=level, progress=progress, warn=warn) as tx:
            if source == "-" or not os.path.isdir(source):
                tar_in = TarInput(sys.stdin.buffer if source == "-" else source)
                items = tar_entries(tar_in, warnings)
            else:
                report = DirectoryReport()
                items = directory_entries(source, report, one_file_system, exclude=repo.path)
            try:
                for item in items:
                    try:
                        tx.add(item.entry, item.data, item.rereadable)
                    except OSError as e:
                        raise BadInput(f"{display(item.entry.path)}: {e.strerror or e}") from None
            except BadInput as err:
                why = tar_in.failure() if tar_in is not None else None
                if why is not None:
                    raise BadInput(why) from None
                if tar_in is not None and tar_in.format != "tar":
                    raise BadInput(f"{err} (in the {tar_in.format}-compressed stream)") from None
                raise
            if tar_in is not None:
                closing, tar_in = tar_in, None
                closing.close()
            else:
                if report.unreadable and not skip_unreadable:
                    raise Unreadable(f"could not read {len(report.unreadable)} item(s) of {source}: "
                                     f"{report.unreadable_items()}; nothing was imported (--skip-unreadable "
                                     "imports the rest)")
                warnings.extend(report.lines())
            warnings.close()
            for w in warnings:
                warn(w)
            if strict and warnings:
                raise StrictWarnings(f"--strict: {warnings.total} warning(s) above; nothing was imported")
            msg = message if message is not None else f"Import {os.path.basename(source.rstrip('/')) or source}"
            cid = tx.commit(branch=branch, message=msg, timestamp=timestamp,
                            lock_wait=getattr(progress, "waiting", None))
    except BaseException:
        if tar_in is not None:
            tar_in.close(ok=False)
        raise
    return ImportResult(cid, tx.stats, warnings)


def _compression_level(repo: Repo) -> int:
    """zlib level for new objects: gitree.compression, else 1 (as git's own loose objects).

    Level 1 is about twice as fast as 6 for 5-10% more bytes; `gitree gc` recompresses into a delta pack.
    """
    try:
        v = int(repo.git.config["gitree.compression"])
    except (KeyError, ValueError):
        return 1
    return 6 if v == -1 else max(0, min(9, v))


# ---------------------------------------------------------------------------------------------
# checkout

def _chunks_for(repo: Repo):
    """A file's bytes: inflated straight from its pack entry when stored whole (CRC-checked, no second copy),
    else through libgit2 (deltas, loose objects)."""
    from .packreader import PackSet, inflate_chunks
    packs = PackSet(repo.objects_dir)

    def chunks(e):
        small = packs.small_blob(e.oid, display(e.path))
        if small is not None:
            return (small,) if small else ()
        ps = packs.blob(e.oid)
        if ps is None:
            return repo.blob_chunks(e.oid, None, display(e.path))
        return inflate_chunks(ps, display(e.path))
    return chunks


CHECKOUT_KEEP = 1 << 17  # entries of one validated walk a checkout keeps (about 370 bytes each: under 50 MiB)


def _check_blob(repo: Repo, e: Entry) -> None:
    """What repo.verify checks of each file beyond the walk: its blob exists, is a blob, and holds its sparse
    map's data bytes."""
    if e.kind is Kind.FILE and e.hardlink is None:
        try:
            size = repo.blob_size(e.oid, display(e.path))
        except CorruptObject as err:
            raise CorruptObject(f"{display(e.path)}: {err}") from None
        if e.sparse is not None and size != e.sparse.data_size:
            raise CorruptObject(f"{display(e.path)}: blob {e.oid.hex()} does not hold the {e.sparse.data_size} "
                                "data bytes of its sparse map")


def _validated_entries(repo: Repo, commit, subpath: bytes):
    """The entries a checkout writes, once the whole commit has been read and validated as fsck does (so a
    tree fsck refuses is never half written). A tree of at most CHECKOUT_KEEP entries is read once and its
    entries kept (one walk instead of two: the walk is most of a checkout's CPU besides inflating); a larger
    one is validated to its end by the same walk, then read again."""
    if subpath:
        repo.verify(commit)
        return repo.walk(commit, subpath)
    kept: list[Entry] | None = []
    for e in repo.walk(commit):
        _check_blob(repo, e)
        if kept is not None:
            kept.append(e)
            if len(kept) > CHECKOUT_KEEP:
                kept = None
    return kept if kept is not None else repo.walk(commit)


def checkout_dir(repo: Repo, rev: str, dest: str, subpath: bytes = b"", progress=None) -> CheckoutReport:
    commit = repo.resolve(rev)
    entries = _validated_entries(repo, commit, subpath)
    w = DirectoryWriter(dest, _chunks_for(repo), keep_mtime=True, tick=progress.update if progress else None)
    return w.run(entries)


def checkout_tar(repo: Repo, rev: str, out: str, sparse: bool = False, progress=None) -> tuple[int, int]:
    commit = repo.resolve(rev)
    repo.commit_trees(commit)
    tick = progress.update if progress else None
    sizes = lambda e: repo.blob_size(e.oid, display(e.path))  # noqa: E731
    walk = repo.walk if sparse else lambda c: bounded_holes(repo.walk(c))  # holes spelled out: bounded
    if out == "-":
        repo.verify(commit)  # nothing is written for a tree the reader refuses: a stream cannot be taken back
        stream = sys.stdout.buffer
        res = write_tar(walk(commit), stream.write, _chunks_for(repo), sizes, True, tick, sparse)
        stream.flush()
    else:
        with atomic_output(out) as f:
            res = write_tar(walk(commit), f.write, _chunks_for(repo), sizes, True, tick, sparse)
    return res


# ---------------------------------------------------------------------------------------------
# inspection

def mode_string(kind: Kind, mode: int) -> str:
    return stat.filemode(kind.ifmt | mode)


@dataclass(frozen=True)
class LsItem:
    """One listed entry: `name` as `ls` shows it (the path with -R or a named path, else the base name)."""

    name: str
    entry: Entry
    size: int          # bytes of a regular file (its logical size when sparse), else 0

    def line(self, long: bool = False) -> str:
        e = self.entry
        if not long:
            return self.name
        extra = ""
        if e.kind is Kind.SYMLINK:
            extra = " -> " + (e.target or b"").decode("utf-8", "backslashreplace")
        if e.hardlink is not None:
            extra += " => " + display(e.hardlink)
        size_s = f"{e.rdev[0]}, {e.rdev[1]}" if e.rdev is not None else str(self.size)
        x = f" [{','.join(n.decode('utf-8', 'backslashreplace') for n, _ in e.xattrs)}]" if e.xattrs else ""
        return f"{mode_string(e.kind, e.mode)} {e.uid:>5} {e.gid:>5} {size_s:>10} {self.name}{extra}{x}"


def ls_items(repo: Repo, rev: str, path: str = "", recursive: bool = False) -> Iterator[LsItem]:
    commit = repo.resolve(rev)
    want = os.fsencode(path.strip("/"))
    if recursive and want:
        if repo.find(repo.commit_trees(commit), want) is None:
            raise NotFound(f"no such path {display(want)} in {commit.id}")
    entries = repo.walk(commit) if want == b"" or recursive else _entries_for_ls(repo, commit, want)
    for e in entries:
        if want and recursive and not (e.path == want or e.path.startswith(want + b"/")):
            continue
        if not recursive and e.path == want and e.kind is Kind.DIR:
            continue
        if not recursive and want == b"" and (e.path == b"" or b"/" in e.path):
            continue
        name = display(e.path) if recursive or e.path == want else e.name.decode("utf-8", "backslashreplace")
        if e.path == b"" and recursive:
            name = "/"
        size = (e.sparse.size if e.sparse is not None else repo.blob_size(e.oid)) if e.kind is Kind.FILE else 0
        yield LsItem(name, e, size)


def ls(repo: Repo, rev: str, path: str = "", long: bool = False, recursive: bool = False) -> Iterator[str]:
    for item in ls_items(repo, rev, path, recursive):
        yield item.line(long)


def _entries_for_ls(repo: Repo, commit, want: bytes) -> Iterator[Entry]:
    parent = want.rpartition(b"/")[0] if b"/" in want else b""
    found = False
    for e in repo.walk(commit, parent):
        if e.path == want:
            found = True
            if e.kind is not Kind.DIR:
                yield e
                return
            continue
        if found and e.path.rpartition(b"/")[0] == want:
            yield e
        elif found and not e.path.startswith(want + b"/"):
            return
    if not found:
        raise NotFound(f"no such path {display(want)} in {commit.id}")


# A commit message may come from anyone: its control characters (terminal escape sequences, CSI and OSC
# alike) are shown as \xNN, never sent to the terminal.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _hex(m: re.Match) -> str:
    return f"\\x{ord(m.group()):02x}"


@dataclass(frozen=True)
class CommitInfo:
    id: str            # hex
    time: int          # commit time, UNIX seconds
    message: str

    def lines(self) -> list[str]:
        when = datetime.datetime.fromtimestamp(self.time, datetime.timezone.utc)
        return [f"commit {self.id}", f"Date:   {when:%Y-%m-%d %H:%M:%S} UTC ({self.time})", "",
                *("    " + _CONTROL.sub(_hex, line) for line in self.message.rstrip("\n").splitlines() or [""]),
                ""]


def _message(commit) -> str:
    """A commit's message, decoded as its `encoding` header says; an encoding Python does not know (git
    accepts any word there, the reader refuses it: treeread.check_commit_header) is read as UTF-8."""
    try:
        return commit.message
    except LookupError:
        return commit.raw_message.decode("utf-8", "replace")


def log_commits(repo: Repo, rev: str = "HEAD", limit: int | None = None) -> Iterator[CommitInfo]:
    """First-parent history from REV, newest first."""
    commit = repo.resolve(rev)
    n = 0
    while commit is not None:
        yield CommitInfo(str(commit.id), commit.commit_time, _message(commit))
        n += 1
        if limit is not None and n >= limit:
            return
        commit = commit.parents[0] if commit.parents else None


def log(repo: Repo, rev: str = "HEAD", limit: int | None = None) -> Iterator[str]:
    for c in log_commits(repo, rev, limit):
        yield from c.lines()


@dataclass(frozen=True)
class ShowInfo:
    commit: CommitInfo
    counts: dict[str, int]   # entries per kind ("file", "dir", "symlink", ...), in Kind order
    file_bytes: int          # bytes in regular files (hard links counted once)
    hardlinks: int
    with_xattrs: int         # entries with extended attributes
    content_tree: str        # hex ids of the rootfs and metadata trees
    meta_tree: str
    # an imported commit's stored OSTree commit (ostree/commit), which export-ostree writes as it is when git
    # can check it (gitree/ostree/storedcommit.py): its subject and metadata keys, shown because `log` does not
    # show them
    ostree_commit: str | None = None

    def lines(self) -> list[str]:
        return [*self.commit.lines(),
                "entries: " + ", ".join(f"{n} {k}" for k, n in self.counts.items()),
                f"content: {self.file_bytes} bytes in regular files; {self.hardlinks} hard links; "
                f"{self.with_xattrs} entries with xattrs",
                f"rootfs tree {self.content_tree}  meta tree {self.meta_tree}",
                *([f"imported OSTree commit: {self.ostree_commit}"] if self.ostree_commit else [])]


def _stored_ostree_commit(repo: Repo, commit) -> str | None:
    """A one-line summary of the OSTree commit stored in an imported commit's ostree/ subtree, or None."""
    from .gittree import decode_tree
    from .limits import MAX_OSTREE_OBJECT_BYTES
    from .packwriter import OBJ_BLOB, OBJ_TREE
    from .layout import TOP_OSTREE
    top = repo.top_entries(commit)
    if TOP_OSTREE not in top:
        return None
    ent = {e.name: e.oid for e in decode_tree(repo.read_bounded(top[TOP_OSTREE].oid, OBJ_TREE,
                                                              MAX_OSTREE_OBJECT_BYTES, "ostree/"))}
    if b"commit" not in ent:
        return None
    import gitree_compat as oc
    try:
        c = oc.decode_commit(repo.read_bounded(ent[b"commit"], OBJ_BLOB, MAX_OSTREE_OBJECT_BYTES, "ostree/commit"))
    except oc.OstreeFormatError as e:
        return f"unreadable ({e})"
    keys = ", ".join(k for k, _ in c.metadata) or "none"
    text = f"subject {c.subject!r}, timestamp {c.timestamp}, metadata keys: {keys}"
    return _CONTROL.sub(_hex, text)[:2000]


def show_info(repo: Repo, rev: str) -> ShowInfo:
    commit = repo.resolve(rev)
    counts: dict[Kind, int] = {}
    nbytes = hard = xattrs = 0
    for e in repo.walk(commit):
        counts[e.kind] = counts.get(e.kind, 0) + 1
        if e.hardlink is not None:
            hard += 1
        elif e.kind is Kind.FILE:
            nbytes += repo.blob_size(e.oid)
        xattrs += bool(e.xattrs)
    content, meta = repo.commit_trees(commit)
    return ShowInfo(CommitInfo(str(commit.id), commit.commit_time, _message(commit)),
                    {k.name.lower(): counts[k] for k in Kind if k in counts}, nbytes, hard, xattrs,
                    content.hex(), meta.hex(), _stored_ostree_commit(repo, commit))


def show(repo: Repo, rev: str) -> Iterator[str]:
    yield from show_info(repo, rev).lines()


# ---------------------------------------------------------------------------------------------
# diff: the engine lives in gitree.diff

def diff(repo: Repo, rev1: str, rev2: str) -> Iterator[str]:
    """Per-path changes as lines: A added, D deleted, M modified (content and/or metadata, named);
    directories end in '/'."""
    for c in diff_changes(repo, rev1, rev2):
        yield c.line()


# ---------------------------------------------------------------------------------------------
# gc

GC_MEMORY = ("-c", "core.packedGitLimit=128m", "-c", "core.packedGitWindowSize=32m", "-c", "pack.windowMemory=100m",
             "-c", "pack.deltaCacheSize=64m", "-c", "pack.threads=2")


def gc(repo: Repo, window: int = 50, depth: int = 50, level: int = 9,
       on_wait: Callable[[], None] | None = None) -> None:
    """Repack everything into one delta-compressed pack at zlib `level`, and drop stale temporary packs."""
    import time

    pack_dir = os.path.join(repo.objects_dir, "pack")
    # objects_exclusive first (the order every writer takes them in): no import, bundle apply or other
    # transaction is between finding an object present and naming it from a branch while git repacks
    with repo.objects_exclusive(on_wait), repo.lock(on_wait=on_wait):
        for name in os.listdir(pack_dir) if os.path.isdir(pack_dir) else []:
            p = os.path.join(pack_dir, name)
            if not name.startswith("tmp_gitree_"):
                continue
            st = os.lstat(p)
            if time.time() - st.st_mtime > 3600:
                if stat.S_ISDIR(st.st_mode):
                    shutil.rmtree(p, ignore_errors=True)   # a bundle's quarantine (packwriter.Quarantine)
                else:
                    os.unlink(p)
        # -F recompresses every object (import writes zlib level 1 for speed); -f recomputes deltas.
        # Memory: git maps the packs it reads (core.packedGitLimit, 8 GiB by default: all of a repository's
        # packs count in its RSS), its delta window holds up to --window whole objects per thread, its delta
        # cache 256 MiB; all are bounded here (GC_MEMORY; measured in docs/benchmarks.md).
        tools.run(["git", "-c", f"pack.compression={level}", *GC_MEMORY,
                   "--git-dir", repo.path, "repack", "-a", "-d", "-F", "-f", "-q",
                   f"--window={window}", f"--depth={depth}"], what="git repack failed")


# ---------------------------------------------------------------------------------------------
# fsck

class Problem(NamedTuple):
    """One fault fsck found: the revision it was reached from, the path in the tree, what is wrong."""

    rev: str
    path: bytes
    message: str

    def line(self) -> str:
        return f"{self.rev}: {'/' + self.path.decode('utf-8', 'backslashreplace')}: {self.message}"


def _history(repo: Repo, heads: list[str], problems: list[Problem]) -> list[tuple[str, pygit2.Commit]]:
    """Every commit the branches reach, each once, labelled by its branch (a tip) or its id; a branch or
    parent naming a missing object, or one that is not a commit, is a problem, not the end of the check."""
    out: list[tuple[str, pygit2.Commit]] = []
    seen: set[bytes] = set()
    for ref in heads:
        try:
            tip = repo.git.references[ref].resolve().target
        except (KeyError, ValueError, pygit2.GitError) as e:
            problems.append(Problem(ref, b"", f"the branch cannot be resolved ({e})"))
            continue
        stack = [(ref, tip, "")]
        while stack:
            label, oid, via = stack.pop()       # via: ", parent of <child>" for a parent
            if oid.raw in seen:
                continue
            seen.add(oid.raw)
            try:
                obj = repo.git.get(oid)
            except (ValueError, pygit2.GitError) as e:
                problems.append(Problem(label, b"", f"commit {oid}{via} cannot be read ({e})"))
                continue
            if obj is None:
                problems.append(Problem(label, b"", f"missing commit {oid}{via}"))
                continue
            if not isinstance(obj, pygit2.Commit):
                problems.append(Problem(label, b"", f"{oid}{via} is a {obj.type_str}, not a commit"))
                continue
            out.append((label, obj))
            stack.extend((str(p), p, f", parent of {oid}") for p in reversed(obj.parent_ids))
    return out


def fsck(repo: Repo, revs: list[str] | None = None, warn=None) -> list[Problem]:
    """Read commits as every command does (the store's validating reader, to the end rather than to the
    first fault) and check every file's blob exists. REVs: those commits; none: every commit of every
    branch, history included. Returns problems. `warn` gets one warning when commits carry stored OSTree
    metadata that export publishes unchecked (gitree/ostree/storedcommit.py)."""
    problems: list[Problem] = []
    if revs:
        commits = [(rev, repo.resolve(rev)) for rev in revs]
    else:
        heads = sorted(r for r in repo.git.references if r.startswith("refs/heads/"))
        if not heads:
            raise NotFound("no branches to check")
        commits = _history(repo, heads, problems)
    checked: set[bytes] = set()
    for rev, commit in commits:
        if commit.id.raw in checked:
            continue
        checked.add(commit.id.raw)
        found: list = []
        repo.verify(commit, found)
        problems.extend(Problem(rev, p, m) for p, m in found)
    if warn is not None:
        from .ostree.storedcommit import warn_unchecked
        warn_unchecked(repo, (c for _, c in commits), warn, "fsck")
    return problems


__all__ = ["Change", "diff_changes", "init", "import_rootfs", "checkout_dir", "checkout_tar", "ls", "log", "show",
           "diff", "fsck", "MODE_DIR"]
