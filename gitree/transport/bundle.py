"""Offline update files: `gitree bundle create OLD..NEW FILE`, `gitree bundle apply FILE`.

A gitree bundle wraps a plain git bundle (v2) whose pack holds whole, uncompressed objects (no deltas,
zlib level 0), compressed as one zstd frame *against a reference*: the OLD versions of the objects that
changed, which the receiving repository already has (`zstd --patch-from`). The reference is named by
positions in a walk of OLD's trees, so the applier rebuilds it byte for byte. The result is smaller than
per-object zlib and git deltas: the long-range matcher sees whole old and new files together, as bsdiff
does in an OSTree static delta. Unwrapped (`gitree bundle unwrap`), the file is an ordinary git bundle for
`git bundle verify/list-heads/unbundle`. The wrapper format is specified in docs/bundle.md.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import tempfile
import zlib
from dataclasses import dataclass
from typing import BinaryIO, Callable

import pygit2

from .. import tools, treeread
from .. import limits
from ..errors import BadInput, CorruptObject, GitreeError, NotFastForward, NotFound, UnsafePath, UsageError
from ..infile import open_regular
from ..outfile import atomic_output
from ..gittree import MODE_DIR, decode_tree
from ..packreader import STREAM_OBJECT, read_pack
from ..packwriter import OBJ_BLOB, OBJ_COMMIT, OBJ_TREE, object_id, pack_entry_header
from ..repo import Repo

MAGIC = b"# gitree bundle v1\n"
GIT_BUNDLE_V2 = b"# v2 git bundle\n"
MIN_WINDOW_LOG, MAX_WINDOW_LOG = 27, limits.MAX_ZSTD_WINDOW_LOG
MAX_REFERENCE = 512 << 20     # reference bytes; zstd's window (and the applier's memory) must cover it
DEFAULT_LEVEL = 19            # zstd level: 22 saves ~1% more for twice the time and 4x the memory


@dataclass
class BundleHeader:
    base: bytes | None            # OLD commit id: the reference is made from its trees
    window_log: int
    reference: list[int]          # positions in walk_objects(base), ascending


@dataclass
class BundleInfo:
    path: str
    size: int
    git_bundle_size: int
    reference_bytes: int
    objects: int
    branch: str
    old: bytes | None
    new: bytes


# ---------------------------------------------------------------------------------------------
# Header codec (pure)

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def encode_positions(positions: list[int]) -> bytes:
    """Ascending positions as LEB128 gaps (the first gap from -1)."""
    out, prev = bytearray(), -1
    for p in positions:
        if p <= prev:
            raise ValueError("positions must be strictly ascending")
        out += _varint(p - prev - 1)
        prev = p
    return bytes(out)


def decode_positions(data: bytes, count: int) -> list[int]:
    if count > len(data):  # every position takes at least one byte
        raise CorruptObject("gitree bundle: truncated reference list")
    out, prev, pos = [], -1, 0
    for _ in range(count):
        n = shift = 0
        while True:
            if pos >= len(data) or shift > 63:
                raise CorruptObject("gitree bundle: truncated reference list")
            b = data[pos]
            pos += 1
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        prev = prev + 1 + n
        out.append(prev)
    if pos != len(data):
        raise CorruptObject("gitree bundle: trailing bytes in the reference list")
    return out


def encode_header(h: BundleHeader) -> bytes:
    refs = encode_positions(h.reference)
    lines = MAGIC
    if h.base is not None:
        lines += b"base %s\n" % h.base.hex().encode()
    lines += b"window-log %d\n" % h.window_log
    lines += b"reference %d %d\n" % (len(h.reference), len(refs))
    return lines + refs + b"\n"


def read_header(f: BinaryIO) -> BundleHeader:
    if f.read(len(MAGIC)) != MAGIC:
        raise BadInput("not a gitree bundle (bad magic)")
    base, window = None, None
    while True:
        line = f.readline(200)
        if not line.endswith(b"\n"):
            raise CorruptObject("gitree bundle: truncated header")
        key, _, val = line[:-1].partition(b" ")
        try:
            if key == b"base":
                base = bytes.fromhex(val.decode("ascii"))
                if len(base) != 20:
                    raise ValueError
            elif key == b"window-log":
                window = int(val)
                if not MIN_WINDOW_LOG <= window <= MAX_WINDOW_LOG:
                    raise CorruptObject(f"gitree bundle: window-log {window} is outside {MIN_WINDOW_LOG}.."
                                        f"{MAX_WINDOW_LOG} (the decompressor's memory limit)")
            elif key == b"reference":
                count, size = (int(x) for x in val.split(b" "))
                if not 0 <= count <= limits.MAX_REFERENCE_POSITIONS or not 0 <= size <= 10 * count:
                    raise CorruptObject(f"gitree bundle: a reference list of {count} objects in {size} bytes is "
                                        f"beyond the limit of {limits.MAX_REFERENCE_POSITIONS} objects")
                data = f.read(size)
                if len(data) != size or f.read(1) != b"\n":
                    raise CorruptObject("gitree bundle: truncated reference list")
                break
            else:
                raise CorruptObject(f"gitree bundle: unknown header line {line[:40]!r}")
        except (ValueError, UnicodeDecodeError):
            raise CorruptObject(f"gitree bundle: malformed header line {line[:60]!r}") from None
    if window is None:
        raise CorruptObject("gitree bundle: no window-log line")
    if count and base is None:
        raise CorruptObject("gitree bundle: a reference without a base commit")
    return BundleHeader(base, window, decode_positions(data, count))


# ---------------------------------------------------------------------------------------------
# The reference: old objects, found by their position in a walk of the base commit's trees

def walk_objects(repo: Repo, commit: bytes) -> list[tuple[bytes, bytes]]:
    """(oid, git mode) of every tree and blob reachable from a commit's tree, each once: depth first,
    pre-order, entries in stored tree order, the top tree first (position 0)."""
    top = repo.git[pygit2.Oid(raw=commit)].peel(pygit2.Commit).tree_id.raw
    out, seen = [(top, MODE_DIR)], {top}
    stack = [iter(decode_tree(repo.read(top, OBJ_TREE, "top tree")))]
    while stack:
        ent = next(stack[-1], None)
        if ent is None:
            stack.pop()
            continue
        mode, _name, oid = ent
        if oid in seen:
            continue
        seen.add(oid)
        out.append((oid, mode))
        if mode == MODE_DIR:
            stack.append(iter(decode_tree(repo.read(oid, OBJ_TREE, oid.hex()))))
    return out


def changed_bases(repo: Repo, old: bytes, new: bytes) -> set[bytes]:
    """Old objects that new ones replace: same path, or a rename git detects (trees and blobs)."""
    r = tools.run(["git", "--git-dir", repo.path, "diff-tree", "-r", "-t", "-z", "-M50%", "-l20000",
                   "--no-commit-id", old.hex(), new.hex()], what="git diff-tree failed")
    out = set()
    fields = r.stdout.split(b"\0")
    i = 0
    while i < len(fields) - 1:
        meta = fields[i]
        status = meta.rsplit(b" ", 1)[-1][:1]
        parts = meta[1:].split(b" ")
        i += 3 if status in (b"R", b"C") else 2
        if status in (b"M", b"R", b"C", b"T") and parts[0] != b"160000":
            out.add(bytes.fromhex(parts[2].decode()))
    return out


def _write_reference(repo: Repo, objects: list[tuple[bytes, bytes]], positions: list[int], out: BinaryIO) -> int:
    total = 0
    for p in positions:
        if p >= len(objects):
            raise CorruptObject(f"gitree bundle: reference position {p} beyond the base's {len(objects)} objects")
        oid, mode = objects[p]
        otype = OBJ_TREE if mode == MODE_DIR else OBJ_BLOB
        total += repo.object_size(oid, otype, oid.hex())
        if total > MAX_REFERENCE:
            raise CorruptObject(f"gitree bundle: the reference is larger than the limit of {MAX_REFERENCE} bytes")
        data = repo.read(oid, otype, oid.hex())
        out.write(data)
    return total


# ---------------------------------------------------------------------------------------------
# create

def _resolve_range(repo: Repo, spec: str, branch: str | None) -> tuple[bytes | None, bytes, str]:
    old_s, dots, new_s = spec.partition("..")
    if not dots:
        old_s, new_s = "", spec
    new = repo.resolve(new_s).id.raw
    old = repo.resolve(old_s).id.raw if old_s else None
    repo.verify(repo.resolve(new_s))  # gitree writes no bundle its own reader would refuse
    if branch is None:
        full = f"refs/heads/{new_s}"
        if full not in repo.git.references:
            raise UsageError(f"{new_s} is not a branch name; give the branch to update with --branch")
        branch = new_s
    branch = repo.branch_ref(branch)[len("refs/heads/"):]
    if old is not None:
        if old == new:
            raise UsageError(f"{spec}: nothing to bundle, both ends are {new.hex()}")
        if not repo.git.descendant_of(pygit2.Oid(raw=new), pygit2.Oid(raw=old)):
            raise UsageError(f"{spec}: {new_s} does not descend from {old_s}")
    return old, new, branch


def create(repo: Repo, spec: str, out_path: str, branch: str | None = None,
           level: int = DEFAULT_LEVEL) -> BundleInfo:
    old, new, branch = _resolve_range(repo, spec, branch)
    tmpdir = tempfile.mkdtemp(prefix="gitree-bundle-", dir=os.path.dirname(os.path.abspath(out_path)) or ".")
    try:
        gb = os.path.join(tmpdir, "git.bundle")
        with open(gb, "wb") as f:
            f.write(GIT_BUNDLE_V2)
            if old is not None:
                subject = repo.git[pygit2.Oid(raw=old)].message.split("\n", 1)[0][:200]
                f.write(b"-%s %s\n" % (old.hex().encode(), subject.encode("utf-8", "replace")))
            f.write(b"%s refs/heads/%s\n\n" % (new.hex().encode(), branch.encode()))
            f.flush()
            revs = f"{new.hex()}\n" + (f"^{old.hex()}\n" if old else "")
            # Whole objects, stored uncompressed: the outer compressor sees every byte.
            tools.run(["git", "--git-dir", repo.path, "-c", "pack.compression=0", "pack-objects",
                       "--stdout", "--revs", "--window=0", "--no-reuse-object", "-q"],
                      input=revs.encode(), stdout=f, what="git pack-objects failed")
        git_size = os.path.getsize(gb)
        positions: list[int] = []
        ref_path = os.path.join(tmpdir, "reference")
        ref_bytes = 0
        if old is not None:
            wanted = changed_bases(repo, old, new)
            objects = walk_objects(repo, old)
            for i, (oid, mode) in enumerate(objects):
                if oid in wanted:
                    size = len(repo.read(oid)) if mode == MODE_DIR else repo.blob_size(oid)
                    if ref_bytes + size > MAX_REFERENCE:
                        continue
                    positions.append(i)
                    ref_bytes += size
            with open(ref_path, "wb") as rf:
                _write_reference(repo, objects, positions, rf)
        window = max(MIN_WINDOW_LOG, min(MAX_WINDOW_LOG, (ref_bytes + git_size).bit_length()))
        header = encode_header(BundleHeader(old, window, positions))
        with atomic_output(out_path) as fo:
            fo.write(header)
            fo.flush()
            cmd = ["zstd", "-q", "-c", "--ultra", f"-{level}", f"--long={window}", "--check"]
            cmd += [f"--patch-from={ref_path}"] if positions else ["-T0"]
            tools.run(cmd + [gb], stdout=fo, what="zstd failed")
        count = struct.unpack(">I", _pack_count(gb))[0]
        return BundleInfo(out_path, os.path.getsize(out_path), git_size, ref_bytes, count, branch, old, new)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _pack_count(git_bundle: str) -> bytes:
    with open(git_bundle, "rb") as f:
        while f.readline() not in (b"\n", b""):
            pass
        head = f.read(12)
    return head[8:12]


# ---------------------------------------------------------------------------------------------
# unwrap and apply

class _Unwrapped:
    """The git bundle inside a gitree bundle, streamed out of zstd."""

    def __init__(self, repo: Repo | None, path: str):
        self.f = open_regular(path, "bundle")  # a FIFO or device is refused, not read
        self.path = path
        self.tmpdir = None
        self.proc = None
        try:
            self.header = read_header(self.f)
            ref = None
            if self.header.reference:
                if repo is None or not repo.exists(self.header.base):
                    raise NotFound(f"{path}: this update applies to commit {self.header.base.hex()}, "
                                   "which the repository does not have")
                self.tmpdir = tempfile.mkdtemp(prefix="gitree-unbundle-", dir=repo.path)
                ref = os.path.join(self.tmpdir, "reference")
                with open(ref, "wb") as rf:
                    _write_reference(repo, walk_objects(repo, self.header.base), self.header.reference, rf)
            os.lseek(self.f.fileno(), self.f.tell(), os.SEEK_SET)  # zstd reads the fd after the header
            cmd = ["zstd", "-d", "-q", "-c", f"--long={self.header.window_log}"]
            if ref is not None:
                cmd.append(f"--patch-from={ref}")
            self.proc = tools.popen(cmd, stdin=self.f)
            self.stream = self.proc.stdout
        except BaseException:
            self.close()
            raise

    def finish(self) -> None:
        """Raise unless zstd read the whole frame and verified its checksum."""
        rest = self.stream.read()
        rc, line = tools.wait(self.proc)
        if rc != 0 or rest:
            raise CorruptObject(f"{self.path}: corrupt bundle ({line or 'trailing data'})")

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for s in (getattr(self.proc, "stdout", None), getattr(self.proc, "gitree_stderr", None)):
            if s is not None:
                s.close()
        self.f.close()
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)


def unwrap(repo: Repo | None, path: str, out: str) -> None:
    """Write the git bundle inside `path` to `out` (needs the base commit's objects for an update).

    What is written is checked as it streams: a v2 git bundle header within its limits, a pack header
    (version 2 or 3, at most MAX_BUNDLE_OBJECTS objects), at most MAX_BUNDLE_BYTES in all, and the pack's
    SHA-1 trailer over everything before it. A zstd frame that expands to anything else fails at its
    first bytes, and `out` is written only when everything held (`atomic_output`)."""
    u = _Unwrapped(repo, path)
    try:
        with atomic_output(out) as fo:
            def line() -> bytes:
                b = u.stream.readline(limits.MAX_BUNDLE_HEADER_LINE + 1)
                fo.write(b)
                return b
            read_git_bundle_header(line, path)
            head = u.stream.read(12)
            if (len(head) != 12 or head[:4] != b"PACK" or struct.unpack(">I", head[4:8])[0] not in (2, 3)):
                raise CorruptObject(f"{path}: no git pack after the git bundle header")
            if struct.unpack(">I", head[8:12])[0] > limits.MAX_BUNDLE_OBJECTS:
                raise CorruptObject(f"{path}: the pack inside names more than {limits.MAX_BUNDLE_OBJECTS} "
                                    "objects (MAX_BUNDLE_OBJECTS)")
            fo.write(head)
            sha, tail, got = hashlib.sha1(head), b"", len(head)
            while buf := u.stream.read(1 << 20):
                got += len(buf)
                if got > limits.MAX_BUNDLE_BYTES:
                    raise CorruptObject(f"{path}: the git bundle inside is larger than the limit of "
                                        f"{limits.MAX_BUNDLE_BYTES} bytes (MAX_BUNDLE_BYTES)")
                fo.write(buf)
                data = tail + buf
                sha.update(data[:-20])
                tail = data[-20:]
            if len(tail) != 20 or sha.digest() != tail:
                raise CorruptObject(f"{path}: the pack inside is truncated or corrupt (its checksum does not match)")
            u.finish()
    finally:
        u.close()


@dataclass
class GitBundleHead:
    prerequisites: list[bytes]
    refs: list[tuple[bytes, str]]


def read_git_bundle_header(read_line: Callable[[], bytes], where: str) -> GitBundleHead:
    """The prerequisite and ref lines of a v2 git bundle: at most MAX_BUNDLE_HEADER_LINES of them, each
    at most MAX_BUNDLE_HEADER_LINE bytes (`read_line` must read no more than that plus one)."""
    if read_line() != GIT_BUNDLE_V2:
        raise CorruptObject(f"{where}: not a v2 git bundle inside")
    pre, refs = [], []
    while True:
        line = read_line()
        if line == b"\n":
            return GitBundleHead(pre, refs)
        if not line.endswith(b"\n") or len(line) > limits.MAX_BUNDLE_HEADER_LINE:
            raise CorruptObject(f"{where}: truncated git bundle header, or a line longer than "
                                f"{limits.MAX_BUNDLE_HEADER_LINE} bytes")
        if len(pre) + len(refs) >= limits.MAX_BUNDLE_HEADER_LINES:
            raise CorruptObject(f"{where}: the git bundle names more than {limits.MAX_BUNDLE_HEADER_LINES} "
                                "prerequisites and refs (the limit)")
        try:
            if line.startswith(b"-"):
                oid = bytes.fromhex(line[1:41].decode())
                if len(oid) != 20 or line[41:42] not in (b" ", b"\n"):
                    raise ValueError
                pre.append(oid)
            else:
                oid_hex, name = line[:-1].split(b" ", 1)
                oid = bytes.fromhex(oid_hex.decode())
                if len(oid) != 20:
                    raise ValueError
                refs.append((oid, name.decode()))
        except (ValueError, UnicodeDecodeError):
            raise CorruptObject(f"{where}: malformed git bundle header line") from None


def _incoming_branch(repo: Repo, refname: str, where: str) -> str:
    """The branch a ref that arrives names: only refs/heads/<valid branch name> may arrive."""
    if not refname.startswith("refs/heads/"):
        raise UnsafePath(f"{where}: the bundle names {refname!r}; only branches (refs/heads/...) can arrive")
    try:
        repo.branch_ref(refname)
    except GitreeError:
        raise UnsafePath(f"{where}: the bundle names {refname!r}, which is not a valid branch name") from None
    return refname[len("refs/heads/"):]


def apply(repo: Repo, path: str, branch: str | None = None, level: int = 1,
          before_move: Callable[[Repo, bytes | None, bytes], None] | None = None,
          progress=None) -> tuple[str, bytes | None, bytes]:
    """Apply a bundle: objects first, every incoming commit read and verified as fsck does, the branch
    moves last. The objects stay in a quarantine until every check has passed: no other reader or writer
    sees them before, so refusing them takes nothing from anybody. `before_move(view, old, new)` runs just
    before they are published and the branch moves (`view` reads them); an exception from it aborts the
    apply like any other. `progress.waiting()`, if there is one, is called when the apply waits for a gc or
    another writer. Returns (branch, old tip, new tip)."""
    u = _Unwrapped(repo, path)
    view = None
    try:
        # A transaction: its packs are deleted unless published (just before the branch moves)
        with repo.transaction(level=level, progress=progress) as tx:
            head = read_git_bundle_header(lambda: u.stream.readline(limits.MAX_BUNDLE_HEADER_LINE + 1), path)
            for p in head.prerequisites:
                if not repo.exists(p):
                    raise NotFound(f"{path}: this update needs commit {p.hex()}, which the repository does not have")
            if len(head.refs) != 1:
                raise CorruptObject(f"{path}: the bundle must name exactly one branch")
            new, refname = head.refs[0]
            name = _incoming_branch(repo, refname, path)
            branch = branch or name
            repo.branch_ref(branch)
            pack = tx.raw_pack()
            commits: list[bytes] = []
            for otype, size, chunks in read_pack(u.stream.read, path):
                if otype == OBJ_BLOB and size > STREAM_OBJECT:
                    pack.add_stream(otype, size, chunks, level, repo.exists)
                    continue
                data = b"".join(chunks)
                oid = object_id(otype, data)
                if otype == OBJ_COMMIT:
                    commits.append(oid)
                if not repo.exists(oid):
                    pack.add_raw(oid, pack_entry_header(otype, len(data)) + zlib.compress(data, level))
            u.finish()
            if new not in pack and not repo.exists(new):
                raise CorruptObject(f"{path}: the bundle lacks its own tip {new.hex()}")
            with repo.lock(on_wait=getattr(progress, "waiting", None)):
                old_tip = repo.branch_tip(branch)
                staged = tx.stage_packs()
                view = repo.with_objects(staged) if staged is not None else repo
                _check(view, path, new, commits)
                if old_tip == new:
                    tx.commit()
                    return branch, old_tip, new
                if old_tip is not None and not view.git.descendant_of(pygit2.Oid(raw=new), pygit2.Oid(raw=old_tip)):
                    raise NotFastForward(f"branch {branch} is at {old_tip.hex()}, which {new.hex()} does not descend "
                                          "from; nothing was changed")
                if before_move is not None:
                    before_move(view, old_tip, new)
                tx.publish_packs()
                repo.set_branch(branch, new, old_tip, f"gitree: bundle apply {os.path.basename(path)}")
                tx.commit()
            return branch, old_tip, new
    finally:
        if view is not None and view is not repo:
            view.close()
        u.close()


def _check(view: Repo, path: str, new: bytes, commits: list[bytes]) -> None:
    """Every commit the bundle carries, and its tip, read as fsck reads them (through `view`, which reads the
    quarantined objects): each a commit whose parents are present and whose tree verifies."""
    try:
        commit = view.git[pygit2.Oid(raw=new)]
    except (KeyError, ValueError, pygit2.GitError):
        commit = None
    if not isinstance(commit, pygit2.Commit):  # a branch names a commit, never a tag
        raise CorruptObject(f"{path}: the bundle's tip {new.hex()} is not a commit")
    if commit.id.raw not in commits:
        commits.append(commit.id.raw)
    seen_roots: set = set()
    verified = treeread.Verified()  # directories shared by commits are read once
    for cid in commits:
        try:
            c = view.git[pygit2.Oid(raw=cid)].peel(pygit2.Commit)
            parents = list(c.parent_ids)
        except (KeyError, ValueError, pygit2.GitError):
            raise CorruptObject(f"{path}: commit {cid.hex()} is malformed; nothing was changed") from None
        for parent in parents:
            if not view.exists(parent.raw):
                raise CorruptObject(f"{path}: commit {c.id} has parent {parent}, which neither the bundle "
                                    "nor the repository holds; nothing was changed")
        if c.tree_id.raw not in seen_roots:  # commits sharing a tree: it is read once
            seen_roots.add(c.tree_id.raw)
            _verify(view, c, path, verified)


def _verify(repo: Repo, commit: pygit2.Commit, where: str, verified: treeread.Verified) -> None:
    """The commit reads as fsck reads it: format marker, every side table against its tree, every name,
    xattr and hard link, every blob present (directories in `verified` were, for an earlier commit)."""
    try:
        repo.verify(commit, verified=verified)
    except GitreeError as err:
        raise CorruptObject(f"{where}: commit {commit.id} is refused: {err}; nothing was changed") from None


__all__ = ["create", "apply", "unwrap", "BundleInfo", "MAGIC", "read_pack", "STREAM_OBJECT"]
