"""The endpoint's group commit on its own: how many flushes run at once, how much one flush takes, what it answers."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from optimove_netmera.campaigns.events.group import GroupCommit

DEADLINE_SECONDS = 60


class Flushes:
    """A flush function that holds every flush until released, recording how many ran at once and their sizes."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.running = self.peak = 0
        self.sizes: list[int] = []

    def __call__(self, items: list[int]) -> list[int | BaseException]:
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
            self.sizes.append(len(items))
        self.release.wait(DEADLINE_SECONDS)
        with self.lock:
            self.running -= 1
        return [ValueError(f"item {i} refused") if i == 7 else i * 10 for i in items]


def test_at_most_max_in_flight_flushes_of_at_most_max_batch_items_and_each_its_own_outcome() -> None:
    flushes = Flushes()
    group: GroupCommit[int, int] = GroupCommit(flushes, max_batch=3, max_in_flight=2)

    async def scenario() -> list[int | BaseException]:
        tasks = [asyncio.create_task(group.submit(i)) for i in range(10)]
        deadline = time.monotonic() + DEADLINE_SECONDS
        while sum(flushes.sizes) + group.waiting() < 10:  # every item is in a (held) flush or waiting
            assert time.monotonic() < deadline, "the items never reached a flush"
            await asyncio.sleep(0.01)
        held = (flushes.peak, list(flushes.sizes), group.waiting())
        assert all(not t.done() for t in tasks), "answered before its flush returned"
        flushes.release.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert held == (2, [3, 3], 4), "two flushes of three, four items waiting for the next"
        return results

    results = asyncio.run(scenario())
    assert results[:7] == [0, 10, 20, 30, 40, 50, 60] and results[8:] == [80, 90]
    assert isinstance(results[7], ValueError)  # one item's failure is its own
    assert flushes.peak == 2 and all(size <= 3 for size in flushes.sizes) and sum(flushes.sizes) == 10


def test_a_flush_that_raises_fails_its_whole_batch_and_the_next_flush_still_runs() -> None:
    calls: list[list[int]] = []

    def flush(items: list[int]) -> list[int]:
        calls.append(items)
        if len(calls) == 1:
            raise RuntimeError("the transaction failed")
        return items

    group: GroupCommit[int, int] = GroupCommit(flush, max_batch=64, max_in_flight=1)

    async def scenario() -> tuple[BaseException | int, int]:
        first = await asyncio.gather(group.submit(1), return_exceptions=True)
        return first[0], await group.submit(2)

    failed, stored = asyncio.run(scenario())
    assert isinstance(failed, RuntimeError) and stored == 2 and calls == [[1], [2]]


@pytest.mark.parametrize("bad", [{"max_batch": 0}, {"max_in_flight": 0}])
def test_limits_below_one_are_refused(bad: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        GroupCommit(lambda items: items, **bad)
