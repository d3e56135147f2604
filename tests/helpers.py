"""Test helpers: running the real CLI, and comparing trees member by member."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
import tempfile

from gitree.names import normalize_member_path
from gitree.tarformat import LNKTYPE, TarReader

GITREE = [sys.executable, "-m", "gitree"]


def run_gitree(*args, check=True, input=None, env=None, **kw) -> subprocess.CompletedProcess:
    e = dict(os.environ)
    e.pop("GITREE_REPO", None)
    if env:
        e.update(env)
    r = subprocess.run(GITREE + ["-q", *args], input=input, capture_output=True, env=e, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"gitree {' '.join(map(str, args))} failed ({r.returncode}): {r.stderr.decode()}")
    return r


def last_line(r: subprocess.CompletedProcess) -> str:
    return r.stdout.decode().strip().splitlines()[-1]


def _groups(members: dict, links: dict) -> set:
    """Hard-link groups as sets of paths (leaders are not canonical across tools)."""
    groups: dict[bytes, set] = {}
    for path, target in links.items():
        root = target
        while root in links:
            root = links[root]
        groups.setdefault(root, {root}).add(path)
    return {frozenset(g) for g in groups.values()}


def tar_summary(path_or_bytes, keep_mtime=False) -> tuple[dict, set]:
    """{path: (type, mode, uid, gid, content sha, symlink target, rdev, xattrs[, mtime])}, hardlink groups.

    Hard-link members take their target's description, so the result compares inodes, not tar encodings.
    """
    if isinstance(path_or_bytes, (bytes, bytearray)):
        import io
        f = io.BytesIO(path_or_bytes)
    else:
        f = open(path_or_bytes, "rb")
    with f:
        r = TarReader(f.read)
        out: dict[bytes, tuple] = {}
        links: dict[bytes, bytes] = {}
        for m in r:
            data = r.read_data()
            p = normalize_member_path(m.path)
            if m.typeflag == LNKTYPE:
                t = normalize_member_path(m.linkname)
                links[p] = t
                out[p] = out[t]
                continue
            t = m.typeflag.replace(b"\0", b"0").replace(b"7", b"0")
            desc = (t, m.mode, m.uid, m.gid, hashlib.sha1(data).hexdigest() if t == b"0" else None,
                    m.linkname if t == b"2" else None,
                    (m.devmajor, m.devminor) if t in (b"3", b"4") else None, tuple(sorted(m.xattrs)))
            if keep_mtime:
                desc += (m.mtime_ns,)
            out[p] = desc
    return out, _groups(out, links)


def dir_summary(root: str, keep_mtime=False) -> tuple[dict, set]:
    """The same description as tar_summary, read from a directory with lstat (no symlinks followed)."""
    rootb = os.fsencode(root)
    out: dict[bytes, tuple] = {}
    inodes: dict[tuple, list] = {}
    for dirpath, dirnames, filenames in os.walk(rootb):
        rel_dir = os.path.relpath(dirpath, rootb)
        rel_dir = b"" if rel_dir == b"." else rel_dir
        entries = [(rel_dir, None)] if rel_dir == b"" else []
        entries += [(os.path.join(rel_dir, n) if rel_dir else n, n) for n in dirnames + filenames]
        for rel, _ in entries:
            absp = os.path.join(rootb, rel) if rel else rootb
            st = os.lstat(absp)
            fmt = stat.S_IFMT(st.st_mode)
            t = {stat.S_IFREG: b"0", stat.S_IFLNK: b"2", stat.S_IFCHR: b"3", stat.S_IFBLK: b"4",
                 stat.S_IFDIR: b"5", stat.S_IFIFO: b"6", stat.S_IFSOCK: b"s"}[fmt]
            data = None
            if t == b"0":
                with open(absp, "rb") as fh:
                    data = hashlib.sha1(fh.read()).hexdigest()
            try:
                xs = tuple(sorted((os.fsencode(n), os.getxattr(absp, n, follow_symlinks=False))
                                  for n in os.listxattr(absp, follow_symlinks=False)))
            except OSError:
                xs = ()
            desc = (t, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, data,
                    os.readlink(absp) if t == b"2" else None,
                    (os.major(st.st_rdev), os.minor(st.st_rdev)) if t in (b"3", b"4") else None, xs)
            if keep_mtime:
                desc += (st.st_mtime_ns,)
            out[rel] = desc
            if t != b"5" and st.st_nlink > 1:
                inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
    groups = {frozenset(v) for v in inodes.values() if len(v) > 1}
    return out, groups


def tar_bytes(repo, rev: str, scratch: str) -> bytes:
    """REV's tree as `gitree checkout --tar` writes it, through gitree.api (written to a file in SCRATCH)."""
    from gitree import api
    fd, path = tempfile.mkstemp(prefix="checkout-", suffix=".tar", dir=scratch)
    os.close(fd)
    try:
        api.checkout_tar(repo, rev, path)
        with open(path, "rb") as f:
            return f.read()
    finally:
        os.unlink(path)


def warning_text(res) -> str:
    """The warnings of a gitree.api result, one message a line (what the CLI prints as `gitree: warning:`)."""
    return "\n".join(w.message for w in res.warnings)


def api_refuses(call, *keywords: str, cls=None):
    """`call()` (a gitree.api call) raises a typed gitree error, `cls` if given, never any other exception (which
    the CLI would report as an internal error), and its message names each keyword (alternatives split by |,
    case-insensitive). Returns the error. The CLI's side of the contract, one line on stderr and no traceback,
    is checked by the tests that keep running the command line (assert_one_error_line)."""
    from gitree.errors import GitreeError
    try:
        call()
    except GitreeError as e:
        err = e
    else:
        raise AssertionError(f"expected a gitree error, {call} succeeded")
    if cls is not None:
        assert isinstance(err, cls), f"expected {cls.__name__}, got {type(err).__name__}: {err}"
    low = str(err).lower()
    for k in keywords:
        assert any(a.lower() in low for a in k.split("|")), f"{k!r} not in {str(err)!r}"
    return err
