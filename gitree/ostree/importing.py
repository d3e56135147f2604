"""Import of native OSTree commits into gitree (the other direction is gitree.ostree.export).

Import reads an OSTree commit chain, verifying every object as it is read and bounding what a hostile
repository can make it do (depth, sharing, sizes), into gitree commits through one transaction: the branch
moves once at the end, a failure leaves no temporary pack. Each commit keeps the original commit and
detached-metadata bytes (and the xattr order) in its `ostree/` subtree, so export reproduces every original
checksum bit for bit.
"""

from __future__ import annotations

from typing import Callable, Iterator

import gitree_compat as oc
from gitree_compat import ObjectType, OstreeRepo

from ..entry import Entry, Kind
from ..errors import BadInput, CorruptObject
from ..gittree import MODE_DIR, MODE_FILE, encode_tree
from .export import OSTREE_COMMIT, OSTREE_COMMITMETA, OSTREE_XATTR_ORDER, encode_xattr_order
from ..packwriter import OBJ_BLOB, OBJ_TREE
from ..layout import TOP_OSTREE
from ..repo import Repo
from .storedcommit import derived_message

#: Deepest directory nesting imported: OSTREE_MAX_RECURSION, beyond which ostree itself refuses to pull or
#: traverse a commit.
MAX_OSTREE_DEPTH = 256
#: A dirtree may appear at several places of a commit (identical directories share one object), so a small
#: repository can describe a huge tree (each level naming the one below twice doubles it). The entries a
#: commit expands to may exceed those of its distinct dirtrees at most this many times, plus
#: MAX_SHARED_SLACK entries; a real root filesystem stays near 1.
MAX_SHARING_FACTOR = 16
MAX_SHARED_SLACK = 65536


def _check_tree_size(src: OstreeRepo, root_tree: str) -> None:
    """Refuse a tree deeper than MAX_OSTREE_DEPTH or expanding beyond the sharing limit, before any of it
    is imported. Reads (and verifies) every distinct dirtree once, iteratively."""
    size: dict[str, tuple[int, int]] = {}  # dirtree -> (entries beneath, directory levels it spans)
    distinct = 0

    def too_deep(csum: str) -> BadInput:
        return BadInput(f"{csum}.dirtree: directories nested deeper than {MAX_OSTREE_DEPTH} levels "
                        "(MAX_OSTREE_DEPTH)")

    stack: list[tuple[str, int, tuple[int, list[str]] | None]] = [(root_tree, 0, None)]
    while stack:
        csum, depth, expanded = stack[-1]
        if csum in size:
            stack.pop()
            continue
        if expanded is None:
            if depth > MAX_OSTREE_DEPTH:
                raise too_deep(root_tree)
            tree = src.read_dirtree(csum)
            distinct += len(tree.files) + len(tree.dirs)
            kids = [t for _, t, _ in tree.dirs]
            stack[-1] = (csum, depth, (len(tree.files) + len(tree.dirs), kids))
            stack.extend((t, depth + 1, None) for t in kids if t not in size)
            continue
        own, kids = expanded
        size[csum] = (own + sum(size[t][0] for t in kids), 1 + max((size[t][1] for t in kids), default=0))
        stack.pop()
    total, levels = size[root_tree]
    if levels - 1 > MAX_OSTREE_DEPTH:  # a shared subtree met deeper than where it was first expanded
        raise too_deep(root_tree)
    if total > MAX_SHARING_FACTOR * distinct + MAX_SHARED_SLACK:
        raise BadInput(f"{root_tree}.dirtree: {len(size)} directory objects expand to {total} entries, more than "
                       f"{MAX_SHARING_FACTOR} times their {distinct} own entries plus {MAX_SHARED_SLACK} "
                       "(MAX_SHARING_FACTOR)")


def _ostree_entries(src: OstreeRepo, root_tree: str, root_meta: str, order: dict[bytes, list[bytes]],
                    seen: "_Seen") -> Iterator[tuple[Entry, Callable | None, str | None]]:
    """Entries of an OSTree tree in canonical order, each with the function yielding a file's bytes and the
    content object's checksum (None for a directory); every object is verified as it is read.

    The walk is iterative and its depth and size are checked first (_tree_size). Objects whose xattrs
    are not in sorted order (OSTree's tar import keeps libarchive's order) have that order recorded in
    `order`, so export can reproduce them. A content object this import has read and verified before
    (`seen.meta`) is not opened again: its entry is made from the remembered header, with no data function."""
    _check_tree_size(src, root_tree)
    dm = src.read_dirmeta(root_meta)
    yield Entry(b"", Kind.DIR, dm.mode & 0o7777, dm.uid, dm.gid, _sorted(b"", dm.xattrs, order)), None, None
    stack = [(b"", _dir_items(src, root_tree))]
    while stack:
        path, items = stack[-1]
        item = next(items, None)
        if item is None:
            stack.pop()
            continue
        name, kind, c1, c2 = item
        cpath = path + b"/" + name if path else name
        if kind == "d":
            dm = src.read_dirmeta(c2)
            yield Entry(cpath, Kind.DIR, dm.mode & 0o7777, dm.uid, dm.gid, _sorted(cpath, dm.xattrs, order)), \
                None, None
            stack.append((cpath, _dir_items(src, c1)))
            continue
        known = seen.meta.get(c1)
        obj = None
        if known is None:
            obj = src.open_content(c1)  # a symlink object is verified here, a file's payload as it is read
            m, size = obj.meta, obj.size
        else:
            m, size = known
        k = Kind.SYMLINK if m.is_symlink else Kind.FILE
        e = Entry(cpath, k, m.mode & 0o7777, m.uid, m.gid, _sorted(cpath, m.xattrs, order), size=size)
        if k is Kind.SYMLINK:
            e.target = m.symlink_target
            if obj is not None:
                obj.close()
                seen.meta[c1] = (m, size)
            yield e, None, c1
        elif obj is None:
            yield e, None, c1
        else:
            done: list[bool] = []

            def data(obj=obj, done=done):
                yield from obj.chunks()  # raises at the end unless the payload hashes to c1
                done.append(True)
            yield e, data, c1
            if done:  # read whole and verified: later names of c1 are not read again
                seen.meta[c1] = (m, size)


class _Seen:
    """The content objects one import has read and verified, so that each is read once however many names
    (or commits of the chain) refer to it: a few KB of dirtree naming one 256 MiB object 4,000 times would
    otherwise inflate and hash a TiB. Total work is bounded by the bytes of the distinct objects.

    `meta` maps a checksum to its verified header and size (what an entry needs); `blob` to the git blob
    its bytes became, which later names take without reading (`add(..., oid=)`); `first` to the path of
    its first name in the tree being built, while its blob id is not asked for yet (a small file's is
    known once its batch is hashed)."""

    def __init__(self) -> None:
        self.meta: dict[str, tuple[oc.FileMeta, int]] = {}
        self.blob: dict[str, bytes] = {}
        self.first: dict[str, bytes] = {}

    def add(self, tx, e: Entry, data_fn, csum: str | None) -> None:
        if e.kind is not Kind.FILE:
            tx.add(e, data_fn, False)
        elif data_fn is None:
            oid = self.blob.get(csum)
            if oid is None:
                oid = self.blob[csum] = tx.blob_id(self.first.pop(csum))
            tx.add(e, oid=oid)
        else:
            tx.add(e, data_fn, False)  # returns once the bytes are read whole (a small file's blob id later)
            self.first[csum] = e.path

    def settle(self, tx) -> None:
        """Before the tree being built becomes a commit: the blob ids of its first names, for later commits."""
        for csum, path in self.first.items():
            self.blob[csum] = tx.blob_id(path)
        self.first.clear()


def _sorted(path: bytes, xattrs, order: dict[bytes, list[bytes]]):
    xs = tuple(xattrs)
    s = tuple(sorted(xs))
    if s != xs:
        order[path] = [n for n, _ in xs]
    return s


def _dir_items(src: OstreeRepo, tree_csum: str) -> Iterator[tuple[bytes, str, str, str | None]]:
    tree = src.read_dirtree(tree_csum)
    items = [(n.encode(), "f", c, None) for n, c in tree.files] + \
            [(n.encode(), "d", t, m) for n, t, m in tree.dirs]
    items.sort(key=lambda i: i[0])
    return iter(items)


def _commit_chain(src: OstreeRepo, csum: str) -> list[str]:
    chain = [csum]
    seen = {csum}
    while True:
        c = src.read_commit(chain[-1])
        if c.parent is None or not src.has_object(c.parent, ObjectType.COMMIT):
            break
        if c.parent in seen:
            raise CorruptObject(f"{c.parent}.commit: parent chain loops")
        seen.add(c.parent)
        chain.append(c.parent)
    chain.reverse()
    return chain


def import_ostree(repo: Repo, src_path: str, ref: str, branch: str, warn=None, progress=None) -> list[bytes]:
    """Import an OSTree commit and its parent chain as gitree commits on `branch` (created or extended)."""
    repo.branch_ref(branch)
    try:
        src = OstreeRepo(src_path)
        if oc.is_valid_checksum(ref):
            csum = ref
        else:
            csum = src.resolve_ref(ref)
        if not src.has_object(csum, ObjectType.COMMIT):
            raise BadInput(f"{ref}: commit {csum} is not in {src_path}")
        chain = _commit_chain(src, csum)
    except oc.OstreeFormatError as e:
        raise BadInput(f"OSTree repository {src_path}: {e}") from None
    old_tip = repo.branch_tip(branch)
    parent = old_tip
    made: list[bytes] = []
    seen = _Seen()  # content objects read and verified, over the whole chain
    # One transaction: commits are chained and the branch moves once, at the end; a failure anywhere
    # deletes the pack being written and moves nothing.
    with repo.transaction(level=1, progress=progress, warn=warn) as tx:
        for c_csum in chain:
            try:
                data = src.read_metadata(ObjectType.COMMIT, c_csum)
                commit = oc.decode_commit(data)
                if commit.timestamp >= 1 << 63:  # git keeps a signed 64-bit time
                    raise BadInput(f"OSTree commit {c_csum}: timestamp {commit.timestamp} is past 2^63-1 seconds")
                try:
                    detached = src.read_metadata(ObjectType.COMMIT_META, c_csum)  # bounded, no symlink followed
                except oc.MissingObject:
                    detached = None
                if detached is not None:
                    try:
                        oc.decode_commitmeta(detached)  # validate
                    except oc.GVariantError as e:
                        raise BadInput(f"OSTree commit {c_csum}: {c_csum}.commitmeta: {e}") from None
                order: dict[bytes, list[bytes]] = {}
                for e, data_fn, obj in _ostree_entries(src, commit.root_tree, commit.root_meta, order, seen):
                    seen.add(tx, e, data_fn, obj)
            except oc.OstreeFormatError as e:
                raise BadInput(f"OSTree commit {c_csum}: {e}") from None
            extra = [(OSTREE_COMMIT, tx.store(OBJ_BLOB, data))]
            if detached is not None:
                extra.append((OSTREE_COMMITMETA, tx.store(OBJ_BLOB, detached)))
            if order:
                extra.append((OSTREE_XATTR_ORDER, tx.store(OBJ_BLOB, encode_xattr_order(order))))
            ost = tx.store(OBJ_TREE, encode_tree([(MODE_FILE, n, o) for n, o in extra]))
            seen.settle(tx)
            cid = tx.write_commit(message=derived_message(commit, c_csum), timestamp=commit.timestamp,
                                  parents=[parent] if parent else [], extra_top=[(MODE_DIR, TOP_OSTREE, ost)])
            made.append(cid)
            parent = cid
        tx.set_ref(branch, made[-1], old_tip, f"gitree: import-ostree {ref}")
        tx.commit()
    return made


__all__ = ["import_ostree", "MAX_OSTREE_DEPTH"]
