"""The Markdown report and PNG plots of one results document (results.json)."""

from __future__ import annotations

import json
import os
from typing import Any, Callable

PLOTS = ("bench-sizes.png", "bench-updates.png", "bench-ratios.png")

STORE_LABELS = {
    "tar": "tar (uncompressed)",
    "tar_zst": "tar.zst, each version alone",
    "gitree_loose": "gitree as imported (one pack per import, no deltas)",
    "gitree_packed": "gitree packed (git repack -a -d -f after each import)",
    "git_plain_loose": "plain git, loose objects",
    "git_plain_packed": "plain git, packed (repack -a -d -f)",
    "ostree_archive": "OSTree archive (ostree commit)",
    "ostree_bare_user": "OSTree bare-user (ostree commit)",
    "gitree_ostree_archive": "OSTree archive (gitree export-ostree)",
    "gitree_ostree_bare_user": "OSTree bare-user (gitree export-ostree)",
    "ostree_archive_cold": "OSTree archive, this version alone (ostree commit)",
    "gitree_ostree_archive_cold_reuse": "OSTree archive, this version alone (export-ostree --compression reuse)",
    "gitree_ostree_archive_cold_level6": "OSTree archive, this version alone (export-ostree --compression 6)",
}
UPDATE_LABELS = {
    "git_thin_pack": "git thin pack (pack-objects --thin B ^A)",
    "gitree_bundle": "gitree bundle create A..B",
    "ostree_new_objects": "OSTree new objects (object pull)",
    "ostree_static_delta": "OSTree static delta (superblock+parts+fallbacks)",
    "zstd_patch_from": "zstd --patch-from previous tar",
    "tar_zst": "full tar.zst of the new version",
}


def mib(n: float | None) -> str:
    return "–" if n is None else f"{n / 2**20:,.1f}"


def human(n: float | None) -> str:
    if n is None:
        return "–"
    return f"{n / 2**10:,.0f} KiB" if n < 2**20 else f"{n / 2**20:,.1f} MiB"


def tool(v: str) -> str:
    """A version as printed by the tool, trimmed: '*** Zstandard CLI (64-bit) v1.5.4, by ... ***' -> 'v1.5.4'."""
    import re
    if len(v.split()) == 1:
        return v
    m = re.search(r"v?\d+\.\d+(\.\d+)?", v)
    return m.group(0) if m else v


def why(v: Any) -> str | None:
    if isinstance(v, dict):
        for k in ("unavailable", "skipped"):
            if k in v:
                return f"{k}: {v[k]}"
    if v is None:
        return "not measured"
    return None


def cell(v: Any, fmt: Callable[[Any], str]) -> str:
    w = why(v)
    if w:
        return "n/a¹"
    try:
        return fmt(v)
    except (KeyError, TypeError):
        return "n/a¹"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out + [""]


def _val(v, key):
    return v[key] if not why(v) and isinstance(v, dict) and v.get(key) is not None else None


def markdown(r: dict, plots_prefix: str = "") -> str:
    V = r["versions"]
    steps = [f"{a}→{b}" for a, b in zip(V, V[1:], strict=False)]
    L: list[str] = []
    L += [f"# gitree benchmarks: git vs OSTree on real root filesystems ({r['series']} series)", ""]
    L += [f"Run {r['started']} – {r['finished']} (UTC). Command: `{r['command']}`", ""]
    L += summary(r)
    L += ["## How to reproduce", "",
          "As root (mmdebstrap --mode=root, a tmpfs for the work directory), from a checkout with "
          "`pip install -e .[bench]`:", "",
          "```", r["command"].replace(" --no-profile", ""), "```", "",
          "The corpus tars are built once by mmdebstrap and cached (default ~/.cache/gitree-bench, "
          "--corpus DIR) with a manifest of their sha256 and of each suite's InRelease; with the same archive "
          "state the tars are byte-identical (SOURCE_DATE_EPOCH is fixed). deb.debian.org moves on, so to rebuild "
          "exactly the same corpus later use `--snapshot STAMP` (snapshot.debian.org) or keep the cache. "
          "Every repository, checkout and compressed file is written to a fresh tmpfs; each version's tar is "
          "read into the page cache first. Each command is timed once, except the three checkouts (ostree "
          "checkout, gitree checkout DIR and --tar): they run three rounds in turn and each keeps its fastest, "
          "since a checkout is mostly system time, which varies from one minute to the next on a VM.", ""]
    m, t = r["machine"], r["tools"]
    L += ["## Machine, tools, disks", ""]
    L += [f"- CPU: {m['cpu_model']}, {m['cores']} cores; RAM {m['ram_gib']} GiB; kernel {m['kernel']}; {m['os']}"]
    L += ["- Tools: " + ", ".join(f"{k} {tool(v) if k != 'gitree_source' else v}" for k, v in t.items())]
    for what, fs in r["disks"].items():
        L += [f"- {what}: `{fs['path']}` on {fs['fstype']} ({fs['device']}, mounted at {fs['mount']})"]
    s = r["settings"]
    L += [f"- Settings: git repack --window={s['repack_window']} --depth={s['repack_depth']} (as `gitree gc`); "
          f"zstd -{s['zstd_level']} (--long=27 for tar.zst, --long=31 for --patch-from, -T2); "
          f"SOURCE_DATE_EPOCH={s['source_date_epoch']}; groups: {', '.join(s['groups'])}",
          f"- gitree export-ostree: {s['export_ostree']}; gitree bundle: {s['bundle']}",
          f"- gitree's Python modules: {s.get('gitree_bytecode', 'not compiled before the run')}", ""]

    L += ["## Corpus", ""]
    rows = []
    for c in r["corpus"]:
        kern = ", ".join(f"{k} {v}" for k, v in c.get("key_packages", {}).items()
                         if k.startswith("linux-image-") and k != "linux-image-amd64") or "–"
        libc = c.get("key_packages", {}).get("libc6", "–")
        rows.append([c["name"], c["description"], str(c.get("packages", "")), mib(c.get("bytes")), kern, libc,
                     (c.get("sha256") or "")[:12], c.get("error") or "ok"])
    L += table(["version", "contents", "packages", "tar MiB", "kernel", "libc6", "tar sha256", "status"], rows)
    L += ["Suites (InRelease Date at build time): " + "; ".join(
        sorted({f"{s} {d.get('date')}" for c in r["corpus"] for s, d in c.get("suites", {}).items()})), ""]

    L += ["## Targets", ""]
    rows = []
    for tg in r["targets"]:
        met = {True: "**met**", False: "**missed**", None: "not checked"}[tg["met"]]
        if tg["target"] == "archive_size_reuse_and_level6" and tg.get("per_version"):
            got = "; ".join(f"{p['version']}: OSTree {mib(p['ostree_du'])} MiB, reuse {mib(p['reuse_du'])} MiB "
                            f"({p['reuse_ratio']}x), level 6 {mib(p['level6_du'])} MiB ({p['level6_ratio']}x)"
                            for p in tg["per_version"])
        elif "worst" in tg and "ratio" in tg["worst"]:
            got = f"{tg.get('metric', 'wall')}: worst {tg['worst']['ratio']}x " \
                  f"({tg['worst'].get('version') or tg['worst'].get('step')})"
            if "per_version" in tg:
                got += "; " + ", ".join(f"{k} {v}x" for k, v in tg["per_version"].items())
            if "per_step" in tg:
                got += "; " + ", ".join(f"{p['step']} {p['ratio']}x" for p in tg["per_step"])
        elif "ratio" in tg:
            got = f"{tg['ratio']}x ({mib(tg['gitree_packed_du'])} vs {mib(tg['ostree_archive_du'])} MiB)"
        elif "peak_rss_mib" in tg:
            got = f"{tg['peak_rss_mib']:.0f} MiB ({tg.get('version', 'whole series')})"
            if "packed_du" in tg:
                got += f", packed {mib(tg['packed_du'])} MiB"
        else:
            got = tg.get("why", "")
        rows.append([tg.get("description") or tg["target"], f"{tg['limit']}", got, met])
    L += table(["target", "limit", "measured", "result"], rows)

    L += ["## Repository size after each version", "",
          "du (allocated blocks, on the work disk above) in MiB; apparent bytes and object counts below.", ""]
    if plots_prefix is not None:
        L += [f"![size per version]({plots_prefix}bench-sizes.png)", ""]
    rows = [[STORE_LABELS[k]] + [cell(v, lambda v: mib(v["du_bytes"])) for v in vals]
            for k, vals in r["sizes"].items()]
    L += table(["store (du MiB)"] + V, rows)
    rows = [[STORE_LABELS[k]] + [cell(v, lambda v: f"{mib(v['apparent_bytes'])} / "
                                            f"{v['objects'] if v['objects'] is not None else '–'}")
                                 for v in vals] for k, vals in r["sizes"].items()]
    L += table(["store (apparent MiB / objects)"] + V, rows)
    L += ["Whole series, final state (gitree and plain git after `git repack -a -d -f`):", ""]
    rows = [[k, cell(v, lambda v: mib(v["du_bytes"])), cell(v, lambda v: mib(v["apparent_bytes"])),
             cell(v, lambda v: str(v["objects"]))] for k, v in r["series_sizes"].items()]
    L += table(["store", "du MiB", "apparent MiB", "objects"], rows)

    L += ["## Side tables (meta/ trees and .gitree blobs)", "",
          "On-disk bytes of every reachable object under meta/ (compressed, deltified in packs), as a share of "
          "all reachable object bytes and of the repository's du.", ""]
    rows = []
    for k in ("gitree_loose", "gitree_packed"):
        rows += [[f"{k} {V[i]}", cell(v, lambda v: f"{v['meta_disk_bytes'] / 1024:,.0f}"),
                  cell(v, lambda v: str(v["meta_objects"])), cell(v, lambda v: f"{v['meta_percent_of_objects']}%"),
                  cell(v, lambda v: f"{v['meta_percent_of_du']}%")] for i, v in enumerate(r["side_tables"][k])]
    f = r["side_tables"]["final"]
    rows.append(["packed, whole series, after repack -f", cell(f, lambda v: f"{v['meta_disk_bytes'] / 1024:,.0f}"),
                 cell(f, lambda v: str(v["meta_objects"])), cell(f, lambda v: f"{v['meta_percent_of_objects']}%"),
                 cell(f, lambda v: f"{v['meta_percent_of_du']}%")])
    L += table(["repository, version", "meta KiB", "meta objects", "% of objects", "% of du"], rows)

    L += ["gitree export-ostree keeps a cache beside the git repository's objects (gitree/ostree-cache/records: "
          "git trees and blobs to OSTree checksums, authenticated). Its size, not counted above, after each "
          "version (the exports' repository):", ""]
    L += table(["export cache"] + V, [["MiB on disk / records"] + [
        cell(c, lambda c: f"{mib(c['disk_bytes'])} / {c.get('records', c.get('objects'))}")
        for c in r["export_cache"]]])

    L += ["## What plain git drops", "",
          "Plain git stores content only. Counted from each tar: everything below is lost by `git add -A` "
          "(hard links are stored as separate files; modes only as 644/755; empty directories vanish).", ""]
    keys = [k for k in (r["git_plain_drops"][0] or {}) if not why(r["git_plain_drops"][0])]
    rows = [[k] + [cell(d, lambda d, k=k: str(d[k])) for d in r["git_plain_drops"]] for k in keys]
    L += table(["tar entries that carry"] + V, rows) if rows else ["(not measured)", ""]

    L += ["## OSTree repositories: gitree export-ostree vs ostree commit", "",
          "Objects other than commits compared by name and size after each version.", ""]
    rows = []
    for mode, vals in r["ostree_agreement"].items():
        for i, a in enumerate(vals):
            w = why(a)
            if w:
                rows.append([mode, V[i], w, "", "", ""])
            else:
                rows.append([mode, V[i], "yes" if a["agree"] else "**NO**",
                             f"{a['objects_ostree']} / {a['objects_gitree']}",
                             f"{a['only_in_ostree']} / {a['only_in_gitree']} / {a['same_objects_different_bytes']}",
                             f"{mib(a['content_bytes_ostree'])} / {mib(a['content_bytes_gitree'])}"])
    L += table(["mode", "version", "agree", "objects ostree / gitree",
                "only ostree / only gitree / differing bytes", "MiB ostree / gitree"], rows)

    L += ["## Update size per step", ""]
    if plots_prefix is not None:
        L += [f"![update size per step]({plots_prefix}bench-updates.png)", ""]
    rows = []
    for k, vals in r["updates"].items():
        rows.append([UPDATE_LABELS[k]] + [cell(v, lambda v: mib(v.get("bytes", v.get("transfer_bytes"))))
                                          for v in vals])
    L += table(["update (MiB)"] + steps, rows)
    rows = [[s, cell(d, lambda d: mib(d["superblock_and_parts_bytes"])), cell(d, lambda d: str(d["parts"])),
             cell(d, lambda d: mib(d["fallback_bytes"])), cell(d, lambda d: str(d["fallback_objects"])),
             cell(d, lambda d: f"{d['time']['wall_s']:.1f}")]
            for s, d in zip(steps, r["updates"]["ostree_static_delta"], strict=True)]
    L += ["Static deltas in detail:", ""]
    L += table(["step", "superblock+parts MiB", "parts", "fallback MiB", "fallback objects", "generate s"], rows)
    L += ["Full (from nothing) for each version:", ""]
    rows = [[k] + [cell(v, lambda v: mib(v.get("bytes", v.get("transfer_bytes")))) for v in vals]
            for k, vals in r["full_updates"].items()]
    L += table(["full (MiB)"] + V, rows)

    L += ["## Time and memory", "",
          "Wall seconds / CPU seconds (user+sys of the process tree, from wait4) / peak RSS MiB (ru_maxrss), "
          "of the command alone: a small spawner (benchmarks/measure.py) starts it, so no figure counts the "
          "benchmark's own process.", ""]
    rows = [[op] + [cell(v, lambda v: f"{v['wall_s']:.1f} / {v['cpu_s']:.1f} / {v['peak_rss_mib']:.0f}")
                    for v in vals] for op, vals in r["times"].items()]
    L += table(["operation"] + V, rows)
    L += ["Ratios of each gitree figure to its OSTree (or git) counterpart measured back to back (wall; cpu):", ""]
    if plots_prefix is not None:
        L += [f"![time ratios]({plots_prefix}bench-ratios.png)", ""]
    rows = [[k] + [cell(v, lambda v: f"{v['wall']} ; {v['cpu']}") for v in vals] for k, vals in r["ratios"].items()]
    L += table(["ratio"] + V, rows)

    if r.get("profiles"):
        L += ["## Profiles of missed targets", ""]
        for op, p in r["profiles"].items():
            if why(p):
                L += [f"{op}: {why(p)}", ""]
                continue
            L += [f"`{op}` of {p['version']} into an empty repository, cProfile of the main thread (worker "
                  f"threads that hash and compress show as waits), by cumulative time:", "", "```"]
            L += p["top_cumulative"] + ["```", "", "by own time:", "", "```"] + p.get("top_tottime", []) + ["```", ""]

    notes = sorted({f"{why(v)}" for tab in (r["sizes"], r["times"], r["updates"], r["full_updates"], r["ratios"])
                    for vals in tab.values() for v in vals if why(v)})
    if notes or r["notes"]:
        L += ["## Not measured", "", "¹ n/a cells, with the reason recorded in results.json:", ""]
        L += [f"- {n}" for n in notes] + [f"- {n}" for n in r["notes"]] + [""]
    return "\n".join(L)


def summary(r: dict) -> list[str]:
    """The headline numbers, computed from the tables below."""
    V = r["versions"]
    L = ["## Summary", ""]
    ss = r["series_sizes"]
    gp, oa, gl = ss.get("gitree_packed_final"), ss.get("ostree_archive"), r["sizes"]["gitree_loose"][-1]
    pg = ss.get("git_plain_packed_final")
    if not why(gp) and not why(oa):
        L.append(f"- Whole series ({len(V)} versions): gitree packed {mib(gp['du_bytes'])} MiB, OSTree archive "
                 f"{mib(oa['du_bytes'])} MiB ({gp['du_bytes'] / oa['du_bytes']:.2f}x)"
                 + (f", gitree as imported {mib(gl['du_bytes'])} MiB" if not why(gl) else "")
                 + (f", plain git packed {mib(pg['du_bytes'])} MiB" if not why(pg) else "") + ".")
    st = r["side_tables"].get("final")
    if not why(st):
        L.append(f"- Side tables (meta/): {human(st['meta_disk_bytes'])}, {st['meta_percent_of_objects']}% of "
                 f"the packed repository's object bytes.")
    thin, delta = r["updates"]["git_thin_pack"], r["updates"]["ostree_static_delta"]
    pairs = [(a["bytes"], b["transfer_bytes"]) for a, b in zip(thin, delta, strict=True) if not why(a) and not why(b)]
    if pairs:
        L.append(f"- Updates over {len(pairs)} steps: git thin packs {mib(sum(p[0] for p in pairs))} MiB in all, "
                 f"OSTree static deltas with fallbacks {mib(sum(p[1] for p in pairs))} MiB.")
    met = [t for t in r["targets"] if t["met"] is True]
    missed = [t for t in r["targets"] if t["met"] is False]
    unchecked = [t for t in r["targets"] if t["met"] is None]
    L.append(f"- Targets: {len(met)} met, {len(missed)} missed, {len(unchecked)} not checked "
             f"({', '.join(t['target'] for t in unchecked) or 'none'}).")
    ag = [a for vals in r["ostree_agreement"].values() for a in vals if not why(a)]
    if ag:
        bad = [a for a in ag if not a["agree"]]
        L.append("- OSTree repositories written by gitree export-ostree and by ostree commit: "
                 + ("identical content objects in every version and mode." if not bad else
                    f"**differ** in {len(bad)} of {len(ag)} comparisons (see below)."))
    return L + [""]


def plots(r: dict, out_dir: str) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    V = r["versions"]
    written = []

    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=80)
    for k, vals in r["sizes"].items():
        ys = [_val(v, "du_bytes") for v in vals]
        if k == "tar" or all(y is None for y in ys):
            continue
        label = STORE_LABELS[k]
        if k == "tar_zst":  # as a store: every version's tar.zst kept so far
            ys = [None if None in ys[:j + 1] else sum(ys[:j + 1]) for j in range(len(ys))]
            label = "tar.zst of every version so far"
        style = "--" if k.startswith("gitree_ostree") else "-"
        ax.plot(V, [None if y is None else y / 2**20 for y in ys], style, marker="o", label=label)
    ax.set_ylabel("MiB on disk (du)")
    ax.set_ylim(bottom=0)
    ax.set_title("Repository size after each version")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    p = os.path.join(out_dir, "bench-sizes.png")
    fig.savefig(p)
    plt.close(fig)
    written.append(p)

    steps = [f"{a}→{b}" for a, b in zip(V, V[1:], strict=False)]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=80)
    kinds = list(r["updates"])
    width = 0.8 / max(1, len(kinds))
    for j, k in enumerate(kinds):
        ys = [(_val(v, "bytes") or _val(v, "transfer_bytes") or 0) / 2**20 for v in r["updates"][k]]
        ax.bar([x + j * width for x in range(len(steps))], ys, width, label=UPDATE_LABELS[k])
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(steps))], steps)
    ax.set_yscale("log")
    ax.set_ylabel("MiB to transfer")
    ax.set_title("Update size per step")
    ax.legend(fontsize=7)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    p = os.path.join(out_dir, "bench-updates.png")
    fig.savefig(p)
    plt.close(fig)
    written.append(p)

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=80)
    keys = list(r["ratios"])
    width = 0.8 / max(1, len(keys))
    limits = {"import_vs_ostree_commit": 0.5, "import_vs_git_add_commit": 1.0,
              "export_cold_vs_ostree_commit": 0.6, "export_incremental_vs_cold": 0.1}
    for j, k in enumerate(keys):
        ys = [_val(v, "wall") or 0 for v in r["ratios"][k]]
        lab = k + (f" (target ≤{limits[k]})" if k in limits else "")
        ax.bar([x + j * width for x in range(len(V))], ys, width, label=lab)
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(V))], V)
    ax.set_ylabel("gitree wall time / counterpart")
    ax.set_title("Time ratios (back to back, same run)")
    ax.legend(fontsize=7)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    p = os.path.join(out_dir, "bench-ratios.png")
    fig.savefig(p)
    plt.close(fig)
    written.append(p)
    return written


def write(r: dict, out_dir: str, log: Callable[[str], None] = print) -> None:
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write(markdown(r))
    try:
        plots(r, out_dir)
    except ImportError as e:
        log(f"plots not written: {e} (pip install matplotlib, or the project's [bench] extra)")


def main(argv: list[str] | None = None) -> int:
    """`python -m benchmarks.report RESULTS.json OUT_DIR`: re-render a report from saved results."""
    import sys
    args = argv if argv is not None else sys.argv[1:]
    with open(args[0]) as f:
        r = json.load(f)
    write(r, args[1])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
