"""The sandbox reads many extIds at once (``Dataset.customer_indices``) exactly as one at a time
(``Dataset.customer_index``): a Netmera request of 1000 extIds knows the same users either way."""

from __future__ import annotations

import random

import pytest
from optimove_netmera.sandbox.data import Dataset

EDGES = [
    "C0000000",  # index -1
    "C0000001",
    "C00000001",  # a superfluous leading zero
    "C10000000",
    "C999999",  # six digits
    "C123",
    "c0000001",
    "C0000001\n",  # the regex's $ matches before a final newline
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


@pytest.mark.parametrize("customers", [1, 1000, 12_345_678])
def test_many_ids_are_read_as_one_at_a_time(customers: int) -> None:
    dataset = Dataset(customers=customers, seed=7)
    rnd = random.Random(customers)
    ids: list[object] = list(EDGES)
    ids += ["C" + "".join(rnd.choice("0123456789") for _ in range(rnd.randint(5, 10))) for _ in range(20_000)]
    ids += ["C" + "0" * rnd.randint(0, 3) + str(rnd.randint(0, 2 * customers)) for _ in range(20_000)]
    ids += [f"C{i:07d}" for i in (1, customers, customers + 1)]
    expected = [dataset.customer_index(x) for x in ids]  # type: ignore[arg-type]
    assert dataset.customer_indices(ids) == expected
    assert sum(i is not None for i in expected) > 0
