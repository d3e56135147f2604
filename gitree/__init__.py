"""gitree: operating-system root filesystems in git object storage, with OSTree compatibility.

Programs use `gitree.api` (docs/api.md): one function per command, typed results, typed errors and warnings.

The layer map; a subpackage's modules are named package.module (the package itself is in its modules' layer).
A module imports only from its own layer or lower ones (tests/test_layers.py checks it, lazy imports inside
functions included), and modules of one layer import each other without cycles; each capability lives in one
place.

  6 front ends   cli (parses arguments, calls api, prints), __main__, demo (the demo script), rootfs (builds
                 the cached Debian root filesystem the demo, tests and benchmarks use)
  5 api          api (one function per user command, typed results)
  4 boot/        boot.bootable (make-bootable: the OSTree boot layout), boot.deploy (ostree admin deploy),
                 boot.uboot (U-Boot script and uEnv.txt), boot.lxc (containers running deployments)
  3 operations   porcelain (import, checkout, ls/log/show, gc, fsck commands), diff (the diff engine);
    ostree/      ostree.export (gitree commits to OSTree repositories), ostree.importing (OSTree commit chains
                 into gitree), ostree.signing (GPG signatures of OSTree commits and summaries),
                 ostree.storedcommit (what export may take from an imported commit's stored OSTree commit),
                 ostree.targettrust (which objects already in a target repository export may trust unread);
    transport/   transport.bundle (offline update files), transport.distribution (push, fetch, clone with
                 verification)
  2 storage      repo (the repository: open/init, the writer lock, branch refs, object reads incl. streamed
                 blobs, commit objects, the author identity; thin entry points to the two below), treeread
                 (the one validating tree reader: directories, the walk, lookups, fsck's verify), importer
                 (the import engine and Transaction), sources (directory and tar readers yielding entries),
                 sinks (directory and tar writers). treeread and importer take a Repo but never import repo
  1 formats      entry (the entry type), names (name escaping), xattrs, sparse (sparse maps), gittree (git tree
                 codec), layout (the names in a commit's top tree), sidetable (metadata tables), tarformat (tar
                 reader/writer), ostreemeta, initramfs (cpio reader), packwriter, packreader (git packs),
                 exportcache (the authenticated export cache);
                 gitree_compat (compat/: the pure OSTree format) sits here too and imports nothing of gitree
  0 foundation   errors (errors, warnings, exit codes), progress, outfile (atomic output files), infile (a
                 user's input file: regular files only), tools (the runner for external programs), limits
                 (resource bounds), scratch (on-disk working sets: an import's tree, a pack's object ids),
                 lockfile (the repository's flock files), workers (forked worker processes)
"""

LAYERS: dict[str, int] = {
    "errors": 0, "limits": 0, "infile": 0, "progress": 0, "outfile": 0, "tools": 0, "scratch": 0, "workers": 0,
    "lockfile": 0,
    "entry": 1, "names": 1, "xattrs": 1, "sparse": 1, "gittree": 1, "sidetable": 1, "tarformat": 1,
    "layout": 1, "ostreemeta": 1, "initramfs": 1, "packwriter": 1, "packreader": 1, "exportcache": 1,
    "gitree_compat": 1,
    "repo": 2, "treeread": 2, "importer": 2, "sources": 2, "sinks": 2,
    "porcelain": 3, "diff": 3,
    "ostree": 3, "ostree.export": 3, "ostree.importing": 3, "ostree.signing": 3,
    "ostree.storedcommit": 3, "ostree.targettrust": 3,
    "transport": 3, "transport.bundle": 3, "transport.distribution": 3,
    "boot": 4, "boot.bootable": 4, "boot.deploy": 4, "boot.uboot": 4, "boot.lxc": 4,
    "api": 5,
    "cli": 6, "__main__": 6, "demo": 6, "rootfs": 6,
}
