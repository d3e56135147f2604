"""The benchmark suite end to end on the quick series: every metric is produced (its value is not checked)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from benchmarks import report, run

pytestmark = [pytest.mark.slow, pytest.mark.root]


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("mmdebstrap --mode=root and the tmpfs work directory need root")
    out = tmp_path_factory.mktemp("bench-out")
    r = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--out", str(out), "--no-profile"],
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    with open(out / "results.json") as f:
        return out, json.load(f)


def _produced(v) -> bool:
    """A metric is produced when it has a value, or says why it could not have one; None means forgotten."""
    return v is not None and not (isinstance(v, dict) and "skipped" in v)


def test_every_metric_present(quick_results):
    _, r = quick_results
    versions = r["versions"]
    assert len(versions) == 3
    for key in ("machine", "tools", "disks", "settings", "corpus", "sizes", "series_sizes", "side_tables",
                "git_plain_drops", "ostree_agreement", "export_cache", "updates", "full_updates", "times",
                "ratios", "targets", "profiles", "commits", "notes"):
        assert key in r, key
    for key in ("cpu_model", "cores", "ram_gib", "kernel"):
        assert key in r["machine"]
    for key in ("ostree", "git", "pygit2", "python", "zstd"):
        assert key in r["tools"]
    per_version = [("sizes", run.SIZE_STORES), ("times", run.TIME_OPS), ("ratios", tuple(run.RATIOS)),
                   ("full_updates", run.FULL_KINDS)]
    for table, keys in per_version:
        assert set(r[table]) == set(keys), table
        for k in keys:
            assert len(r[table][k]) == len(versions), (table, k)
            assert all(_produced(v) for v in r[table][k]), (table, k, r[table][k])
    assert set(r["updates"]) == set(run.UPDATE_KINDS)
    for k in run.UPDATE_KINDS:
        assert len(r["updates"][k]) == len(versions) - 1, k
        assert all(_produced(v) for v in r["updates"][k]), (k, r["updates"][k])
    assert set(r["series_sizes"]) == set(run.SERIES_KEYS)
    assert all(_produced(v) for v in r["series_sizes"].values())
    for k in ("gitree_loose", "gitree_packed"):
        assert all(_produced(v) for v in r["side_tables"][k])
    assert _produced(r["side_tables"]["final"])
    for mode in ("archive", "bare-user"):
        assert all(_produced(v) for v in r["ostree_agreement"][mode])
    assert all(_produced(v) for v in r["git_plain_drops"] + r["export_cache"])
    names = {t["target"] for t in r["targets"]}
    assert names == {"import_cpu_vs_ostree_commit", "import_vs_git_add_commit", "export_cold_cpu_vs_ostree_commit",
                     "export_cold_wall_vs_ostree_commit", "export_incremental_vs_cold",
                     "export_bare_user_cold_vs_ostree_commit", "checkout_dir_vs_ostree_checkout",
                     "archive_size_reuse_and_level6", "gitree_gc_peak_rss", "packed_vs_ostree_archive",
                     "git_thin_pack_vs_static_delta", "gitree_bundle_vs_static_delta", "gitree_import_peak_rss",
                     "gitree_export_archive_cold_peak_rss"}
    sizes = next(t for t in r["targets"] if t["target"] == "archive_size_reuse_and_level6")
    assert len(sizes["per_version"]) == len(versions)
    for t in r["targets"]:
        assert t["met"] in (True, False, None)
        assert t["met"] is not None or t.get("why"), t


def test_report_and_plots_written(quick_results):
    out, r = quick_results
    text = (out / "report.md").read_text()
    assert "## Targets" in text and "## Update size per step" in text
    for name in report.PLOTS:
        assert (out / name).stat().st_size > 1000, name


def test_floors_measure_every_figure_on_the_quick_series(quick_results, tmp_path):
    """`python -m benchmarks.floors` on q1 and q2 (built by the quick run): every figure measured, each
    allowance and floor derived from them, and the report names both targets."""
    from benchmarks import floors
    from benchmarks.corpus import DEFAULT_CACHE
    with open(os.path.join(DEFAULT_CACHE, "manifest.json")) as f:
        tars = {v["name"]: v["path"] for v in json.load(f).values() if not v.get("error")}
    out = tmp_path / "floors.json"
    r = subprocess.run([sys.executable, "-m", "benchmarks.floors", tars["q1"], tars["q2"], "--rounds", "1",
                        "--json", str(out)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    timed = [k for k, v in res.items() if isinstance(v, dict) and "wall_s" in v]
    assert len(timed) == 12
    assert all(res[k]["wall_s"] > 0 and res[k]["cpu_s"] > 0 for k in timed)
    assert res["inflate_new_blobs"]["blobs"] > 100 and res["inflate_new_blobs"]["not_whole_in_a_pack"] == 0
    d = res["derived"]
    assert d["update_allowance"] == round(0.05 * res["cli_archive_cold"]["wall_s"], 3)
    assert d["bare_user_floor"] > res["start_gitree_export"]["wall_s"]
    assert d == floors.derive(res)
    assert "export after an update: allowed" in r.stdout and "bare-user cold export: allowed" in r.stdout
