"""Update sizes for real rootfs steps: gitree bundle vs `ostree static-delta` vs a plain `git bundle`, and the
bytes an `ostree pull` of the step fetches (the objects new in the target export).

    python -m benchmarks.update_sizes OLD.tar NEW.tar [OLD.tar NEW.tar ...] [--work DIR]

Each pair is imported into a fresh gitree repository (two commits), exported with --history into an archive
OSTree repository, and measured:
  gitree bundle   `gitree bundle create OLD..NEW`
  git bundle      `git bundle create` of the same range (thin pack, zlib per object)
  static delta    `ostree static-delta generate --from --to`: every file under deltas/ (parts + superblock)
                  plus the fallback objects `static-delta show` lists
  pull            the archive objects new in NEW's export (what a per-object pull fetches), and all of NEW
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile


def sh(*args: str, **kw) -> str:
    return subprocess.run(list(args), check=True, capture_output=True, text=True, **kw).stdout.strip()


def gitree(*args: str) -> str:
    return sh(sys.executable, "-m", "gitree", "-q", *args)


def tree_size(path: str) -> dict[str, int]:
    out = {}
    for dirpath, _, files in os.walk(path):
        for f in files:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, path)] = os.path.getsize(p)
    return out


def reachable_bytes(repo: str, commit: str) -> int:
    """Bytes of every archive object a from-scratch pull of `commit` fetches."""
    from gitree_compat import ObjectType, OstreeRepo
    r = OstreeRepo(repo)
    c = r.read_commit(commit)
    seen = {(commit, ObjectType.COMMIT), (c.root_meta, ObjectType.DIR_META)}
    todo = [(c.root_tree, c.root_meta)]
    while todo:
        t, m = todo.pop()
        if (t, ObjectType.DIR_TREE) in seen:
            continue
        seen |= {(t, ObjectType.DIR_TREE), (m, ObjectType.DIR_META)}
        tree = r.read_dirtree(t)
        seen |= {(f, ObjectType.FILE) for _, f in tree.files}
        todo += [(st, sm) for _, st, sm in tree.dirs]
    return sum(os.path.getsize(r.object_path(x, t)) for x, t in seen)


def measure(old_tar: str, new_tar: str, work: str) -> dict:
    d = tempfile.mkdtemp(dir=work)
    try:
        repo = os.path.join(d, "g.git")
        gitree("-C", repo, "init")
        gitree("-C", repo, "import-rootfs", old_tar, "-b", "os", "-m", "old", "--timestamp", "1700000000")
        gitree("-C", repo, "import-rootfs", new_tar, "-b", "os", "-m", "new", "--timestamp", "1700000100")
        bundle = os.path.join(d, "u.gtb")
        gitree("-C", repo, "bundle", "create", "os~1..os", bundle)
        plain = os.path.join(d, "u.bundle")
        subprocess.run(["git", "--git-dir", repo, "bundle", "create", "-q", plain, "os~1..os"], check=True,
                       capture_output=True)
        o = os.path.join(d, "o")
        gitree("-C", repo, "export-ostree", "os~1", "--ref", "os", "--ostree-repo", o)
        before = tree_size(os.path.join(o, "objects"))
        c2 = gitree("-C", repo, "export-ostree", "os", "--ostree-repo", o).splitlines()[-1]
        after = tree_size(os.path.join(o, "objects"))
        c1 = sh("ostree", f"--repo={o}", "rev-parse", "os^")
        sh("ostree", f"--repo={o}", "static-delta", "generate", f"--from={c1}", f"--to={c2}")
        show = sh("ostree", f"--repo={o}", "static-delta", "show", f"{c1}-{c2}")
        fb_n = int(re.search(r"Number of fallback entries: (\d+)", show).group(1))
        fb_b = int(re.search(r"Total Fallback Size: (\d+)", show).group(1))
        parts = sum(tree_size(os.path.join(o, "deltas")).values())
        new = {p: n for p, n in after.items() if p not in before}
        return {
            "old": os.path.basename(old_tar), "new": os.path.basename(new_tar),
            "gitree_bundle": os.path.getsize(bundle), "git_bundle": os.path.getsize(plain),
            "static_delta_parts": parts, "static_delta_fallbacks": fb_n, "static_delta_fallback_bytes": fb_b,
            "static_delta_total": parts + fb_b,
            "pull_objects": len(new), "pull_bytes": sum(new.values()),
            "full_new_bytes": reachable_bytes(o, c2),
        }
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.update_sizes", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tars", nargs="+", help="OLD NEW pairs")
    ap.add_argument("--work", default=tempfile.gettempdir())
    a = ap.parse_args(argv)
    if len(a.tars) % 2:
        ap.error("give OLD NEW pairs")
    for old, new in zip(a.tars[::2], a.tars[1::2], strict=True):
        r = measure(old, new, a.work)
        r["bundle_vs_delta"] = round(r["gitree_bundle"] / r["static_delta_total"], 3)
        print(json.dumps(r), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
