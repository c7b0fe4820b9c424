"""Continuous (greedy) batching: no added latency when idle, full batches under load.

A request that finds the model idle runs at once, alone. Requests that arrive while a batch runs
queue up, and when it finishes all of them (up to ``max_batch_size``) form the next batch. An
adaptive dispatcher (BentoML's ``batchable=True``) instead *waits* for a batch to fill, by an
amount it learns from recent traffic; for a robot served alone that wait is pure added latency
(measured in benchmarks/README.md).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any, Awaitable, Callable, Generic, TypeVar

T = TypeVar("T")


class ContinuousBatcher(Generic[T]):
    """``await submit(item)`` -> that item's result from ``run(list_of_items)``.

    ``run`` returns one result per item, an Exception instance for an item that failed. Items
    that waited longer than ``max_wait_s`` are answered with ``overloaded()`` without running.
    """

    def __init__(self, run: Callable[[list[T]], Awaitable[list]], max_batch_size: int,
                 max_wait_s: float, overloaded: Callable[[], Exception]):
        self.run, self.max_batch_size, self.max_wait_s, self.overloaded = run, max_batch_size, max_wait_s, overloaded
        self._queue: deque[tuple[T, float, asyncio.Future]] = deque()
        self._task: asyncio.Task | None = None

    async def submit(self, item: T) -> Any:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._queue.append((item, time.perf_counter(), fut))
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._drain())
        return await fut

    async def _drain(self) -> None:
        while self._queue:
            now, batch = time.perf_counter(), []
            while self._queue and len(batch) < self.max_batch_size:
                item, t0, fut = self._queue.popleft()
                if fut.done():  # the caller went away
                    continue
                if now - t0 > self.max_wait_s:
                    fut.set_exception(self.overloaded())
                    continue
                batch.append((item, t0, fut))
            if not batch:
                continue
            try:
                results = await self.run([item for item, _, _ in batch])
            except Exception as e:  # noqa: BLE001 - every waiter gets the failure
                results = [e] * len(batch)
            for (_, _, fut), r in zip(batch, results):
                if not fut.done():
                    fut.set_exception(r) if isinstance(r, BaseException) else fut.set_result(r)
