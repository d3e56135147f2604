"""One benchmark run: every store over the same series, in one process, with results as one JSON document.

Per version, timed operations run back to back with their OSTree counterpart (the anchor), so a ratio compares
two figures taken on the same machine state. Everything written goes to a work directory on a tmpfs (mounted by
the run when it can), so the slow main disk does not decide the figures; the corpus tars are read from their
cache and pre-read into the page cache before each version.

A metric that cannot be produced is recorded as {"unavailable": reason}; one left out by --only as
{"skipped": ...}. Nothing here asserts a target: targets are computed and reported as met or missed.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from typing import Any, Callable

from . import stores
from .corpus import FULL_SERIES, QUICK_SERIES, Corpus, CorpusTar, Mirrors, SOURCE_DATE_EPOCH
from .measure import CommandFailed, Timing, filesystem_of, machine, tool_versions

REPACK_WINDOW = 50   # as `gitree gc`
REPACK_DEPTH = 50
ZSTD_LEVEL = 10      # tar.zst and --patch-from; -19 is ~10x slower on these tars for ~25% smaller output
CHECKOUT_ROUNDS = 3   # each checkout keeps the fastest of this many alternating rounds
GROUPS = ("gitree", "git", "ostree", "export", "checkout", "deltas", "zstd", "bundle")
NEEDS = {"export": {"gitree", "ostree"}, "checkout": {"gitree", "ostree"}, "deltas": {"ostree"},
         "bundle": {"gitree", "ostree"}}

# Every metric a run produces, per version ("sizes", "times", "ratios") or per step ("updates").
SIZE_STORES = ("tar", "tar_zst", "gitree_loose", "gitree_packed", "git_plain_loose", "git_plain_packed",
               "ostree_archive", "ostree_bare_user", "gitree_ostree_archive", "gitree_ostree_bare_user",
               "ostree_archive_cold", "gitree_ostree_archive_cold_reuse", "gitree_ostree_archive_cold_level6")
TIME_OPS = ("gitree_import", "ostree_commit_archive", "git_add_commit", "ostree_commit_archive_cold",
            "gitree_export_archive_cold", "gitree_export_archive_incremental", "ostree_commit_bare_user",
            "gitree_export_bare_user_incremental", "ostree_checkout", "gitree_checkout_dir",
            "gitree_checkout_tar", "gitree_repack", "zstd_tar", "zstd_patch_from",
            "ostree_commit_bare_user_cold", "gitree_export_bare_user_cold", "gitree_export_archive_cold_level6")
RATIOS = {
    "import_vs_ostree_commit": ("gitree_import", "ostree_commit_archive"),
    "import_vs_git_add_commit": ("gitree_import", "git_add_commit"),
    "export_cold_vs_ostree_commit": ("gitree_export_archive_cold", "ostree_commit_archive_cold"),
    "export_incremental_vs_cold": ("gitree_export_archive_incremental", "gitree_export_archive_cold"),
    "export_bare_user_vs_ostree_commit": ("gitree_export_bare_user_incremental", "ostree_commit_bare_user"),
    "export_bare_user_cold_vs_ostree_commit": ("gitree_export_bare_user_cold", "ostree_commit_bare_user_cold"),
    "export_cold_level6_vs_ostree_commit": ("gitree_export_archive_cold_level6", "ostree_commit_archive_cold"),
    "checkout_dir_vs_ostree_checkout": ("gitree_checkout_dir", "ostree_checkout"),
    "checkout_tar_vs_ostree_checkout": ("gitree_checkout_tar", "ostree_checkout"),
}
UPDATE_KINDS = ("git_thin_pack", "gitree_bundle", "ostree_new_objects", "ostree_static_delta", "zstd_patch_from",
                "tar_zst")
FULL_KINDS = ("git_full_pack", "ostree_static_delta_empty", "tar_zst")
SERIES_KEYS = ("gitree_packed_final", "git_plain_packed_final", "ostree_archive", "ostree_bare_user",
               "gitree_ostree_archive", "gitree_ostree_bare_user", "gitree_gc")
GC_RSS_LIMIT_MIB = 500


def unavailable(reason: str) -> dict:
    return {"unavailable": reason}


def is_value(v: Any) -> bool:
    return not (isinstance(v, dict) and ("unavailable" in v or "skipped" in v)) and v is not None


class Display:
    """Progress on stderr: one line per step, redrawn in place on a terminal."""

    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.tty = stream.isatty()
        self.t0 = time.monotonic()

    def _stamp(self) -> str:
        s = int(time.monotonic() - self.t0)
        return f"[{s // 60:3d}:{s % 60:02d}]"

    @contextlib.contextmanager
    def step(self, label: str):
        t = time.monotonic()
        if self.tty:
            self.stream.write(f"\r\x1b[K{self._stamp()} {label} ...")
            self.stream.flush()
        try:
            yield
        except Exception:
            self.line(f"{label}: FAILED after {time.monotonic() - t:.1f} s")
            raise
        else:
            self.line(f"{label}: {time.monotonic() - t:.1f} s")

    def line(self, text: str) -> None:
        self.stream.write(("\r\x1b[K" if self.tty else "") + f"{self._stamp()} {text}\n")
        self.stream.flush()


class WorkDir:
    """The run's scratch space: a fresh tmpfs when we are root and may mount, else a plain temp directory."""

    def __init__(self, given: str | None, size: str = "16g"):
        self.mounted = False
        if given:
            self.path = os.path.abspath(given)
            os.makedirs(self.path, exist_ok=True)
        else:
            self.path = tempfile.mkdtemp(prefix="gitree-bench-")
            if os.geteuid() == 0:
                r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", self.path],
                                   capture_output=True)
                self.mounted = r.returncode == 0
        self.given = given

    def sub(self, *parts: str) -> str:
        return os.path.join(self.path, *parts)

    def close(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", self.path])
            os.rmdir(self.path)
        elif not self.given:
            shutil.rmtree(self.path, ignore_errors=True)


class Bench:
    def __init__(self, versions: list[CorpusTar], work: WorkDir, groups: set[str], display: Display):
        self.v = versions
        self.w = work
        self.groups = groups
        self.d = display
        n = len(versions)
        self.names = [c.name for c in versions]
        self.sizes: dict[str, list] = {s: [None] * n for s in SIZE_STORES}
        self.times: dict[str, list] = {op: [None] * n for op in TIME_OPS}
        self.updates: dict[str, list] = {k: [None] * (n - 1) for k in UPDATE_KINDS}
        self.full: dict[str, list] = {k: [None] * n for k in FULL_KINDS}
        self.side_tables: dict[str, list] = {"gitree_loose": [None] * n, "gitree_packed": [None] * n}
        self.agreement: dict[str, list] = {"archive": [None] * n, "bare-user": [None] * n}
        self.drops: list = [None] * n
        self.series: dict[str, Any] = {}
        self.notes: list[str] = []
        self.profiles: dict[str, Any] = {}
        self.gitree_commits: list[str | None] = [None] * n
        self.ostree_commits: list[str | None] = [None] * n
        self.export_commits: list[str | None] = [None] * n
        self.gx_commits: list[str | None] = [None] * n   # the same versions, imported into GX
        self.export_ok, export_help = stores.gitree_subcommand("export-ostree")
        self.export_reason = "" if self.export_ok else f"gitree export-ostree not available: {export_help}"
        self.export_history = self.export_ok and "--history" in export_help
        self.bundle_ok, bundle_help = stores.gitree_subcommand("bundle")
        self.bundle_reason = "" if self.bundle_ok else f"gitree bundle not available: {bundle_help}"
        self.G = stores.Gitree(work.sub("gitree.git"))            # imports only: its size is the store's
        self.GP = work.sub("gitree-packed.git")                   # the same packs, repacked after each import
        self.GX = stores.Gitree(work.sub("gitree-export.git"))    # G's packs borrowed, each version imported
        self.export_cache: list = [None] * n                      # again; exports after the previous one run
        # here (with the cache a user's repository has: its imports' checksums and its own earlier exports)
        self.plain = stores.PlainGit(work.sub("git-plain.git"), work.sub("git-tree"))
        self.OA, self.OBU = work.sub("ostree-archive"), work.sub("ostree-bare-user")
        self.GEA, self.GEBU = work.sub("gitree-ostree-archive"), work.sub("gitree-ostree-bare-user")
        self.ostree_objects_prev: dict[str, int] = {}

    # -- plumbing --------------------------------------------------------------------------

    def want(self, group: str) -> bool:
        return group in self.groups

    def skip_all(self) -> None:
        """Mark what --only left out, so every metric key is still present."""
        skipped = {"skipped": "not selected by --only"}
        owner = {
            "gitree": ["gitree_loose", "gitree_packed", "gitree_import", "gitree_repack", "git_thin_pack",
                       "git_full_pack"],
            "git": ["git_plain_loose", "git_plain_packed", "git_add_commit"],
            "ostree": ["ostree_archive", "ostree_bare_user", "ostree_commit_archive", "ostree_commit_bare_user",
                       "ostree_commit_archive_cold", "ostree_new_objects", "ostree_commit_bare_user_cold",
                       "ostree_archive_cold"],
            "export": ["gitree_ostree_archive", "gitree_ostree_bare_user", "gitree_export_archive_cold",
                       "gitree_export_archive_incremental", "gitree_export_bare_user_incremental",
                       "gitree_export_bare_user_cold", "gitree_export_archive_cold_level6",
                       "gitree_ostree_archive_cold_reuse", "gitree_ostree_archive_cold_level6"],
            "checkout": ["ostree_checkout", "gitree_checkout_dir", "gitree_checkout_tar"],
            "deltas": ["ostree_static_delta", "ostree_static_delta_empty"],
            "zstd": ["tar_zst", "zstd_tar", "zstd_patch_from"],
            "bundle": ["gitree_bundle"],
        }
        for group, keys in owner.items():
            if self.want(group):
                continue
            for table in (self.sizes, self.times, self.updates, self.full):
                for k in keys:
                    if k in table:
                        table[k] = [skipped] * len(table[k])
            if group == "gitree":
                for k in self.side_tables:
                    self.side_tables[k] = [skipped] * len(self.v)
            if group == "git":
                self.drops = [skipped] * len(self.v)
            if group == "export":
                self.export_cache = [skipped] * len(self.v)
            if group in ("export", "ostree"):
                for k in self.agreement:
                    self.agreement[k] = [skipped] * len(self.v)

    def attempt(self, label: str, fn: Callable[[], Any], on_fail: Callable[[dict], None] | None = None) -> Any:
        """Run one measurement; a failing command becomes an 'unavailable' record, not a crashed run."""
        try:
            with self.d.step(label):
                return fn()
        except (CommandFailed, OSError) as e:
            msg = str(e)[:400]
            self.notes.append(f"{label}: {msg}")
            if on_fail:
                on_fail(unavailable(msg))
            return None

    def warm(self, path: str) -> None:
        with open(path, "rb") as f:
            while f.read(8 << 20):
                pass

    # -- the run ---------------------------------------------------------------------------

    def setup(self) -> None:
        if self.want("gitree"):
            self.G.init()
            subprocess.run(["git", "init", "-q", "--bare", self.GP], check=True)
            stores.borrow_objects(self.GP, self.G.path)
            if self.want("export"):
                self.GX.init()
                stores.borrow_objects(self.GX.path, self.G.path)
        if self.want("git"):
            self.plain.init()
        if self.want("ostree"):
            stores.ostree_init(self.OA, "archive")
            stores.ostree_init(self.OBU, "bare-user")
        if self.want("export") and self.export_ok:
            stores.ostree_init(self.GEA, "archive")
            stores.ostree_init(self.GEBU, "bare-user")
        os.makedirs(self.w.sub("zst"), exist_ok=True)
        os.makedirs(self.w.sub("scratch"), exist_ok=True)

    def version(self, i: int) -> None:
        ct = self.v[i]
        name, tar, ts = ct.name, ct.path, SOURCE_DATE_EPOCH + i * 86400
        self.d.line(f"== {name} ({i + 1}/{len(self.v)}): {ct.description}, {ct.bytes / 2**20:.0f} MiB tar")
        self.sizes["tar"][i] = {"du_bytes": os.stat(tar).st_blocks * 512, "apparent_bytes": ct.bytes,
                                "objects": None}
        self.warm(tar)

        def put(op: str):
            return lambda rec: self.times[op].__setitem__(i, rec)

        # import, back to back with its anchors
        if self.want("ostree"):
            r = self.attempt(f"{name}: ostree commit --tree=tar= (archive)",
                             lambda: stores.ostree_commit_tar(self.OA, tar, "main", name, ts),
                             put("ostree_commit_archive"))
            if r:
                self.times["ostree_commit_archive"][i] = r[0].as_dict()
                self.ostree_commits[i] = r[1]
        if self.want("gitree"):
            r = self.attempt(f"{name}: gitree import-rootfs",
                             lambda: self.G.import_rootfs(tar, "main", name, ts), put("gitree_import"))
            if r:
                self.times["gitree_import"][i] = r[0].as_dict()
                self.gitree_commits[i] = r[1]
        if self.want("git"):
            self.attempt(f"{name}: extract tar for plain git (untimed)", lambda: self.plain.extract(tar))
            t = self.attempt(f"{name}: git add -A && git commit", lambda: self.plain.add_commit(name, ts),
                             put("git_add_commit"))
            if t:
                self.times["git_add_commit"][i] = t.as_dict()
            stores.wipe(self.plain.work_tree)
            self.drops[i] = self.attempt(f"{name}: what plain git drops (tar scan)", lambda: stores.tar_drops(tar))
        if self.want("ostree"):
            r = self.attempt(f"{name}: ostree commit --tree=tar= (bare-user)",
                             lambda: stores.ostree_commit_tar(self.OBU, tar, "main", name, ts),
                             put("ostree_commit_bare_user"))
            if r:
                self.times["ostree_commit_bare_user"][i] = r[0].as_dict()

        # export, cold (empty repository) back to back with a cold ostree commit, then incremental
        if self.want("export"):
            if self.gitree_commits[i] and self.export_ok:
                r = self.attempt(f"{name}: gitree import-rootfs into the export repository (untimed)",
                                 lambda: self.GX.import_rootfs(tar, "main", name, ts))
                self.gx_commits[i] = r[1] if r else None
            self.export_version(i, name, tar, ts)

        # checkout, back to back
        if self.want("checkout"):
            self.checkout_version(i, name)

        # gitree packed: a second repository borrowing G's objects, `git repack -a -d -f` after each import.
        # (Without -f, git reuses the import's whole objects as they are and finds almost no deltas.)
        if self.want("gitree") and self.gitree_commits[i]:
            stores.copy_branches(self.G.path, self.GP)
            t = self.attempt(f"{name}: git repack -a -d -f --window={REPACK_WINDOW} --depth={REPACK_DEPTH}",
                             lambda: stores.repack(self.GP, REPACK_WINDOW, REPACK_DEPTH, full=True),
                             put("gitree_repack"))
            if t:
                self.times["gitree_repack"][i] = t.as_dict()
            self.sizes["gitree_loose"][i] = stores.git_size(self.G.path)
            self.sizes["gitree_packed"][i] = stores.git_size(self.GP)
            self.side_tables["gitree_loose"][i] = self.side_table_record(self.G.path)
            self.side_tables["gitree_packed"][i] = self.side_table_record(self.GP)
        if self.want("git"):
            self.sizes["git_plain_loose"][i] = stores.git_size(self.plain.git_dir)
            packed = self.w.sub("git-plain-packed.git")
            stores.wipe(packed)
            shutil.copytree(self.plain.git_dir, packed, symlinks=True)
            self.attempt(f"{name}: plain git repack (copy)",
                         lambda: stores.repack(packed, REPACK_WINDOW, REPACK_DEPTH, full=True))
            self.sizes["git_plain_packed"][i] = stores.git_size(packed)
            stores.wipe(packed)
        if self.want("ostree"):
            self.sizes["ostree_archive"][i] = stores.ostree_size(self.OA)
            self.sizes["ostree_bare_user"][i] = stores.ostree_size(self.OBU)
            objs = stores.ostree_objects(self.OA)
            if i > 0:
                new = {k: v for k, v in objs.items() if k not in self.ostree_objects_prev}
                self.updates["ostree_new_objects"][i - 1] = {"objects": len(new), "bytes": sum(new.values())}
            self.ostree_objects_prev = objs
        if self.want("export"):
            if self.export_ok:
                self.sizes["gitree_ostree_archive"][i] = stores.ostree_size(self.GEA)
                self.sizes["gitree_ostree_bare_user"][i] = stores.ostree_size(self.GEBU)
                if self.want("ostree"):
                    self.agreement["archive"][i] = self.compare_ostree(self.OA, self.GEA)
                    self.agreement["bare-user"][i] = self.compare_ostree(self.OBU, self.GEBU)
            else:
                for k in ("gitree_ostree_archive", "gitree_ostree_bare_user"):
                    self.sizes[k][i] = unavailable(self.export_reason)
                for k in self.agreement:
                    self.agreement[k][i] = unavailable(self.export_reason)

        if self.want("zstd"):
            self.zstd_version(i, name, tar)

    def export_version(self, i: int, name: str, tar: str, ts: int) -> None:
        """Cold exports (empty OSTree repository; the export cache as import-rootfs left it: file checksums) back
        to back with `ostree commit` into an empty repository of the same mode; then exports after the previous
        version (GX: a repository that imported every version itself, as a user's does, so its export cache
        holds its imports' checksums and its own earlier exports; every earlier version already in the
        target)."""
        cold_ops = ("gitree_export_archive_cold", "gitree_export_archive_incremental",
                    "gitree_export_bare_user_incremental", "gitree_export_bare_user_cold",
                    "gitree_export_archive_cold_level6")
        cold_dir = self.w.sub("scratch", "ostree-cold")
        for mode, op, size_key in (("archive", "ostree_commit_archive_cold", "ostree_archive_cold"),
                                   ("bare-user", "ostree_commit_bare_user_cold", None)):
            stores.ostree_init(cold_dir, mode)
            r = self.attempt(f"{name}: ostree commit ({mode}, empty repo)",
                             lambda: stores.ostree_commit_tar(cold_dir, tar, "main", name, ts))
            self.times[op][i] = r[0].as_dict() if r else unavailable("ostree commit failed")
            if size_key:
                self.sizes[size_key][i] = stores.ostree_size(cold_dir) if r else unavailable("ostree commit failed")
            stores.wipe(cold_dir)
        rev = self.gitree_commits[i]
        if not self.export_ok or not rev:
            reason = self.export_reason or "gitree import failed"
            for op in cold_ops:
                self.times[op][i] = unavailable(reason)
            for k in ("gitree_ostree_archive_cold_reuse", "gitree_ostree_archive_cold_level6"):
                self.sizes[k][i] = unavailable(reason)
            self.export_cache[i] = unavailable(reason)
            return
        # cold exports run in the import repository G, whose cache holds what import-rootfs recorded
        for mode, comp, op, size_key in (
                ("archive", None, "gitree_export_archive_cold", "gitree_ostree_archive_cold_reuse"),
                ("archive", "6", "gitree_export_archive_cold_level6", "gitree_ostree_archive_cold_level6"),
                ("bare-user", None, "gitree_export_bare_user_cold", None)):
            stores.ostree_init(cold_dir, mode)
            r = self.attempt(f"{name}: gitree export-ostree ({mode}{', --compression ' + comp if comp else ''}, "
                             "empty repo)",
                             lambda mode=mode, comp=comp: self.G.export_ostree(rev, cold_dir, mode, "main", False,
                                                                               comp),
                             lambda rec, op=op: self.times[op].__setitem__(i, rec))
            if r:
                self.times[op][i] = r[0].as_dict()
            if size_key:
                self.sizes[size_key][i] = stores.ostree_size(cold_dir) if r else unavailable("export failed")
            stores.wipe(cold_dir)
        xrev = self.gx_commits[i]
        if not xrev:
            for op in ("gitree_export_archive_incremental", "gitree_export_bare_user_incremental"):
                self.times[op][i] = unavailable("import into the export repository failed")
            self.export_cache[i] = unavailable("import into the export repository failed")
            return
        r = self.attempt(f"{name}: gitree export-ostree (archive, after previous)",
                         lambda: self.GX.export_ostree(xrev, self.GEA, "archive", "main", self.export_history),
                         lambda rec: self.times["gitree_export_archive_incremental"].__setitem__(i, rec))
        if r:
            self.times["gitree_export_archive_incremental"][i] = r[0].as_dict()
            self.export_commits[i] = r[1]
        r = self.attempt(f"{name}: gitree export-ostree (bare-user, after previous)",
                         lambda: self.GX.export_ostree(xrev, self.GEBU, "bare-user", "main", self.export_history),
                         lambda rec: self.times["gitree_export_bare_user_incremental"].__setitem__(i, rec))
        if r:
            self.times["gitree_export_bare_user_incremental"][i] = r[0].as_dict()
        self.export_cache[i] = stores.export_cache_bytes(self.GX.path)

    def checkout_version(self, i: int, name: str) -> None:
        """ostree checkout, gitree checkout DIR and --tar, CHECKOUT_ROUNDS rounds in turn; each keeps its
        fastest round (wall). A checkout is mostly system time (creating ~10k files), which varies by tens
        of percent from one minute to the next on a VM; alternating rounds let each tool see the same states."""
        dest = self.w.sub("scratch", "checkout")
        tar_out = self.w.sub("scratch", "checkout.tar")
        runs = {}
        if self.ostree_commits[i]:
            runs["ostree_checkout"] = ("ostree checkout (archive repo)",
                                       lambda: stores.ostree_checkout(self.OA, self.ostree_commits[i], dest))
        if self.gitree_commits[i]:
            runs["gitree_checkout_dir"] = ("gitree checkout DIR",
                                           lambda: self.G.checkout_dir(self.gitree_commits[i], dest))
            runs["gitree_checkout_tar"] = ("gitree checkout --tar",
                                           lambda: self.G.checkout_tar(self.gitree_commits[i], tar_out))
        best: dict[str, Any] = {op: None for op in ("ostree_checkout", "gitree_checkout_dir", "gitree_checkout_tar")}
        failed: set[str] = set()
        for rnd in range(CHECKOUT_ROUNDS):
            for op, (label, fn) in runs.items():
                if op in failed:
                    continue
                stores.wipe(dest)
                t = self.attempt(f"{name}: {label} (round {rnd + 1}/{CHECKOUT_ROUNDS})", fn)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tar_out)
                if not isinstance(t, Timing):
                    failed.add(op)
                    best[op] = None
                elif best[op] is None or t.wall_s < best[op].wall_s:
                    best[op] = t
        stores.wipe(dest)
        for op, t in best.items():
            self.times[op][i] = dict(t.as_dict(), rounds=CHECKOUT_ROUNDS) if isinstance(t, Timing) else unavailable(
                next((n for n in reversed(self.notes) if name in n), "prerequisite failed"))

    def zstd_version(self, i: int, name: str, tar: str) -> None:
        out = self.w.sub("zst", f"{name}.tar.zst")
        t = self.attempt(f"{name}: zstd -{ZSTD_LEVEL} tar", lambda: stores.run_timed(
            ["zstd", "-q", f"-{ZSTD_LEVEL}", "--long=27", "-T2", "-f", tar, "-o", out])[0])
        if t:
            self.times["zstd_tar"][i] = t.as_dict()
            n = os.path.getsize(out)
            self.sizes["tar_zst"][i] = {"du_bytes": os.stat(out).st_blocks * 512, "apparent_bytes": n,
                                        "objects": None}
            self.full["tar_zst"][i] = {"bytes": n}
            if i > 0:
                self.updates["tar_zst"][i - 1] = {"bytes": n}
            os.unlink(out)
        else:
            self.times["zstd_tar"][i] = self.sizes["tar_zst"][i] = self.full["tar_zst"][i] = unavailable("zstd")
        if i == 0:
            self.times["zstd_patch_from"][i] = unavailable("first version: nothing to patch from")
            return
        prev = self.v[i - 1].path
        patch = self.w.sub("zst", f"{name}.patch.zst")
        t = self.attempt(f"{name}: zstd -{ZSTD_LEVEL} --patch-from={self.v[i - 1].name}", lambda: stores.run_timed(
            ["zstd", "-q", f"-{ZSTD_LEVEL}", "--long=31", "-T2", f"--patch-from={prev}", "-f", tar, "-o", patch])[0])
        if t:
            self.times["zstd_patch_from"][i] = t.as_dict()
            self.updates["zstd_patch_from"][i - 1] = {"bytes": os.path.getsize(patch)}
            os.unlink(patch)
        else:
            self.times["zstd_patch_from"][i] = self.updates["zstd_patch_from"][i - 1] = unavailable("zstd failed")

    def side_table_record(self, git_dir: str) -> dict:
        b = stores.reachable_breakdown(git_dir)
        total = sum(b["disk"].values())
        meta = b["disk"].get("meta", 0)
        du = stores.tree_size(os.path.join(git_dir, "objects"))["du_bytes"]
        return {"meta_disk_bytes": meta, "meta_objects": b["count"].get("meta", 0),
                "meta_uncompressed_bytes": b["size"].get("meta", 0),
                "rootfs_disk_bytes": b["disk"].get("rootfs", 0), "reachable_disk_bytes": total,
                "meta_percent_of_objects": round(100 * meta / total, 2) if total else None,
                "meta_percent_of_du": round(100 * meta / du, 2) if du else None}

    def compare_ostree(self, ref_repo: str, ours: str) -> dict:
        """Object-set and byte agreement of two OSTree repositories (commit objects excepted: they differ by
        design in parent, timestamp and metadata). Content objects of archive repositories are compared by name
        only: gitree's default `--compression reuse` deflates them differently, and their names are checksums
        of the uncompressed stream."""
        a, b = stores.ostree_objects(ref_repo), stores.ostree_objects(ours)

        def content(objs):
            return {k: v for k, v in objs.items() if not k.endswith((".commit", ".commitmeta"))}
        ca, cb = content(a), content(b)
        common = ca.keys() & cb.keys()
        size_diff = [k for k in common if ca[k] != cb[k] and not k.endswith(".filez")]
        return {"objects_ostree": len(ca), "objects_gitree": len(cb), "only_in_ostree": len(ca.keys() - cb.keys()),
                "only_in_gitree": len(cb.keys() - ca.keys()), "same_objects_different_bytes": len(size_diff),
                "content_bytes_ostree": sum(ca.values()), "content_bytes_gitree": sum(cb.values()),
                "examples_only_in_ostree": sorted(ca.keys() - cb.keys())[:5],
                "examples_only_in_gitree": sorted(cb.keys() - ca.keys())[:5],
                "agree": ca.keys() == cb.keys() and not size_diff}

    def after_series(self) -> None:
        n = len(self.v)
        if self.want("gitree") and all(self.gitree_commits):
            # GP was fully repacked (-a -d -f) after the last import: that is the series' packed state
            last = self.times["gitree_repack"][n - 1]
            self.series["gitree_packed_final"] = dict(stores.git_size(self.GP),
                                                      repack=last if is_value(last) else None)
            self.series["gitree_packed_final_side_tables"] = self.side_table_record(self.GP)
            for i in range(n):
                old = self.gitree_commits[i - 1] if i else None
                r = self.attempt(f"{self.names[i]}: git pack-objects {'--thin ' if old else ''}--revs",
                                 lambda i=i, old=old: stores.thin_pack_size(self.GP, self.gitree_commits[i], old,
                                                               REPACK_WINDOW, REPACK_DEPTH))
                rec = {"bytes": r[0], "time": r[1].as_dict()} if r else unavailable("pack-objects failed")
                if i:
                    self.updates["git_thin_pack"][i - 1] = rec
                else:
                    self.full["git_full_pack"][0] = rec
                if i:
                    r = self.attempt(f"{self.names[i]}: git pack-objects --revs (full)",
                                     lambda i=i: stores.thin_pack_size(self.GP, self.gitree_commits[i], None,
                                                                   REPACK_WINDOW, REPACK_DEPTH))
                    self.full["git_full_pack"][i] = {"bytes": r[0], "time": r[1].as_dict()} if r else \
                        unavailable("pack-objects failed")
        elif self.want("gitree"):
            self.series["gitree_packed_final"] = unavailable("an import failed")
        if self.want("git"):
            t = self.attempt("all: git repack -a -d -f (plain git)",
                             lambda: stores.repack(self.plain.git_dir, REPACK_WINDOW, REPACK_DEPTH, full=True))
            self.series["git_plain_packed_final"] = dict(stores.git_size(self.plain.git_dir),
                                                         repack=t.as_dict() if t else None)
        if self.want("ostree"):
            self.series["ostree_archive"] = stores.ostree_size(self.OA)
            self.series["ostree_bare_user"] = stores.ostree_size(self.OBU)
        if self.want("export"):
            for key, path in (("gitree_ostree_archive", self.GEA), ("gitree_ostree_bare_user", self.GEBU)):
                self.series[key] = stores.ostree_size(path) if self.export_ok else unavailable(self.export_reason)
        if self.want("deltas"):
            self.deltas()
        if self.want("bundle"):
            self.bundles()
        if self.want("gitree") and all(self.gitree_commits):
            # last: it repacks G, which the other repositories borrow objects from
            t = self.attempt("all: gitree gc (import repository)",
                             lambda: stores.run_timed(self.G.cmd("gc"))[0])
            self.series["gitree_gc"] = dict(stores.git_size(self.G.path), time=t.as_dict()) if t else \
                unavailable("gitree gc failed")
        elif self.want("gitree"):
            self.series["gitree_gc"] = unavailable("an import failed")

    def deltas(self) -> None:
        # Deltas are generated in a copy so that the archive repository's size above stays deltas-free.
        repo = self.w.sub("scratch", "ostree-deltas")
        stores.wipe(repo)
        shutil.copytree(self.OA, repo, symlinks=True)
        for i, c in enumerate(self.ostree_commits):
            if not c:
                self.full["ostree_static_delta_empty"][i] = unavailable("ostree commit failed")
                continue
            r = self.attempt(f"{self.names[i]}: ostree static-delta generate --empty",
                             lambda c=c: stores.static_delta(repo, c, None))
            self.full["ostree_static_delta_empty"][i] = dict(r[0].as_dict(), time=r[1].as_dict()) if r else \
                unavailable("static-delta generate failed")
            if i == 0:
                continue
            prev = self.ostree_commits[i - 1]
            r = self.attempt(f"{self.names[i - 1]}->{self.names[i]}: ostree static-delta generate",
                             lambda c=c, prev=prev: stores.static_delta(repo, c, prev)) if prev else None
            self.updates["ostree_static_delta"][i - 1] = dict(r[0].as_dict(), time=r[1].as_dict()) if r else \
                unavailable("static-delta generate failed")
        stores.wipe(repo)

    def bundles(self) -> None:
        for i in range(1, len(self.v)):
            if not self.bundle_ok:
                self.updates["gitree_bundle"][i - 1] = unavailable(self.bundle_reason)
                continue
            old, new = self.gitree_commits[i - 1], self.gitree_commits[i]
            path = self.w.sub("scratch", "update.bundle")
            t = self.attempt(f"{self.names[i]}: gitree bundle create",
                             lambda old=old, new=new, path=path: self.G.bundle_create(old, new, path, "main"))
            if t:
                self.updates["gitree_bundle"][i - 1] = {"bytes": os.path.getsize(path), "time": t.as_dict()}
                os.unlink(path)
            else:
                self.updates["gitree_bundle"][i - 1] = unavailable(self.notes[-1] if self.notes else "failed")

    # -- derived figures -------------------------------------------------------------------

    def ratios(self) -> dict:
        out = {}
        for key, (num, den) in RATIOS.items():
            row = []
            for i in range(len(self.v)):
                a, b = self.times[num][i], self.times[den][i]
                if is_value(a) and is_value(b) and b["wall_s"] > 0:
                    row.append({"wall": round(a["wall_s"] / b["wall_s"], 3),
                                "cpu": round(a["cpu_s"] / b["cpu_s"], 3) if b["cpu_s"] > 0 else None})
                else:
                    why = next((x[k] for x in (a, b) if isinstance(x, dict) for k in ("unavailable", "skipped")
                                if k in x), "not measured")
                    row.append(unavailable(why))
            out[key] = row
        return out

    def profile(self, op: str, i: int) -> dict:
        """cProfile of a fresh run of `op` on version i (main process only), top functions by cumulative time:
        import into an empty repository, or export into an empty OSTree repository (cache as import left it)."""
        prof = self.w.sub("scratch", f"{op}.prof")
        scratch = self.w.sub("scratch", "profile")
        stores.wipe(scratch)
        py = [sys.executable, "-m", "benchmarks.profile_cli", prof, "-q"]
        if op == "gitree_import":
            stores.Gitree(scratch).init()
            cmd = py + ["-C", scratch, "import-rootfs", self.v[i].path, "-b", "main", "--timestamp",
                        str(SOURCE_DATE_EPOCH)]
        else:
            mode = "bare-user" if "bare_user" in op else "archive"
            cmd = py + ["-C", self.G.path, "export-ostree", self.gitree_commits[i], "--ostree-repo", scratch,
                        "--mode", mode, "--ref", "main"]
        try:
            self.attempt(f"{self.names[i]}: profile {op} (cProfile)", lambda: stores.run_timed(cmd))
        finally:
            stores.wipe(scratch)
        if not os.path.exists(prof):
            return unavailable("profiling failed")
        tops = {}
        for order in ("cumulative", "tottime"):
            buf = io.StringIO()
            pstats.Stats(prof, stream=buf).sort_stats(order).print_stats(22)
            lines = [ln for ln in buf.getvalue().splitlines() if ln.strip()]
            start = next((k for k, ln in enumerate(lines) if ln.lstrip().startswith("ncalls")), 0)
            tops[order] = [ln.replace(os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + "/", "")
                           for ln in lines[start:start + 23]]
        os.unlink(prof)
        return {"version": self.names[i], "top_cumulative": tops["cumulative"], "top_tottime": tops["tottime"]}


def targets(b: Bench, ratios: dict) -> list[dict]:
    """Each target of issues 4 and 13, met or missed with the numbers (None = could not be checked, with why).
    A target names its metric: wall time, or CPU time (user + system, children included)."""
    out = []

    def per_version(name: str, key: str, limit: float, start: int = 0, desc: str = "", metric: str = "wall"
                    ) -> None:
        vals = [(b.names[i], r[metric]) for i, r in enumerate(ratios[key])
                if i >= start and is_value(r) and r.get(metric) is not None]
        if not vals:
            why = next((r.get("unavailable") or r.get("skipped") for r in ratios[key][start:] if isinstance(r, dict)
                        and not is_value(r)), "not measured")
            out.append({"target": name, "description": desc, "limit": limit, "metric": metric, "met": None,
                        "why": why})
            return
        worst = max(vals, key=lambda x: x[1])
        out.append({"target": name, "description": desc, "limit": limit, "metric": metric,
                    "met": worst[1] <= limit, "worst": {"version": worst[0], "ratio": worst[1]},
                    "per_version": dict(vals), "complete": len(vals) == len(b.names) - start})

    per_version("import_cpu_vs_ostree_commit", "import_vs_ostree_commit", 0.5, metric="cpu",
                desc="import-rootfs CPU <= 0.5x `ostree commit --tree=tar=` (archive) CPU, every version")
    per_version("import_vs_git_add_commit", "import_vs_git_add_commit", 1.0,
                desc="import-rootfs no slower than `git add -A && git commit` of the extracted tree")
    per_version("export_cold_cpu_vs_ostree_commit", "export_cold_vs_ostree_commit", 0.3, metric="cpu",
                desc="export-ostree (archive) into an empty repo: CPU <= 0.3x `ostree commit` into an empty repo")
    per_version("export_cold_wall_vs_ostree_commit", "export_cold_vs_ostree_commit", 0.25,
                desc="export-ostree (archive) into an empty repo: wall <= 0.25x `ostree commit` into an empty repo")
    per_version("export_incremental_vs_cold", "export_incremental_vs_cold", 0.05, start=1,
                desc="export of vN+1 after vN <= 0.05x a cold export of vN+1 (wall)")
    per_version("export_bare_user_cold_vs_ostree_commit", "export_bare_user_cold_vs_ostree_commit", 0.5,
                desc="export-ostree bare-user into an empty repo <= 0.5x `ostree commit` bare-user (wall)")
    per_version("checkout_dir_vs_ostree_checkout", "checkout_dir_vs_ostree_checkout", 1.0,
                desc="checkout to a directory <= 1.0x `ostree checkout` from an archive repository (wall)")
    sizes = []
    for i, n in enumerate(b.names):
        row = {k: b.sizes[k][i] for k in ("ostree_archive_cold", "gitree_ostree_archive_cold_reuse",
                                            "gitree_ostree_archive_cold_level6")}
        if all(is_value(v) for v in row.values()):
            o = row["ostree_archive_cold"]["du_bytes"]
            sizes.append({"version": n, "ostree_du": o,
                          "reuse_du": row["gitree_ostree_archive_cold_reuse"]["du_bytes"],
                          "level6_du": row["gitree_ostree_archive_cold_level6"]["du_bytes"],
                          "reuse_ratio": round(row["gitree_ostree_archive_cold_reuse"]["du_bytes"] / o, 3),
                          "level6_ratio": round(row["gitree_ostree_archive_cold_level6"]["du_bytes"] / o, 3)})
    out.append({"target": "archive_size_reuse_and_level6", "limit": None, "met": None, "per_version": sizes,
                "why": "a figure stated beside OSTree's own, not a limit",
                "description": "archive repository (one version, empty repo) size: --compression reuse and 6, "
                               "beside `ostree commit`'s"})
    gc = b.series.get("gitree_gc")
    if is_value(gc) and is_value(gc.get("time")):
        out.append({"target": "gitree_gc_peak_rss", "limit": GC_RSS_LIMIT_MIB,
                    "met": gc["time"]["peak_rss_mib"] < GC_RSS_LIMIT_MIB,
                    "peak_rss_mib": gc["time"]["peak_rss_mib"], "packed_du": gc["du_bytes"],
                    "description": f"peak memory of `gitree gc` of the whole series under {GC_RSS_LIMIT_MIB} MiB"})
    else:
        out.append({"target": "gitree_gc_peak_rss", "limit": GC_RSS_LIMIT_MIB, "met": None,
                    "why": (gc or {}).get("unavailable") or (gc or {}).get("skipped") or "not measured"})
    gp, oa = b.series.get("gitree_packed_final"), b.series.get("ostree_archive")
    if is_value(gp) and is_value(oa):
        r = gp["du_bytes"] / oa["du_bytes"]
        out.append({"target": "packed_vs_ostree_archive", "limit": 0.6, "met": r <= 0.6, "ratio": round(r, 3),
                    "description": f"packed gitree repository of the whole series <= 0.6x the OSTree archive "
                                   f"repository ({len(b.names)} versions, du bytes)",
                    "gitree_packed_du": gp["du_bytes"], "ostree_archive_du": oa["du_bytes"]})
    else:
        out.append({"target": "packed_vs_ostree_archive", "limit": 0.6, "met": None,
                    "why": "gitree or ostree sizes missing"})
    for kind in ("git_thin_pack", "gitree_bundle"):
        steps = []
        for i, (u, d) in enumerate(zip(b.updates[kind], b.updates["ostree_static_delta"], strict=True)):
            if is_value(u) and is_value(d):
                steps.append({"step": f"{b.names[i]}->{b.names[i + 1]}", "bytes": u["bytes"],
                              "static_delta_transfer": d["transfer_bytes"],
                              "ratio": round(u["bytes"] / d["transfer_bytes"], 3)})
        if steps:
            out.append({"target": f"{kind}_vs_static_delta", "limit": 1.0,
                        "met": all(s["ratio"] <= 1.0 for s in steps), "per_step": steps,
                        "worst": max(steps, key=lambda s: s["ratio"]),
                        "description": f"{kind.replace('_', ' ')} per step <= the OSTree static delta with "
                                       f"fallback objects"})
        else:
            why = next((u.get("unavailable") or u.get("skipped") for u in b.updates[kind] if isinstance(u, dict)
                        and not is_value(u)), "not measured")
            out.append({"target": f"{kind}_vs_static_delta", "limit": 1.0, "met": None, "why": why})
    i3 = min(2, len(b.names) - 1)
    for op in ("gitree_import", "gitree_export_archive_cold"):
        t = b.times[op][i3]
        if is_value(t):
            out.append({"target": f"{op}_peak_rss", "limit": 300, "met": t["peak_rss_mib"] < 300,
                        "peak_rss_mib": t["peak_rss_mib"], "version": b.names[i3],
                        "description": f"peak memory of {op.replace('_', ' ')} of {b.names[i3]} under 300 MiB"})
        else:
            out.append({"target": f"{op}_peak_rss", "limit": 300, "met": None,
                        "why": (t or {}).get("unavailable") or (t or {}).get("skipped") or "not measured"})
    return out


def compile_gitree() -> str:
    """Compile gitree's modules to bytecode before anything is timed, as installing a wheel does: run from a
    source checkout with PYTHONDONTWRITEBYTECODE set and no __pycache__, every gitree command would compile
    its ~60 modules again (0.15-0.2 s CPU each time), a cost no installed gitree pays."""
    import compileall
    import importlib.util
    dirs = []
    for mod in ("gitree", "gitree_compat"):
        spec = importlib.util.find_spec(mod)
        if spec is not None and spec.submodule_search_locations:
            dirs.extend(spec.submodule_search_locations)
    ok = all(compileall.compile_dir(d, quiet=1) for d in dirs)
    return ("compiled before the run: " if ok else "compiling failed for some of: ") + ", ".join(dirs)


def run_benchmarks(quick: bool, corpus_dir: str, out_dir: str, only: set[str] | None, work_dir: str | None,
                   snapshot: str | None = None, profile: bool = True) -> dict:
    display = Display()
    groups = set(GROUPS) if not only else set(only)
    for g in list(groups):
        groups |= NEEDS.get(g, set())
    started = datetime.datetime.now(datetime.timezone.utc)
    specs = QUICK_SERIES if quick else FULL_SERIES
    mirrors = Mirrors.snapshot(snapshot) if snapshot else Mirrors()
    corpus = Corpus(corpus_dir, mirrors, log=display.line)
    with display.step(f"corpus: {len(specs)} versions in {corpus_dir}"):
        built = corpus.series(specs)
    usable = [c for c in built if c.ok]
    for c in built:
        if not c.ok:
            display.line(f"corpus {c.name}: UNAVAILABLE: {c.error}")
    bytecode = compile_gitree()
    work = WorkDir(work_dir)
    try:
        b = Bench(usable, work, groups, display)
        b.skip_all()
        b.setup()
        for i in range(len(usable)):
            try:
                b.version(i)
            except Exception as e:  # a harness fault on one version must not lose the rest of a long run
                display.line(f"{usable[i].name}: harness error {type(e).__name__}: {e}")
                b.notes.append(f"{usable[i].name}: harness error {type(e).__name__}: {e}")
        b.after_series()
        ratios = b.ratios()
        tg = targets(b, ratios)
        if profile and b.want("gitree"):
            for op, ratio, prefix in (("gitree_import", "import_vs_ostree_commit", "import_cpu"),
                                      ("gitree_export_archive_cold", "export_cold_vs_ostree_commit", "export_cold"),
                                      ("gitree_export_bare_user_cold", "export_bare_user_cold_vs_ostree_commit",
                                       "export_bare_user")):
                if not any(t["target"].startswith(prefix) and t["met"] is False for t in tg):
                    continue
                if op != "gitree_import" and not (b.want("export") and b.export_ok):
                    continue
                row = ratios[ratio]
                worst = max(range(len(usable)), key=lambda i, row=row: row[i]["wall"] if is_value(row[i]) else 0)
                b.profiles[op] = b.profile(op, worst)
        results = {
            "schema": 1,
            "started": started.isoformat(timespec="seconds"),
            "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": "python -m benchmarks " + " ".join(sys.argv[1:]),
            "series": "quick" if quick else "full",
            "machine": machine(),
            "tools": tool_versions(),
            "disks": {"work (every repository, checkout and compressed file)": filesystem_of(work.path),
                      "corpus tars (read only, pre-read into the page cache)": filesystem_of(corpus_dir)},
            "settings": {"repack_window": REPACK_WINDOW, "repack_depth": REPACK_DEPTH, "zstd_level": ZSTD_LEVEL,
                         "groups": sorted(groups), "source_date_epoch": SOURCE_DATE_EPOCH,
                         "gitree_bytecode": bytecode,
                         "export_ostree": b.export_ok and "available" or b.export_reason,
                         "export_history_flag": b.export_history,
                         "bundle": b.bundle_ok and "available" or b.bundle_reason},
            "corpus": [asdict(c) for c in built],
            "versions": b.names,
            "sizes": b.sizes,
            "series_sizes": {k: b.series.get(k, {"skipped": "not selected by --only"}) for k in SERIES_KEYS},
            "side_tables": dict(b.side_tables,
                                final=b.series.get("gitree_packed_final_side_tables",
                                                   unavailable("no packed repository"))),
            "git_plain_drops": b.drops,
            "ostree_agreement": b.agreement,
            "export_cache": b.export_cache,
            "updates": b.updates,
            "full_updates": b.full,
            "times": b.times,
            "ratios": ratios,
            "targets": tg,
            "profiles": b.profiles,
            "commits": {"gitree": b.gitree_commits, "ostree": b.ostree_commits,
                        "gitree_export": b.export_commits},
            "notes": b.notes,
        }
    finally:
        work.close()
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    from . import report
    report.write(results, out_dir, display.line)
    display.line(f"results in {out_dir}")
    return results
