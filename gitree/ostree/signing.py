"""Signatures on exported OSTree commits and summaries, as `ostree commit --gpg-sign` and
`ostree summary -u --gpg-sign` write them.

A Signer makes one detached signature over bytes and names the metadata key that holds its kind of
signature. OSTree keeps each kind as an `aay` under its own key: `ostree.gpgsigs` for OpenPGP (binary
detached signatures, made here by the real `gpg`), `ostree.sign.ed25519` for ed25519 (64-byte raw
signatures; not built into Debian's ostree 2022.7, so not offered yet: a class with that key and a
`sign` returning the raw signature is all it takes). Commit signatures go into the commit's detached
metadata (`.commitmeta`), keeping every other key there; summary signatures go into `summary.sig`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Iterable

import gitree_compat as oc
from gitree_compat import ObjectType, OstreeRepo, Variant

from .. import tools
from ..outfile import atomic_output
from ..errors import BadInput, NotFound

GPG_KEY = "ostree.gpgsigs"


class Signer(ABC):
    """One signing identity of one kind."""

    #: the a{sv} key (in .commitmeta and summary.sig) whose `aay` value holds this kind of signature
    metadata_key: str

    @abstractmethod
    def sign(self, data: bytes) -> bytes:
        """A detached signature over `data`."""

    @abstractmethod
    def made_by_me(self, signature: bytes) -> bool:
        """Whether `signature` was made by this identity (so a re-export does not sign twice)."""


class GpgSigner(Signer):
    """OpenPGP detached signatures made by `gpg --detach-sign` with key KEY_ID from HOMEDIR."""

    metadata_key = GPG_KEY

    def __init__(self, key_id: str, homedir: str | None = None):
        self.key_id = key_id
        self.homedir = homedir
        out = self._gpg(["--with-colons", "--list-secret-keys", key_id], b"",
                        f"no secret key {key_id!r} in the GnuPG home {homedir or '(default)'}")
        self.fingerprints = {bytes.fromhex(line.split(":")[9]) for line in out.decode().splitlines()
                             if line.startswith("fpr:")}
        if not self.fingerprints:
            raise BadInput(f"no secret key {key_id!r} in the GnuPG home {homedir or '(default)'}")

    def _gpg(self, args: list[str], data: bytes, what: str) -> bytes:
        cmd = ["gpg", "--batch", "--no-tty", "--quiet"]
        if self.homedir:
            cmd += ["--homedir", self.homedir]
        return tools.run(cmd + args, input=data, what=what).stdout

    def sign(self, data: bytes) -> bytes:
        return self._gpg(["--local-user", self.key_id, "--detach-sign", "--output", "-"], data,
                         f"signing with GPG key {self.key_id}")

    def made_by_me(self, signature: bytes) -> bool:
        issuers = openpgp_issuers(signature)
        return any(i == fp or (len(i) == 8 and fp.endswith(i)) for i in issuers for fp in self.fingerprints)


def openpgp_issuers(sig: bytes) -> set[bytes]:
    """Issuer fingerprints (subpacket 33) and key ids (16) of the v4 signature packets in `sig`."""
    out: set[bytes] = set()
    pos = 0
    while pos < len(sig):
        tag_byte = sig[pos]
        pos += 1
        if not tag_byte & 0x80:
            break
        if tag_byte & 0x40:  # new format
            tag = tag_byte & 0x3F
            first = sig[pos] if pos < len(sig) else 0
            if first < 192:
                length, pos = first, pos + 1
            elif first < 224:
                length, pos = ((first - 192) << 8) + sig[pos + 1] + 192, pos + 2
            elif first == 255:
                length, pos = int.from_bytes(sig[pos + 1:pos + 5], "big"), pos + 5
            else:
                break  # partial lengths never occur in signature packets
        else:
            tag, ltype = (tag_byte >> 2) & 0x0F, tag_byte & 3
            n = {0: 1, 1: 2, 2: 4}.get(ltype)
            if n is None:
                break
            length, pos = int.from_bytes(sig[pos:pos + n], "big"), pos + n
        body = sig[pos:pos + length]
        pos += length
        if tag != 2 or len(body) < 6 or body[0] != 4:
            continue
        hashed = int.from_bytes(body[4:6], "big")
        areas = [body[6:6 + hashed]]
        u = 6 + hashed
        unhashed = int.from_bytes(body[u:u + 2], "big")
        areas.append(body[u + 2:u + 2 + unhashed])
        for area in areas:
            i = 0
            while i < len(area):
                first = area[i]
                if first < 192:
                    n, i = first, i + 1
                elif first < 255:
                    n, i = ((first - 192) << 8) + area[i + 1] + 192, i + 2
                else:
                    n, i = int.from_bytes(area[i + 1:i + 5], "big"), i + 5
                sub = area[i:i + n]
                i += n
                if not sub:
                    continue
                kind = sub[0] & 0x7F
                if kind == 16 and len(sub) == 9:
                    out.add(sub[1:9])
                elif kind == 33 and len(sub) >= 2:
                    out.add(sub[2:])
    return out


def _add_signatures(metadata: list[tuple[str, Variant]], data: bytes, signers: Iterable[Signer]) -> bool:
    """Append a signature by each signer that has not signed yet, keeping every other key. True if changed."""
    changed = False
    for s in signers:
        idx = next((i for i, (k, _) in enumerate(metadata) if k == s.metadata_key), None)
        sigs = list(metadata[idx][1].value) if idx is not None else []
        if any(s.made_by_me(bytes(x)) for x in sigs):
            continue
        sigs.append(s.sign(data))
        value = (s.metadata_key, Variant("aay", sigs))
        if idx is None:
            metadata.append(value)
        else:
            metadata[idx] = value
        changed = True
    return changed


def sign_commit(target: OstreeRepo, checksum: str, signers: Iterable[Signer]) -> bool:
    """Sign an OSTree commit's raw bytes into its detached metadata. True if a signature was added."""
    data = target.read_metadata(ObjectType.COMMIT, checksum)
    metadata = list(target.read_commitmeta(checksum) or [])
    if not _add_signatures(metadata, data, signers):
        return False
    target.write_commitmeta(checksum, metadata)
    return True


def sign_summary(target: OstreeRepo, signers: Iterable[Signer]) -> None:
    """Write summary.sig for the current summary file (replacing any older one)."""
    path = target.path / "summary"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise NotFound(f"{target.path} has no summary to sign (export with --update-summary)") from None
    metadata: list[tuple[str, Variant]] = []
    _add_signatures(metadata, data, signers)
    with atomic_output(str(target.path / "summary.sig"), 0o644) as f:
        f.write(oc.encode_commitmeta(metadata))


__all__ = ["Signer", "GpgSigner", "sign_commit", "sign_summary", "openpgp_issuers", "GPG_KEY"]
