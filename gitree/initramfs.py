"""List the member names of a Linux initramfs: concatenated newc cpio archives, each plain or compressed.

dracut writes an uncompressed early cpio (microcode) followed by the compressed main archive;
initramfs-tools does the same. Pure functions over bytes; used to check that an initramfs carries
ostree-prepare-root before a tree is made bootable.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
from typing import BinaryIO, Iterator

from .errors import BadInput

_NEWC = (b"070701", b"070702")
_TRAILER = b"TRAILER!!!"


def _decompressor(head: bytes, stream: BinaryIO) -> BinaryIO | None:
    if head.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=stream)
    if head.startswith(b"\xfd7zXZ\x00") or head.startswith(b"\x5d\x00\x00"):
        return lzma.LZMAFile(stream)
    if head.startswith(b"BZh"):
        return bz2.BZ2File(stream)
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        import zstandard
        return zstandard.ZstdDecompressor().stream_reader(stream, read_across_frames=True)
    return None


def _read_exact(f: BinaryIO, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = f.read(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return buf


def _skip(f: BinaryIO, n: int) -> None:
    while n > 0:
        chunk = f.read(min(n, 1 << 20))
        if not chunk:
            raise BadInput("initramfs: cpio member cut short")
        n -= len(chunk)


def _cpio_names(f: BinaryIO, consumed: list[int]) -> Iterator[bytes]:
    """Names of one cpio archive up to its trailer; consumed[0] counts bytes read."""
    while True:
        hdr = _read_exact(f, 110)
        if len(hdr) < 110 or hdr[:6] not in _NEWC:
            raise BadInput("initramfs: not a newc cpio archive")
        try:
            filesize = int(hdr[54:62], 16)
            namesize = int(hdr[94:102], 16)
        except ValueError:
            raise BadInput("initramfs: malformed cpio header") from None
        name_pad = (4 - (110 + namesize) % 4) % 4
        name = _read_exact(f, namesize + name_pad)[:namesize].rstrip(b"\0")
        data_pad = (4 - filesize % 4) % 4
        consumed[0] += 110 + namesize + name_pad + filesize + data_pad
        if name == _TRAILER:
            return
        _skip(f, filesize + data_pad)
        yield name


def member_names(data: bytes) -> set[bytes]:
    """Every member path (no leading ./ or /) of every archive in the initramfs."""
    names: set[bytes] = set()
    pos = 0
    while pos < len(data):
        while pos < len(data) and data[pos] == 0:  # padding between archives
            pos += 1
        if pos >= len(data):
            break
        head = data[pos:pos + 8]
        if head[:6] in _NEWC:
            consumed = [0]
            f = io.BytesIO(data[pos:])
            for n in _cpio_names(f, consumed):
                names.add(_normal(n))
            pos += consumed[0]
            continue
        dec = _decompressor(head, io.BytesIO(data[pos:]))
        if dec is None:
            raise BadInput(f"initramfs: unknown compression at byte {pos} (magic {head[:4].hex()})")
        try:
            while True:  # a compressed stream may itself hold several archives
                first = dec.read(1)
                while first == b"\0":
                    first = dec.read(1)
                if not first:
                    break
                f = _Prefixed(first, dec)
                for n in _cpio_names(f, [0]):
                    names.add(_normal(n))
        except (OSError, EOFError, lzma.LZMAError) as e:
            raise BadInput(f"initramfs: cannot decompress: {e}") from None
        except Exception as e:  # zstandard.ZstdError has no common base with the others
            if type(e).__module__.startswith("zstd"):
                raise BadInput(f"initramfs: cannot decompress: {e}") from None
            raise
        break  # the kernel stops at the end of a compressed archive as well in practice
    return names


class _Prefixed:
    def __init__(self, first: bytes, f: BinaryIO):
        self.first, self.f = first, f

    def read(self, n: int) -> bytes:
        if self.first:
            out, self.first = self.first, b""
            return out + (self.f.read(n - 1) if n > 1 else b"")
        return self.f.read(n)


def _normal(name: bytes) -> bytes:
    while name.startswith(b"./"):
        name = name[2:]
    return name.lstrip(b"/")
