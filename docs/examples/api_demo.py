#!/usr/bin/env python3
"""gitree through its Python API alone (docs/api.md): import a root filesystem tar, make a second version of
it, export both to an OSTree repository, and diff the two versions.

    python3 docs/examples/api_demo.py ROOTFS.tar WORKDIR

WORKDIR must not exist or be empty; the script creates WORKDIR/repo.git (gitree), WORKDIR/ostree (an archive
OSTree repository) and WORKDIR/v2 (the second version's files). It prints one `key: value` line per result.
"""

import os
import sys

from gitree import api


def main(tar: str, work: str) -> None:
    os.makedirs(work, exist_ok=True)
    repo = api.init(os.path.join(work, "repo.git")).path
    warnings = []                       # every warning of every call, as it happens

    # 1. the tar as the first commit on "main"
    v1 = api.import_rootfs(repo, tar, branch="main", message="version 1", timestamp=1700000000,
                           on_warning=warnings.append)
    print(f"v1: {v1.commit} ({v1.stats.entries} entries, {v1.stats.files} files)")

    # 2. a second version: v1's files with one file changed and one added, imported from a directory
    v2_dir = os.path.join(work, "v2")
    api.checkout(repo, "main", v2_dir, on_warning=warnings.append)
    with open(os.path.join(v2_dir, "etc", "motd"), "w") as f:
        f.write("version 2\n")
    with open(os.path.join(v2_dir, "etc", "gitree-demo"), "w") as f:
        f.write("added in version 2\n")
    v2 = api.import_rootfs(repo, v2_dir, branch="main", message="version 2", timestamp=1700000100,
                           on_warning=warnings.append)
    print(f"v2: {v2.commit}")

    # 3. both versions into an OSTree repository, as a parent chain on the ref "os/main"
    ostree = os.path.join(work, "ostree")
    exp = api.export_ostree(repo, "main", ostree, ref="os/main", history=True, on_warning=warnings.append)
    print(f"ostree: {exp.checksum} ({len(exp.commits)} commits, {exp.files_written} files written)")

    # 4. what changed from v1 to v2
    for change in api.diff(repo, v1.commit, v2.commit).changes:
        print(f"change: {change.status} /{change.path.decode('utf-8', 'backslashreplace')}"
              + (f" ({'; '.join(change.details)})" if change.details else ""))

    for w in warnings:
        print(f"warning: {w.kind}: {w.message}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    try:
        main(sys.argv[1], sys.argv[2])
    except api.GitreeError as e:     # each error class has the exit code the CLI uses
        sys.exit(f"api_demo: {type(e).__name__}: {e}")
