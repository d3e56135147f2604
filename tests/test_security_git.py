"""Hostile git-side inputs (docs/security.md): crafted commits, trees, side tables, bundles and servers.

Every case runs the real CLI against real repositories and checks the same contract: one line on stderr,
a nonzero exit, no traceback or `internal error`, every ref as it was, nothing written outside the
command's target (a refused checkout does not even create DEST). Hostile objects are written byte for
byte with pygit2's object database, so the tree can be what git itself would never write.
"""

from __future__ import annotations

import io
import os
import resource
import stat
import subprocess
import zlib

import pygit2
import pytest
from helpers import GITREE, run_gitree
from test_distribution import git_daemon  # noqa: F401  (a fixture)
from test_safety import refs

from gitree import api
from gitree import limits
from gitree.transport.bundle import MAGIC as BUNDLE_MAGIC
from gitree.gittree import MODE_DIR, MODE_EXEC, MODE_FILE, MODE_LINK
from gitree.packwriter import OBJ_BLOB, pack_entry_header
from gitree.tarformat import TarWriter

MEM_LIMIT = 300 << 20   # the issue's bound on any command's peak memory for a hostile input of <= 1 MB

# ---------------------------------------------------------------------------------------------
# helpers


def git(repo: str, *args: str, input: bytes | None = None) -> str:
    r = subprocess.run(["git", "--git-dir", repo, *args], capture_output=True, input=input)
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout.decode().strip()


def tree_snapshot(root: str) -> dict[str, tuple]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (stat.S_IFMT(st.st_mode), st.st_size,
                                             os.readlink(p) if stat.S_ISLNK(st.st_mode) else None)
    return out


def assert_one_error(r: subprocess.CompletedProcess, *words: str) -> str:
    err = r.stderr.decode(errors="replace")
    assert r.returncode != 0, (r.stdout, err)
    assert "Traceback" not in err and "internal error" not in err and "MemoryError" not in err, err
    assert "out of memory" not in err, err     # the CLI's line for a MemoryError: a bound that did not hold
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gitree: error: "), err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def api_error(call, *words: str) -> str:
    """`call()` (a gitree.api call) raises a typed gitree error (anything else would be the CLI's internal
    error) whose message, as the CLI prints it on its one line, holds each of `words`; returns that line."""
    from gitree.cli import one_line
    with pytest.raises(api.GitreeError) as e:
        call()
    line = one_line(str(e.value))
    for w in words:
        assert w in line, (w, line)
    return line


def limited(mem: int = MEM_LIMIT, nofile: int | None = None):
    def apply():
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    return apply


def run_limited(*args, mem: int = MEM_LIMIT, nofile: int | None = None, timeout: int = 300):
    """The CLI under an address-space limit: a command whose memory is bounded finishes or refuses
    cleanly under it; one that is not dies with MemoryError or a failed allocation."""
    env = dict(os.environ)
    env.pop("GITREE_REPO", None)
    return subprocess.run(GITREE + ["-q", *args], capture_output=True, env=env, timeout=timeout,
                          preexec_fn=limited(mem, nofile))


def write_tree(g: pygit2.Repository, entries: list[tuple[bytes, bytes, bytes]], sort: bool = True) -> bytes:
    """A tree object from (mode, name, oid) exactly as given (`sort`: in git's order)."""
    if sort:
        entries = sorted(entries, key=lambda e: e[1] + b"/" if e[0] == MODE_DIR else e[1])
    data = b"".join(m + b" " + n + b"\0" + o for m, n, o in entries)
    return g.odb.write(pygit2.enums.ObjectType.TREE, data).raw


def blob(g: pygit2.Repository, data: bytes) -> bytes:
    return g.odb.write(pygit2.enums.ObjectType.BLOB, data).raw


def table(*rows: bytes, self_row: bytes = b". d 755 0 0") -> bytes:
    return b"gitree-dirtable 1\n" + self_row + b"\n" + b"".join(r + b"\n" for r in rows)


def directory(g, rows: list[bytes], content: list, meta: list = (), sort: bool = True) -> tuple[bytes, bytes]:
    """(content tree, meta tree) of one directory from table rows and tree entries."""
    m = [(MODE_FILE, b".gitree", blob(g, table(*rows)))] + list(meta)
    return write_tree(g, content, sort), write_tree(g, m, sort)


def commit(repo: str, root: tuple[bytes, bytes], message: str = "crafted", parents=()) -> str:
    g = pygit2.Repository(repo)
    top = write_tree(g, [(MODE_FILE, b"format", blob(g, b"gitree 1\n")), (MODE_DIR, b"meta", root[1]),
                         (MODE_DIR, b"rootfs", root[0])])
    sig = pygit2.Signature("t", "t@example.invalid", 1700000000, 0)
    return str(g.create_commit(None, sig, sig, message + "\n", pygit2.Oid(raw=top),
                               [pygit2.Oid(hex=p) for p in parents]))


def make_tar(path: str, members) -> str:
    buf = io.BytesIO()
    w = TarWriter(buf.write)
    for m in members:
        name, ifmt, mode = m[0], m[1], m[2]
        kw = dict(m[3]) if len(m) > 3 else {}
        data = kw.pop("data", b"")
        if ifmt == stat.S_IFREG:
            kw["size"] = len(data)
        w.add(name, ifmt, mode, 0, 0, **kw)
        if ifmt == stat.S_IFREG:
            w.add_data(data)
            w.pad(len(data))
    w.close()
    with open(path, "wb") as f:
        f.write(buf.getvalue())
    return path


BASE_MEMBERS = [
    (b"./", stat.S_IFDIR, 0o755),
    (b"./etc/", stat.S_IFDIR, 0o755),
    (b"./etc/passwd", stat.S_IFREG, 0o644, {"data": b"root:x:0:0:root:/root:/bin/sh\n"}),
    (b"./etc/shadow", stat.S_IFREG, 0o640, {"data": b"root:*:19000:0:99999:7:::\n"}),
    (b"./etc/sh", stat.S_IFLNK, 0o777, {"linkname": b"../bin/sh"}),
    (b"./bin/", stat.S_IFDIR, 0o755),
    (b"./bin/sh", stat.S_IFREG, 0o755, {"data": b"#!shell\n",
                                         "xattrs": ((b"security.capability",
                                                     bytes.fromhex("01000002" "00200000" "00000000" "00000000"
                                                                   "00000000")),)}),
    (b"./bin/dash", stat.S_IFREG, 0o755, {"data": b"#!shell\n", "hardlink": False}),
    (b"./bin/sh2", stat.S_IFREG, 0o755, {"linkname": b"./bin/sh", "hardlink": True}),
    (b"./dev/", stat.S_IFDIR, 0o755),
    (b"./dev/null", stat.S_IFCHR, 0o666, {"rdev": (1, 3)}),
]


@pytest.fixture
def base(work):
    """A repository with one ordinary commit on main: files, a symlink, a hard link, a device, a file
    capability."""
    repo = os.path.join(work, "repo.git")
    api.init(repo)
    tar = make_tar(os.path.join(work, "base.tar"), BASE_MEMBERS)
    cid = api.import_rootfs(repo, tar, branch="main").commit
    api.fsck(repo, check=True)
    return repo, cid


def root_with(repo: str, base_cid: str, extra_rows: list[bytes], extra_content: list, extra_meta=(),
              sort: bool = True) -> tuple[bytes, bytes]:
    """The base commit's root directory with rows and tree entries added (for crafting one fault)."""
    g = pygit2.Repository(repo)
    top = g[pygit2.Oid(hex=base_cid)].tree
    content, meta = top["rootfs"], top["meta"]
    c = [(b"%o" % e.filemode, e.name.encode("utf-8", "surrogateescape"), e.id.raw) for e in content]
    m = [(b"%o" % e.filemode, e.name.encode("utf-8", "surrogateescape"), e.id.raw) for e in meta
         if e.name != ".gitree"]
    old_rows = g[meta[".gitree"].id].data.split(b"\n")[2:-1]
    rows = sorted(old_rows + extra_rows, key=lambda r: r.split(b" ")[0])
    return directory(g, rows, c + list(extra_content), m + list(extra_meta), sort)


def assert_refused_everywhere(work: str, repo: str, rev: str, *words: str, base_cid: str | None = None,
                              cli: bool = False) -> None:
    """fsck, checkout (directory and tar), ls, diff, export-ostree and bundle apply all refuse `rev` with
    a typed error (with `cli`: through the command line, one line on stderr), move no ref, and write nothing
    outside their target."""
    before = refs(repo)
    outside = tree_snapshot(work)
    dest = os.path.join(work, "dest")
    tar = os.path.join(work, "out.tar")
    cmds = [["fsck", rev], ["checkout", rev, dest], ["checkout", rev, "--tar", tar], ["ls", "-R", "-l", rev],
            ["export-ostree", rev, "--ostree-repo", os.path.join(work, "ostree"), "--ref", "x"]]
    if base_cid is not None:
        cmds.append(["diff", base_cid, rev])
    calls = {"fsck": lambda: api.fsck(repo, [rev], check=True),
             "checkout": lambda: api.checkout(repo, rev, dest),
             "checkout --tar": lambda: api.checkout_tar(repo, rev, tar),
             "ls": lambda: api.ls(repo, rev, recursive=True).lines(long=True),
             "export-ostree": lambda: api.export_ostree(repo, rev, os.path.join(work, "ostree"), ref="x"),
             "diff": lambda: api.diff(repo, base_cid, rev)}
    for args in cmds:
        name = "checkout --tar" if "--tar" in args else args[0]
        if not cli and name == "fsck":
            res = api.fsck(repo, [rev])
            text = "\n".join(p.line() for p in res.problems)
            assert not res.ok
            for w in words:
                assert w in text, (w, text)
            api_error(calls[name], "fsck found")
        elif not cli:
            api_error(calls[name], *words)
        else:
            r = run_gitree("-C", repo, *args, check=False)
            if args[0] == "fsck":
                # fsck lists every problem on stdout, then one error line
                assert r.returncode != 0 and r.stdout.strip(), r
                assert "Traceback" not in r.stderr.decode()
                assert_one_error(r, "fsck found")
                for w in words:
                    assert w in r.stdout.decode(), (w, r.stdout.decode())
            else:
                assert_one_error(r, *words)
        assert not os.path.lexists(dest) and not os.path.lexists(tar)
        assert refs(repo) == before
    after = tree_snapshot(work)
    assert {k: v for k, v in after.items() if not k.startswith(("ostree", "repo.git"))} == \
        {k: v for k, v in outside.items() if not k.startswith(("ostree", "repo.git"))}
    # gitree writes no bundle of it; one made by hand is refused by the receiving side before any ref moves
    gtb = os.path.join(work, "evil.gtb")
    if cli:
        assert_one_error(run_gitree("-C", repo, "bundle", "create", rev, gtb, "--branch", "evil", check=False),
                         *words)
    else:
        api_error(lambda: api.bundle_create(repo, rev, gtb, branch="evil"), *words)
    assert not os.path.lexists(gtb)
    with open(gtb, "wb") as f:
        f.write(hostile_bundle(repo, rev))
    other = os.path.join(work, "other.git")
    if not os.path.exists(other):
        api.init(other)
    before_other = refs(other)
    if cli:
        assert_one_error(run_gitree("-C", other, "bundle", "apply", gtb, check=False), *words)
    else:
        api_error(lambda: api.bundle_apply(other, gtb), *words)
    assert refs(other) == before_other
    os.unlink(gtb)


# ---------------------------------------------------------------------------------------------
# one validating reader: aliases, escaping, duplicates, agreement, names


def test_alias_of_a_name_and_its_escaped_form_is_refused(work, base):
    """Issue point 3: `passwd` and `~gitree~passwd` in one tree; plain git shows one, gitree would write
    the other. The escaped form of a name that needs no escaping is not its canonical stored form."""
    repo, cid = base
    g = pygit2.Repository(repo)
    evil = blob(g, b"root::0:0:root:/root:/bin/sh\n")
    fine = blob(g, b"root:x:0:0:root:/root:/bin/sh\n")
    root = root_with(repo, cid, [b"passwd f 644 0 0"],
                     [(MODE_FILE, b"passwd", fine), (MODE_FILE, b"~gitree~passwd", evil)])
    rev = commit(repo, root)
    assert_refused_everywhere(work, repo, rev, "~gitree~passwd", base_cid=cid, cli=True)
    # the escaped form alone is an alias too
    root = root_with(repo, cid, [b"passwd f 644 0 0"], [(MODE_FILE, b"~gitree~passwd", evil)])
    api_error(lambda: api.checkout(repo, commit(repo, root), os.path.join(work, "d")), "canonical")


def test_unescaped_dot_git_is_refused(work, base):
    repo, cid = base
    g = pygit2.Repository(repo)
    sub = directory(g, [b"config f 644 0 0"], [(MODE_FILE, b"config", blob(g, b"[core]\n"))])
    root = root_with(repo, cid, [b".git d 755 0 0"], [(MODE_DIR, b".git", sub[0])], [(MODE_DIR, b".git", sub[1])])
    assert_refused_everywhere(work, repo, commit(repo, root), ".git", base_cid=cid, cli=True)


def test_duplicate_tree_entries_are_refused(work, base):
    """Two entries of one name (git's last-one-wins would pick a different one than a plain reader)."""
    repo, cid = base
    g = pygit2.Repository(repo)
    root = root_with(repo, cid, [b"motd f 644 0 0"],
                     [(MODE_FILE, b"motd", blob(g, b"hello\n")), (MODE_FILE, b"motd", blob(g, b"evil\n"))])
    assert_refused_everywhere(work, repo, commit(repo, root), "motd", base_cid=cid)


def test_nul_in_a_side_table_name_is_refused(work, base):
    repo, cid = base
    g = pygit2.Repository(repo)
    root = root_with(repo, cid, [b"a%00b p 644 0 0"], [])
    assert_refused_everywhere(work, repo, commit(repo, root), "bad name", base_cid=cid)
    del g


def test_table_and_tree_disagree_export_has_no_key_error(work, base):
    """A table row naming a directory the tree lacks: export-ostree used to end in
    `internal error: KeyError`."""
    repo, cid = base
    g = pygit2.Repository(repo)
    sub = directory(g, [], [])
    root = root_with(repo, cid, [b"ghost d 755 0 0"], [], [(MODE_DIR, b"ghost", sub[1])])
    assert_refused_everywhere(work, repo, commit(repo, root), "ghost", base_cid=cid)
    # a file the tree holds under the wrong git mode
    root = root_with(repo, cid, [b"tool f 755 0 0"], [(MODE_FILE, b"tool", blob(g, b"x"))])
    assert_refused_everywhere(work, repo, commit(repo, root), "git mode", base_cid=cid)


def test_unsorted_tree_is_refused(work, base):
    repo, cid = base
    g = pygit2.Repository(repo)
    b1 = blob(g, b"1")
    root = root_with(repo, cid, [b"zz f 644 0 0", b"aa f 644 0 0"],
                     [(MODE_FILE, b"zz", b1), (MODE_FILE, b"aa", b1)], sort=False)
    api_error(lambda: api.ls(repo, commit(repo, root), recursive=True), "order")


@pytest.mark.parametrize("xattr,words", [
    ((b"trusted.", b"x"), "empty suffix"),
    ((b"security.capability", b"\x01\x00\x00\x02garbage"), "security.capability"),
    ((b"security.capability", bytes.fromhex("01000001" "00200000" "00000000")), "revision"),
    ((b"system.posix_acl_access", b"\x02\x00\x00\x00\x01\x00\x07"), "POSIX ACL"),
    ((b"system.evil", b"x"), "system."),
    ((b"nonamespace", b"x"), "namespace"),
])
def test_invalid_xattrs_are_refused_before_checkout_writes(work, base, xattr, words):
    """Invalid xattr names and values used to import, pass fsck, and stop a checkout half-way. Now the
    import refuses them, and a crafted commit holding them is refused before DEST is created."""
    repo, cid = base
    tar = make_tar(os.path.join(work, "x.tar"), BASE_MEMBERS[:2] + [
        (b"./etc/zz", stat.S_IFREG, 0o644, {"data": b"x", "xattrs": (xattr,)})])
    before = refs(repo)
    if xattr[0] == b"trusted.":
        assert_one_error(run_gitree("-C", repo, "import-rootfs", tar, "-b", "main", check=False), words)
    else:
        api_error(lambda: api.import_rootfs(repo, tar, branch="main"), words)
    assert refs(repo) == before
    os.unlink(tar)
    from gitree.names import esc
    row = b"zz f 644 0 0 x=" + esc(xattr[0]) + b"=" + esc(xattr[1])
    root = root_with(repo, cid, [row], [(MODE_FILE, b"zz", blob(pygit2.Repository(repo), b"x"))])
    rev = commit(repo, root)
    if xattr[0] == b"trusted.":  # one case through every command; the others through checkout and fsck
        assert_refused_everywhere(work, repo, rev, words, base_cid=cid, cli=True)
        return
    dest = os.path.join(work, "dest")
    api_error(lambda: api.checkout(repo, rev, dest), words)
    assert not os.path.lexists(dest)
    res = api.fsck(repo, [rev])
    assert not res.ok and words in "\n".join(p.line() for p in res.problems)


def test_valid_acls_and_capabilities_round_trip(work, base):
    """The reader's xattr rules accept what Linux writes (getfacl/setcap formats)."""
    repo, cid = base
    acl = bytes.fromhex("02000000" "0100 0600 ffffffff" "0200 0400 e8030000" "0400 0400 ffffffff"
                        "1000 0400 ffffffff" "2000 0000 ffffffff".replace(" ", ""))
    tar = make_tar(os.path.join(work, "ok.tar"), BASE_MEMBERS + [
        (b"./etc/acl", stat.S_IFREG, 0o640, {"data": b"x", "xattrs": ((b"system.posix_acl_access", acl),
                                                                      (b"user.note", b""))}),
        (b"./etc/ddir/", stat.S_IFDIR, 0o755, {"xattrs": ((b"system.posix_acl_default", acl),)})])
    rev = api.import_rootfs(repo, tar, branch="main").commit
    api.fsck(repo, check=True)
    listing = "\n".join(api.ls(repo, rev, "etc").lines(long=True))
    assert "system.posix_acl_access" in listing and "system.posix_acl_default" in listing


def test_hard_link_to_a_later_or_missing_entry_is_refused(work, base):
    repo, cid = base
    g = pygit2.Repository(repo)
    b1 = blob(g, b"x")
    root = root_with(repo, cid, [b"a f 644 0 0 h=zzz", b"zzz f 644 0 0"],
                     [(MODE_FILE, b"a", b1), (MODE_FILE, b"zzz", b1)])
    assert_refused_everywhere(work, repo, commit(repo, root), "hard link", base_cid=cid)



def test_name_longer_than_name_max_is_refused(work, base):
    """A name of NAME_MAX + 1 bytes: in the tree alone, in the tree and its table row, and in a table row
    alone (a fifo: no tree entry). A name of exactly NAME_MAX bytes is fine."""
    repo, cid = base
    g = pygit2.Repository(repo)
    b1 = blob(g, b"x")
    long = b"n" * (limits.NAME_MAX + 1)
    for rows, content in (([], [(MODE_FILE, long, b1)]), ([long + b" f 644 0 0"], [(MODE_FILE, long, b1)]),
                          ([long + b" p 644 0 0"], [])):
        root = root_with(repo, cid, rows, content)
        assert_refused_everywhere(work, repo, commit(repo, root), f"{limits.NAME_MAX} bytes", base_cid=cid)
    ok = b"n" * limits.NAME_MAX
    api.fsck(repo, [commit(repo, root_with(repo, cid, [ok + b" f 644 0 0"], [(MODE_FILE, ok, b1)]))], check=True)


def test_hard_link_to_a_directory_or_to_a_hard_link_is_refused(work, base):
    """A hard link's leader is an earlier non-directory that is not itself a hard link. The link to
    bin/sh2 (itself a link to bin/sh) carries exactly sh2's metadata and blob, so only the chain rule
    refuses it."""
    repo, cid = base
    g = pygit2.Repository(repo)
    top = g[pygit2.Oid(hex=cid)].tree
    sh = top["rootfs"]["bin"]["sh"].id.raw
    cap = b" x=security.capability=%01%00%00%02%00%20" + b"%00" * 14
    for row, content, target in ((b"hl f 644 0 0 h=etc", [(MODE_FILE, b"hl", blob(g, b"x"))], "/etc"),
                                 (b"hl f 755 0 0 h=bin/sh2" + cap, [(MODE_EXEC, b"hl", sh)], "/bin/sh2")):
        root = root_with(repo, cid, [row], content)
        assert_refused_everywhere(work, repo, commit(repo, root), f"hard link to {target}, which is not an earlier",
                                  base_cid=cid)
    # the same link to bin/sh itself is fine
    root = root_with(repo, cid, [b"hl f 755 0 0 h=bin/sh" + cap], [(MODE_EXEC, b"hl", sh)])
    api.fsck(repo, [commit(repo, root)], check=True)
    # a directory row with a hard link field
    sub = directory(g, [], [])
    root = root_with(repo, cid, [b"dd d 755 0 0 h=etc"], [(MODE_DIR, b"dd", sub[0])], [(MODE_DIR, b"dd", sub[1])])
    api_error(lambda: api.checkout(repo, commit(repo, root), os.path.join(work, "d")), "cannot be a hard link")


@pytest.mark.parametrize("row,data", [(b"hl f 600 0 0 h=etc/passwd", None), (b"hl f 644 7 0 h=etc/passwd", None),
                                      (b"hl f 644 0 7 h=etc/passwd", None),
                                      (b"hl f 644 0 0 h=etc/passwd x=user.a=b", None),
                                      (b"hl f 644 0 0 h=etc/passwd", b"not passwd\n")])
def test_hard_link_that_disagrees_with_its_leader_is_refused(work, base, row, data):
    """A hard link is one inode: its mode, owner, xattrs and content are its leader's."""
    repo, cid = base
    g = pygit2.Repository(repo)
    top = g[pygit2.Oid(hex=cid)].tree
    passwd = top["rootfs"]["etc"]["passwd"].id.raw
    root = root_with(repo, cid, [row], [(MODE_FILE, b"hl", blob(g, data) if data else passwd)])
    assert_refused_everywhere(work, repo, commit(repo, root), "hard link disagrees with /etc/passwd", base_cid=cid)
    # the link that agrees is fine
    root = root_with(repo, cid, [b"hl f 644 0 0 h=etc/passwd"], [(MODE_FILE, b"hl", passwd)])
    api.fsck(repo, [commit(repo, root)], check=True)


def _loose_blob_of_zeros(repo: str, size: int) -> bytes:
    """A loose blob of `size` zero bytes written as git would, streamed (never held whole)."""
    import hashlib
    h, z = hashlib.sha1(), zlib.compressobj(1)
    header = b"blob %d\0" % size
    h.update(header)
    parts = [z.compress(header)]
    chunk = bytes(1 << 20)
    for _ in range(size >> 20):
        h.update(chunk)
        parts.append(z.compress(chunk))
    parts.append(z.flush())
    oid = h.digest()
    d = os.path.join(repo, "objects", oid.hex()[:2])
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, oid.hex()[2:]), "wb") as f:
        f.write(b"".join(parts))
    return oid


def test_symlink_target_longer_than_symlink_max_is_refused(work, base):
    """A target of SYMLINK_MAX + 1 bytes is refused everywhere; a 512 MiB one (a few hundred KB stored) is
    refused from its object header, every command staying under the 300 MiB limit."""
    repo, cid = base
    g = pygit2.Repository(repo)
    root = root_with(repo, cid, [b"lnk l 777 0 0"], [(MODE_LINK, b"lnk", blob(g, b"a" * (limits.SYMLINK_MAX + 1)))])
    assert_refused_everywhere(work, repo, commit(repo, root), f"limit of {limits.SYMLINK_MAX}", base_cid=cid)
    root = root_with(repo, cid, [b"lnk l 777 0 0"], [(MODE_LINK, b"lnk", blob(g, b"a" * limits.SYMLINK_MAX))])
    api.fsck(repo, [commit(repo, root)], check=True)
    big = _loose_blob_of_zeros(repo, 512 << 20)
    rev = commit(repo, root_with(repo, cid, [b"lnk l 777 0 0"], [(MODE_LINK, b"lnk", big)]))
    before = refs(repo)
    for args in (["fsck", rev], ["checkout", rev, os.path.join(work, "d")], ["ls", "-R", "-l", rev],
                 ["diff", cid, rev], ["checkout", rev, "--tar", os.path.join(work, "t.tar")],
                 ["export-ostree", rev, "--ostree-repo", os.path.join(work, "o"), "--ref", "x"]):
        r = run_limited("-C", repo, *args)
        if args[0] == "fsck":
            assert f"limit of {limits.SYMLINK_MAX}" in r.stdout.decode()
            assert_one_error(r)
        else:
            assert_one_error(r, f"limit of {limits.SYMLINK_MAX}")
    assert refs(repo) == before and not os.path.exists(os.path.join(work, "d"))


# ---------------------------------------------------------------------------------------------
# bounded resources


def _deep_chain(repo: str, depth: int) -> str:
    """A commit whose tree is `depth` directories deep (written as one pack: 3 objects per level)."""
    from gitree.packwriter import OBJ_TREE, PackWriter, hash_and_compress
    pw = PackWriter(os.path.join(repo, "objects"))

    def put(otype, data):
        oid, entry = hash_and_compress(otype, data, 1)
        pw.add_raw(oid, entry)
        return oid

    t_leaf = put(OBJ_BLOB, table())
    content = put(OBJ_TREE, b"")
    meta = put(OBJ_TREE, b"100644 .gitree\0" + t_leaf)
    t_mid = put(OBJ_BLOB, table(b"d d 755 0 0"))
    for _ in range(depth):
        content = put(OBJ_TREE, b"40000 d\0" + content)
        meta = put(OBJ_TREE, b"100644 .gitree\0" + t_mid + b"40000 d\0" + meta)
    pw.install()
    return commit(repo, (content, meta))


def test_tree_100000_levels_deep_is_refused_by_the_depth_limit(work, base):
    """Used to end in RecursionError after 2 GB, or 'Too many open files' at checkout."""
    repo, cid = base
    rev = _deep_chain(repo, 100_000)
    before = refs(repo)
    dest = os.path.join(work, "dest")
    for args in (["fsck", rev], ["checkout", rev, dest], ["checkout", rev, "--tar", os.path.join(work, "t.tar")],
                 ["ls", "-R", rev], ["diff", cid, rev],
                 ["export-ostree", rev, "--ostree-repo", os.path.join(work, "o"), "--ref", "x"]):
        r = run_limited("-C", repo, *args, nofile=64)
        if args[0] == "fsck":
            assert r.returncode != 0 and f"deeper than {limits.MAX_TREE_DEPTH}" in r.stdout.decode()
            assert_one_error(r)
        else:
            assert_one_error(r, f"deeper than {limits.MAX_TREE_DEPTH}")
        assert not os.path.lexists(dest)
    assert refs(repo) == before


def test_legal_deep_tree_checks_out_with_few_descriptors(work, base):
    """A tree at the depth limit checks out under a limit of 64 open files (the writer keeps a bounded
    window of directory descriptors), and the checkout round-trips."""
    repo, _ = base
    deep = b"./" + b"/".join([b"d"] * (limits.MAX_TREE_DEPTH - 1))
    tar = make_tar(os.path.join(work, "deep.tar"), [(b"./", stat.S_IFDIR, 0o755),
                                                    (deep + b"/f", stat.S_IFREG, 0o600, {"data": b"bottom"}),
                                                    (deep + b"/h", stat.S_IFREG, 0o600,
                                                     {"linkname": deep[2:] + b"/f", "hardlink": True})])
    rev = api.import_rootfs(repo, tar, branch="deep").commit
    dest = os.path.join(work, "dest")
    try:
        _check_deep_checkout(repo, rev, dest)
    finally:
        subprocess.run(["rm", "-rf", dest], check=True)  # shutil.rmtree recurses once per level


def _check_deep_checkout(repo: str, rev: str, dest: str) -> None:
    r = run_limited("-C", repo, "checkout", rev, dest, nofile=64)
    assert r.returncode == 0, r.stderr.decode()
    f = os.path.join(dest, *(["d"] * (limits.MAX_TREE_DEPTH - 1)), "f")
    # the path is longer than PATH_MAX: read it through a directory descriptor chain
    fd = os.open(dest, os.O_RDONLY)
    for _ in range(limits.MAX_TREE_DEPTH - 1):
        nfd = os.open("d", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = nfd
    st_f, st_h = os.stat("f", dir_fd=fd), os.stat("h", dir_fd=fd)
    os.close(fd)
    assert st_f.st_ino == st_h.st_ino and st_f.st_size == 6
    assert len(f) > 4096
    for args in (["fsck", rev], ["diff", "main", rev], ["ls", "-R", rev],
                 ["export-ostree", rev, "--ostree-repo", os.path.join(os.path.dirname(dest), "o"), "--ref", "d"]):
        r = run_limited("-C", repo, *args, nofile=64)
        assert r.returncode == 0, r.stderr.decode()
    r = subprocess.run(["ostree", "--repo=" + os.path.join(os.path.dirname(dest), "o"), "fsck"], capture_output=True)
    assert r.returncode == 0, r.stderr.decode()


def _table_bomb(work: str, repo: str, parents: tuple[str, ...] = ()) -> str:
    """A commit whose root side table is 200 MB of one line (a few hundred KB packed)."""
    path = os.path.join(work, "table")
    with open(path, "wb") as f:
        f.write(b"gitree-dirtable 1\n. d 755 0 0 x=user.a=")
        chunk = b"A" * (1 << 20)
        for _ in range(200):
            f.write(chunk)
        f.write(b"\n")
    table_oid = bytes.fromhex(git(repo, "hash-object", "-w", path))
    os.unlink(path)
    g = pygit2.Repository(repo)
    return commit(repo, (write_tree(g, []), write_tree(g, [(MODE_FILE, b".gitree", table_oid)])), "table",
                  list(parents))


def test_200_mb_side_table_is_refused_from_its_header(work, base):
    """A 200 MB table of one line (a few hundred KB packed) is refused by MAX_TABLE_BYTES before it is
    inflated: under a 300 MiB address-space limit, every command refuses it with one line."""
    repo, cid = base
    rev = _table_bomb(work, repo)
    before = refs(repo)
    for args in (["fsck", rev], ["checkout", rev, os.path.join(work, "d")], ["ls", "-R", rev], ["diff", cid, rev],
                 ["checkout", rev, "--tar", os.path.join(work, "t.tar")],
                 ["export-ostree", rev, "--ostree-repo", os.path.join(work, "o"), "--ref", "x"]):
        r = run_limited("-C", repo, *args)
        if args[0] == "fsck":
            assert str(limits.MAX_TABLE_BYTES) in r.stdout.decode()
            assert_one_error(r)
        else:
            assert_one_error(r, f"limit of {limits.MAX_TABLE_BYTES}")
    assert refs(repo) == before and not os.path.exists(os.path.join(work, "d"))



def _subtree_bomb(repo: str, cid: str, link: bool, parents: tuple[str, ...] = ()) -> str:
    """A commit of five levels of 64 names all naming one subtree (64^5 entries); `link`: the shared leaf
    holds a hard link to etc/passwd of commit `cid`, whose root the commit otherwise keeps."""
    g = pygit2.Repository(repo)
    names = [b"z%02d" % i for i in range(64)]
    passwd = g[pygit2.Oid(hex=cid)].tree["rootfs"]["etc"]["passwd"].id.raw
    node = directory(g, [b"hl f 644 0 0 h=etc/passwd"], [(MODE_FILE, b"hl", passwd)]) if link else directory(g, [], [])
    for _ in range(5):
        node = directory(g, [n + b" d 755 0 0" for n in names], [(MODE_DIR, n, node[0]) for n in names],
                         [(MODE_DIR, n, node[1]) for n in names])
    if link:
        node = root_with(repo, cid, [b"zz d 755 0 0"], [(MODE_DIR, b"zz", node[0])], [(MODE_DIR, b"zz", node[1])])
    return commit(repo, node, "bomb", list(parents))


@pytest.mark.parametrize("link", [False, True])
def test_shared_subtrees_past_the_entry_limit_are_refused(work, base, link):
    """Five levels of 64 names all naming one subtree: a few objects, under 100 KB stored, that expand to
    64^5 (over a billion) entries, past MAX_COMMIT_ENTRIES. Every reader refuses it in one line naming
    the limit, under the 300 MiB limit, after reading each shared directory once (not its expansion).
    `link`: the shared leaf holds a valid hard link to /etc/passwd (a subtree a check cannot skip)."""
    repo, cid = base
    rev = _subtree_bomb(repo, cid, link)
    before = refs(repo)
    words = f"more than {limits.MAX_COMMIT_ENTRIES} entries"
    for args in (["fsck", rev], ["checkout", rev, os.path.join(work, "d")],
                 ["checkout", rev, "--tar", os.path.join(work, "t.tar")], ["ls", "-R", rev], ["diff", cid, rev],
                 ["export-ostree", rev, "--ostree-repo", os.path.join(work, "o"), "--ref", "x"]):
        if link and args[0] in ("ls", "diff"):
            continue  # listing walks like checkout --tar's
        r = run_limited("-C", repo, *args, timeout=60)
        if args[0] == "fsck":
            assert words in r.stdout.decode()
            assert_one_error(r)
        else:
            assert_one_error(r, words)
    assert refs(repo) == before
    assert not os.path.exists(os.path.join(work, "d")) and not os.path.exists(os.path.join(work, "t.tar"))


# ---------------------------------------------------------------------------------------------
# bundles


def hostile_bundle(repo: str, rev: str, ref: bytes = b"refs/heads/evil") -> bytes:
    """A gitree bundle of `rev` made as an attacker would, without gitree's own checks: a git bundle
    header, the pack git writes for the commit, wrapped."""
    pack = subprocess.run(["git", "--git-dir", repo, "pack-objects", "--stdout", "--revs", "-q"],
                          input=rev.encode() + b"\n", capture_output=True, check=True).stdout
    return _wrap(b"# v2 git bundle\n" + rev.encode() + b" " + ref + b"\n\n" + pack)


def _wrap(git_bundle: bytes, window_log: int = 27) -> bytes:
    """A gitree bundle (no reference) around raw git bundle bytes."""
    z = subprocess.run(["zstd", "-q", "-c", "-3", f"--long={window_log}", "--check"], input=git_bundle,
                       capture_output=True, check=True).stdout
    return BUNDLE_MAGIC + b"window-log %d\nreference 0 0\n\n" % window_log + z


def _pack(objects: list[tuple[int, int, bytes | None]], zeros: int = 0) -> bytes:
    """A pack of whole objects: (type, declared size, data or None for `zeros` zero bytes)."""
    import hashlib
    import struct
    out = bytearray(b"PACK" + struct.pack(">II", 2, len(objects)))
    for otype, size, data in objects:
        out += pack_entry_header(otype, size)
        if data is None:
            z = zlib.compressobj(9)
            chunk = bytes(1 << 20)
            for _ in range(zeros >> 20):
                out += z.compress(chunk)
            out += z.flush()
        else:
            out += zlib.compress(data)
    return bytes(out + hashlib.sha1(out).digest())


def _apply(work: str, repo: str, data: bytes, name: str = "b.gtb", mem: int = MEM_LIMIT):
    path = os.path.join(work, name)
    with open(path, "wb") as f:
        f.write(data)
    return run_limited("-C", repo, "bundle", "apply", path, mem=mem), path


def test_bundle_amplification_is_bounded(work, base):
    """A bundle of a few KB that inflates to a 1 GiB blob (the old 57 KB -> 1 GB case): objects are
    streamed into the pack, never held whole, so the applier stays under 300 MiB and refuses the bundle
    (it has no commit) with one line, moving no ref."""
    repo, _ = base
    size = 1 << 30
    gb = b"# v2 git bundle\n" + b"00" * 20 + b" refs/heads/main\n\n" + _pack([(OBJ_BLOB, size, None)], zeros=size)
    data = _wrap(gb)
    assert len(data) < 1 << 20
    before = refs(repo)
    r, _ = _apply(work, repo, data)
    assert_one_error(r, "tip")
    assert refs(repo) == before
    # an object whose header declares more than the limit is refused before it is inflated
    gb = b"# v2 git bundle\n" + b"00" * 20 + b" refs/heads/main\n\n" + \
        _pack([(OBJ_BLOB, limits.MAX_BUNDLE_BLOB + 1, b"")])
    r, _ = _apply(work, repo, _wrap(gb))
    assert_one_error(r, "limit")
    # a tree (held whole to be parsed) may not be larger than MAX_TREE_BYTES
    from gitree.packwriter import OBJ_TREE
    gb = b"# v2 git bundle\n" + b"00" * 20 + b" refs/heads/main\n\n" + \
        _pack([(OBJ_TREE, limits.MAX_TREE_BYTES + 1, b"")])
    r, _ = _apply(work, repo, _wrap(gb))
    assert_one_error(r, "limit")
    assert refs(repo) == before


def test_bundle_with_millions_of_prerequisites_is_refused_quickly(work, base):
    repo, cid = base
    lines = (b"-" + cid.encode() + b" x\n") * 2_000_000
    gb = b"# v2 git bundle\n" + lines + cid.encode() + b" refs/heads/main\n\n" + _pack([])
    data = _wrap(gb)
    assert len(data) < 1 << 20
    before = refs(repo)
    r, _ = _apply(work, repo, data)
    assert_one_error(r, f"more than {limits.MAX_BUNDLE_HEADER_LINES} prerequisites")
    assert refs(repo) == before
    # a header line longer than the limit
    gb = b"# v2 git bundle\n-" + cid.encode() + b" " + b"x" * 100_000 + b"\n\n"
    r, _ = _apply(work, repo, _wrap(gb))
    assert_one_error(r, "longer than")


def test_bundle_zstd_window_beyond_the_limit_is_refused(work, base):
    repo, _ = base
    before = refs(repo)
    r, _ = _apply(work, repo, BUNDLE_MAGIC + b"window-log 31\nreference 0 0\n\n")
    assert_one_error(r, "window-log")
    r, _ = _apply(work, repo, BUNDLE_MAGIC + b"window-log 27\nreference 99999999999 5\n\n")
    assert_one_error(r, "reference")
    assert refs(repo) == before


def _rewrap_with_ref(work: str, repo: str, rev: str, new_ref: bytes) -> bytes:
    """A full bundle of `rev` made by gitree, its ref line rewritten to `new_ref`."""
    gtb, plain = os.path.join(work, "src.gtb"), os.path.join(work, "plain.bundle")
    api.bundle_create(repo, rev, gtb, branch="main")
    api.bundle_unwrap(repo, gtb, plain)
    with open(plain, "rb") as f:
        data = f.read()
    os.unlink(gtb)
    os.unlink(plain)
    return _wrap(data.replace(b" refs/heads/main\n", b" " + new_ref + b"\n", 1))


@pytest.mark.parametrize("ref", [b"refs/gitree/ostree-cache", b"refs/heads/refs/gitree/ostree-cache",
                                 b"refs/tags/v1", b"HEAD", b"refs/heads/-x", b"refs/heads/a..b"])
def test_bundle_cannot_create_refs_outside_branches(work, base, ref):
    """Issue point 1's first step: a bundle named refs/gitree/ostree-cache created that ref. Only
    refs/heads/<valid branch name> may arrive."""
    repo, cid = base
    data = _rewrap_with_ref(work, repo, cid, ref)
    other = os.path.join(work, "other.git")
    api.init(other)
    before = refs(other)
    r, _ = _apply(work, other, data)
    assert_one_error(r)
    assert refs(other) == before
    # and gitree itself no longer writes such a bundle
    api_error(lambda: api.bundle_create(repo, cid, os.path.join(work, "x.gtb"), branch="refs/gitree/ostree-cache"),
              "invalid branch name")
    assert not os.path.exists(os.path.join(work, "x.gtb"))


def test_bundle_with_a_bad_commit_in_the_middle_moves_nothing(work, base):
    """Every incoming commit is verified, not only the tip: a hostile commit under a clean tip."""
    repo, cid = base
    g = pygit2.Repository(repo)
    root = root_with(repo, cid, [b"passwd f 644 0 0"], [(MODE_FILE, b"~gitree~passwd", blob(g, b"evil"))])
    bad = commit(repo, root, "bad", [cid])
    top = g[pygit2.Oid(hex=cid)].tree
    good = commit(repo, (top["rootfs"].id.raw, top["meta"].id.raw), "clean again", [bad])
    g.references.create("refs/heads/upd", pygit2.Oid(hex=good))
    other = os.path.join(work, "other.git")
    subprocess.run(["git", "clone", "-q", "--bare", "--single-branch", "-b", "main", repo, other], check=True)
    gtb = os.path.join(work, "u.gtb")
    api.bundle_create(repo, f"{cid}..upd", gtb, branch="main")
    before = refs(other)
    api_error(lambda: api.bundle_apply(other, gtb), bad, "canonical")
    assert refs(other) == before


# ---------------------------------------------------------------------------------------------
# fetch and clone: verify before any ref moves


def _server(work: str, repo: str) -> str:
    server = os.path.join(work, "server.git")
    subprocess.run(["git", "clone", "-q", "--bare", repo, server], check=True)
    return server


def _plain_git_commit(server: str, parent: str) -> str:
    g = pygit2.Repository(server)
    tree = write_tree(g, [(MODE_FILE, b"README", blob(g, b"not a rootfs\n"))])
    sig = pygit2.Signature("t", "t@example.invalid", 1700000000, 0)
    return str(g.create_commit(None, sig, sig, "plain\n", pygit2.Oid(raw=tree), [pygit2.Oid(hex=parent)]))


def test_fetch_of_a_non_gitree_commit_moves_no_branch(work, base):
    """fetch used to report an error for a server branch that moved to a non-gitree commit, and move the
    local branch anyway."""
    repo, cid = base
    server = _server(work, repo)
    local = os.path.join(work, "local.git")
    api.clone(server, local)
    g = pygit2.Repository(server)
    g.references["refs/heads/main"].set_target(pygit2.Oid(hex=_plain_git_commit(server, cid)))
    before = refs(local)
    r = run_gitree("-C", local, "fetch", server, check=False)
    assert_one_error(r, "not a gitree commit")
    assert refs(local) == before
    # a hostile gitree commit on one branch, a clean update on another: neither moves (one transaction)
    root = root_with(server, cid, [b".git d 755 0 0"], [(MODE_DIR, b".git", write_tree(g, []))],
                     [(MODE_DIR, b".git", write_tree(g, [(MODE_FILE, b".gitree", blob(g, table()))]))])
    g.references["refs/heads/main"].set_target(pygit2.Oid(hex=commit(server, root, "evil", [cid])))
    clean = commit(server, (g[pygit2.Oid(hex=cid)].tree["rootfs"].id.raw, g[pygit2.Oid(hex=cid)].tree["meta"].id.raw),
                   "clean", [cid])
    g.references.create("refs/heads/aaa", pygit2.Oid(hex=clean))
    api_error(lambda: api.fetch(local, server), ".git")
    assert refs(local) == before
    assert not [n for n in pygit2.Repository(local).references if "gitree-fetch" in n]
    # once the server is clean again, the same fetch moves both
    g.references["refs/heads/main"].set_target(pygit2.Oid(hex=clean))
    api.fetch(local, server)
    after = refs(local)
    assert after["refs/heads/main"] == clean and after["refs/heads/aaa"] == clean


def test_clone_of_a_hostile_server_leaves_nothing(work, base):
    repo, cid = base
    server = _server(work, repo)
    g = pygit2.Repository(server)
    evil = root_with(server, cid, [b"passwd f 644 0 0"], [(MODE_FILE, b"~gitree~passwd", blob(g, b"x"))])
    g.references.create("refs/heads/evil", pygit2.Oid(hex=commit(server, evil, "evil", [cid])))
    dest = os.path.join(work, "clone.git")
    api_error(lambda: api.clone(server, dest), "canonical")
    assert not os.path.exists(dest)
    os.mkdir(dest, 0o700)  # an empty directory given as the destination is left empty (it kept the branch)
    api_error(lambda: api.clone(server, dest), "canonical")
    assert os.listdir(dest) == []
    deep = os.path.join(work, "new", "parents", "clone.git")   # parents the clone made go with it
    api_error(lambda: api.clone(server, deep), "canonical")
    assert not os.path.exists(os.path.join(work, "new"))



def test_a_refused_clone_cleans_up_only_what_it_made(work, base, monkeypatch):  # noqa: F811
    """The clean-up of a refused clone holds what it made by descriptor and inode: a parent it made,
    renamed while git ran and replaced by a symlink to another directory, does not turn the clean-up onto
    that directory's contents."""
    from gitree.transport import distribution
    repo, cid = base
    victim = os.path.join(work, "victim")
    os.makedirs(os.path.join(victim, "y", "clone.git"))
    real = distribution._clone_into

    def swapping(url, path, args):
        os.rename(os.path.join(work, "x"), os.path.join(work, "x.moved"))
        os.symlink(victim, os.path.join(work, "x"))
        return real(url, os.path.join(work, "nowhere", "clone.git"), args)   # refused: nothing there
    monkeypatch.setattr(distribution, "_clone_into", swapping)
    with pytest.raises(api.GitreeError):
        api.clone(os.path.join(work, "no-such-server"), os.path.join(work, "x", "y", "clone.git"))
    assert os.path.isdir(os.path.join(victim, "y", "clone.git"))
    assert not os.path.exists(os.path.join(work, "x.moved", "y"))
    monkeypatch.undo()
    # a symlink before "..": the kernel resolves link/.. to elsewhere, not to the directory holding link
    os.makedirs(os.path.join(work, "elsewhere", "sub"))
    os.makedirs(os.path.join(work, "precious", "kept"))
    os.symlink(os.path.join(work, "elsewhere", "sub"), os.path.join(work, "link"))
    with pytest.raises(api.GitreeError):
        api.clone(os.path.join(work, "no-such-server"), os.path.join(work, "link", "..", "precious"))
    assert os.path.isdir(os.path.join(work, "precious", "kept"))
    assert not os.path.exists(os.path.join(work, "elsewhere", "precious"))


@pytest.mark.parametrize("bomb", ["table", "subtrees"])
def test_fetch_and_clone_of_an_amplifying_commit_are_bounded(work, base, bomb, git_daemon):  # noqa: F811
    """A server branch moved to a commit that is small as sent and huge as read (a 200 MB side table, or
    shared subtrees past MAX_COMMIT_ENTRIES): fetch and clone, under the 300 MiB address-space limit,
    refuse it with one line naming the limit; fetch moves no ref, clone leaves nothing. The server is a
    `git daemon` (a local path would run the server's git under the client's limit)."""
    repo, cid = base
    srv, url = git_daemon
    server = os.path.join(srv, "server.git")
    subprocess.run(["git", "clone", "-q", "--bare", repo, server], check=True)
    url += "/server.git"
    local = os.path.join(work, "local.git")
    api.clone(url, local)
    if bomb == "table":
        evil, words = _table_bomb(work, server, (cid,)), f"limit of {limits.MAX_TABLE_BYTES}"
    else:
        evil, words = _subtree_bomb(server, cid, True, (cid,)), f"more than {limits.MAX_COMMIT_ENTRIES} entries"
    pygit2.Repository(server).references["refs/heads/main"].set_target(pygit2.Oid(hex=evil))
    before = refs(local)
    assert_one_error(run_limited("-C", local, "fetch", url, timeout=120), words)
    assert refs(local) == before
    assert not [n for n in pygit2.Repository(local).references if "gitree-fetch" in n]
    dest = os.path.join(work, "clone.git")
    assert_one_error(run_limited("clone", url, dest, timeout=120), words)
    assert not os.path.exists(dest)


def _server_and_clone(work: str, repo: str, cid: str):
    """A server holding `repo`, a local clone of it, the server's pygit2 repository and the (content, meta)
    root of commit `cid`."""
    server = _server(work, repo)
    local = os.path.join(work, "local.git")
    api.clone(server, local)
    g = pygit2.Repository(server)
    top = g[pygit2.Oid(hex=cid)].tree
    return server, local, g, (top["rootfs"].id.raw, top["meta"].id.raw)


def test_fetch_and_clone_verify_commits_below_a_clean_tip(work, base):
    """The bad commit is the parent of a clean tip (same tree as the base): fetch moves no branch and
    leaves no quarantine ref, clone leaves nothing, for a non-gitree parent and a malformed one."""
    repo, cid = base
    server, local, g, clean_root = _server_and_clone(work, repo, cid)
    evil = commit(server, root_with(server, cid, [b"passwd f 644 0 0"],
                                    [(MODE_FILE, b"~gitree~passwd", blob(g, b"x"))]), "evil", [cid])
    for bad, words in ((_plain_git_commit(server, cid), "not a gitree commit"), (evil, "canonical")):
        tip = commit(server, clean_root, "clean tip", [bad])
        g.references["refs/heads/main"].set_target(pygit2.Oid(hex=tip))
        before = refs(local)
        assert_one_error(run_gitree("-C", local, "fetch", server, check=False), bad, words)
        assert refs(local) == before
        dest = os.path.join(work, "clone.git")
        assert_one_error(run_gitree("clone", server, dest, check=False), bad, words)
        assert not os.path.lexists(dest)


def test_fetch_and_clone_take_only_branches(work, base):
    """A server that also holds a tag (on the fetched commit, so git's tag following would take it), the
    old export cache ref and another ref under refs/gitree/: only refs/heads/ arrive, and the fetched
    branch is the server's."""
    repo, cid = base
    server, local, g, root = _server_and_clone(work, repo, cid)
    new = commit(server, root, "update", [cid])
    g.references["refs/heads/main"].set_target(pygit2.Oid(hex=new))
    side = _plain_git_commit(server, cid)
    git(server, "tag", "-a", "-m", "t", "X", new)
    g.references.create("refs/tags/Y", pygit2.Oid(hex=new))
    g.references.create("refs/gitree/ostree-cache", pygit2.Oid(hex=side))
    g.references.create("refs/gitree/anything", pygit2.Oid(hex=new))
    api.fetch(local, server)
    clone = os.path.join(work, "clone.git")
    api.clone(server, clone)
    for r in (local, clone):
        got = refs(r)
        assert {k for k in got if k != "<HEAD file>"} == {"refs/heads/main"}, got
        assert got["refs/heads/main"] == new
        assert pygit2.Repository(r).get(side) is None  # the cache ref's commit was not even fetched


# ---------------------------------------------------------------------------------------------
# output files


@pytest.mark.parametrize("what", ["checkout-tar", "bundle-create", "bundle-unwrap"])
def test_output_files_ignore_planted_temporary_names(work, base, what):
    """`checkout --tar FILE` used to write through a symlink planted at FILE.gitree-tmp. Every output file
    is now created under a random name with O_EXCL|O_NOFOLLOW and renamed; a symlink at FILE itself is
    replaced, not followed."""
    repo, cid = base
    victim = os.path.join(work, "victim")
    with open(victim, "wb") as f:
        f.write(b"precious\n")
    out = os.path.join(work, "out.file")
    gtb = os.path.join(work, "in.gtb")
    if what == "bundle-unwrap":
        api.bundle_create(repo, "main", gtb)
    for planted in (out + ".gitree-tmp", out):
        os.symlink(victim, planted)
        {"checkout-tar": lambda: api.checkout_tar(repo, cid, out),
         "bundle-create": lambda: api.bundle_create(repo, "main", out),
         "bundle-unwrap": lambda: api.bundle_unwrap(repo, gtb, out)}[what]()
        with open(victim, "rb") as f:
            assert f.read() == b"precious\n"
        assert stat.S_ISREG(os.lstat(out).st_mode) and os.path.getsize(out) > 100
        os.unlink(out)
        if os.path.lexists(out + ".gitree-tmp"):
            os.unlink(out + ".gitree-tmp")
    leftovers = [n for n in os.listdir(work) if ".gitree-" in n]
    assert not leftovers, leftovers


def test_refused_output_leaves_no_temporary_file(work, base):
    repo, cid = base
    g = pygit2.Repository(repo)
    root = root_with(repo, cid, [b"motd f 644 0 0"],
                     [(MODE_FILE, b"motd", blob(g, b"a")), (MODE_FILE, b"motd", blob(g, b"b"))])
    out = os.path.join(work, "o.tar")
    before = sorted(os.listdir(work))
    api_error(lambda: api.checkout_tar(repo, commit(repo, root), out))
    assert sorted(os.listdir(work)) == before


# ---------------------------------------------------------------------------------------------
# refs from imports


@pytest.mark.parametrize("branch", ["refs/gitree/ostree-cache", "refs/tags/x", "HEAD", "a..b"])
def test_import_writes_only_branches(work, base, branch):
    repo, _ = base
    tar = make_tar(os.path.join(work, "t.tar"), BASE_MEMBERS[:3])
    before = refs(repo)
    if branch == "HEAD":
        assert_one_error(run_gitree("-C", repo, "import-rootfs", tar, "-b", branch, check=False), "invalid branch")
    else:
        api_error(lambda: api.import_rootfs(repo, tar, branch=branch), "invalid branch")
    assert refs(repo) == before


def test_executable_bit_agreement_is_checked(work, base):
    """The git mode must agree with the table's owner-execute bit (a plain-git reviewer sees 100644)."""
    repo, cid = base
    g = pygit2.Repository(repo)
    root = root_with(repo, cid, [b"run f 755 0 0"], [(MODE_FILE, b"run", blob(g, b"#!/bin/sh\n"))])
    api_error(lambda: api.ls(repo, commit(repo, root), recursive=True), "git mode")
    root = root_with(repo, cid, [b"run f 755 0 0"], [(MODE_EXEC, b"run", blob(g, b"#!/bin/sh\n"))])
    api.fsck(repo, [commit(repo, root)], check=True)
    root = root_with(repo, cid, [b"lnk l 777 0 0"], [(MODE_LINK, b"lnk", blob(g, b""))])
    api_error(lambda: api.ls(repo, commit(repo, root), recursive=True), "symlink target")


def test_checkout_beyond_the_descriptor_window_round_trips(work, base):
    """Directories deeper than the writer's descriptor window (closed, then reopened through `..` when the
    walk climbs back) get their files, siblings and metadata exactly as a tar checkout describes them."""
    from helpers import dir_summary, tar_summary
    repo, _ = base
    members = [(b"./", stat.S_IFDIR, 0o755)]
    path = b"."
    for level in range(80):
        path += b"/l%02d" % level
        members.append((path + b"/", stat.S_IFDIR, 0o750 if level % 3 else 0o555, {"uid": level}))
        members.append((path + b"/f", stat.S_IFREG, 0o640, {"data": b"%d" % level}))
        if level % 10 == 9:
            members.append((path + b"/h", stat.S_IFREG, 0o640, {"linkname": b"./l00/f", "hardlink": True}))
    members.append((b"./zz/", stat.S_IFDIR, 0o700))
    members.append((b"./zz/last", stat.S_IFREG, 0o600, {"data": b"after the climb"}))
    tar = os.path.join(work, "wide.tar")
    buf = io.BytesIO()
    w = TarWriter(buf.write)
    for m in members:
        kw = dict(m[3]) if len(m) > 3 else {}
        data, uid = kw.pop("data", b""), kw.pop("uid", 0)
        if m[1] == stat.S_IFREG and not kw.get("hardlink"):
            kw["size"] = len(data)
        w.add(m[0], m[1], m[2], uid, 0, **kw)
        if kw.get("size"):
            w.add_data(data)
            w.pad(len(data))
    w.close()
    with open(tar, "wb") as f:
        f.write(buf.getvalue())
    rev = api.import_rootfs(repo, tar, branch="wide").commit
    dest, out = os.path.join(work, "dest"), os.path.join(work, "out.tar")
    r = run_limited("-C", repo, "checkout", rev, dest, nofile=48)
    assert r.returncode == 0, r.stderr.decode()
    api.checkout_tar(repo, rev, out)
    assert dir_summary(dest) == tar_summary(out)


def test_a_name_with_a_newline_still_gives_one_error_line(work, base):
    """Linux names may hold newlines and control characters; an error naming one stays one line."""
    repo, cid = base
    root = root_with(repo, cid, [b"a%0Ab%1C f 644 0 0"], [])
    r = run_gitree("-C", repo, "checkout", commit(repo, root), os.path.join(work, "d"), check=False)
    assert_one_error(r, "/a\\x0ab\\x1c")
