"""The `gitree` command line: parses arguments, calls porcelain, turns errors into one stderr line."""

from __future__ import annotations

import os
import re
import sys
import threading
import traceback

import click

from . import porcelain
from .errors import GitreeError
from .progress import human_bytes
from .store import Repo


class Ctx:
    def __init__(self, repo_path: str, debug: bool, quiet: bool):
        self.repo_path = repo_path
        self.debug = debug
        self.quiet = quiet

    def repo(self) -> Repo:
        return Repo(self.repo_path)


pass_ctx = click.make_pass_decorator(Ctx)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-C", "--repo", "repo_path", envvar="GITREE_REPO", default=".", show_default="$GITREE_REPO or .",
              help="The gitree repository (a bare git repository).")
@click.option("--debug", is_flag=True, help="Show a traceback on errors.")
@click.option("-q", "--quiet", is_flag=True, help="No progress display.")
@click.pass_context
def cli(ctx, repo_path, debug, quiet):
    """gitree: operating-system root filesystems in git, with OSTree compatibility."""
    ctx.obj = Ctx(repo_path, debug, quiet)


@cli.command()
@pass_ctx
def init(c: Ctx):
    """Create a new repository at -C PATH."""
    porcelain.init(c.repo_path)
    click.echo(f"initialized gitree repository in {os.path.abspath(c.repo_path)}")


@cli.command("import-rootfs")
@click.argument("source")
@click.option("-b", "--branch", required=True, help="Branch to commit on (its tip becomes the parent).")
@click.option("-m", "--message", help="Commit message.")
@click.option("--timestamp", type=int, help="Commit time, UNIX seconds (default: now).")
@click.option("--keep-mtime", is_flag=True, help="Store modification times (not kept by default).")
@click.option("--cross-filesystems", is_flag=True, help="Descend into other mounted filesystems.")
@click.option("--strict", is_flag=True, help="Fail if anything read cannot be kept (otherwise a warning).")
@pass_ctx
def import_rootfs(c: Ctx, source, branch, message, timestamp, keep_mtime, cross_filesystems, strict):
    """Import SOURCE (a directory, a tar file of any compression, or - for a tar on stdin)."""
    res = porcelain.import_rootfs(c.repo(), source, branch, message, timestamp, keep_mtime, c.quiet,
                                  one_file_system=not cross_filesystems, strict=strict)
    s = res.stats
    click.echo(f"imported {s.entries} entries, {s.files} files, {human_bytes(s.bytes)} in {s.seconds:.1f} s; "
               f"{s.new_objects} new objects ({human_bytes(s.pack_bytes)})", err=True)
    click.echo(res.commit.hex())


@cli.command()
@click.argument("rev")
@click.argument("dest", required=False)
@click.option("--tar", "tar_out", metavar="FILE", help="Write a POSIX pax tar to FILE (- for stdout).")
@click.option("--sparse", is_flag=True, help="With --tar: write sparse files as GNU sparse 1.0 members.")
@pass_ctx
def checkout(c: Ctx, rev, dest, tar_out, sparse):
    """Write REV's tree to DEST (a new or empty directory), or as a tar with --tar."""
    if (dest is None) == (tar_out is None):
        raise GitreeError("give either DEST or --tar FILE")
    repo = c.repo()
    if tar_out is not None:
        files, nbytes = porcelain.checkout_tar(repo, rev, tar_out, c.quiet, sparse=sparse)
        click.echo(f"wrote {files} files, {human_bytes(nbytes)}", err=True)
        return
    report = porcelain.checkout_dir(repo, rev, dest, c.quiet)
    for line in report.lines():
        click.echo(f"gitree: warning: {line} (not running as root?)", err=True)


@cli.command()
@click.argument("rev")
@click.argument("path", required=False, default="")
@click.option("-l", "long_", is_flag=True, help="Long listing: mode, owner, size, link target, xattrs.")
@click.option("-R", "recursive", is_flag=True, help="Recurse into directories.")
@pass_ctx
def ls(c: Ctx, rev, path, long_, recursive):
    """List PATH (default: the root) in REV."""
    for line in porcelain.ls(c.repo(), rev, path, long_, recursive):
        click.echo(line)


@cli.command()
@click.argument("rev", default="HEAD")
@click.option("-n", "limit", type=int, help="Show at most N commits.")
@pass_ctx
def log(c: Ctx, rev, limit):
    """Show the history of REV (default HEAD)."""
    for line in porcelain.log(c.repo(), rev, limit):
        click.echo(line)


@cli.command()
@click.argument("rev")
@pass_ctx
def show(c: Ctx, rev):
    """Show a commit and a summary of its tree."""
    for line in porcelain.show(c.repo(), rev):
        click.echo(line)


@cli.command()
@click.argument("rev1")
@click.argument("rev2")
@pass_ctx
def diff(c: Ctx, rev1, rev2):
    """Per-path changes from REV1 to REV2, content and metadata."""
    for line in porcelain.diff(c.repo(), rev1, rev2):
        click.echo(line)


@cli.command("export-ostree")
@click.argument("rev")
@click.option("--ostree-repo", "ostree_repo", required=True, metavar="PATH",
              help="OSTree repository (created if missing).")
@click.option("--ref", help="OSTree ref to set (default: the gitree branch name).")
@click.option("--mode", type=click.Choice(["archive", "archive-z2", "bare", "bare-user", "bare-user-only"]),
              default=None, help="Mode of a new repository (default archive); must match an existing one.")
@click.option("--no-bindings", is_flag=True, help="Do not add ostree.ref-binding (as ostree commit --no-bindings).")
@click.option("--history", is_flag=True, help="Export the branch's whole first-parent ancestry as a parent chain.")
@click.option("--strict", is_flag=True, help="Fail on entries OSTree cannot hold instead of skipping them.")
@click.option("--update-summary", is_flag=True, help="Write the summary file (as ostree summary -u).")
@click.option("--gpg-sign", "gpg_keys", multiple=True, metavar="KEYID",
              help="Sign the commits (and the summary, with --update-summary) with this GPG key; repeatable.")
@click.option("--gpg-homedir", metavar="DIR", help="GnuPG home holding the secret key(s).")
@click.option("--collection-id", metavar="ID", help="Collection ID of a new repository (core.collection-id); "
              "commits get ostree.collection-binding. An existing repository must have this one.")
@click.option("--ref-binding", "ref_bindings", multiple=True, metavar="REF",
              help="Another ref for ostree.ref-binding besides --ref (as ostree commit --bind-ref); repeatable.")
@click.option("--compression", default="reuse", show_default=True, metavar="reuse|1-9",
              help="archive repositories: copy each file's deflate stream out of the git pack (reuse), "
                   "or recompress every file at this zlib level.")
@pass_ctx
def export_ostree(c: Ctx, rev, ostree_repo, ref, mode, no_bindings, history, strict, update_summary, gpg_keys,
                  gpg_homedir, collection_id, ref_bindings, compression):
    """Export REV into a native OSTree repository; prints the OSTree commit checksum last."""
    from .ostree_bridge import export_ostree as run
    from .progress import make_progress
    from .signing import GpgSigner
    signers = [GpgSigner(k, gpg_homedir) for k in gpg_keys]
    progress = make_progress("export", c.quiet)
    if compression != "reuse":
        if not compression.isdigit() or not 1 <= int(compression) <= 9:
            raise click.BadParameter("'reuse' or a zlib level 1-9", param_hint="--compression")
        compression = int(compression)
    res = run(c.repo(), rev, ostree_repo, ref, mode, not no_bindings, history, strict, update_summary,
              progress=progress, signers=signers, collection_id=collection_id, ref_bindings=tuple(ref_bindings),
              compression=compression)
    if progress:
        progress.done()
    click.echo(f"exported {len(res.commits)} commit(s): {res.files_written} files written, "
               f"{res.files_cached} files and {res.dirs_cached} directories already present", err=True)
    click.echo(res.checksum)


@cli.command("import-ostree")
@click.argument("ostree_repo")
@click.argument("ref")
@click.option("-b", "--branch", required=True, help="gitree branch to create or extend.")
@pass_ctx
def import_ostree(c: Ctx, ostree_repo, ref, branch):
    """Import REF (a ref or commit checksum) of OSTREE_REPO with its parent chain; prints the last commit id."""
    from .ostree_bridge import import_ostree as run
    made = run(c.repo(), ostree_repo, ref, branch)
    click.echo(f"imported {len(made)} commit(s)", err=True)
    click.echo(made[-1].hex())


@cli.command("make-bootable")
@click.argument("rev")
@click.option("-b", "--branch", required=True, help="Branch for the bootable commit (its tip becomes the parent).")
@click.option("--version", "version", help="OSTree `version` metadata (default: VERSION_ID.N, N counting up).")
@click.option("--kernel", metavar="KVER", help="The kernel to boot when the tree has several.")
@click.option("-m", "--message", help="Commit message.")
@click.option("--timestamp", type=int, help="Commit time, UNIX seconds (default: the source commit's).")
@click.option("--no-initramfs-check", is_flag=True, help="Do not require ostree-prepare-root in the initramfs.")
@click.option("--metadata", "metadata", multiple=True, metavar="KEY=VALUE",
              help="More OSTree string metadata (as ostree commit --add-metadata-string); repeatable.")
@pass_ctx
def make_bootable(c: Ctx, rev, branch, version, kernel, message, timestamp, no_initramfs_check, metadata):
    """Rewrite REV into an OSTree-bootable tree on BRANCH; prints the new commit id last."""
    from .bootable import make_bootable as run
    pairs = []
    for m in metadata:
        key, sep, value = m.partition("=")
        if not sep:
            raise click.BadParameter(f"{m!r} is not KEY=VALUE", param_hint="--metadata")
        pairs.append((key, value))
    res = run(c.repo(), rev, branch, version, kernel, message, timestamp, not no_initramfs_check,
              metadata=tuple(pairs))
    for line in res.changes:
        click.echo(f"  {line}", err=True)
    click.echo(res.commit.hex())


@cli.command()
@click.argument("rev")
@click.option("--sysroot", required=True, metavar="PATH", help="The sysroot (created and initialised if needed).")
@click.option("--os", "osname", required=True, metavar="NAME", help="The OSTree stateroot (os-init'd if needed).")
@click.option("--ref", help="OSTree ref in the sysroot's repository (default: the gitree branch name).")
@click.option("--karg", multiple=True, help="Kernel argument for the new deployment (repeatable).")
@click.option("--bootloader", type=click.Choice(["uboot"]),
              help="Configure ostree's uboot backend (boot/loader/uEnv.txt) and install boot/boot.scr.")
@pass_ctx
def deploy(c: Ctx, rev, sysroot, osname, ref, karg, bootloader):
    """Export bootable REV into PATH/ostree/repo and `ostree admin deploy` it; prints the OSTree commit last."""
    from .deploy import deploy as run
    res = run(c.repo(), rev, sysroot, osname, ref, tuple(karg), bootloader=bootloader)
    click.echo(f"deployed {res.ref} in {res.deployment} (export {res.export_seconds:.1f} s, "
               f"ostree admin deploy {res.deploy_seconds:.1f} s)", err=True)
    if res.entry is not None:
        click.echo(f"boot entry {res.entry.path}: options {res.entry.options}", err=True)
    if bootloader == "uboot":
        click.echo(f"U-Boot: {os.path.join(sysroot, 'boot', 'loader', 'uEnv.txt')}, "
                   f"{os.path.join(sysroot, 'boot', 'boot.scr')}", err=True)
    click.echo(res.checksum)


@cli.command()
@click.argument("remote")
@click.argument("branches", nargs=-1)
@click.option("-f", "--force", is_flag=True, help="Allow non-fast-forward updates on the server.")
@pass_ctx
def push(c: Ctx, remote, branches, force):
    """Push BRANCHES (default: all) to REMOTE, a git remote name or URL, atomically."""
    from .distribution import push as run
    run(c.repo(), remote, list(branches), force)
    click.echo(f"pushed to {remote}", err=True)


@cli.command()
@click.argument("remote")
@click.argument("branches", nargs=-1)
@click.option("--depth", type=int, help="Fetch only the newest N commits of each branch (shallow).")
@pass_ctx
def fetch(c: Ctx, remote, branches, depth):
    """Fetch BRANCHES (default: all) from REMOTE into the same branches, fast-forward only."""
    from .distribution import fetch as run
    run(c.repo(), remote, list(branches), depth)
    click.echo(f"fetched from {remote}", err=True)


@cli.command()
@click.argument("url")
@click.argument("path")
@click.option("--depth", type=int, help="Only the newest N commits (shallow clone).")
@click.option("-b", "--branch", help="Make this branch HEAD (default: the server's HEAD).")
def clone(url, path, depth, branch):
    """Clone the gitree repository at URL into PATH (bare, gitree config)."""
    from .distribution import clone as run
    run(url, path, depth, branch)
    click.echo(f"cloned {url} into {os.path.abspath(path)}", err=True)


@cli.group()
def bundle():
    """Offline update files (a git bundle inside; docs/bundle.md)."""


@bundle.command("create")
@click.argument("spec", metavar="[OLD..]NEW")
@click.argument("file")
@click.option("-b", "--branch", help="Branch the bundle updates (default: NEW, which must then be a branch).")
@pass_ctx
def bundle_create(c: Ctx, spec, file, branch):
    """Write the update from OLD to NEW (or all of NEW) to FILE."""
    from .bundle import create
    info = create(c.repo(), spec, file, branch)
    click.echo(f"bundle: {info.objects} objects, {human_bytes(info.git_bundle_size)} as a git bundle, "
               f"{human_bytes(info.size)} compressed against {human_bytes(info.reference_bytes)} of "
               "old objects", err=True)
    click.echo(f"{info.size} {file}")


@bundle.command("apply")
@click.argument("file")
@click.option("-b", "--branch", help="Branch to move (default: the one the bundle names).")
@pass_ctx
def bundle_apply(c: Ctx, file, branch):
    """Add FILE's objects, verify the new tree, then move its branch (fast-forward only)."""
    from .bundle import apply
    name, old, new = apply(c.repo(), file, branch)
    click.echo(f"{name}: {old.hex()[:12] if old else '(new)'} -> {new.hex()[:12]}", err=True)
    click.echo(new.hex())


@bundle.command("unwrap")
@click.argument("file")
@click.argument("out")
@pass_ctx
def bundle_unwrap(c: Ctx, file, out):
    """Write the plain git bundle inside FILE to OUT (an update needs its base commit in -C REPO)."""
    from .bundle import unwrap
    try:
        repo = c.repo()
    except GitreeError:
        repo = None
    unwrap(repo, file, out)


@cli.command()
@click.option("--window", type=int, default=50, show_default=True, help="git repack --window")
@click.option("--depth", type=int, default=50, show_default=True, help="git repack --depth")
@click.option("--compression", type=click.IntRange(0, 9), default=9, show_default=True, help="zlib level")
@pass_ctx
def gc(c: Ctx, window, depth, compression):
    """Repack the repository into one delta-compressed pack (every object recompressed)."""
    repo = c.repo()
    porcelain.gc(repo, window, depth, compression)
    click.echo("gc: done", err=True)


@cli.command()
@click.argument("revs", nargs=-1)
@pass_ctx
def fsck(c: Ctx, revs):
    """Read commits as every command does and list every fault (default: every commit of every branch)."""
    problems = porcelain.fsck(c.repo(), list(revs))
    for rev, path, msg in problems:
        click.echo(f"{rev}: {'/' + path.decode('utf-8', 'backslashreplace')}: {msg}")
    if problems:
        raise GitreeError(f"fsck found {len(problems)} problem(s)")
    click.echo("fsck: ok", err=True)


# --- issue 12: LXC containers running OSTree deployments (gitree/lxc.py) ---------------------------------

@cli.command("lxc-create")
@click.argument("name")
@click.argument("rev")
@click.option("--lxcpath", default="/var/lib/lxc", show_default=True, help="LXC's container directory (lxc-* -P).")
@click.option("--os", "osname", default="debian", show_default=True, help="The OSTree stateroot in the container.")
@click.option("--karg", multiple=True, help="Kernel argument the hooks present in /proc/cmdline (repeatable).")
@click.option("--ref", help="OSTree ref in the container's sysroot (default: the gitree branch name).")
@pass_ctx
def lxc_create(c: Ctx, name, rev, lxcpath, osname, karg, ref):
    """Deploy bootable REV into a new LXC container NAME (its own sysroot, hooks doing the initramfs' work)."""
    from . import lxc
    cont, res = lxc.create(c.repo(), name, rev, lxcpath, osname, tuple(karg), ref)
    click.echo(f"container {name}: {cont.config}; deployment {res.deployment} "
               f"(export {res.export_seconds:.1f} s, ostree admin deploy {res.deploy_seconds:.1f} s); "
               f"start with: lxc-start -n {name} -P {lxcpath}", err=True)
    click.echo(res.checksum)


@cli.command("lxc-upgrade")
@click.argument("name")
@click.argument("rev")
@click.option("--lxcpath", default="/var/lib/lxc", show_default=True, help="LXC's container directory (lxc-* -P).")
@click.option("--karg", multiple=True,
              help="Kernel argument for the new deployment, replacing one of the same name (default: keep all).")
@click.option("--ref", help="OSTree ref in the container's sysroot (default: the gitree branch name).")
@pass_ctx
def lxc_upgrade(c: Ctx, name, rev, lxcpath, karg, ref):
    """Deploy REV into container NAME's sysroot; its next start runs it (the previous one stays for rollback)."""
    from . import lxc
    res = lxc.upgrade(c.repo(), name, rev, lxcpath, ref, tuple(karg))
    click.echo(f"container {name}: deployed {res.deployment}; restart it to run it", err=True)
    click.echo(res.checksum)


@cli.command("lxc-destroy")
@click.argument("name")
@click.option("--lxcpath", default="/var/lib/lxc", show_default=True, help="LXC's container directory (lxc-* -P).")
def lxc_destroy(name, lxcpath):
    """Stop and remove container NAME, its sysroot and its immutable deployment roots included."""
    from . import lxc
    from .store import stderr_warn
    note = lxc.destroy(name, lxcpath)
    if note:
        stderr_warn(note)
    click.echo(f"container {name} destroyed", err=True)


def main(argv=None) -> int:
    """Run the CLI in a thread (so Ctrl-C can clean up), with the default stack: the git reader, the
    writers and diff walk trees iteratively, whatever their depth. The recursion limit only leaves
    room for a generator per level of a tree at the depth limit."""
    from .entry import MAX_DEPTH
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 2 * MAX_DEPTH + 1000))
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(_main(argv)), name="gitree", daemon=True)
    t.start()
    try:
        t.join()
    except KeyboardInterrupt:
        from .packwriter import remove_live_temporaries
        remove_live_temporaries()
        click.echo("gitree: interrupted", err=True)
        sys.stderr.flush()
        os._exit(130)
    return result[0] if result else 70


_LINE_BREAKING = re.compile("[\x00-\x1f\x7f\x85\u2028\u2029]")


def one_line(msg: str) -> str:
    """An error message as one line: names from a tree may hold newlines and other control characters."""
    return _LINE_BREAKING.sub(lambda m: f"\\x{ord(m.group()):02x}", msg)


def _main(argv=None) -> int:
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        cli.main(args=argv, prog_name="gitree", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("gitree: interrupted", err=True)
        return 130
    except click.ClickException as e:
        click.echo(f"gitree: error: {one_line(e.format_message())}", err=True)
        return e.exit_code
    except GitreeError as e:
        if debug:
            traceback.print_exc()
        click.echo(f"gitree: error: {one_line(str(e))}", err=True)
        return e.exit_code
    except KeyboardInterrupt:
        click.echo("gitree: interrupted", err=True)
        return 130
    except BrokenPipeError:
        return 141
    except OSError as e:
        if debug:
            traceback.print_exc()
        where = f" {e.filename!r}" if e.filename else ""
        click.echo(f"gitree: error: {one_line(f'{e.strerror or e}{where}')}", err=True)
        return 1
    except Exception as e:  # an internal fault: still one line unless --debug
        if debug:
            traceback.print_exc()
        click.echo(f"gitree: internal error: {type(e).__name__}: {one_line(str(e))} (rerun with --debug)", err=True)
        return 70
    return 0


if __name__ == "__main__":
    sys.exit(main())
