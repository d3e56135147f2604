"""POSIX tar (ustar + pax, GNU long names) as a pure codec over a `read(n)` / `write(b)` stream.

Names, link targets and xattr values stay bytes from end to end.
"""

from __future__ import annotations

import base64
import grp
import pwd
import re
import stat
import struct
import urllib.parse
from dataclasses import dataclass, field

from .errors import BadInput, UnsupportedEntry
from .limits import XATTR_LIST_MAX
from .sparse import MAX_SEGMENTS, SparseMap
from .sparse import canonical as sparse_canonical

BLOCK = 512

REGTYPE, AREGTYPE, LNKTYPE, SYMTYPE, CHRTYPE, BLKTYPE, DIRTYPE, FIFOTYPE, CONTTYPE = (
    b"0", b"\0", b"1", b"2", b"3", b"4", b"5", b"6", b"7")
PAX_X, PAX_G, GNU_LONGNAME, GNU_LONGLINK = b"x", b"g", b"L", b"K"
GNU_DUMPDIR, GNU_SPARSE, GNU_VOLHDR, SOLARIS_ACL, SOLARIS_XHDR = b"D", b"S", b"V", b"A", b"X"
_TYPE_IFMT = {REGTYPE: stat.S_IFREG, AREGTYPE: stat.S_IFREG, CONTTYPE: stat.S_IFREG, LNKTYPE: stat.S_IFREG,
              SYMTYPE: stat.S_IFLNK, CHRTYPE: stat.S_IFCHR, BLKTYPE: stat.S_IFBLK, DIRTYPE: stat.S_IFDIR,
              FIFOTYPE: stat.S_IFIFO}
# Limits on what an archive can make gitree hold (docs/tar.md, "Limits").
MAX_PAX_HEADER = 8 << 20        # one pax extended header or GNU long name/link payload
MAX_PAX_RECORDS = 2 * MAX_SEGMENTS + 1024  # records of one pax header (a GNU sparse 0.0 map repeats two per segment)
_MAX_META = MAX_PAX_HEADER
# The pax keywords a global header may set for every following member; any other is ignored with one warning
# per header (xattrs, ACLs, names and sizes have no meaning for every member, and copies would multiply).
_GLOBAL_KEYS = frozenset((b"uid", b"gid", b"uname", b"gname", b"mtime", b"atime", b"ctime", b"hdrcharset",
                          b"charset", b"comment"))
_GLOBAL_NAMES = ", ".join(sorted(k.decode() for k in _GLOBAL_KEYS))
_REFUSED_TYPES = {b"M": "GNU multi-volume continuation", b"N": "GNU old long-name (type N)"}
# pax keywords that carry nothing a root filesystem tree keeps (times other than mtime, names of owners:
# gitree stores numeric ids as GNU tar --numeric-owner does when extracting as root)
_IGNORED_PAX = {b"atime", b"ctime", b"uname", b"gname", b"comment", b"charset", b"hdrcharset",
                b"SCHILY.dev", b"SCHILY.ino", b"SCHILY.nlink", b"SCHILY.filetype", b"SCHILY.offset",
                b"SCHILY.realsize", b"LIBARCHIVE.creationtime", b"LIBARCHIVE.symlinktype", b"SUN.holesdata",
                b"GNU.volume.label", b"GNU.volume.filename", b"GNU.volume.size", b"GNU.volume.offset",
                b"GNU.dumpdir"}


@dataclass(slots=True)
class TarMember:
    path: bytes
    typeflag: bytes
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    linkname: bytes = b""
    devmajor: int = 0
    devminor: int = 0
    xattrs: list[tuple[bytes, bytes]] = field(default_factory=list)
    offset: int = 0
    sparse: SparseMap | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def ifmt(self) -> int:
        return _TYPE_IFMT[self.typeflag]

    def display(self) -> str:
        """The member's path for a message: whole up to PATH_MAX, else its start and its length (a pax
        path may hold 8 MiB)."""
        if len(self.path) <= 4096:
            return self.path.decode("utf-8", "backslashreplace")
        return self.path[:200].decode("utf-8", "backslashreplace") + f"... ({len(self.path)} bytes)"


def _parse_number(field_: bytes, what: str, offset: int, signed: bool = False) -> int:
    if field_ and field_[0] & 0x80:  # base-256 (GNU/star): two's complement, bit 6 of byte 0 is the sign
        b0 = field_[0] & 0x7F | (field_[0] & 0x40) << 1
        n = int.from_bytes(bytes([b0]) + field_[1:], "big", signed=True)
        if n < 0 and not signed:
            raise BadInput(f"tar header at byte {offset}: negative {what}")
        return n
    s = field_.split(b"\0", 1)[0].strip(b" ")
    if not s:
        return 0
    try:
        return int(s, 8)
    except ValueError:
        raise BadInput(f"tar header at byte {offset}: bad {what} field (not a number)") from None


def _cstr(b: bytes) -> bytes:
    return b.split(b"\0", 1)[0]


def parse_pax(data: bytes, offset: int) -> list[tuple[bytes, bytes]]:
    """The records of a pax extended header, in order (GNU sparse 0.0 repeats keywords)."""
    out: list[tuple[bytes, bytes]] = []
    pos = 0
    while pos < len(data):
        sp = data.find(b" ", pos)
        if sp < 0:
            if data[pos:].strip(b"\0") == b"":
                break
            raise BadInput(f"tar pax header at byte {offset}: malformed record")
        try:
            length = int(data[pos:sp])
        except ValueError:
            raise BadInput(f"tar pax header at byte {offset}: bad record length") from None
        rec = data[sp + 1:pos + length]
        if length <= sp - pos or pos + length > len(data) or not rec.endswith(b"\n") or b"=" not in rec:
            raise BadInput(f"tar pax header at byte {offset}: malformed record")
        key, _, value = rec[:-1].partition(b"=")
        out.append((key, value))
        if len(out) > MAX_PAX_RECORDS:
            raise BadInput(f"tar pax header at byte {offset}: more than {MAX_PAX_RECORDS} records "
                           "(MAX_PAX_RECORDS)")
        pos += length
    return out


def pax_record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    n = len(body) + 1
    while len(b"%d" % n) + len(body) != n:
        n = len(b"%d" % n) + len(body)
    return b"%d" % n + body


# POSIX.1e ACL text (SCHILY.acl.access / .default, as star, GNU tar and bsdtar write it) to the binary
# value of the system.posix_acl_* xattrs (linux/posix_acl_xattr.h), which is what getfacl reads back.
_ACL_TAGS = {b"user": 0x01, b"u": 0x01, b"group": 0x04, b"g": 0x04, b"mask": 0x10, b"m": 0x10,
             b"other": 0x20, b"o": 0x20}
_ACL_UNDEFINED = 0xFFFFFFFF


def acl_text_to_xattr(text: bytes) -> bytes:
    """Raises ValueError for text that is not an ACL gitree can store exactly (e.g. names without ids)."""
    entries = []
    for raw in text.replace(b"\n", b",").split(b","):
        ent = raw.split(b"#", 1)[0].strip()
        if not ent:
            continue
        parts = ent.split(b":")
        if len(parts) not in (3, 4) or parts[0] not in _ACL_TAGS:
            raise ValueError(f"bad ACL entry {ent[:40]!r}")
        tag, qual, perms = _ACL_TAGS[parts[0]], parts[1], parts[2]
        if len(perms) > 3 or any(c not in b"rwx-" for c in perms):
            raise ValueError(f"bad ACL permissions {perms[:8]!r}")
        perm = (4 if b"r" in perms else 0) | (2 if b"w" in perms else 0) | (1 if b"x" in perms else 0)
        if qual:
            if tag not in (0x01, 0x04):
                raise ValueError(f"ACL entry {ent[:40]!r} has a qualifier")
            idtext = parts[3] if len(parts) == 4 else qual
            ident = int(idtext) if idtext.isdigit() else _host_id(tag, idtext)
            if ident >= _ACL_UNDEFINED:
                raise ValueError(f"ACL id {ident} out of range")
            tag <<= 1  # ACL_USER = 0x02, ACL_GROUP = 0x08
        else:
            ident = _ACL_UNDEFINED
        entries.append((tag, ident, perm))
    entries.sort()
    keys = [(t, i) for t, i, _ in entries]
    if len(set(keys)) != len(keys):
        raise ValueError("ACL names one entry twice")
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", t, p, i) for t, i, p in entries)


_ACL_NAMES = {0x01: b"user", 0x02: b"user", 0x04: b"group", 0x08: b"group", 0x10: b"mask", 0x20: b"other"}


def acl_xattr_to_text(value: bytes) -> bytes | None:
    """The POSIX.1e text of a system.posix_acl_* value with numeric qualifiers (what GNU tar and bsdtar
    both read back), or None if the value is not a well-formed ACL."""
    if len(value) < 4 or (len(value) - 4) % 8 or value[:4] != struct.pack("<I", 2):
        return None
    out = []
    for off in range(4, len(value), 8):
        tag, perm, ident = struct.unpack("<HHI", value[off:off + 8])
        if tag not in _ACL_NAMES or perm > 7:
            return None
        qual = b"%d" % ident if tag in (0x02, 0x08) else b""
        rwx = bytes(c if perm & bit else 0x2D for c, bit in ((0x72, 4), (0x77, 2), (0x78, 1)))
        out.append(_ACL_NAMES[tag] + b":" + qual + b":" + rwx)
    text = b",".join(out)
    try:
        return text if acl_text_to_xattr(text) == value else None
    except ValueError:
        return None


def _host_id(tag: int, name: bytes) -> int:
    """A name in an ACL without its numeric id is resolved in this host's user database, as GNU tar
    (acl_from_text) does when it extracts; docs/tar.md."""
    try:
        if tag == 0x01:
            return pwd.getpwnam(name.decode("utf-8")).pw_uid
        return grp.getgrnam(name.decode("utf-8")).gr_gid
    except (KeyError, UnicodeDecodeError):
        raise ValueError(f"ACL names {'user' if tag == 1 else 'group'} {name[:40]!r}, unknown on this host "
                         "and without a numeric id") from None


def _sparse_canonical(hdr: "TarMember", realsize: int, segs, offset: int) -> None:
    """Set hdr.sparse from a map read from the archive; the data in the archive must be the map's data."""
    try:
        m = sparse_canonical(realsize, segs, f"tar member {hdr.display()!r} at byte {offset}: sparse map")
    except ValueError as e:
        raise BadInput(str(e)) from None
    want = sum(n for _, n in segs)
    if want != hdr.size:
        raise BadInput(f"tar member {hdr.display()!r} at byte {offset}: sparse map holds {want} bytes of data, "
                       f"the member {hdr.size}")
    hdr.sparse = m
    if m is None and realsize != hdr.size:
        raise BadInput(f"tar member {hdr.display()!r} at byte {offset}: bad sparse map")


class TarReader:
    """Iterate members of a tar stream. Each member's data must be read (or is skipped) before the next.

    `warnings` collects one line per thing read but not kept (each names its member); `end_missing` is set
    when the archive stops at a header boundary without its end-of-archive blocks (GNU tar reads it too).
    """

    def __init__(self, read):
        self._read = read
        self.pos = 0
        self._remaining = 0
        self._pad = 0
        self._global: dict[bytes, bytes] = {}
        self.members = 0
        self.end_missing = False
        self.warnings: list[str] = []
        self._sparse_v1 = False  # the member's pax header announced GNU sparse 1.0: its map leads its data
        self._v1_realsize = 0

    def _read_exact(self, n: int, first: bytes | None = None, what: str = "") -> bytes:
        """n bytes (of which `first` were already read); a short stream is a truncated archive."""
        buf = self._read(n) if first is None else first
        if len(buf) < n:
            chunks = [buf]
            got = len(buf)
            while got < n:
                more = self._read(n - got)
                if not more:
                    raise BadInput(f"tar archive truncated at byte {self.pos + got} "
                                   f"({what or f'expected {n - got} more bytes'})")
                chunks.append(more)
                got += len(more)
            buf = b"".join(chunks)
        self.pos += n
        return buf

    def read_data(self, n: int = -1) -> bytes:
        """Read up to n bytes of the current member's data (all remaining if n < 0)."""
        if n < 0 or n > self._remaining:
            n = self._remaining
        if n == 0:
            return b""
        buf = self._read_exact(n)
        self._remaining -= n
        return buf

    def iter_data(self, chunk: int = 1 << 20):
        while self._remaining:
            yield self.read_data(chunk)

    def _skip_rest(self) -> None:
        while self._remaining:
            self.read_data(1 << 20)
        if self._pad:
            self._read_exact(self._pad)
            self._pad = 0

    def _read_meta(self, size: int, offset: int) -> bytes:
        if size > _MAX_META:
            raise BadInput(f"tar header at byte {offset}: extended header of {size} bytes is over the limit "
                           f"of {_MAX_META} bytes")
        data = self._read_exact(size)
        pad = -size % BLOCK
        if pad:
            self._read_exact(pad)
        return data

    def __iter__(self):
        return self

    def __next__(self) -> TarMember:
        self._skip_rest()
        self._sparse_v1 = False
        pax: list[tuple[bytes, bytes]] = []
        longname = longlink = None
        while True:
            offset = self.pos
            buf = self._read(BLOCK)
            if not buf:
                if pax or longname is not None or longlink is not None:
                    raise BadInput(f"tar archive truncated at byte {offset}: extended header without a member")
                if self.members == 0:
                    raise BadInput(f"tar archive is empty or truncated at byte {offset}: no member and no "
                                   "end-of-archive marker")
                self.end_missing = True
                raise StopIteration
            buf = self._read_exact(BLOCK, buf, "partial header")
            if buf == b"\0" * BLOCK:
                if pax or longname is not None or longlink is not None:
                    raise BadInput(f"tar archive at byte {offset}: extended header without a member")
                raise StopIteration
            hdr, gnu_sparse = self._parse_header(buf, offset)
            tf = hdr.typeflag
            if gnu_sparse is not None and gnu_sparse[2]:
                self._read_gnu_sparse_ext(gnu_sparse[1], offset)
            if tf in (PAX_X, PAX_G, SOLARIS_XHDR):
                recs = parse_pax(self._read_meta(hdr.size, offset), offset)
                if tf == PAX_G:
                    self._set_global(recs, offset)
                else:
                    if pax:
                        self.warnings.append(f"pax header at byte {offset} follows another: the earlier one "
                                             "is ignored (as GNU tar does)")
                    pax = recs
                continue
            if tf in (GNU_LONGNAME, GNU_LONGLINK):
                data = _cstr(self._read_meta(hdr.size, offset))
                if tf == GNU_LONGNAME:
                    longname = data
                else:
                    longlink = data
                continue
            if tf in (GNU_VOLHDR, SOLARIS_ACL):
                if tf == SOLARIS_ACL:  # precedes the file it describes, under the same name
                    self.warnings.append(f"{hdr.display()}: Solaris ACL member dropped (not a POSIX.1e ACL)")
                self._remaining, self._pad = hdr.size, -hdr.size % BLOCK
                self._skip_rest()
                continue
            if tf in _REFUSED_TYPES:
                raise UnsupportedEntry(f"tar member {hdr.display()!r} at byte {offset}: "
                                       f"{_REFUSED_TYPES[tf]} members are not supported")
            self._apply(hdr, pax, longname, longlink, offset)
            if not -(1 << 63) <= hdr.mtime_ns < 1 << 63:  # what a file system (and SQLite) keeps: 64-bit ns
                self.warnings.append(f"{hdr.display()}: mtime outside the years 1678-2262 (64-bit nanoseconds): "
                                     "stored as 0")
                hdr.mtime_ns = 0
            if tf == GNU_SPARSE:
                _sparse_canonical(hdr, gnu_sparse[0], gnu_sparse[1], offset)
                hdr.typeflag = tf = REGTYPE
            elif tf == GNU_DUMPDIR:
                hdr.typeflag = tf = DIRTYPE
                data_size = hdr.size  # the dump directory listing: skipped, as GNU tar does without -G
                self._remaining, self._pad = data_size, -data_size % BLOCK
                self._skip_rest()
            elif tf not in _TYPE_IFMT:
                self.warnings.append(f"{hdr.display()}: unknown member type {tf.decode('latin-1')!r} read as "
                                     "a regular file (as GNU tar does)")
                hdr.typeflag = tf = REGTYPE
            if tf in (REGTYPE, AREGTYPE, CONTTYPE) and hdr.path.endswith(b"/") and hdr.sparse is None:
                hdr.typeflag = tf = DIRTYPE  # old-style directory (a pre-POSIX archive); GNU tar reads it so
                self._remaining, self._pad = hdr.size, -hdr.size % BLOCK
                self._skip_rest()
            if tf in (DIRTYPE, LNKTYPE):
                # GNU tar takes no data after a directory or hard-link header, whatever its size field says
                hdr.size = 0
            elif tf in (SYMTYPE, CHRTYPE, BLKTYPE, FIFOTYPE):
                # ...but does skip a size field's worth after these
                self._remaining, self._pad = hdr.size, -hdr.size % BLOCK
                self._skip_rest()
                hdr.size = 0
            else:
                self._remaining, self._pad = hdr.size, -hdr.size % BLOCK
                if self._sparse_v1:
                    if not hdr.size:
                        raise BadInput(f"tar member {hdr.display()!r} at byte {offset}: GNU sparse 1.0 member "
                                       "without its map")
                    self._read_sparse_v1(hdr, offset)
            self.members += 1
            return hdr

    def _set_global(self, recs, offset: int) -> None:
        """Keep the keywords a global header may set for every member; the first ignored one is warned
        about by name, the rest counted in one more line (a header of many records must not make as many
        warnings, nor copies per member)."""
        ignored = 0
        for key, value in recs:
            if key in _GLOBAL_KEYS:
                if value:
                    self._global[key] = value
                else:
                    self._global.pop(key, None)
                continue
            if not value and (key in (b"path", b"linkpath", b"size") or key.startswith(b"GNU.sparse.")):
                continue  # an empty value only deletes a keyword: nothing is lost
            ignored += 1
            if ignored > 1:
                continue
            if key.startswith((b"SCHILY.xattr.", b"LIBARCHIVE.xattr.", b"SCHILY.acl.", b"RHT.")):
                why = "xattrs and ACLs are kept per member only (GNU tar fails on them, bsdtar ignores them)"
            elif key in (b"path", b"linkpath", b"size") or key.startswith(b"GNU.sparse."):
                why = "it would apply to every member"
            else:
                why = f"only {_GLOBAL_NAMES} apply to every member"
            self.warnings.append(f"pax global header at byte {offset}: {key[:60].decode('latin-1')} ignored ({why})")
        if ignored > 1:
            self.warnings.append(f"pax global header at byte {offset}: {ignored - 1} more keyword(s) ignored")

    @staticmethod
    def _parse_header(buf: bytes, offset: int):
        chk = _parse_number(buf[148:156], "checksum", offset)
        blank = buf[:148] + b" " * 8 + buf[156:]
        if chk != sum(blank) and chk != sum(b - 256 if b > 127 else b for b in blank):
            raise BadInput(f"tar header at byte {offset}: checksum mismatch (not a tar archive, or corrupt)")
        magic = buf[257:263]
        name = _cstr(buf[0:100])
        posix = magic == b"ustar\0"
        gnu = buf[257:265] == b"ustar  \0"
        if posix:  # POSIX: prefix field; star's variant keeps times in the prefix's last 24 bytes
            prefix = _cstr(buf[345:476] if buf[508:512] == b"tar\0" else buf[345:500])
            if prefix:
                name = prefix + b"/" + name
        typeflag = buf[156:157]
        hdr = TarMember(
            path=name, typeflag=typeflag,
            mode=_parse_number(buf[100:108], "mode", offset) & 0o7777,
            uid=_parse_number(buf[108:116], "uid", offset),
            gid=_parse_number(buf[116:124], "gid", offset),
            size=_parse_number(buf[124:136], "size", offset),
            mtime_ns=_parse_number(buf[136:148], "mtime", offset, signed=True) * 1_000_000_000,
            linkname=_cstr(buf[157:257]),
            devmajor=_parse_number(buf[329:337], "devmajor", offset) if posix or gnu else 0,
            devminor=_parse_number(buf[337:345], "devminor", offset) if posix or gnu else 0,
            offset=offset,
        )
        gnu_sparse = None
        if typeflag == GNU_SPARSE and gnu:
            segs = []
            for i in range(4):
                o = buf[386 + 24 * i:398 + 24 * i]
                n = buf[398 + 24 * i:410 + 24 * i]
                if o.strip(b"\0") == b"":
                    break
                segs.append((_parse_number(o, "sparse offset", offset), _parse_number(n, "sparse length", offset)))
            gnu_sparse = [_parse_number(buf[483:495], "sparse size", offset), segs, buf[482] != 0]
        elif typeflag == GNU_SPARSE:
            raise UnsupportedEntry(f"tar member {name.decode('utf-8', 'backslashreplace')!r} at byte {offset}: "
                                   "unsupported type 'S' (GNU sparse) outside a GNU header")
        return hdr, gnu_sparse

    def _read_gnu_sparse_ext(self, segs: list, offset: int) -> None:
        while True:
            blk = self._read_exact(BLOCK, None, "GNU sparse extension header")
            for i in range(21):
                o = blk[24 * i:24 * i + 12]
                if o.strip(b"\0") == b"":
                    break
                segs.append((_parse_number(o, "sparse offset", offset),
                             _parse_number(blk[24 * i + 12:24 * i + 24], "sparse length", offset)))
                if len(segs) > MAX_SEGMENTS:
                    raise BadInput(f"tar member at byte {offset}: sparse map of more than {MAX_SEGMENTS} "
                                   "segments")
            if blk[504] == 0:
                return

    def _read_sparse_v1(self, hdr: TarMember, offset: int) -> None:
        """GNU sparse 1.0: the map is a list of decimal lines at the start of the member's data."""
        self._sparse_v1 = False
        need = None
        nums: list[int] = []
        buf = b""
        used = 0
        while need is None or len(nums) < need:
            if b"\n" not in buf:
                if self._remaining < BLOCK or len(buf) > 64:
                    raise BadInput(f"tar member {hdr.display()!r} at byte {offset}: bad GNU sparse 1.0 map")
                buf += self.read_data(BLOCK)
                used += BLOCK
                continue
            line, _, buf = buf.partition(b"\n")
            if not line.isdigit() or len(line) > 20:
                raise BadInput(f"tar member {hdr.display()!r} at byte {offset}: bad GNU sparse 1.0 map")
            if need is None:
                need = 2 * int(line)
                if need > 2 * MAX_SEGMENTS:
                    raise BadInput(f"tar member {hdr.display()!r} at byte {offset}: sparse map of more than "
                                   f"{MAX_SEGMENTS} segments")
            else:
                nums.append(int(line))
        hdr.size -= used
        _sparse_canonical(hdr, self._v1_realsize, list(zip(nums[0::2], nums[1::2], strict=True)), offset)

    def _apply_xattr(self, hdr: TarMember, recs, offset: int) -> None:
        schily: dict[bytes, bytes] = {}
        other: dict[bytes, bytes] = {}
        selinux = None
        for key, value in recs:
            if key.startswith(b"SCHILY.xattr."):
                schily[key[len(b"SCHILY.xattr."):]] = value
            elif key.startswith(b"LIBARCHIVE.xattr."):
                name = urllib.parse.unquote_to_bytes(key[len(b"LIBARCHIVE.xattr."):])
                try:
                    other[name] = base64.b64decode(value + b"=" * (-len(value) % 4), validate=True)
                except ValueError:
                    raise BadInput(f"tar pax header at byte {offset}: bad base64 in {key[:60]!r}") from None
            elif key in (b"SCHILY.acl.access", b"SCHILY.acl.default"):
                xname = b"system.posix_acl_" + key.rpartition(b".")[2]
                try:
                    other[xname] = acl_text_to_xattr(value)
                except ValueError as e:
                    hdr.warnings.append(f"{hdr.display()}: {key.decode()} dropped: {e}")
            elif key == b"RHT.security.selinux":
                # GNU tar restores it with setfilecon, which stores the label with its NUL
                selinux = value + b"\0"
        other.update(schily)  # an explicit xattr record wins over a converted one...
        if selinux is not None:
            other[b"security.selinux"] = selinux  # ...but GNU tar --selinux sets the label last
        hdr.xattrs = list(other.items())

    def _apply(self, hdr: TarMember, local: list, longname, longlink, offset: int) -> None:
        if longname is not None:
            hdr.path = longname
        if longlink is not None:
            hdr.linkname = longlink
        hdr.xattrs = []
        if not local and not self._global:
            return
        recs = list(self._global.items()) + local
        fields: dict[bytes, bytes] = {}
        sparse_pairs: list[int] = []
        xrecs = []
        for key, value in recs:
            if key in (b"GNU.sparse.offset", b"GNU.sparse.numbytes"):
                sparse_pairs.append(value)
            elif key.startswith((b"SCHILY.xattr.", b"LIBARCHIVE.xattr.", b"SCHILY.acl.", b"RHT.")):
                xrecs.append((key, value))
            elif value:
                fields[key] = value
            else:
                fields.pop(key, None)  # POSIX: an empty value deletes the keyword
        if xrecs:
            g = dict(hdr.xattrs)
            self._apply_xattr(hdr, xrecs, offset)
            g.update(hdr.xattrs)
            hdr.xattrs = list(g.items())
        unknown = 0
        try:
            for key, value in fields.items():
                if key == b"path":
                    hdr.path = value
                elif key == b"linkpath":
                    hdr.linkname = value
                elif key == b"size":
                    hdr.size = int(value)
                elif key == b"uid":
                    hdr.uid = int(value)
                elif key == b"gid":
                    hdr.gid = int(value)
                elif key == b"mtime":
                    ns = _pax_time_exact(value)
                    if ns is None:
                        ns = _pax_time(value)
                        hdr.warnings.append(f"{hdr.display()}: malformed pax mtime {value[:40]!r}: "
                                            + ("ignored" if ns is None else "its leading number used")
                                            + " (as GNU tar does)")
                    if ns is not None:
                        hdr.mtime_ns = ns
                elif key == b"SCHILY.devmajor":
                    hdr.devmajor = int(value)
                elif key == b"SCHILY.devminor":
                    hdr.devminor = int(value)
                elif key == b"SCHILY.fflags":
                    hdr.warnings.append(f"{hdr.display()}: file flags {value[:60].decode('latin-1')!r} dropped "
                                        "(gitree stores no inode flags)")
                elif key == b"SCHILY.acl.ace":
                    hdr.warnings.append(f"{hdr.display()}: NFSv4 ACL dropped (Linux has no xattr for it)")
                elif key.startswith(b"GNU.sparse.") or key in _IGNORED_PAX:
                    continue
                else:
                    unknown += 1
                    if unknown == 1:
                        hdr.warnings.append(f"{hdr.display()}: unknown pax keyword {key[:60].decode('latin-1')!r} "
                                            "ignored")
            if unknown > 1:
                hdr.warnings.append(f"{hdr.display()}: {unknown - 1} more unknown pax keyword(s) ignored")
            if hdr.size < 0 or hdr.uid < 0 or hdr.gid < 0:
                raise BadInput(f"tar pax header at byte {offset}: negative value")
            if b"GNU.sparse.major" in fields or b"GNU.sparse.map" in fields or sparse_pairs \
                    or b"GNU.sparse.numblocks" in fields:
                self._pax_sparse(hdr, fields, sparse_pairs, offset)
        except ValueError:
            raise BadInput(f"tar pax header at byte {offset}: bad numeric value") from None
        names = sum(len(n) + 1 for n, _ in hdr.xattrs)
        if names > XATTR_LIST_MAX:
            raise BadInput(f"tar member {hdr.display()!r} at byte {offset}: xattr names of {names} bytes, over "
                           f"Linux's limit of {XATTR_LIST_MAX} (XATTR_LIST_MAX)")

    def _pax_sparse(self, hdr: TarMember, fields: dict, pairs: list, offset: int) -> None:
        """GNU sparse formats 0.0 (repeated offset/numbytes), 0.1 (GNU.sparse.map) and 1.0 (map in the data)."""
        if b"GNU.sparse.name" in fields:
            hdr.path = fields[b"GNU.sparse.name"]
        realsize = int(fields.get(b"GNU.sparse.realsize") or fields.get(b"GNU.sparse.size") or b"-1")
        if realsize < 0:
            raise BadInput(f"tar member {hdr.display()!r} at byte {offset}: sparse member without its size")
        major = fields.get(b"GNU.sparse.major")
        if major is not None:
            if major != b"1" or fields.get(b"GNU.sparse.minor", b"0") != b"0":
                raise UnsupportedEntry(f"tar member {hdr.display()!r} at byte {offset}: GNU sparse format "
                                       f"{major.decode('latin-1')}.x is not supported")
            self._sparse_v1 = True
            self._v1_realsize = realsize
            return
        if b"GNU.sparse.map" in fields:
            nums = [int(x) for x in fields[b"GNU.sparse.map"].split(b",")] if fields[b"GNU.sparse.map"] else []
        else:
            nums = [int(x) for x in pairs]
        if len(nums) % 2 or len(nums) > 2 * MAX_SEGMENTS:
            raise BadInput(f"tar member {hdr.display()!r} at byte {offset}: bad GNU sparse map")
        _sparse_canonical(hdr, realsize, list(zip(nums[0::2], nums[1::2], strict=True)), offset)


def _pax_time(value: bytes) -> int | None:
    """A pax time, or None if malformed. GNU tar still uses the number a malformed value begins with."""
    m = re.match(rb"-?[0-9]+(\.[0-9]*)?", value)
    return _pax_time_exact(m.group(0)) if m else None


def _pax_time_exact(value: bytes) -> int | None:
    sec, dot, frac = value.partition(b".")
    digits = sec[1:] if sec[:1] == b"-" else sec
    if not digits.isdigit() or (dot and not frac.isdigit()) or len(digits) > 19:
        return None
    ns = int(digits) * 1_000_000_000 + int((frac + b"000000000")[:9] or b"0")
    return -ns if sec[:1] == b"-" else ns


def _octal(n: int, width: int) -> bytes | None:
    s = b"%0*o" % (width - 1, n)
    return s + b"\0" if len(s) < width else None


class TarWriter:
    """Write POSIX pax tar members. Bytes are exact: no charset conversion."""

    def __init__(self, write):
        self._write = write

    def add(self, path: bytes, ifmt: int, mode: int, uid: int, gid: int, *, size: int = 0,
            linkname: bytes = b"", hardlink: bool = False, rdev: tuple[int, int] = (0, 0),
            mtime_ns: int = 0, xattrs=(), sparse: SparseMap | None = None) -> None:
        """One member's header. With `sparse`, `size` is the data segments' total and the member is written
        in GNU sparse format 1.0 (pax); its map block is written here, the data by add_data()."""
        if hardlink:
            typeflag = LNKTYPE
        else:
            typeflag = {stat.S_IFREG: REGTYPE, stat.S_IFLNK: SYMTYPE, stat.S_IFCHR: CHRTYPE,
                        stat.S_IFBLK: BLKTYPE, stat.S_IFDIR: DIRTYPE, stat.S_IFIFO: FIFOTYPE}.get(ifmt)
            if typeflag is None:
                raise UnsupportedEntry(f"tar cannot hold a socket: /{path.decode('utf-8', 'backslashreplace')}")
        if typeflag != REGTYPE:
            size = 0
        pax = []
        name = path
        prefix = b""
        longs: list[tuple[bytes, bytes]] = []
        sparse_block = b""
        if sparse is not None and typeflag == REGTYPE:
            segs = list(sparse.segments)
            if not segs or segs[-1][0] + segs[-1][1] < sparse.size:
                segs.append((sparse.size, 0))  # GNU tar sizes the file by its map's last entry
            lines = [b"%d" % len(segs)] + [b"%d\n%d" % s for s in segs]
            sparse_block = b"\n".join(lines) + b"\n"
            sparse_block += b"\0" * (-len(sparse_block) % BLOCK)
            pax += [(b"GNU.sparse.major", b"1"), (b"GNU.sparse.minor", b"0"), (b"GNU.sparse.name", path),
                    (b"GNU.sparse.realsize", b"%d" % sparse.size)]
            base = path.rstrip(b"/").rpartition(b"/")[2]
            name = b"./GNUSparseFile.0/" + (base if base.isascii() and len(base) <= 80 else b"sparse")
            size += len(sparse_block)
        elif len(name) > 100 or not name.isascii():
            # Bytes beyond ASCII go raw into the ustar name/prefix fields when they fit: a pax path must be
            # UTF-8 unless hdrcharset=BINARY (which GNU tar 1.34 warns about), and bsdtar warns when it
            # cannot convert a pax path to the locale. Longer: a pax path if UTF-8, else a GNU long name.
            split = _ustar_split(name) if not name.isascii() else None
            if split is not None:
                prefix, name = split
            elif _is_utf8(name):
                pax.append((b"path", name))
                name = name[:100] if name.isascii() else b"@PaxPath"
            else:
                longs.append((GNU_LONGNAME, name))
                name = b"@LongName"
        if len(linkname) > 100 or not linkname.isascii():
            if len(linkname) <= 100:
                pass  # raw in the header, as above
            elif _is_utf8(linkname):
                pax.append((b"linkpath", linkname))
                linkname = b"@PaxLink"
            else:
                longs.append((GNU_LONGLINK, linkname))
                linkname = b"@LongLink"
        mtime_s, mtime_frac = divmod(mtime_ns, 1_000_000_000)
        fields = {}
        for key, val, width in ((b"uid", uid, 8), (b"gid", gid, 8), (b"size", size, 12), (b"mtime", mtime_s, 12)):
            o = _octal(val, width) if val >= 0 else None
            if o is None:
                pax.append((key, b"%d" % val))
                o = _octal(0, width)
            fields[key] = o
        if mtime_frac:
            pax.append((b"mtime", b"%d.%09d" % (mtime_s, mtime_frac)))
        devmaj, devmin = (_octal(rdev[0], 8), _octal(rdev[1], 8))
        if devmaj is None:
            pax.append((b"SCHILY.devmajor", b"%d" % rdev[0]))
            devmaj = _octal(0, 8)
        if devmin is None:
            pax.append((b"SCHILY.devminor", b"%d" % rdev[1]))
            devmin = _octal(0, 8)
        for xn, xv in xattrs:
            # ACLs as the SCHILY.acl text both GNU tar (--acls) and bsdtar restore; GNU tar ignores them
            # as SCHILY.xattr records
            text = acl_xattr_to_text(xv) if xn in (b"system.posix_acl_access", b"system.posix_acl_default") \
                else None
            if text is not None:
                pax.append((b"SCHILY.acl." + xn.rpartition(b"_")[2], text))
            else:
                pax.append((b"SCHILY.xattr." + xn, xv))
        if pax:
            # No hdrcharset record: GNU tar 1.34 warns about the keyword, and both GNU tar and bsdtar take
            # the path and linkpath bytes as they are when they are not UTF-8.
            recs = b"".join(pax_record(k, v) for k, v in pax)
            self._write(self._header(b"././@PaxHeader", 0o644, _octal(0, 8), _octal(0, 8), _octal(len(recs), 12),
                                     _octal(0, 12), PAX_X, b"", _octal(0, 8), _octal(0, 8)))
            self._write(recs + b"\0" * (-len(recs) % BLOCK))
        for tf, value in longs:
            body = value + b"\0"
            self._write(self._header(b"././@LongLink", 0o644, _octal(0, 8), _octal(0, 8), _octal(len(body), 12),
                                     _octal(0, 12), tf, b"", _octal(0, 8), _octal(0, 8)))
            self._write(body + b"\0" * (-len(body) % BLOCK))
        self._write(self._header(name, mode, fields[b"uid"], fields[b"gid"], fields[b"size"], fields[b"mtime"],
                                 typeflag, linkname, devmaj, devmin, prefix))
        if sparse_block:
            self._write(sparse_block)

    def add_data(self, data: bytes) -> None:
        """Member data; call after add() with the total of all add_data calls equal to `size`."""
        self._write(data)

    def pad(self, size: int) -> None:
        if size % BLOCK:
            self._write(b"\0" * (-size % BLOCK))

    def close(self) -> None:
        self._write(b"\0" * (BLOCK * 2))

    @staticmethod
    def _header(name, mode, uid, gid, size, mtime, typeflag, linkname, devmaj, devmin, prefix=b"") -> bytes:
        h = bytearray(BLOCK)
        h[345:345 + len(prefix)] = prefix
        h[0:len(name)] = name
        h[100:108] = b"%07o\0" % (mode & 0o7777)
        h[108:116] = uid
        h[116:124] = gid
        h[124:136] = size
        h[136:148] = mtime
        h[148:156] = b" " * 8
        h[156:157] = typeflag
        h[157:157 + len(linkname)] = linkname
        h[257:263] = b"ustar\0"
        h[263:265] = b"00"
        h[329:337] = devmaj
        h[337:345] = devmin
        h[148:156] = b"%06o\0 " % sum(h)
        return bytes(h)


def _ustar_split(path: bytes) -> tuple[bytes, bytes] | None:
    """(prefix, name) for the ustar header fields (155 and 100 bytes), or None if the path does not fit."""
    if len(path) <= 100:
        return b"", path
    for i in range(min(len(path) - 1, 155), 0, -1):
        if path[i:i + 1] == b"/" and len(path) - i - 1 <= 100 and i > 0:
            return path[:i], path[i + 1:]
    return None


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False
