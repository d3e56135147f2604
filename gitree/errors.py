"""Typed errors and warnings: one class per condition, each with its exit code.

The CLI turns an error into one line on stderr and its class's exit code (`gitree --help` lists them, as does
docs/api.md). Library callers catch the class they care about, or GitreeError for all of them.

Warnings (something read but not kept, a cache dropped, a tool's note) are `GitreeWarning` values passed to
one callback, `on_warning`, given to every API function; the CLI prints them as `gitree: warning: ...`, and
`gitree --strict` turns any warning into exit code `WARNINGS_EXIT` (an import that warned raises StrictWarnings
before it writes anything).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable, Optional


class GitreeError(Exception):
    """Base of every error gitree reports to a user."""

    exit_code = 1


class UsageError(GitreeError):
    """The command line or the call's arguments are inconsistent."""

    exit_code = 2


class CorruptObject(GitreeError):
    """An object in a store is malformed, missing, or fails its checksum."""

    exit_code = 3


class UnsafePath(GitreeError):
    """An input names a path that would escape its target or is ambiguous."""

    exit_code = 4


class UnsupportedEntry(GitreeError):
    """An entry cannot be represented by the target format."""

    exit_code = 5


class BadInput(GitreeError):
    """A source (tar, directory, OSTree repo, bundle) cannot be read as asked."""

    exit_code = 6


class RepoLocked(GitreeError):
    """Another gitree writer holds the repository's lock."""

    exit_code = 7


class NotFound(GitreeError):
    """A revision, branch, path or key does not exist."""

    exit_code = 8


class BranchMoved(GitreeError):
    """A branch moved while the operation ran; nothing was changed."""

    exit_code = 9


class ToolFailed(GitreeError):
    """An external program (git, ostree, gpg, zstd, mkimage, lxc-*) is missing or failed.

    `tool` names it, `line` is the last meaningful line of its stderr (or why it could not run)."""

    exit_code = 10

    def __init__(self, message: str, tool: str = "", line: str = "", returncode: int | None = None):
        super().__init__(message)
        self.tool = tool
        self.line = line
        self.returncode = returncode


class FsckFailed(GitreeError):
    """fsck found problems (listed on stdout)."""

    exit_code = 11


WARNINGS_EXIT = 12  # `gitree --strict`: the command warned


class StrictWarnings(GitreeError):
    """With --strict: the command warned (an import that warned writes nothing)."""

    exit_code = WARNINGS_EXIT


class TargetExists(GitreeError):
    """The output path exists, or is a directory that is not empty; nothing was written."""

    exit_code = 13


class WriteFailed(GitreeError):
    """Writing the output failed (permission, no space, I/O error)."""

    exit_code = 14


class NotFastForward(GitreeError):
    """A branch would move to a commit not descending from its tip; nothing was changed."""

    exit_code = 15


class NeedsRoot(GitreeError):
    """The operation must run as root (it writes file owners or runs containers)."""

    exit_code = 16


class TimedOut(GitreeError):
    """A wait (for a container to reach its target) ran out of time."""

    exit_code = 17


class Unreadable(GitreeError):
    """a source directory held items that could not be read; nothing was imported (--skip-unreadable: without them)"""

    exit_code = 18


INTERNAL_EXIT = 70  # a fault in gitree itself (a bug): rerun with --debug
INTERRUPTED_EXIT = 130

ERRORS: tuple[type[GitreeError], ...] = (GitreeError, UsageError, CorruptObject, UnsafePath, UnsupportedEntry,
                                         BadInput, RepoLocked, NotFound, BranchMoved, ToolFailed, FsckFailed,
                                         StrictWarnings, TargetExists, WriteFailed, NotFastForward, NeedsRoot,
                                         TimedOut, Unreadable)


def exit_codes_table() -> list[tuple[int, str, str]]:
    """(exit code, name, meaning) for every condition, in exit-code order: `gitree --help` and docs/api.md."""
    rows = [(0, "", "success"), (1, "GitreeError", "any other error (I/O, refused operation)")]
    rows += [(c.exit_code, c.__name__, (c.__doc__ or "").strip().splitlines()[0]) for c in ERRORS[1:]]
    rows += [(INTERNAL_EXIT, "", "internal error (a bug; rerun with --debug)"),
             (INTERRUPTED_EXIT, "", "interrupted")]
    return sorted(rows)


@dataclass(frozen=True)
class GitreeWarning:
    """One thing the operation could not keep or do as asked, without failing.

    `kind`: a stable short name (e.g. "tar", "directory", "export-skip", "export-cache", "checkout",
    "import-ostree", "lxc"); `message`: one human-readable line."""

    kind: str
    message: str

    def __str__(self) -> str:
        return self.message


OnWarning = Optional[Callable[[GitreeWarning], None]]


def print_warning(w: GitreeWarning) -> None:
    """The default channel: one `gitree: warning:` line on stderr."""
    print(f"gitree: warning: {w.message}", file=sys.stderr)


def warner(on_warning: OnWarning, kind: str) -> Callable[[str], None]:
    """A str callback for lower layers that report plain lines: each becomes a GitreeWarning of `kind`."""
    sink = on_warning or print_warning
    return lambda msg: sink(GitreeWarning(kind, msg))
