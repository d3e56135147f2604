"""The ostree-meta blob codec (docs/format.md 6.2): round trip, canonical form, only CorruptObject on bad input."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gitree import ostreemeta
from gitree.errors import CorruptObject

items = st.lists(st.tuples(st.text(min_size=1), st.one_of(st.text(), st.booleans())), unique_by=lambda kv: kv[0])


@given(items)
@example([("ostree.linux", "6.1.0-56-amd64"), ("version", "12.0"), ("ostree.bootable", True)])
@example([("k y=%", ""), ("é", False)])
def test_round_trip_keeps_order(meta):
    assert ostreemeta.decode(ostreemeta.encode(meta)) == meta


@given(st.binary())
@example(ostreemeta.MAGIC + b"k s v")
@example(ostreemeta.MAGIC + b"k s v\nk s w\n")
@example(ostreemeta.MAGIC + b"k b yes\n")
@example(ostreemeta.MAGIC + b"k%41 s v\n")
@example(ostreemeta.MAGIC + b"k%ZZ s v\n")
@example(b"gitree-ostree-meta 2\n")
def test_malformed_raises_only_corrupt_object(data):
    blob = data if data.startswith(b"gitree") else ostreemeta.MAGIC + data
    try:
        meta = ostreemeta.decode(blob)
    except CorruptObject:
        return
    assert ostreemeta.encode(meta) == blob


def test_repeated_and_empty_keys_are_refused():
    with pytest.raises(ValueError):
        ostreemeta.encode([("a", "1"), ("a", "2")])
    with pytest.raises(CorruptObject):
        ostreemeta.decode(ostreemeta.MAGIC + b"a s 1\na s 2\n")
