"""The command-line contract: repository selection, init, import from every source form, inspection
commands (log, show, ls, diff), fsck, one-line errors, and git compatibility of what is stored.

Everything runs the real CLI against real repositories, real GNU tar, gzip, xz and zstd archives.
"""

from __future__ import annotations

import base64
import datetime
import os
import shutil
import stat
import subprocess
import tempfile

import pygit2
import pytest
from helpers import dir_summary, last_line, run_gitree, tar_summary

T1 = 1_700_000_000
T2 = 1_700_000_100
CAP = base64.b64decode("AQAAAgAgAAAAAAAAAAAAAAAAAAA=")  # a valid vfs capability (cap_net_raw)

TOOL = b"#!/bin/sh\necho tool\n"                      # 20 bytes
PASSWD = b"root:x:0:0:root:/root:/bin/sh\n"           # 30 bytes
SHADOW = b"root:*:19000:0:99999:7:::\n"               # 26 bytes
LIBX = b"\x7fELF" + bytes(range(256))                 # 260 bytes


# ---------------------------------------------------------------------------------------------
# helpers


def git(repo: str, *args: str, check: bool = True) -> str:
    r = subprocess.run(["git", "--git-dir", repo, *args], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed ({r.returncode}): {r.stderr}")
    return r.stdout.rstrip("\n")


def out_lines(r: subprocess.CompletedProcess) -> list[str]:
    return r.stdout.decode("utf-8", "backslashreplace").splitlines()


def assert_one_error_line(r: subprocess.CompletedProcess, *keywords: str) -> str:
    err = r.stderr.decode("utf-8", "replace")
    assert r.returncode != 0, f"expected failure, got success: {r.stdout!r} {err!r}"
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, f"expected exactly one stderr line, got: {err!r}"
    assert lines[0].startswith("gitree: error:"), lines[0]
    for k in keywords:
        assert any(a.lower() in lines[0].lower() for a in k.split("|")), f"{k!r} not in {lines[0]!r}"
    return lines[0]


def put(path: str, data: bytes, mode: int = 0o644, uid: int = 0, gid: int = 0, xattrs: dict | None = None) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    os.chown(path, uid, gid)
    os.chmod(path, mode)
    for k, v in (xattrs or {}).items():
        os.setxattr(path, k, v)


def mkdir(path: str, mode: int = 0o755, uid: int = 0, gid: int = 0, xattrs: dict | None = None) -> None:
    os.makedirs(path, exist_ok=True)
    os.chown(path, uid, gid)
    os.chmod(path, mode)
    for k, v in (xattrs or {}).items():
        os.setxattr(path, k, v)


def make_tree(root: str) -> None:
    """A small rootfs with every kind of entry, owners, special modes, xattrs and a hard link."""
    mkdir(root)
    for d in ("bin", "dev", "etc", "home", "run", "usr", "usr/bin", "usr/lib", "var"):
        mkdir(os.path.join(root, d))
    put(os.path.join(root, "bin/tool"), TOOL, 0o755, xattrs={"security.capability": CAP})
    os.link(os.path.join(root, "bin/tool"), os.path.join(root, "usr/bin/hl"))
    put(os.path.join(root, "usr/bin/su"), b"su\n", 0o4755)
    put(os.path.join(root, "usr/lib/libx.so.1"), LIBX)
    os.symlink("libx.so.1", os.path.join(root, "usr/lib/libx.so"))
    os.mknod(os.path.join(root, "dev/null"), stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.chmod(os.path.join(root, "dev/null"), 0o666)
    os.mknod(os.path.join(root, "dev/sda"), stat.S_IFBLK | 0o660, os.makedev(8, 0))
    os.chmod(os.path.join(root, "dev/sda"), 0o660)
    os.chown(os.path.join(root, "dev/sda"), 0, 6)
    put(os.path.join(root, "etc/hostname"), b"myhost\n")
    put(os.path.join(root, "etc/passwd"), PASSWD)
    put(os.path.join(root, "etc/shadow"), SHADOW, 0o640, 0, 42)
    mkdir(os.path.join(root, "home/user"), 0o750, 1000, 1000, {"user.note": b"hello"})
    put(os.path.join(root, "home/user/notes.txt"), b"hello\n", 0o600, 1000, 1000,
        {"user.mime_type": b"text/plain"})
    os.mkfifo(os.path.join(root, "run/fifo"))
    os.chmod(os.path.join(root, "run/fifo"), 0o600)
    mkdir(os.path.join(root, "var/empty"), 0o700, 100, 101, {"trusted.overlay.opaque": b"y"})


def gnu_tar(src: str, out: str) -> None:
    subprocess.run(["tar", "--xattrs", "--xattrs-include=*", "--format=posix", "--numeric-owner",
                    "-C", src, "-cf", out, "."], check=True)


def import_(repo: str, source: str, branch: str = "main", msg: str = "first", ts: int = T1, **kw) -> str:
    r = run_gitree("-C", repo, "import-rootfs", source, "-b", branch, "-m", msg, "--timestamp", str(ts), **kw)
    lines = out_lines(r)
    assert len(lines) == 1 and len(lines[0]) == 40 and int(lines[0], 16) >= 0, lines
    return lines[0]


@pytest.fixture(scope="module")
def std(tmpfs_root):
    """(repo, src, commit): the standard tree imported once on main; read-only for the tests using it."""
    d = tempfile.mkdtemp(prefix="cli-std-", dir=tmpfs_root)
    src = os.path.join(d, "src")
    make_tree(src)
    repo = os.path.join(d, "repo.git")
    run_gitree("-C", repo, "init")
    cid = import_(repo, src)
    yield repo, src, cid
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def std_copy(work, std):
    """A private copy of the standard repository (and its source tree) for tests that write."""
    repo = os.path.join(work, "repo.git")
    shutil.copytree(std[0], repo, symlinks=True)
    src = os.path.join(work, "src")
    subprocess.run(["cp", "-a", std[1], src], check=True)  # keeps hard links, devices, xattrs
    return repo, src, std[2]


# ---------------------------------------------------------------------------------------------
# repository selection and init


def test_init_creates_a_bare_git_repository(work):
    path = os.path.join(work, "r.git")
    r = run_gitree("-C", path, "init")
    assert out_lines(r) == [f"initialized gitree repository in {os.path.abspath(path)}"]
    assert subprocess.run(["git", "-C", path, "rev-parse", "--is-bare-repository"], capture_output=True,
                          text=True, check=True).stdout.strip() == "true"
    assert git(path, "config", "gitree.format") == "1"
    # a second init refuses, in one line, and changes nothing
    before = sorted(os.listdir(path))
    assert_one_error_line(run_gitree("-C", path, "init", check=False), "exists")
    assert sorted(os.listdir(path)) == before


def test_repo_from_env_cwd_and_option(work):
    a, b, c = (os.path.join(work, n) for n in ("a.git", "b.git", "c.git"))
    run_gitree("init", env={"GITREE_REPO": a})
    run_gitree("-C", b, "init")
    os.mkdir(c)
    run_gitree("init", cwd=c)
    for p in (a, b, c):
        assert subprocess.run(["git", "-C", p, "rev-parse", "--is-bare-repository"], capture_output=True,
                              text=True).stdout.strip() == "true"
    src = os.path.join(work, "src")
    put(os.path.join(src, "only-in-a"), b"a")
    ca = import_(a, src, msg="in a")  # via -C
    os.unlink(os.path.join(src, "only-in-a"))
    put(os.path.join(src, "only-in-b"), b"b")
    r = run_gitree("import-rootfs", src, "-b", "main", "-m", "in b", env={"GITREE_REPO": b})
    cb = last_line(r)
    assert git(a, "rev-parse", "main") == ca and git(b, "rev-parse", "main") == cb
    # GITREE_REPO selects, -C wins over it, and the current directory is the default
    assert out_lines(run_gitree("ls", "main", env={"GITREE_REPO": a})) == ["only-in-a"]
    assert out_lines(run_gitree("-C", b, "ls", "main", env={"GITREE_REPO": a})) == ["only-in-b"]
    assert out_lines(run_gitree("ls", "main", cwd=b)) == ["only-in-b"]
    assert out_lines(run_gitree("--repo", a, "ls", "main", cwd=b)) == ["only-in-a"]


# ---------------------------------------------------------------------------------------------
# import from every source form


def test_every_source_form_gives_the_same_commit(work, std_copy):
    repo, src, cid = std_copy
    tar = os.path.join(work, "t.tar")
    gnu_tar(src, tar)
    subprocess.run(["gzip", "-k", tar], check=True)
    subprocess.run(["xz", "-k", "-T1", tar], check=True)
    subprocess.run(["zstd", "-q", "-k", tar], check=True)
    ids = {"dir-again": import_(repo, src, "from-dir")}
    for ext in ("", ".gz", ".xz", ".zst"):
        ids["tar" + ext] = import_(repo, tar + ext, "from-tar" + ext)
    with open(tar + ".zst", "rb") as f:
        ids["stdin-zst"] = import_(repo, "-", "from-stdin-zst", input=f.read())
    with open(tar, "rb") as f:
        ids["stdin"] = import_(repo, "-", "from-stdin", input=f.read())
    # same content, message, time and (no) parent: the very same commit as the directory import on main
    assert ids == {k: cid for k in ids}
    trees = {git(repo, "rev-parse", f"{b}^{{tree}}") for b in
             ("main", "from-dir", "from-tar", "from-tar.gz", "from-tar.xz", "from-tar.zst", "from-stdin")}
    assert len(trees) == 1
    assert git(repo, "rev-list", "--count", "from-tar.xz") == "1"


@pytest.mark.parametrize("comp", ["gzip", "xz", "zstd"])
def test_compressed_tar_with_large_record_padding(work, comp):
    """GNU tar pads an archive to whole records; with a large blocking factor (here 1 MiB records) the
    decompressor still has much to write after the end-of-archive blocks. The import must succeed."""
    src = os.path.join(work, "src")
    put(os.path.join(src, "etc/hostname"), b"padded\n")
    tar = os.path.join(work, "t.tar")
    subprocess.run(["tar", "--format=posix", "--blocking-factor=2048", "-C", src, "-cf", tar, "."], check=True)
    assert os.path.getsize(tar) == 1 << 20
    subprocess.run([comp, "-q", tar], check=True)
    repo = os.path.join(work, "r.git")
    run_gitree("-C", repo, "init")
    cid = import_(repo, tar + {"gzip": ".gz", "xz": ".xz", "zstd": ".zst"}[comp])
    assert git(repo, "show", f"{cid}:rootfs/etc/hostname") == "padded"


def test_import_prints_commit_and_parent_is_previous_tip(work, std_copy):
    repo, src, cid = std_copy
    assert git(repo, "rev-list", "--parents", "-n1", cid) == cid  # the first commit has no parent
    put(os.path.join(src, "etc/hostname"), b"other\n")
    r = run_gitree("-C", repo, "import-rootfs", src, "-b", "main")
    lines = out_lines(r)
    assert len(lines) == 1
    c2 = lines[0]
    assert git(repo, "rev-parse", "main") == c2
    assert git(repo, "rev-parse", c2 + "^") == cid
    assert git(repo, "log", "-1", "--format=%s", c2) == "Import src"
    # a new branch starts without a parent, and leaves main alone
    c3 = import_(repo, src, "other", msg="x", ts=T2)
    assert git(repo, "rev-list", "--parents", "-n1", c3) == c3
    assert git(repo, "rev-parse", "main") == c2
    assert git(repo, "show", "-s", "--format=%ct %s", c3) == f"{T2} x"


# ---------------------------------------------------------------------------------------------
# log, show, ls


def _date(ts: int) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def test_log(work):
    repo = os.path.join(work, "r.git")
    run_gitree("-C", repo, "init")
    src = os.path.join(work, "src")
    put(os.path.join(src, "f"), b"1")
    c1 = import_(repo, src, msg="first", ts=T1)
    put(os.path.join(src, "f"), b"2")
    c2 = import_(repo, src, msg="second\n\nwith a body\nof two lines", ts=T2)
    full = [
        f"commit {c2}", f"Date:   {_date(T2)} UTC ({T2})", "",
        "    second", "    ", "    with a body", "    of two lines", "",
        f"commit {c1}", f"Date:   {_date(T1)} UTC ({T1})", "", "    first", "",
    ]
    assert out_lines(run_gitree("-C", repo, "log")) == full
    assert out_lines(run_gitree("-C", repo, "log", "main")) == full
    assert out_lines(run_gitree("-C", repo, "log", "-n", "1", "main")) == full[:8]
    assert out_lines(run_gitree("-C", repo, "log", c1)) == full[8:]


def test_show(std):
    repo, src, cid = std
    content = len(TOOL) + len(b"myhost\n") + len(PASSWD) + len(SHADOW) + len(b"hello\n") + len(b"su\n") + len(LIBX)
    assert out_lines(run_gitree("-C", repo, "show", "main")) == [
        f"commit {cid}", f"Date:   {_date(T1)} UTC ({T1})", "", "    first", "",
        "entries: 8 file, 12 dir, 1 symlink, 1 char, 1 block, 1 fifo",
        f"content: {content} bytes in regular files; 1 hard links; 5 entries with xattrs",
        f"rootfs tree {git(repo, 'rev-parse', 'main:rootfs')}  meta tree {git(repo, 'rev-parse', 'main:meta')}",
    ]


LS_CASES = [
    ([], ["bin", "dev", "etc", "home", "run", "usr", "var"]),
    (["/"], ["bin", "dev", "etc", "home", "run", "usr", "var"]),
    (["etc"], ["hostname", "passwd", "shadow"]),
    (["etc/"], ["hostname", "passwd", "shadow"]),
    (["etc/hostname"], ["/etc/hostname"]),
    (["-l", "etc"], ["-rw-r--r--     0     0          7 hostname",
                     "-rw-r--r--     0     0         30 passwd",
                     "-rw-r-----     0    42         26 shadow"]),
    (["-l", "dev"], ["crw-rw-rw-     0     0       1, 3 null",
                     "brw-rw----     0     6       8, 0 sda"]),
    (["-l", "usr/lib"], ["lrwxrwxrwx     0     0          0 libx.so -> libx.so.1",
                         "-rw-r--r--     0     0        260 libx.so.1"]),
    (["-l", "usr/bin"], ["-rwxr-xr-x     0     0         20 hl => /bin/tool [security.capability]",
                         "-rwsr-xr-x     0     0          3 su"]),
    (["-l", "bin/tool"], ["-rwxr-xr-x     0     0         20 /bin/tool [security.capability]"]),
    (["-l", "home"], ["drwxr-x---  1000  1000          0 user [user.note]"]),
    (["-l", "home/user/notes.txt"], ["-rw-------  1000  1000          6 /home/user/notes.txt [user.mime_type]"]),
    (["-l", "var"], ["drwx------   100   101          0 empty [trusted.overlay.opaque]"]),
    (["-l", "run"], ["prw-------     0     0          0 fifo"]),
    (["var/empty"], []),
    (["-R", "usr"], ["/usr", "/usr/bin", "/usr/bin/hl", "/usr/bin/su", "/usr/lib", "/usr/lib/libx.so",
                     "/usr/lib/libx.so.1"]),
    (["-R", "-l", "home"], ["drwxr-xr-x     0     0          0 /home",
                            "drwxr-x---  1000  1000          0 /home/user [user.note]",
                            "-rw-------  1000  1000          6 /home/user/notes.txt [user.mime_type]"]),
]


@pytest.mark.parametrize("args,expected", LS_CASES, ids=[" ".join(a) or "(root)" for a, _ in LS_CASES])
def test_ls(std, args, expected):
    repo, src, cid = std
    flags = [a for a in args if a.startswith("-")]
    paths = [a for a in args if not a.startswith("-")]
    assert out_lines(run_gitree("-C", repo, "ls", *flags, "main", *paths)) == expected


def test_ls_recursive_root_lists_everything(std):
    repo, src, cid = std
    lines = out_lines(run_gitree("-C", repo, "ls", "-R", cid))
    want = ["/"] + sorted("/" + os.path.relpath(os.path.join(dp, n), src)
                          for dp, dns, fns in os.walk(src) for n in dns + fns)
    assert sorted(lines) == sorted(want)
    assert lines[0] == "/"


@pytest.mark.parametrize("path", ["nope", "etc/nope", "nope/deeper", "etc/hostname/below"])
def test_ls_missing_path_is_one_line_error(std, path):
    repo, src, cid = std
    r = run_gitree("-C", repo, "ls", "main", path, check=False)
    assert_one_error_line(r, "/" + path.split("/")[0])
    assert r.stdout == b""


@pytest.mark.parametrize("flags", [["-R"], ["-R", "-l"]])
def test_ls_recursive_missing_path_is_an_error(std, flags):
    """`ls -R REV missing` must fail like `ls REV missing`, not print nothing and succeed."""
    repo, src, cid = std
    r = run_gitree("-C", repo, "ls", *flags, "main", "nope", check=False)
    assert_one_error_line(r, "/nope")


def test_git_can_read_stored_content(std):
    repo, src, cid = std
    assert git(repo, "show", f"{cid}:rootfs/etc/hostname") == "myhost"
    assert subprocess.run(["git", "--git-dir", repo, "show", f"{cid}:rootfs/usr/lib/libx.so.1"],
                          capture_output=True, check=True).stdout == LIBX
    assert git(repo, "cat-file", "-p", "main:format") == "gitree 1"
    assert git(repo, "ls-tree", "--name-only", "main") == "format\nmeta\nrootfs"
    assert git(repo, "ls-tree", "main:rootfs/usr/lib").splitlines()[0].startswith("120000 blob ")
    assert git(repo, "ls-tree", "main:rootfs/bin").startswith("100755 blob ")
    r = subprocess.run(["git", "--git-dir", repo, "fsck", "--strict"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


# ---------------------------------------------------------------------------------------------
# diff


def test_diff_reports_each_change(std_copy):
    repo, src, c1 = std_copy
    s = lambda p: os.path.join(src, p)  # noqa: E731
    put(s("etc/hostname"), b"changed\n", uid=5, gid=5)                     # content + owner
    os.chmod(s("etc/shadow"), 0o600)                                         # mode only
    os.chown(s("home/user/notes.txt"), 0, 0)                                 # owner
    os.setxattr(s("home/user/notes.txt"), "user.mime_type", b"text/x-note")  # xattr changed
    os.setxattr(s("etc/passwd"), "user.x", b"1")                             # xattr added
    os.removexattr(s("var/empty"), "trusted.overlay.opaque")                 # xattr removed, on a directory
    put(s("etc/new"), b"new\n")                                              # added
    os.unlink(s("usr/bin/su"))                                               # deleted
    shutil.rmtree(s("run"))
    put(s("run"), b"now a file\n")                                           # directory -> file
    os.unlink(s("usr/lib/libx.so"))
    os.symlink("libx.so.2", s("usr/lib/libx.so"))                            # symlink target
    os.unlink(s("dev/null"))
    os.mknod(s("dev/null"), stat.S_IFCHR | 0o666, os.makedev(1, 5))          # device number
    os.chmod(s("dev/null"), 0o666)
    c2 = import_(repo, src, msg="second", ts=T2)
    assert out_lines(run_gitree("-C", repo, "diff", c1, c2)) == [
        "M /dev/null  device (1, 3) -> (1, 5)",
        "M /etc/hostname  content; owner 0:0 -> 5:5",
        "A /etc/new",
        "M /etc/passwd  xattr user.x added",
        "M /etc/shadow  mode 0640 -> 0600",
        "M /home/user/notes.txt  owner 1000:1000 -> 0:0; xattr user.mime_type changed",
        "M /run  type dir -> file",
        "D /run/fifo",
        "D /usr/bin/su",
        "M /usr/lib/libx.so  target",
        "M /var/empty  xattr trusted.overlay.opaque removed",
    ]
    assert out_lines(run_gitree("-C", repo, "diff", c2, c2)) == []
    back = out_lines(run_gitree("-C", repo, "diff", "main", c1))
    assert "A /usr/bin/su" in back and "D /etc/new" in back and "M /etc/shadow  mode 0600 -> 0640" in back


def test_diff_chmod_of_exec_bit_is_not_a_content_change(std_copy):
    """Making a file executable changes its git mode (100644 -> 100755) but not its content."""
    repo, src, c1 = std_copy
    os.chmod(os.path.join(src, "etc/passwd"), 0o755)
    os.chmod(os.path.join(src, "bin/tool"), 0o644)   # also changes the hard link /usr/bin/hl
    c2 = import_(repo, src, msg="second", ts=T2)
    assert out_lines(run_gitree("-C", repo, "diff", c1, c2)) == [
        "M /bin/tool  mode 0755 -> 0644",
        "M /etc/passwd  mode 0644 -> 0755",
        "M /usr/bin/hl  mode 0755 -> 0644",
    ]


def test_diff_lists_contents_of_added_deleted_and_retyped_directories(std_copy):
    """What appears or disappears with a directory is listed in full, whichever way it happens."""
    repo, src, c1 = std_copy
    s = lambda p: os.path.join(src, p)  # noqa: E731
    shutil.rmtree(s("home"))                       # deleted directory with a subdirectory
    os.unlink(s("etc/passwd"))
    put(s("etc/passwd/inner"), b"i\n")             # file -> directory with content
    shutil.rmtree(s("usr/lib"))
    put(s("usr/lib"), b"lib\n")                    # directory with content -> file
    put(s("opt/pkg/bin/x"), b"x\n")                # added directory tree
    c2 = import_(repo, src, msg="second", ts=T2)
    assert out_lines(run_gitree("-C", repo, "diff", c1, c2)) == [
        "M /etc/passwd  type file -> dir",
        "A /etc/passwd/inner",
        "D /home/",
        "D /home/user/",
        "D /home/user/notes.txt",
        "A /opt/",
        "A /opt/pkg/",
        "A /opt/pkg/bin/",
        "A /opt/pkg/bin/x",
        "M /usr/lib  type dir -> file",
        "D /usr/lib/libx.so",
        "D /usr/lib/libx.so.1",
    ]


def test_diff_added_directory_holding_a_hard_link_to_an_older_file(std_copy):
    """The added subtree's hard link has its leader outside that subtree (earlier in walk order)."""
    repo, src, c1 = std_copy
    os.mkdir(os.path.join(src, "opt"))
    os.link(os.path.join(src, "etc/passwd"), os.path.join(src, "opt/passwd-link"))
    c2 = import_(repo, src, msg="second", ts=T2)
    assert out_lines(run_gitree("-C", repo, "diff", c1, c2)) == ["A /opt/", "A /opt/passwd-link"]
    assert out_lines(run_gitree("-C", repo, "diff", c2, c1)) == ["D /opt/", "D /opt/passwd-link"]


# ---------------------------------------------------------------------------------------------
# fsck


def _replace_table(repo: str, rev: str, dirpath: str, edit, branch: str) -> str:
    """Commit a copy of `rev` whose side table for `dirpath` is `edit(old table bytes)` (None: removed)."""
    g = pygit2.Repository(repo)
    commit = g.revparse_single(rev).peel(pygit2.Commit)

    def rebuild(tree: pygit2.Tree, parts: list[str]) -> pygit2.Oid:
        tb = g.TreeBuilder(tree)
        if not parts:
            new = edit(g[tree[".gitree"].id].data)
            if new is None:
                tb.remove(".gitree")
            else:
                tb.insert(".gitree", g.create_blob(new), pygit2.GIT_FILEMODE_BLOB)
        else:
            tb.insert(parts[0], rebuild(g[tree[parts[0]].id], parts[1:]), pygit2.GIT_FILEMODE_TREE)
        return tb.write()

    parts = ["meta"] + [p for p in dirpath.split("/") if p]
    top = rebuild(commit.tree, parts)
    sig = pygit2.Signature("t", "t@localhost", T2, 0)
    return str(g.create_commit("refs/heads/" + branch, sig, sig, "corrupt\n", top, [commit.id]))


def _drop_row(name: bytes):
    return lambda t: b"".join(line for line in t.splitlines(True) if not line.startswith(name + b" "))


def _sub_row(name: bytes, new_row: bytes):
    return lambda t: b"".join(new_row if line.startswith(name + b" ") else line for line in t.splitlines(True))


def test_fsck_clean(std):
    repo, src, cid = std
    r = run_gitree("-C", repo, "fsck")
    assert r.returncode == 0 and r.stdout == b""
    assert run_gitree("-C", repo, "fsck", "main", cid).returncode == 0


@pytest.mark.parametrize("dirpath,edit,where", [
    ("etc", _drop_row(b"hostname"), "/etc/hostname"),                       # a file without its row
    ("usr", _drop_row(b"lib"), "/usr/lib"),                                 # a directory without its row
    ("etc", _sub_row(b"shadow", b"shadow f 9z9 0 42\n"), "/etc"),            # an unparsable row
    ("etc", _sub_row(b"shadow", b"shadow l 777 0 0\n"), "/etc/shadow"),      # the row disagrees with the tree
    ("home/user", _sub_row(b"notes.txt", b"notes.txt f 600 1000 1000 x=user.mime_type\n"), "/home/user"),
    ("usr/bin", lambda t: t.replace(b" h=bin/tool ", b" h=etc/passwd "), "/usr/bin/hl"),
    ("var/empty", lambda t: None, "/var/empty"),                          # no table at all
    ("", lambda t: t + b"zzz f 644 0 0\n", "/zzz"),                      # a row without a tree entry
], ids=["missing-file-row", "missing-dir-row", "bad-row", "wrong-kind", "bad-xattr", "bad-hardlink",
        "missing-table", "extra-row"])
def test_fsck_names_the_corrupt_path(std_copy, dirpath, edit, where):
    repo, src, cid = std_copy
    bad = _replace_table(repo, cid, dirpath, edit, "corrupt")
    r = run_gitree("-C", repo, "fsck", bad, check=False)
    assert_one_error_line(r, "problem")
    lines = out_lines(r)
    assert lines, "fsck printed no problem"
    assert all(line.startswith(bad + ": /") for line in lines), lines
    assert any(line.startswith(f"{bad}: {where}:") for line in lines), lines
    # the good commit is still clean; checking every branch finds the bad one
    assert run_gitree("-C", repo, "fsck", cid).returncode == 0
    r = run_gitree("-C", repo, "fsck", check=False)
    assert r.returncode != 0 and any("corrupt: /" in line for line in out_lines(r))


def test_fsck_reports_branches_and_parents_that_name_no_commit(std_copy):
    """A branch naming a missing object or a tree, and a commit whose parent is missing, are problems fsck
    lists (it used to end in an internal error on the first); the good branch is still checked."""
    repo, src, cid = std_copy
    with open(os.path.join(repo, "refs", "heads", "gone"), "w") as f:
        f.write("12" * 20 + "\n")
    tree = subprocess.run(["git", "--git-dir", repo, "rev-parse", cid + "^{tree}"], capture_output=True,
                          text=True, check=True).stdout.strip()
    with open(os.path.join(repo, "refs", "heads", "atree"), "w") as f:
        f.write(tree + "\n")
    body = subprocess.run(["git", "--git-dir", repo, "cat-file", "commit", cid], capture_output=True,
                          check=True).stdout.replace(b"\n", b"\nparent " + b"34" * 20 + b"\n", 1)
    orphan = subprocess.run(["git", "--git-dir", repo, "hash-object", "-t", "commit", "-w", "--literally",
                             "--stdin"], input=body, capture_output=True, check=True).stdout.decode().strip()
    with open(os.path.join(repo, "refs", "heads", "orphan"), "w") as f:
        f.write(orphan + "\n")
    r = run_gitree("-C", repo, "fsck", check=False)
    assert_one_error_line(r, "3 problem")
    assert sorted(out_lines(r)) == sorted([
        f"refs/heads/gone: /: missing commit {'12' * 20}",
        f"refs/heads/atree: /: {tree} is a tree, not a commit",
        f"{'34' * 20}: /: missing commit {'34' * 20}, parent of {orphan}"]), out_lines(r)


# ---------------------------------------------------------------------------------------------
# errors: one line on stderr, no traceback


def test_errors_are_one_line(work, std):
    repo, src, cid = std
    notatar = os.path.join(work, "notes.txt")
    with open(notatar, "w") as f:
        f.write("just some text, not an archive\n" * 30)
    small = os.path.join(work, "small.txt")
    with open(small, "w") as f:
        f.write("tiny\n")
    plain = os.path.join(work, "plain-file")
    with open(plain, "w") as f:
        f.write("x")
    empty_dir = os.path.join(work, "empty")
    os.mkdir(empty_dir)
    dest = os.path.join(work, "dest")
    cases = [
        (["-C", repo, "ls", "nosuchrev"], "unknown revision"),
        (["-C", repo, "show", "nosuchrev"], "unknown revision"),
        (["-C", repo, "log", "nosuchrev"], "unknown revision"),
        (["-C", repo, "diff", "main", "nosuchrev"], "unknown revision"),
        (["-C", repo, "fsck", "nosuchrev"], "unknown revision"),
        (["-C", repo, "checkout", "nosuchrev", dest], "unknown revision"),
        (["-C", repo, "checkout", "main"], "dest|--tar"),
        (["-C", repo, "import-rootfs", os.path.join(work, "missing.tar"), "-b", "x"], "missing.tar"),
        (["-C", repo, "import-rootfs", notatar, "-b", "x"], "tar|checksum"),
        (["-C", repo, "import-rootfs", small, "-b", "x"], "tar|truncated"),
        (["-C", repo, "import-rootfs", src, "-b", "a..b"], "branch"),
        (["-C", repo, "import-rootfs", src, "-b", "with space"], "branch"),
        (["-C", repo, "import-rootfs", src, "-b", "x.lock"], "branch"),
        (["-C", repo, "import-rootfs", src, "-b", "a//b"], "branch"),
        (["-C", os.path.join(work, "nowhere"), "ls", "main"], "repository"),
        (["-C", empty_dir, "ls", "main"], "repository"),
        (["-C", plain, "log"], "repository"),
        (["-C", os.path.join(work, "nowhere"), "import-rootfs", src, "-b", "main"], "repository"),
        (["-C", repo, "import-rootfs", src], "branch"),   # a required option is missing
        (["-C", repo, "nosuchcommand"], "nosuchcommand"),
    ]
    for args, keyword in cases:
        r = run_gitree(*args, check=False)
        assert_one_error_line(r, keyword)
        assert r.stdout == b"", args
    assert not os.path.exists(dest)
    assert not os.path.exists(os.path.join(work, "nowhere"))
    assert os.listdir(empty_dir) == []
    assert git(repo, "for-each-ref", "--format=%(refname)") == "refs/heads/main"


def test_errors_on_non_gitree_commits_and_empty_repos(work):
    repo = os.path.join(work, "r.git")
    run_gitree("-C", repo, "init")
    assert_one_error_line(run_gitree("-C", repo, "fsck", check=False), "branch")
    assert_one_error_line(run_gitree("-C", repo, "log", check=False), "unknown revision|HEAD")
    g = pygit2.Repository(repo)
    sig = pygit2.Signature("t", "t@localhost", T1, 0)
    tree = g.TreeBuilder()
    tree.insert("README", g.create_blob(b"plain git\n"), pygit2.GIT_FILEMODE_BLOB)
    g.create_commit("refs/heads/plain", sig, sig, "plain\n", tree.write(), [])
    for args in (["ls", "plain"], ["show", "plain"], ["checkout", "plain", os.path.join(work, "d")],
                 ["diff", "plain", "plain~0"]):
        assert_one_error_line(run_gitree("-C", repo, *args, check=False), "gitree commit")


def test_debug_shows_a_traceback(std):
    repo, src, cid = std
    r = run_gitree("--debug", "-C", repo, "ls", "main", "nope", check=False)
    err = r.stderr.decode()
    assert r.returncode != 0
    assert "Traceback" in err
    assert err.splitlines()[-1].startswith("gitree: error:")


def test_not_a_repo_inside_a_git_work_tree(work):
    """-C naming a plain directory inside some git work tree must not open (and write into) that repository."""
    wt = os.path.join(work, "project")
    subprocess.run(["git", "init", "-q", wt], check=True)
    sub = os.path.join(wt, "sub")
    os.mkdir(sub)
    src = os.path.join(work, "src")
    put(os.path.join(src, "f"), b"f")

    def listing():
        return sorted((dp, tuple(sorted(fns))) for dp, _, fns in os.walk(wt))

    before = listing()
    assert_one_error_line(run_gitree("-C", sub, "import-rootfs", src, "-b", "main", check=False), "repository")
    assert_one_error_line(run_gitree("ls", "main", cwd=sub, check=False), "repository")
    assert listing() == before
    assert subprocess.run(["git", "-C", wt, "for-each-ref"], capture_output=True, text=True).stdout == ""


# ---------------------------------------------------------------------------------------------
# names git refuses


def _hostile_names_tree(root: str) -> None:
    mkdir(root)
    put(os.path.join(root, "etc/hostname"), b"named\n")
    put(os.path.join(root, ".git/config"), b"[core]\n\tfsmonitor = touch /tmp/pwned\n")
    put(os.path.join(root, ".git/hooks/post-checkout"), b"#!/bin/sh\ntouch /tmp/pwned\n", 0o755)
    put(os.path.join(root, "a/b/.git/HEAD"), b"ref: refs/heads/main\n")
    put(os.path.join(root, ".gitmodules"), b'[submodule "x"]\n\tpath = x\n\turl = --upload-pack=touch\n')
    put(os.path.join(root, "sub/.gitmodules"), b"\x00\xffnot even text\n")
    put(os.path.join(root, ".GIT/x"), b"upper\n")
    put(os.path.join(root, "c/.Git/y"), b"mixed\n")
    put(os.path.join(root, "git~1"), b"short\n")
    put(os.path.join(root, "d/GIT~1/z"), b"short dir\n")
    put(os.path.join(root, "GITMOD~1"), b"short modules\n")
    put(os.path.join(root, "~gitree~foo"), b"prefix\n")
    put(os.path.join(root, "~gitree~"), b"just the prefix\n")
    put(os.path.join(root, "e/~gitree~.git/w"), b"prefixed dot git\n")
    put(os.path.join(root, ".gitree/t"), b"collides with the table name\n")
    put(os.path.join(root, "f/.gitree"), b"a file named like the table\n")
    put(os.path.join(root, ".g\u200cit/h"), b"hfs ignorable\n")
    put(os.path.join(root, ".git./n"), b"ntfs trailing dot\n")
    put(os.path.join(root, ".git /s"), b"ntfs trailing space\n")
    os.symlink("/etc/passwd", os.path.join(root, ".gitattributes"))
    os.symlink("../.gitmodules", os.path.join(root, "sub/.gitignore"))
    os.symlink("/", os.path.join(root, ".mailmap"))
    os.makedirs(os.path.join(root, "g"))
    os.symlink("/outside", os.path.join(root, "g/.git"))
    put(os.path.join(root, "meta/.gitree"), b"a rootfs dir named meta\n")
    put(os.path.join(root, "rootfs/format"), b"and rootfs/format\n")
    put(os.fsdecode(os.path.join(os.fsencode(root), b"bytes-\xff\xfe")), b"not utf-8\n")
    put(os.path.join(root, "new\nline and %41 x=y"), b"odd characters\n")


def test_names_git_refuses(work):
    repo = os.path.join(work, "r.git")
    run_gitree("-C", repo, "init")
    src = os.path.join(work, "src")
    _hostile_names_tree(src)
    cid = import_(repo, src)
    r = subprocess.run(["git", "--git-dir", repo, "fsck", "--strict", "--no-dangling"], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "error" not in r.stderr.lower(), r.stderr
    fsck_warnings = r.stderr
    assert git(repo, "show", f"{cid}:rootfs/etc/hostname") == "named"
    run_gitree("-C", repo, "fsck")
    listed = set(out_lines(run_gitree("-C", repo, "ls", "-R", cid)))
    for p in ("/.git/config", "/a/b/.git/HEAD", "/.gitmodules", "/.GIT/x", "/git~1", "/~gitree~foo", "/~gitree~",
              "/e/~gitree~.git/w", "/.gitree/t", "/f/.gitree", "/.g\u200cit/h", "/.gitattributes", "/g/.git",
              "/meta/.gitree", "/rootfs/format", "/bytes-\\xff\\xfe"):
        assert p in listed, p
    out_tar = os.path.join(work, "out.tar")
    run_gitree("-C", repo, "checkout", cid, "--tar", out_tar)
    assert tar_summary(out_tar) == dir_summary(src)
    dest = os.path.join(work, "dest")
    run_gitree("-C", repo, "checkout", cid, dest)
    assert dir_summary(dest) == dir_summary(src)
    # a plain `git` checkout of the commit is refused nothing either (it is an ordinary tree)
    wt = os.path.join(work, "wt")
    r = subprocess.run(["git", "--git-dir", repo, "--work-tree", wt, "-c", "core.protectNTFS=true",
                        "-c", "core.protectHFS=true", "read-tree", cid], capture_output=True, text=True,
                       env={**os.environ, "GIT_INDEX_FILE": os.path.join(work, "index")})
    assert r.returncode == 0, r.stderr
    # clean means clean: not even a warning (a symlink named .mailmap draws "mailmapSymlink")
    assert "warning" not in fsck_warnings.lower(), fsck_warnings
