"""The `ostree-meta` blob: OSTree commit metadata a gitree commit carries (docs/format.md section 6.2).

    gitree-ostree-meta 1
    KEY TYPE VALUE
    ...

One line per key, in the order the keys go into the OSTree commit's metadata (the order changes the
commit checksum, so it is kept, not sorted). TYPE is `s` (string; VALUE token-escaped as in side tables)
or `b` (boolean; VALUE `true` or `false`). KEY is token-escaped too; no key twice. Pure codec, no I/O.
"""

from __future__ import annotations

from .errors import CorruptObject
from .names import esc, unesc

MAGIC = b"gitree-ostree-meta 1\n"
BLOB_NAME = b"ostree-meta"

Metadata = list[tuple[str, str | bool]]


def encode(items: Metadata) -> bytes:
    out = [MAGIC]
    seen = set()
    for key, value in items:
        if not key or key in seen:
            raise ValueError(f"empty or repeated metadata key {key!r}")
        seen.add(key)
        k = esc(key.encode("utf-8"))
        if isinstance(value, bool):
            out.append(k + (b" b true\n" if value else b" b false\n"))
        else:
            out.append(k + b" s " + esc(value.encode("utf-8")) + b"\n")
    return b"".join(out)


def decode(data: bytes, where: str = "ostree-meta") -> Metadata:
    if not data.startswith(MAGIC):
        raise CorruptObject(f"{where}: not a gitree-ostree-meta 1 blob")
    body = data[len(MAGIC):]
    if body and not body.endswith(b"\n"):
        raise CorruptObject(f"{where}: last line is not terminated")
    items: Metadata = []
    for line in body.split(b"\n")[:-1]:
        parts = line.split(b" ")
        try:
            if len(parts) != 3:
                raise ValueError("expected KEY TYPE VALUE")
            key = unesc(parts[0]).decode("utf-8")
            if parts[1] == b"s":
                value: str | bool = unesc(parts[2]).decode("utf-8")
            elif parts[1] == b"b" and parts[2] in (b"true", b"false"):
                value = parts[2] == b"true"
            else:
                raise ValueError(f"unknown type or value {parts[1]!r} {parts[2][:20]!r}")
        except (ValueError, UnicodeDecodeError) as e:
            raise CorruptObject(f"{where}: bad line {line[:60]!r}: {e}") from None
        items.append((key, value))
    try:
        canonical = encode(items)
    except ValueError as e:
        raise CorruptObject(f"{where}: {e}") from None
    if canonical != data:
        raise CorruptObject(f"{where}: not in canonical form")
    return items


def to_variants(items: Metadata) -> list:
    """As (key, gitree_compat.Variant) pairs for the OSTree commit."""
    from gitree_compat import Variant
    return [(k, Variant("b", v) if isinstance(v, bool) else Variant("s", v)) for k, v in items]
