"""Findings of an attack on the merged security work, each kept fixed: an imported commit's OSTree side
blobs (ostree/xattr-order, ostree/commit, ostree-meta) cannot change or inflate an export, and the
directories gitree fills (checkout DEST, clone PATH, an output file's directory) cannot lend their
owner or default ACL to what gitree writes."""

# ruff: noqa: F811  (the `base` fixture is imported, then named as a parameter)
from __future__ import annotations

import itertools
import os
import signal
import subprocess
import zlib

import pygit2
import pytest

from helpers import GITREE, last_line, run_gitree

from benchmarks.measure import Timing, measured, read_measure

from gitree import api
from test_security_git import (MODE_DIR, MODE_FILE, api_error, assert_one_error, base, blob, limited,  # noqa: F401
                               run_limited, write_tree)


def _with_ostree_subtree(repo: str, rev: str, files: list[tuple[bytes, bytes]], name: str) -> str:
    """A commit of rev's tree plus an `ostree/` subtree holding `files` (as import-ostree writes it)."""
    g = pygit2.Repository(repo)
    c = g.revparse_single(rev)
    ents = [(b"%o" % e.filemode, e.name.encode(), e.id.raw) for e in c.tree if e.name != "ostree"]
    ost = write_tree(g, [(MODE_FILE, n, blob(g, d)) for n, d in files])
    top = write_tree(g, ents + [(MODE_DIR, b"ostree", ost)])
    sig = pygit2.Signature("t", "t@example.invalid", c.commit_time, 0)
    return str(g.create_commit("refs/heads/" + name, sig, sig, c.message, pygit2.Oid(raw=top), []))


def _ls_x(ostree_repo: str, ref: str, path: str) -> str:
    return subprocess.run(["ostree", "--repo=" + ostree_repo, "ls", "-X", ref, path], capture_output=True,
                          text=True, check=True).stdout


def test_xattr_order_cannot_drop_an_xattr_from_the_export(work, base):
    """An `ostree/xattr-order` that names fewer xattrs than the tree holds is not a permutation of them:
    the export keeps every xattr (here /bin/sh's file capability), as fsck and checkout see them."""
    repo, _ = base
    first = os.path.join(work, "first")
    csum = api.export_ostree(repo, "main", first, ref="x").checksum
    with open(os.path.join(first, "objects", csum[:2], csum[2:] + ".commit"), "rb") as f:
        original = f.read()
    _with_ostree_subtree(repo, "main", [(b"commit", original), (b"xattr-order", b"bin/sh\n")], "xo")
    api.fsck(repo, ["xo"], check=True)
    out = os.path.join(work, "out")
    api.export_ostree(repo, "xo", out, ref="x")
    listing = _ls_x(out, "x", "/bin/sh")
    assert "security.capability" in listing, listing


@pytest.mark.parametrize("blob_name,limit_words", [(b"xattr-order", "more than the limit"),
                                                   (b"commit", "more than the limit")])
def test_oversized_ostree_side_blobs_are_refused_from_their_header(work, base, blob_name, limit_words):
    """ostree/xattr-order and ostree/commit are read only within their limits (8 MiB, 10 MiB), from the
    object's header: a few KB of compressed input cannot make export allocate hundreds of MiB."""
    repo, _ = base
    data = b"bin/sh security.capability\n" * ((12 << 20) // 27) if blob_name == b"xattr-order" else b"\0" * (11 << 20)
    files = [(b"commit", b"\0" * 64), (blob_name, data)] if blob_name != b"commit" else [(b"commit", data)]
    _with_ostree_subtree(repo, "main", files, "big")
    r = run_limited("-C", repo, "export-ostree", "big", "--ostree-repo", os.path.join(work, "out"))
    assert_one_error(r, limit_words)


def test_oversized_ostree_meta_blob_is_refused(work, base):
    """The ostree-meta blob of a bootable commit is bounded (1 MiB): 2 million keys are refused in one line
    under the 300 MiB memory limit, before they are decoded."""
    repo, _ = base
    g = pygit2.Repository(repo)
    c = g.revparse_single("main")
    body = b"gitree-ostree-meta 1\n" + b"k s v\n" * 2_000_000
    ents = [(b"%o" % e.filemode, e.name.encode(), e.id.raw) for e in c.tree]
    top = write_tree(g, ents + [(MODE_FILE, b"ostree-meta", blob(g, body))])
    sig = pygit2.Signature("t", "t@example.invalid", c.commit_time, 0)
    g.create_commit("refs/heads/meta", sig, sig, c.message, pygit2.Oid(raw=top), [])
    assert len(zlib.compress(body)) < 1 << 20
    r = run_limited("-C", repo, "export-ostree", "meta", "--ostree-repo", os.path.join(work, "out"))
    assert_one_error(r, "ostree-meta", "more than the limit")


def test_checkout_refuses_a_destination_others_control(work, base):
    """An existing empty DEST that another user owns, that others can write, or that has a default ACL is
    refused before anything is created in it (its owner could swap entries for symlinks, or read every file
    through inherited ACL entries)."""
    repo, _ = base
    foreign = os.path.join(work, "foreign")
    os.mkdir(foreign, 0o755)
    os.chown(foreign, 65534, 65534)
    assert_one_error(run_gitree("-C", repo, "checkout", "main", foreign, check=False), "belongs to uid 65534")
    shared = os.path.join(work, "shared")
    os.mkdir(shared)
    os.chmod(shared, 0o777)
    api_error(lambda: api.checkout(repo, "main", shared), "writable by other users")
    acl = os.path.join(work, "acl")
    os.mkdir(acl, 0o755)
    subprocess.run(["setfacl", "-d", "-m", "u:nobody:rwx", acl], check=True)
    api_error(lambda: api.checkout(repo, "main", acl), "default ACL")
    for d in (foreign, shared, acl):
        assert os.listdir(d) == []


def test_tar_output_does_not_inherit_a_default_acl(work, base):
    """checkout --tar FILE in a directory with a default ACL: the file gets no ACL entries for others."""
    repo, _ = base
    d = os.path.join(work, "outdir")
    os.mkdir(d, 0o755)
    subprocess.run(["setfacl", "-d", "-m", "u:nobody:rwx", d], check=True)
    out = os.path.join(d, "root.tar")
    api.checkout_tar(repo, "main", out)
    acl = subprocess.run(["getfacl", "-c", "-n", out], capture_output=True, text=True, check=True).stdout
    assert "user:65534" not in acl, acl


def test_a_destination_gitree_creates_does_not_inherit_a_default_acl(work, base):
    """checkout DEST and clone PATH that gitree creates below a directory with a default ACL: the new
    directory inherited that ACL, so every file written inside got an entry for the other user (an
    existing DEST with one is refused). gitree now removes what its new directory inherited."""
    repo, _ = base
    parent = os.path.join(work, "acl-parent")
    os.mkdir(parent, 0o755)
    subprocess.run(["setfacl", "-d", "-m", "u:nobody:rwx", parent], check=True)
    dest, clone = os.path.join(parent, "co"), os.path.join(parent, "clone.git")
    api.checkout(repo, "main", dest)
    api.clone(repo, clone)
    for top in (dest, clone):
        for d, dirs, files in os.walk(top):
            for p in [d] + [os.path.join(d, n) for n in dirs + files]:
                if os.path.islink(p):
                    continue
                acl = subprocess.run(["getfacl", "-c", "-n", p], capture_output=True, text=True, check=True).stdout
                assert "user:65534" not in acl, (p, acl)
    assert run_gitree("-C", clone, "fsck").returncode == 0


def test_clone_copies_a_local_source_instead_of_borrowing_it(work, base):
    """A clone of a local repository owns its objects (no objects/info/alternates into the source)."""
    repo, _ = base
    dest = os.path.join(work, "clone.git")
    api.clone(repo, dest)
    assert not os.path.exists(os.path.join(dest, "objects", "info", "alternates"))
    api.fsck(dest, check=True)


def test_bundle_whose_tip_is_a_tag_moves_nothing(work, base):
    """A bundle naming an annotated tag as its branch tip is refused: a branch names a commit (a tag there
    would make every later apply to that branch fail)."""
    from test_security_git import hostile_bundle
    repo, cid = base
    tag = subprocess.run(["git", "--git-dir", repo, "mktag"], input=(
        f"object {cid}\ntype commit\ntag v1\ntagger t <t@example.invalid> 1700000000 +0000\n\nv1\n").encode(),
        capture_output=True, check=True).stdout.decode().strip()
    victim = os.path.join(work, "victim.git")
    api.init(victim)
    path = os.path.join(work, "tag.gtb")
    with open(path, "wb") as f:
        f.write(hostile_bundle(repo, tag, b"refs/heads/main"))
    api_error(lambda: api.bundle_apply(victim, path), "not a commit")
    assert subprocess.run(["git", "--git-dir", victim, "for-each-ref"], capture_output=True, text=True,
                          check=True).stdout == ""


def test_log_shows_control_characters_escaped(work, base):
    """Terminal escape sequences (CSI and OSC) in an arriving commit message reach the terminal as text."""
    repo, cid = base
    g = pygit2.Repository(repo)
    c = g[pygit2.Oid(hex=cid)]
    msg = "innocent \x1b]0;owned\x07 \x1b[2J \x9b31m end\n"
    g.create_commit("refs/heads/esc", c.author, c.committer, msg, c.tree_id, [c.id])
    out = run_gitree("-C", repo, "log", "esc").stdout.decode()
    assert "\x1b" not in out and "\x07" not in out and "\x9b" not in out
    assert "\\x1b]0;owned\\x07" in out


def test_pax_header_of_many_tiny_records_is_refused(work):
    """A pax header of 8 MiB of tiny records is bounded by its record count, not read into millions of
    tuples: one line, under the 300 MiB memory limit."""
    import gzip
    from test_tar_fidelity import EOA, header, member
    payload = b"6 a=b\n" * (8_000_000 // 6)
    tar = header(b"PaxHeader", b"x", len(payload)) + payload + b"\0" * (-len(payload) % 512) + member(b"f") + EOA
    path = os.path.join(work, "many.tar.gz")
    with open(path, "wb") as f:
        f.write(gzip.compress(tar))
    assert os.path.getsize(path) < 1 << 20
    repo = os.path.join(work, "r.git")
    api.init(repo)
    assert_one_error(run_limited("-C", repo, "import-rootfs", path, "-b", "main"), "MAX_PAX_RECORDS")


def test_warnings_of_a_tar_are_bounded_in_number_and_length(work):
    """60 members whose pax path is "a" and 8 MB of "/" (a 16 KB tar.zst), each of an unknown type: every
    warning held the member's whole path until the import ended (624 MB). A message now shows a path up to
    PATH_MAX whole, else its start and length, and an import keeps its first 1,000 warnings: 2,000 warned
    members print 1,000 lines and one that counts the rest."""
    from test_tar_fidelity import EOA, member, pax
    path = os.path.join(work, "warn.tar.zst")
    tar = b"".join(pax([(b"path", b"a" + b"/" * 8_000_000)]) + member(b"x", typeflag=b"Z") for _ in range(60))
    with open(path, "wb") as f:
        f.write(subprocess.run(["zstd", "-q", "-19", "-c"], input=tar + EOA, capture_output=True, check=True).stdout)
    assert os.path.getsize(path) < 1 << 20
    repo = os.path.join(work, "r.git")
    api.init(repo)
    r = subprocess.run(GITREE + ["-C", repo, "import-rootfs", path, "-b", "main"], capture_output=True,
                       preexec_fn=limited())
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stderr.decode().splitlines()
    warned = [ln for ln in lines if "unknown member type" in ln]
    assert len(warned) == 60 and all(len(ln) < 400 and "(8000001 bytes)" in ln for ln in warned), lines[:2]
    many = os.path.join(work, "many.tar")
    with open(many, "wb") as f:
        f.write(b"".join(member(b"m%04d" % i, typeflag=b"Z") for i in range(2000)) + EOA)
    res = api.import_rootfs(repo, many, branch="many")
    assert len(res.warnings) == 1001, len(res.warnings)
    assert str(res.warnings[-1]).startswith("1000 more warning(s) not shown"), res.warnings[-1]


def test_a_member_path_deeper_than_the_limit_is_refused_before_it_is_split(work):
    """One member whose pax path is 8 MiB of "ab/" (2.8 million components): its components were all split
    out (427 MB) before the depth limit was checked. They are now counted as they are found: one line,
    under the memory limit."""
    import gzip
    from test_tar_fidelity import EOA, member, pax
    n = (8 << 20) - 100
    path = os.path.join(work, "deep.tar.gz")
    with open(path, "wb") as f:
        f.write(gzip.compress(pax([(b"path", (b"ab/" * (n // 3))[:n])]) + member(b"m") + EOA))
    repo = os.path.join(work, "r.git")
    api.init(repo)
    assert_one_error(run_limited("-C", repo, "import-rootfs", path, "-b", "main"),
                     "deeper than 2048 levels (the depth limit)")


def test_show_names_the_stored_ostree_commit(work, base):
    """An arriving commit may carry an OSTree commit (ostree/commit) that export-ostree writes as it is when
    the tree matches: `gitree show` shows its subject and metadata keys, which `log` does not."""
    import dataclasses

    import gitree_compat as oc
    repo, _ = base
    first = os.path.join(work, "first")
    csum = api.export_ostree(repo, "main", first, ref="x").checksum
    with open(os.path.join(first, "objects", csum[:2], csum[2:] + ".commit"), "rb") as f:
        c = oc.decode_commit(f.read())
    evil = dataclasses.replace(c, subject="not in git \x1b]0;t\x07",
                               metadata=[("ostree.endoflife-rebase", oc.Variant("s", "attacker/ref"))])
    _with_ostree_subtree(repo, "main", [(b"commit", oc.encode_commit(evil))], "imp")
    out = "\n".join(api.show(repo, "imp").lines())
    line = [ln for ln in out.splitlines() if ln.startswith("imported OSTree commit:")]
    assert len(line) == 1 and "ostree.endoflife-rebase" in line[0] and "not in git" in line[0], out
    assert "\x1b" not in out and "\x07" not in out
    assert "imported OSTree commit" not in "\n".join(api.show(repo, "main").lines())


def test_bundle_unwrap_writes_only_a_git_bundle(work, base):
    """`bundle unwrap` checks what it writes as it streams: a zstd frame of 16 KB expanding to 512 MiB of
    zeros is refused at its first line, and a git bundle whose pack trailer is wrong after the last byte;
    either way in one line, with no output file left. Before, both were written out whole."""
    from test_security_git import BUNDLE_MAGIC, _wrap
    repo, _ = base
    out = os.path.join(work, "out.bundle")
    zeros = os.path.join(work, "zeros.gtb")
    z = subprocess.run(["sh", "-c", "head -c 536870912 /dev/zero | zstd -q -19 --long=27 --check -c"],
                       capture_output=True, check=True).stdout
    assert len(z) < 64 << 10
    with open(zeros, "wb") as f:
        f.write(BUNDLE_MAGIC + b"window-log 27\nreference 0 0\n\n" + z)
    r = run_gitree("-C", repo, "bundle", "unwrap", zeros, out, check=False)
    assert_one_error(r, "not a v2 git bundle inside")
    assert not os.path.exists(out)
    gtb, plain = os.path.join(work, "ok.gtb"), os.path.join(work, "ok.bundle")
    api.bundle_create(repo, "main", gtb, branch="main")
    api.bundle_unwrap(repo, gtb, plain)
    with open(plain, "rb") as f:
        good = f.read()
    subprocess.run(["git", "--git-dir", repo, "bundle", "verify", plain], capture_output=True, check=True)
    bad = os.path.join(work, "bad.gtb")
    with open(bad, "wb") as f:
        f.write(_wrap(good[:-1] + bytes([good[-1] ^ 1])))
    r = run_gitree("-C", repo, "bundle", "unwrap", bad, out, check=False)
    assert_one_error(r, "checksum does not match")
    assert not os.path.exists(out)


def _refs(repo: str) -> str:
    return subprocess.run(["git", "--git-dir", repo, "for-each-ref"], capture_output=True, text=True,
                          check=True).stdout


@pytest.mark.parametrize("argv", [("import-rootfs", "{src}", "-b", "fifo"), ("bundle", "apply", "{src}"),
                                  ("bundle", "unwrap", "{src}", "{work}/out.bundle")])
@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_fifo_or_device_as_an_input_file_is_refused(work, base, argv, kind):
    """A tar or bundle path that is a FIFO (no writer: opening it would block forever) or a device
    (/dev/zero reads forever) is refused in one line before it is read; no ref moves. A stream still
    comes in as `-`."""
    repo, _ = base
    if kind == "fifo":
        src = os.path.join(work, "stick.tar")
        os.mkfifo(src)
    else:
        src = "/dev/zero"
    before = _refs(repo)
    r = run_gitree("-C", repo, *[a.format(src=src, work=work) for a in argv], check=False, timeout=60)
    assert_one_error(r, src, "a FIFO" if kind == "fifo" else "a character device", "not a regular file")
    assert _refs(repo) == before and not os.path.exists(os.path.join(work, "out.bundle"))


def test_symlink_to_a_fifo_is_refused_too(work, base):
    """The path is followed (a user may name a tar through a symlink), and what it leads to must be a
    regular file."""
    repo, _ = base
    fifo = os.path.join(work, "fifo")
    os.mkfifo(fifo)
    link = os.path.join(work, "rootfs.tar")
    os.symlink(fifo, link)
    r = run_gitree("-C", repo, "import-rootfs", link, "-b", "fifo", check=False, timeout=60)
    assert_one_error(r, "a FIFO", "pipe it to '-'")


def test_declared_16_tib_sparse_file_is_not_spelled_out_in_a_plain_tar(work):
    """A 4 KB tar declaring one 2^44-byte sparse file (1 byte of data) imports (within MAX_LOGICAL), and
    a directory checkout writes it as a hole; `checkout --tar` without --sparse would stream 16 TiB of
    zeros, so it is refused in one line naming --sparse and the limit, with no output file left. With
    --sparse the member stays sparse and GNU tar reads it back. export-ostree is refused by the same
    limit (OSTree has no sparse files)."""
    from gitree.sparse import MAX_EXPANDED_HOLES, SparseMap
    from gitree.tarformat import TarWriter

    path = os.path.join(work, "sparse16t.tar")
    with open(path, "wb") as f:
        w = TarWriter(f.write)
        w.add(b"./", 0o040000, 0o755, 0, 0)
        w.add(b"./big", 0o100000, 0o644, 0, 0, size=1, sparse=SparseMap(1 << 44, ((0, 1),)))
        w.add_data(b"x")
        w.pad(1)
        w.close()
    assert os.path.getsize(path) <= 4096 * 3
    repo = os.path.join(work, "sp.git")
    run_gitree("-C", repo, "init")
    run_gitree("-C", repo, "import-rootfs", path, "-b", "m")
    out = os.path.join(work, "out.tar")
    r = run_gitree("-C", repo, "checkout", "m", "--tar", out, check=False, timeout=60)
    assert_one_error(r, "big", "--sparse", "MAX_EXPANDED_HOLES", str(MAX_EXPANDED_HOLES))
    assert r.returncode == 5 and sorted(os.listdir(work)) == ["sp.git", "sparse16t.tar"]  # nothing left
    r = run_gitree("-C", repo, "checkout", "m", "--tar", "-", check=False, timeout=60)
    assert_one_error(r, "--sparse")
    run_gitree("-C", repo, "checkout", "m", "--tar", out, "--sparse", timeout=60)
    listing = subprocess.run(["tar", "-tvf", out], capture_output=True, text=True, check=True).stdout
    assert str(1 << 44) in listing, listing
    dest = os.path.join(work, "dest")
    run_gitree("-C", repo, "checkout", "m", dest, timeout=60)
    st = os.stat(os.path.join(dest, "big"))
    assert st.st_size == 1 << 44 and st.st_blocks * 512 < 1 << 20
    # OSTree has no sparse files: an export would hash (and, archive, compress) 16 TiB of zeros, hours of
    # CPU for a 4 KB input; it is refused by the same limit, before any content is produced
    target = os.path.join(work, "os")
    r = run_gitree("-C", repo, "export-ostree", "m", "--ostree-repo", target, "--ref", "r", check=False, timeout=60)
    assert_one_error(r, "big", "OSTree has no sparse files", "MAX_EXPANDED_HOLES")
    assert r.returncode == 5
    assert not os.path.exists(os.path.join(target, "refs", "heads", "r"))


def _stored_commit_variant(work, repo, name, **changes) -> bytes:
    """A commit of main's tree carrying, as ostree/commit, main's own export with `changes` (the OSTree
    commit an attacker publishes); returns those commit bytes."""
    import dataclasses

    import gitree_compat as oc
    first = os.path.join(work, "first-" + name)
    csum = last_line(run_gitree("-C", repo, "export-ostree", "main", "--ostree-repo", first, "--ref", "x"))
    with open(os.path.join(first, "objects", csum[:2], csum[2:] + ".commit"), "rb") as f:
        c = oc.decode_commit(f.read())
    data = oc.encode_commit(dataclasses.replace(
        c, metadata=[("ostree.endoflife-rebase", oc.Variant("s", "attacker/ref"))], **changes))
    _with_ostree_subtree(repo, "main", [(b"commit", data)], name)
    return data


def _arrive(work, repo, name) -> tuple[str, str]:
    """Carry branch `name` in a bundle into a new repository: (that repository, bundle apply's stderr)."""
    gtb = os.path.join(work, name + ".gtb")
    run_gitree("-C", repo, "bundle", "create", name, gtb, "--branch", name)
    victim = os.path.join(work, "victim-" + name + ".git")
    run_gitree("-C", victim, "init")
    r = run_gitree("-C", victim, "bundle", "apply", gtb)
    return victim, r.stderr.decode()


@pytest.mark.parametrize("field,value,why", [("subject", "EVIL subject not in git", "message"),
                                             ("body", "a body git log never showed", "message"),
                                             ("timestamp", 4000000000, "time")])
def test_stored_ostree_commit_is_exported_only_when_git_can_check_it(work, base, field, value, why):
    """Review F2: an arriving commit's ostree/commit whose subject, body or timestamp is not what the git
    commit says (what import-ostree derives) is not published: export writes a new commit from the git
    commit (its message and time; none of the stored metadata) with one warning naming the field."""
    import gitree_compat as oc
    repo, _ = base
    _stored_commit_variant(work, repo, "evil", **{field: value})
    victim, applied = _arrive(work, repo, "evil")
    assert "ostree.endoflife-rebase" in applied, applied
    out = os.path.join(work, "out")
    r = run_gitree("-C", victim, "export-ostree", "evil", "--ostree-repo", out, "--ref", "stable")
    warned = [ln for ln in r.stderr.decode().splitlines() if "writing a new commit" in ln]
    assert len(warned) == 1 and why in warned[0], r.stderr
    csum = last_line(r)
    with open(os.path.join(out, "objects", csum[:2], csum[2:] + ".commit"), "rb") as f:
        published = oc.decode_commit(f.read())
    g = pygit2.Repository(victim)
    c = g.revparse_single("evil")
    assert published.subject == c.message.splitlines()[0] and published.timestamp == c.commit_time
    assert value not in (published.subject, published.body, published.timestamp)
    assert "ostree.endoflife-rebase" not in dict(published.metadata)
    assert "no errors found" in subprocess.run(["ostree", f"--repo={out}", "fsck"], capture_output=True,
                                               text=True, check=True).stdout


def test_stored_ostree_metadata_is_named_by_fsck_and_bundle_apply(work, base):
    """The stored commit's metadata cannot be checked against git, and a genuinely imported history needs it
    to keep its checksums: when everything checkable agrees it is published as it is, and the commands that
    read arriving commits name its keys in one warning (`show` lists them too)."""
    import hashlib
    repo, _ = base
    data = _stored_commit_variant(work, repo, "meta")
    victim, applied = _arrive(work, repo, "meta")
    lines = [ln for ln in applied.splitlines() if "ostree.endoflife-rebase" in ln]
    assert len(lines) == 1 and "bundle apply" in lines[0] and "gitree show" in lines[0], applied
    r = run_gitree("-C", victim, "fsck")
    lines = [ln for ln in r.stderr.decode().splitlines() if "ostree.endoflife-rebase" in ln]
    assert len(lines) == 1 and "fsck" in lines[0], r.stderr
    out = os.path.join(work, "out")
    r = run_gitree("-C", victim, "export-ostree", "meta", "--ostree-repo", out, "--ref", "stable")
    assert last_line(r) == hashlib.sha256(data).hexdigest() and "writing a new commit" not in r.stderr.decode()
    assert "imported OSTree commit" not in run_gitree("-C", repo, "fsck", "main").stderr.decode()
    assert "ostree" not in run_gitree("-C", repo, "fsck", "main").stderr.decode()


def _empty_member(name: bytes) -> bytes:
    """A ustar header of an empty regular file (mode 644, owner 0, mtime 0)."""
    h = bytearray(512)
    h[0:len(name)] = name
    h[100:157] = b"0000644\0" b"0000000\0" b"0000000\0" b"00000000000\0" b"00000000000\0" b"        0"
    h[257:265] = b"ustar  \0"
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


def test_a_tar_of_many_empty_files_imports_under_the_memory_limit(work):
    """A 1 MB tar.bz2 of 450,000 empty files (five directories of 90,000) is a legitimate tree: it imports
    under the 300 MiB address-space limit (docs/security.md, "Import memory"); when an import held ~550
    bytes an entry in memory it ended in MemoryError."""
    n, per_dir = 450_000, 90_000
    path = os.path.join(work, "many.tar.bz2")
    with open(path, "wb") as out:
        p = subprocess.Popen(["bzip2", "-9"], stdin=subprocess.PIPE, stdout=out)
        for start in range(0, n, 10_000):
            p.stdin.write(b"".join(_empty_member(b"d%d/f%d" % (i // per_dir, i)) for i in range(start, start + 10_000)))
        p.stdin.write(bytes(1024))
        p.stdin.close()
        assert p.wait() == 0
    assert os.path.getsize(path) < 1 << 20
    repo = os.path.join(work, "r.git")
    run_gitree("-C", repo, "init")
    r = run_limited("-C", repo, "import-rootfs", path, "-b", "main")
    assert r.returncode == 0, r.stderr.decode()
    listing = run_gitree("-C", repo, "ls", "main", "/d4").stdout.decode().splitlines()
    assert len(listing) == per_dir and listing[0] == "f360000" and listing[-1] == "f449999", listing[:3]


def _member(name: bytes, data: bytes = b"", typeflag: bytes = b"0", link: bytes = b"") -> bytes:
    """A ustar member (mode 644, owner 0, mtime 0) with its data blocks."""
    h = bytearray(512)
    h[0:len(name)] = name
    h[100:157] = (b"0000644\0" b"0000000\0" b"0000000\0" + b"%011o\0" % len(data) + b"00000000000\0"
                  b"        " + typeflag)
    h[157:157 + len(link)] = link
    h[257:265] = b"ustar  \0"
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h) + data + bytes(-len(data) % 512)


def _import_streamed(repo: str, chunks) -> tuple[int, bytes, Timing | None]:
    """`import-rootfs -` of a tar written as it is read (its members in `chunks`), into a new repository,
    under the memory limit: (exit code, stderr, the import's own figures when it succeeded). The import is
    started by the benchmarks' spawner: a child forked from pytest would count pytest's resident size in its
    peak (benchmarks/measure.py says why; late in a full run that alone passed 160 MiB)."""
    run_gitree("-C", repo, "init")
    report = os.path.join(os.path.dirname(repo), "measure")
    p = subprocess.Popen(measured(GITREE + ["-q", "-C", repo, "import-rootfs", "-", "-b", "main"], report),
                         stdin=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=limited(),
                         start_new_session=True)
    try:
        for chunk in chunks:
            p.stdin.write(chunk)
        p.stdin.write(bytes(1024))
        p.stdin.close()
        err = p.stderr.read()
        status = p.wait()
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)   # the spawner and the import it started, if still there
        except ProcessLookupError:
            pass
        p.wait()
    return status, err, read_measure(report) if status == 0 else None


def test_an_import_of_many_distinct_files_keeps_its_memory_bounded(work):
    """650,000 files of distinct content (1 to 5 bytes: what a 778 KB tar.xz holds), 20,000 hard links
    and 20,000 empty directories import under the 300 MiB address-space limit, with a peak resident size
    far below it: the tree being built and the new pack's object ids are kept in scratch databases on disk
    (gitree/scratch.py), so the import's memory no longer grows with its entries. In memory it peaked at
    481 MB and ended in MemoryError. The tar is made as it is read, on stdin (`-`)."""
    n = 650_000
    repo = os.path.join(work, "r.git")
    # the chunks are made as they are written: the child's peak resident size counts what the test
    # process held when it forked
    status, err, usage = _import_streamed(repo, itertools.chain(
        (b"".join(_member(b"d%d/f%d" % (i // 100_000, i), b"%x" % i) for i in range(start, min(n, start + 10_000)))
         for start in range(0, n, 10_000)),
        (b"".join(_member(b"links/l%d" % i, typeflag=b"1", link=b"d0/f%d" % (i * 3)) for i in range(20_000)),
         b"".join(_member(b"e/%d" % i, typeflag=b"5") for i in range(20_000)))))
    assert status == 0, err.decode()
    assert usage.peak_rss_mib < 160, f"peak resident size {usage.peak_rss_mib} MiB"
    assert len(api.ls(repo, "main", "/d6").items) == 50_000
    assert len(api.ls(repo, "main", "/e").items) == 20_000
    links = api.ls(repo, "main", "/links").items
    assert len(links) == 20_000
    assert [i.entry.hardlink for i in links[:3]] == [b"d0/f0", b"d0/f3", b"d0/f30"], links[:3]
    show = subprocess.run(["git", "--git-dir", repo, "cat-file", "-p", "main:rootfs/d6/f649999"],
                          capture_output=True, check=True).stdout
    assert show == b"%x" % 649_999
    # and the export of that tree stays under the limit too: directories are finished as they are planned
    # (docs/security.md, "Export memory"); it needed 855 MB when the plan of the whole tree was held
    target = os.path.join(work, "os")
    r = run_limited("-C", repo, "export-ostree", "main", "--ostree-repo", target, "--ref", "r", timeout=900)
    assert r.returncode == 0, r.stderr.decode()
    listing = subprocess.run(["ostree", f"--repo={target}", "ls", "r", "/d6"], capture_output=True, text=True,
                             check=True).stdout.splitlines()
    assert len(listing) == 50_001 and listing[-1].endswith("/d6/f649999"), listing[-3:]
    cat = subprocess.run(["ostree", f"--repo={target}", "cat", "r", "/links/l10"], capture_output=True,
                         check=True).stdout
    assert cat == b"%x" % 30


def test_one_directory_of_the_most_entries_exports_under_the_memory_limit(work):
    """One directory of MAX_DIR_ENTRIES distinct files (a tar of them compresses to a few hundred KB) is
    the largest directory the reader takes: it imports, is checked, and exports to OSTree under the
    300 MiB address-space limit. The export plans such a directory as two flat lists (name, checksum) and
    reads it with one object per name; it peaked at 411 MB resident when each file's plan was a tuple
    with a pending write."""
    from gitree import limits
    n = limits.MAX_DIR_ENTRIES
    repo = os.path.join(work, "r.git")
    status, err, _ = _import_streamed(repo, (b"".join(_member(b"d/%d" % i, b"%x" % i)
                                                      for i in range(start, min(n, start + 10_000)))
                                             for start in range(0, n, 10_000)))
    assert status == 0, err.decode()
    r = run_limited("-C", repo, "fsck", timeout=600)
    assert r.returncode == 0, r.stderr.decode()
    target = os.path.join(work, "os")
    r = run_limited("-C", repo, "export-ostree", "main", "--ostree-repo", target, "--ref", "r", timeout=900)
    assert r.returncode == 0, r.stderr.decode()
    listing = subprocess.run(["ostree", f"--repo={target}", "ls", "r", "/d"], capture_output=True, text=True,
                             check=True).stdout.splitlines()
    assert len(listing) == n + 1 and listing[-1].endswith("/d/99999"), listing[-3:]
    for i in (0, 77_777, n - 1):
        cat = subprocess.run(["ostree", f"--repo={target}", "cat", "r", f"/d/{i}"], capture_output=True,
                             check=True).stdout
        assert cat == b"%x" % i


def test_import_refuses_more_entries_in_a_directory_than_the_reader_takes(work):
    """A tree the reader refuses (more than MAX_DIR_ENTRIES entries in one directory) is not made by an
    import either: the import stops at the first entry past the limit, naming it."""
    from gitree import limits
    from gitree.entry import Entry, Kind
    from gitree.errors import BadInput
    from gitree.repo import Repo
    repo = os.path.join(work, "r.git")
    run_gitree("-C", repo, "init")
    with Repo(repo).transaction() as tx:
        for i in range(limits.MAX_DIR_ENTRIES):
            tx.add(Entry(b"d/f%d" % i, Kind.FILE))
        with pytest.raises(BadInput, match="MAX_DIR_ENTRIES"):
            tx.add(Entry(b"d/one-more", Kind.FILE))
        tx.add(Entry(b"d/f0", Kind.FILE, 0o600))   # replacing an entry adds none


def _replace_in(g: pygit2.Repository, tree_oid: bytes, path: list[bytes], oid: bytes) -> bytes:
    """Tree `tree_oid` with the entry at `path` pointing at `oid` (every tree on the way rewritten)."""
    t = g[pygit2.Oid(raw=tree_oid)]
    ents = [(b"%o" % e.filemode, e.name.encode(), e.id.raw) for e in t]
    new = _replace_in(g, dict((n, o) for _, n, o in ents)[path[0]], path[1:], oid) if len(path) > 1 else oid
    return write_tree(g, [(m, n, new if n == path[0] else o) for m, n, o in ents])


def _bundle_file(work: str, repo: str, tip: str) -> str:
    """A gitree bundle of `tip` and its history, made as an attacker would (git's pack, no deltas)."""
    from test_security_git import _wrap
    pack = subprocess.run(["git", "--git-dir", repo, "pack-objects", "--stdout", "--revs", "-q", "--window=0"],
                          input=tip.encode() + b"\n", capture_output=True, check=True).stdout
    path = os.path.join(work, "chain.gtb")
    with open(path, "wb") as f:
        f.write(_wrap(b"# v2 git bundle\n" + tip.encode() + b" refs/heads/evil\n\n" + pack))
    return path


def test_a_bundle_of_commits_changing_one_file_each_reads_each_directory_once(work):
    """2,000 commits whose trees differ by one file each cost a whole-tree walk each when every commit is
    verified alone (a 176 KB bundle kept `bundle apply` busy for 14 minutes). Directories already verified
    by the batch are not read again: the work is the new directories', not commits times tree size."""
    import stat

    from test_security_git import make_tar

    from gitree.repo import Repo
    from gitree.transport import bundle
    from gitree.treeread import ReadCount
    n_dirs, n_files, n_commits = 40, 25, 200
    src = os.path.join(work, "src.git")
    members = [(b"./", stat.S_IFDIR, 0o755)] + [
        m for d in range(n_dirs) for m in [(b"./d%02d/" % d, stat.S_IFDIR, 0o755)] +
        [(b"./d%02d/f%02d" % (d, f), stat.S_IFREG, 0o644, {"data": b""}) for f in range(n_files)]]
    run_gitree("-C", src, "init")
    base = last_line(run_gitree("-C", src, "import-rootfs", make_tar(os.path.join(work, "t.tar"), members),
                                "-b", "main"))
    g = pygit2.Repository(src)
    tip = g[pygit2.Oid(hex=base)]
    sig = pygit2.Signature("t", "t@example.invalid", 1700000000, 0)
    for i in range(n_commits):
        top = _replace_in(g, tip.tree_id.raw, [b"rootfs", b"d%02d" % (i % n_dirs), b"f00"], blob(g, b"%d" % i))
        tip = g[g.create_commit(None, sig, sig, "c\n", pygit2.Oid(raw=top), [tip.id])]
    path = _bundle_file(work, src, str(tip.id))
    dst = os.path.join(work, "dst.git")
    run_gitree("-C", dst, "init")
    before = ReadCount.dirs
    assert bundle.apply(Repo(dst), path)[2] == tip.id.raw
    read = ReadCount.dirs - before
    # the base commit: its 41 directories; each later commit: its root and the directory it changed
    assert read <= (n_dirs + 1) + 2 * n_commits + 10, read
    assert read < (n_commits + 1) * (n_dirs + 1) // 10


def _chain(g: pygit2.Repository, levels: int) -> tuple[bytes, bytes]:
    """(content, meta) of a directory with `levels` directories nested below it, each named `a`."""
    from test_security_git import table
    content, meta = write_tree(g, []), write_tree(g, [(MODE_FILE, b".gitree", blob(g, table()))])
    for _ in range(levels):
        content = write_tree(g, [(MODE_DIR, b"a", content)])
        meta = write_tree(g, [(MODE_DIR, b"a", meta), (MODE_FILE, b".gitree", blob(g, table(b"a d 755 0 0")))])
    return content, meta


def test_a_directory_verified_by_an_earlier_commit_is_checked_again_where_it_is_too_deep(work, base):
    """A directory an earlier commit of the bundle verified is skipped only where the depth limit lets it
    be: the same 2,047-level chain is legal at the top and too deep one level further down."""
    from gitree.limits import MAX_TREE_DEPTH
    repo, cid = base
    g = pygit2.Repository(repo)
    c0 = g[pygit2.Oid(hex=cid)]
    content, meta = _chain(g, MAX_TREE_DEPTH - 1)          # its top directory at level 1 is fine
    top_ents = {e.name.encode(): (b"%o" % e.filemode, e.id.raw) for e in c0.tree}
    sig = pygit2.Signature("t", "t@example.invalid", 1700000000, 0)

    def commit_with(root_content: bytes, root_meta: bytes, parent) -> pygit2.Commit:
        ents = [(m, n, o) for n, (m, o) in top_ents.items() if n not in (b"rootfs", b"meta")]
        top = write_tree(g, ents + [(MODE_DIR, b"rootfs", root_content), (MODE_DIR, b"meta", root_meta)])
        return g[g.create_commit(None, sig, sig, "c\n", pygit2.Oid(raw=top), [parent.id])]

    from test_security_git import table
    t = blob(g, table(b"x d 755 0 0"))
    first = commit_with(write_tree(g, [(MODE_DIR, b"x", content)]),
                        write_tree(g, [(MODE_DIR, b"x", meta), (MODE_FILE, b".gitree", t)]), c0)
    wrap_c, wrap_m = write_tree(g, [(MODE_DIR, b"x", content)]), \
        write_tree(g, [(MODE_DIR, b"x", meta), (MODE_FILE, b".gitree", t)])
    y_table = blob(g, table(b"y d 755 0 0"))
    second = commit_with(write_tree(g, [(MODE_DIR, b"y", wrap_c)]),
                         write_tree(g, [(MODE_DIR, b"y", wrap_m), (MODE_FILE, b".gitree", y_table)]), first)
    run_gitree("-C", repo, "fsck", str(first.id))
    path = _bundle_file(work, repo, str(second.id))
    dst = os.path.join(work, "dst.git")
    run_gitree("-C", dst, "init")
    assert_one_error(run_limited("-C", dst, "bundle", "apply", path), "depth limit")
    assert "evil" not in _refs(dst)


def test_a_directory_held_at_several_places_is_checked_once(work):
    """One subtree (a 20-level chain) placed under 8 names of the root: the check every command runs before
    it writes (verify) reads it once, not once per place (a 74 KB bundle naming one 100,000-entry tree 8
    times cost 8 walks), and so does fsck (it reads again only a subtree where it found a fault, to list it
    at every place); both accept it and a checkout writes all 8 copies."""
    from test_security_git import commit, directory

    from gitree.repo import Repo
    from gitree.treeread import ReadCount
    repo = os.path.join(work, "shared.git")
    api.init(repo)
    g = pygit2.Repository(repo)
    sub_c, sub_m = _chain(g, 20)
    names = [b"d%d" % i for i in range(8)]
    root = directory(g, [n + b" d 755 0 0" for n in names], [(MODE_DIR, n, sub_c) for n in names],
                     [(MODE_DIR, n, sub_m) for n in names])
    cid = commit(repo, root)
    r = Repo(repo)
    before = ReadCount.dirs
    r.verify(r.resolve(cid))
    assert ReadCount.dirs - before == 1 + 21, ReadCount.dirs - before   # the root, then the chain once
    before = ReadCount.dirs
    assert api.fsck(repo, [cid]).problems == []
    assert ReadCount.dirs - before == 1 + 21, ReadCount.dirs - before
    dest = os.path.join(work, "co")
    api.checkout(repo, cid, dest)
    assert all(os.path.isdir(os.path.join(dest, n.decode(), *["a"] * 20)) for n in names)
    # a faulty subtree at several places is listed by fsck at each of them
    bad = directory(g, [b"ghost f 644 0 0"], [])
    root = directory(g, [n + b" d 755 0 0" for n in names], [(MODE_DIR, n, bad[0]) for n in names],
                     [(MODE_DIR, n, bad[1]) for n in names])
    problems = api.fsck(repo, [commit(repo, root)]).problems
    assert sorted(p.path for p in problems) == [n + b"/ghost" for n in names], problems


def _linked_tree(g: pygit2.Repository, depth: int, leaders: int, links: int, places: int,
                 distinct: bool) -> tuple[bytes, bytes]:
    """A root of `a` (a chain `depth` levels deep ending in files f0..f<leaders-1>) and `z`, which holds one
    subtree at `places` names, each with `links` hard links: all to f0, or (`distinct`) each to its own f<i>."""
    from test_security_git import directory
    data = blob(g, b"leader\n")
    names = [b"f%03d" % i for i in range(leaders)]
    node = directory(g, [n + b" f 644 0 0" for n in names], [(MODE_FILE, n, data) for n in names])
    for _ in range(depth - 1):
        node = directory(g, [b"a d 755 0 0"], [(MODE_DIR, b"a", node[0])], [(MODE_DIR, b"a", node[1])])
    deep = b"/".join([b"a"] * depth)
    lnames = [b"l%03d" % i for i in range(links)]
    sub = directory(g, [n + b" f 644 0 0 h=" + deep + b"/f%03d" % (i if distinct else 0) for i, n in enumerate(lnames)],
                    [(MODE_FILE, n, data) for n in lnames])
    pnames = [b"s%03d" % i for i in range(places)]
    z = directory(g, [n + b" d 755 0 0" for n in pnames], [(MODE_DIR, n, sub[0]) for n in pnames],
                  [(MODE_DIR, n, sub[1]) for n in pnames])
    return directory(g, [b"a d 755 0 0", b"z d 755 0 0"], [(MODE_DIR, b"a", node[0]), (MODE_DIR, b"z", z[0])],
                     [(MODE_DIR, b"a", node[1]), (MODE_DIR, b"z", z[1])])


def test_links_to_a_deep_leader_cost_reads_by_directory_not_by_link(work):
    """10,000 hard links (a subtree of 100 at 100 places) to one leader 100 levels deep. Each link used to
    look its leader up from the root through a cache of 64 directories (10^6 directory reads here; a 56 KB
    bundle of 10^6 links 1,000 deep took about 10 hours): now each target is looked up once, and a subtree
    whose links were checked is not read again at a later place of the same commit."""
    from test_security_git import commit

    from gitree.repo import Repo
    from gitree.treeread import ReadCount
    repo = os.path.join(work, "links.git")
    api.init(repo)
    g = pygit2.Repository(repo)
    cid = commit(repo, _linked_tree(g, 100, 1, 100, 100, distinct=False))
    r = Repo(repo)
    before = ReadCount.dirs
    r.verify(r.resolve(cid))
    # walked: the root, the chain, z, the subtree once; looked up once: the root and the chain
    assert ReadCount.dirs - before <= 1 + 100 + 1 + 1 + 1 + 100, ReadCount.dirs - before
    before = ReadCount.dirs
    assert api.fsck(repo, [cid]).problems == []
    assert ReadCount.dirs - before <= 204, ReadCount.dirs - before
    before = ReadCount.dirs
    items = api.ls(repo, cid, recursive=True).items
    assert len(items) == 1 + 100 + 1 + 1 + 100 * 101, len(items)
    # a listing reads the subtree at each place (it yields its entries), the chain twice (walk, lookup)
    assert ReadCount.dirs - before <= 1 + 100 + 1 + 100 + 1 + 100, ReadCount.dirs - before
    path = _bundle_file(work, repo, cid)
    dst = os.path.join(work, "dst.git")
    run_gitree("-C", dst, "init")
    assert run_limited("-C", dst, "bundle", "apply", path).returncode == 0
    dest = os.path.join(work, "co")
    api.checkout(repo, cid, dest)
    st = os.stat(os.path.join(dest, "z", "s099", "l099"))
    assert st.st_nlink == 1 + 100 * 100
    assert os.path.samestat(st, os.stat(os.path.join(dest, *["a"] * 100, "f000")))


def test_leader_lookups_past_their_work_limit_are_refused(work, monkeypatch):
    """Links to distinct leaders deep down each cost a lookup of their own: the steps and rows they take
    in one walk are bounded (limits.MAX_LEADER_WORK), refused in one line that names the limit. Here 100
    targets 100 levels deep take about 10,000 steps; with the limit at 5,000 every reader refuses them."""
    from test_security_git import commit

    from gitree import limits
    repo = os.path.join(work, "leaders.git")
    api.init(repo)
    g = pygit2.Repository(repo)
    cid = commit(repo, _linked_tree(g, 100, 100, 100, 1, distinct=True))
    assert api.fsck(repo, [cid]).problems == []
    monkeypatch.setattr(limits, "MAX_LEADER_WORK", 5000)
    problems = api.fsck(repo, [cid]).problems
    assert len(problems) == 1 and "hard-link leaders" in problems[0].message and "5000" in problems[0].message, problems
    api_error(lambda: api.checkout(repo, cid, os.path.join(work, "co")), "the limit of one walk")


def test_a_subtree_of_links_skipped_at_a_later_place_is_checked_again_in_another_commit(work):
    """One subtree S of hard links to a/f at q/s and r/s: in one commit r/s is not read again, but r is
    then no directory without links to remember for the other commits of a bundle. The tip (verified
    first) is valid; its parent holds only a and r, with a different a/f, so the link disagrees."""
    from test_security_git import commit, directory
    repo = os.path.join(work, "later.git")
    api.init(repo)
    g = pygit2.Repository(repo)
    good, bad = blob(g, b"leader\n"), blob(g, b"other\n")
    sub = directory(g, [b"l f 644 0 0 h=a/f"], [(MODE_FILE, b"l", good)])
    wrap = directory(g, [b"s d 755 0 0"], [(MODE_DIR, b"s", sub[0])], [(MODE_DIR, b"s", sub[1])])

    other = directory(g, [b"s d 755 0 0", b"x f 644 0 0"], [(MODE_DIR, b"s", sub[0]), (MODE_FILE, b"x", good)],
                      [(MODE_DIR, b"s", sub[1])])    # q: S and a file, so r is another directory

    def root(data: bytes, names: list[bytes]) -> tuple[bytes, bytes]:
        trees = [directory(g, [b"f f 644 0 0"], [(MODE_FILE, b"f", data)])] + [other, wrap][3 - len(names):]
        pairs = list(zip(names, trees, strict=True))
        return directory(g, [n + b" d 755 0 0" for n in names], [(MODE_DIR, n, t[0]) for n, t in pairs],
                         [(MODE_DIR, n, t[1]) for n, t in pairs])

    parent = commit(repo, root(bad, [b"a", b"r"]))
    tip = commit(repo, root(good, [b"a", b"q", b"r"]), parents=[parent])
    assert api.fsck(repo, [tip]).problems == []
    assert [p.path for p in api.fsck(repo, [parent]).problems] == [b"r/s/l"]
    path = _bundle_file(work, repo, tip)
    dst = os.path.join(work, "dst.git")
    run_gitree("-C", dst, "init")
    assert_one_error(run_limited("-C", dst, "bundle", "apply", path), "hard link disagrees with /a/f")
    assert _refs(dst) == ""


def test_diff_of_trees_past_the_entry_limit_is_refused(work):
    """Two commits of one subtree shared at 64^5 places (5 levels of 64 names), differing in the one file
    at the bottom: a diff used to print a line per place, 10^9 of them. The diff counts what each side
    reads against the entry limit, and counts both trees whole (each directory once) as soon as a pair of
    directories comes back, so the refusal comes at once."""
    from test_security_git import commit, directory
    repo = os.path.join(work, "bomb.git")
    api.init(repo)
    g = pygit2.Repository(repo)
    names = [b"z%02d" % i for i in range(64)]
    tips = []
    for data in (b"one\n", b"two\n"):
        node = directory(g, [b"f f 644 0 0"], [(MODE_FILE, b"f", blob(g, data))])
        for _ in range(5):
            node = directory(g, [n + b" d 755 0 0" for n in names], [(MODE_DIR, n, node[0]) for n in names],
                             [(MODE_DIR, n, node[1]) for n in names])
        tips.append(commit(repo, node))
    res = run_limited("-C", repo, "diff", *tips, timeout=120)
    assert_one_error(res, "entries (the limit of one walk)")
    assert len(res.stdout.splitlines()) < 100


def test_nested_directories_of_the_largest_size_are_bounded_together(work):
    """Directories of MAX_DIR_ENTRIES entries nested in one another (three of them: a 16 KB bundle): a walk
    holds every directory open on its path, so fsck peaked at 336 MB and a checkout ran out of memory under
    the 300 MiB limit. The rows open on one path are bounded (MAX_OPEN_ENTRIES: one such directory and
    4,096 more): every command refuses the second in one line, under the limit; one checks out."""
    from test_security_git import commit, directory

    from gitree.limits import MAX_DIR_ENTRIES, MAX_OPEN_ENTRIES
    repo = os.path.join(work, "wide.git")
    api.init(repo)
    g = pygit2.Repository(repo)
    data = blob(g, b"x")
    names = [b"f%06d" % i for i in range(MAX_DIR_ENTRIES - 1)]
    rows, files = [n + b" f 644 0 0" for n in names], [(MODE_FILE, n, data) for n in names]
    node = directory(g, rows, files)
    tips = [commit(repo, node)]
    for _ in range(2):
        node = directory(g, rows + [b"z d 755 0 0"], files + [(MODE_DIR, b"z", node[0])], [(MODE_DIR, b"z", node[1])])
        tips.append(commit(repo, node))
    one, two, three = tips
    words = f"more than {MAX_OPEN_ENTRIES} entries (the limit of one walk)"
    for rev in (two,):
        for cmd in (["checkout", rev, "--tar", os.path.join(work, "o.tar")],
                    ["export-ostree", rev, "--ostree-repo", os.path.join(work, "os"), "--ref", "x"]):
            assert_one_error(run_limited("-C", repo, *cmd), words)
        r = run_limited("-C", repo, "fsck", rev)
        assert_one_error(r, "fsck found 1 problem(s)")
        assert words in r.stdout.decode(), r.stdout
    path = _bundle_file(work, repo, three)
    assert os.path.getsize(path) < 1 << 20
    dst = os.path.join(work, "dst.git")
    run_gitree("-C", dst, "init")
    assert_one_error(run_limited("-C", dst, "bundle", "apply", path), words)
    r = run_limited("-C", repo, "checkout", one, "--tar", os.path.join(work, "one.tar"))
    assert r.returncode == 0, r.stderr.decode()


def _big_xattr_row() -> bytes:
    """A directory's own row carrying 250 xattrs of 64 KiB (16 MiB: within every per-row limit)."""
    return b". d 755 0 0" + b"".join(b" x=user.a%03d=" % i + b"A" * 65536 for i in range(250))


def test_directories_with_large_side_tables_count_by_their_bytes(work):
    """What a walk holds open, and what a hard-link lookup reads, are counted by side-table bytes too, not
    only by rows: a chain of 30 directories sharing one 16 MiB side table of a single row (a 4 KB bundle)
    held 480 MB on one path, and 40 links to a leader in a directory of such a table, at 40 places
    (a 3 KB bundle), parsed it once per link and kept up to 2,000 copies. Both are bounded under the
    300 MiB limit: the chain is refused in one line, the links apply."""
    from test_security_git import commit, directory, table
    repo = os.path.join(work, "xattr.git")
    api.init(repo)
    g = pygit2.Repository(repo)
    mid = blob(g, table(b"a d 755 0 0", self_row=_big_xattr_row()))
    node = (write_tree(g, []), write_tree(g, [(MODE_FILE, b".gitree", blob(g, table(self_row=_big_xattr_row())))]))
    for _ in range(30):
        node = (write_tree(g, [(MODE_DIR, b"a", node[0])]),
                write_tree(g, [(MODE_FILE, b".gitree", mid), (MODE_DIR, b"a", node[1])]))
    chain = commit(repo, node)
    data = blob(g, b"leader\n")
    x = (write_tree(g, [(MODE_FILE, b"f", data)]),
         write_tree(g, [(MODE_FILE, b".gitree", blob(g, table(b"f f 644 0 0", self_row=_big_xattr_row())))]))
    bn = [b"b%03d" % i for i in range(40)]
    a = directory(g, [b + b" d 755 0 0" for b in bn], [(MODE_DIR, b, x[0]) for b in bn],
                  [(MODE_DIR, b, x[1]) for b in bn])
    z = directory(g, [b"l%03d f 644 0 0 h=a/%s/f" % (i, b) for i, b in enumerate(bn)],
                  [(MODE_FILE, b"l%03d" % i, data) for i in range(40)])
    links = commit(repo, directory(g, [b"a d 755 0 0", b"z d 755 0 0"],
                                   [(MODE_DIR, b"a", a[0]), (MODE_DIR, b"z", z[0])],
                                   [(MODE_DIR, b"a", a[1]), (MODE_DIR, b"z", z[1])]))
    for tip, ok in ((chain, False), (links, True)):
        _apply_under_the_limit(work, repo, tip, ok)


def _apply_under_the_limit(work: str, repo: str, tip: str, ok: bool) -> None:
    """`bundle apply` of a bundle (under 1 MB) of `tip` under the 300 MiB limit: it succeeds, or (not `ok`)
    is refused in one line by the open-path bound."""
    path = _bundle_file(work, repo, tip)
    assert os.path.getsize(path) < 1 << 20
    dst = os.path.join(work, f"dst-{tip[:8]}.git")
    run_gitree("-C", dst, "init")
    r = run_limited("-C", dst, "bundle", "apply", path, "--branch", "main")
    if ok:
        assert r.returncode == 0, r.stderr.decode()
    else:
        assert_one_error(r, "the directories open on one path hold more than")


def _shared_big_table_dir(g, places: int, links: bool) -> tuple[bytes, bytes]:
    """A root naming one directory x (a 16 MiB side table, one file f) at `places` names under a/, and
    with `links` a directory z of hard links to each place's f (leaders in distinct paths of one x)."""
    from test_security_git import directory, table
    data = blob(g, b"leader\n")
    x = (write_tree(g, [(MODE_FILE, b"f", data)]),
         write_tree(g, [(MODE_FILE, b".gitree", blob(g, table(b"f f 644 0 0", self_row=_big_xattr_row())))]))
    bn = [b"b%04d" % i for i in range(places)]
    a = directory(g, [b + b" d 755 0 0" for b in bn], [(MODE_DIR, b, x[0]) for b in bn],
                  [(MODE_DIR, b, x[1]) for b in bn])
    names, content, metas = [b"a d 755 0 0"], [(MODE_DIR, b"a", a[0])], [(MODE_DIR, b"a", a[1])]
    if links:
        z = directory(g, [b"l%04d f 644 0 0 h=a/%s/f" % (i, b) for i, b in enumerate(bn)],
                      [(MODE_FILE, b"l%04d" % i, data) for i in range(places)])
        names.append(b"z d 755 0 0")
        content.append((MODE_DIR, b"z", z[0]))
        metas.append((MODE_DIR, b"z", z[1]))
    return directory(g, names, content, metas)


def test_a_directory_named_at_many_places_is_parsed_once_per_walk(work):
    """A walk keeps the directories it read by their objects (treeread.NodeCache), so one directory of a
    16 MiB side table named at 1,000 places is inflated and parsed once: `ls -R` took 77 s (64 s CPU),
    and 3,000 hard links to leaders in such directories (a 4.7 KB bundle) were refused at
    MAX_LEADER_WORK after 21 s. Both now take well under a second of reads."""
    from test_security_git import commit

    from gitree.treeread import ReadCount
    repo = os.path.join(work, "places.git")
    api.init(repo)
    g = pygit2.Repository(repo)
    tip = commit(repo, _shared_big_table_dir(g, 1000, links=False))
    before = ReadCount.dirs
    # the root, a, and x and f at each place
    assert sum(1 for _ in api.ls_iter(repo, tip, recursive=True)) == 2 + 1000 * 2
    assert ReadCount.dirs - before <= 4, ReadCount.dirs - before    # root, a, x (and a check's reads)
    tip = commit(repo, _shared_big_table_dir(g, 3000, links=True))
    path = _bundle_file(work, repo, tip)
    assert os.path.getsize(path) < 1 << 20
    dst = os.path.join(work, "dst.git")
    run_gitree("-C", dst, "init")
    r = run_limited("-C", dst, "bundle", "apply", path, "--branch", "main")
    assert r.returncode == 0, r.stderr.decode()
    before = ReadCount.dirs
    assert api.fsck(dst, ["main"]).problems == []
    assert ReadCount.dirs - before <= 8, ReadCount.dirs - before


def test_directories_of_sparse_maps_count_by_their_segments(work):
    """A sparse segment or an xattr decodes to a Python tuple of about 100 bytes from some 10 bytes of
    table: directories sharing a 5 MB side table of 10 maps of 65,536 segments each decode to 58 MiB, which
    weighed 10,446 units (bytes / 512) instead of about 230,000. A directory's weight counts the segments
    and xattrs of a row beyond two: four such siblings apply under the 300 MiB limit (the directories a walk
    keeps let go of them), and a table of 20 such maps is refused by MAX_OPEN_ENTRIES, in one line, where
    it ran out of memory."""
    from test_security_git import commit

    from gitree import sidetable, sparse
    from gitree.entry import Kind
    repo = os.path.join(work, "sparse.git")
    api.init(repo)
    g = pygit2.Repository(repo)
    m = sparse.SparseMap(2 * 65536 + 1, tuple((2 * i, 1) for i in range(65536)))
    self_row = sidetable.Row(sidetable.SELF, Kind.DIR, 0o755, 0, 0, None, None, None, (), None)
    for dirs, files, ok in ((4, 10, True), (3, 20, False)):
        names = [b"f%03d" % i for i in range(files)]
        rows = [sidetable.Row(n, Kind.FILE, 0o644, 0, 0, None, None, None, (), m) for n in names]
        meta = write_tree(g, [(MODE_FILE, b".gitree", blob(g, sidetable.encode_table(self_row, rows)))])
        dn = [b"d%02d" % k for k in range(dirs)]
        contents = [write_tree(g, [(MODE_FILE, n, blob(g, bytes([k + 1]) * 65536)) for n in names])
                    for k in range(dirs)]
        table = b"gitree-dirtable 1\n. d 755 0 0\n" + b"".join(d + b" d 755 0 0\n" for d in dn)
        top = (write_tree(g, [(MODE_DIR, d, c) for d, c in zip(dn, contents, strict=True)]),
               write_tree(g, [(MODE_FILE, b".gitree", blob(g, table))] + [(MODE_DIR, d, meta) for d in dn]))
        _apply_under_the_limit(work, repo, commit(repo, top), ok)


def test_member_paths_normalize_as_a_split_would():
    """normalize_member_path finds components with a regular expression; it must agree with splitting at
    "/" and dropping "" and "." for every input - a name ".\\n" included ("$" matches before a final
    newline: "./etc/.\\n" became "etc", a directory turned into another one's entry)."""
    import random

    from gitree.errors import BadInput, UnsafePath
    from gitree.names import normalize_member_path

    def by_split(raw: bytes) -> bytes:
        parts = [c for c in raw.split(b"/") if c not in (b"", b".")]
        if any(c == b".." or b"\0" in c for c in parts) or len(parts) > 2048:
            raise UnsafePath("x")
        return b"/".join(parts)

    rng = random.Random(9)
    cases = [b"a/.\n", b".\n", b"./etc/.\n", b"\n.", b"./.", b"a/./b/", b"...", b"a/..b", b"/" * 5]
    cases += [bytes(rng.choice(b"a./\n\0\xff") for _ in range(rng.randrange(12))) for _ in range(20000)]
    for raw in cases:
        try:
            want = by_split(raw)
        except UnsafePath:
            with pytest.raises((UnsafePath, BadInput)):
                normalize_member_path(raw)
            continue
        assert normalize_member_path(raw) == want, raw
    assert normalize_member_path(b"a/" * 2047 + b"b").count(b"/") == 2047
    with pytest.raises(BadInput):
        normalize_member_path(b"a/" * 2048 + b"b")
