"""The storage layer's seams: warnings reach the caller's channel (nothing below the API prints on its own),
one Importer path writes commits, and the streaming blob reader runs git through tools.popen."""

from __future__ import annotations

import os

import pytest

from gitree import tools
from gitree.entry import Entry, Kind
from gitree.errors import CorruptObject, GitreeWarning, ToolFailed
from gitree.repo import STREAM_BLOB, Repo


def _tree(tx, data: bytes = b"hello\n") -> None:
    tx.add(Entry(b"", Kind.DIR, 0o755, 0, 0))
    tx.add(Entry(b"f", Kind.FILE, 0o644, 0, 0, size=len(data)), lambda: [data])


def test_commit_on_a_branch_and_commit_object_share_one_path(repo: str):
    """Importer.commit (branch tip as parent, branch moved) and commit_object (given parents, nothing moved)
    write the same commit for the same tree, message, time and parents."""
    repo = Repo(repo)
    with repo.transaction() as tx:
        _tree(tx)
        c1 = tx.commit(branch="main", message="one", timestamp=1000)
    with repo.transaction() as tx:
        _tree(tx, b"two\n")
        c2 = tx.commit(branch="main", message="two", timestamp=2000)
    with repo.transaction() as tx:
        _tree(tx, b"two\n")
        c2b = tx.write_commit(message="two", timestamp=2000, parents=[c1])
        tx.commit()
    assert c2b == c2 and repo.branch_tip("main") == c2
    assert [p.raw for p in repo.git[c2.hex()].parent_ids] == [c1]


def test_importer_warnings_go_to_the_callers_channel(repo: str, capfd):
    """A warning from below the API (an unreadable export cache) reaches the callback given; nothing is
    printed by the lower layer itself."""
    repo = Repo(repo)
    cache = os.path.join(repo.path, "gitree", "ostree-cache")
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    os.makedirs(cache)
    with open(os.path.join(cache, "key"), "wb") as f:
        f.write(b"short")                                    # not a key: the cache is dropped, with a warning
    got: list[str] = []
    with repo.transaction(warn=got.append) as tx:
        _tree(tx)
        tx.commit(branch="main", message="m", timestamp=1000)
    out, err = capfd.readouterr()
    assert got and err == "" and out == ""


def test_importer_default_channel_is_print_warning(capfd):
    """Without a callback, the one default channel (errors.print_warning) prints the CLI's line."""
    from gitree.errors import print_warning
    print_warning(GitreeWarning("x", "probe"))
    assert capfd.readouterr().err == "gitree: warning: probe\n"


def test_streamed_blob_of_a_missing_object_is_a_corrupt_object(repo: str):
    """Above STREAM_BLOB, `git cat-file` streams the blob; its failure is CorruptObject naming git's fatal line."""
    with pytest.raises(CorruptObject, match=r"cannot read blob 0{40} \(here\): fatal: .*0{40}"):
        b"".join(Repo(repo).blob_chunks(b"\0" * 20, STREAM_BLOB + 1, "here"))


def test_popen_streams_and_finish_reports(tmp_path):
    """tools.popen: stdout read while the tool runs, stderr kept in a file (a tool writing much there never
    blocks), finish returns the status and stderr; a missing program is ToolFailed."""
    p = tools.popen(["sh", "-c", "head -c 300000 /dev/zero | tr '\\0' x >&2; echo >&2; echo out; "
                                 "echo last error >&2; exit 3"])
    assert p.stdout.read() == b"out\n"
    rc, err = tools.finish(p)
    assert rc == 3 and len(err) == 300000 + len(b"\nlast error\n")
    e = tools.failure(["sh"], "probe", err, rc)
    assert isinstance(e, ToolFailed) and str(e) == "probe: last error" and e.returncode == 3
    with pytest.raises(ToolFailed, match="not installed"):
        tools.popen([str(tmp_path / "no-such-tool")])


def test_finish_of_a_tool_stopped_early(tmp_path):
    """Closing the pipe before the end (a reader that stops) ends the tool; finish still returns."""
    p = tools.popen(["sh", "-c", "exec cat /dev/zero"])
    assert len(p.stdout.read(4096)) == 4096
    rc, _err = tools.finish(p)
    assert rc != 0
