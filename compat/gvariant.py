"""GVariant serialization (normal form only), for the type subset OSTree uses.

Pure functions over bytes. Supported types: basic ``y b n q i u x t h d s o g``, ``v``, ``m<T>``,
``a<T>``, tuples ``(...)`` and dict entries ``{KV}``.

Python value mapping:
    y n q i u x t h -> int (h: signed 32-bit handle)      b -> bool       d -> float      s o g -> str
    ay -> bytes     a<T> -> list      a{KV} -> list of (k, v) pairs (order kept, duplicates allowed)
    (...) and {KV} -> tuple     m<T> -> None | value     v -> Variant(type, value)
    (a nested maybe's Just(Nothing) has no distinct Python value: decode rejects it)

Integers are little-endian here; OSTree's big-endian fields are byteswapped by objects.py.
``decode`` is strict: anything that is not the unique normal-form serialization of a value raises
GVariantError, so ``encode(t, decode(t, b)) == b`` for every accepted ``b``.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from .errors import GVariantError

__all__ = [
    "MAX_DEPTH",
    "Variant",
    "frame",
    "asv_get",
    "decode",
    "decode_asv",
    "encode",
    "encode_asv",
    "is_valid_type",
]

#: Maximum container nesting (types and values, variants included). GLib uses 128 too.
MAX_DEPTH = 128


class Variant(NamedTuple):
    """A value of type ``v``: a type string and a value of that type."""

    type: str
    value: Any


# ---------------------------------------------------------------------------------------------
# Type strings

class _Type:
    __slots__ = ("align", "children", "code", "depth", "fixed", "sig")

    def __init__(self, code: str, sig: str, children: tuple[_Type, ...], align: int,
                 fixed: int | None, depth: int) -> None:
        self.code = code
        self.sig = sig
        self.children = children
        self.align = align
        self.fixed = fixed
        self.depth = depth


_BASIC_FIXED = {"y": 1, "b": 1, "n": 2, "q": 2, "i": 4, "u": 4, "h": 4, "x": 8, "t": 8, "d": 8}
_BASIC = frozenset("ybnqiuhxtdsog")
_STRUCT_FMT = {"y": "B", "n": "h", "q": "H", "i": "i", "u": "I", "h": "i", "x": "q", "t": "Q", "d": "d"}
_INT_RANGE = {
    "y": (0, 0xFF), "n": (-0x8000, 0x7FFF), "q": (0, 0xFFFF), "i": (-0x80000000, 0x7FFFFFFF),
    "u": (0, 0xFFFFFFFF), "h": (-0x80000000, 0x7FFFFFFF), "x": (-(1 << 63), (1 << 63) - 1), "t": (0, (1 << 64) - 1),
}
_OFFSET_FMT = {1: "B", 2: "H", 4: "I", 8: "Q"}


def _align(n: int, a: int) -> int:
    return (n + a - 1) & -a


def _parse(s: str, i: int, depth: int) -> tuple[_Type, int]:
    if depth > MAX_DEPTH:
        raise GVariantError(f"type string nested deeper than {MAX_DEPTH}: {s[:80]!r}")
    if i >= len(s):
        raise GVariantError(f"incomplete type string {s[:80]!r}")
    c = s[i]
    if c in _BASIC_FIXED:
        n = _BASIC_FIXED[c]
        return _Type(c, c, (), n, n, 0), i + 1
    if c in "sog":
        return _Type(c, c, (), 1, None, 0), i + 1
    if c == "v":
        return _Type(c, c, (), 8, None, 1), i + 1
    if c in "am":
        child, j = _parse(s, i + 1, depth + 1)
        return _Type(c, s[i:j], (child,), child.align, None, child.depth + 1), j
    if c == "(":
        j = i + 1
        members = []
        while True:
            if j >= len(s):
                raise GVariantError(f"unterminated tuple in type string {s[:80]!r}")
            if s[j] == ")":
                break
            m, j = _parse(s, j, depth + 1)
            members.append(m)
        return _container(c, s[i:j + 1], tuple(members)), j + 1
    if c == "{":
        key, j = _parse(s, i + 1, depth + 1)
        if key.code not in _BASIC:
            raise GVariantError(f"dict entry key must be a basic type in {s[:80]!r}")
        val, j = _parse(s, j, depth + 1)
        if j >= len(s) or s[j] != "}":
            raise GVariantError(f"dict entry must have exactly two members in {s[:80]!r}")
        return _container(c, s[i:j + 1], (key, val)), j + 1
    raise GVariantError(f"unsupported character {c!r} in type string {s[:80]!r}")


def _container(code: str, sig: str, members: tuple[_Type, ...]) -> _Type:
    align = max((m.align for m in members), default=1)
    depth = max((m.depth for m in members), default=0) + 1
    if not members:
        return _Type(code, sig, members, 1, 1, depth)
    fixed: int | None = 0
    for m in members:
        if m.fixed is None:
            fixed = None
            break
        fixed = _align(fixed, m.align) + m.fixed
    if fixed is not None:
        fixed = _align(fixed, align)
    return _Type(code, sig, members, align, fixed, depth)


def _type(s: str) -> _Type:
    if not isinstance(s, str):
        raise GVariantError(f"type string must be str, not {type(s).__name__}")
    # Cache only short strings: variant types come from untrusted data and may be huge.
    return _type_cached(s) if len(s) <= 256 else _type_uncached(s)


@functools.lru_cache(maxsize=512)
def _type_cached(s: str) -> _Type:
    return _type_uncached(s)


def _type_uncached(s: str) -> _Type:
    t, j = _parse(s, 0, 0)
    if j != len(s):
        raise GVariantError(f"type string {s[:80]!r} is not a single complete type")
    return t


def is_valid_type(type_str: str) -> bool:
    """True if ``type_str`` is one complete type of the supported subset."""
    try:
        _type(type_str)
    except GVariantError:
        return False
    return True


def _is_object_path(s: str) -> bool:
    if s == "/":
        return True
    if not s.startswith("/") or s.endswith("/"):
        return False
    for part in s[1:].split("/"):
        if not part or not all(ch.isascii() and (ch.isalnum() or ch == "_") for ch in part):
            return False
    return True


def _is_signature(s: str) -> bool:
    i = 0
    try:
        while i < len(s):
            _, i = _parse(s, i, 0)
    except GVariantError:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Encoding

def _offset_size(body: int, n: int) -> int:
    if n == 0:
        return 0
    for w in (1, 2, 4):
        if body + n * w <= (1 << (8 * w)) - 1:
            return w
    return 8


def _append_offsets(out: bytearray, offsets: list[int]) -> None:
    w = _offset_size(len(out), len(offsets))
    if w:
        out += struct.pack(f"<{len(offsets)}{_OFFSET_FMT[w]}", *offsets)


def append_frame(out: bytearray, start: int, offsets) -> None:
    """Append to ``out`` the framing offsets of the container whose body is ``out[start:]``, in place (a
    large dirtree is not copied once per level of framing)."""
    w = _offset_size(len(out) - start, len(offsets))
    if w:
        out += struct.pack(f"<{len(offsets)}{_OFFSET_FMT[w]}", *offsets)


def frame(body: bytes | bytearray, offsets: list[int]) -> bytes:
    """``body`` followed by framing ``offsets`` at minimal width: the tail of a variable-size container.

    Building block for hand-written fast encoders of hot types (objects.py); offsets are given in the
    order they must appear (tuples: reverse member order).
    """
    out = bytearray(body)
    _append_offsets(out, offsets)
    return bytes(out)


def _enc(t: _Type, v: Any, depth: int) -> bytes:
    c = t.code
    if c in _INT_RANGE:
        if not isinstance(v, int):
            raise GVariantError(f"type {c!r} needs an int, got {type(v).__name__}")
        lo, hi = _INT_RANGE[c]
        if not lo <= v <= hi:
            raise GVariantError(f"value {v} out of range for type {c!r}")
        return struct.pack("<" + _STRUCT_FMT[c], v)
    if c == "b":
        if v not in (0, 1) or not isinstance(v, int):
            raise GVariantError(f"type 'b' needs a bool, got {v!r}")
        return b"\x01" if v else b"\x00"
    if c == "d":
        if not isinstance(v, (int, float)):
            raise GVariantError(f"type 'd' needs a float, got {type(v).__name__}")
        return struct.pack("<d", v)
    if c in "sog":
        if isinstance(v, str):
            try:
                raw = v.encode("utf-8")
            except UnicodeEncodeError as e:
                raise GVariantError(f"string is not encodable as UTF-8: {e}") from None
        elif c == "s" and isinstance(v, (bytes, bytearray, memoryview)):
            # UTF-8 bytes are taken as they are for 's' (saves a decode/encode round trip for file names).
            raw = bytes(v)
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                raise GVariantError("bytes for type 's' are not valid UTF-8") from None
        else:
            raise GVariantError(f"type {c!r} needs a str, got {type(v).__name__}")
        if b"\0" in raw:
            raise GVariantError(f"string for type {c!r} contains NUL")
        if c == "o" and not _is_object_path(v):
            raise GVariantError(f"invalid object path {v!r}")
        if c == "g" and not _is_signature(v):
            raise GVariantError(f"invalid signature {v!r}")
        return raw + b"\0"
    if depth >= MAX_DEPTH:
        raise GVariantError(f"value nested deeper than {MAX_DEPTH}")
    if c == "v":
        if not isinstance(v, tuple) or len(v) != 2 or not isinstance(v[0], str):
            raise GVariantError(f"type 'v' needs Variant(type, value), got {type(v).__name__}")
        ct = _type(v[0])
        if depth + 1 + ct.depth > MAX_DEPTH:
            raise GVariantError(f"value nested deeper than {MAX_DEPTH}")
        return _enc(ct, v[1], depth + 1) + b"\0" + v[0].encode("ascii")
    if c == "m":
        if v is None:
            return b""
        ct = t.children[0]
        data = _enc(ct, v, depth + 1)
        return data if ct.fixed is not None else data + b"\0"
    if c == "a":
        return _enc_array(t, v, depth)
    # tuple or dict entry
    if not isinstance(v, (tuple, list)) or len(v) != len(t.children):
        raise GVariantError(f"type {t.sig!r} needs a sequence of {len(t.children)} values, got {v!r:.80}")
    out = bytearray()
    offsets: list[int] = []
    last = len(t.children) - 1
    for i, (m, mv) in enumerate(zip(t.children, v, strict=True)):
        pad = _align(len(out), m.align) - len(out)
        if pad:
            out += bytes(pad)
        out += _enc(m, mv, depth + 1)
        if m.fixed is None and i != last:
            offsets.append(len(out))
    if t.fixed is not None:
        if not t.children:
            return b"\0"
        pad = t.fixed - len(out)
        if pad:
            out += bytes(pad)
        return bytes(out)
    offsets.reverse()
    _append_offsets(out, offsets)
    return bytes(out)


def _enc_array(t: _Type, v: Any, depth: int) -> bytes:
    ct = t.children[0]
    if ct.code == "y":
        if isinstance(v, (bytes, bytearray, memoryview)):
            return bytes(v)
        if isinstance(v, (list, tuple)):
            try:
                return bytes(v)
            except (TypeError, ValueError) as e:
                raise GVariantError(f"bad byte array: {e}") from None
        raise GVariantError(f"type 'ay' needs bytes, got {type(v).__name__}")
    if isinstance(v, Mapping):
        if ct.code != "{":
            raise GVariantError(f"a mapping is only valid for dictionary types, not {t.sig!r}")
        v = list(v.items())
    if isinstance(v, (str, bytes, bytearray, memoryview)) or not isinstance(v, Iterable):
        raise GVariantError(f"type {t.sig!r} needs a list, got {type(v).__name__}")
    items = list(v)
    if ct.fixed is not None:
        fmt = _STRUCT_FMT.get(ct.code)
        if fmt is not None and ct.code != "d":
            lo, hi = _INT_RANGE[ct.code]
            for x in items:
                if not isinstance(x, int) or not lo <= x <= hi:
                    raise GVariantError(f"value {x!r:.40} invalid for type {ct.code!r}")
            return struct.pack(f"<{len(items)}{fmt}", *items)
        return b"".join(_enc(ct, x, depth + 1) for x in items)
    out = bytearray()
    offsets = []
    for x in items:
        pad = _align(len(out), ct.align) - len(out)
        if pad:
            out += bytes(pad)
        out += _enc(ct, x, depth + 1)
        offsets.append(len(out))
    _append_offsets(out, offsets)
    return bytes(out)


def encode(type_str: str, value: Any) -> bytes:
    """Serialize ``value`` as GVariant type ``type_str`` in normal form."""
    t = _type(type_str)
    try:
        return _enc(t, value, 0)
    except GVariantError:
        raise
    except (TypeError, ValueError, OverflowError, struct.error) as e:
        raise GVariantError(f"cannot encode value as {type_str!r}: {e}") from None


# ---------------------------------------------------------------------------------------------
# Decoding

def _width(n: int) -> int:
    if n > 0xFFFFFFFF:
        return 8
    if n > 0xFFFF:
        return 4
    if n > 0xFF:
        return 2
    return 1


def _check_zero(buf: bytes, a: int, b: int, what: str) -> None:
    if a < b and buf[a:b].count(0) != b - a:
        raise GVariantError(f"non-zero padding in {what}")


def _dec(t: _Type, buf: bytes, start: int, end: int, depth: int) -> Any:
    c = t.code
    n = end - start
    if t.fixed is not None and n != t.fixed:
        raise GVariantError(f"value of fixed-size type {t.sig!r} has {n} bytes, expected {t.fixed}")
    if c in _STRUCT_FMT:
        return struct.unpack_from("<" + _STRUCT_FMT[c], buf, start)[0]
    if c == "b":
        b = buf[start]
        if b > 1:
            raise GVariantError(f"boolean byte is {b}, not 0 or 1")
        return b == 1
    if c in "sog":
        if n == 0 or buf[end - 1] != 0:
            raise GVariantError(f"string of type {c!r} is not NUL-terminated")
        if buf.find(b"\0", start, end - 1) >= 0:
            raise GVariantError(f"string of type {c!r} contains an interior NUL")
        try:
            s = buf[start:end - 1].decode("utf-8")
        except UnicodeDecodeError:
            raise GVariantError(f"string of type {c!r} is not valid UTF-8") from None
        # decoded data is never quoted in an error: it may come from a file the reader should not reveal
        if c == "o" and not _is_object_path(s):
            raise GVariantError("invalid object path")
        if c == "g" and not _is_signature(s):
            raise GVariantError("invalid signature")
        return s
    if depth >= MAX_DEPTH:
        raise GVariantError(f"value nested deeper than {MAX_DEPTH}")
    if c == "v":
        sep = buf.rfind(b"\0", start, end)
        if sep < 0:
            raise GVariantError("variant has no type string separator")
        raw_type = buf[sep + 1:end]
        if not raw_type.isascii():
            raise GVariantError("variant type string is not ASCII")
        try:
            ct = _type(raw_type.decode("ascii"))
        except GVariantError:
            raise GVariantError("invalid variant type string") from None
        if depth + 1 + ct.depth > MAX_DEPTH:
            raise GVariantError(f"value nested deeper than {MAX_DEPTH}")
        return Variant(ct.sig, _dec(ct, buf, start, sep, depth + 1))
    if c == "m":
        if n == 0:
            return None
        ct = t.children[0]
        if ct.fixed is not None:
            if n != ct.fixed:
                raise GVariantError(f"maybe of {ct.sig!r} has {n} bytes, expected {ct.fixed}")
            return _dec(ct, buf, start, end, depth + 1)
        if buf[end - 1] != 0:
            raise GVariantError(f"maybe of {ct.sig!r} lacks its trailing NUL")
        value = _dec(ct, buf, start, end - 1, depth + 1)
        if value is None:
            # Just(Nothing) of a nested maybe has no Python value distinct from Nothing.
            raise GVariantError(f"Just(Nothing) of {t.sig!r} is not representable")
        return value
    if c == "a":
        return _dec_array(t, buf, start, end, depth)
    return _dec_tuple(t, buf, start, end, depth)


def _dec_array(t: _Type, buf: bytes, start: int, end: int, depth: int) -> Any:
    ct = t.children[0]
    n = end - start
    if ct.code == "y":
        return bytes(buf[start:end])
    if ct.fixed is not None:
        size = ct.fixed
        if n % size:
            raise GVariantError(f"array of {ct.sig!r} has {n} bytes, not a multiple of {size}")
        count = n // size
        fmt = _STRUCT_FMT.get(ct.code)
        if fmt is not None:
            return list(struct.unpack_from(f"<{count}{fmt}", buf, start))
        return [_dec(ct, buf, p, p + size, depth + 1) for p in range(start, end, size)]
    if n == 0:
        return []
    w = _width(n)
    last_end = int.from_bytes(buf[end - w:end], "little")
    if last_end > n - w or (n - last_end) % w:
        raise GVariantError(f"bad framing offset {last_end} in array of {ct.sig!r} ({n} bytes)")
    count = (n - last_end) // w
    if _offset_size(last_end, count) != w:
        raise GVariantError(f"framing offsets of array of {ct.sig!r} are not minimal width")
    offsets = struct.unpack_from(f"<{count}{_OFFSET_FMT[w]}", buf, start + last_end)
    out = []
    prev = 0
    a = ct.align
    for off in offsets:
        s = _align(prev, a)
        if s > off or off > last_end:
            raise GVariantError(f"bad framing offset {off} in array of {ct.sig!r}")
        _check_zero(buf, start + prev, start + s, f"array of {ct.sig!r}")
        out.append(_dec(ct, buf, start + s, start + off, depth + 1))
        prev = off
    return out


def _dec_tuple(t: _Type, buf: bytes, start: int, end: int, depth: int) -> tuple:
    n = end - start
    w = _width(n)
    off_end = end
    pos = start
    n_off = 0
    out = []
    last = len(t.children) - 1
    for i, m in enumerate(t.children):
        p = start + _align(pos - start, m.align)
        if p > off_end:
            raise GVariantError(f"tuple {t.sig!r} member {i} starts past the end")
        _check_zero(buf, pos, p, f"tuple {t.sig!r}")
        if m.fixed is not None:
            e = p + m.fixed
        elif i == last:
            e = off_end
        else:
            if off_end - w < p:
                raise GVariantError(f"tuple {t.sig!r} has no room for its framing offsets")
            off_end -= w
            e = start + int.from_bytes(buf[off_end:off_end + w], "little")
            n_off += 1
        if e < p or e > off_end:
            raise GVariantError(f"bad framing offset for member {i} of tuple {t.sig!r}")
        out.append(_dec(m, buf, p, e, depth + 1))
        pos = e
    if t.fixed is not None:
        _check_zero(buf, pos, end, f"tuple {t.sig!r}")
    else:
        if pos != off_end:
            raise GVariantError(f"tuple {t.sig!r} has {off_end - pos} unexpected bytes")
        if n_off and _offset_size(off_end - start, n_off) != w:
            raise GVariantError(f"framing offsets of tuple {t.sig!r} are not minimal width")
    return tuple(out)


def decode(type_str: str, data: bytes | bytearray | memoryview) -> Any:
    """Parse ``data`` as a normal-form GVariant of type ``type_str``; raise GVariantError otherwise."""
    t = _type(type_str)
    buf = bytes(data)
    try:
        return _dec(t, buf, 0, len(buf), 0)
    except GVariantError:
        raise
    except (IndexError, ValueError, struct.error, OverflowError, RecursionError) as e:
        # Defensive: the checks above should make these unreachable.
        raise GVariantError(f"malformed {type_str!r} value: {e}") from None


# ---------------------------------------------------------------------------------------------
# a{sv} helpers

def encode_asv(items: Iterable[tuple[str, Variant]] | Mapping[str, Variant]) -> bytes:
    """Serialize an ``a{sv}`` from (key, Variant) pairs, keeping their order."""
    if isinstance(items, Mapping):
        items = items.items()
    return encode("a{sv}", [(k, Variant(*v)) for k, v in items])


def decode_asv(data: bytes) -> list[tuple[str, Variant]]:
    """Parse an ``a{sv}`` into an ordered list of (key, Variant)."""
    return decode("a{sv}", data)


def asv_get(items: Iterable[tuple[str, Variant]], key: str, default: Any = None) -> Any:
    """The Variant of the first entry named ``key`` in a decoded ``a{sv}``, else ``default``."""
    for k, v in items:
        if k == key:
            return v
    return default
