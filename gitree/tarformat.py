"""POSIX tar (ustar + pax, GNU long names) as a pure codec over a `read(n)` / `write(b)` stream.

Names, link targets and xattr values stay bytes from end to end.
"""

from __future__ import annotations

import base64
import stat
import urllib.parse
from dataclasses import dataclass, field

from .errors import BadInput, UnsupportedEntry

BLOCK = 512

REGTYPE, AREGTYPE, LNKTYPE, SYMTYPE, CHRTYPE, BLKTYPE, DIRTYPE, FIFOTYPE, CONTTYPE = (
    b"0", b"\0", b"1", b"2", b"3", b"4", b"5", b"6", b"7")
PAX_X, PAX_G, GNU_LONGNAME, GNU_LONGLINK = b"x", b"g", b"L", b"K"
_TYPE_IFMT = {REGTYPE: stat.S_IFREG, AREGTYPE: stat.S_IFREG, CONTTYPE: stat.S_IFREG, LNKTYPE: stat.S_IFREG,
              SYMTYPE: stat.S_IFLNK, CHRTYPE: stat.S_IFCHR, BLKTYPE: stat.S_IFBLK, DIRTYPE: stat.S_IFDIR,
              FIFOTYPE: stat.S_IFIFO}
_MAX_META = 16 << 20  # cap for pax / GNU long-name payloads held in memory


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

    @property
    def is_hardlink(self) -> bool:
        return self.typeflag == LNKTYPE

    @property
    def ifmt(self) -> int:
        return _TYPE_IFMT[self.typeflag]


def _parse_number(field_: bytes, what: str, offset: int) -> int:
    if field_ and field_[0] & 0x80:  # base-256 (GNU/star)
        n = int.from_bytes(field_, "big", signed=False) & ~(0x80 << (8 * (len(field_) - 1)))
        if field_[0] & 0x40:
            raise BadInput(f"tar header at byte {offset}: negative {what}")
        return n
    s = field_.split(b"\0", 1)[0].strip(b" ")
    if not s:
        return 0
    try:
        return int(s, 8)
    except ValueError:
        raise BadInput(f"tar header at byte {offset}: bad {what} field {field_!r}") from None


def _cstr(b: bytes) -> bytes:
    return b.split(b"\0", 1)[0]


def parse_pax(data: bytes, offset: int) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
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
        out[key] = value
        pos += length
    return out


def pax_record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    n = len(body) + 1
    while len(b"%d" % n) + len(body) != n:
        n = len(b"%d" % n) + len(body)
    return b"%d" % n + body


class TarReader:
    """Iterate members of a tar stream. Each member's data must be read (or is skipped) before the next."""

    def __init__(self, read):
        self._read = read
        self.pos = 0
        self._remaining = 0
        self._pad = 0
        self._global: dict[bytes, bytes] = {}

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
            raise BadInput(f"tar header at byte {offset}: extended header of {size} bytes is too large")
        data = self._read_exact(size)
        pad = -size % BLOCK
        if pad:
            self._read_exact(pad)
        return data

    def __iter__(self):
        return self

    def __next__(self) -> TarMember:
        self._skip_rest()
        pax: dict[bytes, bytes] = {}
        longname = longlink = None
        while True:
            offset = self.pos
            buf = self._read(BLOCK)
            if not buf:
                raise BadInput(f"tar archive truncated at byte {offset}: no end-of-archive marker")
            buf = self._read_exact(BLOCK, buf, "partial header")
            if buf == b"\0" * BLOCK:
                if pax or longname is not None or longlink is not None:
                    raise BadInput(f"tar archive at byte {offset}: extended header without a member")
                raise StopIteration
            hdr = self._parse_header(buf, offset)
            tf = hdr.typeflag
            if tf in (PAX_X, PAX_G):
                recs = parse_pax(self._read_meta(hdr.size, offset), offset)
                if tf == PAX_G:
                    self._global.update(recs)
                else:
                    pax.update(recs)
                continue
            if tf in (GNU_LONGNAME, GNU_LONGLINK):
                data = _cstr(self._read_meta(hdr.size, offset))
                if tf == GNU_LONGNAME:
                    longname = data
                else:
                    longlink = data
                continue
            if tf == b"V":  # volume label
                self._remaining, self._pad = hdr.size, -hdr.size % BLOCK
                self._skip_rest()
                continue
            if tf not in _TYPE_IFMT:
                raise UnsupportedEntry(
                    f"tar member {hdr.path.decode('utf-8', 'backslashreplace')!r} at byte {offset}: "
                    f"unsupported type {tf.decode('latin-1')!r}")
            merged = dict(self._global)
            merged.update(pax)
            self._apply(hdr, merged, longname, longlink, offset)
            if tf in (LNKTYPE, SYMTYPE, CHRTYPE, BLKTYPE, DIRTYPE, FIFOTYPE):
                data_size = hdr.size if tf == LNKTYPE else 0
                if tf != LNKTYPE and hdr.size:
                    # some writers give sizes to non-files; the data is still in the stream
                    data_size = hdr.size
                self._remaining, self._pad = data_size, -data_size % BLOCK
                if tf != LNKTYPE:
                    self._skip_rest()
                    hdr.size = 0
            else:
                self._remaining, self._pad = hdr.size, -hdr.size % BLOCK
            return hdr

    @staticmethod
    def _parse_header(buf: bytes, offset: int) -> TarMember:
        chk = _parse_number(buf[148:156], "checksum", offset)
        blank = buf[:148] + b" " * 8 + buf[156:]
        if chk != sum(blank) and chk != sum(b - 256 if b > 127 else b for b in blank):
            raise BadInput(f"tar header at byte {offset}: checksum mismatch (not a tar archive, or corrupt)")
        magic = buf[257:263]
        name = _cstr(buf[0:100])
        if magic == b"ustar\0":  # POSIX: prefix field
            prefix = _cstr(buf[345:500])
            if prefix:
                name = prefix + b"/" + name
        typeflag = buf[156:157]
        return TarMember(
            path=name, typeflag=typeflag,
            mode=_parse_number(buf[100:108], "mode", offset) & 0o7777,
            uid=_parse_number(buf[108:116], "uid", offset),
            gid=_parse_number(buf[116:124], "gid", offset),
            size=_parse_number(buf[124:136], "size", offset),
            mtime_ns=_parse_number(buf[136:148], "mtime", offset) * 1_000_000_000,
            linkname=_cstr(buf[157:257]),
            devmajor=_parse_number(buf[329:337], "devmajor", offset) if magic.startswith(b"ustar") else 0,
            devminor=_parse_number(buf[337:345], "devminor", offset) if magic.startswith(b"ustar") else 0,
            offset=offset,
        )

    @staticmethod
    def _apply(hdr: TarMember, pax: dict, longname, longlink, offset: int) -> None:
        if longname is not None:
            hdr.path = longname
        if longlink is not None:
            hdr.linkname = longlink
        if not pax:
            return
        try:
            for key, value in pax.items():
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
                    sec, _, frac = value.partition(b".")
                    neg = sec.startswith(b"-")
                    ns = abs(int(sec)) * 1_000_000_000 + int((frac + b"000000000")[:9] or b"0")
                    hdr.mtime_ns = -ns if neg else ns
                elif key == b"SCHILY.devmajor":
                    hdr.devmajor = int(value)
                elif key == b"SCHILY.devminor":
                    hdr.devminor = int(value)
                elif key.startswith(b"SCHILY.xattr."):
                    hdr.xattrs.append((key[len(b"SCHILY.xattr."):], value))
                elif key.startswith(b"LIBARCHIVE.xattr."):
                    name = urllib.parse.unquote_to_bytes(key[len(b"LIBARCHIVE.xattr."):])
                    if not any(n == name for n, _ in hdr.xattrs):
                        hdr.xattrs.append((name, base64.b64decode(value + b"=" * (-len(value) % 4))))
                elif key.startswith(b"GNU.sparse."):
                    raise UnsupportedEntry(
                        f"tar member at byte {offset}: GNU sparse files are not supported")
        except ValueError:
            raise BadInput(f"tar pax header at byte {offset}: bad numeric value") from None
        if hdr.size < 0 or hdr.uid < 0 or hdr.gid < 0:
            raise BadInput(f"tar pax header at byte {offset}: negative value")


def _octal(n: int, width: int) -> bytes | None:
    s = b"%0*o" % (width - 1, n)
    return s + b"\0" if len(s) < width else None


class TarWriter:
    """Write POSIX pax tar members. Bytes are exact: no charset conversion."""

    def __init__(self, write):
        self._write = write

    def add(self, path: bytes, ifmt: int, mode: int, uid: int, gid: int, *, size: int = 0,
            linkname: bytes = b"", hardlink: bool = False, rdev: tuple[int, int] = (0, 0),
            mtime_ns: int = 0, xattrs=()) -> None:
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
        if len(name) > 100 or not name.isascii():
            pax.append((b"path", name))
            name = name[:100] if name.isascii() else b"@PaxPath"
        if len(linkname) > 100 or not linkname.isascii():
            pax.append((b"linkpath", linkname))
            linkname = b"@PaxLink"
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
            pax.append((b"SCHILY.xattr." + xn, xv))
        if pax:
            binary = any(k in (b"path", b"linkpath") and not _is_utf8(v) for k, v in pax)
            recs = b"".join(pax_record(k, v) for k, v in
                            ([(b"hdrcharset", b"BINARY")] if binary else []) + pax)
            self._write(self._header(b"././@PaxHeader", 0o644, _octal(0, 8), _octal(0, 8), _octal(len(recs), 12),
                                     _octal(0, 12), PAX_X, b"", _octal(0, 8), _octal(0, 8)))
            self._write(recs + b"\0" * (-len(recs) % BLOCK))
        self._write(self._header(name, mode, fields[b"uid"], fields[b"gid"], fields[b"size"], fields[b"mtime"],
                                 typeflag, linkname, devmaj, devmin))

    def add_data(self, data: bytes) -> None:
        """Member data; call after add() with the total of all add_data calls equal to `size`."""
        self._write(data)

    def pad(self, size: int) -> None:
        if size % BLOCK:
            self._write(b"\0" * (-size % BLOCK))

    def close(self) -> None:
        self._write(b"\0" * (BLOCK * 2))

    @staticmethod
    def _header(name, mode, uid, gid, size, mtime, typeflag, linkname, devmaj, devmin) -> bytes:
        h = bytearray(BLOCK)
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


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False
