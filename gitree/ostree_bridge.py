"""The bridge between gitree commits and native OSTree commits, over gitree_compat's public API.

Export walks a gitree commit directory by directory and writes dirtree/dirmeta/content objects whose
checksums equal what `ostree commit` computes for the same tree. A cache kept in the git repository
(ref refs/gitree/ostree-cache) maps git trees and blobs (with their metadata) to OSTree checksums, so a
later export skips unchanged directories without reading them, and never rehashes an unchanged file.

Import reads an OSTree commit chain (verifying every object) into gitree commits, and keeps the
original commit and detached-metadata bytes in the commit's `ostree/` subtree so that export
reproduces every original checksum bit for bit.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import multiprocessing
import os
import stat
import struct
from dataclasses import dataclass, field
from typing import Callable, Iterator

import pygit2

import gitree_compat as oc
from gitree_compat import Commit, DirMeta, FileMeta, ObjectType, OstreeRepo, Variant

from . import ostreemeta
from .entry import Entry, Kind
from .errors import BadInput, CorruptObject, GitreeError, UnsupportedEntry
from .gittree import MODE_DIR, MODE_FILE, decode_tree, encode_tree
from .names import display, esc, unesc
from .packwriter import OBJ_BLOB, OBJ_TREE
from .store import TOP_OSTREE, Importer, Repo, stderr_warn

CACHE_REF = "refs/gitree/ostree-cache"
WORKERS = max(2, min(4, os.cpu_count() or 2))

# Names in the ostree/ subtree of an imported commit (docs/ostree-bridge.md).
OSTREE_COMMIT = b"commit"          # the original .commit object bytes
OSTREE_COMMITMETA = b"commitmeta"  # the original .commitmeta bytes, when there was one
OSTREE_XATTR_ORDER = b"xattr-order"  # xattr order of objects whose xattrs were not sorted (tar imports)


def encode_xattr_order(order: dict[bytes, list[bytes]]) -> bytes:
    """Lines `PATH NAME...`, token-escaped (docs/format.md 4.2), sorted by path; the root is `.`."""
    lines = []
    for path in sorted(order):
        toks = [esc(path) if path else b"."] + [esc(n) for n in order[path]]
        lines.append(b" ".join(toks) + b"\n")
    return b"".join(lines)


def decode_xattr_order(data: bytes) -> dict[bytes, list[bytes]]:
    out = {}
    for line in data.splitlines():
        toks = line.split(b" ")
        try:
            out[b"" if toks[0] == b"." else unesc(toks[0])] = [unesc(t) for t in toks[1:]]
        except ValueError:
            raise CorruptObject("ostree/xattr-order: bad escape") from None
    return out


# ---------------------------------------------------------------------------------------------
# The cache: git object ids (+ metadata) -> OSTree checksums, stored as git blobs.

class ExportCache:
    """Three maps with 20-byte keys: files -> content checksum, dirs -> (dirtree, dirmeta), commits."""

    RECORD = {b"files": 32, b"dirs": 64, b"commits": 32}

    def __init__(self, repo: Repo):
        self.repo = repo
        self.maps: dict[bytes, dict[bytes, bytes]] = {k: {} for k in self.RECORD}
        self.loaded_tree: bytes | None = None
        self.dirty = False
        self._load()

    def _load(self) -> None:
        try:
            ref = self.repo.git.references[CACHE_REF]
        except KeyError:
            return
        try:
            commit = self.repo.git[ref.target]
            self.loaded_tree = commit.tree_id.raw
            for _mode, name, oid in decode_tree(self.repo.read(self.loaded_tree, OBJ_TREE)):
                size = self.RECORD.get(name)
                if size is None:
                    continue
                data = self.repo.read(oid, OBJ_BLOB)
                rec = 20 + size
                if len(data) % rec:
                    raise CorruptObject("export cache blob has a partial record")
                m = self.maps[name]
                for i in range(0, len(data), rec):
                    m[data[i:i + 20]] = data[i + 20:i + rec]
        except (CorruptObject, KeyError):
            stderr_warn("the OSTree export cache is unreadable; rebuilding it")
            self.maps = {k: {} for k in self.RECORD}

    def get(self, table: bytes, key: bytes) -> bytes | None:
        return self.maps[table].get(key)

    def put(self, table: bytes, key: bytes, value: bytes) -> None:
        if self.maps[table].get(key) != value:
            self.maps[table][key] = value
            self.dirty = True

    def save(self) -> None:
        if not self.dirty:
            return
        entries = []
        for name, m in self.maps.items():
            data = b"".join(k + m[k] for k in sorted(m))
            entries.append((MODE_FILE, name, self.repo.git.create_blob(data).raw))
        tree = self.repo.git.odb.write(pygit2.enums.ObjectType.TREE, encode_tree(entries))
        sig = pygit2.Signature("gitree", "gitree@localhost", 0, 0)
        cid = self.repo.git.create_commit(None, sig, sig, "gitree OSTree export cache\n", tree, [])
        self.repo.git.create_reference_direct(CACHE_REF, cid, True, message="gitree: export cache")
        self.dirty = False


def _key(*parts: bytes) -> bytes:
    h = hashlib.sha1()
    for p in parts:
        h.update(struct.pack(">I", len(p)))
        h.update(p)
    return h.digest()


# ---------------------------------------------------------------------------------------------
# Export

@dataclass
class ExportOptions:
    ref: str
    mode: str = "archive"
    bindings: bool = True
    history: bool = False
    strict: bool = False
    update_summary: bool = False
    extra_metadata: list[tuple[str, Variant]] = field(default_factory=list)
    signers: list = field(default_factory=list)  # gitree.signing.Signer: sign each commit and the summary


@dataclass
class ExportResult:
    checksum: str
    commits: list[str]
    skipped: list[tuple[bytes, str]]
    files_written: int = 0
    files_cached: int = 0
    dirs_cached: int = 0


# Content objects are read from git, hashed, compressed and written by worker processes (the GIL would
# otherwise serialise the Python around zlib and hashlib), in batches to keep the messaging cheap.
BATCH_FILES = 32
_W: dict = {}


def _worker_init(repo_path: str, target_path: str) -> None:
    _W["repo"] = Repo(repo_path)
    _W["target"] = OstreeRepo(target_path)


def _worker_write(jobs: list) -> list[tuple[str, int]]:
    repo, target = _W["repo"], _W["target"]
    out = []
    for meta, blob, where in jobs:
        if meta.is_symlink:
            out.append((target.write_content(meta, ()), 0))
            continue
        size = repo.blob_size(blob, where)
        out.append((target.write_content(meta, repo.blob_chunks(blob, size, where)), size))
    return out


class _Slot:
    """One content object to write: filled in when its batch's job finishes."""

    __slots__ = ("future", "batch", "csum")

    def __init__(self):
        self.future = None
        self.batch: list = []
        self.csum: str | None = None


@dataclass
class _PendingDir:
    path: bytes
    dkey: bytes
    self_row: object
    files: list = field(default_factory=list)   # (name, checksum | (cache key, future))
    dirs: list = field(default_factory=list)    # (name, (dirtree, dirmeta) | _PendingDir)
    result: tuple[str, str] | None = None


def _ostree_name(name: bytes) -> str | None:
    try:
        return name.decode("utf-8")
    except UnicodeDecodeError:
        return None


class Exporter:
    def __init__(self, repo: Repo, target: OstreeRepo, opts: ExportOptions, warn=stderr_warn, progress=None):
        self.repo = repo
        self.target = target
        self.opts = opts
        self.warn = warn
        self.progress = progress
        self.canonical = target.mode == "bare-user-only"
        self.variant = self.base_variant = b"canonical" if self.canonical else b"full"
        self.xorder: dict[bytes, list[bytes]] | None = None  # set while exporting an imported commit
        self.cache = ExportCache(repo)
        self.pool: concurrent.futures.ProcessPoolExecutor | None = None  # started on the first write
        self.batch: list = []
        self.skipped: list[tuple[bytes, str]] = []
        self.files_written = self.files_cached = self.dirs_cached = 0
        self.planned_files: dict[bytes, _Slot] = {}
        self.planned_dirs: dict[bytes, _PendingDir] = {}
        self.resolved: set[bytes] = set()
        self.nbytes = 0

    # content

    def _xattrs(self, path: bytes, xattrs):
        """xattrs as OSTree will hash them: as `ostree commit` of a directory does (sorted, empty values
        dropped), or, for a commit imported from OSTree, exactly as the original objects had them."""
        if self.xorder is None:
            return oc.canonical_xattrs(xattrs)
        order = self.xorder.get(path)
        if order is None:
            return tuple(xattrs)
        values = dict(xattrs)
        return tuple((n, values[n]) for n in order if n in values)

    def _file_meta(self, path: bytes, e_kind: Kind, mode: int, uid: int, gid: int, xattrs,
                   target: bytes) -> FileMeta:
        if self.canonical:
            perms = mode & 0o755 if e_kind is Kind.FILE else mode
            return FileMeta(0, 0, e_kind.ifmt | perms, target, ())
        return FileMeta(uid, gid, e_kind.ifmt | mode, target, self._xattrs(path, xattrs))

    def _dir_meta(self, path: bytes, mode: int, uid: int, gid: int, xattrs) -> DirMeta:
        if self.canonical:
            return DirMeta(0, 0, stat.S_IFDIR | (mode & 0o755), ())
        return DirMeta(uid, gid, stat.S_IFDIR | mode, self._xattrs(path, xattrs))

    # directories

    def export_dir(self, path: bytes, content: bytes, meta: bytes) -> tuple[str, str]:
        """(dirtree, dirmeta) checksums of one directory, written with everything under it."""
        return self._finish(self._plan(path, content, meta))

    def _plan(self, path: bytes, content: bytes, meta: bytes):
        """Queue the content writes of a whole subtree without waiting (so both cores stay busy);
        returns (dirtree, dirmeta) for a cached directory, else a _PendingDir for _finish."""
        dkey = _key(b"dir", self.variant, content, meta)
        hit = self.cache.get(b"dirs", dkey)
        if hit is not None:
            t, m = hit[:32].hex(), hit[32:].hex()
            if self.target.has_object(t, ObjectType.DIR_TREE) and self.target.has_object(m, ObjectType.DIR_META):
                self.dirs_cached += 1
                return t, m
        same = self.planned_dirs.get(dkey)
        if same is not None:  # an identical subtree elsewhere in this export
            self.dirs_cached += 1
            return same
        node = self.repo.read_dir(path, content, meta)
        pending = self.planned_dirs[dkey] = _PendingDir(path, dkey, node.self_row)
        for row in node.rows:
            cpath = path + b"/" + row.name if path else row.name
            name = _ostree_name(row.name)
            if name is None:
                self._skip(cpath, "file name that is not valid UTF-8")
                continue
            if row.kind is Kind.DIR:
                pending.dirs.append((name, self._plan(cpath, node.content[row.name][1], node.meta[row.name])))
                continue
            if row.kind not in (Kind.FILE, Kind.SYMLINK):
                self._skip(cpath, f"{row.kind.name.lower()} node")
                continue
            blob = node.content[row.name][1]
            target = self.repo.read(blob, OBJ_BLOB, display(cpath)) if row.kind is Kind.SYMLINK else b""
            if row.kind is Kind.SYMLINK and (not target or b"\0" in target or _ostree_name(target) is None):
                # ostree commit stores the text '[Invalid UTF-8]' for such a target, which its fsck refuses
                self._skip(cpath, "symlink whose target is empty or not valid UTF-8")
                continue
            fmeta = self._file_meta(cpath, row.kind, row.mode, row.uid, row.gid, row.xattrs, target)
            fkey = _key(b"file", oc.file_stream_prefix(fmeta), blob)
            csum = self.cache.get(b"files", fkey)
            if csum is not None and self.target.has_object(csum.hex(), ObjectType.FILE):
                self.files_cached += 1
                pending.files.append((name, csum.hex()))
                continue
            slot = self.planned_files.get(fkey)
            if slot is None:
                slot = self.planned_files[fkey] = _Slot()
                self.batch.append((slot, (fmeta, blob, display(cpath))))
                if len(self.batch) >= BATCH_FILES:
                    self._submit()
            else:
                self.files_cached += 1
            pending.files.append((name, (fkey, slot)))
        return pending

    def _submit(self, final: bool = False) -> None:
        """Hand the queued content writes to a worker process as one job (a last small batch of a small
        export is written here: starting processes would cost more than it saves)."""
        if not self.batch:
            return
        if final and self.pool is None:
            fut = concurrent.futures.Future()
            _W.update(repo=self.repo, target=self.target)
            try:
                fut.set_result(_worker_write([job for _, job in self.batch]))
            finally:
                _W.clear()
            slots = [s for s, _ in self.batch]
            for s in slots:
                s.future, s.batch = fut, slots
            self.batch = []
            return
        if self.pool is None:
            self.pool = concurrent.futures.ProcessPoolExecutor(
                WORKERS, mp_context=multiprocessing.get_context("fork"), initializer=_worker_init,
                initargs=(self.repo.path, str(self.target.path)))
        slots = [s for s, _ in self.batch]
        fut = self.pool.submit(_worker_write, [job for _, job in self.batch])
        for s in slots:
            s.future, s.batch = fut, slots
        self.batch = []

    def _resolve(self, slot: "_Slot") -> str:
        if slot.csum is None:
            if slot.future is None:
                self._submit(final=True)
            for s, (csum, size) in zip(slot.batch, slot.future.result(), strict=True):
                s.csum = csum
                self.nbytes += size
        return slot.csum

    def _finish(self, p) -> tuple[str, str]:
        if isinstance(p, tuple):
            return p
        if p.result is not None:
            return p.result
        dirs = [(name, *self._finish(child)) for name, child in p.dirs]
        files = []
        for name, v in p.files:
            if isinstance(v, tuple):
                fkey, slot = v
                csum = self._resolve(slot)
                if fkey not in self.resolved:
                    self.resolved.add(fkey)
                    self.cache.put(b"files", fkey, bytes.fromhex(csum))
                    self.files_written += 1
                if self.progress:
                    self.progress.update(self.files_written, self.nbytes, p.path)
                v = csum
            files.append((name, v))
        r = p.self_row
        m = self.target.write_dirmeta(self._dir_meta(p.path, r.mode, r.uid, r.gid, r.xattrs))
        t = self.target.write_dirtree(files, dirs)
        self.cache.put(b"dirs", p.dkey, bytes.fromhex(t) + bytes.fromhex(m))
        p.result = (t, m)
        return t, m

    def _skip(self, path: bytes, why: str) -> None:
        if self.opts.strict:
            raise UnsupportedEntry(f"{display(path)}: OSTree cannot hold a {why}")
        self.skipped.append((path, why))

    # commits

    def export_commit(self, commit: pygit2.Commit, parent: str | None) -> str:
        self.repo.verify(commit)  # the git reader's checks, as fsck: a tree fsck refuses is never exported
        content, meta = self.repo.commit_trees(commit)
        top = self.repo.top_entries(commit)
        original = None
        self.xorder, self.variant = None, self.base_variant
        if TOP_OSTREE in top:
            original = self._original(top[TOP_OSTREE][1], commit)
            if original is not None and not self.canonical:
                order_blob = original[2]
                self.xorder = decode_xattr_order(order_blob) if order_blob is not None else {}
                self.variant = self.base_variant + b"-as-imported-" + hashlib.sha1(order_blob or b"").digest()
        try:
            root_tree, root_meta = self.export_dir(b"", content, meta)
        finally:
            self.xorder, self.variant = None, self.base_variant
        if original is not None:
            data, detached, _ = original
            oc_commit = oc.decode_commit(data)
            if (oc_commit.root_tree, oc_commit.root_meta) == (root_tree, root_meta) and oc_commit.parent == parent:
                csum = self.target.write_metadata(ObjectType.COMMIT, data)
                if detached is not None:
                    self.target.write_commitmeta(csum, oc.decode_commitmeta(detached))
                return csum
            self.warn(f"commit {commit.id}: its tree or parent differs from the OSTree commit it was imported "
                      "from; writing a new commit")
        subject, _, body = commit.message.partition("\n")
        body = body.lstrip("\n").rstrip("\n")
        md = list(self.opts.extra_metadata)
        if ostreemeta.BLOB_NAME in top:  # a bootable commit's keys (ostree.linux, version, ...)
            md += ostreemeta.to_variants(ostreemeta.decode(
                self.repo.read(top[ostreemeta.BLOB_NAME][1], OBJ_BLOB, "ostree-meta")))
        if self.opts.bindings:
            md.append(("ostree.ref-binding", Variant("as", [self.opts.ref])))
        c = Commit(root_tree=root_tree, root_meta=root_meta, metadata=md, parent=parent, subject=subject,
                   body=body, timestamp=commit.commit_time)
        return self.target.write_commit(c)

    def _original(self, tree_oid: bytes, commit) -> tuple[bytes, bytes | None, bytes | None] | None:
        ent = {n: o for _, n, o in decode_tree(self.repo.read(tree_oid, OBJ_TREE, "ostree/"))}
        if OSTREE_COMMIT not in ent:
            return None
        data = self.repo.read(ent[OSTREE_COMMIT], OBJ_BLOB, "ostree/commit")
        detached = self.repo.read(ent[OSTREE_COMMITMETA], OBJ_BLOB, "ostree/commitmeta") \
            if OSTREE_COMMITMETA in ent else None
        order = self.repo.read(ent[OSTREE_XATTR_ORDER], OBJ_BLOB, "ostree/xattr-order") \
            if OSTREE_XATTR_ORDER in ent else None
        return data, detached, order

    def run(self, rev: str) -> ExportResult:
        tip = self.repo.resolve(rev)
        chain = [tip]
        if self.opts.history:
            c = tip
            while c.parents:
                c = c.parents[0]
                chain.append(c)
            chain.reverse()
        parent = None
        if not self.opts.history:
            try:
                parent = self.target.resolve_ref(self.opts.ref)
            except oc.RefError:
                parent = None
        written = []
        try:
            if parent is not None and self.cache.get(b"commits", self._commit_key(tip, self._parent_of(parent))) \
                    == bytes.fromhex(parent):
                # the ref already names the export of REV: exporting again changes nothing
                chain, written = [], [parent]
            for c in chain:
                ckey = self._commit_key(c, parent)
                hit = self.cache.get(b"commits", ckey)
                if hit is not None and self.target.has_object(hit.hex(), ObjectType.COMMIT):
                    csum = hit.hex()
                else:
                    csum = self.export_commit(c, parent)
                    self.cache.put(b"commits", ckey, bytes.fromhex(csum))
                written.append(csum)
                parent = csum
        finally:
            if self.pool is not None:
                self.pool.shutdown(wait=True, cancel_futures=True)
            with self.repo.lock():
                self.cache.save()
        if self.opts.signers:  # before the ref moves: a client never sees an unsigned tip
            from .signing import sign_commit
            for csum in written:
                sign_commit(self.target, csum, self.opts.signers)
        self.target.set_ref(self.opts.ref, written[-1])
        if self.opts.update_summary:
            self.target.write_summary()
            if self.opts.signers:
                from .signing import sign_summary
                sign_summary(self.target, self.opts.signers)
        return ExportResult(written[-1], written, self.skipped, self.files_written, self.files_cached,
                            self.dirs_cached)

    def _parent_of(self, csum: str) -> str | None:
        return self.target.read_commit(csum).parent

    def _commit_key(self, c: pygit2.Commit, parent: str | None) -> bytes:
        return _key(b"commit", self.variant, c.id.raw, (parent or "").encode(),
                    self.opts.ref.encode() if self.opts.bindings else b"",
                    oc.encode_commitmeta(self.opts.extra_metadata) if self.opts.extra_metadata else b"")


def export_ostree(repo: Repo, rev: str, ostree_path: str, ref: str | None = None, mode: str = "archive",
                  bindings: bool = True, history: bool = False, strict: bool = False,
                  update_summary: bool = False, warn=stderr_warn, progress=None,
                  extra_metadata: list | None = None, signers: list | None = None) -> ExportResult:
    if ref is None:
        ref = _default_ref(repo, rev)
    try:
        oc.validate_ref_name(ref)
    except oc.RefError:
        raise GitreeError(f"invalid OSTree ref name {ref!r} (give one with --ref)") from None
    try:
        if os.path.exists(os.path.join(ostree_path, "config")):
            target = OstreeRepo(ostree_path)
            if mode and target.mode != ("archive" if mode == "archive-z2" else mode):
                raise GitreeError(f"{ostree_path} is a {target.mode} repository, not {mode}")
        else:
            target = OstreeRepo.create(ostree_path, mode or "archive")
    except oc.OstreeFormatError as e:
        raise GitreeError(str(e)) from None
    opts = ExportOptions(ref, target.mode, bindings, history, strict, update_summary, extra_metadata or [],
                         signers or [])
    ex = Exporter(repo, target, opts, warn, progress)
    try:
        res = ex.run(rev)
    except oc.UnsupportedContent as e:
        raise UnsupportedEntry(str(e)) from None
    except oc.OstreeFormatError as e:
        raise GitreeError(f"OSTree export: {e}") from None
    if res.skipped:
        first = ", ".join(f"{display(p)} ({why})" for p, why in res.skipped[:5])
        warn(f"skipped {len(res.skipped)} entr{'y' if len(res.skipped) == 1 else 'ies'} OSTree cannot hold: "
             f"{first}{' ...' if len(res.skipped) > 5 else ''}")
    return res


def _default_ref(repo: Repo, rev: str) -> str:
    ref = repo.git.references.get("refs/heads/" + rev)
    if ref is not None:
        return rev
    try:
        full = repo.git.lookup_reference_dwim(rev).name
    except (KeyError, pygit2.InvalidSpecError):
        raise GitreeError(f"{rev} is not a branch name; give the OSTree ref with --ref") from None
    if full.startswith("refs/heads/"):
        return full[len("refs/heads/"):]
    raise GitreeError(f"{rev} is not a branch name; give the OSTree ref with --ref")


# ---------------------------------------------------------------------------------------------
# Import

def _ostree_entries(src: OstreeRepo, root_tree: str, root_meta: str,
                    order: dict[bytes, list[bytes]]) -> Iterator[tuple[Entry, Callable | None]]:
    """Entries of an OSTree tree in canonical order; every object is verified as it is read.

    Objects whose xattrs are not in sorted order (OSTree's tar import keeps libarchive's order) have
    that order recorded in `order`, so export can reproduce them."""
    dm = src.read_dirmeta(root_meta)
    yield Entry(b"", Kind.DIR, dm.mode & 0o7777, dm.uid, dm.gid, _sorted(b"", dm.xattrs, order)), None
    yield from _ostree_dir(src, b"", root_tree, order)


def _sorted(path: bytes, xattrs, order: dict[bytes, list[bytes]]):
    xs = tuple(xattrs)
    s = tuple(sorted(xs))
    if s != xs:
        order[path] = [n for n, _ in xs]
    return s


def _ostree_dir(src: OstreeRepo, path: bytes, tree_csum: str, order) -> Iterator[tuple[Entry, Callable | None]]:
    tree = src.read_dirtree(tree_csum)
    items = [(n.encode(), "f", c, None) for n, c in tree.files] + \
            [(n.encode(), "d", t, m) for n, t, m in tree.dirs]
    items.sort(key=lambda i: i[0])
    for name, kind, c1, c2 in items:
        cpath = path + b"/" + name if path else name
        if kind == "d":
            dm = src.read_dirmeta(c2)
            yield Entry(cpath, Kind.DIR, dm.mode & 0o7777, dm.uid, dm.gid, _sorted(cpath, dm.xattrs, order)), None
            yield from _ostree_dir(src, cpath, c1, order)
            continue
        obj = src.open_content(c1)
        m = obj.meta
        k = Kind.SYMLINK if m.is_symlink else Kind.FILE
        e = Entry(cpath, k, m.mode & 0o7777, m.uid, m.gid, _sorted(cpath, m.xattrs, order), size=obj.size)
        if k is Kind.SYMLINK:
            e.target = m.symlink_target
            obj.close()
            yield e, None
        else:
            yield e, obj.chunks


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


def import_ostree(repo: Repo, src_path: str, ref: str, branch: str, warn=stderr_warn, progress=None) -> list[bytes]:
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
    for c_csum in chain:
        try:
            data = src.read_metadata(ObjectType.COMMIT, c_csum)
            commit = oc.decode_commit(data)
            detached = None
            cm_path = src.object_path(c_csum, ObjectType.COMMIT_META)
            if cm_path.exists():
                detached = cm_path.read_bytes()
                oc.decode_commitmeta(detached)  # validate
            imp = Importer(repo, level=1, progress=progress, warn=warn)
            order: dict[bytes, list[bytes]] = {}
            try:
                for e, data_fn in _ostree_entries(src, commit.root_tree, commit.root_meta, order):
                    imp.add(e, data_fn, False)
            except BaseException:
                imp.abort()
                raise
        except oc.OstreeFormatError as e:
            raise BadInput(f"OSTree commit {c_csum}: {e}") from None
        extra = [(OSTREE_COMMIT, imp.store(OBJ_BLOB, data))]
        if detached is not None:
            extra.append((OSTREE_COMMITMETA, imp.store(OBJ_BLOB, detached)))
        if order:
            extra.append((OSTREE_XATTR_ORDER, imp.store(OBJ_BLOB, encode_xattr_order(order))))
        ost = imp.store(OBJ_TREE, encode_tree([(MODE_FILE, n, o) for n, o in extra]))
        message = commit.subject + ("\n\n" + commit.body if commit.body else "")
        # Commits are chained here and the branch moves once, at the end (a failure changes nothing).
        cid = imp.commit_object(message or f"OSTree commit {c_csum}", commit.timestamp,
                                [parent] if parent else [], [(MODE_DIR, TOP_OSTREE, ost)])
        made.append(cid)
        parent = cid
    with repo.lock():
        repo.set_branch(branch, made[-1], old_tip, f"gitree: import-ostree {ref}")
    return made


__all__ = ["export_ostree", "import_ostree", "ExportResult", "CACHE_REF"]
