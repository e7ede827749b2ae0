"""Group commit for the event endpoint: requests that arrive together share one transaction and one commit.

Each request hands its item to :meth:`GroupCommit.submit` and awaits its own outcome. Items that arrive while a
flush is in progress wait for the next one, so under load a flush takes everything that queued up meanwhile (up to
``max_batch``) and the cost of a transaction (round trips, the commit's fsync, the thread hop) is shared; a lone
request is flushed at once, alone, without waiting for company. The flush function runs in a worker thread and
returns one outcome per item, in order: a result, or an exception for that item alone. A flush that raises fails
every item of its batch with that exception. An outcome is only delivered after the flush function has returned,
so a request is never answered before its transaction committed.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from starlette.concurrency import run_in_threadpool

__all__ = ["GroupCommit"]

Item = TypeVar("Item")
Result = TypeVar("Result")

DEFAULT_MAX_BATCH = 64
DEFAULT_MAX_IN_FLIGHT = 2


class _Queue(Generic[Item, Result]):
    """One event loop's waiting items and running flushes."""

    def __init__(self) -> None:
        self.waiting: list[tuple[Item, asyncio.Future[Result]]] = []
        self.in_flight = 0
        self.tasks: set[asyncio.Task[None]] = set()  # the loop keeps only weak references to tasks


class GroupCommit(Generic[Item, Result]):
    """Batches items submitted on an event loop into calls of ``flush(items) -> outcomes`` in a worker thread.

    At most ``max_in_flight`` flushes run at once per event loop (each takes one database connection). Items of
    different event loops (FastAPI's TestClient starts one per request) are never mixed in one flush.
    """

    def __init__(
        self,
        flush: Callable[[list[Item]], Sequence[Result | BaseException]],
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    ) -> None:
        if max_batch < 1 or max_in_flight < 1:
            raise ValueError("max_batch and max_in_flight must be at least 1")
        self._flush = flush
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Queue[Item, Result]] = (
            weakref.WeakKeyDictionary()
        )
        self.flushes = 0  # flushes started (tests and benchmarks read these)
        self.largest = 0  # the largest batch flushed

    def waiting(self) -> int:
        """Items waiting for a flush (not yet in one), over every event loop."""
        return sum(len(q.waiting) for q in list(self._queues.values()))

    async def submit(self, item: Item) -> Result:
        """Store ``item`` with whatever else is waiting; its outcome (an exception is raised here)."""
        loop = asyncio.get_running_loop()
        queue = self._queues.get(loop)
        if queue is None:
            queue = self._queues[loop] = _Queue()
        future: asyncio.Future[Result] = loop.create_future()
        queue.waiting.append((item, future))
        if queue.in_flight < self._max_in_flight:
            queue.in_flight += 1
            task = asyncio.create_task(self._drain(queue))
            queue.tasks.add(task)
            task.add_done_callback(queue.tasks.discard)
        return await future

    async def _drain(self, queue: _Queue[Item, Result]) -> None:
        try:
            while queue.waiting:
                batch = queue.waiting[: self._max_batch]
                del queue.waiting[: self._max_batch]
                self.flushes += 1
                self.largest = max(self.largest, len(batch))
                try:
                    outcomes = await run_in_threadpool(self._flush, [item for item, _ in batch])
                    if len(outcomes) != len(batch):
                        raise RuntimeError(f"flush returned {len(outcomes)} outcomes for {len(batch)} items")
                except asyncio.CancelledError:  # the loop is shutting down: nobody may wait forever
                    self._settle(batch, [RuntimeError("the server stopped while storing the event")] * len(batch))
                    raise
                except Exception as exc:  # the whole batch failed: nothing of it was committed
                    outcomes = [exc] * len(batch)
                self._settle(batch, outcomes)
        finally:
            queue.in_flight -= 1

    @staticmethod
    def _settle(batch: list[tuple[Item, asyncio.Future[Result]]], outcomes: Sequence[Result | BaseException]) -> None:
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if future.done():  # the request was cancelled (client gone); its item was still handled
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
