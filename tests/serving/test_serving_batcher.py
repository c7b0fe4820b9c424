"""FairBatcher: idle requests run at once, queued work is interleaved fairly between requests."""

import asyncio
import time

from vla.serving.batcher import FairBatcher


class Overloaded(Exception):
    pass


def _later(s: float = 10.0) -> float:
    return time.perf_counter() + s


def test_idle_request_runs_alone_then_queued_requests_batch_together():
    batches = []

    async def run(items):
        batches.append(list(items))
        await asyncio.sleep(0.05)  # the "model" is busy; new requests queue meanwhile
        return [x * 10 if x != 3 else ValueError("bad item") for x in items]

    async def main():
        b = FairBatcher(run, max_batch_size=4, slice_size=1, overloaded=Overloaded)
        first = asyncio.create_task(b.submit(0, [0], _later()))
        await asyncio.sleep(0.01)  # first batch is running
        rest = [asyncio.create_task(b.submit(i, [i], _later())) for i in range(1, 7)]
        return await asyncio.gather(first, *rest, return_exceptions=True)

    out = asyncio.run(main())
    assert batches == [[0], [1, 2, 3, 4], [5, 6]]  # alone, then up to max_batch_size, then the rest
    assert out[:3] == [[0], [10], [20]] and isinstance(out[3], ValueError) and out[4:] == [[40], [50], [60]]


def test_a_large_request_is_sliced_and_interleaved_with_the_others():
    batches = []

    async def run(items):
        batches.append(list(items))
        await asyncio.sleep(0.01)
        return items

    async def main():
        b = FairBatcher(run, max_batch_size=8, slice_size=2, overloaded=Overloaded)
        big = asyncio.create_task(b.submit("big", [f"b{i}" for i in range(10)], _later()))
        await asyncio.sleep(0.005)  # the first slice of the big request is running
        robot = asyncio.create_task(b.submit("robot", ["r0"], _later()))
        return await big, await robot

    big, robot = asyncio.run(main())
    assert big == [f"b{i}" for i in range(10)] and robot == ["r0"]
    assert batches[0] == ["b0", "b1"]  # a slice, not the whole request
    assert "r0" in batches[1] and len(batches[1]) <= 3  # the robot waited for one forward only


def test_expired_work_is_shed_and_a_failure_drops_the_rest_of_its_request():
    seen = []

    async def run(items):
        seen.extend(items)
        await asyncio.sleep(0.02)
        return [ValueError("bad") if x == "a1" else x for x in items]

    async def main():
        b = FairBatcher(run, max_batch_size=8, slice_size=1, overloaded=Overloaded)
        failing = asyncio.create_task(b.submit("a", ["a0", "a1", "a2", "a3"], _later()))
        late = asyncio.create_task(b.submit("late", ["l0"], time.perf_counter() - 1))
        return await asyncio.gather(failing, late, return_exceptions=True)

    failed, late = asyncio.run(main())
    assert isinstance(failed, ValueError) and isinstance(late, Overloaded)
    assert "a2" not in seen and "a3" not in seen and "l0" not in seen  # dropped, never run


def test_a_cancelled_caller_is_skipped():
    seen = []

    async def run(items):
        seen.extend(items)
        await asyncio.sleep(0.03)
        return items

    async def main():
        b = FairBatcher(run, max_batch_size=8, slice_size=8, overloaded=Overloaded)
        first = asyncio.create_task(b.submit(1, [1], _later()))
        await asyncio.sleep(0.005)
        gone = asyncio.create_task(b.submit(2, [2, 4, 5], _later()))
        kept = asyncio.create_task(b.submit(3, [3], _later()))
        await asyncio.sleep(0.005)
        gone.cancel()  # the client disconnected: none of its work runs
        return await first, await kept

    assert asyncio.run(main()) == ([1], [3])
    assert seen == [1, 3]
