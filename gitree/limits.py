"""Every limit gitree enforces on what it reads, in one place (documented in docs/security.md, "Limits").

Linux's own limits come first: a tree Linux cannot hold is refused when read, not half-way through a
checkout. The others bound the memory and time one object or one bundle can cost; each is far above what
a real root filesystem needs, and each is named in the message that refuses it.
"""

from __future__ import annotations

# -- Linux (include/uapi/linux/limits.h, xattr.h) ---------------------------------------------------
NAME_MAX = 255                 # bytes in one file name
SYMLINK_MAX = 4095             # bytes in a symlink target (PATH_MAX less the NUL)
XATTR_NAME_MAX = 255           # bytes in an xattr name, namespace prefix included
XATTR_SIZE_MAX = 65536         # bytes in one xattr value
XATTR_LIST_MAX = 65536         # bytes of all of one inode's xattr names, each with its NUL

# -- the git store (side tables and trees, read per directory) --------------------------------------
MAX_DEPTH = 2048               # directory levels; Linux paths are at most 4096 bytes (PATH_MAX)
MAX_TREE_DEPTH = MAX_DEPTH     # directory levels below the root
MAX_DIR_ENTRIES = 1 << 18      # entries in one directory (262,144)
MAX_TABLE_BYTES = 16 << 20     # bytes of one side table (checked from the object header, before reading)
MAX_TREE_BYTES = 32 << 20      # bytes of one git tree object (same)
MAX_OPEN_ENTRIES = (1 << 18) + (1 << 15)  # rows of the directories a walk holds open on one path, a row
                                         # more per 512 bytes of side table (xattr values): one directory
                                         # of MAX_DIR_ENTRIES and 32,768 more (a real rootfs path holds a few
                                         # thousand); the next directory is read before it is counted, so a
                                         # walk may hold twice this, about 220 MiB
MAX_COMMIT_ENTRIES = 1 << 23   # entries one walk of a commit yields (8,388,608): bounds a tree that
                               # shares subtrees to look exponentially large
MAX_LEADER_WORK = 1 << 23      # directory levels stepped plus rows read to find the hard-link leaders of
                               # one walk (as many as the entries it may yield)
MAX_META_BYTES = 1 << 20       # a commit or tag object, or a small blob gitree reads whole (format marker,
                               # the ostree-meta blob of a bootable commit)
MAX_OSTREE_OBJECT_BYTES = 10 << 20  # ostree/commit and ostree/commitmeta of an imported commit (OSTree's own
                                    # limit on a metadata object)
MAX_XATTR_ORDER_BYTES = 8 << 20     # ostree/xattr-order of an imported commit

# -- bundles ---------------------------------------------------------------------------------------
MAX_BUNDLE_HEADER_LINES = 1024     # prerequisite plus ref lines of the git bundle inside
MAX_BUNDLE_HEADER_LINE = 1024      # bytes in one of those lines
MAX_BUNDLE_OBJECTS = 1 << 24       # objects in the pack of a bundle
MAX_BUNDLE_BLOB = 1 << 36          # bytes of one blob in a bundle (64 GiB); blobs are streamed, never held
MAX_BUNDLE_BYTES = 1 << 38         # bytes of the whole unpacked pack (256 GiB)
MAX_ZSTD_WINDOW_LOG = 30           # zstd window of a bundle (1 GiB): the decompressor's memory bound
MAX_REFERENCE_POSITIONS = 1 << 24  # reference objects a bundle header may name

__all__ = [n for n in dir() if n.isupper()]
