"""The library contract of issue 11, checked as a whole: every command of `gitree --help` has its API function,
each writer (import-rootfs, import-ostree, bundle apply, make-bootable) leaves no temporary file and moves no
branch when it fails after it has written objects, and the exit codes of `gitree --help` and docs/api.md are
errors.exit_codes_table()."""

from __future__ import annotations

import inspect
import io
import os
import re
import subprocess
import tarfile

import pytest
from helpers import run_gitree

from gitree import api
from gitree.errors import (ERRORS, BadInput, CorruptObject, GitreeError, StrictWarnings, UnsafePath, UnsupportedEntry,
                           exit_codes_table)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T1 = 1_700_000_000


def build_tar(path: str, files: dict[str, bytes], dirs: tuple[str, ...] = ()) -> str:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as t:
        made = set()
        for name in [*dirs, *files]:
            parts = name.split("/")
            for i in range(1, len(parts) if name in files else len(parts) + 1):
                d = "/".join(parts[:i])
                if d not in made:
                    made.add(d)
                    ti = tarfile.TarInfo(d)
                    ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, T1
                    t.addfile(ti)
        for name, data in files.items():
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode, ti.mtime = len(data), 0o644, T1
            t.addfile(ti, io.BytesIO(data))
    return path


def state(repo: str) -> tuple[list[str], dict[str, str]]:
    """The repository's temporary files (in objects/pack and objects/) and its branches."""
    tmp = []
    for d in (os.path.join(repo, "objects"), os.path.join(repo, "objects", "pack")):
        tmp += [n for n in os.listdir(d) if n.startswith("tmp") or n.endswith((".tmp", ".part", ".keep"))]
    r = api.open_repo(repo)
    heads = {ref: str(r.git.references[ref].target) for ref in r.git.references if ref.startswith("refs/heads/")}
    return sorted(tmp), heads


# ---------------------------------------------------------------------------------------------------------
# one API function per command, in the shape f(repo, ..., *, options, progress=None, on_warning=None)

def _cli_commands() -> set[str]:
    from gitree.cli import cli
    names = set()
    for name, cmd in cli.commands.items():
        sub = getattr(cmd, "commands", None)
        names |= {f"{name}_{s}" for s in sub} if sub else {name}
    return {n.replace("-", "_") for n in names}


def test_every_command_has_its_api_function_and_is_documented():
    commands = _cli_commands()
    assert commands and commands <= set(api.COMMANDS) and set(api.COMMANDS) <= set(api.__all__)
    doc = open(os.path.join(ROOT, "docs", "api.md"), encoding="utf-8").read()
    examples = "\n".join(re.findall(r"```python\n(.*?)```", doc, re.S))
    for name in commands:
        f = getattr(api, name)
        params = inspect.signature(f).parameters
        assert "on_warning" in params and params["on_warning"].kind is inspect.Parameter.KEYWORD_ONLY, name
        assert params["on_warning"].default is None, name
        assert f"api.{name}(" in examples, f"docs/api.md has no example calling api.{name}"
        assert inspect.signature(f).return_annotation.endswith("Result"), name


def test_long_commands_take_progress():
    for name in ("import_rootfs", "checkout", "checkout_tar", "export_ostree", "import_ostree", "make_bootable",
                 "deploy", "lxc_create", "lxc_upgrade"):
        params = inspect.signature(getattr(api, name)).parameters
        assert params["progress"].kind is inspect.Parameter.KEYWORD_ONLY and params["progress"].default is None


def test_help_and_api_md_list_the_same_exit_codes():
    table = exit_codes_table()
    assert {n for _, n, _ in table if n} == {c.__name__ for c in ERRORS}
    helptext = run_gitree("--help").stdout.decode()
    listed = re.findall(r"^\s+(\d+)  (?:(\w+): )?", helptext.split("Exit codes")[1], re.M)
    assert [(int(c), n) for c, n in listed] == [(c, n) for c, n, _ in table]
    doc = open(os.path.join(ROOT, "docs", "api.md"), encoding="utf-8").read()
    rows = re.findall(r"^\| (\d+) \| (\S+) \|", doc, re.M)
    assert [(int(c), "" if n == "-" else n) for c, n in rows] == [(c, n) for c, n, _ in table]
    for cls in ERRORS:
        assert issubclass(cls, GitreeError) and isinstance(cls.exit_code, int)


# ---------------------------------------------------------------------------------------------------------
# failures after objects were written: no temporary file, no branch moved

def test_import_rootfs_failing_midway_leaves_nothing(work):
    repo = api.init(os.path.join(work, "r.git")).path
    api.import_rootfs(repo, build_tar(os.path.join(work, "a.tar"), {"etc/a": b"a\n"}), branch="main", timestamp=T1)
    before = state(repo)
    # many files are written, then a file replaces a non-empty directory
    files = {f"usr/f{i}": os.urandom(2000) for i in range(200)}
    bad = os.path.join(work, "bad.tar")
    build_tar(bad, files)
    with tarfile.open(bad, "a") as t:
        ti = tarfile.TarInfo("usr")
        ti.size = 1
        t.addfile(ti, io.BytesIO(b"x"))
    with pytest.raises(UnsafePath):
        api.import_rootfs(repo, bad, branch="main", timestamp=T1 + 1)
    assert state(repo) == before


def test_import_ostree_failing_midway_leaves_nothing(work):
    repo = api.init(os.path.join(work, "r.git")).path
    api.import_rootfs(repo, build_tar(os.path.join(work, "1.tar"), {"etc/a": b"one\n"}), branch="main",
                      timestamp=T1)
    api.import_rootfs(repo, build_tar(os.path.join(work, "2.tar"), {"etc/a": b"one\n", "etc/b": b"only in two\n"}),
                      branch="main", timestamp=T1 + 1)
    ost = os.path.join(work, "ostree")
    api.export_ostree(repo, "main", ost, ref="os/main", history=True, mode="archive")
    # the newest commit's own file is corrupt: the oldest commit is imported (written) first, then this fails
    listing = subprocess.run(["ostree", f"--repo={ost}", "ls", "-C", "os/main", "/etc/b"], capture_output=True,
                             text=True, check=True).stdout.split()
    csum = next(w for w in listing if re.fullmatch(r"[0-9a-f]{64}", w))
    obj = os.path.join(ost, "objects", csum[:2], csum[2:] + ".filez")
    data = bytearray(open(obj, "rb").read())
    data[-3] ^= 0xFF
    os.chmod(obj, 0o644)
    with open(obj, "wb") as f:
        f.write(data)
    before = state(repo)
    with pytest.raises(GitreeError) as e:
        api.import_ostree(repo, ost, "os/main", branch="back")
    assert isinstance(e.value, (CorruptObject, BadInput)), e.value
    assert state(repo) == before
    # the same through the CLI: one line, the class's exit code
    r = run_gitree("-C", repo, "import-ostree", ost, "os/main", "-b", "back", check=False)
    assert r.returncode == e.value.exit_code and len(r.stderr.decode().splitlines()) == 1
    assert state(repo) == before


def test_bundle_apply_failing_midway_leaves_nothing(work):
    src = api.init(os.path.join(work, "src.git")).path
    files = {f"usr/f{i}": os.urandom(3000) for i in range(50)}
    api.import_rootfs(src, build_tar(os.path.join(work, "1.tar"), files), branch="main", timestamp=T1)
    bundle = os.path.join(work, "u.gtb")
    api.bundle_create(src, "main", bundle)
    # a target whose "main" already has another history: the objects arrive, then the branch cannot move
    dst = api.init(os.path.join(work, "dst.git")).path
    api.import_rootfs(dst, build_tar(os.path.join(work, "o.tar"), {"etc/o": b"other\n"}), branch="main",
                      timestamp=T1)
    before = state(dst)
    packs = sorted(os.listdir(os.path.join(dst, "objects", "pack")))
    with pytest.raises(api.NotFastForward):
        api.bundle_apply(dst, bundle)
    assert state(dst) == before
    assert sorted(os.listdir(os.path.join(dst, "objects", "pack"))) == packs    # the installed pack is gone too
    # a bundle whose stream is cut: fails while reading objects
    cut = os.path.join(work, "cut.gtb")
    with open(bundle, "rb") as f, open(cut, "wb") as g:
        g.write(f.read()[: os.path.getsize(bundle) * 2 // 3])
    with pytest.raises(GitreeError):
        api.bundle_apply(dst, cut, branch="fresh")
    assert state(dst) == before
    assert sorted(os.listdir(os.path.join(dst, "objects", "pack"))) == packs


def test_a_bundle_is_invisible_to_other_readers_until_every_check_has_passed(work, monkeypatch):
    """A concurrent import skips the objects the repository holds; had it seen a bundle's objects while they
    were being verified, refusing the bundle would have taken them from its commit. They stay in a
    quarantine that only the apply's own view reads, and appear in objects/pack only once accepted."""
    from gitree.repo import Repo
    from gitree.transport import bundle
    src = api.init(os.path.join(work, "src.git")).path
    files = {f"usr/f{i}": os.urandom(3000) for i in range(20)}
    api.import_rootfs(src, build_tar(os.path.join(work, "1.tar"), files), branch="main", timestamp=T1)
    out = os.path.join(work, "u.gtb")
    api.bundle_create(src, "main", out)
    blobs = [line.split()[0] for line in subprocess.run(
        ["git", "--git-dir", src, "rev-list", "--objects", "main"], capture_output=True, text=True,
        check=True).stdout.splitlines()]
    dst = api.init(os.path.join(work, "dst.git")).path
    pack_dir = os.path.join(dst, "objects", "pack")
    before = sorted(os.listdir(pack_dir))
    seen = {}

    class Refused(Exception):
        pass

    def look(view, commit, where, verified):      # in place of the check of each commit: look, then refuse
        seen["view"] = all(view.exists(bytes.fromhex(b)) for b in blobs)
        seen["other view"] = any(Repo(dst).exists(bytes.fromhex(b)) for b in blobs)
        seen["git"] = [subprocess.run(["git", "--git-dir", dst, "cat-file", "-e", b]).returncode for b in blobs]
        seen["listing"] = sorted(os.listdir(pack_dir))
        raise Refused("refused at the last moment")

    monkeypatch.setattr(bundle, "_verify", look)
    with pytest.raises(Refused):
        api.bundle_apply(dst, out)
    monkeypatch.undo()
    assert seen["view"] and not seen["other view"]
    assert all(rc != 0 for rc in seen["git"])                    # another process sees none of them
    quarantined = [n for n in seen["listing"] if n not in before]
    assert len(quarantined) == 1 and re.fullmatch(r"tmp_gitree_\d+_[0-9a-f]+\.q", quarantined[0])
    assert sorted(os.listdir(pack_dir)) == before and state(dst) == ([], {})
    # accepted: published into objects/pack, the quarantine gone
    api.bundle_apply(dst, out)
    assert all(subprocess.run(["git", "--git-dir", dst, "cat-file", "-e", b]).returncode == 0 for b in blobs)
    after = sorted(os.listdir(pack_dir))
    assert len(after) == len(before) + 2 and all(n.startswith("pack-") for n in after)
    # a quarantine a killed apply left behind: gc removes it once an hour old
    stale = os.path.join(pack_dir, "tmp_gitree_1_00aa.q")
    os.makedirs(os.path.join(stale, "pack"))
    api.gc(dst)
    assert os.path.isdir(stale)
    os.utime(stale, (T1, T1))
    api.gc(dst)
    assert not os.path.exists(stale)


def test_a_view_reads_its_quarantine_through_git_too_and_close_lets_it_go(work):
    """Blobs over STREAM_BLOB are read by `git cat-file`, which must find a view's quarantine whatever the
    repository's path holds (git splits GIT_ALTERNATE_OBJECT_DIRECTORIES on ':' unless the entry is quoted);
    `close` releases every pack the view opened, the per-thread repositories' too."""
    import threading

    from gitree import repo as repo_mod
    from gitree.packwriter import OBJ_BLOB, Quarantine, hash_and_compress
    path = os.path.join(work, 'a:b "c"\\d\xe9.git')
    r = api.open_repo(api.init(path).path)
    data = os.urandom(repo_mod.STREAM_BLOB + 4096)
    q = Quarantine(r.objects_dir)
    tx = r.transaction()
    pack = tx.raw_pack()
    obj = hash_and_compress(OBJ_BLOB, data, 1)
    pack.add_raw(obj.oid, obj.entry)
    q.add(pack)
    tx.abort()
    view = r.with_objects(q.path)
    assert not r.exists(obj.oid) and view.exists(obj.oid)
    assert b"".join(view.blob_chunks(obj.oid)) == data
    got = []
    t = threading.Thread(target=lambda: got.append(view.blob_size(obj.oid)))
    t.start()
    t.join()
    assert got == [len(data)]
    q.remove()

    def open_packs() -> list[str]:
        fds = os.listdir("/proc/self/fd")
        return [p for p in (os.readlink(f"/proc/self/fd/{fd}") for fd in fds if os.path.exists(f"/proc/self/fd/{fd}"))
                if ".q/pack/" in p]
    assert open_packs()
    view.close()
    assert open_packs() == []


def test_make_bootable_failing_midway_leaves_nothing(work):
    repo = api.init(os.path.join(work, "r.git")).path
    files = {"boot/vmlinuz-6.1.0-test": os.urandom(5000), "boot/initrd.img-6.1.0-test": os.urandom(5000),
             "etc/os-release": b"ID=debian\nVERSION_ID=12\n",
             **{f"usr/bin/f{i}": os.urandom(2000) for i in range(100)},
             # the file make-bootable writes last is here a non-empty directory: it fails after the walk
             "usr/lib/tmpfiles.d/gitree-var.conf/x": b"in the way\n"}
    api.import_rootfs(repo, build_tar(os.path.join(work, "k.tar"), files), branch="rootfs", timestamp=T1)
    before = state(repo)
    packs = sorted(os.listdir(os.path.join(repo, "objects", "pack")))
    with pytest.raises(UnsafePath):
        api.make_bootable(repo, "rootfs", branch="boot", initramfs_check=False)
    assert state(repo) == before
    assert sorted(os.listdir(os.path.join(repo, "objects", "pack"))) == packs


# ---------------------------------------------------------------------------------------------------------
# one atomic-output helper: the LXC config and hook go through it too

def test_lxc_files_are_written_through_atomic_output(work):
    from gitree.boot import lxc
    d = os.path.join(work, "c")
    os.makedirs(d)
    os.symlink("/nonexistent-target", os.path.join(d, "hook.gitree-tmp"))   # the old fixed temporary name
    old = os.umask(0o077)
    try:
        lxc._write(os.path.join(d, "hook"), "#!/bin/sh\n", 0o755)
    finally:
        os.umask(old)
    st = os.lstat(os.path.join(d, "hook"))
    assert st.st_mode & 0o7777 == 0o755 and open(os.path.join(d, "hook")).read() == "#!/bin/sh\n"
    assert sorted(os.listdir(d)) == ["hook", "hook.gitree-tmp"]            # nothing followed, nothing left
    assert os.readlink(os.path.join(d, "hook.gitree-tmp")) == "/nonexistent-target"


# ---------------------------------------------------------------------------------------------------------
# --strict: export-ostree refuses what it would skip before its ref moves; others fail after their warning

def test_global_strict_export_moves_no_ref(work):
    repo = api.init(os.path.join(work, "r.git")).path
    tar = os.path.join(work, "dev.tar")
    with tarfile.open(tar, "w", format=tarfile.PAX_FORMAT) as t:
        for name, kind in (("dev", tarfile.DIRTYPE), ("dev/null", tarfile.CHRTYPE)):
            ti = tarfile.TarInfo(name)
            ti.type, ti.mode, ti.devmajor, ti.devminor = kind, 0o755, 1, 3
            t.addfile(ti)
    api.import_rootfs(repo, tar, branch="main", timestamp=T1)
    ost = os.path.join(work, "o")
    r = run_gitree("-C", repo, "--strict", "export-ostree", "main", "--ostree-repo", ost, "--ref", "os/main",
                   check=False)
    assert r.returncode == UnsupportedEntry.exit_code, r.stderr
    assert r.stderr.decode() == "gitree: error: /dev/null: OSTree cannot hold a char node\n"
    refs = subprocess.run(["ostree", f"--repo={ost}", "refs"], capture_output=True, text=True, check=True)
    assert refs.stdout == ""
    r = run_gitree("-C", repo, "export-ostree", "main", "--ostree-repo", ost, "--ref", "os/main")
    assert b"gitree: warning: skipped 1 entry OSTree cannot hold: /dev/null (char node)" in r.stderr


def test_make_bootable_then_export_reads_the_named_top_entries(work):
    """The positive control of the failing make-bootable above, through the top tree's named entries
    (repo.top_entries: ContentRef) that make-bootable, export and show read."""
    repo = api.init(os.path.join(work, "r.git")).path
    files = {"boot/vmlinuz-6.1.0-test": b"kernel", "boot/initrd.img-6.1.0-test": b"initramfs",
             "etc/os-release": b"ID=debian\nVERSION_ID=12\n"}
    api.import_rootfs(repo, build_tar(os.path.join(work, "k.tar"), files), branch="rootfs", timestamp=T1)
    boot = api.make_bootable(repo, "rootfs", branch="boot", initramfs_check=False)
    with pytest.raises(BadInput, match="already bootable"):
        api.make_bootable(repo, "boot", branch="boot2", initramfs_check=False)
    ost = os.path.join(work, "o")
    exp = api.export_ostree(repo, "boot", ost, ref="os/boot")
    shown = subprocess.run(["ostree", f"--repo={ost}", "show", "os/boot"], capture_output=True, text=True,
                           check=True).stdout
    assert "Version: 12.0" in shown and exp.checksum in shown, shown
    back = api.import_ostree(repo, ost, "os/boot", branch="back")
    assert "metadata keys: ostree.linux, version, ostree.bootable" in "\n".join(api.show(repo, back.commit).lines())
    assert boot.kernel == "6.1.0-test"


def test_strict_bundle_apply_fails_before_the_branch_moves(work):
    src = api.init(os.path.join(work, "src.git")).path
    files = {"boot/vmlinuz-6.1.0-test": b"kernel", "boot/initrd.img-6.1.0-test": b"initramfs",
             "etc/os-release": b"ID=debian\nVERSION_ID=12\n"}
    api.import_rootfs(src, build_tar(os.path.join(work, "k.tar"), files), branch="rootfs", timestamp=T1)
    api.make_bootable(src, "rootfs", branch="boot", initramfs_check=False)
    api.export_ostree(src, "boot", os.path.join(work, "o"), ref="os/boot")
    api.import_ostree(src, os.path.join(work, "o"), "os/boot", branch="back")   # a stored OSTree commit
    bundle = os.path.join(work, "b.gtb")
    api.bundle_create(src, "back", bundle)
    dst = api.init(os.path.join(work, "dst.git")).path
    before = state(dst)
    packs = sorted(os.listdir(os.path.join(dst, "objects", "pack")))
    r = run_gitree("-C", dst, "--strict", "bundle", "apply", bundle, check=False)
    assert r.returncode == StrictWarnings.exit_code, r.stderr
    lines = r.stderr.decode().splitlines()
    assert lines[0].startswith("gitree: warning: bundle apply: 1 commit(s) carry a stored OSTree commit"), lines
    assert lines[-1] == "gitree: error: --strict: 1 warning(s) above; nothing was applied"
    assert state(dst) == before and sorted(os.listdir(os.path.join(dst, "objects", "pack"))) == packs
    seen = []
    res = api.bundle_apply(dst, bundle, on_warning=seen.append)       # without strict: a warning, applied
    assert res.branch == "back" and seen == res.warnings and len(seen) == 1
    assert api.open_repo(dst).branch_tip("back").hex() == res.new


def test_cli_imports_only_the_api_errors_and_progress():
    import ast
    tree = ast.parse(open(os.path.join(ROOT, "gitree", "cli.py"), encoding="utf-8").read())
    local = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            local |= {node.module} if node.module else {a.name for a in node.names}
    assert local == {"api", "errors", "progress"}


def test_a_directory_written_by_an_earlier_tree_is_taken_whole_and_sealed(work):
    """Transaction.add(..., key=) and add_known: the second commit takes the keyed directory's trees as the
    first wrote them; an unknown key is not taken; nothing can be added inside a directory taken whole."""
    from gitree.entry import Entry, Kind
    from gitree.errors import UsageError
    path = os.path.join(work, "r.git")
    api.init(path)
    r = api.open_repo(path)
    with r.transaction() as tx:
        tx.add(Entry(b"etc/hostname", Kind.FILE, 0o644, size=5), lambda: [b"demo\n"])
        tx.add(Entry(b"etc", Kind.DIR, 0o750, 0, 4), key=b"etc-v1")
        first = tx.write_commit(message="one", timestamp=T1)
        etc = Entry(b"etc", Kind.DIR, 0o750, 0, 4)
        assert not tx.add_known(etc, b"etc-v2")
        assert tx.add_known(etc, b"etc-v1")
        with pytest.raises(UsageError):
            tx.add(Entry(b"etc/passwd", Kind.FILE, 0o644, size=0), lambda: [])
        with pytest.raises(UsageError):
            tx.add(Entry(b"etc", Kind.DIR, 0o755))
        tx.add(Entry(b"tmp", Kind.DIR, 0o1777))
        second = tx.write_commit(message="two", timestamp=T1, parents=[first])
        tx.set_ref("main", second, None)
        tx.commit()
    out = run_gitree("-C", path, "ls", "-R", "-l", "main").stdout.decode()
    assert "etc/hostname" in out and "tmp" in out and "passwd" not in out
    run_gitree("-C", path, "fsck")
    one = run_gitree("-C", path, "diff", first.hex(), second.hex()).stdout.decode().splitlines()
    assert one == ["A /tmp/"], one   # etc, taken whole, is the same directory
    with r.transaction() as tx:   # a directory holding a hard link is not remembered; other fields are refused
        tx.add(Entry(b"a", Kind.FILE, 0o644, size=2), lambda: [b"a\n"])
        tx.add(Entry(b"d/l", Kind.FILE, 0o644, size=2, hardlink=b"a"))
        tx.add(Entry(b"d", Kind.DIR, 0o755), key=b"d")
        tx.add(Entry(b"e", Kind.DIR, 0o755), key=b"e")
        tx.write_commit(message="links", timestamp=T1)
        assert not tx.add_known(Entry(b"d", Kind.DIR, 0o755), b"d")
        with pytest.raises(UsageError):
            tx.add_known(Entry(b"e", Kind.DIR, 0o750), b"e")
        assert tx.add_known(Entry(b"e", Kind.DIR, 0o755), b"e")
    # the chain's commits went into the transaction's one pack, written as libgit2 writes them
    assert len([f for f in os.listdir(os.path.join(path, "objects", "pack")) if f.endswith(".pack")]) == 1
    assert not [f for f in os.listdir(os.path.join(path, "objects", "pack")) if not f.startswith("pack-")]
    c = r.git.get(second.hex())
    assert r.write_commit(c.tree_id.raw, [first], "two", T1) == second


def test_a_chain_pack_is_installed_only_after_every_check_and_commits_are_checked(work, monkeypatch):
    """The pack of a write_commit chain becomes visible only once every staged branch was checked (a pack
    installed and then deleted on BranchMoved lost objects another writer had counted on); a parent must be
    a commit; the time is written whole (libgit2's writer cut it to 32 bits) and must be 0..2^63-1; a
    message holds no NUL; a chain whose last step fails leaves no temporary file."""
    from gitree import importer, packwriter
    from gitree.entry import Entry, Kind
    from gitree.errors import BadInput, BranchMoved, UsageError
    path = os.path.join(work, "r.git")
    api.init(path)
    r = api.open_repo(path)
    pack_dir = os.path.join(path, "objects", "pack")
    installed: list[str] = []
    real_install = packwriter.PackWriter.install

    def recording_install(self, *a, **kw):
        installed.append(self.tmp_path)
        return real_install(self, *a, **kw)
    monkeypatch.setattr(packwriter.PackWriter, "install", recording_install)
    with pytest.raises(BranchMoved):
        with r.transaction() as tx:
            tx.add(Entry(b"f", Kind.FILE, 0o644, size=2), lambda: [b"f\n"])
            cid = tx.write_commit(message="one", timestamp=T1)
            tx.set_ref("main", cid, b"\x22" * 20)   # it is not there: moved
            tx.commit()
    assert installed == [] and os.listdir(pack_dir) == []
    with r.transaction() as tx:
        tx.add(Entry(b"f", Kind.FILE, 0o644, size=2), lambda: [b"f\n"])
        with pytest.raises(UsageError):
            tx.write_commit(message="bad parent", timestamp=T1, parents=[b"\x11" * 20])
    with r.transaction() as tx:
        tx.add(Entry(b"f", Kind.FILE, 0o644, size=2), lambda: [b"f\n"])
        first = tx.write_commit(message="one", timestamp=(1 << 32) + 5)
        tx.add(Entry(b"g", Kind.FILE, 0o644, size=2), lambda: [b"g\n"])
        second = tx.write_commit(message="two", timestamp=T1, parents=[first])
        tx.set_ref("main", second, None)
        tx.commit()
    assert r.git.get(first.hex()).commit_time == (1 << 32) + 5
    blob_id = bytes.fromhex(str(r.git.create_blob(b"x")))
    tree = r.git.get(first.hex()).tree_id.raw
    with pytest.raises(UsageError):
        r.write_commit(tree, [blob_id], "parent is a blob", T1)
    with pytest.raises(BadInput):
        r.write_commit(tree, [], "before 1970", -5)
    with pytest.raises(BadInput):
        r.write_commit(tree, [], "a \0 inside", T1)
    with pytest.raises(UsageError):
        r.write_commit(blob_id, [], "a blob for a tree", T1)
    src = os.path.join(work, "src")
    os.makedirs(src)
    before = sorted(os.listdir(pack_dir))
    with pytest.raises(BadInput):   # refused before any work: no pack is written for it
        api.import_rootfs(path, src, branch="early", timestamp=-1)
    assert sorted(os.listdir(pack_dir)) == before
    subprocess.run(["git", "--git-dir", path, "fsck", "--strict"], check=True, capture_output=True)

    def failing_save(self):
        raise OSError("the export cache cannot be written")
    monkeypatch.setattr(importer.Importer, "_save_checksums", failing_save)
    before = sorted(os.listdir(pack_dir))
    with pytest.raises(OSError):
        with r.transaction() as tx:
            tx.add(Entry(b"h", Kind.FILE, 0o644, size=2), lambda: [b"h\n"])
            tx.write_commit(message="three", timestamp=T1)
    assert sorted(os.listdir(pack_dir)) == before
