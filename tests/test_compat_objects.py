"""OSTree object encodings: every test vector of reference §9 (real ostree 2022.7), plus codec errors."""

from __future__ import annotations

import io
import zlib

import pytest
import test_compat_support  # noqa: F401  (makes gitree_compat importable)
from hypothesis import given, settings
from hypothesis import strategies as st

from gitree_compat import (
    EMPTY_DIRTREE_CHECKSUM,
    Commit,
    ContentHasher,
    DirMeta,
    FileMeta,
    FilezReader,
    GVariantError,
    InvalidName,
    InvalidObject,
    OstreeFormatError,
    Summary,
    SummaryRef,
    UnsupportedContent,
    Variant,
    canonical_xattrs,
    content_checksum,
    decode_commit,
    decode_dirmeta,
    decode_dirtree,
    decode_file_header,
    decode_ostreemeta,
    decode_summary,
    encode,
    encode_commit,
    encode_commitmeta,
    encode_dirmeta,
    encode_dirtree,
    encode_file_header,
    encode_filez,
    encode_ostreemeta,
    encode_summary,
    file_stream_prefix,
    sha256_hex,
)
from gitree_compat.objects import (
    DIRTREE_TYPE,
    OSTREE_INVALID_UTF8_TARGET,
    delta_name_decode,
    delta_name_encode,
)

V = Variant
ROOT_META = "446a0ef11b7cc167f3b603e585c7eeeeb675faa412d5ec73f62988eb0b6c5488"
T1_ROOT = "03c6b577919b4c43cbed8953705c83f77c1544d6f764485e8c1d91356dd100e3"
REG, LNK, DIR = 0o100000, 0o120000, 0o040000

# §9.1 tree T1: name -> (uid, gid, mode, target, xattrs, content, checksum)
T1_FILES = {
    "empty.txt": (0, 0, REG | 0o644, b"", (), b"", "cc700d46f407c6c5ab2d5dde474366a928b7398277e61162e7f8ec06f469f07e"),
    "hello.txt": (0, 0, REG | 0o644, b"", (), b"hello world\n",
                  "81381808c56d4f3d643ec12f6a18fcf2993af8daba7c2a1b2cbfc315b39424c6"),
    "link": (0, 0, LNK | 0o777, b"hello.txt", (), b"",
             "f66efa496a72379413c44593de510dc344beb045294f1a543da87b2b6118db35"),
    "owned.txt": (1000, 1000, REG | 0o640, b"", (), b"owned\n",
                  "24e71da4a95af7ff71b6614d1d34bd9ab007eb010f323e8b58289231acbbe51f"),
    "xattr.txt": (0, 0, REG | 0o644, b"", ((b"user.abc", b"v1"), (b"user.foo", b"bar")), b"xattr file\n",
                  "2a6935b94a2bd2c10e9a8093b733bed03bd377f873d95eed02d2742f3bafe753"),
}
RUN_SH = "89b350d278ff59ba4780bc377b8ebfee8ade6b55c99fab1ec84e133bc6ea52c5"
BIN_TREE = "230db4e51acc220a7118c2f5904c9e45b637e0ef4a6093ba58aab0c6e303ae51"
E953_HEX = (
    "6f73747265652e7265662d62696e64696e67000000000000746573742f6469720009006173132664697220636f6d6d69740074"
    "686520626f6479000000000000000000005e0be10003c6b577919b4c43cbed8953705c83f77c1544d6f764485e8c1d91356dd1"
    "00e3446a0ef11b7cc167f3b603e585c7eeeeb675faa412d5ec73f62988eb0b6c5488683b32272727")


@pytest.mark.parametrize("name", sorted(T1_FILES))
def test_t1_file_checksums(name):
    uid, gid, mode, target, xattrs, content, csum = T1_FILES[name]
    assert content_checksum(uid, gid, mode, target, xattrs, [content]) == csum
    # Streaming in odd chunk sizes gives the same result.
    h = ContentHasher(FileMeta(uid, gid, mode, target, xattrs))
    for i in range(len(content)):
        h.update(content[i:i + 1])
    assert h.hexdigest() == csum


def test_file_header_bytes():
    assert file_stream_prefix(FileMeta(0, 0, REG | 0o644)).hex() == \
        "0000001200000000" "00000000" "00000000" "000081a4" "00000000" "00" "11"
    assert file_stream_prefix(FileMeta(0, 0, LNK | 0o777, b"hello.txt")).hex() == \
        "0000001b00000000" "00000000" "00000000" "0000a1ff" "00000000" "68656c6c6f2e74787400" "1a"
    m = FileMeta(1000, 1000, REG | 0o640, b"", ((b"user.a", b"A"),))
    assert decode_file_header(encode_file_header(m)) == m


def test_run_sh_and_dirtrees():
    assert content_checksum(0, 0, REG | 0o755, chunks=[b"#!/bin/sh\necho hi\n"]) == RUN_SH
    assert sha256_hex(encode_dirtree([("run.sh", RUN_SH)])) == BIN_TREE
    assert sha256_hex(encode_dirtree([], [])) == EMPTY_DIRTREE_CHECKSUM
    assert encode_dirtree([], []) == b"\0"
    assert sha256_hex(encode_dirmeta(DirMeta(0, 0, DIR | 0o755))) == ROOT_META
    assert encode_dirmeta(DirMeta(0, 0, DIR | 0o755)).hex() == "00000000" "00000000" "000041ed"
    files = [(n, v[-1]) for n, v in T1_FILES.items()]
    dirs = [("empty", EMPTY_DIRTREE_CHECKSUM, ROOT_META), ("bin", BIN_TREE, ROOT_META)]
    data = encode_dirtree(reversed(files), dirs)  # any input order: sorted on encode
    assert sha256_hex(data) == T1_ROOT
    tree = decode_dirtree(data)
    assert [n for n, _ in tree.files] == sorted(T1_FILES)
    assert tree.dirs == (("bin", BIN_TREE, ROOT_META), ("empty", EMPTY_DIRTREE_CHECKSUM, ROOT_META))


def t1_commit(**kw) -> Commit:
    base = dict(root_tree=T1_ROOT, root_meta=ROOT_META)
    base.update(kw)
    return Commit(**base)


def test_commit_e953_full_bytes():
    c = t1_commit(metadata=[("ostree.ref-binding", V("as", ["test/dir"]))], subject="dir commit",
                  body="the body", timestamp=1577836800)
    data = encode_commit(c)
    assert data.hex() == E953_HEX
    assert len(data) == 142
    assert sha256_hex(data) == "e953e1a1dc1dc84e69bad2ea6725bcdd25047d8401fe9f95477fb2dba574f66d"
    assert decode_commit(data) == c
    assert c.content_checksum == "89892bb3cfa21b38492cb1f732e664ea3a82330749074f8b5cd35c486f4a9a50"


def test_other_t1_commits():
    c0 = t1_commit()
    data = encode_commit(c0)
    assert len(data) == 86
    assert data[-6:].hex() == "300201000000"
    c066 = sha256_hex(data)
    assert c066 == "c06691f22cabf9442b024c0217bfab8024759a6252d7c1914372db8a48218de4"
    child = t1_commit(parent=c066, timestamp=12345)
    assert sha256_hex(encode_commit(child)) == "4b6b46781430f06e30e7f98326a9951c9c22dcfe138416bf6d8011e5c5556c1e"
    assert decode_commit(encode_commit(child)).parent == c066
    meta = [("zzz", V("s", "1")), ("aaa", V("s", "2")), ("num", V("u", 7)), ("t", V("v", V("t", 5))),
            ("ostree.ref-binding", V("as", ["opt/a", "opt/other"]))]
    c = t1_commit(metadata=meta, timestamp=1000)
    assert sha256_hex(encode_commit(c)) == "f1cc8d6d0abf67cff9023562f13616bbdd1551af2efe5cf608f0a94658aa3b0e"
    assert decode_commit(encode_commit(c)).metadata == meta
    assert c.get("num") == 7


def test_owner_override_commit():
    # --owner-uid=42 --owner-gid=43: every entry 42:43.
    def f(name):
        _, _, mode, target, xattrs, content, _ = T1_FILES[name]
        return content_checksum(42, 43, mode, target, xattrs, [content])

    dm = sha256_hex(encode_dirmeta(DirMeta(42, 43, DIR | 0o755)))
    run = content_checksum(42, 43, REG | 0o755, chunks=[b"#!/bin/sh\necho hi\n"])
    root = encode_dirtree([(n, f(n)) for n in T1_FILES],
                          [("bin", sha256_hex(encode_dirtree([("run.sh", run)])), dm),
                           ("empty", EMPTY_DIRTREE_CHECKSUM, dm)])
    c = Commit(sha256_hex(root), dm)
    assert sha256_hex(encode_commit(c)) == "cae38b0af2fc058e5f632044c6cbc0e72ce7e78c5524ca776ce86a6dcda97d35"


def test_canonical_permissions_commit():
    owned = content_checksum(0, 0, REG | 0o640, chunks=[b"owned\n"])
    xat = content_checksum(0, 0, REG | 0o644, chunks=[b"xattr file\n"])
    assert owned == "226f4f8f194c4a688bc0b9228cf144d6a8ec392bce9fd38f995dd37bd1d4cb4d"
    assert xat == "5fe77ed38ae7e9ae587aa705987843c697379b65c9c5af012fd8040fbc6df9c3"
    files = {n: v[-1] for n, v in T1_FILES.items()}
    files.update({"owned.txt": owned, "xattr.txt": xat})
    root = encode_dirtree(files.items(), [("bin", BIN_TREE, ROOT_META), ("empty", EMPTY_DIRTREE_CHECKSUM, ROOT_META)])
    assert sha256_hex(root) == "0aad10a4ec18d370b765325c06d765690a5ea18acf829d11b835dbf41026c2ae"
    c = Commit(sha256_hex(root), ROOT_META, [("ostree.ref-binding", V("as", ["test/dir"]))], None, [],
               "dir commit", "the body", 1577836800)
    assert sha256_hex(encode_commit(c)) == "9b60b584273363914476ce50e71f2f1ca47b85a74bfbd8815dc2f029c7a21823"


def test_tar_xattr_order_vectors():
    x = [b"x\n"]
    assert content_checksum(0, 0, REG | 0o644, b"", [(b"user.a", b"A"), (b"user.c", b"C"), (b"user.b", b"B")], x) \
        == "bad388414fe03305827ddde1c43f0bb902627ddcb23d2b4d86c321ff63e9843b"
    sorted_x = canonical_xattrs([(b"user.b", b"B"), (b"user.c", b"C"), (b"user.a", b"A")])
    assert content_checksum(0, 0, REG | 0o644, b"", sorted_x, x) == \
        "e629d7cd75eb86ebe5e7824163143e05ff88ff86fbbfdcf2cc090879b5e381ad"
    assert content_checksum(0, 0, REG | 0o644, b"", [(b"user.c", b"C"), (b"user.b", b"B"), (b"user.a", b"A")], x) \
        == "5cb33a8a3f636ebb270aeba80a51e32901587143648ceb2f004593990410fad5"
    with_empty = [(b"user.a", b"A"), (b"user.empty", b"")]
    assert content_checksum(0, 0, REG | 0o644, b"", with_empty, x) == \
        "1abf461d8429a13278f5eda65db48def0a5eb4bb156c2bef49c7ab6b3a288950"
    assert content_checksum(0, 0, REG | 0o644, b"", canonical_xattrs(with_empty), x) == \
        "91e11ceb25f4310f6e81fab60776d9097f28086f6c87b82770e9eb5a0e6d05dc"
    assert content_checksum(0, 0, REG | 0o644, chunks=[b"same\n"]) == \
        "623f9b5ec81f6988007ec568e7b534f5b6e1742f9526f44d8d068acc0a282848"


def test_fakeroot_xattr_order_vector():
    xattrs = [(b"user.foo", b"bar"), (b"user.abc", b"v1")]
    assert content_checksum(0, 0, REG | 0o644, b"", xattrs, [b"xattr file\n"]) == \
        "ff2922f402db80d1b8a3389b1a16119351ee7d8e7f58819c4a45211e48fd8fed"


def test_t3_sorting_and_unusual_names():
    """§9.3: byte-wise strcmp order, dropped empty xattr, dir/symlink owners and xattrs."""
    names = [".hidden", "10", "9", "B", "Z", "_", "a", "a-b", "a.b", "ab", "sp ace", "é"]
    files = []
    for n in names:
        xattrs = canonical_xattrs([(b"user.empty", b"")]) if n == "a" else ()
        files.append((n, content_checksum(0, 0, REG | 0o644, b"", xattrs, [n.encode() + b"\n"])))
    sub = encode_dirtree([
        ("abslink", content_checksum(0, 0, LNK | 0o777, "/abs/target", [(b"trusted.foo", b"tv")])),
        ("rel", content_checksum(7, 8, LNK | 0o777, "../a")),
    ])
    dirs = [
        ("Adir", EMPTY_DIRTREE_CHECKSUM, sha256_hex(encode_dirmeta(DirMeta(5, 6, DIR | 0o2750)))),
        ("adir", EMPTY_DIRTREE_CHECKSUM,
         sha256_hex(encode_dirmeta(DirMeta(0, 0, DIR | 0o755, [(b"user.dirattr", b"dv")])))),
        ("sub", sha256_hex(sub), ROOT_META),
    ]
    root = encode_dirtree(files, dirs)
    assert sha256_hex(root) == "40f638cffe5af2925fc04de31e20b66605929820227222ed6f3004147439325f"
    assert [n for n, _ in decode_dirtree(root).files] == names


def test_filez_bytes():
    hello = b"".join(encode_filez(FileMeta(0, 0, REG | 0o644), [b"hello world\n"], 12))
    assert hello.hex() == ("0000001a00000000" "000000000000000c" "00000000" "00000000" "000081a4" "00000000" "00" "19"
                           "cb48cdc9c95728cf2fca49e10200")
    empty = b"".join(encode_filez(FileMeta(0, 0, REG | 0o644), [], 0))
    assert empty.hex() == ("0000001a00000000" "0000000000000000" "00000000" "00000000" "000081a4" "00000000" "00" "19"
                           "0300")
    link = b"".join(encode_filez(FileMeta(0, 0, LNK | 0o777, b"hello.txt"), [], 9))
    assert link.hex() == ("0000002300000000" "0000000000000000" "00000000" "00000000" "0000a1ff" "00000000"
                          "68656c6c6f2e74787400" "22")
    for blob, meta_mode, content in [(hello, REG | 0o644, b"hello world\n"), (empty, REG | 0o644, b""),
                                     (link, LNK | 0o777, b"")]:
        r = FilezReader(io.BytesIO(blob).read)
        assert r.meta.mode == meta_mode
        assert b"".join(r.chunks()) == content


def test_filez_stream_large_and_size_check():
    data = bytes(range(256)) * 20000
    chunks = [data[i:i + 65536] for i in range(0, len(data), 65536)]
    blob = b"".join(encode_filez(FileMeta(0, 0, REG | 0o644), chunks, len(data)))
    r = FilezReader(io.BytesIO(blob).read, chunk_size=4096)
    assert r.size == len(data)
    assert b"".join(r.chunks()) == data
    with pytest.raises(InvalidObject):
        b"".join(encode_filez(FileMeta(0, 0, REG | 0o644), [b"abc"], 4))


def _filez(size: int, payload: bytes, raw: bool = False) -> bytes:
    from gitree_compat import encode_filez_header
    header = encode_filez_header(FileMeta(0, 0, REG | 0o644), size)
    if raw:
        return header + payload
    z = zlib.compressobj(6, zlib.DEFLATED, -15)
    return header + z.compress(payload) + z.flush()


def test_filez_deflate_bomb_is_capped():
    bomb = _filez(10, bytes(200 << 20))  # 200 MiB of zeros, ~200 KiB compressed, header says 10 bytes
    assert len(bomb) < 1 << 20
    r = FilezReader(io.BytesIO(bomb).read, chunk_size=65536)
    produced = 0
    with pytest.raises(InvalidObject, match="larger than its declared size"):
        for c in r.chunks():
            produced += len(c)
    assert produced <= 10


@pytest.mark.parametrize(("blob", "match"), [
    (_filez(20, b"short"), "payload is 5 bytes"),
    (_filez(5, b"short")[:-2], "truncated"),
    (_filez(5, b"short") + b"x", "trailing"),
    (_filez(5, b"\xff\xff\xff", raw=True), "not valid deflate"),
    (b"\x00\x00\x00", "truncated"),
    (b"\x00\x00\x00\x1a\x00\x00\x00\x01" + bytes(26), "padding"),
    (b"\x7f\x00\x00\x00\x00\x00\x00\x00", "too large"),
    (b"\x00\x00\x00\x02\x00\x00\x00\x00\x00\x00", "bad filez header"),
])
def test_filez_corrupt(blob, match):
    with pytest.raises(InvalidObject, match=match):
        r = FilezReader(io.BytesIO(blob).read)
        b"".join(r.chunks())


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "/", "a\0b", b"\xff", "\udcff"])
def test_dirtree_bad_names(name):
    csum = "00" * 32
    with pytest.raises(InvalidName):
        encode_dirtree([(name, csum)])
    # The same names in serialized bytes (bypassing the encoder's checks) are rejected on decode.
    if isinstance(name, str) and "\0" not in name and name.isprintable() or name == "":
        data = encode(DIRTREE_TYPE, ([(name, bytes(32))], []))
        with pytest.raises(InvalidName):
            decode_dirtree(data)
    if name == "a\0b":
        data = encode(DIRTREE_TYPE, ([("a", bytes(32))], [])).replace(b"a\0", b"a\0b\0", 1)
        with pytest.raises(OstreeFormatError):
            decode_dirtree(data)


def test_dirtree_decode_rules():
    c = bytes(32)
    unsorted = encode(DIRTREE_TYPE, ([("b", c), ("a", c)], []))
    with pytest.raises(InvalidObject, match="sorted"):
        decode_dirtree(unsorted)
    dup = encode(DIRTREE_TYPE, ([("a", c), ("a", c)], []))
    with pytest.raises(InvalidObject):
        decode_dirtree(dup)
    both = encode(DIRTREE_TYPE, ([("a", c)], [("a", c, c)]))
    with pytest.raises(InvalidObject, match="both"):
        decode_dirtree(both)
    short = encode(DIRTREE_TYPE, ([("a", b"\1" * 31)], []))
    with pytest.raises(InvalidObject, match="31 bytes"):
        decode_dirtree(short)
    with pytest.raises(InvalidName, match="duplicate"):
        encode_dirtree([("a", c)], [("a", c, c)])
    with pytest.raises(GVariantError):
        decode_dirtree(b"")  # truncated: not even the offset byte


def test_dirmeta_and_commit_rules():
    with pytest.raises(InvalidObject):
        DirMeta(0, 0, REG | 0o644)
    not_dir = encode("(uuua(ayay))", (0, 0, int.from_bytes((REG | 0o644).to_bytes(4, "big"), "little"), []))
    with pytest.raises(InvalidObject, match="not a directory"):
        decode_dirmeta(not_dir)
    bad_xattr = encode("(uuua(ayay))", (0, 0, int.from_bytes((DIR | 0o755).to_bytes(4, "big"), "little"),
                                        [(b"user.a", b"x")]))  # name lacks its NUL
    with pytest.raises(InvalidObject, match="xattr"):
        decode_dirmeta(bad_xattr)
    data = bytearray(encode_commit(t1_commit()))
    with pytest.raises(GVariantError):
        decode_commit(bytes(data[:-1]))
    with pytest.raises(InvalidObject):
        encode_commit(t1_commit(metadata=[("", V("s", "x"))]))
    with pytest.raises(InvalidObject):
        FileMeta(0, 0, REG | 0o644, b"target")
    with pytest.raises(InvalidObject):
        FileMeta(0, 0, 0o020644)  # character device


def test_ostreemeta_and_commitmeta_vectors():
    v = encode_ostreemeta(FileMeta(1000, 1000, REG | 0o640))
    assert v.hex() == "000003e8" "000003e8" "000081a0"
    assert decode_ostreemeta(v) == (1000, 1000, REG | 0o640, ())
    assert encode_ostreemeta(FileMeta(0, 0, REG | 0o4755)).hex() == "00000000" "00000000" "000089ed"
    assert encode_commitmeta([("dk", V("s", "dv"))]).hex() == "646b000000000000647600007303" "0e"


def test_summary_roundtrip():
    s = Summary([SummaryRef("b", 142, "11" * 32, [("ostree.commit.timestamp", V("t", 5))]),
                 SummaryRef("a", 86, "22" * 32, [])],
                [("ostree.summary.mode", V("s", "archive-z2")), ("ostree.summary.indexed-deltas", V("b", True))])
    data = encode_summary(s)
    back = decode_summary(data)
    assert [r.name for r in back.refs] == ["a", "b"]
    assert back.refs[1].commit_size == 142
    assert back.metadata == s.metadata


def test_delta_names():
    csum = "e953e1a1dc1dc84e69bad2ea6725bcdd25047d8401fe9f95477fb2dba574f66d"
    name = delta_name_encode(csum)
    assert len(name) == 43 and "/" not in name and "=" not in name
    assert delta_name_decode(name) == csum


_names = st.text(st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",)), min_size=1, max_size=8)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(_names.filter(lambda n: n not in (".", "..")), st.binary(min_size=32, max_size=32),
                       max_size=20),
       st.booleans())
def test_dirtree_roundtrip(entries, as_dirs):
    files = [] if as_dirs else [(n, c.hex()) for n, c in entries.items()]
    dirs = [(n, c.hex(), c[::-1].hex()) for n, c in entries.items()] if as_dirs else []
    tree = decode_dirtree(encode_dirtree(files, dirs))
    assert sorted(tree.files) == sorted(files)
    assert sorted(tree.dirs) == sorted(dirs)
    keys = [n.encode() for n, *_ in (tree.dirs if as_dirs else tree.files)]
    assert keys == sorted(keys)


# names as Linux allows them (a namespace, a non-empty rest, at most 255 bytes): readers refuse others
_xattr_lists = st.lists(st.tuples(
    st.tuples(st.sampled_from([b"security.", b"system.", b"trusted.", b"user."]),
              st.binary(min_size=1, max_size=240).filter(lambda b: b"\0" not in b)).map(b"".join),
    st.binary(max_size=300)), max_size=3)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 0o7777), st.booleans(),
       st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), min_size=1, max_size=300)
       .map(str.encode), _xattr_lists,
       st.integers(0, 2**64 - 1))
def test_hand_framed_encoders_equal_generic(uid, gid, perms, is_link, target, xattrs, size):
    """The fast header/dirmeta encoders produce exactly the generic GVariant encoding."""
    from gitree_compat.objects import (
        DIRMETA_TYPE,
        FILE_HEADER_TYPE,
        FILEZ_HEADER_TYPE,
        OSTREEMETA_TYPE,
        bswap32,
        encode_filez_header,
    )

    mode = (LNK | 0o777) if is_link else (REG | perms)
    meta = FileMeta(uid, gid, mode, target if is_link else b"", xattrs)
    gv_x = [(n + b"\0", v) for n, v in xattrs]
    t = meta.symlink_target.decode()
    generic = encode(FILE_HEADER_TYPE, (bswap32(uid), bswap32(gid), bswap32(mode), 0, t, gv_x))
    assert encode_file_header(meta) == generic
    assert decode_file_header(generic) == meta
    if not is_link:
        assert encode(FILE_HEADER_TYPE, (bswap32(uid), bswap32(gid), bswap32(mode), 0, "", gv_x)) == generic
    fz = encode(FILEZ_HEADER_TYPE,
                (int.from_bytes((0 if is_link else size).to_bytes(8, "big"), "little"),
                 bswap32(uid), bswap32(gid), bswap32(mode), 0, t, gv_x))
    assert encode_filez_header(meta, size)[8:] == fz
    dm = DirMeta(uid, gid, DIR | perms, xattrs)
    assert encode_dirmeta(dm) == encode(DIRMETA_TYPE, (bswap32(uid), bswap32(gid), bswap32(DIR | perms), gv_x))
    assert decode_dirmeta(encode_dirmeta(dm)) == dm
    assert encode_ostreemeta(meta) == encode(OSTREEMETA_TYPE, (bswap32(uid), bswap32(gid), bswap32(mode), gv_x))


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(_names.filter(lambda n: n not in (".", "..")), st.binary(min_size=32, max_size=32),
                       max_size=12),
       st.dictionaries(st.text("abcdefgh" * 40, min_size=200, max_size=260), st.binary(min_size=32, max_size=32),
                       max_size=300))
def test_hand_framed_dirtree_equals_generic(small, long_names):
    """Includes element/array sizes across the 1->2 and 2->4 byte framing-offset boundaries."""
    files = sorted(((n.encode(), c) for n, c in {**small, **long_names}.items()), key=lambda e: e[0])
    dirs = sorted(((n.encode() + b"d", c, c[::-1]) for n, c in long_names.items()), key=lambda e: e[0])
    data = encode_dirtree([(n, c) for n, c in files], [(n, t, m) for n, t, m in dirs])
    assert data == encode(DIRTREE_TYPE, (files, dirs))


def test_large_dirtree_four_byte_offsets():
    files = [((f"{i:04d}" + "n" * 250).encode(), bytes([i % 256]) * 32) for i in range(300)]
    data = encode_dirtree(files, [])
    assert len(data) > 65535
    assert data == encode(DIRTREE_TYPE, (files, []))
    assert len(decode_dirtree(data).files) == 300


_SAMPLES = {
    "commit": (decode_commit, encode_commit(Commit(
        "11" * 32, "22" * 32, [("version", Variant("s", "1")), ("ostree.ref-binding", Variant("as", ["a"]))],
        "33" * 32, [], "s", "b", 5))),
    "dirtree": (decode_dirtree, encode_dirtree([("a", "11" * 32), ("b", "22" * 32)], [("c", "33" * 32, "44" * 32)])),
    "dirmeta": (decode_dirmeta, encode_dirmeta(DirMeta(1, 2, DIR | 0o755, [(b"user.x", b"y")]))),
    "file_header": (decode_file_header, encode_file_header(FileMeta(0, 0, LNK | 0o777, b"t", [(b"user.x", b"y")]))),
    "ostreemeta": (decode_ostreemeta, encode_ostreemeta(FileMeta(0, 0, REG | 0o644))),
    "summary": (decode_summary, encode_summary(Summary([SummaryRef("r", 9, "11" * 32, [])], []))),
    "filez": (lambda b: b"".join(FilezReader(io.BytesIO(b).read).chunks()),
              b"".join(encode_filez(FileMeta(0, 0, REG | 0o644), [b"hello"], 5))),
}


@settings(max_examples=600, deadline=None)
@given(st.sampled_from(sorted(_SAMPLES)), st.data())
def test_object_decoders_raise_only_format_errors(kind, data):
    """Mutated or random bytes: every object decoder fails only with an OstreeFormatError subclass."""
    decoder, good = _SAMPLES[kind]
    raw = bytearray(good)
    op = data.draw(st.sampled_from(["flip", "truncate", "append", "random"]))
    if op == "flip":
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] ^= data.draw(st.integers(1, 255))
    elif op == "truncate":
        del raw[data.draw(st.integers(0, len(raw) - 1)):]
    elif op == "append":
        raw += data.draw(st.binary(min_size=1, max_size=4))
    else:
        raw = bytearray(data.draw(st.binary(max_size=200)))
    try:
        decoder(bytes(raw))
    except OstreeFormatError:
        pass


def test_tar_commit_vectors():
    """§9.2 commits of tar imports (same object model, libarchive xattr order)."""
    c = Commit(T1_ROOT, ROOT_META, [("ostree.ref-binding", V("as", ["test/tar"]))], None, [], "dir commit",
               "the body", 1577836800)
    assert sha256_hex(encode_commit(c)) == "b24ee0ee7a21b9d265abe692594742c76951871918178d7d88582f8ab28feac2"

    def commit_t(files):
        tree = sha256_hex(encode_dirtree(files))
        return sha256_hex(encode_commit(Commit(tree, ROOT_META, [("ostree.ref-binding", V("as", ["t"]))])))

    xorder = "bad388414fe03305827ddde1c43f0bb902627ddcb23d2b4d86c321ff63e9843b"
    assert commit_t([("x", xorder)]) == "3ca6eb74c5578cf1fb5947ea4c5613594c55048909b62173c61c44b61f364801"
    same = "623f9b5ec81f6988007ec568e7b534f5b6e1742f9526f44d8d068acc0a282848"
    assert commit_t([("a", same), ("b", same)]) == "08bb304e5f7f6e590ba919c70f30ea030acc6e78b19ce07c347e081fe952c01f"


def test_non_utf8_symlink_target_is_unsupported():
    with pytest.raises(UnsupportedContent, match="Invalid UTF-8"):
        FileMeta(0, 0, LNK | 0o777, b"\xff\xfe/t")
    with pytest.raises(UnsupportedContent):
        content_checksum(0, 0, LNK | 0o777, "\udcff")  # surrogateescape'd str
    bad = encode_file_header(FileMeta(0, 0, LNK | 0o777, b"ab")).replace(b"ab\0", b"\xff\xfe\0")
    with pytest.raises(GVariantError):
        decode_file_header(bad)
    # What ostree commit stores instead (checked against the real tool in test_compat_repo).
    assert content_checksum(0, 0, LNK | 0o777, OSTREE_INVALID_UTF8_TARGET) == \
        "a7f363e0d56f4a86e8f9da5ba2e0fb53a7f7c07df17126aca2aaa37ab09ff599"
