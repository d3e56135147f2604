"""Typed errors of the OSTree format layer.

Everything compat raises on bad data derives from OstreeFormatError. Messages name the object
(checksum + type suffix) or the path involved.
"""

from __future__ import annotations


class OstreeFormatError(Exception):
    """Base of every error raised by gitree_compat for malformed input or repositories."""


class GVariantError(OstreeFormatError):
    """Bytes are not a GVariant of the expected type in normal form, or a value cannot be serialized."""


class InvalidObject(OstreeFormatError):
    """A well-formed GVariant whose content breaks an OSTree rule (bad name, mode, checksum length...)."""


class InvalidName(InvalidObject):
    """A dirtree entry name or ref name that OSTree refuses."""


class BadOstreeObject(OstreeFormatError):
    """An object in a repository is malformed or does not hash to its name."""

    def __init__(self, message: str, *, checksum: str | None = None, objtype: str | None = None,
                 path: str | None = None) -> None:
        super().__init__(message)
        self.checksum = checksum
        self.objtype = objtype
        self.path = path


class MissingObject(OstreeFormatError):
    """An object named by a checksum is not in the repository."""

    def __init__(self, message: str, *, checksum: str | None = None, objtype: str | None = None) -> None:
        super().__init__(message)
        self.checksum = checksum
        self.objtype = objtype


class BadRepo(OstreeFormatError):
    """A directory is not a usable OSTree repository (missing/invalid config, unsupported mode)."""


class UnsupportedContent(OstreeFormatError):
    """Content that the target repository mode cannot store (e.g. suid bits in bare-user-only)."""


class RefError(OstreeFormatError):
    """A ref is missing, malformed, or has an invalid name."""
