"""Tests added by a mutation audit of the issue-9 defenses: each fails when the one check it names is
switched off (an earlier test of the same defense passed anyway, or there was none)."""
# ruff: noqa: F811  (fixtures imported from the test modules that define them)

import io
import os
import subprocess
import tarfile

import pygit2
import pytest
from helpers import run_gitree
from test_export_cache import _assert_ships_v2, _objfile, _two_versions, _want, ostree
from test_safety import refs
from test_security_git import (MODE_DIR, MODE_FILE, _pack, _wrap, assert_one_error,  # noqa: F401
                               assert_refused_everywhere, base, blob, commit, root_with, run_limited, table,
                               write_tree)
from test_security_review import _bundle_file, _chain, _refs

from gitree import api, outfile
from gitree import exportcache as ec
from gitree.packwriter import OBJ_COMMIT
from gitree.repo import Repo


def test_tree_entry_without_a_row_is_refused(work, base):
    """A file in the content tree the side table does not list: git show shows it, checkout would not write it."""
    repo, cid = base
    g = pygit2.Repository(repo)
    root = root_with(repo, cid, [], [(MODE_FILE, b"hidden", blob(g, b"only git shows me\n"))])
    assert_refused_everywhere(work, repo, commit(repo, root), "not in the side table", base_cid=cid)


def test_too_deep_placement_in_the_older_commit(work, base):
    """As test_a_directory_verified_by_an_earlier_commit_is_checked_again_where_it_is_too_deep, but the legal
    placement is the tip and the too-deep one its parent: the tip is verified first, so the parent's check
    meets the chain as already verified."""
    from gitree.limits import MAX_TREE_DEPTH
    repo, cid = base
    g = pygit2.Repository(repo)
    c0 = g[pygit2.Oid(hex=cid)]
    content, meta = _chain(g, MAX_TREE_DEPTH - 1)
    top_ents = {e.name.encode(): (b"%o" % e.filemode, e.id.raw) for e in c0.tree}
    sig = pygit2.Signature("t", "t@example.invalid", 1700000000, 0)

    def commit_with(root_content, root_meta, parent):
        ents = [(m, n, o) for n, (m, o) in top_ents.items() if n not in (b"rootfs", b"meta")]
        top = write_tree(g, ents + [(MODE_DIR, b"rootfs", root_content), (MODE_DIR, b"meta", root_meta)])
        return g[g.create_commit(None, sig, sig, "c\n", pygit2.Oid(raw=top), [parent.id])]

    t = blob(g, table(b"x d 755 0 0"))
    wrap_c, wrap_m = write_tree(g, [(MODE_DIR, b"x", content)]), \
        write_tree(g, [(MODE_DIR, b"x", meta), (MODE_FILE, b".gitree", t)])
    y_table = blob(g, table(b"y d 755 0 0"))
    too_deep = commit_with(write_tree(g, [(MODE_DIR, b"y", wrap_c)]),
                           write_tree(g, [(MODE_DIR, b"y", wrap_m), (MODE_FILE, b".gitree", y_table)]), c0)
    legal = commit_with(wrap_c, wrap_m, too_deep)
    run_gitree("-C", repo, "fsck", str(legal.id))
    assert run_gitree("-C", repo, "fsck", str(too_deep.id), check=False).returncode != 0
    path = _bundle_file(work, repo, str(legal.id))
    dst = os.path.join(work, "dst.git")
    run_gitree("-C", dst, "init")
    assert_one_error(run_limited("-C", dst, "bundle", "apply", path), "depth limit")
    assert "evil" not in _refs(dst)


def test_bundle_commit_with_a_missing_parent_is_refused(work, base):
    """A commit (valid tree) naming a parent neither the bundle nor the repository holds."""
    repo, cid = base
    g = pygit2.Repository(repo)
    c0 = g[pygit2.Oid(hex=cid)]
    raw = (b"tree %s\nparent %s\nauthor t <t@x> 1700000000 +0000\ncommitter t <t@x> 1700000000 +0000\n\nx\n"
           % (str(c0.tree_id).encode(), b"1" * 40))
    new = g.odb.write(pygit2.enums.ObjectType.COMMIT, raw)
    objs = subprocess.run(["git", "--git-dir", repo, "rev-list", "--objects", cid], capture_output=True,
                          text=True, check=True).stdout.split()
    objs = [o for o in objs if len(o) == 40 and o != cid]
    pack_in = [(OBJ_COMMIT, len(raw), raw)]
    for o in objs:
        obj = g[pygit2.Oid(hex=o)]
        t = {pygit2.enums.ObjectType.TREE: 2, pygit2.enums.ObjectType.BLOB: 3}[obj.type]
        data = obj.read_raw()
        pack_in.append((t, len(data), data))
    path = os.path.join(work, "p.gtb")
    with open(path, "wb") as f:
        f.write(_wrap(b"# v2 git bundle\n" + str(new).encode() + b" refs/heads/evil\n\n" + _pack(pack_in)))
    dst = os.path.join(work, "dst.git")
    run_gitree("-C", dst, "init")
    before = refs(dst)
    assert_one_error(run_gitree("-C", dst, "bundle", "apply", path, check=False), "parent")
    assert refs(dst) == before


def test_an_object_changed_in_the_target_after_an_export_is_verified_again(work):
    """v1 exported to the target; someone then rewrites /bin/run.sh's object there (same name, other bytes).
    The cache's record for it no longer matches the file's stamp: the v2 export must verify and replace it."""
    repo, target, src = _two_versions(work)
    want = _want(work, src)
    run = ostree(f"--repo={target}", "ls", "-C", "os", "/bin/run.sh").split()[4]
    path = _objfile(target, run, "filez")
    sudo = ostree(f"--repo={target}", "ls", "-C", "os", "/bin/sudo").split()[4]
    with open(_objfile(target, sudo, "filez"), "rb") as f:
        evil = f.read()
    os.chmod(path, 0o644)
    with open(path, "wb") as f:
        f.write(evil)
    r = run_gitree("-C", repo, "export-ostree", "os", "--ostree-repo", target)
    assert "did not hold what its name says" in r.stderr.decode(), r.stderr
    _assert_ships_v2(work, target, want)


def test_a_symlink_at_the_temporary_name_is_never_opened(work, base, monkeypatch):
    repo, cid = base
    victim = os.path.join(work, "victim")
    with open(victim, "wb") as f:
        f.write(b"precious\n")
    out = os.path.join(work, "out.tar")
    names = iter(["planted", "fresh"])
    monkeypatch.setattr(outfile.secrets, "token_hex", lambda n: next(names))
    os.symlink(victim, os.path.join(work, ".out.tar.gitree-planted"))
    api.checkout_tar(repo, cid, out)
    assert open(victim, "rb").read() == b"precious\n"
    assert os.path.islink(os.path.join(work, ".out.tar.gitree-planted"))


def test_clone_objects_are_not_hard_links_to_the_source(work, base):
    repo, _ = base
    subprocess.run(["git", "--git-dir", repo, "repack", "-adq"], check=True)
    dest = os.path.join(work, "clone.git")
    api.clone(repo, dest)
    src_inodes = set()
    for d, _, fs in os.walk(os.path.join(repo, "objects")):
        src_inodes |= {os.lstat(os.path.join(d, f)).st_ino for f in fs}
    for d, _, fs in os.walk(os.path.join(dest, "objects")):
        for f in fs:
            assert os.lstat(os.path.join(d, f)).st_ino not in src_inodes, f


def test_a_key_readable_by_others_is_replaced(work):
    repo = Repo.init(os.path.join(work, "g.git"))
    c = ec.ExportCache(repo.path, warn=lambda m: None)
    c.close()
    key = os.path.join(repo.path, *ec.CACHE_DIR, "key")
    with open(key, "wb") as f:
        f.write(b"k" * 32)
    os.chmod(key, 0o644)
    msgs = []
    c = ec.ExportCache(repo.path, warn=msgs.append)
    assert c.secret != b"k" * 32 and len(msgs) == 1
    c.close()


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_an_mtime_past_64_bit_nanoseconds_is_a_warning(work, fmt):
    """A pax mtime after 2262 (or a base-256 one of 2^80 s) ended the import in `internal error: OverflowError`
    from the scratch database; it is stored as 0 with a warning, and the tree still checks out."""
    path = os.path.join(work, "m.tar")
    with tarfile.open(path, "w", format=fmt) as t:
        i = tarfile.TarInfo("late")
        i.mtime, i.size = (9223372037 if fmt == tarfile.PAX_FORMAT else 2 ** 80), 3
        t.addfile(i, io.BytesIO(b"hi\n"))
    repo = os.path.join(work, "r.git")
    run_gitree("-C", repo, "init")
    r = run_gitree("-C", repo, "import-rootfs", path, "--branch", "main", "--keep-mtime")
    assert "mtime outside the years 1678-2262" in r.stderr.decode(), r.stderr
    assert b"Traceback" not in r.stderr
    assert len(api.ls(repo, "main").items) == 1


@pytest.mark.parametrize("header,words", [
    (b"author a <a@b> 0 +0000\ncommitter a <a@b> 0 +0000\nencoding x-bogus\n", "unknown message encoding"),
    (b"author a <a@b> -5 +0000\ncommitter a <a@b> -5 +0000\n", "author time -5")])
def test_commit_headers_git_accepts_but_gitree_cannot_read_are_refused(work, base, header, words):
    """`encoding x-bogus` and a negative time pass git; they passed fsck and bundle apply too, then ended log,
    show and export-ostree in `internal error` (LookupError, OverflowError). The reader refuses them, and log
    still prints such a commit's message."""
    repo, cid = base
    g = pygit2.Repository(repo)
    raw = b"tree %s\nparent %s\n%s\nmsg\n" % (str(g[pygit2.Oid(hex=cid)].tree_id).encode(), cid.encode(), header)
    bad = str(g.odb.write(pygit2.enums.ObjectType.COMMIT, raw))
    assert_refused_everywhere(work, repo, bad, words, base_cid=cid)
    assert [c.message for c in api.log(repo, bad).commits][0] == "msg\n"


def test_summary_never_reads_a_planted_delta_superblock_through_a_symlink(work):
    """`export-ostree --update-summary` hashed every deltas/*/*/superblock with a plain read: a symlink planted
    there to a root-only file put that file's SHA-256 in the published summary (and a 3 GiB sparse one took
    3 GB). It is opened as objects are: a symlink is refused in one error, and nothing of the file is read."""
    from test_ostree_bridge import build_t1
    src = os.path.join(work, "tree")
    os.makedirs(src)
    build_t1(src)
    repo = os.path.join(work, "g.git")
    api.init(repo)
    api.import_rootfs(repo, src, branch="os/stable")
    target = os.path.join(work, "target")
    csum = api.export_ostree(repo, "os/stable", target, update_summary=True).checksum
    secret = os.path.join(work, "secret")
    with open(secret, "wb") as f:
        f.write(b"root:$6$secret\n")
    from gitree_compat.objects import delta_name_encode
    name = delta_name_encode(csum)
    os.makedirs(os.path.join(target, "deltas", name[:2], name[2:]))
    os.symlink(secret, os.path.join(target, "deltas", name[:2], name[2:], "superblock"))
    with pytest.raises(api.GitreeError, match="symlink|not a regular file"):
        api.export_ostree(repo, "os/stable", target, update_summary=True)
    import hashlib
    with open(os.path.join(target, "summary"), "rb") as f:
        assert hashlib.sha256(b"root:$6$secret\n").digest() not in f.read()


def test_fetch_and_clone_refuse_objects_git_fsck_refuses(work, base):
    """A commit whose author line has no email: the gitree reader reads only the commit's tree and
    times, so what refuses it is git's own object check on the incoming pack (transfer.fsckObjects, set
    for fetch and clone). Nothing moves; the clone leaves nothing."""
    from test_security_git import _server_and_clone
    repo, cid = base
    server, local, g, _ = _server_and_clone(work, repo, cid)
    c0 = g[pygit2.Oid(hex=cid)]
    raw = (b"tree %s\nparent %s\nauthor nobody 1700000000 +0000\ncommitter t <t@x> 1700000000 +0000\n\nx\n"
           % (str(c0.tree_id).encode(), cid.encode()))
    bad = g.odb.write(pygit2.enums.ObjectType.COMMIT, raw)
    g.references["refs/heads/main"].set_target(bad)
    before = refs(local)
    r = run_gitree("-C", local, "fetch", server, check=False)
    assert_one_error(r, "missingEmail")
    assert refs(local) == before
    dest = os.path.join(work, "clone.git")
    assert_one_error(run_gitree("clone", server, dest, check=False), "missingEmail")
    assert not os.path.lexists(dest)


def test_a_commit_of_another_format_version_is_refused(work, base):
    """The `format` blob names the layout a commit was written in; a reader of version 1 must not read a
    tree of another version as if it were its own."""
    repo, cid = base
    g = pygit2.Repository(repo)
    top = g[pygit2.Oid(hex=cid)].tree
    tree = write_tree(g, [(MODE_FILE, b"format", blob(g, b"gitree 2\n")), (MODE_DIR, b"meta", top["meta"].id.raw),
                          (MODE_DIR, b"rootfs", top["rootfs"].id.raw)])
    sig = pygit2.Signature("t", "t@example.invalid", 1700000000, 0)
    other = str(g.create_commit(None, sig, sig, "v2\n", pygit2.Oid(raw=tree), [pygit2.Oid(hex=cid)]))
    assert_refused_everywhere(work, repo, other, "gitree format", base_cid=cid)
