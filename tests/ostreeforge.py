"""Forging OSTree repositories for the hostile-input tests: real repositories made by `ostree commit`,
then objects replaced so that the rest of the repository stays consistent with them."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess

import gitree_compat as oc


def ostree_commit(src: str, repo: str, subject: str) -> str:
    """`ostree init` (archive) + `ostree commit` of directory `src` on ref os/main; the commit checksum."""
    subprocess.run(["ostree", "init", f"--repo={repo}", "--mode=archive"], check=True)
    return subprocess.run(["ostree", f"--repo={repo}", "commit", f"--tree=dir={src}", "-b", "os/main",
                           "--timestamp=@0", "-s", subject], check=True, capture_output=True,
                          text=True).stdout.strip()


def obj_path(repo: str, csum: str, suffix: str) -> str:
    return os.path.join(repo, "objects", csum[:2], f"{csum[2:]}.{suffix}")


def write_object(repo: str, data: bytes, suffix: str) -> str:
    """Store metadata bytes under their sha256; return it."""
    csum = hashlib.sha256(data).hexdigest()
    path = obj_path(repo, csum, suffix)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return csum


def all_objects(repo: str, suffix: str) -> list[str]:
    out = []
    for sub in sorted(os.listdir(os.path.join(repo, "objects"))):
        for name in sorted(os.listdir(os.path.join(repo, "objects", sub))):
            if name.endswith("." + suffix):
                out.append(sub + name.partition(".")[0])
    return out


def _set_refs(repo: str, old: str, new: str) -> None:
    for dirpath, _dirs, files in os.walk(os.path.join(repo, "refs")):
        for fn in files:
            p = os.path.join(dirpath, fn)
            if not os.path.islink(p) and open(p).read().strip() == old:
                with open(p, "w") as f:
                    f.write(new + "\n")


def replace_object(repo: str, old: str, suffix: str, data: bytes, new: str | None = None) -> str:
    """Store `data` as a new object replacing `old` and rewrite every dirtree and commit that names `old`
    (and their parents, up to the refs), so the repository stays consistent apart from `data` itself.
    `new` is the new object's name (content objects are not named by sha256 of their bytes)."""
    new = new or hashlib.sha256(data).hexdigest()
    path = obj_path(repo, new, suffix)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    pending = [(old, new)]
    while pending:
        o, n = pending.pop()
        if o == n:
            continue
        _set_refs(repo, o, n)
        for sfx in ("dirtree", "commit"):
            for c in all_objects(repo, sfx):
                raw = open(obj_path(repo, c, sfx), "rb").read()
                if bytes.fromhex(o) in raw:
                    pending.append((c, write_object(repo, raw.replace(bytes.fromhex(o), bytes.fromhex(n)), sfx)))
    return new


def filez_checksum(data: bytes) -> str | None:
    """The content checksum of a .filez object's bytes, or None if they do not parse."""
    try:
        r = oc.FilezReader(io.BytesIO(data).read)
        h = oc.ContentHasher(r.meta)
        for c in r.chunks():
            h.update(c)
        return h.hexdigest()
    except (oc.OstreeFormatError, ValueError):
        return None

