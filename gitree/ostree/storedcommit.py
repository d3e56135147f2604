"""The OSTree commit an imported gitree commit keeps (`ostree/commit`), and what export may take from it.

import-ostree keeps the original commit's bytes so that export-ostree reproduces its checksum. But the same
subtree may arrive in a bundle, a fetch or a clone, written by anyone: what it claims must not publish
something git does not show (review F2). The rule (docs/security.md, "Stored OSTree commits"):

* export-ostree writes the stored commit as it is only when every field git can check agrees with the git
  commit: its root dirtree and dirmeta are those the export computed from the tree, its parent is the
  exported parent, and its subject, body and timestamp are exactly what import-ostree derives from them into
  the git commit (`derived_message`, the committer time). Otherwise it writes a new commit from the git commit,
  with one warning naming the field.
* Its metadata (a{sv}) and detached metadata cannot be checked against anything in git, and an original
  history needs them to keep its checksums; they are exported as they are, and shown instead: `gitree show`
  lists the keys, and `fsck` and `bundle apply` warn once, naming the keys, when a commit they read carries any.
"""

from __future__ import annotations

import re
from typing import Iterable

import pygit2

import gitree_compat as oc

from ..gittree import decode_tree
from ..limits import MAX_OSTREE_OBJECT_BYTES
from ..packwriter import OBJ_BLOB, OBJ_TREE

OSTREE_DIR = b"ostree"
COMMIT_BLOB, COMMITMETA_BLOB = b"commit", b"commitmeta"
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def derived_message(c: oc.Commit, csum: str) -> str:
    """The git commit message import-ostree makes from an OSTree commit (before git's final newline)."""
    message = c.subject + ("\n\n" + c.body if c.body else "")
    return message or f"OSTree commit {csum}"


def mismatch(c: oc.Commit, csum: str, commit: pygit2.Commit, parent: str | None, root: tuple[str, str]) -> str | None:
    """Why the stored OSTree commit `c` (checksum `csum`) may not be exported as it is for git commit `commit`
    with exported parent `parent` and root (dirtree, dirmeta) `root`; None when every checkable field agrees."""
    if (c.root_tree, c.root_meta) != root:
        return "its tree differs from the OSTree commit it was imported from"
    # a commit imported without its parent (a partial OSTree history) still names that parent
    if not (c.parent == parent or (parent is None and not commit.parents)):
        return "its parent differs from the OSTree commit it was imported from"
    message = derived_message(c, csum)
    if commit.message != (message if message.endswith("\n") else message + "\n"):  # as write_commit ends it
        return "its message differs from the subject and body of the stored OSTree commit"
    if commit.commit_time != c.timestamp:
        return "its time differs from the timestamp of the stored OSTree commit"
    return None


def unchecked_keys(repo, commit: pygit2.Commit) -> list[str]:
    """Metadata keys of the OSTree commit stored in `commit` (detached ones as `detached:KEY`), which export
    publishes without git showing them; [] when it stores none (or none that decodes: export will not use it)."""
    from ..layout import TOP_OSTREE
    top = repo.top_entries(commit)
    if TOP_OSTREE not in top:
        return []
    ent = {e.name: e.oid for e in decode_tree(repo.read_bounded(top[TOP_OSTREE].oid, OBJ_TREE,
                                                              MAX_OSTREE_OBJECT_BYTES, "ostree/"))}
    keys: list[str] = []
    try:
        if COMMIT_BLOB in ent:
            c = oc.decode_commit(repo.read_bounded(ent[COMMIT_BLOB], OBJ_BLOB, MAX_OSTREE_OBJECT_BYTES,
                                                   "ostree/commit"))
            keys += [k for k, _ in c.metadata]
        if COMMITMETA_BLOB in ent:
            d = oc.decode_commitmeta(repo.read_bounded(ent[COMMITMETA_BLOB], OBJ_BLOB, MAX_OSTREE_OBJECT_BYTES,
                                                       "ostree/commitmeta"))
            keys += ["detached:" + k for k, _ in d]
    except oc.OstreeFormatError:
        return []
    return keys


def warn_unchecked(repo, commits: Iterable[pygit2.Commit], warn, what: str) -> None:
    """One warning for all `commits` that carry stored OSTree metadata (see the module doc)."""
    n = 0
    keys: dict[str, None] = {}
    first = None
    for c in commits:
        ks = unchecked_keys(repo, c)
        if ks:
            n += 1
            first = first or c
            keys.update(dict.fromkeys(ks))
    if n:
        shown = ", ".join(list(keys)[:20]) + (", ..." if len(keys) > 20 else "")
        shown = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", shown)[:1000]
        warn(f"{what}: {n} commit(s) carry a stored OSTree commit whose metadata export-ostree publishes "
             f"unchecked (keys: {shown}); `gitree show {first.id}` lists them")


__all__ = ["derived_message", "mismatch", "unchecked_keys", "warn_unchecked"]
