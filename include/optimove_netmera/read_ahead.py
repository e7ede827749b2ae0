"""Read the next item of a stream in a thread while the caller works on this one (a campaign's recipient pages)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any, TypeVar

__all__ = ["read_ahead"]

T = TypeVar("T")


def read_ahead(items: Iterator[T], name: str) -> Iterator[T]:
    """``items``, each next one produced in a thread called ``name`` while the caller works on the one before.

    Exactly one ahead: the thread starts on item k+1 when the caller takes item k, so at most two items are alive
    at once (the caller's and the next), whatever the stream's length. A failure while producing an item is raised
    in the caller's thread when it asks for that item. Close this generator (``contextlib.closing``) when stopping
    early: the thread stops after the item it is on and closes ``items``.
    """
    ready: queue.Queue[tuple[str, Any]] = queue.Queue()  # holds at most one: the thread produces only when wanted
    wanted = threading.Semaphore(1)
    stop = threading.Event()

    def produce() -> None:
        try:
            while True:
                wanted.acquire()
                if stop.is_set():
                    return
                try:
                    item = next(items)
                except StopIteration:
                    ready.put(("done", None))
                    return
                ready.put(("item", item))
                del item
        except BaseException as exc:  # handed to the caller's thread
            ready.put(("error", exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while True:
            kind, item = ready.get()
            if kind == "done":
                return
            if kind == "error":
                raise item
            wanted.release()  # the next one is read while the caller works on this one
            yield item
    finally:
        stop.set()
        wanted.release()  # a thread waiting to be wanted sees the stop
        thread.join()
