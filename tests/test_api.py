"""gitree.api, the library surface (docs/api.md): the example script, typed results against the CLI's text
and against real ostree, transactions, the warnings channel with --strict and --json, typed errors and their
exit codes, and the tool runner."""

from __future__ import annotations

import io
import json
import os
import re
import resource
import subprocess
import sys
import tarfile

import pytest
from helpers import run_gitree

from gitree import api, tools
from gitree.boot import lxc
from gitree.entry import Entry, Kind
from gitree.errors import (WARNINGS_EXIT, BranchMoved, CorruptObject, GitreeWarning, NotFastForward, NotFound,
                           StrictWarnings, TargetExists, TimedOut, ToolFailed, UsageError, WriteFailed,
                           exit_codes_table)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T1 = 1_700_000_000


def ostree(repo: str, *args: str) -> str:
    r = subprocess.run(["ostree", f"--repo={repo}", *args], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout


def small_tar(path: str, files: dict[str, bytes], pax: dict[str, str] | None = None) -> str:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as t:
        d = tarfile.TarInfo("etc")
        d.type, d.mode = tarfile.DIRTYPE, 0o755
        t.addfile(d)
        for name, data in files.items():
            i = tarfile.TarInfo(name)
            i.size, i.mode, i.mtime = len(data), 0o644, T1
            if pax:
                i.pax_headers = dict(pax)
            t.addfile(i, io.BytesIO(data))
    return path


def pack_temporaries(repo: str) -> list[str]:
    d = os.path.join(repo, "objects", "pack")
    return sorted(n for n in os.listdir(d) if n.startswith("tmp")) if os.path.isdir(d) else []


# ---------------------------------------------------------------------------------------------
# the example script in docs, run on the real Debian rootfs and checked with real ostree

def test_api_demo_script(rootfs_tar, work):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "docs", "examples", "api_demo.py"), rootfs_tar,
                        os.path.join(work, "demo")], capture_output=True, text=True, env=dict(os.environ))
    assert r.returncode == 0, r.stderr
    out = dict(line.split(": ", 1) for line in r.stdout.splitlines() if not line.startswith(("change", "warning")))
    changes = [line.split(": ", 1)[1] for line in r.stdout.splitlines() if line.startswith("change: ")]
    assert changes == ["A /etc/gitree-demo", "M /etc/motd (content)"]
    repo = os.path.join(work, "demo", "ostree")
    checksum = out["ostree"].split()[0]
    assert ostree(repo, "rev-parse", "os/main").strip() == checksum
    # real ostree sees the same change between the two exported commits, and the repository is sound
    assert sorted(ostree(repo, "diff", "os/main^", "os/main").split("\n")) == ["", "A    /etc/gitree-demo",
                                                                                "M    /etc/motd"]
    ostree(repo, "fsck", "-q")
    # the gitree commits are the ones the script printed
    log = api.log(os.path.join(work, "demo", "repo.git"), "main")
    assert [c.id for c in log.commits] == [out["v2"], out["v1"].split()[0]]


# ---------------------------------------------------------------------------------------------
# typed results: the CLI prints exactly what the API returns

def test_results_match_cli_text(work):
    repo = api.init(os.path.join(work, "r.git")).path
    src = os.path.join(work, "src")
    os.makedirs(os.path.join(src, "etc"))
    with open(os.path.join(src, "etc", "a"), "wb") as f:
        f.write(b"one\n")
    os.symlink("a", os.path.join(src, "etc", "l"))
    c1 = api.import_rootfs(repo, src, branch="main", message="one", timestamp=T1)
    with open(os.path.join(src, "etc", "a"), "wb") as f:
        f.write(b"two\n")
    os.chmod(os.path.join(src, "etc", "a"), 0o600)
    os.mkdir(os.path.join(src, "new"))
    c2 = api.import_rootfs(repo, src, branch="main", message="two", timestamp=T1 + 1)
    assert len(c1.commit) == len(c2.commit) == 40 and c2.stats.files == 1

    d = api.diff(repo, c1.commit, c2.commit)
    assert [(c.status, c.path, c.kind) for c in d.changes] == [
        ("M", b"etc/a", Kind.FILE), ("A", b"new", Kind.DIR)]
    assert d.changes[0].details == ("content", "mode 0644 -> 0600")
    cli = lambda *a: run_gitree("-C", repo, *a).stdout.decode().splitlines()  # noqa: E731
    assert cli("diff", c1.commit, c2.commit) == d.lines()
    assert cli("log") == api.log(repo).lines()
    assert cli("show", "main") == api.show(repo, "main").lines()
    ls = api.ls(repo, "main", "etc")
    assert [(i.name, i.entry.kind, i.size) for i in ls.items] == [("a", Kind.FILE, 4), ("l", Kind.SYMLINK, 0)]
    assert cli("ls", "-l", "main", "etc") == ls.lines(long=True)
    assert api.show(repo, "main").info.counts == {"file": 1, "dir": 3, "symlink": 1}
    assert api.fsck(repo).ok

    # --json: the same result as one document
    doc = json.loads(run_gitree("-C", repo, "--json", "diff", c1.commit, c2.commit).stdout)
    assert doc["command"] == "diff" and doc["warnings"] == []
    assert doc["result"]["changes"][0] == {"status": "M", "path": "etc/a", "kind": "file",
                                           "details": ["content", "mode 0644 -> 0600"]}
    doc = json.loads(run_gitree("-C", repo, "--json", "ls", "-R", "main", "etc").stdout)
    assert [i["name"] for i in doc["result"]["items"]] == ["/etc", "/etc/a", "/etc/l"]
    assert doc["result"]["items"][2]["entry"]["target"] == "a"


# ---------------------------------------------------------------------------------------------
# warnings: one channel, --strict, --json

def test_warnings_channel_strict_and_json(work):
    repo = api.init(os.path.join(work, "r.git")).path
    tar = small_tar(os.path.join(work, "w.tar"), {"etc/x": b"x\n"}, pax={"GITREE.unknown": "1"})
    seen: list[GitreeWarning] = []
    res = api.import_rootfs(repo, tar, branch="main", timestamp=T1, on_warning=seen.append)
    assert seen and seen == res.warnings
    assert all(w.kind == "import" for w in seen) and "GITREE.unknown" in seen[0].message

    r = run_gitree("-C", repo, "import-rootfs", tar, "-b", "plain", check=False)
    assert r.returncode == 0 and b"gitree: warning:" in r.stderr and b"GITREE.unknown" in r.stderr
    r = run_gitree("-C", repo, "--strict", "import-rootfs", tar, "-b", "strict", check=False)
    assert r.returncode == WARNINGS_EXIT, r.stderr
    assert r.stderr.decode().splitlines()[-1] == "gitree: error: --strict: 1 warning(s) above; nothing was imported"
    assert api.open_repo(repo).branch_tip("strict") is None and pack_temporaries(repo) == []   # nothing written
    with pytest.raises(StrictWarnings):
        api.import_rootfs(repo, tar, branch="strict", strict=True)
    r = run_gitree("-C", repo, "--json", "import-rootfs", tar, "-b", "json")
    doc = json.loads(r.stdout)
    assert doc["result"]["commit"] == api.log(repo, "json").commits[0].id
    assert doc["warnings"] == [{"kind": "import", "message": seen[0].message}]
    assert b"warning" not in r.stderr           # with --json, warnings go to the document only


# ---------------------------------------------------------------------------------------------
# errors: one class per condition, its exit code on the CLI, listed in --help

def test_error_classes_and_exit_codes(work):
    repo = api.init(os.path.join(work, "r.git")).path
    with pytest.raises(NotFound):
        api.log(repo, "nope")
    r = run_gitree("-C", repo, "log", "nope", check=False)
    assert r.returncode == NotFound.exit_code
    r = run_gitree("-C", repo, "--json", "log", "nope", check=False)
    assert json.loads(r.stdout)["error"] == {"type": "NotFound", "message": "unknown revision: nope",
                                             "exit_code": NotFound.exit_code}
    r = run_gitree("-C", repo, "checkout", "main", check=False)
    assert r.returncode == 2 and r.stderr.decode().startswith("gitree: error: give either DEST or --tar FILE")
    helptext = run_gitree("--help").stdout.decode()
    codes = exit_codes_table()
    assert len({c for c, _, _ in codes}) == len(codes)
    for code, name, _ in codes:
        assert f"{code:>3}  {name}" in helptext
    api_md = open(os.path.join(ROOT, "docs", "api.md"), encoding="utf-8").read()
    for code, name, _ in codes:
        assert f"| {code} | {name or '-'} |" in api_md


def test_refused_operations_raise_their_class_and_exit_code(work):
    """Each refusal is its own class (the message unchanged), and the CLI exits with that class's code."""
    repo = api.init(os.path.join(work, "r.git")).path
    a = api.import_rootfs(repo, small_tar(os.path.join(work, "a.tar"), {"etc/a": b"a\n"}), branch="main",
                          timestamp=T1).commit
    b = api.import_rootfs(repo, small_tar(os.path.join(work, "b.tar"), {"etc/a": b"b\n" * 4096}), branch="main",
                          timestamp=T1).commit

    def refused(cls, call, argv, says):
        with pytest.raises(cls, match=re.escape(says)):
            call()
        r = run_gitree("-C", repo, *argv, check=False)
        err = r.stderr.decode().splitlines()
        assert r.returncode == cls.exit_code and len(err) == 1 and says in err[0], (argv, r.returncode, err)

    full = os.path.join(work, "full")
    os.makedirs(full)
    open(os.path.join(full, "x"), "w").close()
    refused(TargetExists, lambda: api.checkout(repo, "main", full), ["checkout", "main", full], "is not empty")
    refused(TargetExists, lambda: api.clone(repo, full), ["clone", repo, full], "is not an empty directory")

    out = os.path.join(work, "u.bundle")
    refused(UsageError, lambda: api.bundle_create(repo, "main..main", out), ["bundle", "create", "main..main", out],
            "nothing to bundle")
    refused(UsageError, lambda: api.bundle_create(repo, f"{b}..{a}", out, branch="main"),
            ["bundle", "create", f"{b}..{a}", out, "--branch", "main"], f"{a} does not descend from {b}")
    refused(UsageError, lambda: api.bundle_create(repo, a, out), ["bundle", "create", a, out],
            "is not a branch name; give the branch to update with --branch")
    assert not os.path.exists(out)

    ost = os.path.join(work, "ost")
    refused(UsageError, lambda: api.export_ostree(repo, a, ost), ["export-ostree", a, "--ostree-repo", ost],
            "is not a branch name; give the OSTree ref with --ref")
    refused(UsageError, lambda: api.export_ostree(repo, "main", ost, collection_id="nodots"),
            ["export-ostree", "main", "--ostree-repo", ost, "--collection-id", "nodots"], "invalid collection ID")
    api.export_ostree(repo, "main", ost)
    refused(UsageError, lambda: api.export_ostree(repo, "main", ost, mode="bare"),
            ["export-ostree", "main", "--ostree-repo", ost, "--mode", "bare"], "is a archive repository, not bare")

    # a branch that would move to a commit not descending from its tip: bundle apply and fetch
    api.bundle_create(repo, "main", out)
    other = api.init(os.path.join(work, "other.git")).path
    api.import_rootfs(other, small_tar(os.path.join(work, "c.tar"), {"etc/c": b"c\n"}), branch="main", timestamp=T1)
    tip = api.log(other, "main").commits[0].id
    for call, argv, says in ((lambda: api.bundle_apply(other, out), ["bundle", "apply", out], "does not descend"),
                             (lambda: api.fetch(other, repo), ["fetch", repo], "is not a fast-forward")):
        with pytest.raises(NotFastForward, match=says):
            call()
        r = run_gitree("-C", other, *argv, check=False)
        assert r.returncode == NotFastForward.exit_code and says in r.stderr.decode(), r.stderr
        assert api.log(other, "main").commits[0].id == tip

    # an output write that fails (here: over RLIMIT_FSIZE, EFBIG) names the file
    dest = os.path.join(work, "small")
    r = subprocess.run([sys.executable, "-m", "gitree", "-C", repo, "checkout", "main", dest], capture_output=True,
                       preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096)))
    assert r.returncode == WriteFailed.exit_code, r.stderr
    assert r.stderr.decode().splitlines() == ["gitree: error: /etc/a: File too large"]

    with pytest.raises(TimedOut, match="multi-user.target not active after 0 s"):
        lxc.wait_for("none", work, timeout=0)


# ---------------------------------------------------------------------------------------------
# transactions

def test_transaction_aborts_unless_committed(work):
    repo = api.open_repo(api.init(os.path.join(work, "r.git")).path)
    with pytest.raises(RuntimeError):
        with repo.transaction() as tx:
            tx.add(Entry(b"etc", Kind.DIR, 0o755))
            tx.add(Entry(b"etc/f", Kind.FILE, 0o644, size=5), lambda: [b"data\n"])
            assert pack_temporaries(repo.path)            # the pack being written
            raise RuntimeError("stop")
    assert pack_temporaries(repo.path) == [] and repo.branch_tip("main") is None
    with repo.transaction() as tx:                        # leaving without commit aborts too
        tx.add(Entry(b"etc", Kind.DIR, 0o755))
    assert pack_temporaries(repo.path) == [] and tx.done

    with repo.transaction() as tx:
        tx.add(Entry(b"etc", Kind.DIR, 0o755))
        c1 = tx.commit(branch="main", message="one", timestamp=T1)
    assert repo.branch_tip("main") == c1
    # a chain of commits, the branch staged and moved once; a branch that moved meanwhile refuses it all
    with repo.transaction() as tx:
        tx.add(Entry(b"a", Kind.DIR, 0o755))
        c2 = tx.write_commit(message="two", timestamp=T1 + 1, parents=[c1])
        tx.add(Entry(b"b", Kind.DIR, 0o755))
        c3 = tx.write_commit(message="three", timestamp=T1 + 2, parents=[c2])
        assert repo.branch_tip("main") == c1
        tx.set_ref("main", c3, c1)
        tx.set_ref("other", c2, c1)                       # "other" does not exist: not at c1
        with pytest.raises(BranchMoved):
            tx.commit()
    assert repo.branch_tip("main") == c1 and repo.branch_tip("other") is None
    assert [i.name for i in api.ls(repo, "main").items] == ["etc"]


def test_failed_import_leaves_no_temporary_pack(work):
    repo = api.init(os.path.join(work, "r.git")).path
    good = small_tar(os.path.join(work, "g.tar"), {"etc/a": b"a" * 100000})
    with open(good, "rb") as f:
        data = f.read()
    cut = os.path.join(work, "cut.tar")
    with open(cut, "wb") as f:
        f.write(data[:4096])                              # the file's data ends early
    with pytest.raises(api.BadInput):
        api.import_rootfs(repo, cut, branch="main")
    assert pack_temporaries(repo) == [] and api.open_repo(repo).branch_tip("main") is None


# ---------------------------------------------------------------------------------------------
# the tool runner

def test_tool_runner_names_the_tool_and_its_last_line(work):
    with pytest.raises(ToolFailed) as e:
        tools.run(["git", "--git-dir", os.path.join(work, "none"), "log"], what="git log")
    assert e.value.tool == "git" and e.value.line.startswith("fatal:") and str(e.value).startswith("git log: ")
    assert e.value.exit_code == ToolFailed.exit_code
    with pytest.raises(ToolFailed, match="gitree-no-such-tool is not installed"):
        tools.run(["gitree-no-such-tool"])
    r = tools.run(["sh", "-c", "echo out; echo note >&2; exit 3"], check=False)
    assert r.returncode == 3 and r.stdout == b"out\n" and tools.last_line(r.stderr) == "note"
    assert tools.last_line(b"hint: a\nfatal: the reason\nhint: b\n", "git") == "fatal: the reason"
    # streaming pipes: the same missing-tool error, and the exit status with the last line of stderr
    with pytest.raises(ToolFailed, match="gitree-no-such-tool is not installed"):
        tools.popen(["gitree-no-such-tool"])
    p = tools.popen(["sh", "-c", "cat; echo first >&2; echo 'zstd: bad frame' >&2; echo >&2; exit 1"],
                    stdin=tools.PIPE)
    p.stdin.write(b"in\n")
    p.stdin.close()
    assert p.stdout.read() == b"in\n" and tools.wait(p) == (1, "zstd: bad frame")
    # a zstd that fails on a bundle's stream: the bundle is corrupt (not a broken tool), zstd's own words
    repo = api.init(os.path.join(work, "z.git")).path
    api.import_rootfs(repo, small_tar(os.path.join(work, "z.tar"), {"etc/z": os.urandom(4096)}), branch="main",
                      timestamp=T1)
    bundle = os.path.join(work, "z.bundle")
    api.bundle_create(repo, "main", bundle)
    with open(bundle, "ab") as f:
        f.write(b"not a zstd frame")              # after the whole stream: only zstd's exit status tells
    other = api.init(os.path.join(work, "z2.git")).path
    with pytest.raises(CorruptObject, match=r"z\.bundle: corrupt bundle \(zstd: .*unsupported format\)$"):
        api.bundle_apply(other, bundle)


# ---------------------------------------------------------------------------------------------
# docs/api.md: its examples run as written (those needing a bootable tree, root and LXC are run by the boot
# and LXC tests through the CLI, which calls the same functions)

def test_api_md_examples_run(work):
    import re
    text = open(os.path.join(ROOT, "docs", "api.md"), encoding="utf-8").read()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    runnable = [b for b in blocks if "make_bootable" not in b and "lxc_" not in b]
    assert len(runnable) >= 9
    tar = small_tar(os.path.join(work, "rootfs.tar"), {"etc/motd": b"version 1\n", "etc/hostname": b"demo\n",
                                                       "usr/bin/tool": b"#!/bin/sh\n"})
    script = "\n".join(runnable).replace('os.path.expanduser("~/.cache/gitree/bookworm-minbase-ping.tar")',
                                         repr(tar))
    r = subprocess.run([sys.executable, "-c", script], cwd=work, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "M b'etc/motd' Kind.FILE ('content',)" in r.stdout
    assert api.log(os.path.join(work, "repo.git"), "scratch").commits[0].message == "by hand\n"
    assert api.log(os.path.join(work, "copy.git"), "main").commits[0].message == "v2\n"
    assert os.path.getsize(os.path.join(work, "update.bundle")) > 0


def test_a_file_of_known_blob_is_added_without_its_data(work):
    """Transaction.add(entry, oid=...) takes a blob already stored, or one of this import still waiting in
    a batch of small files (blob_id), after the usual checks; an unknown blob or a non-file is refused."""
    from gitree.errors import UnsafePath, UsageError
    from gitree.repo import Repo
    path = os.path.join(work, "r.git")
    run_gitree("-C", path, "init")
    repo = Repo(path)
    with repo.transaction() as tx:
        tx.add(Entry(b"a", Kind.FILE, size=5), lambda: [b"hello"])
        oid = tx.blob_id(b"a")                       # still in a batch: hashed now
        tx.add(Entry(b"d/b", Kind.FILE, 0o755, size=5), oid=oid)
        with pytest.raises(UsageError):
            tx.add(Entry(b"c", Kind.FILE, size=1), oid=b"\1" * 20)
        with pytest.raises(UsageError):
            tx.add(Entry(b"l", Kind.SYMLINK, target=b"a"), oid=oid)
        with pytest.raises(UnsafePath):
            tx.add(Entry(b"a/x", Kind.FILE, size=5), oid=oid)   # a parent that is a file
        tx.add(Entry(b"c", Kind.FILE, size=1), lambda: [b"x"])
        cid = tx.commit(branch="main", message="m")
    run_gitree("-C", path, "fsck", cid.hex())
    with repo.transaction() as tx:                  # a blob of the repository, in a later import
        tx.add(Entry(b"again", Kind.FILE, size=5), oid=oid)
        tx.commit(branch="main", message="m2")
    run_gitree("-C", path, "fsck", "main")
    first, second = os.path.join(work, "first"), os.path.join(work, "second")
    run_gitree("-C", path, "checkout", cid.hex(), first)
    run_gitree("-C", path, "checkout", "main", second)
    for p in (os.path.join(first, "d", "b"), os.path.join(second, "again")):
        with open(p, "rb") as f:
            assert f.read() == b"hello"
    assert os.stat(os.path.join(first, "d", "b")).st_mode & 0o777 == 0o755
