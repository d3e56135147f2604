"""`python -m benchmarks`: build (or reuse) the corpus, measure every store over it, write results and a report."""

from __future__ import annotations

import argparse
import os
import sys

from .corpus import DEFAULT_CACHE
from .run import GROUPS, run_benchmarks


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("--quick", action="store_true", help="the small series (3 versions), for CI")
    p.add_argument("--corpus", default=DEFAULT_CACHE, metavar="DIR",
                   help="where corpus tars are cached (default %(default)s, or $GITREE_BENCH_CACHE)")
    p.add_argument("--out", default="bench-out", metavar="DIR", help="results.json, report.md and plots")
    p.add_argument("--only", metavar="NAMES",
                   help=f"comma-separated groups to measure (dependencies added): {','.join(GROUPS)}")
    p.add_argument("--work", metavar="DIR",
                   help="scratch directory (default: a fresh tmpfs when root, else a temp directory)")
    p.add_argument("--snapshot", metavar="STAMP",
                   help="build the corpus from snapshot.debian.org at STAMP (e.g. 20250520T000000Z)")
    p.add_argument("--no-profile", action="store_true", help="do not profile a missed import target")
    a = p.parse_args(argv)
    only = None
    if a.only:
        only = {x.strip() for x in a.only.split(",") if x.strip()}
        bad = only - set(GROUPS)
        if bad:
            p.error(f"unknown group(s) {', '.join(sorted(bad))}; known: {', '.join(GROUPS)}")
    run_benchmarks(a.quick, os.path.abspath(a.corpus), os.path.abspath(a.out), only, a.work, a.snapshot,
                   profile=not a.no_profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
