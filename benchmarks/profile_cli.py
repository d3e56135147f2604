"""`python -m benchmarks.profile_cli OUT.prof ARGS...`: run one gitree command under cProfile.

gitree's own entry point runs the command in a worker thread (for a large stack), which cProfile does not see;
this calls the click command group on the main thread instead. Worker threads that hash and compress are still
outside the profile: their cost shows as time the main thread waits.
"""

from __future__ import annotations

import cProfile
import sys

from gitree.cli import cli


def main() -> int:
    out, args = sys.argv[1], sys.argv[2:]
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 20000))
    prof = cProfile.Profile()
    prof.enable()
    try:
        cli.main(args=args, prog_name="gitree", standalone_mode=False)
    finally:
        prof.disable()
        prof.dump_stats(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
