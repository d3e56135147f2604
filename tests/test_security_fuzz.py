"""Hypothesis fuzzing of the git reader: mutated side tables, trees and bundles.

For every mutant, each command (fsck, checkout to a directory and to a tar, ls, diff, export-ostree,
bundle apply) either succeeds, or fails with one `gitree: error:` line and a nonzero exit; never a
traceback or `internal error`, a moved ref, or a file outside its target. fsck is the reader run over
everything, so the commands agree with it: what fsck accepts, every command accepts, and its checkout
round-trips (the tar imports back to the same listing); what fsck refuses, no command writes.

The commands run in-process through the CLI's own entry point (`gitree.cli._main`: the same argument
parsing and error reporting as `python -m gitree`) to keep the examples cheap; test_security_git.py runs
the CLI as a program, under memory and descriptor limits, for the named cases.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import stat
import subprocess
import tempfile

import pygit2
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_safety import refs as all_refs
from test_security_git import BASE_MEMBERS, _pack, _wrap, hostile_bundle, make_tar

from gitree.transport.bundle import read_pack
from gitree.cli import _main
from gitree.gittree import decode_tree
from gitree.names import git_name
from gitree.packwriter import object_id

SETTINGS = settings(max_examples=int(os.environ.get("GITREE_FUZZ_EXAMPLES", "50")), deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
                    database=None)

DIRS = [b"", b"etc", b"bin", b"dev"]
NAMES = [b"passwd", b"~gitree~passwd", b".git", b"~gitree~.git", b".gitree", b"a%00b", b"..", b".", b"x/y",
         b"sh", b"sh2", b"null", b"etc", b"\xff\xfe", b"a" * 256, b"~gitree~", b".GIT", b""]
TOKENS = [b"f", b"d", b"l", b"c", b"b", b"p", b"s", b"x", b"644", b"7777", b"17777", b"-1", b"0", b"4294967296",
          b"h=etc/passwd", b"h=bin/sh", b"h=../x", b"h=", b"h=bin/sh2", b"r=1,3", b"r=4096,0", b"t=1.5",
          b"t=1.000000001", b"x=trusted.=", b"x=user.a=b", b"x=security.capability=%01%00%00%02",
          b"x=system.posix_acl_access=%02%00%00%00", b"x=nons=1", b"x=user.a=%00", b"passwd", b".git",
          b"~gitree~passwd", b"a%00b", b"%2F", b"%ZZ"]
GIT_MODES = [b"100644", b"100755", b"120000", b"40000", b"160000", b"100664", b"0"]


def refs(repo: str) -> dict[str, str]:
    """Every ref and HEAD. No command writes a ref but a branch (export-ostree's cache lives in files under
    the git directory, gitree/ostree-cache/, and a fetch's quarantine refs are gone when it returns), so a
    ref created anywhere, refs/gitree/ included, is noticed."""
    return all_refs(repo)


def cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = _main(["-q", *args])
    return rc, out.getvalue(), err.getvalue()


def check_outcome(rc: int, err: str, what) -> bool:
    """True on success; on failure, the failure must be one clean line."""
    assert "Traceback" not in err and "internal error" not in err, (what, err)
    if rc == 0:
        return True
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gitree: error: "), (what, rc, err)
    return False


@pytest.fixture(scope="module")
def world():
    """A base repository (its commit is what every mutant starts from) and a scratch area."""
    root = tempfile.mkdtemp(prefix="gitree-fuzz-", dir="/dev/shm")
    repo = os.path.join(root, "repo.git")
    assert cli("-C", repo, "init")[0] == 0
    tar = make_tar(os.path.join(root, "base.tar"), BASE_MEMBERS)
    rc, out, err = cli("-C", repo, "import-rootfs", tar, "-b", "main")
    assert rc == 0, err
    yield repo, out.strip().splitlines()[-1], root
    shutil.rmtree(root, ignore_errors=True)


def _dir_oids(g: pygit2.Repository, cid: str, d: bytes) -> tuple[bytes, bytes]:
    top = g[pygit2.Oid(hex=cid)].tree
    c, m = top["rootfs"].id.raw, top["meta"].id.raw
    if d:
        c = {n: o for _, n, o in decode_tree(g.odb.read(pygit2.Oid(raw=c))[1])}[git_name(d)]
        m = {n: o for _, n, o in decode_tree(g.odb.read(pygit2.Oid(raw=m))[1])}[git_name(d)]
    return c, m


def _write(g, otype, data: bytes) -> bytes:
    return g.odb.write(otype, data).raw


def _replace(g, root_tree: bytes, d: bytes, new: bytes) -> bytes:
    """`root_tree` with its entry for directory `d` pointing at `new` (d = b"": `new` is the root)."""
    if not d:
        return new
    ents = decode_tree(g.odb.read(pygit2.Oid(raw=root_tree))[1])
    data = b"".join(m + b" " + n + b"\0" + (new if n == git_name(d) else o) for m, n, o in ents)
    return _write(g, pygit2.enums.ObjectType.TREE, data)


def _commit(g, content: bytes, meta: bytes) -> str:
    fmt = _write(g, pygit2.enums.ObjectType.BLOB, b"gitree 1\n")
    top = b"".join(m + b" " + n + b"\0" + o for m, n, o in
                   [(b"100644", b"format", fmt), (b"40000", b"meta", meta), (b"40000", b"rootfs", content)])
    sig = pygit2.Signature("f", "f@example.invalid", 1700000000, 0)
    return str(g.create_commit(None, sig, sig, "mutant\n", pygit2.Oid(raw=_write(g, pygit2.enums.ObjectType.TREE,
                                                                                   top)), []))


# -- mutations --------------------------------------------------------------------------------

@st.composite
def byte_edit(draw, data: bytes) -> bytes:
    kind = draw(st.sampled_from(["flip", "insert", "delete"]))
    i = draw(st.integers(0, max(0, len(data) - 1)))
    if kind == "flip":
        return data[:i] + bytes([data[i] ^ draw(st.integers(1, 255))]) + data[i + 1:] if data else data
    if kind == "insert":
        return data[:i] + draw(st.binary(min_size=1, max_size=8)) + data[i:]
    j = draw(st.integers(i, min(len(data), i + 16)))
    return data[:i] + data[j:]


@st.composite
def table_edit(draw, data: bytes) -> bytes:
    lines = data.split(b"\n")[:-1]
    op = draw(st.sampled_from(["token", "token", "dup", "drop", "swap", "append", "bytes"]))
    if op == "bytes":
        return draw(byte_edit(data))
    i = draw(st.integers(1, len(lines) - 1))
    if op == "token":
        toks = lines[i].split(b" ")
        j = draw(st.integers(0, len(toks)))
        tok = draw(st.sampled_from(TOKENS))
        if j == len(toks):
            toks.append(tok)
        else:
            toks[j] = tok
        lines[i] = b" ".join(toks)
    elif op == "dup":
        lines.insert(i, lines[i])
    elif op == "drop" and len(lines) > 2:
        del lines[i]
    elif op == "swap":
        j = draw(st.integers(1, len(lines) - 1))
        lines[i], lines[j] = lines[j], lines[i]
    else:
        lines.append(draw(st.sampled_from(NAMES)) + b" " + b" ".join(draw(st.lists(st.sampled_from(TOKENS),
                                                                                   min_size=1, max_size=6))))
    return b"\n".join(lines) + b"\n"


@st.composite
def tree_edit(draw, g, data: bytes, oids: list[bytes]) -> bytes:
    ents = decode_tree(data)
    op = draw(st.sampled_from(["rename", "mode", "oid", "dup", "drop", "add", "bytes"]))
    if op == "bytes" or not ents:
        return draw(byte_edit(data))
    i = draw(st.integers(0, len(ents) - 1))
    m, n, o = ents[i]
    if op == "rename":
        ents[i] = (m, draw(st.sampled_from(NAMES)) or b"x", o)
    elif op == "mode":
        ents[i] = (draw(st.sampled_from(GIT_MODES)), n, o)
    elif op == "oid":
        ents[i] = (m, n, draw(st.sampled_from(oids)))
    elif op == "dup":
        ents.insert(i, ents[i])
    elif op == "drop":
        del ents[i]
    else:
        ents.append((draw(st.sampled_from(GIT_MODES)), draw(st.sampled_from(NAMES)) or b"y",
                     draw(st.sampled_from(oids))))
    if draw(st.booleans()):
        ents.sort(key=lambda e: e[1] + b"/" if e[0] == b"40000" else e[1])
    return b"".join(m + b" " + n + b"\0" + o for m, n, o in ents if b"\0" not in n)


@st.composite
def mutant(draw, world) -> str:
    """A commit: the base commit with one directory's side table or content tree mutated."""
    repo, cid, _ = world
    g = pygit2.Repository(repo)
    d = draw(st.sampled_from(DIRS))
    c, m = _dir_oids(g, cid, d)
    top = g[pygit2.Oid(hex=cid)].tree
    root_c, root_m = top["rootfs"].id.raw, top["meta"].id.raw
    if draw(st.booleans()):
        ments = decode_tree(g.odb.read(pygit2.Oid(raw=m))[1])
        tab = next(o for _, n, o in ments if n == b".gitree")
        new_tab = _write(g, pygit2.enums.ObjectType.BLOB, draw(table_edit(g.odb.read(pygit2.Oid(raw=tab))[1])))
        data = b"".join(mm + b" " + n + b"\0" + (new_tab if n == b".gitree" else o) for mm, n, o in ments)
        root_m = _replace(g, root_m, d, _write(g, pygit2.enums.ObjectType.TREE, data))
    else:
        oids = [o for _, _, o in decode_tree(g.odb.read(pygit2.Oid(raw=root_c))[1])] + [c, m]
        new = draw(tree_edit(g, g.odb.read(pygit2.Oid(raw=c))[1], oids))
        root_c = _replace(g, root_c, d, _write(g, pygit2.enums.ObjectType.TREE, new))
    return _commit(g, root_c, root_m)


# -- the property -----------------------------------------------------------------------------

def _listing(repo: str, rev: str) -> str:
    rc, out, err = cli("-C", repo, "ls", "-R", "-l", rev)
    assert rc == 0, err
    return out


def _run_all(world, rev: str, scratch: str, note=event) -> None:
    repo, cid, _ = world
    before_refs = refs(repo)
    rc, out, err = cli("-C", repo, "fsck", rev)
    ok = check_outcome(rc, err, "fsck")
    note("fsck accepts the mutant" if ok else "fsck refuses the mutant")
    dest, tar = os.path.join(scratch, "dest"), os.path.join(scratch, "out.tar")
    results = {}
    for name, args in [("checkout", ["checkout", rev, dest]), ("tar", ["checkout", rev, "--tar", tar]),
                       ("ls", ["ls", "-R", "-l", rev]), ("diff", ["diff", cid, rev]),
                       ("export", ["export-ostree", rev, "--ostree-repo", os.path.join(scratch, "o"),
                                   "--ref", "x"])]:
        rc, _, err = cli("-C", repo, *args)
        results[name] = check_outcome(rc, err, name)
        assert refs(repo) == before_refs
    gtb = os.path.join(scratch, "m.gtb")
    rc, _, err = cli("-C", repo, "bundle", "create", rev, gtb, "--branch", "m")
    results["bundle create"] = check_outcome(rc, err, "bundle create")
    try:  # the same commit as an attacker would bundle it (git's pack of whatever the trees hold)
        hostile = hostile_bundle(repo, rev, b"refs/heads/m")
    except subprocess.CalledProcessError:  # git itself cannot pack the mutant
        hostile = None
    if hostile is not None:
        with open(gtb, "wb") as f:
            f.write(hostile)
        other = os.path.join(scratch, "other.git")
        assert cli("-C", other, "init")[0] == 0
        rc, _, err = cli("-C", other, "bundle", "apply", gtb)
        results["apply"] = check_outcome(rc, err, "bundle apply")
        assert list(refs(other)) == (["refs/heads/m", "<HEAD file>"] if results["apply"] else ["<HEAD file>"])
    # what fsck accepts every reader accepts; what it refuses none writes
    for name, good in results.items():
        if name == "diff":
            assert good or not ok, (name, err)  # diff reads only the directories that differ
            continue
        assert good == ok, (name, ok, results)
    if not ok:
        assert not os.path.lexists(dest) and not os.path.lexists(tar)
        return
    # round trip: the tar imports back to the same listing
    back = os.path.join(scratch, "back.git")
    assert cli("-C", back, "init")[0] == 0
    rc, out, err = cli("-C", back, "import-rootfs", tar, "-b", "main")
    assert rc == 0, err
    assert _listing(back, out.strip().splitlines()[-1]) == _listing(repo, rev)
    assert os.path.isdir(dest)


def _scratch(world) -> str:
    d = tempfile.mkdtemp(prefix="ex-", dir=world[2])
    return d


@SETTINGS
@given(data=st.data())
def test_mutated_tables_and_trees(world, data):
    rev = data.draw(mutant(world))
    scratch = _scratch(world)
    try:
        before = set(os.listdir(world[2]))
        _run_all(world, rev, scratch)
        assert set(os.listdir(world[2])) == before  # nothing written beside the targets
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@SETTINGS
@given(data=st.data())
def test_mutated_bundle_bytes(world, data):
    """Byte edits anywhere in a bundle file: apply succeeds (and the result passes fsck) or refuses with
    one line and no ref moved."""
    repo, cid, root = world
    gtb = os.path.join(root, "base.gtb")
    if not os.path.exists(gtb):
        assert cli("-C", repo, "bundle", "create", "main", gtb)[0] == 0
    with open(gtb, "rb") as f:
        raw = f.read()
    where = data.draw(st.sampled_from(["header", "anywhere", "inner", "object", "object"]))
    if where == "header":
        head = raw[:80]
        mutated = data.draw(byte_edit(head)) + raw[80:]
    elif where == "anywhere":
        mutated = data.draw(byte_edit(raw))
    else:  # the git bundle inside (ref lines, pack), compressed again so zstd's checksum holds
        plain = os.path.join(root, "base.bundle")
        if not os.path.exists(plain):
            assert cli("-C", repo, "bundle", "unwrap", gtb, plain)[0] == 0
        with open(plain, "rb") as f:
            inner = f.read()
        if where == "inner":
            cut = data.draw(st.sampled_from([120, len(inner)]))
            inner = data.draw(byte_edit(inner[:cut])) + inner[cut:]
        else:  # one object's bytes (a commit, tree, table or file), in a pack whose checksums hold
            head, _, pack = inner.partition(b"\n\n")
            objects = [(t, b"".join(ch)) for t, _, ch in read_pack(io.BytesIO(pack).read, "base")]
            i = data.draw(st.integers(0, len(objects) - 1))
            t, body = objects[i]
            body = data.draw(byte_edit(body))
            new_type = data.draw(st.sampled_from([t, t, t, 1, 2, 3]))
            objects[i] = (new_type, body)
            if t == 1:  # the tip: the ref names the mutated commit, so apply reads it
                old_id = head.split(b"\n")[1].split(b" ")[0]
                head = head.replace(old_id, object_id(new_type, body).hex().encode())
            inner = head + b"\n\n" + _pack([(t, len(b), b) for t, b in objects])
        mutated = _wrap(inner)
    scratch = _scratch(world)
    try:
        path = os.path.join(scratch, "m.gtb")
        with open(path, "wb") as f:
            f.write(mutated)
        other = os.path.join(scratch, "other.git")
        assert cli("-C", other, "init")[0] == 0
        rc, _, err = cli("-C", other, "bundle", "apply", path)
        if check_outcome(rc, err, "bundle apply"):
            event("the mutated bundle applies")
            rc, _, err = cli("-C", other, "fsck")
            assert rc == 0, err
        else:
            assert list(refs(other)) == ["<HEAD file>"]
        assert sorted(os.listdir(scratch)) == ["m.gtb", "other.git"]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def test_fuzz_base_is_clean(world):
    """The mutants start from a commit every command accepts (so refusals come from the mutation)."""
    repo, cid, root = world
    scratch = _scratch(world)
    try:
        _run_all(world, cid, scratch, note=lambda _: None)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    assert stat.S_ISDIR(os.stat(root).st_mode)
