"""ContinuousBatcher: idle requests run at once, requests arriving during a batch form the next one."""

import asyncio

from vla.serving.batcher import ContinuousBatcher


class Overloaded(Exception):
    pass


def test_idle_request_runs_alone_then_queued_requests_batch_together():
    batches = []

    async def run(items):
        batches.append(list(items))
        await asyncio.sleep(0.05)  # the "model" is busy; new requests queue meanwhile
        return [x * 10 if x != 3 else ValueError("bad item") for x in items]

    async def main():
        b = ContinuousBatcher(run, max_batch_size=4, max_wait_s=10, overloaded=Overloaded)
        first = asyncio.create_task(b.submit(0))
        await asyncio.sleep(0.01)  # first batch is running
        rest = [asyncio.create_task(b.submit(i)) for i in range(1, 7)]
        return await asyncio.gather(first, *rest, return_exceptions=True)

    out = asyncio.run(main())
    assert batches == [[0], [1, 2, 3, 4], [5, 6]]  # alone, then up to max_batch_size, then the rest
    assert out[:3] == [0, 10, 20] and isinstance(out[3], ValueError) and out[4:] == [40, 50, 60]


def test_requests_that_waited_too_long_are_shed_and_failures_reach_every_caller():
    async def slow(items):
        await asyncio.sleep(0.05)
        return items

    async def broken(items):
        raise RuntimeError("model crashed")

    async def main():
        b = ContinuousBatcher(slow, max_batch_size=8, max_wait_s=0.02, overloaded=Overloaded)
        first = asyncio.create_task(b.submit("a"))
        await asyncio.sleep(0.005)
        late = asyncio.create_task(b.submit("b"))  # waits 45 ms > 20 ms behind the first batch
        res = await asyncio.gather(first, late, return_exceptions=True)
        b2 = ContinuousBatcher(broken, max_batch_size=8, max_wait_s=1, overloaded=Overloaded)
        res2 = await asyncio.gather(b2.submit(1), b2.submit(2), return_exceptions=True)
        return res, res2

    (a, b), errs = asyncio.run(main())
    assert a == "a" and isinstance(b, Overloaded)
    assert all(isinstance(e, RuntimeError) and "crashed" in str(e) for e in errs)


def test_a_cancelled_caller_is_skipped():
    seen = []

    async def run(items):
        seen.extend(items)
        await asyncio.sleep(0.03)
        return items

    async def main():
        b = ContinuousBatcher(run, max_batch_size=8, max_wait_s=1, overloaded=Overloaded)
        first = asyncio.create_task(b.submit(1))
        await asyncio.sleep(0.005)
        gone = asyncio.create_task(b.submit(2))
        kept = asyncio.create_task(b.submit(3))
        await asyncio.sleep(0.005)
        gone.cancel()
        return await first, await kept

    assert asyncio.run(main()) == (1, 3)
    assert seen == [1, 3]
