"""The format codecs on their own, with hypothesis: side tables (gitree.sidetable), name escaping
(gitree.names) and git trees (gitree.gittree, checked against libgit2 through pygit2). Each round-trips,
is canonical (bytes that decode re-encode to themselves), and refuses malformed input with its one error."""

from __future__ import annotations

import os
import tempfile

import pygit2
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gitree import names, sidetable
from gitree.entry import Entry, Kind, check_fields
from gitree.errors import CorruptObject, UnsafePath
from gitree.gittree import MODE_DIR, MODE_EXEC, MODE_FILE, MODE_LINK, TreeEntry, decode_tree, encode_tree
from gitree.sidetable import Row

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

file_names = st.binary(min_size=1, max_size=40).filter(
    lambda n: b"/" not in n and b"\0" not in n and n not in (b".", b".."))
xattr_names = st.sampled_from([b"user.", b"trusted.", b"security.x", b"user.\xff"]).flatmap(
    lambda p: st.binary(min_size=1, max_size=12).filter(lambda s: b"\0" not in s).map(lambda s: p + s))


@st.composite
def rows(draw, name=None):
    kind = draw(st.sampled_from(list(Kind)))
    rdev = draw(st.tuples(st.integers(0, 4095), st.integers(0, (1 << 20) - 1))) \
        if kind in (Kind.CHAR, Kind.BLOCK) else None
    xattrs = tuple(sorted(draw(st.dictionaries(xattr_names, st.binary(max_size=30), max_size=3)).items()))
    row = Row(name if name is not None else draw(file_names), kind, draw(st.integers(0, 0o7777)),
              draw(st.integers(0, (1 << 32) - 1)), draw(st.integers(0, (1 << 32) - 1)), rdev,
              draw(st.none() | file_names) if kind is Kind.FILE else None,
              draw(st.none() | st.integers(-(1 << 40), 1 << 62)), xattrs)
    assume(check_fields(Entry(row.name, kind, row.mode, row.uid, row.gid, xattrs, rdev=rdev)) is None)
    return row


@st.composite
def tables(draw):
    self_row = draw(rows(name=sidetable.SELF).filter(lambda r: r.kind is Kind.DIR and r.hardlink is None))
    by_name = {r.name: r for r in draw(st.lists(rows(), max_size=8))}
    return self_row, sorted(by_name.values(), key=lambda r: r.name)


# ---------------------------------------------------------------------------------------------
# side tables

@SETTINGS
@given(tables())
def test_sidetable_round_trip(table):
    self_row, body = table
    data = sidetable.encode_table(self_row, body)
    assert sidetable.decode_table(data, "t") == (self_row, body)
    assert data.startswith(sidetable.MAGIC)          # no sparse rows: version 1, as trees always had
    assert all(b" " not in line.split(b" ", 1)[0] for line in data.split(b"\n"))  # names are one token


@SETTINGS
@given(tables(), st.integers(min_value=0), st.integers(0, 255))
def test_sidetable_is_canonical_under_mutation(table, where, byte):
    """Any one-byte change either is refused or decodes to rows that encode to exactly the changed bytes:
    no two byte strings stand for the same directory."""
    data = bytearray(sidetable.encode_table(*table))
    data[where % len(data)] = byte
    try:
        self_row, body = sidetable.decode_table(bytes(data), "t")
    except CorruptObject:
        return
    assert sidetable.encode_table(self_row, body) == bytes(data)


def _decoded(data: bytes):
    try:
        return sidetable.decode_table(data, "t")
    except CorruptObject as e:
        return str(e)


@SETTINGS
@given(tables(), st.integers(min_value=0), st.integers(0, 255))
def test_sidetable_rows_with_a_known_tail_are_checked_as_strictly(table, where, byte):
    """decode_table remembers the validated part of a row after its name, and checks a later row with the same
    part by its name alone: a table whose every tail is known, changed in one byte, decodes (or is refused, with
    the same message) exactly as by a decoder that remembers nothing."""
    data = sidetable.encode_table(*table)
    sidetable.decode_table(data, "t")   # every tail of the table is remembered now
    changed = bytearray(data)
    changed[where % len(changed)] = byte
    with_tails = _decoded(bytes(changed))
    sidetable._TAILS.clear()
    assert with_tails == _decoded(bytes(changed))


@SETTINGS
@given(st.binary(max_size=300))
def test_sidetable_refuses_noise_with_one_error(data):
    for blob in (data, sidetable.MAGIC + data):
        try:
            self_row, body = sidetable.decode_table(blob, "t")
        except CorruptObject as e:
            assert str(e).startswith("side table t")
            continue
        assert sidetable.encode_table(self_row, body) == blob


# ---------------------------------------------------------------------------------------------
# names

@SETTINGS
@given(st.binary(max_size=64))
def test_escape_round_trip_and_token_bytes(raw):
    token = names.esc(raw)
    assert names.unesc(token) == raw
    assert all(0x21 <= b <= 0x7E and b != 0x3D for b in token)   # no space, newline or '=': one field


@SETTINGS
@given(st.binary(max_size=16))
def test_unescape_refuses_what_esc_never_writes(token):
    try:
        raw = names.unesc(token)
    except ValueError:
        return
    if b"%" in token or all(0x21 <= b <= 0x7E and b not in (0x25, 0x3D) for b in token):
        assert names.unesc(names.esc(raw)) == raw


@SETTINGS
@given(file_names | st.sampled_from([b".git", b".GIT", b".Git\xe2\x80\x8c", b"git~1", b".gitmodules",
                                     b"~gitree~x", b".mailmap", b"GI7EBA~1"]))
def test_git_name_round_trip_and_never_a_git_name(name):
    g = names.git_name(name)
    assert names.fs_name(g) == name
    folded = g.lower()
    for ign in names._HFS_IGNORABLE_BYTES:
        folded = folded.replace(ign, b"")
    assert not folded.startswith((b".git", b".mailmap")) and not names._NTFS_SHORT.match(folded)


@SETTINGS
@given(st.lists(st.sampled_from([b"", b".", b"..", b"a", b"b\xff", b"c d"]), max_size=6), st.booleans())
def test_member_paths_normalise_or_refuse(parts, absolute):
    raw = (b"/" if absolute else b"") + b"/".join(parts)
    try:
        p = names.normalize_member_path(raw)
    except UnsafePath:
        assert b".." in parts
        return
    assert b".." not in parts
    comps = p.split(b"/") if p else []
    assert all(c not in (b"", b".", b"..") for c in comps)
    assert names.normalize_member_path(p) == p


# ---------------------------------------------------------------------------------------------
# git trees, against libgit2

@pytest.fixture(scope="module")
def git_repo():
    d = tempfile.mkdtemp(prefix="gitree-codecs-")
    yield pygit2.init_repository(os.path.join(d, "r.git"), bare=True)
    import shutil
    shutil.rmtree(d, ignore_errors=True)


tree_entries = st.dictionaries(
    file_names,
    st.tuples(st.sampled_from([MODE_DIR, MODE_FILE, MODE_EXEC, MODE_LINK]), st.binary(min_size=20, max_size=20)),
    max_size=10)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree_entries)
def test_git_tree_codec_matches_libgit2(git_repo, entries):
    ents = [(mode, name, oid) for name, (mode, oid) in entries.items()]
    data = encode_tree(ents)
    decoded = decode_tree(data, "t")
    assert all(isinstance(e, TreeEntry) for e in decoded)
    assert sorted(decoded) == sorted(ents) and encode_tree(decoded) == data
    # libgit2 reads the same entries, in the same (git's) order, from the same bytes
    tree = git_repo[git_repo.odb.write(pygit2.enums.ObjectType.TREE, data)]
    assert [(e.raw_name, e.id.raw) for e in tree] == [(e.name, e.oid) for e in decoded]
    # and a tree libgit2 builds from existing objects is byte-identical to ours (names libgit2 accepts)
    if all(all(0x20 < b < 0x7F for b in name) and not name.lower().startswith(b".git") for name in entries):
        empty = git_repo.odb.write(pygit2.enums.ObjectType.TREE, b"").raw
        real = [(mode, name, empty if mode == MODE_DIR else git_repo.odb.write(pygit2.enums.ObjectType.BLOB, name).raw)
                for mode, name, _ in ents]
        tb = git_repo.TreeBuilder()
        for mode, name, oid in real:
            tb.insert(name.decode(), pygit2.Oid(raw=oid), int(mode, 8))
        assert git_repo[tb.write()].read_raw() == encode_tree(real)


@SETTINGS
@given(st.binary(max_size=200))
def test_git_tree_decoder_refuses_truncation_cleanly(noise):
    try:
        out = decode_tree(noise, "t")
    except CorruptObject:
        return
    assert b"".join(e.mode + b" " + e.name + b"\0" + e.oid for e in out) == noise
