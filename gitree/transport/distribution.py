"""gitree repositories on ordinary git servers: push, fetch and clone through the real `git`.

A gitree repository is plain git, so transport is git's own (git://, ssh, smart HTTP, a path). These
wrappers add gitree's rules: branches move fast-forward only and atomically, under the repository's
writer lock; a clone gets gitree's config and is checked to hold gitree commits. The OSTree export cache
(refs/gitree/*) stays local: it maps git objects to OSTree checksums that export trusts without
rehashing, so taking it from a server would let the server choose what an export writes.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat

import pygit2

from .. import tools, treeread
from ..errors import BadInput, CorruptObject, GitreeError, NotFastForward, NotFound, TargetExists, UnsafePath
from ..outfile import make_private_dir, require_private_dir
from ..repo import Repo


def _git(args: list[str], what: str, cwd: str | None = None, input: bytes | None = None) -> str:
    return tools.run(["git", *args], what=f"{what} failed", cwd=cwd, input=input).stdout.decode(errors="replace")


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


QUARANTINE = "refs/gitree-fetch/"   # where a fetch lands before it is verified; never read as a branch


def verify_incoming(repo: Repo, tips: list[bytes], known: list[bytes], where: str) -> None:
    """Read every commit reachable from `tips` but not from `known` (commits already verified: the local
    branches) as fsck does: the format marker, every side table against its tree, names, xattrs, hard
    links, blobs."""
    try:
        walker = repo.git.walk(None, pygit2.enums.SortMode.TOPOLOGICAL)
        for t in tips:
            if repo.git.get(pygit2.Oid(raw=t)).type != pygit2.enums.ObjectType.COMMIT:
                # a branch names a commit: a tag (or anything else) at a tip would block every later update
                raise CorruptObject(f"{where}: {t.hex()} is not a commit; no branch was changed")
            walker.push(pygit2.Oid(raw=t))
        for k in known:
            walker.hide(pygit2.Oid(raw=k))
        seen_roots: set = set()
        verified = treeread.Verified()  # directories shared by commits are read once
        for commit in walker:
            if commit.tree_id.raw in seen_roots:  # commits sharing a tree: it is read once
                continue
            seen_roots.add(commit.tree_id.raw)
            try:
                repo.verify(commit, verified=verified)
            except GitreeError as e:
                raise CorruptObject(f"{where}: commit {commit.id} is refused: {e}; no branch was changed") from None
    except (KeyError, ValueError, pygit2.GitError) as e:
        raise CorruptObject(f"{where}: the history is malformed ({e}); no branch was changed") from None


def _drop_quarantine(repo: Repo) -> None:
    stale = [r for r in repo.git.references if r.startswith(QUARANTINE)]
    if stale:
        _git(["--git-dir", repo.path, "update-ref", "--stdin"], "cleaning up fetched refs",
             input="".join(f"delete {r}\n" for r in stale).encode())


def fetch(repo: Repo, remote: str, branches: list[str] | None = None, depth: int | None = None) -> str:
    """Fetch branches (default: every branch) from REMOTE into the same branch names, fast-forward only
    (with `depth`, shallow: the server's newest commits replace the local tips).

    git fetches into a quarantine namespace; every new commit is verified; then all branches move in one
    transaction, or none does."""
    # --refmap= : no opportunistic update of the branches remote.<name>.fetch maps (they move only below)
    args = ["--git-dir", repo.path, "-c", "transfer.fsckObjects=true", "fetch", "--no-tags", "--no-write-fetch-head",
            "--refmap="]
    if depth is not None:
        args.append(f"--depth={depth}")
    ns = f"{QUARANTINE}{os.getpid()}-{secrets.token_hex(4)}/"
    if branches:
        refspecs = [f"+{ref}:{ns}{ref[len('refs/heads/'):]}" for ref in (repo.branch_ref(b) for b in branches)]
    else:
        refspecs = [f"+refs/heads/*:{ns}*"]
    with repo.lock():
        _drop_quarantine(repo)  # left by a fetch that was killed
        try:
            out = _git(args + [remote, *refspecs], f"git fetch from {remote}")
            incoming = {r[len(ns):]: repo.git.references[r].target.raw
                        for r in repo.git.references if r.startswith(ns)}
            updates = []
            for name, new in sorted(incoming.items()):
                ref = repo.branch_ref(name)
                old = repo.branch_tip(name)
                if old == new:
                    continue
                try:
                    kind = repo.git.get(pygit2.Oid(raw=new)).type
                except (ValueError, pygit2.GitError) as e:   # an object libgit2 cannot parse
                    raise CorruptObject(f"fetch from {remote}: branch {name} on the server names {new.hex()}, "
                                        f"which cannot be read ({e}); no branch was changed") from None
                if kind != pygit2.enums.ObjectType.COMMIT:
                    # a tag or tree at a server branch: refused before the fast-forward check reads it
                    raise CorruptObject(f"fetch from {remote}: branch {name} on the server names "
                                        f"{new.hex()}, which is not a commit; no branch was changed")
                if old is not None and depth is None and \
                        not repo.git.descendant_of(pygit2.Oid(raw=new), pygit2.Oid(raw=old)):
                    raise NotFastForward(f"git fetch from {remote}: branch {name} on the server is not a fast-forward "
                                          "of the local one; no branch was changed")
                updates.append((ref, new, old))
            local = [repo.git.references[r].target.raw for r in repo.git.references if r.startswith("refs/heads/")]
            verify_incoming(repo, [new for _, new, _ in updates], local, f"fetch from {remote}")
            if updates:
                zero = "0" * 40
                _git(["--git-dir", repo.path, "update-ref", "-m", f"gitree: fetch from {remote}", "--stdin"],
                     "moving the fetched branches",
                     input="".join(f"update {ref} {new.hex()} {old.hex() if old else zero}\n"
                                   for ref, new, old in updates).encode())
        finally:
            _drop_quarantine(repo)
    return out


def clone(url: str, path: str, depth: int | None = None, branch: str | None = None) -> Repo:
    """A bare clone of a gitree repository, set up as `gitree init` would (shallow with `depth`)."""
    if os.path.lexists(path) and not (os.path.isdir(path) and not os.listdir(path)):
        raise TargetExists(f"{path} exists and is not an empty directory")
    if os.path.lexists(path):
        require_private_dir(path, "clone destination")
    # --no-local: a local source is copied object by object, never linked or borrowed (alternates), so the
    # clone owns what it verified
    args = ["-c", "transfer.fsckObjects=true", "clone", "--bare", "--no-tags", "--no-local", "-q"]
    if depth is not None:
        args += [f"--depth={depth}", "--no-single-branch"]  # --depth alone fetches the server's HEAD only
    if branch is not None:
        args += ["--branch", branch]
    created = not os.path.exists(path)
    # What a refused clone removes is held by descriptor and inode from the moment it is made (each
    # directory is made in its parent's descriptor), so that renaming a parent, or a symlink put in its
    # place, cannot turn the clean-up onto other directories. The path is resolved as the kernel would
    # (symlinks before "..").
    held: list[tuple[int, str, int, int, bool]] = []   # (parent's descriptor, name, st_dev, st_ino, is PATH)
    fds: list[int] = []
    target = path
    try:
        if created:
            target = os.path.realpath(path)
            missing = []
            base = os.path.dirname(target)
            while not os.path.lexists(base):
                missing.append(os.path.basename(base))
                base = os.path.dirname(base)
            fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            fds.append(fd)
            for name in [*reversed(missing), os.path.basename(target)]:
                dest = len(held) == len(missing)
                try:
                    if dest:
                        make_private_dir(name, dir_fd=fd)   # it inherits no default ACL of its parent
                    else:
                        os.mkdir(name, 0o777, dir_fd=fd)     # as git clone makes parents
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    held.append((fd, name, st.st_dev, st.st_ino, dest))
                except FileExistsError:
                    if dest:
                        raise
                    held.append((fd, name, -1, -1, False))   # made by someone else meanwhile: not removed
                if not dest:
                    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                    fds.append(fd)
        else:
            fds.append(os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC))
        return _clone_into(url, target, args)
    except BaseException:
        if created:
            for fd, name, dev, ino, dest in reversed(held):
                with contextlib.suppress(OSError):   # the clone's own error is the one raised
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    if (st.st_dev, st.st_ino) == (dev, ino) and stat.S_ISDIR(st.st_mode):
                        if dest:
                            shutil.rmtree(name, dir_fd=fd)
                        else:   # a parent it made: only if nothing else came into it
                            os.rmdir(name, dir_fd=fd)
        elif fds:  # an empty private directory given as PATH is left empty, as it was: no refused branch stays
            fd = fds[0]
            for name in os.listdir(fd):
                with contextlib.suppress(OSError):
                    if stat.S_ISDIR(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                        shutil.rmtree(name, dir_fd=fd)
                    else:
                        os.unlink(name, dir_fd=fd)
        raise
    finally:
        for fd in fds:
            os.close(fd)


def _clone_into(url: str, path: str, args: list[str]) -> Repo:
    """git clone into PATH, set it up and verify every commit; raises on any refusal (the caller cleans up)."""
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
        raise NotFound(f"{url} has no branches")
    for r in list(repo.git.references):
        if not r.startswith("refs/heads/"):
            raise UnsafePath(f"clone of {url}: the server sent {r}; only branches can arrive")
        repo.branch_ref(r)
    # every commit is read as fsck reads it before the clone is kept (a failure removes it)
    verify_incoming(repo, [repo.git.references[r].target.raw for r in heads], [], f"clone of {url}")
    # the server's HEAD names no branch (unborn, or detached: git clone leaves HEAD at whatever commit a
    # HEAD pointing outside refs/heads/ named, which no branch holds and nothing verified): the first one
    if repo.git.head_is_unborn or repo.git.head_is_detached:
        repo.git.set_head(sorted(heads)[0])
    return repo


__all__ = ["push", "fetch", "clone"]
