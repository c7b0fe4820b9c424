"""Fair continuous batching: no added latency when idle, full batches under load, no queue jumping.

A request that finds the model idle runs at once, alone. Work that arrives while a forward runs
queues up, in one queue per *key* (an HTTP request, or a WebSocket connection), and the next
forward takes from the keys in turn: up to ``slice_size`` observations from each key that has
any, round-robin, until ``max_batch_size``. A key served in a forward goes to the back of the
line. So a ``/predict_batch`` of 256 observations runs as many small slices interleaved with
everybody else's requests, and another robot waits for at most about one forward, never for the
whole batch. An adaptive dispatcher (BentoML's ``batchable=True``) instead *waits* for a batch to
fill; for a robot served alone that wait is pure added latency (measured in benchmarks/README.md).

A key's remaining work is dropped as soon as one of its items fails, its deadline passes, or its
caller goes away (the client disconnected): nothing of it runs or decodes after that.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Generic, Hashable, Sequence, TypeVar

T = TypeVar("T")


class _Request:
    """The items of one ``submit`` call: once one fails, the others are dropped."""

    failed = False


@dataclass
class _Job(Generic[T]):
    item: T
    fut: asyncio.Future
    deadline: float  # time.perf_counter() by which it must start
    request: _Request

    def fail(self, error: BaseException) -> None:
        self.request.failed = True
        self.fut.set_exception(error)


class FairBatcher(Generic[T]):
    """``await submit(key, items, deadline)`` -> each item's result from ``run(list_of_items)``.

    ``run`` returns one result per item, an Exception instance for an item that failed. An item
    not started by ``deadline`` is answered with ``overloaded()`` and never run.
    """

    def __init__(self, run: Callable[[list[T]], Awaitable[list]], max_batch_size: int, slice_size: int,
                 overloaded: Callable[[], Exception]):
        self.run, self.max_batch_size, self.overloaded = run, max_batch_size, overloaded
        self.slice_size = max(1, min(slice_size, max_batch_size))
        self._queues: OrderedDict[Hashable, deque[_Job[T]]] = OrderedDict()
        self._task: asyncio.Task | None = None

    def queued(self) -> int:
        """Items waiting (including ones whose caller has gone and that will be skipped)."""
        return sum(len(q) for q in self._queues.values())

    async def submit(self, key: Hashable, items: Sequence[T], deadline: float) -> list[Any]:
        """Queue ``items`` under ``key``; the first failure fails the whole call and drops the rest."""
        loop = asyncio.get_running_loop()
        request = _Request()
        jobs = [_Job(item, loop.create_future(), deadline, request) for item in items]
        self._queues.setdefault(key, deque()).extend(jobs)
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._drain())
        try:
            return list(await asyncio.gather(*(j.fut for j in jobs)))
        finally:  # failed, or the caller was cancelled: what has not run yet never will
            for j in jobs:
                if not j.fut.done():
                    j.fut.cancel()

    def _next_batch(self) -> list[_Job[T]]:
        """Round-robin over the keys, up to ``slice_size`` live items each, ``max_batch_size`` in all."""
        now, batch = time.perf_counter(), []
        for key in list(self._queues):
            if len(batch) >= self.max_batch_size:
                break
            queue, taken = self._queues[key], 0
            while queue and taken < self.slice_size and len(batch) < self.max_batch_size:
                job = queue.popleft()
                if job.fut.done() or job.request.failed:  # dropped: its request failed or its caller went away
                    continue
                if now > job.deadline:
                    job.fail(self.overloaded())
                    continue
                batch.append(job)
                taken += 1
            if queue:
                self._queues.move_to_end(key)  # served this round: to the back of the line
            else:
                del self._queues[key]
        return batch

    async def _drain(self) -> None:
        while self._queues:
            batch = self._next_batch()
            if not batch:
                continue
            try:
                results = await self.run([job.item for job in batch])
            except Exception as e:  # noqa: BLE001 - every waiter gets the failure
                results = [e] * len(batch)
            for job, r in zip(batch, results):
                if not job.fut.done():
                    job.fail(r) if isinstance(r, BaseException) else job.fut.set_result(r)
