"""Variants of issue 9's classes found by the acceptance attack that the other security tests do not hold:
each runs the real CLI on a crafted server or input and checks one error line, a nonzero exit, and every
ref as it was."""

from __future__ import annotations

import os
import subprocess

import pygit2
import pytest
from helpers import run_gitree
from test_safety import refs
from test_security_git import _server, assert_one_error, base, commit  # noqa: F401  (base is a fixture)


def _child(server: str, cid: str) -> str:
    """A clean gitree commit on top of `cid` (the same tree)."""
    g = pygit2.Repository(server)
    top = g[pygit2.Oid(hex=cid)].tree
    return commit(server, (top["rootfs"].id.raw, top["meta"].id.raw), "clean child", [cid])


@pytest.mark.parametrize("kind", ["tag", "tree"])
def test_fetch_of_a_branch_naming_a_tag_or_tree_moves_nothing(work, base, kind):
    """A server branch naming an annotated tag (or a tree) ended fetch in `internal error: InvalidError`
    from the fast-forward check; it is refused with one line before that check, moving no branch."""
    repo, cid = base
    server = _server(work, repo)
    local = os.path.join(work, "local.git")
    run_gitree("clone", server, local)
    g = pygit2.Repository(server)
    child = _child(server, cid)
    if kind == "tag":
        target = g.create_tag("t1", pygit2.Oid(hex=child), pygit2.enums.ObjectType.COMMIT,
                              pygit2.Signature("t", "t@example.invalid", 1700000000, 0), "tag\n")
    else:
        target = g[pygit2.Oid(hex=child)].tree_id
    g.references["refs/heads/main"].set_target(target)
    before = refs(local)
    r = run_gitree("-C", local, "fetch", server, check=False)
    assert_one_error(r, "not a commit")
    assert refs(local) == before
    assert not [n for n in pygit2.Repository(local).references if "gitree-fetch" in n]


def test_clone_never_keeps_head_detached_at_what_the_server_named(work, base):
    """A server whose HEAD points outside refs/heads/ (at refs/gitree/ostree-cache, say) left the clone's
    HEAD detached at that commit, which no branch holds and nothing verified. The clone's HEAD names one
    of its (verified) branches."""
    repo, cid = base
    server = _server(work, repo)
    other = _child(server, cid)
    subprocess.run(["git", "--git-dir", server, "update-ref", "refs/gitree/ostree-cache", other], check=True)
    subprocess.run(["git", "--git-dir", server, "symbolic-ref", "HEAD", "refs/gitree/ostree-cache"], check=True)
    dest = os.path.join(work, "clone.git")
    run_gitree("clone", server, dest)
    g = pygit2.Repository(dest)
    assert not g.head_is_detached
    assert g.head.name == "refs/heads/main"
    assert set(g.references) == {"refs/heads/main"}
