"""The initramfs reader (make-bootable's ostree-prepare-root check) on hostile images: every header checked,
name size, decompressed size and decoder memory bounded, each refusal one line naming its limit; and
make-bootable's peak memory on a 1 MB hostile image under an address-space limit of 300 MiB."""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import resource
import struct
import subprocess
import zlib

import pytest
import zstandard
from helpers import run_gitree
from hypothesis import given, settings
from hypothesis import strategies as st
from test_boot import KVER, synthetic_rootfs

from gitree import api
from gitree.errors import BadInput
from gitree.initramfs import MAX_DECODER_MEMORY, MAX_NAME_SIZE, MAX_UNPACKED, has_member, member_names

PREPARE_ROOT = b"usr/lib/ostree/ostree-prepare-root"


def newc(name: bytes, data: bytes = b"", *, namesize: int | None = None, mode: int = 0o100644) -> bytes:
    """One newc member as the kernel reads it (namesize counts the NUL; name and data padded to 4)."""
    n = len(name) + 1 if namesize is None else namesize
    fields = [1, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, n, 0]
    hdr = b"070701" + b"".join(b"%08X" % f for f in fields)
    body = name + b"\0"
    body += b"\0" * ((4 - (110 + len(body)) % 4) % 4)
    return hdr + body + data + b"\0" * ((4 - len(data) % 4) % 4)


def archive(*members: bytes) -> bytes:
    return b"".join(members) + newc(b"TRAILER!!!")


GOOD = archive(newc(b"init", b"#!/bin/sh\n", mode=0o100755), newc(b"usr/lib/ostree/ostree-prepare-root", b"ELF"))


def refused(data, *needles: str) -> str:
    with pytest.raises(BadInput) as ei:
        member_names(data)
    msg = str(ei.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg, (n, msg)
    return msg


COMPRESSORS = {
    "gzip": lambda b: gzip.compress(b, 6, mtime=0),
    "xz": lambda b: lzma.compress(b, lzma.FORMAT_XZ, lzma.CHECK_CRC32),
    "lzma": lambda b: lzma.compress(b, lzma.FORMAT_ALONE),
    "bzip2": bz2.compress,
    "zstd": lambda b: zstandard.ZstdCompressor().compress(b),
}


@pytest.mark.parametrize("kind", sorted(COMPRESSORS))
def test_every_compression_reads(kind):
    data = archive(newc(b"kernel/x86/microcode/GenuineIntel.bin", b"u")) + COMPRESSORS[kind](GOOD)
    assert member_names(data) == {b"kernel/x86/microcode/GenuineIntel.bin", b"init", PREPARE_ROOT}
    assert has_member(iter([data[:7], data[7:100], data[100:]]), PREPARE_ROOT)


def test_name_size_of_one_gib_in_a_small_image():
    """The issue's case: a header declaring a 1 GiB name; refused before anything is allocated for it."""
    data = newc(b"x", namesize=1 << 30) + bytes(1 << 20)
    refused(data, "MAX_NAME_SIZE", str(MAX_NAME_SIZE), str(1 << 30))


@pytest.mark.parametrize("kind", sorted(COMPRESSORS))
def test_name_size_too_large_inside_compression(kind):
    refused(COMPRESSORS[kind](newc(b"a", namesize=MAX_NAME_SIZE + 1) + bytes(64)), "MAX_NAME_SIZE")


def test_name_of_the_largest_size_is_read():
    name = b"d/" + b"n" * (MAX_NAME_SIZE - 3)
    assert member_names(archive(newc(name))) == {name}


@pytest.mark.parametrize("hdr,why", [
    (newc(b"a")[:54] + b"0000001G" + newc(b"a")[62:], "8 hex digits"),      # filesize not hex
    (newc(b"a")[:54] + b"+000001f" + newc(b"a")[62:], "8 hex digits"),      # int() would take it
    (newc(b"a")[:54] + b" 000001f" + newc(b"a")[62:], "8 hex digits"),
    (newc(b"a", namesize=0), "MAX_NAME_SIZE"),
    (newc(b"ab", namesize=2), "NUL-terminated"),                             # name runs into its NUL
    (b"070707" + bytes(104), "newc"),                                        # old binary/odc cpio
    (newc(b"a")[:100], "cut short"),
])
def test_malformed_headers(hdr, why):
    refused(hdr, why)


def test_member_data_cut_short():
    refused(newc(b"big", b"x" * 100)[:-50], "cut short")


def test_unknown_compression():
    refused(b"\x02\x21\x4c\x18" + bytes(20), "unknown compression", "02214c18")


def _bomb(kind: str, gib: float = 1.01) -> bytes:
    """A cpio member of more than MAX_UNPACKED zero bytes in about 1 MB: one compressed MiB of zeros repeated
    as concatenated streams (gzip members, xz streams, bzip2 streams, zstd frames)."""
    head = newc(b"zeros", b"")[:54] + b"%08X" % 0xFFFFFFF0 + newc(b"zeros", b"")[62:]
    mib = bytes(1 << 20)
    count = int(gib * 1024)
    first = COMPRESSORS[kind](head + mib)
    return first + COMPRESSORS[kind](mib) * count


# .lzma has no concatenated streams, and compressing a GiB takes seconds: it shares xz's decoder loop (_Inflate)
@pytest.mark.parametrize("kind", ["bzip2", "gzip", "xz", "zstd"])
def test_decompression_bomb(kind):
    data = _bomb(kind)
    assert len(data) < 2 << 20
    refused(data, "MAX_UNPACKED", str(MAX_UNPACKED))


def test_xz_dictionary_beyond_the_decoder_memory_limit():
    """An .lzma header declaring a 3.75 GiB dictionary: liblzma would allocate it; refused by its memlimit."""
    data = bytearray(COMPRESSORS["lzma"](GOOD))
    assert data[0] == 0x5D
    data[1:5] = struct.pack("<I", 0xF0000000)
    refused(bytes(data), "MAX_DECODER_MEMORY", str(MAX_DECODER_MEMORY))


def test_zstd_window_beyond_the_decoder_memory_limit():
    """A zstd frame whose window descriptor asks for a 2 GiB window."""
    obj = zstandard.ZstdCompressor(write_content_size=False).compressobj()
    data = bytearray(obj.compress(GOOD) + obj.flush())
    fhd = data[4]
    assert not fhd & 0x20  # not single-segment: a window descriptor follows
    data[5] = 21 << 3      # window log 10 + 21 = 31
    refused(bytes(data), "MAX_DECODER_MEMORY")


def test_corrupt_deflate_is_one_line():
    data = bytearray(COMPRESSORS["gzip"](GOOD))
    data[20:30] = b"\xff" * 10
    refused(bytes(data), "cannot decompress (gzip)")


# ---------------------------------------------------------------------------------------------
# make-bootable on a hostile image, under RLIMIT_AS

MEMORY_LIMIT = 300 << 20


def _limit():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


@pytest.fixture
def hostile_tree(work):
    """A synthetic rootfs with a kernel, imported; `put(image)` replaces its initramfs and re-imports."""
    if os.geteuid() != 0:
        pytest.skip("the synthetic rootfs has root-owned files and a device node")
    src = synthetic_rootfs(work)
    repo = os.path.join(work, "g.git")
    api.init(repo)

    def put(image: bytes) -> str:
        with open(os.path.join(src, "boot", f"initrd.img-{KVER}"), "wb") as f:
            f.write(image)
        api.import_rootfs(repo, src, branch="os/plain", timestamp=1700000000)
        return repo

    return put


def _make_bootable_limited(repo: str) -> subprocess.CompletedProcess:
    return run_gitree("-C", repo, "make-bootable", "os/plain", "--branch", "os/boot", check=False,
                      preexec_fn=_limit, timeout=300)


def _assert_one_line(r: subprocess.CompletedProcess, repo: str, *needles: str) -> None:
    err = r.stderr.decode()
    lines = err.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1 and lines[0].startswith("gitree: error:"), err
    assert "MemoryError" not in err and "Traceback" not in err and "out of memory" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    assert subprocess.run(["git", "--git-dir", repo, "rev-parse", "--verify", "-q", "refs/heads/os/boot"],
                          capture_output=True).returncode != 0


def test_make_bootable_memory_on_a_one_gib_name(hostile_tree):
    image = newc(b"x", namesize=1 << 30) + bytes((1 << 20) - 110)
    assert len(image) <= (1 << 20) + 8
    repo = hostile_tree(image)
    _assert_one_line(_make_bootable_limited(repo), repo, "MAX_NAME_SIZE")


@pytest.mark.parametrize("kind", ["gzip", "xz", "zstd"])
def test_make_bootable_memory_on_a_bomb(hostile_tree, kind):
    image = _bomb(kind)
    repo = hostile_tree(image)
    _assert_one_line(_make_bootable_limited(repo), repo, "MAX_UNPACKED")


def test_make_bootable_memory_on_a_huge_lzma_dictionary(hostile_tree):
    data = bytearray(COMPRESSORS["lzma"](GOOD))
    data[1:5] = struct.pack("<I", 0xF0000000)
    repo = hostile_tree(bytes(data))
    _assert_one_line(_make_bootable_limited(repo), repo, "MAX_DECODER_MEMORY")


def test_make_bootable_accepts_a_good_image_within_the_limit(hostile_tree):
    repo = hostile_tree(archive(newc(b"early", b"u")) + COMPRESSORS["zstd"](GOOD))
    r = _make_bootable_limited(repo)
    assert r.returncode == 0, r.stderr


@settings(max_examples=300, deadline=None, derandomize=True)
@given(kind=st.sampled_from(["plain", *sorted(COMPRESSORS)]), data=st.data())
def test_mutated_images_read_or_refuse(kind, data):
    """A mutated image is read, or refused with BadInput: never another exception."""
    image = bytearray(GOOD if kind == "plain" else COMPRESSORS[kind](GOOD))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(image) - 1))
        image[at] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        image = image[:data.draw(st.integers(0, len(image)))]
    try:
        names = member_names(bytes(image))
    except BadInput as e:
        assert "\n" not in str(e)
    else:
        assert all(len(n) < MAX_NAME_SIZE for n in names)


def test_padding_between_archives_is_skipped_and_counted():
    """Zero padding between archives is allowed (the kernel skips it) but counts against MAX_UNPACKED: a
    git blob of a GiB of zeros packs into a few MB."""
    assert member_names(archive(newc(b"a")) + bytes(1 << 20) + archive(newc(b"b"))) == {b"a", b"b"}
    with pytest.raises(BadInput, match="the image holds more than .*MAX_UNPACKED"):
        member_names(iter([archive(newc(b"a"))] + [bytes(1 << 20)] * 1025))


def test_padding_inside_a_compressed_stream_is_skipped_in_blocks():
    """Zeros between the archives of one compressed stream are skipped a block at a time (they were read a
    byte per decompressor call: 64 MiB of them, a 65 KB image, cost a minute of CPU), and the archive after
    them is still read; past MAX_UNPACKED they are refused."""
    image = gzip.compress(archive(newc(b"a")) + bytes(3 << 20) + b"\0" * 7 + archive(newc(b"b")), 9)
    assert member_names(image) == {b"a", b"b"}
    assert member_names(gzip.compress(archive(newc(b"a")) + bytes(1 << 20), 9)) == {b"a"}
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    bomb = [z.compress(archive(newc(b"a")))] + [z.compress(bytes(1 << 20)) for _ in range(1025)] + [z.flush()]
    with pytest.raises(BadInput, match="MAX_UNPACKED"):
        member_names(iter(bomb))
