"""Sparse files: a map of data segments over a logical size. Pure functions, no I/O.

A sparse file is stored as its data segments concatenated in one blob, plus a map in its side-table row
(docs/format.md, 4.6). Holes are never materialised except where a consumer needs the logical bytes
(an OSTree export, a plain tar member), and then they are streamed, never allocated.
"""

from __future__ import annotations

from typing import Iterable, Iterator, NamedTuple

MAX_SEGMENTS = 65536          # data segments in one file's map
MAX_LOGICAL = 1 << 44         # 16 TiB: ext4's largest file with 4 KiB blocks
MAX_EXPANDED_HOLES = 1 << 36  # 64 GiB: bytes of holes one plain tar (checkout --tar without --sparse) writes
                              # out as zeros, over all its members
_ZEROS = bytes(1 << 20)


class SparseMap(NamedTuple):
    """`size`: logical size; `segments`: (offset, length) of each data segment, canonical (see canonical())."""

    size: int
    segments: tuple[tuple[int, int], ...]

    @property
    def data_size(self) -> int:
        return sum(n for _, n in self.segments)


def canonical(size: int, segments: Iterable[tuple[int, int]], what: str = "sparse map") -> SparseMap | None:
    """Validate a map as it arrives (tar header, SEEK_DATA walk) and put it in canonical form: zero-length
    segments dropped, touching segments merged. Returns None when the file has no hole at all (then it is
    an ordinary file). Raises ValueError naming the fault for unsorted, overlapping, out-of-range maps."""
    if not 0 <= size <= MAX_LOGICAL:
        raise ValueError(f"{what}: logical size {size} exceeds the limit of {MAX_LOGICAL} bytes")
    out: list[list[int]] = []
    end = 0
    count = 0
    for off, n in segments:
        count += 1
        if count > 4 * MAX_SEGMENTS:
            raise ValueError(f"{what}: more than {MAX_SEGMENTS} segments")
        if off < 0 or n < 0:
            raise ValueError(f"{what}: negative offset or length")
        if off < end:
            raise ValueError(f"{what}: segments overlap or are not sorted (offset {off} < {end})")
        if off + n > size:
            raise ValueError(f"{what}: segment {off}+{n} ends beyond the logical size {size}")
        if n == 0:
            continue
        if out and out[-1][0] + out[-1][1] == off:
            out[-1][1] += n
        else:
            out.append([off, n])
        end = off + n
    if len(out) > MAX_SEGMENTS:
        raise ValueError(f"{what}: more than {MAX_SEGMENTS} segments")
    segs = tuple((o, n) for o, n in out)
    if size == 0 or segs == ((0, size),):
        return None
    return SparseMap(size, segs)


def encode(m: SparseMap) -> bytes:
    """`SIZE` or `SIZE:OFF+LEN,OFF+LEN,...` in decimal (the side-table `s=` value)."""
    if not m.segments:
        return b"%d" % m.size
    return b"%d:" % m.size + b",".join(b"%d+%d" % s for s in m.segments)


def decode(tok: bytes) -> SparseMap:
    """Inverse of encode(); refuses anything encode() would not write (ValueError)."""
    size_s, colon, rest = tok.partition(b":")
    segs = []
    if colon:
        for part in rest.split(b","):
            o, plus, n = part.partition(b"+")
            if not plus:
                raise ValueError("sparse segment without '+'")
            segs.append((_nat(o), _nat(n)))
    m = canonical(_nat(size_s), segs)
    if m is None or encode(m) != tok:
        raise ValueError("sparse map is not in canonical form")
    return m


def _nat(b: bytes) -> int:
    if not b.isdigit() or (len(b) > 1 and b[0:1] == b"0") or len(b) > 20:
        raise ValueError(f"bad number {b[:24]!r} in sparse map")
    return int(b)


def logical_chunks(m: SparseMap, data: Iterable[bytes], chunk: int = 1 << 20, hole=None) -> Iterator[bytes]:
    """The file's logical bytes: data segments from `data` (their concatenation) with the holes as zeros,
    or, with `hole` given, as one `hole(length)` item per hole (a writer that knows them skips the bytes).
    Streams; memory stays at one chunk whatever the logical size."""
    it = iter(data)
    buf = memoryview(b"")
    pos = 0

    def take(n: int) -> Iterator[bytes]:
        nonlocal buf
        while n:
            if not buf:
                nxt = next(it, None)
                if nxt is None:
                    raise ValueError("sparse file data is shorter than its map")
                buf = memoryview(nxt)
            piece = buf[:n]
            buf = buf[len(piece):]
            n -= len(piece)
            yield bytes(piece)

    def gap(n: int) -> Iterator:
        if hole is None:
            yield from zeros(n, chunk)
        elif n:
            yield hole(n)

    for off, n in m.segments:
        yield from gap(off - pos)
        yield from take(n)
        pos = off + n
    yield from gap(m.size - pos)
    if buf or next(it, b"") != b"":
        raise ValueError("sparse file data is longer than its map")


def zeros(n: int, chunk: int = 1 << 20) -> Iterator[bytes]:
    full = _ZEROS[:chunk] if chunk <= len(_ZEROS) else bytes(chunk)
    while n > 0:
        k = min(n, chunk)
        yield full if k == chunk else full[:k]
        n -= k


def coarsen(segments: list[tuple[int, int]], limit: int = MAX_SEGMENTS) -> list[tuple[int, int]]:
    """Merge segments across the smallest holes until at most `limit` remain (a directory import of a
    file with more holes than the map allows keeps the small holes as zeros)."""
    if len(segments) <= limit:
        return segments
    gaps = sorted(segments[i + 1][0] - (segments[i][0] + segments[i][1]) for i in range(len(segments) - 1))
    cut = gaps[len(segments) - limit - 1]
    out = [list(segments[0])]
    merged = 0
    for off, n in segments[1:]:
        gap = off - (out[-1][0] + out[-1][1])
        if gap <= cut and merged < len(segments) - limit:
            out[-1][1] = off + n - out[-1][0]
            merged += 1
        else:
            out.append([off, n])
    return [(o, n) for o, n in out]


def bounded_holes(entries: Iterable, limit: int = MAX_EXPANDED_HOLES) -> Iterator:
    """Pass entries through, refusing (UnsupportedEntry, before it is written) the sparse file whose holes
    bring the total a plain tar would spell out as zeros beyond `limit`: a 4 KB tar may declare a 16 TiB
    file, which a checkout to a directory writes as a hole but a plain tar member must write byte by byte.
    With --sparse the holes stay holes (GNU sparse 1.0 members) and nothing is bounded here."""
    from .errors import UnsupportedEntry
    from .names import display

    total = 0
    for e in entries:
        if e.sparse is not None and e.hardlink is None:
            total += e.sparse.size - e.sparse.data_size
            if total > limit:
                raise UnsupportedEntry(
                    f"{display(e.path)}: a sparse file of {e.sparse.size} bytes; a plain tar would spell out "
                    f"more than {limit} bytes of holes as zeros (MAX_EXPANDED_HOLES): use --sparse")
        yield e
