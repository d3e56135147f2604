"""Output files written whole or not at all, that nothing planted beside them can redirect.

The temporary file is created in the target's directory under a random name with
O_CREAT|O_EXCL|O_NOFOLLOW, so a symlink or file someone placed at a predictable temporary name is never
opened; it is renamed over the target only once complete (rename replaces a symlink at the target itself
instead of writing through it). The one way gitree writes an output file: `checkout --tar FILE`,
`bundle create`, `bundle unwrap`, summary.sig, an LXC container's config and hook.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from typing import BinaryIO, Iterator

from .errors import UnsafePath

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _drop_inherited_acl(fd: int, mode: int) -> None:
    """A default ACL on the directory would give the new file entries for other users: remove them, so the
    file has the permissions `mode` and the umask give it, as a file made elsewhere would."""
    try:
        os.removexattr(fd, "system.posix_acl_access")
    except OSError:
        pass  # none inherited, or no ACL support
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, mode & ~umask)


def make_private_dir(path: str | bytes, dir_fd: int | None = None) -> None:
    """Create the directory gitree is to fill (checkout DEST, clone PATH), mode 0700, and remove the ACLs
    it inherits from a parent's default ACL: entries for other users would carry over to everything
    written inside it. Raises FileExistsError when `path` exists. `dir_fd`: `path` is a name in it."""
    os.mkdir(path, 0o700, dir_fd=dir_fd)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        for name in ("system.posix_acl_default", "system.posix_acl_access"):
            try:
                os.removexattr(fd, name)
            except OSError:
                pass  # none inherited, or no ACL support
        os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


def require_private_dir(path: str, what: str) -> None:
    """An existing directory gitree is to fill (checkout DEST, clone PATH) must be this user's, writable by
    no one else, without a default ACL: otherwise its owner could swap what gitree creates for symlinks
    between two system calls, or read every file through inherited ACL entries."""
    st = os.lstat(path)
    if st.st_uid != os.geteuid():
        raise UnsafePath(f"{what} {path} belongs to uid {st.st_uid}, not to you: give a new or your own directory")
    if st.st_mode & 0o022:
        raise UnsafePath(f"{what} {path} is writable by other users (mode {st.st_mode & 0o7777:o})")
    try:
        os.getxattr(path, "system.posix_acl_default", follow_symlinks=False)
    except OSError:
        return
    raise UnsafePath(f"{what} {path} has a default ACL, which would give other users access to what is written")


@contextlib.contextmanager
def atomic_output(path: str, mode: int = 0o666) -> Iterator[BinaryIO]:
    """Yield a binary file; on success it replaces `path` (fsynced first), on any error it is removed."""
    directory = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    for _ in range(16):
        tmp = os.path.join(directory, f".{base[:64]}.gitree-{secrets.token_hex(8)}")
        try:
            fd = os.open(tmp, _FLAGS, mode)
            break
        except FileExistsError:
            continue
    else:  # pragma: no cover - 16 collisions of 64 random bits
        raise FileExistsError(f"cannot create a temporary file beside {path}")
    try:
        _drop_inherited_acl(fd, mode)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
