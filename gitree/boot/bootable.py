"""make-bootable: rewrite an ordinary rootfs commit into an OSTree-bootable one (docs/format.md section 6.2).

What image builders (rpm-ostree, debos recipes, Debian's ostree helper scripts) do to a rootfs before
`ostree commit`, done by walking the source commit and feeding a new Importer (blobs already exist, so
nothing is recompressed):

* /dev emptied; /etc moved to /usr/etc; /boot emptied;
* the kernel and its initramfs at usr/lib/modules/KVER/{vmlinuz,initramfs.img} (found there or as
  /boot/vmlinuz-KVER with /boot/initrd.img-KVER or /boot/initramfs-KVER.img); /boot/config-KVER and
  /boot/System.map-KVER next to them; the initramfs must carry ostree-prepare-root;
* /var becomes an empty directory: its files go to usr/share/factory/var and a tmpfiles.d snippet
  (usr/lib/tmpfiles.d/gitree-var.conf) recreates every directory, symlink and file at boot, as
  OSTree mounts the stateroot's own /var there;
* /home, /root, /opt, /srv, /mnt, /usr/local become symlinks into /var (their content joins /var's);
  /media -> run/media, /tmp -> sysroot/tmp, /ostree -> sysroot/ostree, an empty /sysroot;
* OSTree commit metadata (ostree.linux, version, ostree.bootable) kept in the `ostree-meta` blob.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from .. import ostreemeta
from ..limits import MAX_META_BYTES
from ..entry import Entry, Kind
from ..errors import BadInput, GitreeError, NotFound, UsageError
from ..gittree import MODE_FILE
from ..initramfs import has_member
from ..names import display
from ..packwriter import OBJ_BLOB
from ..importer import Transaction
from ..repo import Repo

PREPARE_ROOT = b"usr/lib/ostree/ostree-prepare-root"
TMPFILES = b"usr/lib/tmpfiles.d/gitree-var.conf"
FACTORY_VAR = b"usr/share/factory/var"
MODULES = b"usr/lib/modules"

# Directories that OSTree systems keep in /var: source path -> (path in /var, symlink target left behind)
INTO_VAR = {
    b"home": (b"var/home", b"var/home"),
    b"root": (b"var/roothome", b"var/roothome"),
    b"opt": (b"var/opt", b"var/opt"),
    b"srv": (b"var/srv", b"var/srv"),
    b"mnt": (b"var/mnt", b"var/mnt"),
    b"usr/local": (b"var/usrlocal", b"../var/usrlocal"),
}
# Directories replaced by a symlink; what was in them is dropped (they are tmpfs or the physical root)
RUNTIME_LINKS = {b"media": b"run/media", b"tmp": b"sysroot/tmp", b"ostree": b"sysroot/ostree"}
EMPTIED = (b"dev", b"boot", b"sysroot", b"proc", b"sys", b"run")
BOOT_LINKS = (b"vmlinuz", b"vmlinuz.old", b"initrd.img", b"initrd.img.old")


@dataclass
class Kernel:
    version: str
    vmlinuz: Entry
    initramfs: Entry | None
    extras: dict[bytes, Entry] = field(default_factory=dict)   # new name in the modules dir -> source


@dataclass
class BootableResult:
    commit: bytes
    kernel: str
    metadata: list
    changes: list[str]
    seconds: float = 0.0


def _kver(name: bytes, prefix: bytes, suffix: bytes = b"") -> str | None:
    if name.startswith(prefix) and name.endswith(suffix) and len(name) > len(prefix) + len(suffix):
        return name[len(prefix):len(name) - len(suffix)].decode("utf-8", "replace")
    return None


def find_kernel(repo: Repo, commit, want: str | None = None) -> Kernel:
    """The one kernel of the tree (or `want`), with its initramfs; NotFound when there is none."""
    found: dict[str, Kernel] = {}
    boot: dict[bytes, Entry] = {}
    for sub, into in ((b"usr/lib/modules", None), (b"boot", boot)):
        try:
            entries = list(repo.walk(commit, sub))
        except NotFound:
            continue
        for e in entries:
            if e.kind is not Kind.FILE:
                continue
            rel = e.path[len(sub) + 1:]
            if into is not None:
                if b"/" not in rel:
                    into[rel] = e
            elif rel.count(b"/") == 1 and rel.endswith(b"/vmlinuz"):
                kv = rel.split(b"/")[0].decode("utf-8", "replace")
                initrd = repo.find(repo.commit_trees(commit), sub + b"/" + rel.split(b"/")[0] + b"/initramfs.img")
                found[kv] = Kernel(kv, e, initrd if initrd is not None and initrd.kind is Kind.FILE else None)
    for name, e in boot.items():
        kv = _kver(name, b"vmlinuz-")
        if kv is None or kv in found:
            continue
        initrd = boot.get(b"initrd.img-" + name[8:]) or boot.get(b"initramfs-" + name[8:] + b".img")
        k = found[kv] = Kernel(kv, e, initrd)
        for src, dst in ((b"config-", b"config"), (b"System.map-", b"System.map")):
            if src + name[8:] in boot:
                k.extras[dst] = boot[src + name[8:]]
    if want is not None:
        if want not in found:
            raise NotFound(f"no kernel {want} in {commit.id} (found: {', '.join(sorted(found)) or 'none'})")
        return found[want]
    if not found:
        raise NotFound(f"no kernel in {commit.id}: expected /boot/vmlinuz-KVER or /usr/lib/modules/KVER/vmlinuz")
    if len(found) > 1:
        raise UsageError(f"{len(found)} kernels in {commit.id} ({', '.join(sorted(found))}); choose one with --kernel")
    return next(iter(found.values()))


def check_initramfs(repo: Repo, e: Entry) -> None:
    """The image is streamed from git and read within gitree.initramfs's limits (it is untrusted input)."""
    chunks = repo.blob_chunks(e.oid, None, display(e.path))
    try:
        found = has_member(chunks, PREPARE_ROOT)
    except BadInput as err:
        raise BadInput(f"{display(e.path)}: {err} (--no-initramfs-check skips this check)") from None
    finally:
        chunks.close()
    if not found:
        raise BadInput(f"initramfs {display(e.path)} has no ostree-prepare-root: install ostree-boot and dracut in "
                       "the rootfs (their scripts regenerate the initramfs) and import it again")


def read_os_release(repo: Repo, commit) -> dict[str, str]:
    root = repo.commit_trees(commit)
    for path in (b"usr/lib/os-release", b"etc/os-release", b"usr/etc/os-release"):
        e = repo.find(root, path)
        if e is not None and e.kind is Kind.FILE:
            text = repo.read_bounded(e.oid, OBJ_BLOB, MAX_META_BYTES, path.decode()).decode("utf-8", "replace")
            out = {}
            for line in text.splitlines():
                m = re.match(r"^([A-Z_][A-Z0-9_]*)=(.*)$", line.strip())
                if m:
                    out[m.group(1)] = m.group(2).strip().strip("\"'")
            if out.get("ID") or out.get("PRETTY_NAME"):
                return out
    raise BadInput(f"{commit.id} has no os-release with ID or PRETTY_NAME (ostree admin deploy needs one)")


def tree_metadata(repo: Repo, commit) -> list:
    """The commit's ostree-meta items, or [] for a commit without that blob (every older commit)."""
    top = repo.top_entries(commit)
    if ostreemeta.BLOB_NAME not in top:
        return []
    return ostreemeta.decode(repo.read_bounded(top[ostreemeta.BLOB_NAME].oid, OBJ_BLOB, MAX_META_BYTES,
                                               "ostree-meta"))


def _next_version(repo: Repo, branch: str, prefix: str) -> str:
    """prefix.N, N one more than the branch tip's when it has the same prefix (rpm-ostree's automatic version)."""
    tip = repo.branch_tip(branch)
    if tip is not None:
        try:
            old = dict(tree_metadata(repo, repo.resolve(tip.hex()))).get("version")
        except GitreeError:
            old = None
        if isinstance(old, str) and old.startswith(prefix + "."):
            tail = old[len(prefix) + 1:]
            if tail.isdigit():
                return f"{prefix}.{int(tail) + 1}"
    return f"{prefix}.0"


def _tmpfiles_path(p: bytes) -> str:
    out = []
    for b in p:
        c = chr(b)
        if c.isascii() and (c.isalnum() or c in "/._-+@:,~="):
            out.append(c)
        elif c == "%":
            out.append("%%")
        else:
            out.append(f"\\x{b:02x}")
    return "".join(out)


class _Rewriter:
    """Maps each source entry to what goes into the new tree; collects the /var tmpfiles lines."""

    def __init__(self, repo: Repo, imp: Transaction, kernel: Kernel):
        self.repo, self.imp, self.kernel = repo, imp, kernel
        self.lines: list[tuple[bytes, str]] = []           # (var path, tmpfiles line)
        self.new_path: dict[bytes, bytes | None] = {}      # stored non-directories: old -> new (None: not stored)
        self.counts: dict[str, int] = {}
        self.has_usr_etc = False
        self.seen_links: set[bytes] = set()
        kdir = MODULES + b"/" + kernel.version.encode()
        self.moved = {kernel.vmlinuz.path: kdir + b"/vmlinuz"}
        if kernel.initramfs is not None:
            self.moved[kernel.initramfs.path] = kdir + b"/initramfs.img"
        for name, e in kernel.extras.items():
            self.moved[e.path] = kdir + b"/" + name

    def count(self, what: str, n: int = 1) -> None:
        self.counts[what] = self.counts.get(what, 0) + n

    def _add(self, e: Entry, path: bytes) -> None:
        old = e.path
        e = Entry(path, e.kind, e.mode, e.uid, e.gid, e.xattrs, e.rdev, e.target, e.hardlink, e.mtime_ns, 0, e.oid)
        if e.hardlink is not None:
            lead = self.new_path.get(e.hardlink, None)
            if lead is not None:
                e.hardlink = lead
            else:  # its leader was not stored under a path: store this one in full
                e.hardlink = None
        if e.kind is not Kind.DIR:
            self.new_path[old] = path
        if e.kind is Kind.FILE and e.hardlink is None:
            oid = e.oid
            e.size = self.repo.blob_size(oid, display(old))
            self.imp.add(e, lambda: self.repo.blob_chunks(oid, e.size, display(old)), True)
        else:
            self.imp.add(e)

    def _to_var(self, e: Entry, vpath: bytes) -> None:
        """An entry that belongs in /var at run time (vpath starts with var/)."""
        p = "/" + _tmpfiles_path(vpath)
        if e.kind is Kind.DIR:
            self.lines.append((vpath, f"d {p} {e.mode:04o} {e.uid} {e.gid} -"))
            self.count("var dirs")
        elif e.kind is Kind.SYMLINK:
            self.lines.append((vpath, f"L {p} - - - - {_tmpfiles_path(e.target or b'')}"))
            self.count("var symlinks")
        elif e.kind is Kind.FILE:
            fpath = FACTORY_VAR + vpath[3:]
            self._add(e, fpath)
            self.lines.append((vpath, f"C {p} - - - - /{_tmpfiles_path(fpath)}"))
            self.count("var files")
        else:
            self.count("var special files dropped")

    def feed(self, e: Entry) -> None:
        p = e.path
        top, _, rest = p.partition(b"/")
        if p == b"":
            self._add(e, b"")
            return
        if p in self.moved:
            self._add(e, self.moved[p])
            return
        if top in EMPTIED:
            if rest:
                self.count(f"/{top.decode()} entries removed")
            elif e.kind is Kind.DIR:
                self._add(Entry(p, Kind.DIR, e.mode, e.uid, e.gid, e.xattrs), p)
            else:
                self._add(e, p)
            return
        if p in BOOT_LINKS and e.kind is Kind.SYMLINK:
            self.count("kernel symlinks in / removed")
            return
        if top == b"etc":
            self._add(e, b"usr/" + p)
            self.count("/etc entries moved to /usr/etc")
            return
        if p == b"usr/etc" or p.startswith(b"usr/etc/"):
            self.has_usr_etc = True
        if top in RUNTIME_LINKS:
            self.seen_links.add(top)
            if not rest:
                if e.kind is Kind.SYMLINK:
                    self._add(e, p)
                else:
                    self._add(Entry(p, Kind.SYMLINK, 0o777, 0, 0, target=RUNTIME_LINKS[top]), p)
            else:
                self.count(f"/{top.decode()} entries removed")
            return
        for src, (vdir, link) in INTO_VAR.items():
            if p == src or p.startswith(src + b"/"):
                if p == src:
                    if e.kind is Kind.SYMLINK:  # already converted
                        self._add(e, p)
                        return
                    self._add(Entry(p, Kind.SYMLINK, 0o777, 0, 0, target=link), p)
                self._to_var(e, vdir + p[len(src):])
                return
        if top == b"var":
            if rest:
                self._to_var(e, p)
            else:
                self._add(e, p)
            return
        self._add(e, p)

    def tmpfiles(self) -> bytes:
        head = ("# Written by gitree make-bootable: the content of the source tree's /var (and of /home, /root,\n"
                "# /opt, /srv, /mnt, /usr/local), recreated in the stateroot's /var at boot.\n")
        return (head + "".join(line + "\n" for _, line in sorted(self.lines))).encode("utf-8")


def make_bootable(repo: Repo, rev: str, branch: str, version: str | None = None, kernel: str | None = None,
                  message: str | None = None, timestamp: int | None = None,
                  check_prepare_root: bool = True, metadata: tuple[tuple[str, str], ...] = (),
                  progress=None) -> BootableResult:
    """Write the bootable form of REV as a new commit on `branch` (its tip becomes the parent).
    metadata: more string keys for the OSTree commit (ostree commit --add-metadata-string), after the three."""
    t0 = time.monotonic()
    for key, _ in metadata:
        if not key or key in ("ostree.linux", "version", "ostree.bootable") or key.startswith("ostree.ref-binding") \
                or key == "ostree.collection-binding" or sum(1 for k, _ in metadata if k == key) > 1:
            raise UsageError(f"metadata key {key!r} is empty, repeated or set by make-bootable/export itself")
    repo.branch_ref(branch)
    commit = repo.resolve(rev)
    root = repo.commit_trees(commit)
    if dict(tree_metadata(repo, commit)).get("ostree.bootable"):
        raise BadInput(f"{commit.id} is already bootable (made by make-bootable); give its source commit")
    k = find_kernel(repo, commit, kernel)
    if k.initramfs is None:
        raise BadInput(f"kernel {k.version} in {commit.id} has no initramfs (expected /boot/initrd.img-{k.version}, "
                       f"/boot/initramfs-{k.version}.img or {display(MODULES)}/{k.version}/initramfs.img)")
    if check_prepare_root:
        check_initramfs(repo, k.initramfs)
    osr = read_os_release(repo, commit)
    etc = repo.find(root, b"etc")
    if etc is not None and etc.kind is Kind.DIR and repo.find(root, b"usr/etc") is not None:
        raise BadInput(f"{commit.id} has both /etc and /usr/etc")
    if version is None:
        version = _next_version(repo, branch, osr.get("VERSION_ID") or "0")
    with repo.transaction(keep_mtime=True, level=1, progress=progress) as tx:
        rw = _Rewriter(repo, tx, k)
        for e in repo.walk(commit):
            rw.feed(e)
        if repo.find(root, b"var") is None:
            tx.add(Entry(b"var", Kind.DIR, 0o755))
        tx.add(Entry(b"sysroot", Kind.DIR, 0o755))
        for name, target in RUNTIME_LINKS.items():
            if name not in rw.seen_links:
                tx.add(Entry(name, Kind.SYMLINK, 0o777, target=target))
        if not rw.has_usr_etc and (etc is None or etc.kind is not Kind.DIR):
            tx.add(Entry(b"usr/etc", Kind.DIR, 0o755))  # ostree needs it in every deployment
        data = rw.tmpfiles()
        tx.add(Entry(TMPFILES, Kind.FILE, 0o644, size=len(data)), lambda: [data])
        meta = [("ostree.linux", k.version), ("version", version), ("ostree.bootable", True), *metadata]
        blob = tx.store(OBJ_BLOB, ostreemeta.encode(meta))
        subject = commit.message.split("\n", 1)[0] or f"{str(commit.id)[:12]}"
        msg = message if message is not None else (
            f"{subject} (bootable {version}, kernel {k.version})\n\nMade bootable from {commit.id}\n")
        cid = tx.commit(branch=branch, message=msg,
                        timestamp=commit.commit_time if timestamp is None else timestamp,
                        extra_top=[(MODE_FILE, ostreemeta.BLOB_NAME, blob)])
    kdir = f"{display(MODULES)}/{k.version}"
    changes = [f"kernel {k.version}: {display(k.vmlinuz.path)} -> {kdir}/vmlinuz",
               f"initramfs: {display(k.initramfs.path)} -> {kdir}/initramfs.img"
               + (" (has ostree-prepare-root)" if check_prepare_root else " (not checked)")]
    changes += [f"{what}: {n}" for what, n in sorted(rw.counts.items())]
    changes.append(f"/var content -> {display(FACTORY_VAR)} and {display(TMPFILES)} ({len(rw.lines)} lines)")
    changes.append("symlinks: " + ", ".join(f"{display(s)} -> {t.decode()}" for s, (_, t) in INTO_VAR.items())
                   + ", " + ", ".join(f"{display(s)} -> {t.decode()}" for s, t in RUNTIME_LINKS.items()))
    changes.append("empty /sysroot, /var, /boot, /dev")
    changes.append(f"metadata: ostree.linux={k.version} version={version} ostree.bootable=true"
                   + "".join(f" {key}={value}" for key, value in metadata))
    return BootableResult(cid, k.version, meta, changes, time.monotonic() - t0)


__all__ = ["make_bootable", "find_kernel", "tree_metadata", "BootableResult"]
