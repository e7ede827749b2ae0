"""The sandbox reads a request's extIds as customer indices in one pass (``Dataset.customer_indices``, which
``customer_index`` also uses): an id is a customer's exactly when it matches ``C\\d{7,}`` and formatting its index
gives the id back (the definition it had as a regex, computed here for each id)."""

from __future__ import annotations

import random
import re

import pytest
from optimove_netmera.sandbox.data import Dataset, format_customer_id

EDGES = [
    "C0000000",  # index -1
    "C0000001",
    "C00000001",  # a superfluous leading zero
    "C10000000",
    "C999999",  # six digits
    "C123",
    "c0000001",
    "C0000001\n",  # the regex's $ matches before a final newline, int() takes it, the format does not
    " C0000001",
    "C００００００１",  # fullwidth digits: digits to int(), not to the format
    "C²000001",
    "C+000001",
    "C-000001",
    "C0000_01",
    "",
    "C",
    None,
    5,
]


def reference(customer_id: object, customers: int) -> int | None:
    """The index by the definition: the regex, then the formatted index must be the id again."""
    if not isinstance(customer_id, str) or not re.match(r"^C\d{7,}$", customer_id):
        return None
    index = int(customer_id[1:]) - 1
    return index if 0 <= index < customers and format_customer_id(index) == customer_id else None


@pytest.mark.parametrize("customers", [1, 1000, 12_345_678])
def test_ids_are_read_by_the_definition(customers: int) -> None:
    dataset = Dataset(customers=customers, seed=7)
    rnd = random.Random(customers)
    ids: list[object] = list(EDGES)
    ids += ["C" + "".join(rnd.choice("0123456789") for _ in range(rnd.randint(5, 10))) for _ in range(20_000)]
    ids += ["C" + "0" * rnd.randint(0, 3) + str(rnd.randint(0, 2 * customers)) for _ in range(20_000)]
    ids += [f"C{i:07d}" for i in (1, customers, customers + 1)]
    expected = [reference(x, customers) for x in ids]
    assert dataset.customer_indices(ids) == expected
    assert [dataset.customer_index(x) for x in ids] == expected  # type: ignore[arg-type]
    assert sum(i is not None for i in expected) > 0
