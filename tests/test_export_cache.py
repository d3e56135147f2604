"""The OSTree export cache (gitree/exportcache.py) and the pack reader export copies deflate streams with.

The attacks of issue 9 point 1 (a planted cache makes export ship an older tree) against the real `ostree commit`
as the oracle: whatever is planted, copied or edited, the export equals `ostree commit` of the tree and fsck is clean.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import random
import struct
import subprocess
import zlib

import pygit2
import pytest
from helpers import last_line, run_gitree, warning_text
from test_ostree_bridge import build_t1, fresh_ostree, ostree, ostree_commit

from gitree import api
from gitree import exportcache as ec
from gitree.errors import CorruptObject
from gitree.packreader import PackSet, inflate_chunks, parse_entry_header, zlib_to_raw
from gitree.packwriter import pack_entry_header
from gitree.repo import Repo

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="ostree commit of arbitrary owners needs root")

SUDO_OLD = b"#!/bin/sh\necho old vulnerable sudo\n" * 50
SUDO_NEW = b"#!/bin/sh\necho fixed sudo\n" * 50


def _two_versions(work):
    """A repository with v1 (old sudo) exported to an archive repo, and v2 (new sudo) imported; the tree dir."""
    src = os.path.join(work, "tree")
    os.makedirs(src)
    build_t1(src)
    sudo = os.path.join(src, "bin", "sudo")
    with open(sudo, "wb") as f:
        f.write(SUDO_OLD)
    os.chmod(sudo, 0o4755)
    repo = os.path.join(work, "g.git")
    target = os.path.join(work, "o")
    api.init(repo)
    api.import_rootfs(repo, src, branch="os", timestamp=100, message="v1")
    api.export_ostree(repo, "os", target)
    with open(sudo, "wb") as f:
        f.write(SUDO_NEW)
    os.chmod(sudo, 0o4755)
    api.import_rootfs(repo, src, branch="os", timestamp=200, message="v2")
    return repo, target, src


def _want(work, src, mode="archive"):
    real = fresh_ostree(os.path.join(work, f"real-{mode}"), mode)
    c = ostree_commit(real, src, "os", 200, "v2")
    return ostree(f"--repo={real}", "ls", "-C", c, "/").split()[4:6]  # root dirtree, dirmeta


def _root(target, rev="os"):
    return ostree(f"--repo={target}", "ls", "-C", rev, "/").split()[4:6]


def _v1_root_and_v2_trees(repo, target):
    g = pygit2.Repository(repo)
    v2 = g.revparse_single("os").peel(pygit2.Commit)
    top = {e.name: e.id.raw for e in v2.tree}
    old_root = ostree(f"--repo={target}", "ls", "-C", "os", "/").split()[4:6]
    return top["rootfs"], top["meta"], old_root


def _old_style_key(*parts: bytes) -> bytes:
    h = hashlib.sha1()
    for p in parts:
        h.update(struct.pack(">I", len(p)))
        h.update(p)
    return h.digest()


def test_planted_cache_ref_is_ignored_and_deleted(work):
    """Issue 9 point 1: refs/gitree/ostree-cache mapping v2's root to v1's objects (as a bundle could plant it)."""
    repo, target, src = _two_versions(work)
    content, meta, (old_tree, old_meta) = _v1_root_and_v2_trees(repo, target)
    g = pygit2.Repository(repo)
    dirs = g.create_blob(_old_style_key(b"dir", b"full", content, meta) + bytes.fromhex(old_tree)
                         + bytes.fromhex(old_meta))
    tb = g.TreeBuilder()
    tb.insert("dirs", dirs, pygit2.enums.FileMode.BLOB)
    sig = pygit2.Signature("gitree", "gitree@localhost", 0, 0)
    cid = g.create_commit(None, sig, sig, "gitree OSTree export cache\n", tb.write(), [])
    # the attacker's route: a bundle naming that ref (refused or not by bundle apply, it must not matter)
    attacker = os.path.join(work, "attacker.git")
    subprocess.run(["git", "clone", "-q", "--bare", repo, attacker], check=True)
    pygit2.Repository(attacker).create_reference_direct("refs/gitree/ostree-cache", cid, True)
    bundle = os.path.join(work, "planted.bundle")
    try:
        api.bundle_create(attacker, "os", bundle, branch="refs/gitree/ostree-cache")
    except api.GitreeError:
        pass
    else:
        try:
            api.bundle_apply(repo, bundle)
        except api.GitreeError:
            pass
    g.create_reference_direct("refs/gitree/ostree-cache", cid, True)  # and planted directly, in any case
    r = api.export_ostree(repo, "os", target)
    assert "ignored and deleted refs/gitree/ostree-cache" in warning_text(r)
    assert pygit2.Repository(repo).references.get("refs/gitree/ostree-cache") is None
    assert _root(target) == _want(work, src) != [old_tree, old_meta]
    ostree(f"--repo={target}", "fsck")


def _plant(repo: str, key: bytes, value: bytes, mac: bytes) -> None:
    """Insert one record into the cache file, keeping it sorted (as an attacker with write access could)."""
    path = os.path.join(repo, *ec.CACHE_DIR, "records")
    data = open(path, "rb").read()
    recs = {data[i:i + ec.KEY_LEN]: data[i:i + ec.RECORD] for i in range(len(ec.HEADER), len(data), ec.RECORD)}
    recs[key] = key + value + mac
    with open(path, "wb") as f:
        f.write(ec.HEADER + b"".join(recs[k] for k in sorted(recs)))


@pytest.mark.parametrize("forgery", ["attacker-key", "random-mac", "copied-cache-without-key"])
def test_forged_records_cannot_make_export_ship_a_wrong_tree(work, forgery):
    repo, target, src = _two_versions(work)
    content, meta, (old_tree, old_meta) = _v1_root_and_v2_trees(repo, target)
    attacker_key = os.urandom(32)
    forged = {ec.record_key(ec.DIRTREE, b"full", content, meta): bytes.fromhex(old_tree),
              ec.record_key(ec.DIRMETA, b"full", content, meta): bytes.fromhex(old_meta)}
    for k, v in forged.items():
        mac = hmac.digest(attacker_key, ec.HEADER + k + v, "sha256")[:ec.MAC_LEN] if forgery != "random-mac" \
            else os.urandom(ec.MAC_LEN)
        _plant(repo, k, v, mac)
    if forgery == "copied-cache-without-key":
        # the whole directory arrives from elsewhere, its records made under a key this repository never had
        with open(os.path.join(repo, *ec.CACHE_DIR, "key"), "wb") as f:
            f.write(attacker_key)
        os.chmod(os.path.join(repo, *ec.CACHE_DIR, "key"), 0o644)  # not private: replaced by a new key
    r = api.export_ostree(repo, "os", target)
    err = warning_text(r)
    assert err.count("OSTree export cache") == 1, err
    assert _root(target) == _want(work, src) != [old_tree, old_meta]
    ostree(f"--repo={target}", "fsck")
    # the forged records were dropped and the cache rebuilt: the next export is silent and all cached
    r = api.export_ostree(repo, "os", os.path.join(work, "o2"))
    assert "OSTree export cache" not in warning_text(r)


def test_tampered_cache_file_is_detected_and_rebuilt(work):
    repo, target, src = _two_versions(work)
    path = os.path.join(repo, *ec.CACHE_DIR, "records")
    data = bytearray(open(path, "rb").read())
    assert len(data) > len(ec.HEADER) + 10 * ec.RECORD
    for i in range(len(ec.HEADER), len(data), ec.RECORD):  # flip one bit in every value
        data[i + ec.KEY_LEN] ^= 1
    open(path, "wb").write(data)
    fresh = os.path.join(work, "fresh")
    r = api.export_ostree(repo, "os", fresh)
    assert warning_text(r).count("fails its authentication") == 1
    assert _root(fresh) == _want(work, src)
    ostree(f"--repo={fresh}", "fsck")
    r = api.export_ostree(repo, "os", os.path.join(work, "fresh2"))
    assert "OSTree export cache" not in warning_text(r)
    # a file that is not a cache at all is dropped whole, with one line
    open(path, "wb").write(b"garbage" * 100)
    r = api.export_ostree(repo, "os", os.path.join(work, "fresh3"))
    assert warning_text(r).count("OSTree export cache") == 1
    assert _root(os.path.join(work, "fresh3")) == _want(work, src)


def test_record_keys_are_the_documented_hash():
    """A record's key is BLAKE2b-160 over the kind and each part, each preceded by its length (4 bytes, big
    endian): computed here from that definition, against record_key and a KeyMaker holding leading parts
    (a changed key would silently orphan every record of every existing cache)."""
    def reference(*parts: bytes) -> bytes:
        return hashlib.blake2b(b"".join(struct.pack(">I", len(p)) + p for p in parts), digest_size=20).digest()
    parts = (ec.FILE, b"header \x00\xff", bytes(range(20)), b"sparse", b"")
    assert ec.record_key(*parts) == reference(*parts)
    for cut in range(1, len(parts) + 1):
        assert ec.KeyMaker(*parts[:cut])(*parts[cut:]) == reference(*parts)
    make = ec.KeyMaker(ec.FILE, b"h")
    assert make(b"a") != make(b"b") and make(b"a") == reference(ec.FILE, b"h", b"a")   # a state is copied, not used up


def test_key_file_is_private_and_never_followed(work):
    repo = Repo.init(os.path.join(work, "g.git"))
    d = os.path.join(repo.path, *ec.CACHE_DIR)
    c = ec.ExportCache(repo.path, warn=lambda m: None)
    c.put(ec.record_key(ec.FILE, b"x"), b"\1" * 32)
    c.save()
    c.close()
    st = os.lstat(os.path.join(d, "key"))
    assert st.st_size == 32 and st.st_mode & 0o777 == 0o600
    assert os.stat(d).st_mode & 0o777 == 0o700
    # a key replaced by a symlink to some other file is not read through: a new key, old records dropped
    secret = os.path.join(work, "secret")
    open(secret, "wb").write(b"s" * 32)
    os.unlink(os.path.join(d, "key"))
    os.symlink(secret, os.path.join(d, "key"))
    msgs = []
    c = ec.ExportCache(repo.path, warn=msgs.append)
    assert c.get(ec.record_key(ec.FILE, b"x")) is None
    assert len(msgs) == 1 and not os.path.islink(os.path.join(d, "key"))
    assert open(secret, "rb").read() == b"s" * 32
    c.close()


def test_concurrent_saves_merge(work):
    repo = Repo.init(os.path.join(work, "g.git"))
    a = ec.ExportCache(repo.path, warn=pytest.fail)
    b = ec.ExportCache(repo.path, warn=pytest.fail)
    ka, kb = ec.record_key(ec.FILE, b"a"), ec.record_key(ec.FILE, b"b")
    a.put(ka, b"a" * 32)
    b.put(kb, b"b" * 32)
    a.save()
    b.save()
    c = ec.ExportCache(repo.path, warn=pytest.fail)
    assert (c.get(ka), c.get(kb)) == (b"a" * 32, b"b" * 32)
    for x in (a, b, c):
        x.close()


def test_save_merges_as_a_sorted_union(work, monkeypatch):
    """A save places each new record by bisection and copies the file's runs between them as bytes: the
    result is the sorted union (a new value replaces an old one of its key, a record that failed its MAC is
    dropped, the streamed records join in), whatever the chunk and record boundaries."""
    monkeypatch.setattr(ec, "COPY_RECORDS", 7)     # many chunk boundaries
    repo = Repo.init(os.path.join(work, "g.git"))
    rnd = random.Random(5)
    keys = [ec.record_key(ec.FILE, b"%d" % i) for i in range(600)]
    want = {}
    c = ec.ExportCache(repo.path, warn=pytest.fail)
    for k in keys[:400]:
        want[k] = bytes([rnd.randrange(256)]) * 32
        c.put(k, want[k])
    c.save()
    for rounds in range(3):
        c = ec.ExportCache(repo.path, warn=lambda m: None)
        for k in rnd.sample(keys, 60):   # new keys and replaced values
            want[k] = bytes([rnd.randrange(256)]) * 32
            c.put(k, want[k])
        more = sorted((k, b"m" * 32) for k in rnd.sample(keys[400:], 20) if k not in c.new)
        for k, v in more:
            want[k] = v
        if rounds == 1:   # a record that fails its MAC is dropped by the next save
            path = os.path.join(repo.path, *ec.CACHE_DIR, "records")
            data = bytearray(open(path, "rb").read())
            victim = rnd.randrange((len(data) - len(ec.HEADER)) // ec.RECORD)
            off = len(ec.HEADER) + victim * ec.RECORD
            vkey = bytes(data[off:off + ec.KEY_LEN])
            data[off + ec.KEY_LEN] ^= 1
            open(path, "wb").write(data)
            c._unload()
            if vkey not in c.new and vkey not in dict(more):
                assert c.get(vkey) is None and vkey in c.bad
                del want[vkey]
        c.save(iter(more), len(more))
        c.close()
        raw = open(os.path.join(repo.path, *ec.CACHE_DIR, "records"), "rb").read()[len(ec.HEADER):]
        got = [raw[i:i + ec.KEY_LEN] for i in range(0, len(raw), ec.RECORD)]
        assert got == sorted(want)
        c = ec.ExportCache(repo.path, warn=pytest.fail)
        assert {k: c.get(k) for k in want} == want
        c.close()


def test_save_over_an_unsorted_records_file_starts_over(work):
    """A records file gitree did not write (unsorted, duplicate keys, forged MACs) is not carried on by a save:
    lookups in it would miss for good. The save starts over with its own records, with one warning."""
    repo = Repo.init(os.path.join(work, "g.git"))
    c = ec.ExportCache(repo.path, warn=pytest.fail)
    c.put(ec.record_key(ec.FILE, b"first"), b"f" * 32)
    c.save()
    c.close()
    path = os.path.join(repo.path, *ec.CACHE_DIR, "records")
    rnd = random.Random(1)
    planted = [ec.record_key(ec.FILE, b"p%d" % rnd.randrange(50)) for _ in range(5000)]
    open(path, "wb").write(ec.HEADER + b"".join(k + rnd.randbytes(48) for k in planted))
    msgs = []
    c = ec.ExportCache(repo.path, warn=msgs.append)
    assert c.get(ec.record_key(ec.FILE, b"first")) is None
    want = {ec.record_key(ec.FILE, b"%d" % i): bytes([i]) * 32 for i in range(60)}
    for k, v in want.items():
        c.put(k, v)
    c.save()
    c.close()
    assert os.path.getsize(path) == len(ec.HEADER) + len(want) * ec.RECORD
    assert msgs == ["the OSTree export cache: its records file is not sorted by key; dropped records are rebuilt "
                    "by this export"]
    c = ec.ExportCache(repo.path, warn=pytest.fail)
    assert {k: c.get(k) for k in want} == want
    c.close()


def test_import_records_checksums_that_export_uses(work):
    """import-rootfs hashes as it writes; the export then writes every file without reading it (raw deflate)."""
    src = os.path.join(work, "tree")
    os.makedirs(src)
    build_t1(src)
    with open(os.path.join(src, "big.bin"), "wb") as f:
        f.write(os.urandom(1 << 20) + b"\0" * (3 << 20))
    repo = os.path.join(work, "g.git")
    api.init(repo)
    api.import_rootfs(repo, src, branch="b", timestamp=5, message="s")
    c = ec.ExportCache(repo, warn=pytest.fail)
    files = c.keys()
    assert len(files) == 6  # the six regular files of T1 plus big.bin, less the duplicate empty/none
    c.close()
    real = fresh_ostree(os.path.join(work, "real"), "archive")
    want = ostree_commit(real, src, "b", 5, "s")
    for mode in ("archive", "bare-user", "bare"):
        out = os.path.join(work, f"o-{mode}")
        assert api.export_ostree(repo, "b", out, mode=mode).checksum == want
        ostree(f"--repo={out}", "fsck")


@pytest.mark.parametrize("level", ["reuse", 1, 6, 9])
def test_compression_choices_give_the_same_commit(work, level):
    src = os.path.join(work, "tree")
    os.makedirs(src)
    build_t1(src)
    with open(os.path.join(src, "text"), "wb") as f:
        f.write(b"".join(b"line %d of a compressible file\n" % i for i in range(50000)))
    repo = os.path.join(work, "g.git")
    api.init(repo)
    api.import_rootfs(repo, src, branch="b", timestamp=5, message="s")
    real = fresh_ostree(os.path.join(work, "real"), "archive")
    want = ostree_commit(real, src, "b", 5, "s")
    out = os.path.join(work, "o")
    assert api.export_ostree(repo, "b", out, compression=level).checksum == want
    ostree(f"--repo={out}", "fsck")
    co = os.path.join(work, "co")
    ostree(f"--repo={out}", "checkout", "-U", "b", co)
    assert open(os.path.join(co, "text"), "rb").read() == open(os.path.join(src, "text"), "rb").read()
    bad = run_gitree("-C", repo, "export-ostree", "b", "--ostree-repo", out, "--compression", "11", check=False)
    assert bad.returncode != 0 and "--compression" in bad.stderr.decode()
    with pytest.raises(api.UsageError, match="compression"):
        api.export_ostree(repo, "b", out, compression=11)


def test_export_without_cached_checksums_hashes_the_pack_stream(work):
    """No cache at all (deleted): reuse inflates each pack entry once to hash it, and still copies raw deflate."""
    src = os.path.join(work, "tree")
    os.makedirs(src)
    build_t1(src)
    repo = os.path.join(work, "g.git")
    api.init(repo)
    api.import_rootfs(repo, src, branch="b", timestamp=5, message="s")
    import shutil
    shutil.rmtree(os.path.join(repo, "gitree"))
    real = fresh_ostree(os.path.join(work, "real"), "archive")
    out = os.path.join(work, "o")
    assert api.export_ostree(repo, "b", out).checksum == \
        ostree_commit(real, src, "b", 5, "s")
    ostree(f"--repo={out}", "fsck")


# ---------------------------------------------------------------------------------------------
# The pack reader, against packs written by git itself

def test_pack_reader_reads_whole_objects_and_refuses_deltas_and_damage(work):
    g = os.path.join(work, "p.git")
    subprocess.run(["git", "init", "-q", "--bare", g], check=True)
    r = pygit2.Repository(g)
    base = os.urandom(4000)
    blobs = [r.create_blob(base + b"v%d" % i) for i in range(6)]  # similar: git repack makes deltas
    blobs += [r.create_blob(b""), r.create_blob(b"x" * 100000)]
    tb = r.TreeBuilder()
    for i, oid in enumerate(blobs):
        tb.insert(f"f{i}", oid, pygit2.enums.FileMode.BLOB)
    sig = pygit2.Signature("t", "t@t", 0, 0)
    r.create_commit("refs/heads/main", sig, sig, "m", tb.write(), [])
    subprocess.run(["git", "--git-dir", g, "repack", "-a", "-d", "-f", "-q", "--window=10"], check=True)
    ps = PackSet(os.path.join(g, "objects"))
    whole = deltas = 0
    for oid in blobs:
        s = ps.blob(oid.raw)
        if s is None:
            deltas += 1
            continue
        whole += 1
        data = zlib.decompress(s.read_raw(), -15)
        assert s.verify() and b"".join(inflate_chunks(s, "t", 1000)) == data
        assert data == r[oid].data and s.size == len(data)
        assert ps.small_blob(oid.raw, "t") == data      # one pread, the same checks
        assert ps.small_blob(oid.raw, "t", len(data) - 1) is None if data else True   # over the limit
    assert whole >= 3 and deltas >= 1
    assert all(ps.small_blob(oid.raw, "t") is None for oid in blobs if ps.blob(oid.raw) is None)  # deltas
    assert ps.blob(b"\0" * 20) is None and ps.small_blob(b"\0" * 20, "t") is None
    ps.close()
    # a flipped bit in an entry fails its CRC-32: never handed out
    pack = [p for p in os.listdir(os.path.join(g, "objects", "pack")) if p.endswith(".pack")][0]
    path = os.path.join(g, "objects", "pack", pack)
    data = bytearray(open(path, "rb").read())
    big = PackSet(os.path.join(g, "objects")).blob(blobs[-1].raw)
    assert big is not None
    off = data.find(big.read_raw()[:16])
    data[off + 5] ^= 0x40
    os.chmod(path, 0o644)
    open(path, "wb").write(data)
    bad = PackSet(os.path.join(g, "objects")).blob(blobs[-1].raw)
    assert not bad.verify()
    out = os.open(os.path.join(work, "copy"), os.O_WRONLY | os.O_CREAT, 0o600)
    assert not bad.verified_copy(out) and os.fstat(out).st_size == 0
    os.close(out)
    with pytest.raises(CorruptObject):
        b"".join(inflate_chunks(bad, "t"))
    with pytest.raises(CorruptObject):
        PackSet(os.path.join(g, "objects")).small_blob(blobs[-1].raw, "t")


def test_inflate_chunks_one_call_and_streamed_agree_and_refuse_a_wrong_size(work):
    """Both inflate paths (one pread and one call for a small entry, bounded chunks for a large one) give the
    object's bytes in chunks of at most the bound, and refuse an entry whose index size is wrong."""
    import dataclasses
    g = os.path.join(work, "inf.git")
    subprocess.run(["git", "init", "-q", "--bare", g], check=True)
    r = pygit2.Repository(g)
    datas = [b"", b"a", os.urandom(70000), b"hello world " * 300000, os.urandom(300000) + b"\0" * 3000000]
    oids = [r.create_blob(d) for d in datas]
    tb = r.TreeBuilder()
    for i, oid in enumerate(oids):
        tb.insert(f"f{i}", oid, pygit2.enums.FileMode.BLOB)
    sig = pygit2.Signature("t", "t@t", 0, 0)
    r.create_commit("refs/heads/main", sig, sig, "m", tb.write(), [])
    subprocess.run(["git", "--git-dir", g, "repack", "-a", "-d", "-q", "--window=0"], check=True)
    ps = PackSet(os.path.join(g, "objects"))
    try:
        for data, oid in zip(datas, oids, strict=True):
            s = ps.blob(oid.raw)
            assert s is not None
            for bound in (1000, 65536, 1 << 20, 8 << 20):
                chunks = list(inflate_chunks(s, "t", bound))
                assert b"".join(chunks) == data and all(0 < len(c) <= bound for c in chunks)
            if data:
                for wrong in (s.size - 1, s.size + 1):
                    for bound in (1000, 8 << 20):
                        with pytest.raises(CorruptObject):
                            b"".join(inflate_chunks(dataclasses.replace(s, size=wrong), "t", bound))
    finally:
        ps.close()


def test_entry_header_and_zlib_framing_round_trip():
    for otype, size in ((3, 0), (3, 15), (3, 16), (1, 1 << 40), (2, 123456789)):
        h = pack_entry_header(otype, size)
        assert parse_entry_header(h + b"tail", 0, len(h) + 4) == (otype, size, len(h))
    assert parse_entry_header(b"\xff" * 20, 0, 20) is None
    for payload in (b"", b"abc" * 1000):
        z = zlib.compress(payload, 1)
        assert zlib.decompress(bytes(zlib_to_raw(z)), -15) == payload
    assert zlib_to_raw(b"\x78\x9c" + b"\0" * 10) is not None
    assert zlib_to_raw(b"\x78\xbb" + b"\0" * 10) is None   # FDICT / bad check bits


@pytest.mark.parametrize("plant", ["objects-xx", "tmp", "refs-heads", "ref-parent"])
def test_export_into_a_prepared_repository_never_writes_through_its_symlinks(work, plant):
    """A target OSTree repository made by someone else, with a symlink where a directory belongs
    (objects/XX, tmp/, refs/heads, a ref's parent directory), is refused in one line before anything is
    written; nothing lands in the directory the symlink names."""
    import subprocess
    src = os.path.join(work, "tree")
    os.makedirs(os.path.join(src, "etc"))
    with open(os.path.join(src, "etc", "os-release"), "w") as f:
        f.write("ID=test\n")
    repo = os.path.join(work, "repo.git")
    api.init(repo)
    api.import_rootfs(repo, src, branch="main")
    outside = os.path.join(work, "outside")
    os.mkdir(outside)
    target = os.path.join(work, "target")
    subprocess.run(["ostree", "--repo=" + target, "init", "--mode=bare"], check=True)
    ref = "x"
    if plant == "objects-xx":
        for i in range(256):
            os.symlink(outside, os.path.join(target, "objects", "%02x" % i))
    elif plant == "tmp":
        os.rmdir(os.path.join(target, "tmp", "cache"))
        os.rmdir(os.path.join(target, "tmp"))
        os.symlink(outside, os.path.join(target, "tmp"))
    elif plant == "refs-heads":
        os.rmdir(os.path.join(target, "refs", "heads"))
        os.symlink(outside, os.path.join(target, "refs", "heads"))
    else:
        os.symlink(outside, os.path.join(target, "refs", "heads", "a"))
        ref = "a/b"
    r = run_gitree("-C", repo, "export-ostree", "main", "--ostree-repo", target, "--ref", ref, check=False)
    err = r.stderr.decode().strip().splitlines()
    assert r.returncode != 0 and len(err) == 1 and "not a directory" in err[0], err
    assert os.listdir(outside) == []


def _objfile(repo: str, csum: str, suffix: str) -> str:
    return os.path.join(repo, "objects", csum[:2], f"{csum[2:]}.{suffix}")


def _assert_ships_v2(work: str, target: str, want) -> None:
    """Ref `os` of `target` is v2 as `ostree commit` writes it (root `want`), fsck is clean, and a checkout
    holds the new sudo."""
    assert _root(target) == want
    assert "no errors found" in ostree(f"--repo={target}", "fsck")
    co = os.path.join(work, "co")
    ostree(f"--repo={target}", "checkout", "os", co)
    with open(os.path.join(co, "bin", "sudo"), "rb") as f:
        assert f.read() == SUDO_NEW


@pytest.mark.parametrize("mode", ["archive", "bare"])
@pytest.mark.parametrize("cache", ["knows-the-checksums", "empty"])
def test_objects_planted_in_a_prepared_target_are_not_trusted(work, cache, mode):
    """Review F6: a target repository prepared by someone else holds, under the checksums of v2's /bin/sudo
    and /bin dirtree, v1's old sudo and old /bin. Exporting v2 into it must not reference them: a present
    object the export cache has not recorded as written or verified in this target is verified first
    (replaced when wrong), and one the export hashes itself is written over what is there. The export equals
    `ostree commit` of the tree, `ostree fsck` is clean, and a checkout holds the new sudo. A second export
    then takes the whole tree from the cache, reading nothing again."""
    repo, old_target, src = _two_versions(work)
    want = _want(work, src)
    real = os.path.join(work, "real-archive")
    new_sudo = ostree(f"--repo={real}", "ls", "-C", "os", "/bin/sudo").split()[4]
    new_bin = ostree(f"--repo={real}", "ls", "-C", "-d", "os", "/bin").split()[4]
    old_sudo = ostree(f"--repo={old_target}", "ls", "-C", "os", "/bin/sudo").split()[4]
    old_bin = ostree(f"--repo={old_target}", "ls", "-C", "-d", "os", "/bin").split()[4]
    assert (new_sudo, new_bin) != (old_sudo, old_bin)
    if cache == "knows-the-checksums":
        run_gitree("-C", repo, "export-ostree", "os", "--ostree-repo", os.path.join(work, "elsewhere"))
    else:
        import shutil
        shutil.rmtree(os.path.join(repo, "gitree", "ostree-cache"))
    prepared = fresh_ostree(os.path.join(work, "prepared"), mode)
    for old, new, suffix in ((old_sudo, new_sudo, "filez"), (old_bin, new_bin, "dirtree")):
        planted = _objfile(prepared, new, "file" if suffix == "filez" and mode == "bare" else suffix)
        os.makedirs(os.path.dirname(planted), exist_ok=True)
        with open(_objfile(old_target, old, suffix), "rb") as f, open(planted, "wb") as g:
            g.write(f.read() if planted.endswith(suffix) else SUDO_OLD)  # bare: the file's bytes themselves
        os.chmod(planted, 0o4755 if planted.endswith(".file") else 0o644)
    r = run_gitree("-C", repo, "export-ostree", "os", "--ostree-repo", prepared)
    _assert_ships_v2(work, prepared, want)
    again = run_gitree("-C", repo, "export-ostree", "os", "--ostree-repo", prepared, "--ref", "again")
    assert "0 files written" in again.stderr.decode() and "1 directories" in again.stderr.decode(), again.stderr
    del r


@pytest.mark.parametrize("compression", ["reuse", 6])
def test_an_object_planted_in_a_new_target_during_its_export_is_written_over(work, compression):
    """A target created empty holds no object the export did not write, so the export writes each object
    without an lstat first. A file planted under the checksum of v2's sudo once the export has begun (here:
    after the exporter found objects/ empty) is still written over, never referenced, by whichever writer
    installs it: the copied deflate stream of `reuse`, or the hashing writer of `--compression 6`, which
    used to keep a present file under the checksum it expected. And every object the export wrote has a
    target-object record whose stamp is what an lstat of the installed file gives (workers take it from an
    fstat of the staged file), so a later export references it unread."""
    from gitree_compat import ObjectType, OstreeRepo
    from gitree.ostree.export import ExportOptions, Exporter
    from gitree.ostree.targettrust import TargetObjects, object_stamp
    repo, old_target, src = _two_versions(work)
    want = _want(work, src)
    new_sudo = ostree(f"--repo={os.path.join(work, 'real-archive')}", "ls", "-C", "os", "/bin/sudo").split()[4]
    old_sudo = ostree(f"--repo={old_target}", "ls", "-C", "os", "/bin/sudo").split()[4]
    path = os.path.join(work, "new")
    target = OstreeRepo.create(path, "archive")
    if compression != "reuse":
        target.zlib_level = compression
    ex = Exporter(Repo(repo), target, ExportOptions("os", compression=compression))
    assert ex.present.empty
    planted = _objfile(path, new_sudo, "filez")
    os.makedirs(os.path.dirname(planted))
    with open(_objfile(old_target, old_sudo, "filez"), "rb") as f, open(planted, "wb") as g:
        g.write(f.read())
    ex.run("os")
    _assert_ships_v2(work, path, want)
    cache = ec.ExportCache(repo, lambda m: None)
    present = TargetObjects(cache, OstreeRepo(path))
    types = {"filez": ObjectType.FILE, "dirtree": ObjectType.DIR_TREE, "dirmeta": ObjectType.DIR_META,
             "commit": ObjectType.COMMIT}
    checked = 0
    for sub in os.listdir(os.path.join(path, "objects")):
        for name in os.listdir(os.path.join(path, "objects", sub)):
            rest, _, suffix = name.partition(".")
            stamp = cache.get(present._key(sub + rest, types[suffix]))
            assert stamp == object_stamp(os.path.join(path, "objects", sub, name)), name
            checked += 1
    cache.close()
    assert checked >= 10   # every object of the small tree: files, dirtrees, dirmetas, the commit


def _wide_tree(src: str, n_dirs: int = 12) -> None:
    """n_dirs directories of 5 files and a subdirectory of 3 files each, one hard-linked pair under hl/."""
    for d in range(n_dirs):
        os.makedirs(os.path.join(src, f"d{d:02d}", "sub"))
        for f in range(5):
            with open(os.path.join(src, f"d{d:02d}", f"f{f}"), "wb") as fh:
                fh.write(b"file %d %d\n" % (d, f))
        for f in range(3):
            with open(os.path.join(src, f"d{d:02d}", "sub", f"g{f}"), "wb") as fh:
                fh.write(b"sub %d %d\n" % (d, f))
    os.makedirs(os.path.join(src, "hl"))
    with open(os.path.join(src, "hl", "a"), "wb") as fh:
        fh.write(b"linked\n")
    os.link(os.path.join(src, "hl", "a"), os.path.join(src, "hl", "b"))


def test_an_update_export_reads_only_the_directories_on_the_paths_to_changes(work):
    """Exporting v2 after v1 into the same target neither checks nor reads a subtree that v1's export
    checked and wrote (authenticated records): only the directories on the path to the changed file, and
    the one holding a hard link (checked every time; its leader sits beside it), are read, each once (the
    plan takes the nodes the check read). The result equals `ostree commit` of v2 and fsck is clean."""
    from gitree.treeread import ReadCount
    src = os.path.join(work, "tree")
    _wide_tree(src)
    repo, target = os.path.join(work, "g.git"), os.path.join(work, "o")
    api.init(repo)
    api.import_rootfs(repo, src, branch="os", timestamp=100, message="v1")
    before = ReadCount.dirs
    api.export_ostree(repo, "os", target)
    first = ReadCount.dirs - before
    # a cold export reads every directory once (the check, then the plan takes its nodes); the check of the
    # hard link takes its leader from hl, the directory it is walking
    assert first == 1 + 12 * 2 + 1, first
    with open(os.path.join(src, "d07", "sub", "g1"), "wb") as fh:
        fh.write(b"changed\n")
    api.import_rootfs(repo, src, branch="os", timestamp=200, message="v2")
    before = ReadCount.dirs
    r = api.export_ostree(repo, "os", target)
    read = ReadCount.dirs - before
    assert read == 3 + 1, read   # /, d07, d07/sub; hl (a hard link: checked every time)
    assert r.files_written == 1
    assert _root(target) == _want(work, src)
    ostree(f"--repo={target}", "fsck")
    # a new target: nothing in it is vouched for, so everything is checked and read again
    before = ReadCount.dirs
    api.export_ostree(repo, "os", os.path.join(work, "o2"))
    assert ReadCount.dirs - before == first
    # a directory object of the target changed behind the cache's back (a new inode): that directory is checked
    # and written again, while its subdirectory, still vouched for, is not read
    tree, _ = ostree(f"--repo={target}", "ls", "-C", "os", "/d03").split()[4:6]
    obj = os.path.join(target, "objects", tree[:2], tree[2:] + ".dirtree")
    data = open(obj, "rb").read()
    os.unlink(obj)
    with open(obj, "wb") as fh:
        fh.write(data)
    with open(os.path.join(src, "d07", "f0"), "wb") as fh:
        fh.write(b"changed again\n")
    api.import_rootfs(repo, src, branch="os", timestamp=300, message="v3")
    before = ReadCount.dirs
    api.export_ostree(repo, "os", target)
    assert ReadCount.dirs - before == 2 + 1 + 1, ReadCount.dirs - before   # /, d07; hl; d03
    ostree(f"--repo={target}", "fsck")


def _records(repo: str) -> bytes | None:
    try:
        with open(os.path.join(repo, *ec.CACHE_DIR, "records"), "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def test_a_failed_export_saves_no_cache_records(work):
    """An export that fails part way (here --history --strict: the first commit exports, the second holds a
    FIFO OSTree cannot hold) records nothing: not the objects it wrote, not the directories it checked,
    not the commit. The ref does not move."""
    src = os.path.join(work, "tree")
    _wide_tree(src, 3)
    repo, target = os.path.join(work, "g.git"), os.path.join(work, "o")
    api.init(repo)
    api.import_rootfs(repo, src, branch="os", timestamp=100, message="v1")
    os.mkfifo(os.path.join(src, "d01", "fifo"))
    api.import_rootfs(repo, src, branch="os", timestamp=200, message="v2")
    kept = _records(repo)   # what import-rootfs recorded (file checksums)
    with pytest.raises(api.UnsupportedEntry, match="fifo"):
        api.export_ostree(repo, "os", target, history=True, strict=True)
    assert _records(repo) == kept
    assert not os.path.exists(os.path.join(target, "refs", "heads", "os"))
    # the same export without --strict succeeds and records its work
    api.export_ostree(repo, "os", target, history=True)
    assert len(_records(repo)) > len(kept or b"")
    ostree(f"--repo={target}", "fsck")


def test_a_subtree_an_earlier_export_checked_is_checked_again_where_it_is_too_deep(work):
    """The record of a checked directory keeps its height: the 2,047-level chain v1 exported under x/ is
    legal there, and v2, holding the same chain one level further down (y/x/), is refused by the depth limit
    instead of being skipped as already checked."""
    from test_security_git import assert_one_error, blob, commit, table, write_tree
    from test_security_review import _chain

    from gitree.gittree import MODE_DIR as GMODE_DIR
    from gitree.gittree import MODE_FILE as GMODE_FILE
    from gitree.limits import MAX_TREE_DEPTH
    repo, target = os.path.join(work, "g.git"), os.path.join(work, "o")
    api.init(repo)
    g = pygit2.Repository(repo)
    content, meta = _chain(g, MAX_TREE_DEPTH - 1)

    def wrap(name: bytes, c: bytes, m: bytes) -> tuple[bytes, bytes]:
        return write_tree(g, [(GMODE_DIR, name, c)]), write_tree(
            g, [(GMODE_DIR, name, m), (GMODE_FILE, b".gitree", blob(g, table(name + b" d 755 0 0")))])

    x = wrap(b"x", content, meta)
    v1 = commit(repo, x)
    g.create_reference_direct("refs/heads/os", pygit2.Oid(hex=v1), True)
    first = last_line(run_gitree("-C", repo, "export-ostree", "os", "--ostree-repo", target))
    v2 = commit(repo, wrap(b"y", *x), parents=[v1])
    g.create_reference_direct("refs/heads/os", pygit2.Oid(hex=v2), True)
    assert_one_error(run_gitree("-C", repo, "export-ostree", "os", "--ostree-repo", target, check=False),
                     "depth limit")
    assert ostree(f"--repo={target}", "rev-parse", "os").strip() == first   # the ref did not move


def test_a_forged_checked_directory_record_is_not_trusted(work):
    """A `verified-dir` record whose MAC fails (planted or edited: here claiming height 0) is treated as absent:
    the check reads that directory again (one warning), the export is still `ostree commit`'s."""
    from gitree.ostree.export import VERIFIED_DIR, VERIFY_RULES
    from gitree.treeread import ReadCount
    src = os.path.join(work, "tree")
    _wide_tree(src)
    repo, target = os.path.join(work, "g.git"), os.path.join(work, "o")
    api.init(repo)
    api.import_rootfs(repo, src, branch="os", timestamp=100, message="v1")
    api.export_ostree(repo, "os", target)
    g = pygit2.Repository(repo)
    top = g.revparse_single("os").peel(pygit2.Commit).tree
    pair = (top["rootfs"]["d03"].id.raw, top["meta"]["d03"].id.raw)
    _plant(repo, ec.record_key(VERIFIED_DIR, VERIFY_RULES, *pair), bytes(32), os.urandom(ec.MAC_LEN))
    with open(os.path.join(src, "d07", "sub", "g1"), "wb") as fh:
        fh.write(b"changed\n")
    api.import_rootfs(repo, src, branch="os", timestamp=200, message="v2")
    before = ReadCount.dirs
    r = api.export_ostree(repo, "os", target)
    assert ReadCount.dirs - before == 3 + 1 + 1, ReadCount.dirs - before   # as without the forgery, and d03
    assert warning_text(r).count("fails its authentication") == 1
    assert _root(target) == _want(work, src)
    ostree(f"--repo={target}", "fsck")
