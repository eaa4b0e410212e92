"""herd's replica-side stream batching (``herd.serve.streaming``): first chunk at once, later chunks batched by
load, nothing lost or reordered, a cancelled stream cancels its source. Fast: no Ray.

    .venv/bin/python -m pytest tests/serve/test_serve_streaming.py -q
"""

from __future__ import annotations

import asyncio
import time

import pytest

from herd.serve.streaming import StreamBatcher


async def _source(n: int, every_s: float, log: list[str]):
    try:
        for i in range(n):
            await asyncio.sleep(every_s)
            yield i
    finally:
        log.append("closed")


def test_first_chunk_at_once_then_batched_in_order() -> None:
    b = StreamBatcher(min_interval_s=0.05, per_stream_s=0.05, max_interval_s=0.2)

    async def main() -> tuple[list[list[int]], float]:
        t0 = time.perf_counter()
        first_at, out = None, []
        async for chunk in b.stream(_source(30, 0.005, [])):
            first_at = first_at or time.perf_counter() - t0
            out.append(chunk)
        return out, first_at

    out, first_at = asyncio.run(main())
    assert [x for c in out for x in c] == list(range(30))
    assert out[0] == [0] and first_at < 0.05  # not held for an interval
    assert len(out) < 15  # the rest came in batches
    assert b.live == 0


def test_a_paced_source_is_flushed_as_it_yields() -> None:
    # herd's engine paces its streams itself (Engine.generate(pace=batcher.interval)): nothing is held back
    b = StreamBatcher(min_interval_s=0.2, per_stream_s=0.2, max_interval_s=0.2, paced=True)

    async def main() -> tuple[list[list[int]], float]:
        t0 = time.perf_counter()
        out = [chunk async for chunk in b.stream(_source(8, 0.03, []))]
        return out, time.perf_counter() - t0

    out, wall = asyncio.run(main())
    assert out == [[i] for i in range(8)]  # one list per item: the 0.2 s interval never held one
    assert wall < 0.2 * 4 and b.live == 0


def test_interval_grows_with_live_streams() -> None:
    b = StreamBatcher(min_interval_s=0.05, per_stream_s=0.008, max_interval_s=0.25)
    assert b.interval() == 0.05
    b.live = 16
    assert b.interval() == pytest.approx(0.128)
    b.live = 1000
    assert b.interval() == 0.25


def test_cancelling_the_stream_closes_the_source_and_errors_propagate() -> None:
    b = StreamBatcher()
    log: list[str] = []

    async def cancel() -> None:
        async def consume() -> None:
            async for _ in b.stream(_source(1000, 0.01, log)):
                pass

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.1)
        task.cancel()  # what Ray does on a client disconnect
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.01)

    asyncio.run(cancel())
    assert log == ["closed"] and b.live == 0

    async def failing():
        yield 1
        raise ValueError("engine failed")

    async def read() -> list:
        return [c async for c in b.stream(failing())]

    with pytest.raises(ValueError, match="engine failed"):
        asyncio.run(read())
