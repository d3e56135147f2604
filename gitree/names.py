"""Name handling: escaping of names git refuses in a tree, and the token escaping of side tables."""

from __future__ import annotations

import re

from .errors import BadInput, UnsafePath

# Names stored in a git tree under a different name: see docs/format.md, "Escaped names".
ESCAPE_PREFIX = b"~gitree~"

# Code points HFS+ ignores when comparing names (git's is_hfs_dotgit), as UTF-8.
_HFS_IGNORABLE_BYTES = [c.encode("utf-8") for c in
                        "\u200c\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
                        "\u206a\u206b\u206c\u206d\u206e\u206f\ufeff"]
_NTFS_SHORT = re.compile(rb"^(git|gitmod|gi7eba|gitatt|gi7d29|gitign|gi250a|mailma|maba30)~[0-9]")


def needs_escape(name: bytes) -> bool:
    """True if git (fsck --strict, or checkout protections) could refuse or interpret this name."""
    if name.startswith(ESCAPE_PREFIX):
        return True
    folded = name
    if not name.isascii():  # every ignorable code point is non-ASCII: an ASCII name has none to remove
        for ign in _HFS_IGNORABLE_BYTES:
            if ign in folded:
                folded = folded.replace(ign, b"")
    folded = folded.lower()
    return folded.startswith((b".git", b".mailmap")) or bool(_NTFS_SHORT.match(folded))


def git_name(name: bytes) -> bytes:
    """The name used inside git trees for a filesystem name."""
    return ESCAPE_PREFIX + name if needs_escape(name) else name


def fs_name(gname: bytes) -> bytes:
    """Inverse of git_name."""
    return gname[len(ESCAPE_PREFIX):] if gname.startswith(ESCAPE_PREFIX) else gname


def check_name(name: bytes, path: bytes = b"") -> None:
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise UnsafePath(f"invalid file name {name!r} in {display(path)}")
    if len(name) > 255:
        raise UnsafePath(f"file name {name[:40]!r}... in {display(path[:200])} is longer than 255 bytes (NAME_MAX)")


# Side-table token escaping: bytes 0x21..0x7e except '%' and '=' stand for themselves, every other
# byte is written %XX (upper-case hex).
_SAFE = frozenset(range(0x21, 0x7F)) - {0x25, 0x3D}
_ESC_TABLE = [bytes([b]) if b in _SAFE else b"%%%02X" % b for b in range(256)]
_PLAIN = re.compile(rb"[\x21-\x24\x26-\x3c\x3e-\x7e]*")
_PCT = re.compile(rb"%([0-9A-F]{2})")


def esc(raw: bytes) -> bytes:
    if _PLAIN.fullmatch(raw):
        return raw
    return b"".join([_ESC_TABLE[b] for b in raw])


def unesc(token: bytes) -> bytes:
    if b"%" not in token:
        return token
    out = _PCT.sub(lambda m: bytes([int(m.group(1), 16)]), token)
    if b"%" in _PCT.sub(b"", token):
        raise ValueError(f"bad escape in {token!r}")
    return out


def display(path: bytes) -> str:
    """A path for messages: '/' plus the bytes decoded with surrogateescape."""
    return "/" + path.decode("utf-8", "backslashreplace")


# a component of a member path other than "" and "." (found in C: a path of 8 MiB of "./" is one scan)
_MEMBER_COMPONENT = re.compile(rb"(?<![^/])(?!\.(?:/|\Z))[^/]+")   # \Z: "$" also matches before a final "\n"


def normalize_member_path(raw: bytes) -> bytes:
    """Normalize an archive member path; raise UnsafePath for '..' components or a NUL, BadInput for
    more components than the depth limit (checked as they are found: an 8 MiB pax path is not split whole).

    Leading '/' and './' are stripped (as GNU tar and ostree do), empty and '.' components dropped.
    The root itself is b"".
    """
    from .limits import MAX_DEPTH
    parts = []
    for m in _MEMBER_COMPONENT.finditer(raw):
        comp = m.group()
        if comp == b"..":
            raise UnsafePath(f"member path {raw[:200].decode('utf-8', 'backslashreplace')!r} contains '..'")
        if b"\0" in comp:
            raise UnsafePath(f"member path {raw[:200]!r} contains NUL")
        if len(parts) >= MAX_DEPTH:
            raise BadInput(f"member path {raw[:200].decode('utf-8', 'backslashreplace')!r}...: deeper than "
                             f"{MAX_DEPTH} levels (the depth limit)")
        parts.append(comp)
    return b"/".join(parts)
