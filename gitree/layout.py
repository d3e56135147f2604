"""The layout of a gitree commit's top tree (docs/format.md, section 2): the names the importer writes and the
tree reader checks.

    format          blob "gitree 1\\n"
    rootfs/         the content tree: files, symlinks, directories (names escaped where git refuses them)
    meta/           one node per directory of rootfs/: `.gitree` (that directory's side table) and the
                    nodes of its subdirectories under the same (escaped) names
    ostree/         optional: what an OSTree import needs to reproduce the original commit bytes
"""

from __future__ import annotations

FORMAT_BLOB = b"gitree 1\n"
TABLE_NAME = b".gitree"
TOP_ROOTFS, TOP_META, TOP_FORMAT, TOP_OSTREE = b"rootfs", b"meta", b"format", b"ostree"

__all__ = ["FORMAT_BLOB", "TABLE_NAME", "TOP_ROOTFS", "TOP_META", "TOP_FORMAT", "TOP_OSTREE"]
