"""Member names of a Linux initramfs: concatenated newc cpio archives, each plain or compressed.

dracut writes an uncompressed early cpio (microcode) followed by the compressed main archive;
initramfs-tools does the same. Used to check that an initramfs carries ostree-prepare-root before a tree is
made bootable. The image comes from the tree being made bootable, so it is read as hostile input: streamed
(never held whole), every header checked, and bounded by the limits below, each refusal naming its limit.
"""

from __future__ import annotations

import bz2
import io
import lzma
import re
import zlib
from collections.abc import Callable, Iterable
from typing import BinaryIO, Protocol

from .errors import BadInput

#: Longest member name, its NUL included: PATH_MAX. The kernel skips a member with a longer name
#: (init/initramfs.c); we refuse the image, so a header cannot make us allocate more than this.
MAX_NAME_SIZE = 4096
#: Most bytes decompressed from one image. The kernel unpacks an initramfs into RAM; real ones hold some
#: hundreds of MiB at most (dracut with all firmware), so 1 GiB leaves room and stops decompression bombs.
MAX_UNPACKED = 1 << 30
#: Most memory a decoder may take: the xz/lzma dictionary and the zstd window. dracut and initramfs-tools
#: use a few MiB (xz --lzma2=dict=1MiB, zstd -15 has an 8 MiB window); `xz -9` needs 65 MiB.
MAX_DECODER_MEMORY = 128 << 20

_NEWC = (b"070701", b"070702")
_TRAILER = b"TRAILER!!!"
_HEX8 = re.compile(rb"[0-9A-Fa-f]{8}")
_CHUNK = 1 << 16


class Reader(Protocol):
    def read(self, n: int, /) -> bytes: ...


class _Input:
    """A reader with a pushback buffer (to look at magic numbers ahead)."""

    def __init__(self, f: Reader):
        self.f = f
        self.buf = b""
        self.off = 0  # bytes of buf already handed out

    @property
    def buffered(self) -> int:
        return len(self.buf) - self.off

    def read(self, n: int) -> bytes:
        if self.off < len(self.buf):
            out = self.buf[self.off:self.off + n]
            self.off += len(out)
            return out
        return self.f.read(n)

    def peek(self, n: int) -> bytes:
        self.buf, self.off = self.buf[self.off:], 0
        while len(self.buf) < n:
            more = self.f.read(n - len(self.buf))
            if not more:
                break
            self.buf += more
        return self.buf[:n]

    def unread(self, data: bytes) -> None:
        self.buf, self.off = data + self.buf[self.off:], 0


class _Chunks:
    """A reader over an iterable of byte strings (a git blob streamed in chunks)."""

    def __init__(self, chunks: Iterable[bytes]):
        self.it = iter(chunks)
        self.buf = b""

    def read(self, n: int) -> bytes:
        while not self.buf:
            nxt = next(self.it, None)
            if nxt is None:
                return b""
            self.buf = nxt
        out, self.buf = self.buf[:n], self.buf[n:]
        return out


class _Inflate:
    """Decompresses one stream (and the streams concatenated after it with the same magic number) from
    `src`, never producing more than asked for at a time nor more than MAX_UNPACKED in all."""

    def __init__(self, src: _Input, magic: bytes, make: Callable[[], object]):
        self.src, self.magic, self.make = src, magic, make
        self.d = make()
        self.total = 0

    def read(self, n: int) -> bytes:
        while True:
            if self.d.eof:
                self.src.unread(self.d.unused_data)
                if self.src.peek(len(self.magic)) != self.magic:
                    return b""  # what follows is not another stream of this kind: the archive ends here
                self.d = self.make()
            data = b""
            if self.d.needs_input:
                data = self.src.read(_CHUNK)
                if not data:
                    raise BadInput("initramfs: compressed stream cut short")
            out = self.d.decompress(data, n)
            if out:
                return self._count(out)

    def _count(self, out: bytes) -> bytes:
        self.total += len(out)
        if self.total > MAX_UNPACKED:
            raise BadInput(f"initramfs: decompresses to more than {MAX_UNPACKED} bytes (MAX_UNPACKED)")
        return out


class _Counted:
    """Counts the bytes a reader produces against MAX_UNPACKED: the image itself (a git blob of a GiB of
    zeros packs into a few MB) and, separately, what a decompressor makes of it."""

    def __init__(self, f: Reader, what: str):
        self.f = f
        self.what = what
        self.total = 0

    def read(self, n: int) -> bytes:
        out = self.f.read(n)
        self.total += len(out)
        if self.total > MAX_UNPACKED:
            raise BadInput(f"initramfs: {self.what} more than {MAX_UNPACKED} bytes (MAX_UNPACKED)")
        return out


class _GzipMember:
    """zlib's gzip decoder with the interface of lzma/bz2 decompressors (max_length, needs_input)."""

    def __init__(self):
        self.z = zlib.decompressobj(31)
        self.needs_input = True

    @property
    def eof(self) -> bool:
        return self.z.eof

    @property
    def unused_data(self) -> bytes:
        return self.z.unused_data

    def decompress(self, data: bytes, n: int) -> bytes:
        out = self.z.decompress(self.z.unconsumed_tail + data, n)
        self.needs_input = not self.z.unconsumed_tail
        return out


def _open_compressed(src: _Input, head: bytes) -> tuple[str, Reader] | None:
    if head.startswith(b"\x1f\x8b"):
        return "gzip", _Inflate(src, b"\x1f\x8b", _GzipMember)
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz", _Inflate(src, b"\xfd7zXZ\x00", lambda: lzma.LZMADecompressor(
            lzma.FORMAT_XZ, memlimit=MAX_DECODER_MEMORY))
    if head.startswith(b"\x5d\x00\x00"):
        return "lzma", _Inflate(src, b"\x5d\x00\x00", lambda: lzma.LZMADecompressor(
            lzma.FORMAT_ALONE, memlimit=MAX_DECODER_MEMORY))
    if head.startswith(b"BZh"):
        return "bzip2", _Inflate(src, b"BZh", bz2.BZ2Decompressor)
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        import zstandard
        d = zstandard.ZstdDecompressor(max_window_size=MAX_DECODER_MEMORY)
        return "zstd", _Counted(d.stream_reader(src, read_size=_CHUNK, read_across_frames=True), "decompresses to")
    return None


def _read_exact(f: Reader, n: int, what: str) -> bytes:
    parts = []
    left = n
    while left:
        chunk = f.read(min(left, 1 << 20))
        if not chunk:
            raise BadInput(f"initramfs: cpio archive cut short in {what}")
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def _skip(f: Reader, n: int) -> None:
    while n > 0:
        chunk = f.read(min(n, 1 << 20))
        if not chunk:
            raise BadInput("initramfs: cpio member cut short")
        n -= len(chunk)


def _cpio_names(f: Reader, visit: Callable[[bytes], None], first: bytes = b"") -> None:
    """Visit the member names of one newc cpio archive, up to its trailer."""
    while True:
        hdr = first + _read_exact(f, 110 - len(first), "a header")
        first = b""
        if hdr[:6] not in _NEWC:
            raise BadInput("initramfs: not a newc cpio archive (bad magic in a member header)")
        fields = [hdr[i:i + 8] for i in range(6, 110, 8)]
        if not all(_HEX8.fullmatch(x) for x in fields):
            raise BadInput("initramfs: malformed cpio header (a field is not 8 hex digits)")
        filesize = int(fields[6], 16)
        namesize = int(fields[11], 16)
        if not 0 < namesize <= MAX_NAME_SIZE:
            raise BadInput(f"initramfs: cpio member name of {namesize} bytes, outside 1..{MAX_NAME_SIZE} "
                           "(MAX_NAME_SIZE, PATH_MAX)")
        name_pad = (4 - (110 + namesize) % 4) % 4
        raw = _read_exact(f, namesize + name_pad, "a member name")
        if raw[namesize - 1] != 0:
            raise BadInput("initramfs: malformed cpio header (member name not NUL-terminated)")
        name = raw[:namesize - 1]
        if name == _TRAILER:
            return
        _skip(f, filesize + (4 - filesize % 4) % 4)
        visit(_normal(name))


def scan(data: bytes | Reader | Iterable[bytes], visit: Callable[[bytes], None]) -> None:
    """Call `visit` with every member path (no leading ./ or /) of every archive in the initramfs.

    `data` is the whole image, a reader (`read(n)`), or an iterable of chunks. Raises BadInput."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = io.BytesIO(data)
    elif not hasattr(data, "read"):
        data = _Chunks(data)
    raw = _Counted(data, "the image holds")
    src = _Input(raw)
    while True:
        if not _skip_zeros(src):
            return
        head = src.peek(8)
        pos = raw.total - src.buffered
        if head[:6] in _NEWC:
            _cpio_names(src, visit)
            continue
        if head[:4] == b"0707" or head[:2] in (b"\xc7\x71", b"\x71\xc7"):
            raise BadInput(f"initramfs: a cpio archive at byte {pos} is not in the newc format the kernel reads")
        opened = _open_compressed(src, head)
        if opened is None:
            raise BadInput(f"initramfs: unknown compression at byte {pos} (magic {head[:4].hex()})")
        kind, dec = opened
        try:
            dec = _Input(dec)
            while _skip_zeros(dec):  # a compressed stream may itself hold several archives
                _cpio_names(dec, visit)
        except (OSError, EOFError, lzma.LZMAError, zlib.error) as e:
            raise BadInput(f"initramfs: cannot decompress ({kind}): {_why(e)}") from None
        except BadInput:
            raise
        except Exception as e:  # zstandard.ZstdError has no common base with the others
            import zstandard
            if isinstance(e, zstandard.ZstdError):
                raise BadInput(f"initramfs: cannot decompress ({kind}): {_why(e)}") from None
            raise
        return  # the kernel stops at the end of a compressed archive as well in practice


def _skip_zeros(src: _Input) -> bool:
    """Skip the zero padding between archives a block at a time (a byte at a time, 64 MiB of zeros compressed
    to 65 KB cost a minute of CPU); False at the end of the input."""
    while True:
        block = src.peek(_CHUNK)
        rest = block.lstrip(b"\0")
        src.read(len(block) - len(rest))
        if rest:
            return True
        if not block:
            return False


def _why(e: Exception) -> str:
    msg = str(e)
    if "memory" in msg.lower():
        return f"{msg} (its decoder needs more than MAX_DECODER_MEMORY, {MAX_DECODER_MEMORY} bytes)"
    return msg


def member_names(data: bytes | BinaryIO | Iterable[bytes]) -> set[bytes]:
    """Every member path (no leading ./ or /) of every archive in the initramfs."""
    names: set[bytes] = set()
    scan(data, names.add)
    return names


def has_member(data: bytes | BinaryIO | Iterable[bytes], path: bytes) -> bool:
    """Whether the initramfs holds `path`; memory stays constant whatever the number of members."""
    found = []

    def visit(name: bytes) -> None:
        if name == path:
            found.append(True)

    scan(data, visit)
    return bool(found)


def _normal(name: bytes) -> bytes:
    while name.startswith(b"./"):
        name = name[2:]
    return name.lstrip(b"/")
