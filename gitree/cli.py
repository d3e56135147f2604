"""The `gitree` command line: parses arguments, calls gitree.api, prints results, warnings and errors.

Nothing here does the work: every command is one call into gitree.api (docs/api.md), whose result this module
prints as text (stdout: the result, e.g. a commit id, last; stderr: a summary) or, with --json, as one JSON
document on stdout. Warnings arrive through the API's one channel (on_warning) and print as
`gitree: warning: ...`; with --strict any warning makes the exit code WARNINGS_EXIT. Errors print as one line
and exit with their class's code (gitree --help lists them).
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import json
import os
import re
import signal
import sys
import threading
import traceback

import click

from . import api
from .errors import (INTERNAL_EXIT, INTERRUPTED_EXIT, WARNINGS_EXIT, FsckFailed, GitreeError, GitreeWarning,
                     exit_codes_table)
from .progress import human_bytes, make_progress


class Ctx:
    def __init__(self, repo_path: str, debug: bool, quiet: bool, json_out: bool = False, strict: bool = False):
        self.repo_path = repo_path
        self.debug = debug
        self.quiet = quiet
        self.json = json_out
        self.strict = strict
        self.warnings: list[GitreeWarning] = []

    def repo(self) -> api.Repo:
        return api.open_repo(self.repo_path)

    def on_warning(self, w: GitreeWarning) -> None:
        self.warnings.append(w)
        if not self.json:
            click.echo(f"gitree: warning: {one_line(w.message)}", err=True)

    def progress(self, label: str):
        return make_progress(label, self.quiet or self.json)

    def call(self, label: str, fn, *args, **kw):
        """fn(*args, **kw, progress=..., on_warning=...) under this command's progress display, ended after."""
        progress = self.progress(label)
        res = fn(*args, **kw, progress=progress, on_warning=self.on_warning)
        progress.done()
        return res

    def emit(self, command: str, result, text=None) -> None:
        """Print `result`: as JSON with --json, else by calling `text()`."""
        if self.json:
            body = to_json(result)
            body.pop("warnings", None)  # listed once, below
            doc = {"command": command, "result": body,
                   "warnings": [to_json(w) for w in self.warnings]}
            click.echo(json.dumps(doc, indent=None, sort_keys=False))
        elif text is not None:
            text()


_state: dict[str, Ctx] = {}


def _hexish(name: str) -> bool:
    return name == "oid" or name.endswith("_oid")


def to_json(obj, name: str = ""):
    """A result as JSON values: bytes paths as UTF-8 (undecodable bytes as \\xNN), object ids as hex,
    xattr values as base64, enums by lower-case name."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_json(getattr(obj, f.name), f.name) for f in dataclasses.fields(obj)
                if f.name != "extra" and not f.name.startswith("_")}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return {k: to_json(v, k) for k, v in zip(obj._fields, obj, strict=True)}
    if name == "xattrs" and isinstance(obj, (tuple, list)):
        return [[n.decode("utf-8", "backslashreplace"), base64.b64encode(v).decode()] for n, v in obj]
    if isinstance(obj, enum.Enum):
        return obj.name.lower()
    if isinstance(obj, (bytes, bytearray)):
        return bytes(obj).hex() if _hexish(name) else bytes(obj).decode("utf-8", "backslashreplace")
    if isinstance(obj, dict):
        return {(k.decode("utf-8", "backslashreplace") if isinstance(k, bytes) else str(k)): to_json(v, name)
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_json(v, name) for v in obj]
    return obj


pass_ctx = click.make_pass_decorator(Ctx)


def _exit_codes_help() -> str:
    rows = "\n".join(f"  {code:>3}  {name + ': ' if name else ''}{meaning}"
                     for code, name, meaning in exit_codes_table())
    return "\b\nExit codes (docs/api.md):\n" + rows


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=_exit_codes_help())
@click.option("-C", "--repo", "repo_path", envvar="GITREE_REPO", default=".", show_default="$GITREE_REPO or .",
              help="The gitree repository (a bare git repository).")
@click.option("--debug", is_flag=True, help="Show a traceback on errors.")
@click.option("-q", "--quiet", is_flag=True, help="No progress display.")
@click.option("--json", "json_out", is_flag=True,
              help="Print the result and the warnings as one JSON document on stdout (errors too).")
@click.option("--strict", is_flag=True, help=f"Any warning makes the command fail (exit code {WARNINGS_EXIT}).")
@click.pass_context
def cli(ctx, repo_path, debug, quiet, json_out, strict):
    """gitree: operating-system root filesystems in git, with OSTree compatibility."""
    ctx.obj = _state["ctx"] = Ctx(repo_path, debug, quiet, json_out, strict)


@cli.command()
@pass_ctx
def init(c: Ctx):
    """Create a new repository at -C PATH."""
    res = api.init(c.repo_path, on_warning=c.on_warning)
    c.emit("init", res, lambda: click.echo(f"initialized gitree repository in {res.path}"))


@cli.command("import-rootfs")
@click.argument("source")
@click.option("-b", "--branch", required=True, help="Branch to commit on (its tip becomes the parent).")
@click.option("-m", "--message", help="Commit message.")
@click.option("--timestamp", type=int, help="Commit time, UNIX seconds (default: now).")
@click.option("--keep-mtime", is_flag=True, help="Store modification times (not kept by default).")
@click.option("--cross-filesystems", is_flag=True, help="Descend into other mounted filesystems.")
@click.option("--strict", is_flag=True, help="Fail if anything read cannot be kept (otherwise a warning).")
@click.option("--skip-unreadable", is_flag=True,
              help="Leave out, with a warning, items of a directory that cannot be read (otherwise the import fails).")
@pass_ctx
def import_rootfs(c: Ctx, source, branch, message, timestamp, keep_mtime, cross_filesystems, strict, skip_unreadable):
    """Import SOURCE (a directory, a tar file of any compression, or - for a tar on stdin)."""
    res = c.call("import", api.import_rootfs, c.repo(), source, branch=branch, message=message,
                 timestamp=timestamp, keep_mtime=keep_mtime, one_file_system=not cross_filesystems,
                 strict=strict or c.strict, skip_unreadable=skip_unreadable)

    def text():
        s = res.stats
        click.echo(f"imported {s.entries} entries, {s.files} files, {human_bytes(s.bytes)} in {s.seconds:.1f} s; "
                   f"{s.new_objects} new objects ({human_bytes(s.pack_bytes)})", err=True)
        click.echo(res.commit)
    c.emit("import-rootfs", res, text)


@cli.command()
@click.argument("rev")
@click.argument("dest", required=False)
@click.option("--tar", "tar_out", metavar="FILE", help="Write a POSIX pax tar to FILE (- for stdout).")
@click.option("--sparse", is_flag=True, help="With --tar: write sparse files as GNU sparse 1.0 members.")
@pass_ctx
def checkout(c: Ctx, rev, dest, tar_out, sparse):
    """Write REV's tree to DEST (a new or empty directory), or as a tar with --tar."""
    if (dest is None) == (tar_out is None):
        raise click.UsageError("give either DEST or --tar FILE")
    if tar_out == "-" and c.json:
        raise click.UsageError("--json cannot be used with --tar - (the tar is stdout)")
    if tar_out is not None:
        res = c.call("checkout", api.checkout_tar, c.repo(), rev, tar_out, sparse=sparse)
    else:
        res = c.call("checkout", api.checkout, c.repo(), rev, dest)
    if tar_out is not None:
        c.emit("checkout", res, lambda: click.echo(f"wrote {res.files} files, {human_bytes(res.bytes)}", err=True))
    else:
        c.emit("checkout", res)


@cli.command()
@click.argument("rev")
@click.argument("path", required=False, default="")
@click.option("-l", "long_", is_flag=True, help="Long listing: mode, owner, size, link target, xattrs.")
@click.option("-R", "recursive", is_flag=True, help="Recurse into directories.")
@pass_ctx
def ls(c: Ctx, rev, path, long_, recursive):
    """List PATH (default: the root) in REV."""
    if c.json:
        c.emit("ls", api.ls(c.repo(), rev, path, recursive=recursive, on_warning=c.on_warning))
        return
    for item in api.ls_iter(c.repo(), rev, path, recursive=recursive):  # streams: a large listing starts at once
        click.echo(item.line(long_))


@cli.command()
@click.argument("rev", default="HEAD")
@click.option("-n", "limit", type=int, help="Show at most N commits.")
@pass_ctx
def log(c: Ctx, rev, limit):
    """Show the history of REV (default HEAD)."""
    res = api.log(c.repo(), rev, limit=limit, on_warning=c.on_warning)
    c.emit("log", res, lambda: [click.echo(line) for line in res.lines()])


@cli.command()
@click.argument("rev")
@pass_ctx
def show(c: Ctx, rev):
    """Show a commit and a summary of its tree."""
    res = api.show(c.repo(), rev, on_warning=c.on_warning)
    c.emit("show", res, lambda: [click.echo(line) for line in res.lines()])


@cli.command()
@click.argument("rev1")
@click.argument("rev2")
@pass_ctx
def diff(c: Ctx, rev1, rev2):
    """Per-path changes from REV1 to REV2, content and metadata."""
    if c.json:
        c.emit("diff", api.diff(c.repo(), rev1, rev2, on_warning=c.on_warning))
        return
    for change in api.diff_iter(c.repo(), rev1, rev2):  # streams
        click.echo(change.line())


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
    if compression != "reuse":
        if not compression.isdigit() or not 1 <= int(compression) <= 9:
            raise click.BadParameter("'reuse' or a zlib level 1-9", param_hint="--compression")
        compression = int(compression)
    res = c.call("export", api.export_ostree, c.repo(), rev, ostree_repo, ref=ref, mode=mode,
                 bindings=not no_bindings, history=history, strict=strict or c.strict,
                 update_summary=update_summary, gpg_keys=gpg_keys, gpg_homedir=gpg_homedir,
                 collection_id=collection_id, ref_bindings=ref_bindings, compression=compression)

    def text():
        click.echo(f"exported {len(res.commits)} commit(s): {res.files_written} files written, "
                   f"{res.files_cached} files and {res.dirs_cached} directories already present", err=True)
        click.echo(res.checksum)
    c.emit("export-ostree", res, text)


@cli.command("import-ostree")
@click.argument("ostree_repo")
@click.argument("ref")
@click.option("-b", "--branch", required=True, help="gitree branch to create or extend.")
@pass_ctx
def import_ostree(c: Ctx, ostree_repo, ref, branch):
    """Import REF (a ref or commit checksum) of OSTREE_REPO with its parent chain; prints the last commit id."""
    res = c.call("import-ostree", api.import_ostree, c.repo(), ostree_repo, ref, branch=branch)

    def text():
        click.echo(f"imported {len(res.commits)} commit(s)", err=True)
        click.echo(res.commit)
    c.emit("import-ostree", res, text)


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
    pairs = []
    for m in metadata:
        key, sep, value = m.partition("=")
        if not sep:
            raise click.BadParameter(f"{m!r} is not KEY=VALUE", param_hint="--metadata")
        pairs.append((key, value))
    res = c.call("make-bootable", api.make_bootable, c.repo(), rev, branch=branch, version=version, kernel=kernel,
                 message=message, timestamp=timestamp, initramfs_check=not no_initramfs_check, metadata=pairs)

    def text():
        for line in res.changes:
            click.echo(f"  {line}", err=True)
        click.echo(res.commit)
    c.emit("make-bootable", res, text)


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
    res = c.call("deploy", api.deploy, c.repo(), rev, sysroot=sysroot, osname=osname, ref=ref, kargs=karg,
                 bootloader=bootloader)

    def text():
        click.echo(f"deployed {res.ref} in {res.deployment} (export {res.export_seconds:.1f} s, "
                   f"ostree admin deploy {res.deploy_seconds:.1f} s)", err=True)
        if res.boot_entry is not None:
            click.echo(f"boot entry {res.boot_entry}: options {res.options}", err=True)
        if res.uboot_files:
            click.echo(f"U-Boot: {', '.join(res.uboot_files)}", err=True)
        click.echo(res.checksum)
    c.emit("deploy", res, text)


@cli.command()
@click.argument("remote")
@click.argument("branches", nargs=-1)
@click.option("-f", "--force", is_flag=True, help="Allow non-fast-forward updates on the server.")
@pass_ctx
def push(c: Ctx, remote, branches, force):
    """Push BRANCHES (default: all) to REMOTE, a git remote name or URL, atomically."""
    res = api.push(c.repo(), remote, branches, force=force, on_warning=c.on_warning)
    c.emit("push", res, lambda: click.echo(f"pushed to {remote}", err=True))


@cli.command()
@click.argument("remote")
@click.argument("branches", nargs=-1)
@click.option("--depth", type=int, help="Fetch only the newest N commits of each branch (shallow).")
@pass_ctx
def fetch(c: Ctx, remote, branches, depth):
    """Fetch BRANCHES (default: all) from REMOTE into the same branches, fast-forward only."""
    res = api.fetch(c.repo(), remote, branches, depth=depth, on_warning=c.on_warning)
    c.emit("fetch", res, lambda: click.echo(f"fetched from {remote}", err=True))


@cli.command()
@click.argument("url")
@click.argument("path")
@click.option("--depth", type=int, help="Only the newest N commits (shallow clone).")
@click.option("-b", "--branch", help="Make this branch HEAD (default: the server's HEAD).")
@pass_ctx
def clone(c: Ctx, url, path, depth, branch):
    """Clone the gitree repository at URL into PATH (bare, gitree config)."""
    res = api.clone(url, path, depth=depth, branch=branch, on_warning=c.on_warning)
    c.emit("clone", res, lambda: click.echo(f"cloned {url} into {res.path}", err=True))


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
    info = api.bundle_create(c.repo(), spec, file, branch=branch, on_warning=c.on_warning)

    def text():
        click.echo(f"bundle: {info.objects} objects, {human_bytes(info.git_bundle_size)} as a git bundle, "
                   f"{human_bytes(info.size)} compressed against {human_bytes(info.reference_bytes)} of "
                   "old objects", err=True)
        click.echo(f"{info.size} {file}")
    c.emit("bundle create", info, text)


@bundle.command("apply")
@click.argument("file")
@click.option("-b", "--branch", help="Branch to move (default: the one the bundle names).")
@pass_ctx
def bundle_apply(c: Ctx, file, branch):
    """Add FILE's objects, verify the new tree, then move its branch (fast-forward only)."""
    res = c.call("bundle apply", api.bundle_apply, c.repo(), file, branch=branch, strict=c.strict)

    def text():
        click.echo(f"{res.branch}: {res.old[:12] if res.old else '(new)'} -> {res.new[:12]}", err=True)
        click.echo(res.new)
    c.emit("bundle apply", res, text)


@bundle.command("unwrap")
@click.argument("file")
@click.argument("out")
@pass_ctx
def bundle_unwrap(c: Ctx, file, out):
    """Write the plain git bundle inside FILE to OUT (an update needs its base commit in -C REPO)."""
    try:
        repo = c.repo()
    except GitreeError:
        repo = None
    c.emit("bundle unwrap", api.bundle_unwrap(repo, file, out, on_warning=c.on_warning))


@cli.command()
@click.option("--window", type=int, default=50, show_default=True, help="git repack --window")
@click.option("--depth", type=int, default=50, show_default=True, help="git repack --depth")
@click.option("--compression", type=click.IntRange(0, 9), default=9, show_default=True, help="zlib level")
@pass_ctx
def gc(c: Ctx, window, depth, compression):
    """Repack the repository into one delta-compressed pack (every object recompressed); waits for running
    imports and bundle applies first."""
    res = c.call("gc", api.gc, c.repo(), window=window, depth=depth, compression=compression)
    c.emit("gc", res, lambda: click.echo("gc: done", err=True))


@cli.command()
@click.argument("revs", nargs=-1)
@pass_ctx
def fsck(c: Ctx, revs):
    """Read commits as every command does and list every fault (default: every commit of every branch)."""
    res = api.fsck(c.repo(), revs, on_warning=c.on_warning)
    c.emit("fsck", res, lambda: [click.echo(p.line()) for p in res.problems])
    if res.problems:
        raise FsckFailed(f"fsck found {len(res.problems)} problem(s)")
    if not c.json:
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
    res = c.call("lxc-create", api.lxc_create, c.repo(), name, rev, lxcpath=lxcpath, osname=osname, kargs=karg, ref=ref)

    def text():
        d = res.deploy
        click.echo(f"container {name}: {res.config}; deployment {d.deployment} "
                   f"(export {d.export_seconds:.1f} s, ostree admin deploy {d.deploy_seconds:.1f} s); "
                   f"start with: lxc-start -n {name} -P {lxcpath}", err=True)
        click.echo(d.checksum)
    c.emit("lxc-create", res, text)


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
    res = c.call("lxc-upgrade", api.lxc_upgrade, c.repo(), name, rev, lxcpath=lxcpath, kargs=karg, ref=ref)

    def text():
        click.echo(f"container {name}: deployed {res.deploy.deployment}; restart it to run it", err=True)
        click.echo(res.deploy.checksum)
    c.emit("lxc-upgrade", res, text)


@cli.command("lxc-destroy")
@click.argument("name")
@click.option("--lxcpath", default="/var/lib/lxc", show_default=True, help="LXC's container directory (lxc-* -P).")
@pass_ctx
def lxc_destroy(c: Ctx, name, lxcpath):
    """Stop and remove container NAME, its sysroot and its immutable deployment roots included."""
    res = api.lxc_destroy(name, lxcpath=lxcpath, on_warning=c.on_warning)
    c.emit("lxc-destroy", res, lambda: click.echo(f"container {name} destroyed", err=True))


def main(argv=None) -> int:
    """Run the CLI in a thread (so Ctrl-C can clean up), with the default stack: the git reader, the
    writers and diff walk trees iteratively, whatever their depth. The recursion limit only leaves
    room for a generator per level of a tree at the depth limit."""
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 2 * api.MAX_DEPTH + 1000))
    api.cap_malloc_arenas()   # before any thread starts: one malloc arena, not 64 MiB of address space per thread
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(_main(argv)), name="gitree", daemon=True)
    # SIGTERM (systemd, timeout, a CI runner) ends the command as Ctrl-C does: temporaries removed, no ref moved
    signal.signal(signal.SIGTERM, _terminated)
    t.start()
    try:
        t.join()
    except (KeyboardInterrupt, _Terminated) as e:
        api.remove_live_temporaries()
        click.echo("gitree: terminated" if isinstance(e, _Terminated) else "gitree: interrupted", err=True)
        sys.stderr.flush()
        os._exit(INTERRUPTED_EXIT)
    return result[0] if result else INTERNAL_EXIT


class _Terminated(BaseException):
    """Raised in the main thread by SIGTERM (a BaseException: no `except Exception` takes it for a failure)."""


def _terminated(signum, frame) -> None:
    raise _Terminated()


_LINE_BREAKING = re.compile("[\x00-\x1f\x7f\x85\u2028\u2029]")


def one_line(msg: str) -> str:
    """An error message as one line: names from a tree may hold newlines and other control characters."""
    return _LINE_BREAKING.sub(lambda m: f"\\x{ord(m.group()):02x}", msg)


def _json_error(exc_type: str, message: str, code: int) -> None:
    c = _state.get("ctx")
    if c is not None and c.json:
        doc = {"error": {"type": exc_type, "message": message, "exit_code": code},
               "warnings": [to_json(w) for w in c.warnings]}
        click.echo(json.dumps(doc))


def _fail(exc_type: str, message: str, code: int, prefix: str = "error") -> int:
    click.echo(f"gitree: {prefix}: {one_line(message)}", err=True)
    _json_error(exc_type, message, code)
    return code


def _thread_failed(debug: bool):
    """threading.excepthook: an exception that ends a background thread (a worker pool's queue feeder
    out of memory, say) would leave the command waiting forever on work that never comes. The command
    fails instead, in one line, its temporary files removed; nothing has moved (refs move last)."""
    def hook(args) -> None:
        if args.exc_type is SystemExit:
            return
        if debug:
            traceback.print_exception(args.exc_type, args.exc_value, args.exc_traceback)
        if issubclass(args.exc_type, MemoryError):
            _fail("MemoryError", "out of memory in a background thread (the machine's, or the process's "
                  "address-space limit); docs/security.md lists what each command holds", 1)
        else:
            _fail("InternalError", f"{args.exc_type.__name__} in a background thread: {args.exc_value} "
                  "(rerun with --debug)", INTERNAL_EXIT, prefix="internal error")
        sys.stderr.flush()
        api.remove_live_temporaries()
        os._exit(1 if issubclass(args.exc_type, MemoryError) else INTERNAL_EXIT)
    return hook


def _main(argv=None) -> int:
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    _state.clear()
    threading.excepthook = _thread_failed(debug)
    try:
        cli.main(args=argv, prog_name="gitree", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("gitree: interrupted", err=True)
        return INTERRUPTED_EXIT
    except click.ClickException as e:
        return _fail("UsageError", e.format_message(), e.exit_code)
    except GitreeError as e:
        if debug:
            traceback.print_exc()
        return _fail(type(e).__name__, str(e), e.exit_code)
    except KeyboardInterrupt:
        click.echo("gitree: interrupted", err=True)
        return INTERRUPTED_EXIT
    except BrokenPipeError:
        return 141
    except OSError as e:
        if debug:
            traceback.print_exc()
        where = f" {e.filename!r}" if e.filename else ""
        return _fail("OSError", f"{e.strerror or e}{where}", 1)
    except MemoryError:
        if debug:
            traceback.print_exc()
        return _fail("MemoryError", "out of memory (the machine's, or the process's address-space limit); "
                     "docs/security.md lists what each command holds", 1)
    except Exception as e:  # an internal fault: still one line unless --debug
        if debug:
            traceback.print_exc()
        if "Cannot allocate memory" in str(e):   # libgit2 (through pygit2) failing to map or allocate
            return _fail("MemoryError", f"out of memory ({one_line(str(e))}); docs/security.md lists what "
                         "each command holds", 1)
        return _fail("InternalError", f"{type(e).__name__}: {e} (rerun with --debug)", INTERNAL_EXIT,
                     prefix="internal error")
    c = _state.get("ctx")
    if c is not None and c.strict and c.warnings:
        click.echo(f"gitree: error: --strict: {len(c.warnings)} warning(s)", err=True)
        return WARNINGS_EXIT
    return 0


if __name__ == "__main__":
    sys.exit(main())
