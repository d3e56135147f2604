"""gitree repositories on ordinary git servers: push, fetch and clone through the real `git`.

A gitree repository is plain git, so transport is git's own (git://, ssh, smart HTTP, a path). These
wrappers add gitree's rules: branches move fast-forward only and atomically, under the repository's
writer lock; a clone gets gitree's config and is checked to hold gitree commits. The OSTree export cache
(refs/gitree/*) stays local: it maps git objects to OSTree checksums that export trusts without
rehashing, so taking it from a server would let the server choose what an export writes.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from .errors import BadInput, GitreeError
from .store import Repo


def _git(args: list[str], what: str, cwd: str | None = None) -> str:
    try:
        r = subprocess.run(["git", *args], capture_output=True, cwd=cwd)
    except FileNotFoundError:
        raise GitreeError("git is not installed") from None
    if r.returncode != 0:
        lines = [ln for ln in r.stderr.decode(errors="replace").strip().splitlines() if ln.strip()]
        useful = [ln for ln in lines if ln.startswith(("fatal:", "error:", " ! "))
                  and ln.strip() not in ("fatal:", "error:")] or lines
        raise GitreeError(f"{what} failed: {useful[-1].strip() if useful else 'git exited ' + str(r.returncode)}")
    return r.stdout.decode(errors="replace")


def _branch_refspecs(repo: Repo, branches: list[str], force: bool = False) -> list[str]:
    plus = "+" if force else ""
    if not branches:
        return [f"{plus}refs/heads/*:refs/heads/*"]
    out = []
    for b in branches:
        ref = repo.branch_ref(b)
        out.append(f"{plus}{ref}:{ref}")
    return out


def push(repo: Repo, remote: str, branches: list[str] | None = None, force: bool = False) -> str:
    """Push branches (default: every branch) to REMOTE (a configured remote or a URL), atomically."""
    for b in branches or []:
        if repo.branch_tip(b) is None:
            raise BadInput(f"no branch {b} in {repo.path}")
    return _git(["--git-dir", repo.path, "push", "--atomic", "--porcelain", remote,
                 *_branch_refspecs(repo, branches or [], force)], f"git push to {remote}")


def fetch(repo: Repo, remote: str, branches: list[str] | None = None, depth: int | None = None) -> str:
    """Fetch branches (default: every branch) from REMOTE into the same branch names, fast-forward only
    (with `depth`, shallow: the server's newest commits replace the local tips)."""
    args = ["--git-dir", repo.path, "fetch", "--atomic", "--no-tags", "--update-head-ok"]
    if depth is not None:
        args.append(f"--depth={depth}")
    # A shallow fetch cannot prove a fast-forward (the history is cut): it takes the server's tips.
    refspecs = _branch_refspecs(repo, branches or [], force=depth is not None)
    with repo.lock():
        before = {r: repo.git.references[r].target for r in repo.git.references if r.startswith("refs/heads/")}
        out = _git(args + [remote, *refspecs], f"git fetch from {remote}")
        for r in repo.git.references:
            if r.startswith("refs/heads/") and repo.git.references[r].target != before.get(r):
                repo.commit_trees(repo.git[repo.git.references[r].target])
    return out


def clone(url: str, path: str, depth: int | None = None, branch: str | None = None) -> Repo:
    """A bare clone of a gitree repository, set up as `gitree init` would (shallow with `depth`)."""
    if os.path.lexists(path) and not (os.path.isdir(path) and not os.listdir(path)):
        raise GitreeError(f"{path} exists and is not an empty directory")
    args = ["clone", "--bare", "--no-tags", "-q"]
    if depth is not None:
        args += [f"--depth={depth}", "--no-single-branch"]  # --depth alone fetches the server's HEAD only
    if branch is not None:
        args += ["--branch", branch]
    created = not os.path.exists(path)
    try:
        _git(args + [url, path], f"git clone of {url}")
        repo = Repo(path)
        cfg = repo.git.config
        cfg["gitree.format"] = "1"
        cfg["pack.window"] = "50"
        cfg["pack.depth"] = "50"
        # later fetches update the branches themselves (fast-forward only), as `gitree fetch` does
        cfg["remote.origin.fetch"] = "refs/heads/*:refs/heads/*"
        heads = [r for r in repo.git.references if r.startswith("refs/heads/")]
        if not heads:
            raise GitreeError(f"{url} has no branches")
        for r in heads:
            repo.commit_trees(repo.git[repo.git.references[r].target])
        if repo.git.head_is_unborn:  # the server's HEAD names no branch: follow the first one
            repo.git.set_head(sorted(heads)[0])
        return repo
    except BaseException:
        if created:
            shutil.rmtree(path, ignore_errors=True)
        raise


__all__ = ["push", "fetch", "clone"]
