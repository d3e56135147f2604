"""Hypothesis strategies for random root filesystem trees, and writers of a tree as a tar or a directory."""

from __future__ import annotations

import io
import os
import random
import stat

from hypothesis import strategies as st

from gitree.tarformat import TarWriter

# Names: arbitrary bytes (not only UTF-8), long names, names git refuses, names that need table escaping.
SPECIAL_NAMES = [b".git", b".GIT", b".gitmodules", b"git~1", b"~gitree~", b"~gitree~x", b".gitree", b"a b",
                 b"%41", b"x=y", b"\xff\xfe", "é".encode(), b"n" * 180, b"-", b" lead", b"trail ", b"\x01\n\t"]
name_st = st.one_of(
    st.sampled_from(SPECIAL_NAMES),
    st.binary(min_size=1, max_size=12).filter(lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b"..")),
    st.text("abcdefgh.-_", min_size=1, max_size=6).map(str.encode).filter(lambda b: b not in (b".", b"..")),
)
xattr_name_st = st.one_of(
    st.sampled_from([b"user.a", b"user.b", b"user.mime_type", b"trusted.overlay.opaque", b"user.\xffbin"]),
    st.binary(min_size=1, max_size=8).filter(lambda b: b"\0" not in b and b"=" not in b).map(lambda b: b"user." + b),
)
xattrs_st = st.dictionaries(xattr_name_st, st.binary(min_size=1, max_size=40), max_size=3).map(
    lambda d: tuple(sorted(d.items())))

ids = st.one_of(st.sampled_from([0, 1, 1000, 65534]), st.integers(0, 2 ** 21 + 5))


class Node:
    __slots__ = ("path", "kind", "mode", "uid", "gid", "xattrs", "data", "target", "rdev", "link")

    def __init__(self, path, kind, mode, uid, gid, xattrs=(), data=b"", target=b"", rdev=(0, 0), link=None):
        self.path, self.kind, self.mode, self.uid, self.gid = path, kind, mode, uid, gid
        self.xattrs, self.data, self.target, self.rdev, self.link = xattrs, data, target, rdev, link


@st.composite
def trees(draw, for_directory: bool = False, max_entries: int = 25):
    """A list of Nodes: parents before children; hard links after their targets.

    for_directory restricts to what a real directory can hold (symlinks are 0777).
    """
    nodes: dict[bytes, Node] = {}
    dirs = [b""]
    root_mode = draw(st.sampled_from([0o755, 0o700, 0o1777]))
    nodes[b""] = Node(b"", "d", root_mode, 0, 0, draw(xattrs_st))
    n = draw(st.integers(1, max_entries))
    files: list[bytes] = []
    for _ in range(n):
        parent = draw(st.sampled_from(dirs))
        name = draw(name_st)
        path = parent + b"/" + name if parent else name
        if path in nodes:
            continue
        kind = draw(st.sampled_from("fffdddlcbph" if files else "fffdddlcbp"))
        mode = draw(st.integers(0, 0o7777))
        uid, gid = draw(ids), draw(ids)
        xs = draw(xattrs_st)
        if for_directory and kind not in "fd":
            # Linux allows user.* xattrs only on regular files and directories
            xs = tuple(sorted((b"trusted." + k[5:] if k.startswith(b"user.") else k, v) for k, v in xs))
        if kind == "h":
            target = draw(st.sampled_from(files))
            nodes[path] = Node(path, "h", 0, 0, 0, link=target)
            continue
        if kind == "d":
            # directories must stay writable/searchable for a directory-source writer (as root it does not matter)
            nodes[path] = Node(path, "d", mode | (0o700 if for_directory else 0), uid, gid, xs)
            dirs.append(path)
        elif kind == "f":
            nodes[path] = Node(path, "f", mode, uid, gid, xs, data=draw(st.binary(max_size=300)))
            files.append(path)
        elif kind == "l":
            nodes[path] = Node(path, "l", 0o777 if for_directory else mode, uid, gid, xs,
                               target=draw(st.binary(min_size=1, max_size=60).filter(lambda b: b"\0" not in b)))
        elif kind in "cb":
            nodes[path] = Node(path, kind, mode, uid, gid, xs, rdev=(draw(st.integers(0, 4095)),
                                                                     draw(st.integers(0, 2 ** 20 - 1))))
        else:
            nodes[path] = Node(path, "p", mode, uid, gid, xs)
    return list(nodes.values())


_IFMT = {"f": stat.S_IFREG, "d": stat.S_IFDIR, "l": stat.S_IFLNK, "c": stat.S_IFCHR, "b": stat.S_IFBLK,
         "p": stat.S_IFIFO}


def shuffled(nodes: list[Node], seed: int) -> list[Node]:
    """Another member order: any order, except a hard link still comes after its target."""
    rnd = random.Random(seed)
    plain = [n for n in nodes if n.kind != "h"]
    links = [n for n in nodes if n.kind == "h"]
    rnd.shuffle(plain)
    rnd.shuffle(links)
    return plain + links


def to_tar(nodes: list[Node]) -> bytes:
    buf = io.BytesIO()
    w = TarWriter(buf.write)
    for n in nodes:
        name = b"./" + n.path if n.path else b"./"
        if n.kind == "h":
            w.add(name, stat.S_IFREG, 0o644, 0, 0, linkname=b"./" + n.link, hardlink=True)
            continue
        w.add(name, _IFMT[n.kind], n.mode, n.uid, n.gid, size=len(n.data), linkname=n.target, rdev=n.rdev,
              xattrs=n.xattrs)
        if n.kind == "f":
            w.add_data(n.data)
            w.pad(len(n.data))
    w.close()
    return buf.getvalue()


def to_directory(nodes: list[Node], root: str) -> None:
    """Create the tree under root (which must exist) with real system calls; needs root."""
    rootb = os.fsencode(root)
    later_dirs = []
    for n in nodes:
        p = os.path.join(rootb, n.path) if n.path else rootb
        if n.kind == "d":
            if n.path:
                os.mkdir(p, 0o700)
            later_dirs.append((p, n))
            continue
        if n.kind == "h":
            os.link(os.path.join(rootb, n.link), p, follow_symlinks=False)
            continue
        if n.kind == "f":
            with open(p, "wb") as f:
                f.write(n.data)
        elif n.kind == "l":
            os.symlink(n.target, p)
        else:
            os.mknod(p, _IFMT[n.kind] | 0o600, os.makedev(*n.rdev))
        _apply(p, n)
    for p, n in reversed(later_dirs):
        _apply(p, n)


def _apply(p: bytes, n: Node) -> None:
    os.chown(p, n.uid, n.gid, follow_symlinks=False)
    if n.kind != "l":
        os.chmod(p, n.mode)
    for k, v in n.xattrs:
        os.setxattr(p, k, v, follow_symlinks=False)
