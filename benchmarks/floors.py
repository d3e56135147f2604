"""`python -m benchmarks.floors [OLD.tar NEW.tar]`: the floors under issue 13's two missed export targets.

Two targets of the study are ratios whose allowance is smaller than work no gitree export can skip:
- an export of NEW after OLD (a security update) within 0.05x a cold export of NEW, wall;
- a bare-user export into an empty repository within 0.5x `ostree commit` bare-user of the same tree, wall.

This measures, back to back on one tree pair (default: v1 and v2 of the corpus cache), each target's two sides
as the study does (the command line, a fresh target for every round) and what bounds them from below:
starting the interpreter and importing what an export needs; the same exports through the Python API, where
nothing starts; and for bare-user the bytes no export can avoid: inflating every blob of NEW out of the
repository's packs with ISA-L (gitree keeps blobs compressed; `ostree commit` has them plain in its tar),
and writing every file of NEW, which `tar -x` of NEW's tar does without hashing, inflating or labelling.
Each figure is the fastest of `--rounds` rounds (wall), with that round's CPU (user + system, children too).
Run it on a tmpfs (--work) on an otherwise idle machine; docs/benchmarks.md has a run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time

from . import stores
from .corpus import DEFAULT_CACHE
from .measure import Timing, run, run_timed
from .run import compile_gitree

PY = sys.executable
TS = 1_700_000_000


def _best(rounds: int, once) -> Timing:
    """The fastest of `rounds` calls of once() -> Timing."""
    return min((once() for _ in range(rounds)), key=lambda t: t.wall_s)


def _in_process(fn) -> Timing:
    """fn() in this process: wall, and CPU of this process and of the children it waited for."""
    def cpu() -> tuple[float, float]:
        a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return a.ru_utime + b.ru_utime, a.ru_stime + b.ru_stime
    (u0, s0), t0 = cpu(), time.perf_counter()
    fn()
    wall = time.perf_counter() - t0
    u1, s1 = cpu()
    return Timing(wall, u1 - u0 + s1 - s0, u1 - u0, s1 - s0, 0.0)


def _blobs(repo_path: str, rev: str) -> list[bytes]:
    """The distinct blobs of `rev`'s files (a validated walk: not timed)."""
    from gitree.entry import Kind
    from gitree.repo import Repo
    repo = Repo(repo_path)
    return sorted({e.oid for e in repo.walk(repo.resolve(rev)) if e.kind is Kind.FILE and e.oid is not None})


def _inflate_all(repo_path: str, oids: list[bytes]) -> tuple[int, int, int]:
    """Inflate every blob of `oids` stored whole in a pack as export does (PackSet, inflate_chunks); returns
    (blobs inflated, bytes out, blobs not whole in a pack)."""
    from gitree.packreader import PackSet, inflate_chunks
    packs = PackSet(os.path.join(repo_path, "objects"))
    n = out = other = 0
    for oid in oids:
        ps = packs.blob(oid)
        if ps is None:
            other += 1
            continue
        n += 1
        out += sum(len(c) for c in inflate_chunks(ps, oid.hex()))
    return n, out, other


def measure(old_tar: str, new_tar: str, work: str, rounds: int) -> dict:
    res: dict = {"old": old_tar, "new": new_tar, "work": work, "rounds": rounds, "bytecode": compile_gitree()}
    g = stores.Gitree(os.path.join(work, "g.git"))
    g.init()
    g.import_rootfs(old_tar, "old", "old", TS)
    g.import_rootfs(new_tar, "new", "new", TS + 1)
    target = os.path.join(work, "target")

    def cli(*cmd: str) -> Timing:
        return run_timed([PY, *cmd])[0]
    res["start_python_S"] = _best(rounds, lambda: cli("-S", "-c", "pass")).as_dict()
    res["start_python"] = _best(rounds, lambda: cli("-c", "pass")).as_dict()
    res["start_pygit2"] = _best(rounds, lambda: cli("-c", "import pygit2")).as_dict()
    res["start_gitree_export"] = _best(rounds, lambda: cli("-c", "import gitree.cli, gitree.ostree.export")).as_dict()

    def cold(mode: str) -> Timing:
        stores.ostree_init(target, mode)
        return g.export_ostree("new", target, mode, "main", False)[0]

    def update() -> Timing:
        stores.ostree_init(target, "archive")
        g.export_ostree("old", target, "archive", "main", False)   # untimed: the target as the update finds it
        return g.export_ostree("new", target, "archive", "main", False)[0]

    def ostree_bare_user() -> Timing:
        stores.ostree_init(target, "bare-user")
        return stores.ostree_commit_tar(target, new_tar, "main", "new", TS)[0]

    res["cli_archive_cold"] = _best(rounds, lambda: cold("archive")).as_dict()
    res["cli_archive_update"] = _best(rounds, update).as_dict()
    res["ostree_commit_bare_user"] = _best(rounds, ostree_bare_user).as_dict()
    res["cli_bare_user_cold"] = _best(rounds, lambda: cold("bare-user")).as_dict()

    from gitree import api

    def api_cold() -> Timing:
        stores.wipe(target)
        return _in_process(lambda: api.export_ostree(g.path, "new", target, ref="main"))

    def api_update() -> Timing:
        stores.wipe(target)
        api.export_ostree(g.path, "old", target, ref="main")
        return _in_process(lambda: api.export_ostree(g.path, "new", target, ref="main"))
    res["api_archive_cold"] = _best(rounds, api_cold).as_dict()
    res["api_archive_update"] = _best(rounds, api_update).as_dict()
    stores.wipe(target)

    counts: list = []
    oids = _blobs(g.path, "new")
    res["inflate_new_blobs"] = _best(rounds, lambda: _in_process(
        lambda: counts.append(_inflate_all(g.path, oids)))).as_dict()
    res["inflate_new_blobs"].update(zip(("blobs", "bytes", "not_whole_in_a_pack"), counts[-1], strict=True))
    extract = os.path.join(work, "extract")

    def tar_x() -> Timing:
        stores.wipe(extract)
        os.makedirs(extract)
        return run_timed(["tar", "-xf", new_tar, "-C", extract])[0]
    res["tar_x_new"] = _best(rounds, tar_x).as_dict()
    stores.wipe(extract)
    res["derived"] = derive(res)
    return res


def derive(r: dict) -> dict:
    """Each target's allowance beside the floor under it (seconds, wall)."""
    start = r["start_gitree_export"]["wall_s"]
    bytes_cpu = r["inflate_new_blobs"]["cpu_s"] + r["tar_x_new"]["cpu_s"]
    return {
        "update_allowance": round(0.05 * r["cli_archive_cold"]["wall_s"], 3),
        "update_floor_start": start,
        "update_ratio_cli": round(r["cli_archive_update"]["wall_s"] / r["cli_archive_cold"]["wall_s"], 3),
        "update_ratio_api": round(r["api_archive_update"]["wall_s"] / r["api_archive_cold"]["wall_s"], 3),
        "bare_user_allowance": round(0.5 * r["ostree_commit_bare_user"]["wall_s"], 3),
        # start on one core, then inflating and writing every byte spread perfectly over two cores
        "bare_user_floor": round(start + bytes_cpu / 2, 3),
        "bare_user_ratio": round(r["cli_bare_user_cold"]["wall_s"] / r["ostree_commit_bare_user"]["wall_s"], 3),
    }


def _default_tars(cache: str) -> tuple[str, str]:
    with open(os.path.join(cache, "manifest.json")) as f:
        man = json.load(f)
    by_name = {v["name"]: v["path"] for v in man.values() if not v.get("error")}
    if "v1" not in by_name or "v2" not in by_name:
        sys.exit(f"no v1 and v2 in {cache}: run `python -m benchmarks` once, or name two tars")
    return by_name["v1"], by_name["v2"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.floors", description=__doc__.split("\n\n")[0])
    ap.add_argument("tars", nargs="*", metavar="TAR", help="OLD and NEW root filesystem tars (default: v1 v2)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--work", help="scratch directory (default: a temporary one in /dev/shm)")
    ap.add_argument("--cache", default=DEFAULT_CACHE, help="the corpus cache (default %(default)s)")
    ap.add_argument("--json", help="also write the figures here")
    a = ap.parse_args(argv)
    if a.tars and len(a.tars) != 2:
        ap.error("give two tars, OLD and NEW, or none")
    old, new = a.tars or _default_tars(a.cache)
    run(["ostree", "--version"])
    with tempfile.TemporaryDirectory(prefix="gitree-floors-", dir=a.work or "/dev/shm") as work:
        res = measure(old, new, work, a.rounds)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    print(report(res))
    return 0


def report(r: dict) -> str:
    def row(label: str, key: str) -> str:
        t = r[key]
        return f"| {label} | {t['wall_s']:.3f} | {t['cpu_s']:.3f} |"
    d = r["derived"]
    lines = [f"Fastest of {r['rounds']} rounds; OLD {os.path.basename(r['old'])}, NEW {os.path.basename(r['new'])}, "
             f"work directory {r['work']}.", "", "| measured | wall s | CPU s |", "|---|---|---|",
             row("`python -S -c pass`", "start_python_S"), row("`python -c pass`", "start_python"),
             row("`python -c 'import pygit2'`", "start_pygit2"),
             row("`python -c 'import gitree.cli, gitree.ostree.export'`", "start_gitree_export"),
             row("export-ostree archive, cold, NEW (command line)", "cli_archive_cold"),
             row("export-ostree archive, NEW after OLD (command line)", "cli_archive_update"),
             row("export_ostree archive, cold, NEW (API, in process)", "api_archive_cold"),
             row("export_ostree archive, NEW after OLD (API, in process)", "api_archive_update"),
             row("`ostree commit` bare-user of NEW's tar", "ostree_commit_bare_user"),
             row("export-ostree bare-user, cold, NEW (command line)", "cli_bare_user_cold"),
             row(f"ISA-L inflate of NEW's {r['inflate_new_blobs']['blobs']} blobs from the pack "
                 f"({r['inflate_new_blobs']['bytes'] / 2**20:.1f} MiB)", "inflate_new_blobs"),
             row("`tar -x` of NEW's tar (create and write every file)", "tar_x_new"), "",
             f"- export after an update: allowed {d['update_allowance']:.3f} s (0.05x the cold export); starting "
             f"Python and importing the export takes {d['update_floor_start']:.3f} s. Ratio now: command line "
             f"{d['update_ratio_cli']}x, API {d['update_ratio_api']}x.",
             f"- bare-user cold export: allowed {d['bare_user_allowance']:.3f} s (0.5x `ostree commit`); start plus "
             f"inflating and writing every byte on two perfectly busy cores is at least {d['bare_user_floor']:.3f} "
             f"s, before the tree is read or one checksum looked up. Ratio now: {d['bare_user_ratio']}x."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
