"""GVariant codec: reference vectors, hypothesis round-trips, strictness fuzzing, GLib cross-check."""

from __future__ import annotations

import json
import random
import subprocess

import pytest
import test_compat_support  # noqa: F401  (makes gitree_compat importable)
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gitree_compat import GVariantError, OstreeFormatError, Variant, decode, encode
from gitree_compat.gvariant import MAX_DEPTH, decode_asv, encode_asv, is_valid_type

V = Variant

# Reference §1.6 (hex produced by GLib 2.74).
VECTORS = [
    ("u", 0x12345678, "78563412"),
    ("t", 1, "0100000000000000"),
    ("s", "ab", "616200"),
    ("s", "", "00"),
    ("ay", b"\x01\x02", "0102"),
    ("ay", b"", ""),
    ("as", [], ""),
    ("a{sv}", [], ""),
    ("as", ["a", "bc"], "610062630002 05"),
    ("aay", [b"", b"x"], "78 0001"),
    ("au", [1, 2], "0100000002000000"),
    ("(uy)", (1, 2), "0100000002000000"),
    ("(ty)", (1, 2), "0100000000000000 0200000000000000"),
    ("()", (), "00"),
    ("(say)", ("ab", b"\x01\x02"), "6162000102 03"),
    ("(ays)", (b"\x01\x02", "ab"), "0102616200 02"),
    ("(sayay)", ("d", b"\xaa", b"\xbb"), "6400aabb 0302"),
    ("(ayay)", (b"user.a\0", b"A"), "757365722e610041 07"),
    ("a(ayay)", [(b"user.a\0", b"A")], "757365722e61004107 09"),
    ("a(ayay)", [(b"user.a\0", b"A"), (b"user.bb\0", b"BB")],
     "757365722e61004107 757365722e626200424208 0914"),
    ("ms", None, ""),
    ("ms", "a", "610000"),
    ("mu", None, ""),
    ("mu", 5, "05000000"),
    ("v", V("s", "a"), "61000073"),
    ("v", V("u", 1), "010000000075"),
    ("v", V("as", ["x"]), "780002006173"),
    ("(vu)", (V("y", 7), 3), "0700790003000000 03"),
    ("a{sv}", [("k", V("s", "x"))], "6b00000000000000 7800007302 0d"),
    ("a{sv}", [("ostree.ref-binding", V("as", ["os/x"]))],
     "6f73747265652e7265662d62696e64696e6700 0000000000 6f732f780005006173 13 22"),
    # detached metadata vector of §2.6
    ("a{sv}", [("dk", V("s", "dv"))], "646b000000000000 6476000073 03 0e"),
]


@pytest.mark.parametrize(("type_str", "value", "hexdata"), VECTORS)
def test_reference_vectors(type_str, value, hexdata):
    data = bytes.fromhex(hexdata.replace(" ", ""))
    assert encode(type_str, value) == data
    assert decode(type_str, data) == value


def test_framing_offset_width_boundaries():
    # §1.4: one 253-char string is 255 bytes (W=1), 254 chars gives 257 bytes (W=2).
    assert len(encode("as", ["a" * 253])) == 255
    assert len(encode("as", ["a" * 254])) == 257
    assert encode("as", ["a" * 254])[-2:] == (255).to_bytes(2, "little")
    # W=2 -> W=4 boundary: (ayay) with body 65533 is 65535 bytes; body 65534 needs 4-byte offsets.
    assert len(encode("(ayay)", (b"x" * 65532, b"y"))) == 65535
    big = encode("(ayay)", (b"x" * 65533, b"y"))
    assert len(big) == 65534 + 4
    assert decode("(ayay)", big) == (b"x" * 65533, b"y")


def test_asv_keeps_order_and_duplicates():
    items = [("zzz", V("s", "1")), ("aaa", V("s", "2")), ("zzz", V("u", 7))]
    data = encode_asv(items)
    assert decode_asv(data) == items
    assert encode_asv(dict(items[:2])) == encode_asv(items[:2])


@pytest.mark.parametrize(("type_str", "hexdata"), [
    ("s", "6162"),            # no NUL terminator
    ("s", "610062 00"),       # interior NUL
    ("s", "ff00"),            # invalid UTF-8
    ("s", "eda08000"),        # UTF-8 encoded surrogate
    ("b", "02"),              # bool not 0/1
    ("u", "010000"),          # wrong size
    ("u", "0100000000"),      # trailing byte
    ("(uy)", "0100000002000001"),  # non-zero tuple padding
    ("(ty)", "01000000000000000200"),  # short fixed tuple
    ("as", "6100620003"),     # element end offset past the offset table
    ("as", "61000100"),       # offsets out of order
    ("as", "610003"),         # last_end beyond table start
    ("a(ayay)", "757365722e6100410709ff"),  # trailing garbage
    ("a{sv}", "6b000000000001007800007302 0d"),  # non-zero padding inside a{sv}
    ("v", "6100"),            # empty variant type
    ("v", "610000 7a"),       # invalid variant type 'z'
    ("v", "6100 00 61"),      # indefinite variant type 'a'
    ("v", "0000 7373"),       # variant type must be one complete type
    ("ms", "6100"),           # Just of variable type lacks its trailing NUL
    ("mu", "050000"),         # Just of fixed type wrong size
    ("o", "6100"),            # invalid object path
    ("g", "7a00"),            # invalid signature
    ("()", "01"),             # unit must be 00
    ("mmy", "00"),            # Just(Nothing): no distinct Python value
    ("(ayay)", "78" * 10 + "79" * 244 + "0a00"),  # 2-byte offsets where 1 byte fits (tuple): 256 not 255
    ("as", "61" * 253 + "00" + "fe00"),  # same for an array
])
def test_rejects_non_normal_form(type_str, hexdata):
    with pytest.raises(GVariantError):
        decode(type_str, bytes.fromhex(hexdata.replace(" ", "")))


@pytest.mark.parametrize(("type_str", "value"), [
    ("u", -1), ("y", 256), ("t", 1 << 64), ("s", "a\0b"), ("s", 5), ("ay", 3), ("as", "abc"),
    ("(uu)", (1,)), ("v", ("u",)), ("v", V("z", 1)), ("b", 2), ("o", "a"), ("s", "\udc80"),
    ("a{sv}", [("k", 5)]), ("{sv}", ("k", 1)),
])
def test_encode_rejects_bad_values(type_str, value):
    with pytest.raises(GVariantError):
        encode(type_str, value)


@pytest.mark.parametrize("type_str", ["", "z", "a", "(u", "{uu", "{vu}", "{suu}", "uu", "r", "*", "a{sv", "m"])
def test_bad_type_strings(type_str):
    assert not is_valid_type(type_str)
    with pytest.raises(GVariantError):
        decode(type_str, b"")
    with pytest.raises(GVariantError):
        encode(type_str, None)


def test_depth_is_bounded():
    deep = "a" * (MAX_DEPTH + 5) + "y"
    with pytest.raises(GVariantError):
        decode(deep, b"")
    # Variants nested in data: each level is 3 bytes; must raise, not overflow the stack.
    data = b"\x00\x00y"
    for _ in range(2000):
        data = data + b"\x00v"
    with pytest.raises(GVariantError):
        decode("v", data)
    value = V("y", 0)
    for _ in range(MAX_DEPTH + 5):
        value = V("v", value)
    with pytest.raises(GVariantError):
        encode("v", value)


# ---------------------------------------------------------------------------------------------
# Hypothesis: random types and values

_text = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=12)
_obj_path = st.lists(st.from_regex(r"[A-Za-z0-9_]{1,5}", fullmatch=True), max_size=3).map(
    lambda parts: "/" + "/".join(parts))
_LEAVES = [
    ("y", st.integers(0, 255)), ("b", st.booleans()), ("n", st.integers(-(1 << 15), (1 << 15) - 1)),
    ("q", st.integers(0, (1 << 16) - 1)), ("i", st.integers(-(1 << 31), (1 << 31) - 1)),
    ("u", st.integers(0, (1 << 32) - 1)), ("h", st.integers(-(1 << 31), (1 << 31) - 1)),
    ("x", st.integers(-(1 << 63), (1 << 63) - 1)), ("t", st.integers(0, (1 << 64) - 1)),
    ("d", st.floats(allow_nan=False)), ("s", _text), ("o", _obj_path),
    ("g", st.sampled_from(["", "u", "a{sv}", "(uuua(ayay))", "mv"])),
]
_BASIC = st.sampled_from(_LEAVES)


def _extend(children):
    def array(c):
        t, s = c
        return ("a" + t, st.binary(max_size=20) if t == "y" else st.lists(s, max_size=4))

    def tup(cs):
        return ("(" + "".join(t for t, _ in cs) + ")", st.tuples(*(s for _, s in cs)))

    def dict_array(kc):
        (kt, ks), (vt, vs) = kc
        return ("a{" + kt + vt + "}", st.lists(st.tuples(ks, vs), max_size=4))

    return st.one_of(
        children.map(array),
        children.filter(lambda c: c[0][0] != "m").map(lambda c: ("m" + c[0], st.none() | c[1])),
        st.lists(children, max_size=4).map(tup),
        st.tuples(_BASIC, children).map(dict_array),
        children.map(lambda c: ("v", c[1].map(lambda x, t=c[0]: V(t, x)))),
    )


typed_values = st.recursive(_BASIC, _extend, max_leaves=10).flatmap(
    lambda tv: st.tuples(st.just(tv[0]), tv[1]))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(typed_values)
@example(("as", ["a" * 253]))
@example(("as", ["a" * 254]))
@example(("aay", [b"a" * 253]))
@example(("aay", [b"a" * 254]))
@example(("(ayay)", (b"x" * 65532, b"y")))
@example(("(ayay)", (b"x" * 65533, b"y")))
@example(("a(sv)", [("k" * 65000, V("ay", b"z" * 530))]))
@example(("(msmu)", (None, None)))
@example(("(ayay)", (b"", b"")))
@example(("()", ()))
@example(("a()", [(), (), ()]))
@example(("m()", ()))
@example(("mmay", b""))
def test_roundtrip(tv):
    type_str, value = tv
    data = encode(type_str, value)
    assert decode(type_str, data) == value
    assert encode(type_str, decode(type_str, data)) == data


_FUZZ_TYPES = ["s", "as", "a{sv}", "(a{sv}aya(say)sstayay)", "(a(say)a(sayay))", "(uuua(ayay))",
               "(uuuusa(ayay))", "v", "av", "mv", "(a(s(taya{sv}))a{sv})", "a(yaytt)", "mas", "(vu)", "a{sv}"]


@settings(max_examples=1500, deadline=None)
@given(st.sampled_from(_FUZZ_TYPES), st.binary(max_size=120))
@example("v", b"\x00" * 8 + b"\x00(" + b"a" * 5000)
@example("a{sv}", b"\xff" * 300)
@example("v", b"\x00\x00" + b"a" * 300 + b"y")
def test_fuzz_decode_raises_only_gvariant_error(type_str, data):
    try:
        value = decode(type_str, data)
    except GVariantError:
        return
    # Whatever is accepted is the unique normal form of its value.
    assert encode(type_str, value) == data


@settings(max_examples=400, deadline=None)
@given(typed_values, st.data())
def test_fuzz_mutated_encodings(tv, data):
    """Flip/truncate/extend valid encodings: either a clean GVariantError or a canonical value."""
    type_str, value = tv
    raw = bytearray(encode(type_str, value))
    op = data.draw(st.sampled_from(["flip", "truncate", "append"]))
    if op == "flip" and raw:
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] ^= data.draw(st.integers(1, 255))
    elif op == "truncate" and raw:
        del raw[data.draw(st.integers(0, len(raw) - 1)):]
    else:
        raw += data.draw(st.binary(min_size=1, max_size=3))
    try:
        v2 = decode(type_str, bytes(raw))
    except OstreeFormatError as e:
        assert isinstance(e, GVariantError)
        return
    assert encode(type_str, v2) == bytes(raw)


# ---------------------------------------------------------------------------------------------
# Cross-check with GLib itself (system python3 has PyGObject): serialization and normal-form verdicts.

_GLIB_SCRIPT = r"""
import json, sys
from gi.repository import GLib
out = []
for t, text, hexdata in json.load(sys.stdin):
    ref = GLib.Variant.parse(GLib.VariantType(t), text, None, None).get_data_as_bytes().get_data().hex()
    v = GLib.Variant.new_from_bytes(GLib.VariantType(t), GLib.Bytes.new(bytes.fromhex(hexdata)), False)
    normal = v.is_normal_form()
    # Re-serialize from the printed value: GLib's own canonical bytes for that value.
    canon = None
    if normal:
        try:
            canon = GLib.Variant.parse(v.get_type(), v.print_(True), None, None).get_data_as_bytes().get_data().hex()
        except GLib.GError:
            canon = "unprintable"
    out.append([ref, normal, canon])
json.dump(out, sys.stdout)
"""


def _glib(batch):
    probe = subprocess.run(["/usr/bin/python3", "-c", "from gi.repository import GLib"], capture_output=True,
                           check=False)
    assert probe.returncode == 0, "the GLib oracle needs Debian's python3-gi for /usr/bin/python3"
    p = subprocess.run(["/usr/bin/python3", "-c", _GLIB_SCRIPT], input=json.dumps(batch),
                       capture_output=True, text=True, check=True)
    return json.loads(p.stdout)


def _text(t: str, v) -> str:
    """GVariant text format of a value (typed by the context)."""
    c = t[0]
    if c in "ynqiuhxt":
        return str(int(v))
    if c == "b":
        return "true" if v else "false"
    if c == "d":
        return repr(float(v))
    if c in "sog":
        body = "'" + "".join(f"\\U{ord(ch):08x}" for ch in v) + "'"
        return {"s": "", "o": "objectpath ", "g": "signature "}[c] + body
    if c == "v":
        return f"<@{v.type} {_text(v.type, v.value)}>"
    if t == "ay":
        return "[" + ", ".join(f"byte {b}" for b in v) + "]" if v else "@ay []"
    if c == "m":
        return f"@{t} nothing" if v is None else f"@{t} just {_text(t[1:], v)}"
    if c == "a":
        inner = t[1:]
        if not v:
            return f"@{t} []"
        if inner[0] == "{":
            k, rest = _split(inner[1:-1])
            return "[" + ", ".join("{" + _text(k, a) + ", " + _text(rest, b) + "}" for a, b in v) + "]"
        return "[" + ", ".join(_text(inner, x) for x in v) + "]"
    if c == "(":
        members = _members(t[1:-1])
        if not members:
            return "()"
        body = ", ".join(_text(m, x) for m, x in zip(members, v, strict=True))
        return "(" + body + ("," if len(members) == 1 else "") + ")"
    raise AssertionError(t)


def _one(t: str) -> int:
    i = 0
    while t[i] in "am":
        i += 1
    if t[i] in "({":
        depth = 0
        for j in range(i, len(t)):
            depth += t[j] in "({"
            depth -= t[j] in ")}"
            if depth == 0:
                return j + 1
    return i + 1


def _split(t: str) -> tuple[str, str]:
    n = _one(t)
    return t[:n], t[n:]


def _members(t: str) -> list[str]:
    out = []
    while t:
        n = _one(t)
        out.append(t[:n])
        t = t[n:]
    return out


def _random_value(rng: random.Random, t: str, depth: int = 0):
    c = t[0]
    ranges = {"y": (0, 255), "n": (-(1 << 15), (1 << 15) - 1), "q": (0, 65535), "i": (-(1 << 31), (1 << 31) - 1),
              "u": (0, (1 << 32) - 1), "h": (-(1 << 31), (1 << 31) - 1), "x": (-(1 << 63), (1 << 63) - 1),
              "t": (0, (1 << 64) - 1)}
    if c in ranges:
        lo, hi = ranges[c]
        return rng.choice([lo, hi, 0 if lo <= 0 else lo, rng.randint(lo, hi)])
    if c == "b":
        return rng.random() < 0.5
    if c == "d":
        return rng.choice([0.0, -1.5, 1e300, rng.random()])
    if c == "s":
        n = rng.choice([0, 1, 3, 20, 253, 254, 300])
        return "".join(rng.choice("abcé€𝄞 ") for _ in range(n))
    if c == "o":
        return rng.choice(["/", "/a", "/org/gitree/x_1"])
    if c == "g":
        return rng.choice(["", "as", "(uu)a{sv}"])
    if c == "v":
        inner = rng.choice(["u", "s", "as", "a{sv}", "(ty)", "ay", "mv"] if depth < 3 else ["u", "s"])
        return V(inner, _random_value(rng, inner, depth + 1))
    if t == "ay":
        return rng.randbytes(rng.choice([0, 1, 7, 255, 256, 600]))
    if c == "m":
        return None if rng.random() < 0.3 else _random_value(rng, t[1:], depth + 1)
    if c == "a":
        inner = t[1:]
        n = rng.choice([0, 1, 2, 5, 12])
        if inner[0] == "{":
            k, rest = _split(inner[1:-1])
            return [(_random_value(rng, k, depth + 1), _random_value(rng, rest, depth + 1)) for _ in range(n)]
        return [_random_value(rng, inner, depth + 1) for _ in range(n)]
    if c == "(":
        return tuple(_random_value(rng, m, depth + 1) for m in _members(t[1:-1]))
    raise AssertionError(t)


GLIB_TYPES = ["y", "b", "n", "q", "i", "u", "x", "t", "h", "d", "s", "o", "g", "v", "ay", "as", "aay", "au",
              "at", "a{sv}", "a{ss}", "a{uv}", "(uy)", "(ty)", "()", "a()", "(sayay)", "a(ayay)", "ms", "mu",
              "mas", "m(uy)", "mv", "av", "(vu)", "(uuuusa(ayay))", "(tuuuusa(ayay))", "(a(say)a(sayay))",
              "(uuua(ayay))", "(a{sv}aya(say)sstayay)", "(a(s(taya{sv}))a{sv})", "a(yaytt)", "(a{sv}msmay)",
              "((y)(ty)(sy))", "a(s(ty))", "(mub)", "aas", "a{sa{sv}}", "(may)"]


def test_glib_cross_check():
    """~1500 random values: our bytes equal GLib's; GLib calls them normal; mutations agree with GLib."""
    rng = random.Random(20221)
    batch, mutated = [], []
    for _ in range(30):
        for t in GLIB_TYPES:
            v = _random_value(rng, t)
            data = encode(t, v)
            batch.append([t, _text(t, v), data.hex()])
            assert decode(t, data) == v or t == "d" or "d" in t
            if data:
                m = bytearray(data)
                op = rng.randrange(3)
                if op == 0:
                    i = rng.randrange(len(m))
                    m[i] ^= 1 << rng.randrange(8)
                elif op == 1:
                    del m[rng.randrange(len(m)):]
                else:
                    m += bytes([rng.randrange(256)])
                mutated.append([t, _text(t, v), bytes(m).hex()])
    results = _glib(batch + mutated)
    for (t, text, hexdata), (ref, normal, _) in zip(batch, results[:len(batch)], strict=True):
        assert hexdata == ref, (t, text)
        assert normal, (t, text)
    glib_quirks = 0
    for (t, _, hexdata), (_, glib_normal, glib_renormalized) in zip(mutated, results[len(batch):], strict=True):
        try:
            decode(t, bytes.fromhex(hexdata))
            ours = True
        except GVariantError:
            ours = False
        if glib_renormalized == "unprintable":
            glib_quirks += 1
            continue
        if glib_normal and glib_renormalized != hexdata:
            # GLib calls e.g. 0 bytes a normal-form "(ayay)" although it serializes that value as 00:
            # we reject such non-unique encodings.
            assert not ours, (t, hexdata)
            glib_quirks += 1
            continue
        assert ours == glib_normal, (t, hexdata)
    assert glib_quirks < len(mutated) // 20
