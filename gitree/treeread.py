"""The one validating reader of stored trees (docs/security.md, "The git reader"): a commit's top tree, each
directory (content tree, meta tree and side table agreeing on every name and kind), the walk in canonical order
with its hard-link and symlink checks, lookups by path, and fsck's whole-commit check.

Everything that reads a gitree commit - checkout, tar, ls, diff, export, bundles, fetches - reads through here.
The functions take a `repo.Repo` (they use its bounded object reads) and import nothing of it.
"""

from __future__ import annotations

import codecs
import collections
from dataclasses import dataclass
from typing import Iterator

import pygit2

from . import limits, sidetable
from .entry import MAX_DEPTH, Entry, Kind, check_fields, split_path
from .errors import CorruptObject, GitreeError, NotFound, UnsafePath
from .gittree import MODE_DIR, MODE_EXEC, MODE_FILE, MODE_LINK, ContentRef, decode_tree, iter_tree
from .layout import FORMAT_BLOB, TABLE_NAME, TOP_FORMAT, TOP_META, TOP_ROOTFS
from .names import check_name, display, fs_name, git_name
from .packwriter import OBJ_BLOB, OBJ_TREE


# ---------------------------------------------------------------------------------------------
# A commit's top tree

def commit_trees(repo, commit: pygit2.Commit) -> tuple[bytes, bytes]:
    """(content root tree id, meta root tree id) of a gitree commit."""
    check_commit_header(commit)
    top = top_entries(repo, commit)
    if TOP_ROOTFS not in top or TOP_META not in top or TOP_FORMAT not in top:
        raise NotFound(f"commit {commit.id} is not a gitree commit (no format, rootfs/ and meta/)")
    if top[TOP_FORMAT][0] != MODE_FILE or top[TOP_ROOTFS][0] != MODE_DIR or top[TOP_META][0] != MODE_DIR:
        raise CorruptObject(f"commit {commit.id}: format, rootfs/ or meta/ has the wrong type")
    fmt = repo.read_bounded(top[TOP_FORMAT][1], OBJ_BLOB, limits.MAX_META_BYTES, "format")
    if fmt != FORMAT_BLOB:
        raise CorruptObject(f"commit {commit.id} has gitree format {fmt[:32]!r}; this gitree reads {FORMAT_BLOB!r}")
    return top[TOP_ROOTFS][1], top[TOP_META][1]


def check_commit_header(commit: pygit2.Commit) -> None:
    """The commit headers gitree reads: a message encoding Python knows (git accepts any word, and the
    message of `encoding x-bogus` cannot be decoded) and author and committer times from 1970 to 2^63 s
    (an OSTree timestamp is unsigned; git accepts `-5`)."""
    enc = commit.message_encoding
    if enc is not None:
        try:
            codecs.lookup(enc)
        except LookupError:
            raise CorruptObject(f"commit {commit.id}: unknown message encoding {enc[:40]!r}") from None
    for who, t in (("author", commit.author.time), ("committer", commit.commit_time)):
        if not 0 <= t < 1 << 63:
            raise CorruptObject(f"commit {commit.id}: {who} time {t} is outside 0..2^63-1 seconds")


def top_entries(repo, commit: pygit2.Commit) -> dict[bytes, tuple[bytes, bytes]]:
    """The top tree's entries by name: (git mode, oid)."""
    data = repo.read_bounded(commit.tree_id.raw, OBJ_TREE, limits.MAX_META_BYTES, "top tree")
    out: dict[bytes, tuple[bytes, bytes]] = {}
    for mode, name, oid in decode_tree(data, "top"):
        if name in out:
            raise CorruptObject(f"commit {commit.id}: top tree names {name!r} twice")
        out[name] = (mode, oid)
    return out


# ---------------------------------------------------------------------------------------------
# One directory
class TreeFault(CorruptObject):
    """A fault at one path of a stored tree."""

    def __init__(self, path: bytes, detail: str):
        super().__init__(f"{display(path)}: {detail}")
        self.path, self.detail = path, detail


_EXPECT_GIT_MODE = {Kind.DIR: MODE_DIR, Kind.SYMLINK: MODE_LINK}
_GIT_MODES = frozenset((MODE_DIR, MODE_FILE, MODE_EXEC, MODE_LINK))


@dataclass
class DirNode:
    """One directory as stored, validated: its table rows and its content and meta tree entries by
    real name."""

    self_row: sidetable.Row
    rows: list[sidetable.Row]
    content: dict[bytes, ContentRef]            # name -> (git mode, oid)
    meta: dict[bytes, bytes]                    # subdirectory name -> meta tree oid
    weight: int = 0                             # what holding it costs, in rows (see read_dir)
    _by_name: dict[bytes, sidetable.Row] | None = None

    def row(self, name: bytes) -> sidetable.Row | None:
        if self._by_name is None:
            self._by_name = {r.name: r for r in self.rows}
        return self._by_name.get(name)


def _tree_order_key(mode: bytes, name: bytes) -> bytes:
    return name + b"/" if mode == MODE_DIR else name


def _decode_dir_tree(repo, oid: bytes, path: bytes, what: str) -> dict[bytes | None, ContentRef]:
    """A directory's content or meta tree by real name: sizes bounded, names canonical (one stored form
    per name, so no aliases), git's order, no duplicates."""
    where = display(path)
    data = repo.read_bounded(oid, OBJ_TREE, limits.MAX_TREE_BYTES, f"{what} tree of {where}")
    out: dict[bytes | None, ContentRef] = {}
    prev = None
    for mode, gname, eoid in iter_tree(data, where):
        if mode not in _GIT_MODES:
            raise TreeFault(path, f"{what} tree entry {gname[:80]!r} has git mode {mode[:16]!r}, which gitree "
                                  "never writes")
        key = _tree_order_key(mode, gname)
        if prev is not None and key <= prev:
            raise TreeFault(path, f"{what} tree entries are repeated or not in git's order ({gname!r})")
        prev = key
        if what == "meta" and gname == TABLE_NAME:
            name = None  # the table: a directory named .gitree is stored escaped, so it cannot collide
        else:
            name = fs_name(gname)
            if git_name(name) != gname:
                raise TreeFault(path, f"{what} tree name {gname!r} is not the canonical stored form of "
                                    f"{name!r} (an alias)")
            try:
                check_name(name, path)
            except UnsafePath as e:
                raise TreeFault(path, f"{what} tree: {e}") from None
        if name in out:
            raise TreeFault(path, f"{what} tree names {name!r} twice")
        out[name] = ContentRef(mode, eoid)
        if len(out) > limits.MAX_DIR_ENTRIES + 1:
            raise TreeFault(path, f"more than {limits.MAX_DIR_ENTRIES} entries in one directory")
    return out


class ReadCount:
    """Directories read_dir has read in this process (`dirs`): how tests see the work a check did."""

    dirs = 0


def read_dir(repo, path: bytes, content_oid: bytes, meta_oid: bytes) -> DirNode:
    """Read and validate one directory: its content tree, meta tree and side table must agree on every
    name and kind. Raises CorruptObject naming the directory on the first fault."""
    ReadCount.dirs += 1
    where = display(path)
    cmap = _decode_dir_tree(repo, content_oid, path, "content")
    mtree = _decode_dir_tree(repo, meta_oid, path, "meta")
    table = mtree.pop(None, None)
    if table is None:
        raise TreeFault(path, "directory has no side table")
    if table[0] != MODE_FILE:
        raise TreeFault(path, "the side table is not a regular blob")
    mmap: dict[bytes, bytes] = {}
    for name, (mode, oid) in mtree.items():
        if mode != MODE_DIR:
            raise TreeFault(path, f"unexpected entry {git_name(name)!r} in the meta tree")
        mmap[name] = oid
    data = repo.read_bounded(table[1], OBJ_BLOB, limits.MAX_TABLE_BYTES, f"side table of {where}")
    self_row, rows = sidetable.decode_table(data, where)
    table_bytes = len(data)
    del data
    if len(rows) > limits.MAX_DIR_ENTRIES:
        raise TreeFault(path, f"more than {limits.MAX_DIR_ENTRIES} entries in one directory")
    # the node keeps the trees' entries under the rows' own name objects (one per name, not three): each
    # is moved over as its row is checked, so what is left at the end is in a tree but not in the table
    content: dict[bytes, ContentRef] = {}
    metas: dict[bytes, bytes] = {}
    pieces = _pieces(self_row)
    for row in rows:
        if row.xattrs or row.sparse is not None:
            pieces += _pieces(row)
        cpath = path + b"/" + row.name if path else row.name
        c = cmap.pop(row.name, None)
        if c is not None:
            content[row.name] = c
        kname = row.kind.name.lower()
        if row.kind is Kind.DIR:
            if c is None or c.mode != MODE_DIR:
                raise TreeFault(cpath, "directory in the side table but not in the tree")
            m = mmap.pop(row.name, None)
            if m is None:
                raise TreeFault(cpath, "directory has no node in the meta tree")
            metas[row.name] = m
            if row.hardlink is not None:
                raise TreeFault(cpath, "a directory cannot be a hard link")
            continue
        if row.name in mmap:
            raise TreeFault(cpath, f"{kname} has a node in the meta tree")
        if row.kind in (Kind.FILE, Kind.SYMLINK):
            want = _EXPECT_GIT_MODE.get(row.kind) or (MODE_EXEC if row.mode & 0o100 else MODE_FILE)
            if c is None:
                raise TreeFault(cpath, f"{kname} in the side table but not in the tree")
            if c.mode != want:
                raise TreeFault(cpath, f"git mode {c.mode.decode(errors='replace')} disagrees with "
                                    f"the side table ({kname} {row.mode:o})")
        elif c is not None:
            raise TreeFault(cpath, f"{kname} must not appear in the content tree")
    for name in (*cmap, *mmap):
        raise TreeFault(path + b"/" + name if path else name, "in the "
                            f"{'content' if name in cmap else 'meta'} tree but not in the side table")
    # A row read costs about 400 bytes with two xattrs or sparse segments; each more is a Python tuple of
    # about 100 bytes (a row may hold 9,000 xattrs, a sparse map 65,536 segments: 10 rows of such maps are
    # a 5 MB table that decodes to 58 MiB), and xattr values (up to 16 MiB in one row) count a row per 512
    # bytes of table.
    weight = len(rows) + 1 + table_bytes // 512 + pieces // 3
    return DirNode(self_row, rows, content, metas, weight)


def _pieces(row: sidetable.Row) -> int:
    """The xattrs and sparse segments of a row beyond the two its size estimate includes."""
    n = len(row.xattrs) + (len(row.sparse.segments) if row.sparse is not None else 0)
    return n - 2 if n > 2 else 0


def lookup(repo, root: tuple[bytes, bytes], path: bytes, cache: dict) -> Entry | None:
    """The entry at `path` from the root, read through read_dir (`cache`: directory path -> DirNode)."""
    content, meta = root
    parts = split_path(path)
    dpath = b""
    for i in range(len(parts) + 1):
        node = cache.get(dpath)
        if node is None:
            node = read_dir(repo, dpath, content, meta)
            if len(cache) >= 64:
                cache.clear()
            cache[dpath] = node
        if i == len(parts):
            r = node.self_row
            return Entry(path, Kind.DIR, r.mode, r.uid, r.gid, r.xattrs, mtime_ns=r.mtime_ns)
        comp = parts[i]
        row = node.row(comp)
        if row is None:
            return None
        if row.kind is not Kind.DIR:
            if i != len(parts) - 1:
                return None
            e = Entry(path, row.kind, row.mode, row.uid, row.gid, row.xattrs, rdev=row.rdev,
                      mtime_ns=row.mtime_ns, hardlink=row.hardlink, sparse=row.sparse)
            c = node.content.get(comp)
            e.oid = c.oid if c is not None else None
            return e
        content, meta = node.content[comp].oid, node.meta[comp]
        dpath = dpath + b"/" + comp if dpath else comp
    return None


def _row_entry(path: bytes, node: DirNode, row: sidetable.Row) -> Entry:
    """The entry of a non-directory row, its blob id from the content tree (symlink target not read)."""
    e = Entry(path, row.kind, row.mode, row.uid, row.gid, row.xattrs, rdev=row.rdev,
              mtime_ns=row.mtime_ns, hardlink=row.hardlink, sparse=row.sparse)
    c = node.content.get(row.name)
    e.oid = c.oid if c is not None else None
    return e


class WalkLimit(CorruptObject):
    """A walk passed one of its documented limits: ends the walk, even one that collects problems."""


class NodeCache:
    """The directories one walk read, by (content tree, meta tree): a directory the tree names at many
    places, or passes on the way to many hard-link leaders, is read and parsed once while it stays here.
    Least recently used first out; the weight it holds (DirNode.weight: rows, plus one per 512 bytes of
    side table) is at most WEIGHT, and less while the walk holds more open (`room`), so that what a walk
    holds stays within limits.MAX_OPEN_ENTRIES: a 16 MiB side table named at a thousand places is
    inflated and parsed once, not a thousand times."""

    WEIGHT = 1 << 16

    def __init__(self, repo) -> None:
        self.repo = repo
        self._nodes: collections.OrderedDict[tuple[bytes, bytes], DirNode] = collections.OrderedDict()
        self.weight = 0

    def read(self, path: bytes, content: bytes, meta: bytes, held: int = 0) -> tuple[DirNode, bool]:
        """The directory, and whether it had to be read (False: it came from the cache). `held`: the
        weight the walk holds besides."""
        key = (content, meta)
        node = self._nodes.get(key)
        if node is not None:
            self._nodes.move_to_end(key)
            return node, False
        node = read_dir(self.repo, path, content, meta)
        self._nodes[key] = node
        self.weight += node.weight
        self.fit(held)
        return node, True

    def fit(self, held: int) -> None:
        """Let go of the least recently used directories until the cache's weight and `held` fit."""
        room = min(self.WEIGHT, limits.MAX_OPEN_ENTRIES - held)
        while self._nodes and self.weight > room:
            _, old = self._nodes.popitem(last=False)
            self.weight -= old.weight


class Leaders:
    """Finds the hard-link leaders of one walk, bounded whatever the tree: each target is looked up
    once (remembered, up to MEMO_BYTES of paths), a leader in the link's own directory is taken from
    the directory being walked, and directories read on the way stay in a tree of read directories
    (up to KEEP_ROWS rows, then it starts over from the directories of the last lookup). The steps
    and rows read over the whole walk are counted against limits.MAX_LEADER_WORK (a link whose
    target was seen costs nothing more), so sharing or cache eviction cannot multiply the work:
    without this a 56 KB bundle of a million links to a leader 1,000 levels deep cost 10^9
    directory reads."""

    MEMO_BYTES = 16 << 20
    KEEP_ROWS = 1 << 16

    def __init__(self, repo, root: tuple[bytes, bytes], walk_open=lambda: 0, nodes: NodeCache | None = None) -> None:
        self.repo = repo
        self.root = root
        self.walk_open = walk_open      # rows the walk holds open: with the kept ones, MAX_OPEN_ENTRIES
        self.nodes = nodes or NodeCache(repo)   # the walk's: a directory read again costs a step, not its rows
        self.work = 0
        self._memo: dict[bytes, tuple[bytes, Entry | str]] = {}
        self._memo_bytes = 0
        self._tree: list | None = None      # [DirNode, {name: [DirNode, {...}]}] from the root
        self.kept = 0                       # weight of the directories in _tree (the walk counts it too)

    def _spend(self, n: int) -> None:
        self.work += n
        if self.work > limits.MAX_LEADER_WORK:
            raise WalkLimit(f"finding hard-link leaders takes more than {limits.MAX_LEADER_WORK} directory "
                                "steps and rows (the limit of one walk)")

    def find(self, target: bytes, path: bytes, node: DirNode) -> Entry | str:
        """The leader entry at `target` for a hard link at `path` in directory `node`, or why it cannot
        be one (a message). Each distinct target is parsed and looked up once, so a link costs a few
        steps in C however deep its target. Raises WalkLimit past the work limit."""
        found = self._memo.get(target)
        if found is None:
            found = self._first(target, node, path)
        key, lead = found
        if isinstance(lead, str):
            return lead
        # canonical order compares names component by component; NUL sorts below every name byte
        if key >= path.replace(b"/", b"\0"):
            return f"hard link to {display(target)}, which is not an earlier entry"
        return lead

    def _first(self, target: bytes, node: DirNode, path: bytes) -> tuple[bytes, Entry | str]:
        """(the target's order key, its leader or why there is none), remembered."""
        parts = split_path(target)
        self._spend(len(parts))
        if not parts or any(not p or p in (b".", b"..") or b"\0" in p for p in parts) or len(parts) > MAX_DEPTH:
            lead: Entry | str | None = f"hard link to {target[:200]!r}, which is not a path inside the tree"
        elif target.rpartition(b"/")[0] == path.rpartition(b"/")[0]:
            row = node.row(parts[-1])       # a leader beside its link: the directory being walked
            lead = None if row is None else "dir" if row.kind is Kind.DIR else _row_entry(target, node, row)
        else:
            try:
                lead = self._walk(parts)
            except WalkLimit:
                raise
            except CorruptObject as e:
                lead = f"hard link to {display(target)}: {e}"
        if not isinstance(lead, Entry) or lead.hardlink is not None:
            lead = lead if isinstance(lead, str) and lead != "dir" else \
                f"hard link to {display(target)}, which is not an earlier entry"
        if self._memo_bytes + 2 * len(target) > self.MEMO_BYTES:
            self._memo.clear()
            self._memo_bytes = 0
        found = self._memo[target] = (target.replace(b"/", b"\0"), lead)
        self._memo_bytes += 2 * len(target)
        return found

    def _walk(self, parts: list[bytes]) -> Entry | str | None:
        if self._tree is None:
            self._spend(1)
            node, fresh = self.nodes.read(b"", *self.root, self.walk_open())
            if fresh:
                self._spend(node.weight)
            self._tree, self.kept = [node, {}], node.weight
        cur = self._tree
        chain = [(b"", cur)]
        for i, comp in enumerate(parts[:-1]):
            self._spend(1)
            nxt = cur[1].get(comp)
            if nxt is None:
                row = cur[0].row(comp)
                if row is None or row.kind is not Kind.DIR:
                    return None
                child, fresh = self.nodes.read(b"/".join(parts[:i + 1]), cur[0].content[comp].oid,
                                               cur[0].meta[comp], self.walk_open() + self.kept)
                if fresh:
                    self._spend(child.weight)
                nxt = [child, {}]
                self.kept += child.weight
                if self.kept > self.KEEP_ROWS or self.kept + self.walk_open() > limits.MAX_OPEN_ENTRIES:
                    # start over from the directories on this path (however large: a leader's directory
                    # is where the next links point too)
                    for (_, up), (name, down) in zip(chain, chain[1:], strict=False):
                        up[1].clear()
                        up[1][name] = down
                    cur[1].clear()
                    self.kept = sum(n[0].weight for _, n in chain) + child.weight
                    if self.kept + self.walk_open() > limits.MAX_OPEN_ENTRIES:
                        raise WalkLimit(f"the directories open on one path, and those a hard-link leader is "
                                        f"found through, hold more than {limits.MAX_OPEN_ENTRIES} entries "
                                        "(the limit of one walk)")
                cur[1][comp] = nxt
            cur = nxt
            chain.append((comp, cur))
        row = cur[0].row(parts[-1])
        if row is None:
            return None
        return "dir" if row.kind is Kind.DIR else _row_entry(b"/".join(parts), cur[0], row)


class Verified:
    """Directories already verified whole, for checking a batch of commits (bundle apply, fetch, clone):
    commits that differ by one file share all other directories, and each is read once, not once per
    commit, so the work is that of the new objects, not commits times tree size.

    A directory is the pair (content tree, meta tree): everything the reader checks below it depends on
    these objects alone - except hard links, whose leader is looked up from the commit's root, so a
    subtree holding one is never remembered - and on where it sits, which is kept with it: its height
    (directory levels below it: it passes the depth limit at any level up to MAX_TREE_DEPTH - height)
    and its entries (added to the walk's count, so the entry limit holds as if it were walked).

    Export keeps these across runs, in authenticated records keyed with gitree/ostree/export.py's
    VERIFY_RULES: a change to what this reader checks must change that version."""

    MAX_PAIRS = 1 << 20     # remembered directories (about 200 bytes each); beyond, later ones are re-read

    def __init__(self) -> None:
        self.dirs: dict[tuple[bytes, bytes], tuple[int, int]] = {}   # (content, meta) -> (height, entries)

    def remember(self, content: bytes, meta: bytes, height: int, entries: int) -> None:
        if len(self.dirs) < self.MAX_PAIRS:
            self.dirs[(content, meta)] = (height, entries)

    def known(self, content: bytes, meta: bytes) -> tuple[int, int] | None:
        """(height, entries) of a directory verified whole before, or None: the walk reads it. A subclass
        may vouch for more (export: directories an authenticated record says were verified)."""
        return self.dirs.get((content, meta))

    def read(self, content: bytes, meta: bytes, node: DirNode) -> None:
        """Called with every directory the walk reads and validates (export keeps them for its plan)."""


class Walker:
    """Walks one directory subtree iteratively (an explicit stack, one open listing per level).

    Hard links are checked against their leader, looked up from `root` (so a leader outside the walked
    subtree is found too): it must come earlier in canonical order, be neither a directory nor a hard
    link itself, and have the same metadata and content.

    With `verified` (a Verified), a subdirectory verified before at a place where the limits let it be is
    skipped (its entries are not yielded), and every fault-free subtree without hard links is
    remembered: for checking, not for listing."""

    # A walk reads a subtree the tree names at many places at each of them (a listing yields every entry; a
    # check skips only subtrees without hard links). Once the subtrees it met again (same content and meta
    # tree) hold REPEAT_BUDGET entries, the whole expansion is counted first (expansion(): each directory read
    # once), so a tree past MAX_COMMIT_ENTRIES is refused then, not after millions of entries.
    REPEAT_BUDGET = 1 << 16

    def __init__(self, repo, problems: list | None, root: tuple[bytes, bytes], verified: Verified | None = None):
        self.repo = repo
        self.problems = problems
        self.root = root
        self.count = 0
        self.open_rows = 0      # rows of the directories open on the walk's path (MAX_OPEN_ENTRIES)
        self.nodes = NodeCache(repo)
        self.leaders = Leaders(repo, root, lambda: self.open_rows, self.nodes)
        self._linked: dict[tuple[bytes, bytes], tuple[int, int]] = {}  # as Verified, subtrees with hard links
        self.verified = verified
        self._sizes: dict[tuple[bytes, bytes], int] = {}   # (content, meta) -> entries below, once walked
        self._repeated = 0

    def fault(self, path: bytes, msg: str | CorruptObject) -> None:
        if isinstance(msg, TreeFault):
            path, msg = msg.path, msg.detail
        elif isinstance(msg, CorruptObject) and self.problems is None:
            raise msg  # its message already names the object
        if self.problems is None:
            raise TreeFault(path, str(msg))
        self.problems.append((path, str(msg)))

    def _read(self, path: bytes, content: bytes, meta: bytes) -> DirNode | None:
        try:
            return self.nodes.read(path, content, meta, self.open_rows + self.leaders.kept)[0]
        except CorruptObject as e:
            self.fault(path, e)
            return None

    def _problem_count(self) -> int:
        return 0 if self.problems is None else len(self.problems)

    def _tick(self) -> None:
        self.charge(1)

    def open_dir(self, node: DirNode) -> None:
        """A directory's rows are held while it is open: all of them on one path are bounded, as a few
        KB of bundle can nest directories of MAX_DIR_ENTRIES (three of them took 336 MB)."""
        self.open_rows += node.weight
        self.nodes.fit(self.open_rows + self.leaders.kept)
        if self.open_rows > limits.MAX_OPEN_ENTRIES:
            raise WalkLimit(f"the directories open on one path hold more than {limits.MAX_OPEN_ENTRIES} entries "
                            "(the limit of one walk)")

    def close_dir(self, node: DirNode) -> None:
        self.open_rows -= node.weight

    def charge(self, n: int) -> None:
        """Count `n` entries against the walk's limit (MAX_COMMIT_ENTRIES)."""
        self.count += n
        if self.count > limits.MAX_COMMIT_ENTRIES:
            raise WalkLimit(f"the tree has more than {limits.MAX_COMMIT_ENTRIES} entries (the limit of one walk)")

    def walk_dir(self, path: bytes, content_oid: bytes, meta_oid: bytes) -> Iterator[Entry]:
        node = self._read(path, content_oid, meta_oid)
        if node is None:
            return
        base_depth = len(split_path(path))
        r = node.self_row
        self._tick()
        yield Entry(path, Kind.DIR, r.mode, r.uid, r.gid, r.xattrs, mtime_ns=r.mtime_ns)
        memo = self.verified
        if memo is not None:
            memo.read(content_oid, meta_oid, node)
        # per open directory: (path, node, rows left, its (content, meta), entries count when entered,
        # [height so far, holds a hard link, problems collected when entered]); with `problems`, a subtree
        # is remembered only if no problem was collected inside it
        self.open_dir(node)
        stack: list[tuple] = [(path, node, iter(node.rows), (content_oid, meta_oid), self.count - 1,
                               [0, False, self._problem_count()])]
        while stack:
            dpath, node, rows, pair, start, acc = stack[-1]
            row = next(rows, None)
            if row is None:
                stack.pop()
                self.close_dir(node)
                if memo is not None and acc[2] == self._problem_count():
                    if not acc[1]:
                        memo.remember(*pair, acc[0], self.count - start)
                    elif len(self._linked) < Verified.MAX_PAIRS:
                        # its links' leaders came earlier here, so they come earlier than any later place
                        # of the same subtree in this commit (a subtree cannot hold itself)
                        self._linked[pair] = (acc[0], self.count - start)
                if len(self._sizes) < Verified.MAX_PAIRS:
                    self._sizes[pair] = self.count - start - 1
                if stack:
                    up = stack[-1][5]
                    up[0] = max(up[0], acc[0] + 1)
                    up[1] = up[1] or acc[1]
                continue
            cpath = dpath + b"/" + row.name if dpath else row.name
            self._tick()
            if row.kind is Kind.DIR:
                level = base_depth + len(stack)
                if level > limits.MAX_TREE_DEPTH:
                    self.fault(cpath[:200], f"deeper than {limits.MAX_TREE_DEPTH} directory levels (the depth limit)")
                    continue
                cpair = (node.content[row.name].oid, node.meta[row.name])
                known = None
                if memo is not None:
                    known = memo.known(*cpair)
                    if known is None:
                        known = self._linked.get(cpair)
                        if known is not None:
                            acc[1] = True   # holds links still: the parent is not one to remember
                seen = self._sizes.get(cpair)
                if seen is not None and self._repeated <= self.REPEAT_BUDGET:
                    self._repeated += seen
                    if self._repeated > self.REPEAT_BUDGET:
                        expansion(self.repo, path, content_oid, meta_oid)
                if known is not None and level + known[0] <= limits.MAX_TREE_DEPTH:
                    acc[0] = max(acc[0], known[0] + 1)
                    self.charge(known[1] - 1)      # its own entry is counted above
                    continue
                child = self._read(cpath, *cpair)
                if child is None:
                    continue
                if memo is not None:
                    memo.read(*cpair, child)
                r = child.self_row
                yield Entry(cpath, Kind.DIR, r.mode, r.uid, r.gid, r.xattrs, mtime_ns=r.mtime_ns)
                self.open_dir(child)
                stack.append((cpath, child, iter(child.rows), cpair, self.count - 1,
                              [0, False, self._problem_count()]))
                continue
            if row.hardlink is not None:
                acc[1] = True
            ent = self.entry(cpath, node, row)
            if ent is not None:
                yield ent

    def entry(self, path: bytes, node: DirNode, row: sidetable.Row) -> Entry | None:
        """The entry of a non-directory row of a validated directory: its symlink target read (bounded)
        and checked, its hard link checked. None after a fault (with `problems`)."""
        ent = Entry(path, row.kind, row.mode, row.uid, row.gid, row.xattrs, rdev=row.rdev,
                    mtime_ns=row.mtime_ns, hardlink=row.hardlink, sparse=row.sparse)
        c = node.content.get(row.name)
        if c is not None:
            ent.oid = c.oid
        if row.kind is Kind.SYMLINK:
            try:
                ent.target = self.repo.read_bounded(c.oid, OBJ_BLOB, limits.SYMLINK_MAX, display(path))
            except CorruptObject as e:
                self.fault(path, str(e))
                return None
            why = check_fields(ent)
            if why is not None:
                self.fault(path, why)
                return None
        if row.hardlink is not None:
            why = self._check_link(path, ent, node)
            if why is not None:
                self.fault(path, why)
                return None
        return ent

    def _check_link(self, path: bytes, ent: Entry, node: DirNode) -> str | None:
        lead = self.leaders.find(ent.hardlink, path, node)
        if isinstance(lead, str):
            return lead
        if (lead.kind, lead.mode, lead.uid, lead.gid, lead.xattrs, lead.rdev, lead.oid, lead.sparse) != \
                (ent.kind, ent.mode, ent.uid, ent.gid, ent.xattrs, ent.rdev, ent.oid, ent.sparse):
            return f"hard link disagrees with {display(ent.hardlink)}"
        return None


def expansion(repo, path: bytes, content_oid: bytes, meta_oid: bytes) -> int:
    """The number of entries below a directory as a walk would yield them, each distinct directory (content
    and meta tree) read once; raises CorruptObject as soon as it passes MAX_COMMIT_ENTRIES, or on a fault
    in a directory. Stops at the depth limit (the walk reports that)."""
    sizes: dict[tuple[bytes, bytes], int] = {}
    node = read_dir(repo, path, content_oid, meta_oid)
    # per open directory: (its pair, its path, directory rows left, [entries below so far])
    stack = [((content_oid, meta_oid), path, iter([r for r in node.rows if r.kind is Kind.DIR]),
              [len(node.rows)], node)]
    held = node.weight      # what the directories on the stack hold (MAX_OPEN_ENTRIES, as a walk)
    while stack:
        pair, dpath, rows, total, node = stack[-1]
        row = next(rows, None)
        if row is None:
            stack.pop()
            held -= node.weight
            if len(sizes) < Verified.MAX_PAIRS:
                sizes[pair] = total[0]
            if not stack:
                return total[0]
            stack[-1][3][0] += total[0]
            continue
        if total[0] + 1 > limits.MAX_COMMIT_ENTRIES:
            break
        cpair = (node.content[row.name].oid, node.meta[row.name])
        known = sizes.get(cpair)
        if known is not None:
            total[0] += known
            continue
        if len(split_path(path)) + len(stack) > limits.MAX_TREE_DEPTH:
            continue
        cpath = dpath + b"/" + row.name if dpath else row.name
        child = read_dir(repo, cpath, *cpair)
        held += child.weight
        if held > limits.MAX_OPEN_ENTRIES:
            raise WalkLimit(f"the directories open on one path hold more than {limits.MAX_OPEN_ENTRIES} entries "
                            "(the limit of one walk)")
        stack.append((cpair, cpath, iter([r for r in child.rows if r.kind is Kind.DIR]), [len(child.rows)], child))
    raise WalkLimit(f"the tree has more than {limits.MAX_COMMIT_ENTRIES} entries (the limit of one walk)")


# ---------------------------------------------------------------------------------------------
# A whole commit

def walk(repo, commit: pygit2.Commit, subpath: bytes = b"", problems: list | None = None,
         verified: Verified | None = None) -> Iterator[Entry]:
    """Every entry of a commit in canonical order (depth first, names sorted by bytes), validated.

    With `problems` given, faults are appended as (path, message) and the walk goes on past them
    (a faulty directory is not entered); otherwise the first raises CorruptObject.
    """
    root = commit_trees(repo, commit)
    content, meta = root
    prefix = b""
    for comp in split_path(subpath):
        node = read_dir(repo, prefix, content, meta)
        row = node.row(comp)
        if row is None or row.kind is not Kind.DIR:
            raise NotFound(f"no directory {display(subpath)} in {commit.id}")
        content, meta = node.content[comp].oid, node.meta[comp]
        prefix = prefix + b"/" + comp if prefix else comp
    yield from Walker(repo, problems, root, verified).walk_dir(prefix, content, meta)


def verify(repo, commit: pygit2.Commit, problems: list | None = None, verified: Verified | None = None) -> None:
    """Read a whole commit as every command does (fsck's check): raise CorruptObject on the first
    fault, or with `problems` given, collect every fault. Also checks every file's blob exists.

    `verified`: directories checked before by this batch (a Verified); they are not read again. Without
    one, a directory that the tree holds at several places is still read once (fsck too: a subtree where a
    problem was collected is not remembered, so each of its places is read and reported)."""
    if verified is None:
        verified = Verified()
    try:
        for e in walk(repo, commit, problems=problems, verified=verified):
            if e.kind is Kind.FILE and e.hardlink is None:
                try:
                    size = repo.blob_size(e.oid, display(e.path))
                    if e.sparse is not None and size != e.sparse.data_size:
                        raise CorruptObject(f"blob {e.oid.hex()} does not hold the {e.sparse.data_size} data "
                                            "bytes of its sparse map")
                except CorruptObject as err:
                    if problems is None:
                        raise CorruptObject(f"{display(e.path)}: {err}") from None
                    problems.append((e.path, str(err)))
    except GitreeError as err:
        if problems is None:
            raise
        problems.append((b"", str(err)))


def find(repo, root: tuple[bytes, bytes], path: bytes) -> Entry | None:
    """The entry at `path` below root (content tree, meta tree), or None. Reads through read_dir."""
    return lookup(repo, root, path, {})


__all__ = ["TreeFault", "DirNode", "Walker", "Verified", "ReadCount", "commit_trees", "top_entries", "read_dir",
           "lookup", "Leaders", "WalkLimit", "expansion", "walk", "verify", "find"]
