"""Sets of Netmera attribute names stored as bits (``present_bits``): one bit a name, numbered in ``attribute_names``.

The snapshot keeps, for each customer, which attributes Netmera holds non-empty (an attribute in there that is now
empty must be unset), and each change row keeps what that set becomes once it is delivered. As JSON lists of names
that was ~300 bytes a row of 20 attributes, rewritten for every customer a load delivers; as a hex bit set it is 5
characters. A name keeps its bit for good (:class:`~optimove_netmera.store.models.AttributeName` is append-only).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from optimove_netmera.store.models import NO_ATTRIBUTES, AttributeName
from optimove_netmera.store.queries import dialect_insert


class AttributeSets:
    """Encodes sets of attribute names as hex bit sets (``present_bits``) and decodes them, with the numbering the
    state database holds (:meth:`load`)."""

    def __init__(self, bits: Mapping[str, int]) -> None:
        self._bit = dict(bits)
        self._name = {bit: name for name, bit in self._bit.items()}
        self._decoded: dict[str, tuple[str, ...]] = {NO_ATTRIBUTES: ()}

    @classmethod
    def load(cls, conn: Connection, names: Iterable[str] = ()) -> AttributeSets:
        """The state database's numbering, after giving each of ``names`` that has none the next free bit.

        Race-safe: a name two callers add at once gets one bit (the loser's insert does nothing). Only missing names
        are inserted, so PostgreSQL's sequence (the bits) advances only for new names.
        """
        bits = _numbering(conn)
        missing = sorted(set(names) - bits.keys())
        if missing:
            insert = dialect_insert(conn, AttributeName).values([{"name": name} for name in missing])
            conn.execute(insert.on_conflict_do_nothing(index_elements=["name"]))
            bits = _numbering(conn)
        return cls(bits)

    def encode(self, names: Iterable[str]) -> str:
        """``names`` as a hex bit set; every name must have a bit (:meth:`load` with it)."""
        mask = 0
        for name in names:
            try:
                mask |= 1 << self._bit[name]
            except KeyError:
                raise ValueError(f"attribute name {name!r} has no bit yet: load the sets with it first") from None
        return format(mask, "x")

    def decode(self, bits: str) -> tuple[str, ...]:
        """The names of a hex bit set, sorted (cached: a run sees few distinct sets)."""
        found = self._decoded.get(bits)
        if found is None:
            mask = int(bits, 16)
            try:
                found = tuple(sorted(self._name[b] for b in range(mask.bit_length()) if mask >> b & 1))
            except KeyError as exc:
                raise ValueError(f"bit {exc.args[0]} of {bits!r} names no attribute in attribute_names") from None
            self._decoded[bits] = found
        return found


def _numbering(conn: Connection) -> dict[str, int]:
    return {name: id_ - 1 for id_, name in conn.execute(sa.select(AttributeName.id, AttributeName.name))}
