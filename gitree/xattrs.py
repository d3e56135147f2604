"""Linux's rules for extended attributes, as a pure check (names and values are bytes).

A name is `<namespace>.<suffix>` with a non-empty suffix, in a namespace Linux knows: user., trusted.,
security., or system. (only the POSIX ACL names). `security.capability` must be a vfs_cap_data Linux
accepts on setxattr (revision 2, 20 bytes, or revision 3, 24 bytes); a POSIX ACL must be a valid
posix_acl_xattr (version 2, entries sorted, one owner/group/other entry, a mask when named entries exist).
"""

from __future__ import annotations

import struct

from .limits import XATTR_LIST_MAX, XATTR_NAME_MAX, XATTR_SIZE_MAX

NAMESPACES = (b"user.", b"trusted.", b"security.", b"system.")
CAPABILITY = b"security.capability"
ACL_ACCESS = b"system.posix_acl_access"
ACL_DEFAULT = b"system.posix_acl_default"

_CAP_REVISION_MASK = 0xFF000000
_CAP_SIZES = {0x02000000: 20, 0x03000000: 24}   # VFS_CAP_REVISION_2/3: XATTR_CAPS_SZ_2/3

_ACL_VERSION = 2
_ACL_USER_OBJ, _ACL_USER, _ACL_GROUP_OBJ, _ACL_GROUP, _ACL_MASK, _ACL_OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20


def check_name(name: bytes) -> str | None:
    if not name or b"\0" in name or len(name) > XATTR_NAME_MAX:
        return f"xattr name {name[:64]!r} is empty, longer than {XATTR_NAME_MAX} bytes or contains NUL"
    for ns in NAMESPACES:
        if name.startswith(ns):
            if len(name) == len(ns):
                return f"xattr name {name!r} has an empty suffix"
            if ns == b"system." and name not in (ACL_ACCESS, ACL_DEFAULT):
                return f"xattr name {name[:64]!r}: Linux knows no such system. attribute"
            return None
    return f"xattr name {name[:64]!r} is in no namespace Linux knows (user., trusted., security., system.)"


def check_capability(value: bytes) -> str | None:
    if len(value) < 4:
        return "security.capability is shorter than its header"
    (magic,) = struct.unpack_from("<I", value)
    want = _CAP_SIZES.get(magic & _CAP_REVISION_MASK)
    if want is None:
        return f"security.capability has revision {magic >> 24:#x}; Linux writes revisions 2 and 3"
    if len(value) != want:
        return f"security.capability is {len(value)} bytes; revision {magic >> 24} has {want}"
    return None


def check_acl(value: bytes, default: bool) -> str | None:
    if len(value) < 4 or (len(value) - 4) % 8:
        return "POSIX ACL has a size that is not 4 + 8n bytes"
    if struct.unpack_from("<I", value)[0] != _ACL_VERSION:
        return "POSIX ACL version is not 2"
    seen: dict[int, int] = {}
    prev = (0, -1)
    named = False
    for off in range(4, len(value), 8):
        tag, perm, eid = struct.unpack_from("<HHI", value, off)
        if perm & ~7:
            return "POSIX ACL entry has permission bits other than rwx"
        if tag not in (_ACL_USER_OBJ, _ACL_USER, _ACL_GROUP_OBJ, _ACL_GROUP, _ACL_MASK, _ACL_OTHER):
            return f"POSIX ACL entry has unknown tag {tag:#x}"
        key = (tag, eid if tag in (_ACL_USER, _ACL_GROUP) else 0)
        if key <= prev:
            return "POSIX ACL entries are not sorted or repeat"
        prev = key
        seen[tag] = seen.get(tag, 0) + 1
        named = named or tag in (_ACL_USER, _ACL_GROUP)
    if len(value) == 4:
        return None  # an empty ACL: no entries
    if seen.get(_ACL_USER_OBJ) != 1 or seen.get(_ACL_GROUP_OBJ) != 1 or seen.get(_ACL_OTHER) != 1:
        return "POSIX ACL lacks its owner, group or other entry"
    if named and seen.get(_ACL_MASK) != 1:
        return "POSIX ACL with named entries lacks its mask entry"
    return None


def check_xattrs(xattrs, is_dir: bool) -> str | None:
    """Why Linux cannot hold this list of xattrs on an inode, or None."""
    listed = 0
    for name, value in xattrs:
        why = check_name(name)
        if why is not None:
            return why
        listed += len(name) + 1
        if len(value) > XATTR_SIZE_MAX:
            return f"xattr {name!r} value is longer than {XATTR_SIZE_MAX} bytes"
        if name == CAPABILITY:
            why = check_capability(value)
        elif name in (ACL_ACCESS, ACL_DEFAULT):
            if name == ACL_DEFAULT and not is_dir:
                return "system.posix_acl_default on something that is not a directory"
            why = check_acl(value, name == ACL_DEFAULT)
        if why is not None:
            return why
    if listed > XATTR_LIST_MAX:
        return f"xattr names total {listed} bytes, more than Linux's {XATTR_LIST_MAX}"
    return None
