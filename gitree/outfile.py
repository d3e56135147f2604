"""Output files written whole or not at all, that nothing planted beside them can redirect.

The temporary file is created in the target's directory under a random name with
O_CREAT|O_EXCL|O_NOFOLLOW, so a symlink or file someone placed at a predictable temporary name is never
opened; it is renamed over the target only once complete (rename replaces a symlink at the target itself
instead of writing through it). The one way gitree writes an output file: `checkout --tar FILE`,
`bundle create`, `bundle unwrap`, summary.sig.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from typing import BinaryIO, Iterator

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


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
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
