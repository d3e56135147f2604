"""What export-ostree may take from an existing target OSTree repository without reading it (review F6).

A target repository may have been prepared by someone else (a shared disk, an unpacked archive): a file
planted under the checksum of a file the export will write (predictable for a distribution's files) would
otherwise be kept as "already present", and every client checking out the commit would get its bytes.

The rule: an object that is present in the target is referenced without reading it only when the export
cache (gitree/exportcache.py: local, HMAC-authenticated records) says that this export or an earlier one
wrote or verified exactly that file, in this target: a record keyed by the target (its real path, device and
inode), the object's type and checksum, whose value is a digest of the object file's device, inode, size
and modification time as they were then. Any other present object is verified - read whole and hashed as
`ostree fsck` does - before it is referenced, and recorded if it holds what its name says; if it does not,
it is removed and written anew. A directory of the export cache is taken whole (its subtree not visited)
only when its dirtree and dirmeta are vouched for in this target, which holds only if every object below
was vouched for, verified or written when they were recorded.

Objects the export itself writes need no check: every content object it writes replaces any file of that
name (the export's own writers stage a new file and rename it into place; gitree_compat's write_content is
called with trust_present=False, so it never keeps a present file in place of what it hashed), and a
metadata object is written over an existing file whose bytes differ (write_metadata), so what is there
afterwards is the export's.
"""

from __future__ import annotations

import hashlib
import os
import struct

import gitree_compat as oc
from gitree_compat import ObjectType, OstreeRepo

from ..exportcache import KeyMaker

TARGET_OBJECT = b"target-object"   # record kind: an object of one target repository, as written or verified


def object_stamp(path: str) -> bytes | None:
    """A digest of an object file's device, inode, size, modification time and mode (None if absent)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return stat_stamp(st)


def stat_stamp(st: os.stat_result) -> bytes:
    """object_stamp of a file by its stat (an fstat of the file a writer is about to rename into place:
    a rename changes none of these)."""
    return hashlib.blake2b(struct.pack(">QQQqI", st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode),
                           digest_size=32).digest()


class TargetObjects:
    """Vouches for, verifies and records the objects of one target repository (see the module doc)."""

    def __init__(self, cache, target: OstreeRepo, warn=None):
        self.cache, self.target, self.warn = cache, target, warn
        path = os.fspath(target.path)
        st = os.stat(path)
        self.tid = os.path.realpath(path).encode() + struct.pack(">QQ", st.st_dev, st.st_ino)
        self.objdir = os.path.join(path, "objects")
        self.suffixes: dict[ObjectType, str] = {}
        self.keys: dict[ObjectType, KeyMaker] = {}
        # a target whose objects/ held nothing when the export began (a new repository) has no object this
        # export did not write: an object without an unsaved record of this export is written without an
        # lstat first (written over whatever has its name; after a save part way through an export, an
        # object it wrote before is written again)
        try:
            with os.scandir(self.objdir) as it:
                self.empty = next(it, None) is None
        except OSError:
            self.empty = False
        self.verified = 0   # present objects read and hashed
        self.replaced = 0   # present objects that did not hold what their name says (removed, written anew)

    def _path(self, csum: str, objtype: ObjectType) -> str:
        suffix = self.suffixes.get(objtype)
        if suffix is None:
            sample = os.fspath(self.target.object_path("0" * 64, objtype))
            suffix = self.suffixes[objtype] = "." + sample.rpartition(".")[2]
        return f"{self.objdir}/{csum[:2]}/{csum[2:]}{suffix}"

    def _stamp(self, csum: str, objtype: ObjectType) -> bytes | None:
        return object_stamp(self._path(csum, objtype))

    def _key(self, csum: str, objtype: ObjectType) -> bytes:
        make = self.keys.get(objtype)
        if make is None:
            make = self.keys[objtype] = KeyMaker(TARGET_OBJECT, self.tid, objtype.suffix.encode())
        return make(bytes.fromhex(csum))

    def vouched(self, csum: str, objtype: ObjectType) -> bool:
        """Present, and recorded as written or verified in this target, unchanged since."""
        stamp = self._stamp(csum, objtype)
        return stamp is not None and self.cache.get(self._key(csum, objtype)) == stamp

    def record(self, csum: str, objtype: ObjectType, stamp: bytes | None = None) -> None:
        """The object as it is now in the target was written (or verified) by this export. `stamp`: its
        object_stamp taken by the process that wrote it, right after (else taken here)."""
        if stamp is None:
            stamp = self._stamp(csum, objtype)
        if stamp is not None:
            self.cache.put_new(self._key(csum, objtype), stamp)

    def usable(self, csum: str, objtype: ObjectType) -> bool:
        """True when the object is present and holds what its name says (vouched for, or verified now and
        recorded); False when it is absent, or was not right and has been removed (write it anew)."""
        key = self._key(csum, objtype)
        if self.empty and key not in self.cache.new:
            return False
        stamp = self._stamp(csum, objtype)
        if stamp is None:
            return False
        if self.cache.get(key) == stamp:
            return True
        self.verified += 1
        if self._verify(csum, objtype):
            self.cache.put(key, stamp)
            return True
        self.replaced += 1
        path = self.target.object_path(csum, objtype)  # the layout is checked: no symlinked directory
        os.unlink(path)
        if self.warn is not None:
            self.warn(f"target repository: objects/{csum[:2]}/{path.name} did not hold what its name says; "
                      "replaced")
        return False

    def _verify(self, csum: str, objtype: ObjectType) -> bool:
        try:
            self.target.verify_object(csum, objtype)  # as one `ostree fsck` step: read whole, hashed
            return True
        except (oc.OstreeFormatError, OSError):
            return False


__all__ = ["TargetObjects", "TARGET_OBJECT", "object_stamp", "stat_stamp"]
