"""Distribution with the real tools: `ostree pull` over HTTP from an export, GPG-signed exports, offline
update bundles against `ostree static-delta`, and gitree repositories on a real git server (git daemon)."""

from __future__ import annotations

import glob
import hashlib
import os
import signal
import re
import shutil
import socket
import stat
import subprocess
import tempfile
import time

import pytest
from helpers import run_gitree, tar_bytes, tar_summary
from test_ostree_bridge import build_t1

import gitree_compat as oc
from gitree import api
from gitree_compat import ObjectType, OstreeRepo

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="ostree and rootfs metadata need root")


def sh(*args, check=True, **kw) -> str:
    r = subprocess.run(list(args), capture_output=True, text=True, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))}: {r.stderr}")
    return r.stdout.strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int) -> None:
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on port {port}")


class HttpServer:
    """python -m http.server on 127.0.0.1 serving ROOT; its request log is read back line by line."""

    LINE = re.compile(r'"GET (\S+) HTTP/[\d.]+" (\d{3})')

    def __init__(self, root: str, log: str):
        self.port = free_port()
        self.log = log
        self.logf = open(log, "wb")
        self.proc = subprocess.Popen(["python3", "-m", "http.server", str(self.port), "--bind", "127.0.0.1",
                                      "--directory", root], stdout=subprocess.DEVNULL, stderr=self.logf)
        wait_port(self.port)
        self.mark()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    def mark(self) -> None:
        self.logf.flush()
        self.offset = os.path.getsize(self.log)

    def requests(self) -> list[tuple[str, int]]:
        """(path, status) of every GET since the last mark()."""
        time.sleep(0.2)  # the server logs after it has sent the response
        with open(self.log, "rb") as f:
            f.seek(self.offset)
            text = f.read().decode(errors="replace")
        return [(m.group(1), int(m.group(2))) for m in self.LINE.finditer(text)]

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.logf.close()


@pytest.fixture
def http(work):
    www = os.path.join(work, "www")
    os.makedirs(www)
    s = HttpServer(www, os.path.join(work, "http.log"))
    s.root = www
    yield s
    s.close()


def ostree_objects(repo: str) -> dict[str, int]:
    """objects/XX/REST.SUFFIX -> size, of every object file."""
    out = {}
    for p in glob.glob(os.path.join(repo, "objects", "*", "*")):
        out[os.path.relpath(p, repo)] = os.lstat(p).st_size
    return out


def reachable_size(repo: str, commit: str) -> tuple[int, int]:
    """(objects, bytes) a from-scratch pull of `commit` from an archive repo fetches."""
    r = OstreeRepo(repo)
    seen: set[tuple[str, ObjectType]] = {(commit, ObjectType.COMMIT)}
    c = r.read_commit(commit)
    todo = [(c.root_tree, c.root_meta)]
    seen.add((c.root_meta, ObjectType.DIR_META))
    while todo:
        t, m = todo.pop()
        if (t, ObjectType.DIR_TREE) in seen:
            continue
        seen.add((t, ObjectType.DIR_TREE))
        seen.add((m, ObjectType.DIR_META))
        tree = r.read_dirtree(t)
        for _, csum in tree.files:
            seen.add((csum, ObjectType.FILE))
        for _, st, sm in tree.dirs:
            todo.append((st, sm))
    return len(seen), sum(os.path.getsize(r.object_path(c, t)) for c, t in seen)


# ---------------------------------------------------------------------------------------------
# Two real rootfs versions: the cached Debian rootfs, and a copy with a security-update-like change

def make_v2(src_repo: str, work: str) -> str:
    """Check out v1 and change it as a package update does: rebuilt binaries, a changed config, a new and a
    removed file, new permissions and an xattr."""
    d = os.path.join(work, "v2tree")
    api.checkout(src_repo, "debian", d)
    rnd = hashlib.sha256(b"v2").digest() * 64
    for rel in ("usr/bin/ping", "usr/lib/x86_64-linux-gnu/libc.so.6", "usr/bin/bash"):
        p = os.path.join(d, rel)
        st = os.lstat(p)
        with open(p, "r+b") as f:
            data = bytearray(f.read())
            # patch a few code bytes and append a section, as a rebuild of a fixed source does
            for off in range(4096, len(data), len(data) // 7):
                data[off:off + 64] = rnd[:64]
            f.seek(0)
            f.write(bytes(data) + rnd[:3000])
        os.chmod(p, stat.S_IMODE(st.st_mode))
    with open(os.path.join(d, "etc/debian_version"), "a") as f:
        f.write("security update 1\n")
    with open(os.path.join(d, "etc/update-notes.txt"), "w") as f:
        f.write("v2\n" * 100)
    os.unlink(os.path.join(d, "etc/issue.net"))
    os.chmod(os.path.join(d, "etc/hostname"), 0o600)
    os.setxattr(os.path.join(d, "etc/hostname"), "user.gitree-test", b"v2")
    return d


@pytest.fixture(scope="module")
def versions(rootfs_tar, tmpfs_root):
    """A gitree repo with branch `debian`: v1 (the real rootfs) and v2 on top."""
    base = tempfile.mkdtemp(prefix="dist-versions-", dir=tmpfs_root)
    repo = os.path.join(base, "g.git")
    api.init(repo)
    api.import_rootfs(repo, rootfs_tar, branch="debian", timestamp=1700000000, message="v1")
    v2 = make_v2(repo, base)
    api.import_rootfs(repo, v2, branch="debian", timestamp=1700000100, message="v2")
    shutil.rmtree(v2)
    yield repo
    shutil.rmtree(base, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# 1. updates over HTTP

def test_second_pull_fetches_only_new_objects(versions, work, http):
    served = os.path.join(http.root, "repo")
    c1 = api.export_ostree(versions, "debian~1", served, ref="debian", update_summary=True).checksum
    client = os.path.join(work, "client")
    sh("ostree", "init", f"--repo={client}", "--mode=bare-user")
    sh("ostree", f"--repo={client}", "remote", "add", "--no-gpg-verify", "origin", http.url("repo"))
    sh("ostree", f"--repo={client}", "pull", "origin", "debian")
    assert sh("ostree", f"--repo={client}", "rev-parse", "origin:debian") == c1
    before = ostree_objects(served)

    c2 = api.export_ostree(versions, "debian", served, update_summary=True).checksum
    assert OstreeRepo(served).read_commit(c2).parent == c1
    new = {p: n for p, n in ostree_objects(served).items() if p not in before}
    http.mark()
    sh("ostree", f"--repo={client}", "pull", "origin", "debian")
    assert sh("ostree", f"--repo={client}", "rev-parse", "origin:debian") == c2
    sh("ostree", f"--repo={client}", "fsck")
    got = [(p, code) for p, code in http.requests() if p.startswith("/repo/objects/")]
    fetched = {p[len("/repo/"):] for p, code in got if code == 200}
    # every new object exactly once, nothing else (a 404 for the unsigned commit's .commitmeta is allowed)
    assert fetched == set(new)
    assert len([p for p, code in got if code == 200]) == len(new)
    assert all(p.endswith(".commitmeta") for p, code in got if code != 200)
    fetched_bytes = sum(new.values())
    full_objects, full_bytes = reachable_size(served, c2)
    print(f"\nv1->v2 pull: {len(fetched)} objects, {fetched_bytes} bytes; "
          f"all of v2: {full_objects} objects, {full_bytes} bytes ({100 * fetched_bytes / full_bytes:.2f}%)")
    assert fetched_bytes < full_bytes / 10


# ---------------------------------------------------------------------------------------------
# 2. signed exports

@pytest.fixture(scope="module")
def gpg_keys(tmpfs_root):
    """Two GnuPG homes with one ed25519 signing key each: the publisher's and an attacker's."""
    base = tempfile.mkdtemp(prefix="gpg-", dir=tmpfs_root)
    out = {}
    for who in ("publisher", "attacker"):
        home = os.path.join(base, who)
        os.makedirs(home, mode=0o700)
        sh("gpg", "--batch", "--homedir", home, "--passphrase", "", "--quick-gen-key",
           f"gitree {who} <{who}@example.org>", "ed25519", "sign", "never")
        colons = sh("gpg", "--homedir", home, "--with-colons", "--list-secret-keys")
        fpr = next(ln.split(":")[9] for ln in colons.splitlines() if ln.startswith("fpr:"))
        pub = os.path.join(base, f"{who}.asc")
        with open(pub, "w") as f:
            f.write(sh("gpg", "--homedir", home, "--armor", "--export", fpr))
        out[who] = (home, fpr, pub)
    yield out
    for home, _, _ in out.values():
        subprocess.run(["gpgconf", "--homedir", home, "--kill", "all"], capture_output=True)
    shutil.rmtree(base, ignore_errors=True)


def _signed_export(src: str, repo: str, served: str, keys, who="publisher", **extra) -> str:
    home, fpr, _ = keys[who]
    api.import_rootfs(repo, src, branch="os/main", timestamp=1700000000, message="rel")
    return api.export_ostree(repo, "os/main", served, update_summary=True, gpg_keys=[fpr], gpg_homedir=home,
                             **extra).checksum


def _client(work: str, name: str, url: str, pub: str, verify_summary: bool = True) -> str:
    client = os.path.join(work, name)
    sh("ostree", "init", f"--repo={client}", "--mode=bare-user")
    sh("ostree", f"--repo={client}", "remote", "add", "--set=gpg-verify=true",
       f"--set=gpg-verify-summary={'true' if verify_summary else 'false'}", f"--gpg-import={pub}", "origin", url)
    return client


def test_signed_export_is_accepted_and_tampering_refused(work, http, gpg_keys):
    src = os.path.join(work, "tree")
    os.makedirs(src)
    build_t1(src)
    repo = os.path.join(work, "g.git")
    api.init(repo)
    served = os.path.join(http.root, "repo")
    csum = _signed_export(src, repo, served, gpg_keys)
    home, fpr, pub = gpg_keys["publisher"]

    # the detached signature is a plain OpenPGP signature over the raw commit bytes
    md = OstreeRepo(served).read_commitmeta(csum)
    sigs = oc.asv_get(md, "ostree.gpgsigs").value
    assert len(sigs) == 1
    commit_path = str(OstreeRepo(served).object_path(csum, ObjectType.COMMIT))
    with open(os.path.join(work, "sig"), "wb") as f:
        f.write(bytes(sigs[0]))
    sh("gpg", "--homedir", home, "--verify", os.path.join(work, "sig"), commit_path)
    # re-exporting does not sign twice
    api.export_ostree(repo, "os/main", served, update_summary=True, gpg_homedir=home, gpg_keys=[fpr])
    assert len(oc.asv_get(OstreeRepo(served).read_commitmeta(csum), "ostree.gpgsigs").value) == 1

    client = _client(work, "client", http.url("repo"), pub)
    sh("ostree", f"--repo={client}", "pull", "origin", "os/main")
    out = sh("ostree", f"--repo={client}", "show", "--gpg-verify-remote=origin", csum)
    assert "Good signature" in out
    assert "os/main" in sh("ostree", f"--repo={client}", "remote", "summary", "origin")

    # a tampered summary (another commit named, the old summary.sig kept) is refused
    evil = os.path.join(http.root, "evil-summary")
    shutil.copytree(served, evil, symlinks=True)
    sig = open(os.path.join(evil, "summary.sig"), "rb").read()
    with open(os.path.join(src, "hello.txt"), "a") as f:
        f.write("evil\n")
    api.import_rootfs(repo, src, branch="evil", message="evil")
    api.export_ostree(repo, "evil", evil, ref="os/main", update_summary=True)
    with open(os.path.join(evil, "summary.sig"), "wb") as f:
        f.write(sig)
    c2 = _client(work, "client2", http.url("evil-summary"), pub)
    r = subprocess.run(["ostree", f"--repo={c2}", "pull", "origin", "os/main"], capture_output=True, text=True)
    assert r.returncode != 0 and "signature" in r.stderr.lower(), r.stderr

    # a tampered commit carrying the publisher's signature is refused (summary checks off, commit checks on)
    evil2 = os.path.join(http.root, "evil-commit")
    shutil.copytree(served, evil2, symlinks=True)
    bad = api.export_ostree(repo, "evil", evil2, ref="os/main").checksum
    shutil.copy(OstreeRepo(served).object_path(csum, ObjectType.COMMIT_META),
                OstreeRepo(evil2).object_path(bad, ObjectType.COMMIT_META))
    os.unlink(os.path.join(evil2, "summary"))
    os.unlink(os.path.join(evil2, "summary.sig"))
    c3 = _client(work, "client3", http.url("evil-commit"), pub, verify_summary=False)
    r = subprocess.run(["ostree", f"--repo={c3}", "pull", "origin", "os/main"], capture_output=True, text=True)
    assert r.returncode != 0 and "signature" in r.stderr.lower(), r.stderr
    # ... and so is a commit signed by a key the client does not trust
    evil3 = os.path.join(http.root, "evil-key")
    ahome, afpr, _ = gpg_keys["attacker"]
    api.export_ostree(repo, "evil", evil3, ref="os/main", update_summary=True, gpg_homedir=ahome, gpg_keys=[afpr])
    c4 = _client(work, "client4", http.url("evil-key"), pub, verify_summary=False)
    r = subprocess.run(["ostree", f"--repo={c4}", "pull", "origin", "os/main"], capture_output=True, text=True)
    assert r.returncode != 0 and "signature" in r.stderr.lower(), r.stderr


def test_signing_keeps_imported_detached_metadata(work, gpg_keys):
    """An imported OSTree commit keeps its original detached metadata; signing adds a key beside it."""
    src = os.path.join(work, "tree")
    os.makedirs(src)
    build_t1(src)
    real = os.path.join(work, "real")
    sh("ostree", "init", f"--repo={real}", "--mode=archive")
    csum = sh("ostree", f"--repo={real}", "commit", f"--tree=dir={src}", "-b", "os/main", "--timestamp=@5",
              "-s", "s", "--add-detached-metadata-string=origin=factory")
    repo = os.path.join(work, "g.git")
    api.init(repo)
    api.import_ostree(repo, real, "os/main", branch="os/main")
    home, fpr, _ = gpg_keys["publisher"]
    out = os.path.join(work, "out")
    got = api.export_ostree(repo, "os/main", out, gpg_homedir=home, gpg_keys=[fpr]).checksum
    assert got == csum
    md = OstreeRepo(out).read_commitmeta(csum)
    assert oc.asv_get(md, "origin").value == "factory"
    assert len(oc.asv_get(md, "ostree.gpgsigs").value) == 1
    assert sh("ostree", f"--repo={out}", "show", "--print-detached-metadata-key=origin", csum) == "'factory'"


def test_gpg_sign_with_an_unknown_key_is_one_error_line(work, gpg_keys):
    repo = os.path.join(work, "g.git")
    api.init(repo)
    src = os.path.join(work, "tree")
    os.makedirs(src)
    build_t1(src)
    api.import_rootfs(repo, src, branch="b")
    home, _, _ = gpg_keys["publisher"]
    r = run_gitree("-C", repo, "export-ostree", "b", "--ostree-repo", os.path.join(work, "o"), "--gpg-sign",
                   "0123456789ABCDEF", "--gpg-homedir", home, check=False)
    lines = r.stderr.decode().strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1 and lines[0].startswith("gitree: error:"), lines
    assert not os.path.exists(os.path.join(work, "o"))


# ---------------------------------------------------------------------------------------------
# 3. offline update bundles

def static_delta_size(repo: str, frm: str, to: str) -> tuple[int, int, int]:
    """(parts + superblock bytes, fallback objects, fallback bytes) of `ostree static-delta generate`."""
    sh("ostree", f"--repo={repo}", "static-delta", "generate", f"--from={frm}", f"--to={to}")
    show = sh("ostree", f"--repo={repo}", "static-delta", "show", f"{frm}-{to}")
    fallback_n = int(re.search(r"Number of fallback entries: (\d+)", show).group(1))
    fallback_b = int(re.search(r"Total Fallback Size: (\d+)", show).group(1))
    parts = sum(os.path.getsize(p) for p in glob.glob(os.path.join(repo, "deltas", "**", "*"), recursive=True)
                if os.path.isfile(p))  # the repository holds this one delta only
    return parts, fallback_n, fallback_b


def _head_packs(repo: str) -> set[str]:
    return set(os.listdir(os.path.join(repo, "objects", "pack")))


def test_bundle_update_is_small_and_applies(versions, work):
    bundle = os.path.join(work, "update.gtb")
    info = api.bundle_create(versions, "debian~1..debian", bundle)
    size = os.path.getsize(bundle)
    assert (info.size, info.path, info.branch) == (size, bundle, "debian")
    assert info.new == sh("git", "--git-dir", versions, "rev-parse", "debian")
    assert info.old == sh("git", "--git-dir", versions, "rev-parse", "debian~1")

    # a device repository that has v1 only
    dev = os.path.join(work, "dev.git")
    api.init(dev)
    sh("git", "--git-dir", versions, "branch", "-f", "v1", "debian~1")
    sh("git", "--git-dir", dev, "fetch", "-q", versions, "v1:refs/heads/debian")
    v1 = sh("git", "--git-dir", dev, "rev-parse", "debian")

    # corrupt bundle: one clear line, nothing changes
    bad = os.path.join(work, "bad.gtb")
    data = bytearray(open(bundle, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(bad, "wb").write(data)
    packs = _head_packs(dev)
    r = run_gitree("-C", dev, "bundle", "apply", bad, check=False)
    lines = r.stderr.decode().strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1 and lines[0].startswith("gitree: error:"), lines
    assert sh("git", "--git-dir", dev, "rev-parse", "debian") == v1 and _head_packs(dev) == packs
    # a repository without the base: refused before anything is written
    other = os.path.join(work, "other.git")
    api.init(other)
    with pytest.raises(api.NotFound, match="does not have"):
        api.bundle_apply(other, bundle)
    assert not sh("git", "--git-dir", other, "for-each-ref")

    res = api.bundle_apply(dev, bundle)
    assert (res.branch, res.old, res.new) == ("debian", v1, sh("git", "--git-dir", versions, "rev-parse", "debian"))
    api.fsck(dev, check=True)
    sh("git", "--git-dir", dev, "fsck", "--strict", "--no-progress")
    a, b = os.path.join(work, "a.tar"), os.path.join(work, "b.tar")
    api.checkout_tar(dev, "debian", a)
    api.checkout_tar(versions, "debian", b)
    assert open(a, "rb").read() == open(b, "rb").read()

    # unwrapped, it is a git bundle git itself verifies and unbundles
    plain = os.path.join(work, "plain.bundle")
    api.bundle_unwrap(dev, bundle, plain)
    fresh = os.path.join(work, "fresh.git")
    sh("git", "init", "-q", "--bare", fresh)
    sh("git", "--git-dir", fresh, "fetch", "-q", versions, "v1:refs/heads/v1")
    assert "is okay" in subprocess.run(["git", "--git-dir", fresh, "bundle", "verify", plain],
                                       capture_output=True, text=True).stderr
    heads = sh("git", "--git-dir", fresh, "bundle", "unbundle", plain)
    assert heads.split()[1] == "refs/heads/debian"

    # against OSTree's static delta for the same step
    o = os.path.join(work, "o")
    c2 = api.export_ostree(versions, "debian", o, history=True).checksum
    c1 = OstreeRepo(o).read_commit(c2).parent
    parts, fb_n, fb_b = static_delta_size(o, c1, c2)
    delta = parts + fb_b
    print(f"\nbundle {size} bytes; static delta {parts} bytes of parts+superblock + {fb_n} fallback objects "
          f"({fb_b} bytes) = {delta}; ratio {size / delta:.2f}")
    assert size <= delta


def test_full_bundle_into_an_empty_repository(work):
    src = os.path.join(work, "tree")
    os.makedirs(src)
    build_t1(src)
    os.mknod(os.path.join(src, "null"), 0o20666, os.makedev(1, 3))
    repo = os.path.join(work, "g.git")
    api.init(repo)
    api.import_rootfs(repo, src, branch="os/main")
    f = os.path.join(work, "all.gtb")
    api.bundle_create(repo, "os/main", f)
    dev = os.path.join(work, "dev.git")
    api.init(dev)
    api.bundle_apply(dev, f)
    a = tar_bytes(dev, "os/main", work)
    b = tar_bytes(repo, "os/main", work)
    assert a == b and tar_summary(a) == tar_summary(b)
    # not a bundle at all
    with pytest.raises(api.BadInput, match="not a gitree bundle"):
        api.bundle_apply(dev, os.path.join(src, "hello.txt"))


# ---------------------------------------------------------------------------------------------
# 4. gitree repositories on a git server

@pytest.fixture
def git_daemon(work):
    base = os.path.join(work, "srv")
    os.makedirs(base)
    port = free_port()
    proc = subprocess.Popen(["git", "daemon", "--export-all", "--enable=receive-pack", "--reuseaddr",
                             "--listen=127.0.0.1", f"--port={port}", f"--base-path={base}", base],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_port(port)
    yield base, f"git://127.0.0.1:{port}"
    # `git daemon` runs git-daemon as a child: end the whole process group, not only the wrapper
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def rich_tree(root: str, version: int) -> None:
    build_t1(root) if version == 1 else None
    os.makedirs(os.path.join(root, "dev"), exist_ok=True)
    if version == 1:
        os.mknod(os.path.join(root, "dev", "null"), 0o20666, os.makedev(1, 3))
        os.mkfifo(os.path.join(root, "fifo"))
        os.link(os.path.join(root, "hello.txt"), os.path.join(root, "hard"))
        os.chmod(os.path.join(root, "bin", "run.sh"), 0o4755)
        os.setxattr(os.path.join(root, "bin", "run.sh"), "security.capability",
                    bytes.fromhex("0100000200200000000000000000000000000000"))
    with open(os.path.join(root, "version"), "w") as f:
        f.write(f"{version}\n")


def test_push_clone_fetch_over_git_daemon(work, git_daemon):
    base, url = git_daemon
    src = os.path.join(work, "tree")
    os.makedirs(src)
    repo = os.path.join(work, "g.git")
    api.init(repo)
    for v in (1, 2):
        rich_tree(src, v)
        api.import_rootfs(repo, src, branch="os/main", timestamp=1000 + v, message=f"v{v}")
    sh("git", "init", "-q", "--bare", os.path.join(base, "r.git"))
    api.push(repo, f"{url}/r.git", ["os/main"])
    want = tar_bytes(repo, "os/main", work)

    clone = os.path.join(work, "clone.git")
    api.clone(f"{url}/r.git", clone)
    got = tar_bytes(clone, "os/main", work)
    assert got == want and tar_summary(got) == tar_summary(want)
    api.fsck(clone, check=True)
    assert api.diff(clone, "os/main~1", "os/main").lines() == ["M /version  content"]

    # shallow: only the newest version, and it checks out the same
    shallow = os.path.join(work, "shallow.git")
    api.clone(f"{url}/r.git", shallow, depth=1)
    assert sh("git", "--git-dir", shallow, "rev-list", "--count", "os/main") == "1"
    assert tar_bytes(shallow, "os/main", work) == want

    # a new version pushed by the source, fetched by both clones (the shallow one stays shallow)
    rich_tree(src, 3)
    api.import_rootfs(repo, src, branch="os/main", timestamp=1003, message="v3")
    api.push(repo, f"{url}/r.git")
    want3 = tar_bytes(repo, "os/main", work)
    api.fetch(clone, "origin")
    api.fetch(shallow, "origin", ["os/main"], depth=1)
    for c in (clone, shallow):
        assert tar_bytes(c, "os/main", work) == want3
    assert sh("git", "--git-dir", shallow, "rev-list", "--count", "os/main") == "1"

    # a rewritten history is not fetched over the local branch (fast-forward only): one error line
    sh("git", "--git-dir", repo, "update-ref", "refs/heads/os/main", "os/main~1")
    api.push(repo, f"{url}/r.git", ["os/main"], force=True)
    r = run_gitree("-C", clone, "fetch", "origin", check=False)
    lines = r.stderr.decode().strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1 and lines[0].startswith("gitree: error:"), lines
    assert tar_bytes(clone, "os/main", work) == want3


# ---------------------------------------------------------------------------------------------
# 5. `ostree admin upgrade` of a sysroot deployed by `gitree deploy`, from an HTTP export

def test_admin_upgrade_over_http(work, http):
    from test_boot import remove_sysroot, synthetic_rootfs
    src = synthetic_rootfs(work)
    repo = os.path.join(work, "g.git")
    api.init(repo)
    for v in (1, 2):
        if v == 2:
            with open(os.path.join(src, "usr", "bin", "new-tool"), "w") as f:
                f.write("#!fake v2\n")
        api.import_rootfs(repo, src, branch="os/plain", timestamp=1700000000 + v, message=f"v{v}")
        api.make_bootable(repo, "os/plain", branch="os/boot")
    sysroot = os.path.join(work, "sysroot")
    c1 = api.deploy(repo, "os/boot~1", sysroot=sysroot, osname="testos", ref="os/boot").checksum
    try:
        served = os.path.join(http.root, "repo")
        c2 = api.export_ostree(repo, "os/boot", served, history=True, update_summary=True).checksum
        assert OstreeRepo(served).read_commit(c2).parent == c1   # the export continues the deployed history
        new = set(ostree_objects(served)) - set(ostree_objects(os.path.join(sysroot, "ostree", "repo")))
        sh("ostree", "admin", f"--sysroot={sysroot}", "set-origin", "--index=0", "--set=gpg-verify=false", "origin",
           http.url("repo"), "os/boot")
        http.mark()
        sh("ostree", "admin", f"--sysroot={sysroot}", "upgrade", "--os=testos")
        status = sh("ostree", "admin", f"--sysroot={sysroot}", "status")
        assert c2 in status and c1 in status and status.index(c2) < status.index(c1)
        dep = os.path.join(sysroot, "ostree", "deploy", "testos", "deploy", c2 + ".0")
        assert open(os.path.join(dep, "usr", "bin", "new-tool")).read() == "#!fake v2\n"
        fetched = {p[len("/repo/"):].replace(".filez", ".file") for p, code in http.requests()
                   if p.startswith("/repo/objects/") and code == 200}
        assert fetched and fetched <= {p.replace(".filez", ".file") for p in new}
    finally:
        remove_sysroot(sysroot)
