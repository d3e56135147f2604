"""The diff engine: per-path changes between two commits, content and metadata.

Both trees are read through the store's validating reader (every row a walk would check is checked here too),
with an explicit stack (one frame per directory level, MAX_DEPTH bounded); directories whose content and meta
trees are identical are skipped whole. `gitree diff` prints `Change.line()`; gitree.api.diff returns them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from . import sidetable
from .entry import MAX_DEPTH, Entry, Kind, split_path
from .errors import CorruptObject
from .names import display
from .repo import Repo
from .treeread import Verified, Walker, expansion


def _row_changes(a: sidetable.Row, b: sidetable.Row) -> list[str]:
    out = []
    if a.kind is not b.kind:
        return [f"type {a.kind.name.lower()} -> {b.kind.name.lower()}"]
    if a.mode != b.mode:
        out.append(f"mode {a.mode:04o} -> {b.mode:04o}")
    if (a.uid, a.gid) != (b.uid, b.gid):
        out.append(f"owner {a.uid}:{a.gid} -> {b.uid}:{b.gid}")
    if a.rdev != b.rdev:
        out.append(f"device {a.rdev} -> {b.rdev}")
    if a.hardlink != b.hardlink:
        out.append("hard link " + (display(a.hardlink) if a.hardlink else "none") + " -> "
                   + (display(b.hardlink) if b.hardlink else "none"))
    if a.mtime_ns != b.mtime_ns:
        out.append("mtime")
    if a.sparse != b.sparse:
        out.append("sparse map")
    xa, xb = dict(a.xattrs), dict(b.xattrs)
    for n in sorted(set(xa) | set(xb)):
        if xa.get(n) != xb.get(n):
            what = "added" if n not in xa else "removed" if n not in xb else "changed"
            out.append(f"xattr {n.decode('utf-8', 'backslashreplace')} {what}")
    return out


@dataclass(frozen=True)
class Change:
    """One path's change: status "A" added, "D" deleted, "M" modified; `details` name what changed in an M
    ("content", "mode 0644 -> 0600", "type file -> symlink", "xattr user.x added", ...)."""

    status: str
    path: bytes
    kind: Kind                    # the entry's kind (the new one when its type changed)
    details: tuple[str, ...] = ()

    def line(self) -> str:
        if self.details:
            return f"{self.status} {display(self.path)}  " + "; ".join(self.details)
        return f"{self.status} {display(self.path)}{'/' if self.kind is Kind.DIR else ''}"


def diff_changes(repo: Repo, rev1: str, rev2: str) -> Iterator[Change]:
    """Per-path changes from REV1 to REV2, in path order; an added or deleted directory is listed with
    everything in it."""
    c1, c2 = repo.resolve(rev1), repo.resolve(rev2)
    roots = (repo.commit_trees(c1), repo.commit_trees(c2))
    yield from _diff_dir(repo, b"", roots[0], roots[1], roots)


def _diff_dir(repo: Repo, path: bytes, a: tuple[bytes, bytes], b: tuple[bytes, bytes], roots) -> Iterator[Change]:
    """Compare two directories and everything under them: an explicit stack, one frame per level."""
    stack: list = []
    readers = (Walker(repo, None, roots[0]), Walker(repo, None, roots[1]))

    def enter(p: bytes, x: tuple[bytes, bytes], y: tuple[bytes, bytes]):
        na, nb = repo.read_dir(p, *x), repo.read_dir(p, *y)
        # each side counts what it reads as a walk would (a tree of shared subtrees whose leaves differ
        # would otherwise list billions of changes)
        readers[0].charge(len(na.rows) + 1)
        readers[1].charge(len(nb.rows) + 1)
        readers[0].open_dir(na)
        readers[1].open_dir(nb)
        if na.self_row != nb.self_row:
            ch = _row_changes(na.self_row, nb.self_row)
            if ch:
                yield Change("M", p, Kind.DIR, tuple(ch))
        ra = {r.name: r for r in na.rows}
        rb = {r.name: r for r in nb.rows}
        stack.append((p, na, nb, ra, rb, iter(sorted(set(ra) | set(rb)))))

    entered: set = set()        # pairs of directories entered, until both trees were counted whole

    def repeated(x: tuple[bytes, bytes], y: tuple[bytes, bytes]) -> None:
        """A pair of directories met again (shared subtrees): both trees are counted whole once, each
        directory read once, so a tree past the entry limit is refused now, not after millions of lines."""
        if None in entered:
            return
        if (x, y) in entered:
            for root in roots:
                expansion(repo, b"", *root)
            entered.clear()
            entered.add(None)
        elif len(entered) < Verified.MAX_PAIRS:
            entered.add((x, y))

    if a == b:
        return
    yield from enter(path, a, b)
    while stack:
        dpath, na, nb, ra, rb, names = stack[-1]
        name = next(names, None)
        if name is None:
            stack.pop()
            readers[0].close_dir(na)
            readers[1].close_dir(nb)
            continue
        p = dpath + b"/" + name if dpath else name
        x, y = ra.get(name), rb.get(name)
        # every non-directory row of a directory diff reads is checked as the walk checks it
        for reader, node, row in ((readers[0], na, x), (readers[1], nb, y)):
            if row is not None and row.kind is not Kind.DIR:
                reader.entry(p, node, row)
        if x is not None and y is not None and x.kind is Kind.DIR and y.kind is Kind.DIR:
            ca, cb = (na.content[name].oid, na.meta[name]), (nb.content[name].oid, nb.meta[name])
            if ca != cb:
                if len(stack) + len(split_path(path)) >= MAX_DEPTH:
                    raise CorruptObject(f"{display(p[:200])}: deeper than {MAX_DEPTH} directory levels")
                repeated(ca, cb)
                yield from enter(p, ca, cb)
            continue
        if x is not None and y is not None and x.kind is y.kind:
            ch = _row_changes(x, y)
            ca, cb = na.content.get(name), nb.content.get(name)
            if (ca and ca.oid) != (cb and cb.oid):
                ch.insert(0, "target" if x.kind is Kind.SYMLINK else "content")
            if ch:
                yield Change("M", p, y.kind, tuple(ch))
            continue
        if x is not None and y is not None:  # the type changed
            yield Change("M", p, y.kind, (f"type {x.kind.name.lower()} -> {y.kind.name.lower()}",))
        elif x is not None:
            yield Change("D", p, x.kind)
        else:
            yield Change("A", p, y.kind)
        if x is not None and x.kind is Kind.DIR:
            for e in _subtree(readers[0], p, na, name):
                yield Change("D", e.path, e.kind)
        if y is not None and y.kind is Kind.DIR:
            for e in _subtree(readers[1], p, nb, name):
                yield Change("A", e.path, e.kind)


def _subtree(reader: Walker, path: bytes, node, name: bytes) -> Iterator[Entry]:
    """The entries below an added or deleted directory, walked on the side's reader (its entry count and
    hard-link leaders go on)."""
    it = reader.walk_dir(path, node.content[name].oid, node.meta[name])
    next(it, None)  # the directory itself is already reported (and counted)
    reader.count -= 1
    yield from it


__all__ = ["Change", "diff_changes"]
