"""The benchmark corpus: a reproducible series of real Debian root filesystems as tars, built by mmdebstrap.

Each version is described by a `VersionSpec` (suite, mirror lines, extra packages). Its cache key hashes the
spec, the mirror URLs and the mmdebstrap version, so a changed spec never reuses a stale tar. Built tars are
kept in a cache directory (default ~/.cache/gitree-bench) with a manifest.json that records, per tar, its
sha256, size, the package set it holds (from the tar's dpkg status) and the Date and sha256 of every suite's
InRelease file it was built from: that is what makes a run on a live mirror traceable, and a run on a
snapshot mirror (--snapshot) reproducible.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from typing import Callable

DEFAULT_CACHE = os.path.expanduser(os.environ.get("GITREE_BENCH_CACHE", "~/.cache/gitree-bench"))
# Every file in every tar gets this mtime (mmdebstrap clamps to SOURCE_DATE_EPOCH): 2025-05-20 00:00 UTC,
# the snapshot date this machine's apt sources name.
SOURCE_DATE_EPOCH = 1747699200
DEFAULT_SNAPSHOT = None  # e.g. "20250520T000000Z" to build from snapshot.debian.org
BOOTABLE = ("systemd-sysv", "linux-image-amd64", "initramfs-tools", "openssh-server")


@dataclass(frozen=True)
class Mirrors:
    """Archive base URLs: the live mirrors by default, or snapshot.debian.org at a fixed time."""

    debian: str = "http://deb.debian.org/debian"
    security: str = "http://deb.debian.org/debian-security"

    @classmethod
    def snapshot(cls, stamp: str) -> "Mirrors":
        return cls(f"http://snapshot.debian.org/archive/debian/{stamp}",
                   f"http://snapshot.debian.org/archive/debian-security/{stamp}")

    def base_for(self, suite: str) -> str:
        return self.security if suite.endswith("-security") else self.debian


@dataclass(frozen=True)
class VersionSpec:
    name: str
    description: str
    suite: str                      # the release mmdebstrap is asked for
    suites: tuple[str, ...]         # every archive suite in sources.list (the first is `suite`)
    include: tuple[str, ...] = ()   # extra packages; "pkg/release" selects a suite for one package
    variant: str = "minbase"

    def mirror_lines(self, mirrors: Mirrors) -> list[str]:
        return [f"deb {mirrors.base_for(s)} {s} main" for s in self.suites]

    def key(self, mirrors: Mirrors, mmdebstrap_version: str) -> str:
        blob = json.dumps([asdict(self), self.mirror_lines(mirrors), mmdebstrap_version, SOURCE_DATE_EPOCH],
                          sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


_BOOKWORM_ALL = ("bookworm", "bookworm-updates", "bookworm-security")

FULL_SERIES: tuple[VersionSpec, ...] = (
    VersionSpec("v1", "bookworm minbase, plain suite", "bookworm", ("bookworm",)),
    VersionSpec("v2", "v1 + bookworm-updates + bookworm-security", "bookworm", _BOOKWORM_ALL),
    VersionSpec("v3", "v2 + bootable set (systemd-sysv, linux-image-amd64, initramfs-tools, openssh-server)",
                "bookworm", _BOOKWORM_ALL, BOOTABLE),
    VersionSpec("v4", "v3 with bookworm-backports' kernel", "bookworm",
                _BOOKWORM_ALL + ("bookworm-backports",),
                tuple(p if p != "linux-image-amd64" else "linux-image-amd64/bookworm-backports"
                      for p in BOOTABLE)),
    VersionSpec("v5", "the bootable set on trixie (major release upgrade)", "trixie",
                ("trixie", "trixie-updates", "trixie-security"), BOOTABLE),
)

# Small and fast, for CI: every metric is produced, on trees ~25-35 MiB (the `extract` variant unpacks the
# listed packages and their dependencies without running maintainer scripts). Static deltas (xz) dominate a run's
# time, so the quick trees are kept a fifth of a minbase.
_QUICK_BASE = ("base-files", "base-passwd", "bash", "tzdata", "zlib1g")
QUICK_SERIES: tuple[VersionSpec, ...] = (
    VersionSpec("q1", "bookworm extract of base-files, bash, tzdata, zlib1g (+ deps), plain suite", "bookworm",
                ("bookworm",), _QUICK_BASE, variant="extract"),
    VersionSpec("q2", "q1 + bookworm-updates + bookworm-security", "bookworm", _BOOKWORM_ALL, _QUICK_BASE,
                variant="extract"),
    VersionSpec("q3", "q2 + openssl", "bookworm", _BOOKWORM_ALL, _QUICK_BASE + ("openssl",), variant="extract"),
)


@dataclass
class CorpusTar:
    """One built version of the corpus, or why it could not be built."""

    name: str
    description: str
    key: str
    path: str | None = None
    sha256: str | None = None
    bytes: int = 0
    build_seconds: float | None = None
    cached: bool = False
    suites: dict = field(default_factory=dict)      # suite -> {"date": ..., "inrelease_sha256": ...}
    packages: int = 0
    key_packages: dict = field(default_factory=dict)  # a few package versions worth showing in the report
    mirror_lines: list = field(default_factory=list)
    raw_sha256: str | None = None                   # the mmdebstrap tar, before /dev was emptied
    raw_bytes: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.path is not None


def mmdebstrap_version() -> str:
    out = subprocess.run(["mmdebstrap", "--version"], capture_output=True, text=True, check=True).stdout
    return out.strip()


def probe_suite(base: str, suite: str, timeout: float = 30) -> dict:
    """Fetch a suite's InRelease: its Date and sha256 identify exactly which archive state was used."""
    url = f"{base}/dists/{suite}/InRelease"
    with urllib.request.urlopen(url, timeout=timeout) as r:
        data = r.read()
    date = next((ln.split(":", 1)[1].strip() for ln in data.decode("utf-8", "replace").splitlines()
                 if ln.startswith("Date:")), None)
    return {"url": url, "date": date, "inrelease_sha256": hashlib.sha256(data).hexdigest()}


_KEY_PACKAGES = ("libc6", "openssl", "libssl3", "libssl3t64", "systemd", "openssh-server", "bash", "apt")


def dpkg_status_summary(tar_path: str) -> tuple[int, dict]:
    """Count installed packages and pick a few versions (incl. kernels) from the tar's dpkg status."""
    with tarfile.open(tar_path) as tf:
        member = None
        for name in ("./var/lib/dpkg/status", "var/lib/dpkg/status"):
            try:
                member = tf.getmember(name)
                break
            except KeyError:
                continue
        if member is None:
            return 0, {}
        text = tf.extractfile(member).read().decode("utf-8", "replace")
    count, picked = 0, {}
    for para in text.split("\n\n"):
        fields = dict(ln.split(": ", 1) for ln in para.splitlines() if ": " in ln and not ln.startswith(" "))
        if "install ok installed" not in fields.get("Status", ""):
            continue
        count += 1
        pkg = fields.get("Package", "")
        if pkg in _KEY_PACKAGES or pkg.startswith("linux-image-"):
            picked[pkg] = fields.get("Version", "")
    return count, dict(sorted(picked.items()))


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class Corpus:
    """Builds and caches the tars of a series."""

    def __init__(self, cache_dir: str = DEFAULT_CACHE, mirrors: Mirrors | None = None,
                 log: Callable[[str], None] = print):
        self.cache_dir = cache_dir
        self.mirrors = mirrors or Mirrors()
        self.log = log
        os.makedirs(cache_dir, exist_ok=True)
        self.manifest_path = os.path.join(cache_dir, "manifest.json")
        self._mmdebstrap = mmdebstrap_version()

    def _manifest(self) -> dict:
        try:
            with open(self.manifest_path) as f:
                return json.load(f)
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def _record(self, ct: CorpusTar) -> None:
        m = self._manifest()
        m[ct.key] = asdict(ct)
        tmp = self.manifest_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(m, f, indent=2, sort_keys=True)
        os.replace(tmp, self.manifest_path)

    def ensure(self, spec: VersionSpec) -> CorpusTar:
        """The tar of `spec`: from the cache, or built by mmdebstrap, then with /dev's contents removed.

        OSTree cannot store device nodes (`ostree commit` fails on /dev/console), and OSTree systems ship
        an empty /dev, so every store gets the tree without them; the raw mmdebstrap tar is kept beside it.
        """
        key = spec.key(self.mirrors, self._mmdebstrap)
        raw = os.path.join(self.cache_dir, f"{spec.name}-{key}.tar")
        path = os.path.join(self.cache_dir, f"{spec.name}-{key}-nodev.tar")
        known = self._manifest().get(key)
        if known and known.get("error") is None and os.path.exists(path) \
                and os.path.getsize(path) == known.get("bytes") and known.get("path") == path:
            ct = CorpusTar(**known)
            ct.cached = True
            return ct
        ct = CorpusTar(spec.name, spec.description, key, mirror_lines=spec.mirror_lines(self.mirrors))
        if known and known.get("error") is None and os.path.exists(raw) \
                and os.path.getsize(raw) == known.get("raw_bytes", known.get("bytes")):
            ct.suites, ct.build_seconds = known.get("suites", {}), known.get("build_seconds")
            ct.raw_sha256 = known.get("raw_sha256", known.get("sha256"))
        elif not self._build_raw(spec, ct, raw):
            return ct
        ct.raw_bytes = os.path.getsize(raw)
        with open(raw, "rb") as src, open(path + ".part", "wb") as dst:
            r = subprocess.run(["mmtarfilter", "--path-exclude=/dev/*"], stdin=src, stdout=dst,
                               stderr=subprocess.PIPE, text=True)
        if r.returncode != 0:
            ct.error = f"mmtarfilter failed ({r.returncode}): {r.stderr.strip()[-300:]}"
            return ct
        os.replace(path + ".part", path)
        ct.path = path
        ct.bytes = os.path.getsize(path)
        ct.sha256 = sha256_file(path)
        ct.packages, ct.key_packages = dpkg_status_summary(path)
        self._record(ct)
        return ct

    def _build_raw(self, spec: VersionSpec, ct: CorpusTar, raw: str) -> bool:
        try:
            for s in spec.suites:
                ct.suites[s] = probe_suite(self.mirrors.base_for(s), s)
        except (urllib.error.URLError, OSError) as e:
            ct.error = f"suite unreachable: {e}"
            self.log(f"corpus {spec.name}: {ct.error}")
            return False
        cmd = ["mmdebstrap", f"--variant={spec.variant}", "--mode=root", "--format=tar", "--quiet"]
        if spec.include:
            cmd.append("--include=" + ",".join(spec.include))
        cmd += [spec.suite, raw + ".part"] + ct.mirror_lines
        env = dict(os.environ, SOURCE_DATE_EPOCH=str(SOURCE_DATE_EPOCH), LC_ALL="C.UTF-8")
        self.log(f"corpus {spec.name}: building ({spec.description})")
        t0 = time.monotonic()
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            tail = " | ".join((r.stderr or r.stdout).strip().splitlines()[-4:])
            ct.error = f"mmdebstrap failed ({r.returncode}): {tail}"
            self.log(f"corpus {spec.name}: {ct.error}")
            try:
                os.unlink(raw + ".part")
            except FileNotFoundError:
                pass
            return False
        os.replace(raw + ".part", raw)
        ct.build_seconds = round(time.monotonic() - t0, 1)
        ct.raw_sha256 = sha256_file(raw)
        self.log(f"corpus {spec.name}: built in {ct.build_seconds} s, {os.path.getsize(raw) / 2**20:.0f} MiB")
        return True

    def series(self, specs: tuple[VersionSpec, ...]) -> list[CorpusTar]:
        return [self.ensure(s) for s in specs]


def main(argv: list[str] | None = None) -> int:
    """`python -m benchmarks.corpus [--quick] [--corpus DIR] [--snapshot STAMP]`: build the corpus only."""
    import argparse
    p = argparse.ArgumentParser(prog="python -m benchmarks.corpus")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--corpus", default=DEFAULT_CACHE)
    p.add_argument("--snapshot", default=DEFAULT_SNAPSHOT)
    a = p.parse_args(argv)
    mirrors = Mirrors.snapshot(a.snapshot) if a.snapshot else Mirrors()
    corpus = Corpus(a.corpus, mirrors)
    for ct in corpus.series(QUICK_SERIES if a.quick else FULL_SERIES):
        print(json.dumps({k: v for k, v in asdict(ct).items() if k != "mirror_lines"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
