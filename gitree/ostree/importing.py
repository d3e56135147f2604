"""Import of native OSTree commits into gitree (the other direction is gitree.ostree.export).

Import reads an OSTree commit chain, verifying every object as it is read and bounding what a hostile
repository can make it do (depth, sharing, sizes), into gitree commits through one transaction: the branch
moves once at the end, a failure leaves no temporary pack. Each commit keeps the original commit and
detached-metadata bytes (and the xattr order) in its `ostree/` subtree, so export reproduces every original
checksum bit for bit.
"""

from __future__ import annotations

from typing import Iterator

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


#: Directory sizes remembered over a commit chain (dirtree checksum -> entries beneath, levels); past this
#: many the memory is cleared before the next commit's check.
SIZE_CACHE = 1 << 18


class _Shape:
    """The shape of the dirtrees of one import's commit chain, and the work its walks may do.

    `check` refuses a commit whose tree is deeper than MAX_OSTREE_DEPTH or expands past the sharing limit
    before any of it is imported, reading each dirtree the chain has not met yet once (iteratively). `walked`
    counts the entries the walks take one by one over the whole chain, against the same limit: a directory an
    earlier commit wrote is taken whole (Transaction.add_known), so a chain of commits sharing their trees
    costs the work of its distinct directories, and a chain whose shared directories cannot be taken whole
    (their xattr order is recorded by path) is refused once it costs more than MAX_SHARING_FACTOR times them."""

    def __init__(self) -> None:
        self.size: dict[str, tuple[int, int]] = {}  # dirtree -> (entries beneath, directory levels it spans)
        self.distinct = 0   # entries of the dirtrees read, over the chain
        self.work = 0       # entries the walks yielded one at a time, over the chain

    def limit(self) -> int:
        return MAX_SHARING_FACTOR * self.distinct + MAX_SHARED_SLACK

    def check(self, src: OstreeRepo, root_tree: str) -> None:
        size = self.size
        if len(size) > SIZE_CACHE:
            size.clear()

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
                self.distinct += len(tree.files) + len(tree.dirs)
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
        if total > self.limit():
            raise BadInput(f"{root_tree}.dirtree: the tree expands to {total} entries, more than "
                           f"{MAX_SHARING_FACTOR} times the {self.distinct} entries of the directory objects read "
                           f"plus {MAX_SHARED_SLACK} (MAX_SHARING_FACTOR)")

    def walked(self, root_tree: str) -> None:
        self.work += 1
        if self.work > self.limit():
            raise BadInput(f"{root_tree}.dirtree: the commit chain walks more than {MAX_SHARING_FACTOR} times "
                           f"the {self.distinct} entries of its directory objects plus {MAX_SHARED_SLACK} "
                           "(MAX_SHARING_FACTOR)")


def _import_tree(tx, src: OstreeRepo, root_tree: str, root_meta: str, order: dict[bytes, list[bytes]],
                 seen: "_Seen", shape: _Shape) -> None:
    """Add an OSTree tree to the tree being built, verifying every object as it is read.

    The walk is iterative and its depth and size are checked first (_Shape). Objects whose xattrs are not in
    sorted order (OSTree's tar import keeps libarchive's order) have that order recorded in `order`, so export
    can reproduce them. A content object this import has read and verified before (`seen.meta`) is not opened
    again: its entry is made from the remembered header. A directory is added after what it holds, with its
    dirtree and dirmeta checksums as its key unless an xattr order was recorded inside it; a directory of the
    same key that an earlier commit of the chain wrote is taken whole."""
    shape.check(src, root_tree)
    e, clean = _dir_entry(src, b"", root_meta, order)
    key = (root_tree + root_meta).encode()
    if clean and tx.add_known(e, key):
        return
    stack = [[b"", _dir_items(src, root_tree), e, clean, key]]
    while stack:
        frame = stack[-1]
        path = frame[0]
        item = next(frame[1], None)
        if item is None:
            stack.pop()
            _, _, e, clean, key = frame
            tx.add(e, key=key if clean else None)
            if not clean and stack:
                stack[-1][3] = False
            continue
        shape.walked(root_tree)
        name, kind, c1, c2 = item
        cpath = path + b"/" + name if path else name
        if kind == "d":
            e, clean = _dir_entry(src, cpath, c2, order)
            key = (c1 + c2).encode()
            if not (clean and tx.add_known(e, key)):
                stack.append([cpath, _dir_items(src, c1), e, clean, key])
            continue
        known = seen.meta.get(c1)
        obj = None
        if known is None:
            obj = src.open_content(c1)  # a symlink object is verified here, a file's payload as it is read
            m, size = obj.meta, obj.size
        else:
            m, size = known
        k = Kind.SYMLINK if m.is_symlink else Kind.FILE
        xattrs, clean = _sorted(cpath, m.xattrs, order)
        if not clean:
            frame[3] = False
        e = Entry(cpath, k, m.mode & 0o7777, m.uid, m.gid, xattrs, size=size)
        if k is Kind.SYMLINK:
            e.target = m.symlink_target
            if obj is not None:
                obj.close()
                seen.meta[c1] = (m, size)
            seen.add(tx, e, None, c1)
        elif obj is None:
            seen.add(tx, e, None, c1)
        else:
            done: list[bool] = []

            def data(obj=obj, done=done):
                yield from obj.chunks()  # raises at the end unless the payload hashes to c1
                done.append(True)
            seen.add(tx, e, data, c1)
            if done:  # read whole and verified: later names of c1 are not read again
                seen.meta[c1] = (m, size)


def _dir_entry(src: OstreeRepo, path: bytes, dirmeta: str, order: dict[bytes, list[bytes]]) -> tuple[Entry, bool]:
    dm = src.read_dirmeta(dirmeta)
    xattrs, clean = _sorted(path, dm.xattrs, order)
    return Entry(path, Kind.DIR, dm.mode & 0o7777, dm.uid, dm.gid, xattrs), clean


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


def _sorted(path: bytes, xattrs, order: dict[bytes, list[bytes]]) -> tuple[tuple, bool]:
    """The xattrs sorted, and whether they were (otherwise their order is recorded for `path`)."""
    xs = tuple(xattrs)
    s = tuple(sorted(xs))
    if s != xs:
        order[path] = [n for n, _ in xs]
        return s, False
    return s, True


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
    shape = _Shape()  # dirtree sizes and the walks' work, over the whole chain
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
                _import_tree(tx, src, commit.root_tree, commit.root_meta, order, seen, shape)
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
