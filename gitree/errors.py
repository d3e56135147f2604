"""Typed errors. The CLI turns each into one line on stderr and an exit code."""


class GitreeError(Exception):
    """Base of every error gitree reports to a user."""

    exit_code = 1


class UsageError(GitreeError):
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
    """A source (tar, directory, OSTree repo) cannot be read as asked."""

    exit_code = 6


class RepoLocked(GitreeError):
    exit_code = 7


class NotFound(GitreeError):
    exit_code = 8
