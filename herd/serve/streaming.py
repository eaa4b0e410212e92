"""Streamed chunks of one model replica -> Ray messages: the first at once, the rest batched by load.

    batcher = StreamBatcher()
    async for chunks in batcher.stream(engine_stream):     # lists of SSE strings, one Ray message each
        ...
    class HerdServer(StreamBatching, LLMServer): ...       # a Ray Serve LLM server class batching this way

Every list a replica yields crosses two Ray hops (replica -> ingress -> proxy) as one message, and on 2 CPU cores
those messages, not the model, are what 32 concurrent streams saturate (32 streams x 20 messages/s at Ray Serve
LLM's fixed 50 ms interval). herd's server therefore batches by load: the first chunk of a stream goes out the
moment it exists (time to first token is never held back), later chunks are collected for an interval that grows
with the number of live streams (``per_stream_s`` each, between ``min_interval_s`` and ``max_interval_s``), so the
replica sends about ``1 / per_stream_s`` messages a second in all, whatever the concurrency. Both engines' server
classes use it (``herd_server.HerdServer``, ``vllm_server.VLLMServer``), so they are compared on equal terms.

A source that paces itself by the same interval (``paced``: herd's engine merges a stream's tokens of one interval
into one delta, ``Engine.generate(pace=batcher.interval)``) is flushed as soon as it yields: its chunks are
already one per interval, and fewer of them (one SSE event per interval instead of one per token) also spares
the replica's JSON, the Ray hops and the client's parsing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TypeVar

T = TypeVar("T")


class StreamBatcher:
    """Shared by the streams of one replica (one asyncio loop): counts them to size the interval."""

    def __init__(self, min_interval_s: float = 0.05, per_stream_s: float = 0.008, max_interval_s: float = 0.25,
                 *, paced: bool = False):
        self.min_interval_s, self.per_stream_s, self.max_interval_s = min_interval_s, per_stream_s, max_interval_s
        self.paced = paced  # the source paces itself by interval(): flush what it yields at once
        self.live = 0

    def interval(self) -> float:
        return min(self.max_interval_s, max(self.min_interval_s, self.live * self.per_stream_s))

    async def stream(self, gen: AsyncIterator[T]) -> AsyncGenerator[list[T], None]:
        """Lists of what ``gen`` yielded since the previous list; cancelling this cancels the read of ``gen``."""
        items: list[T] = []
        ready, done = asyncio.Event(), asyncio.Event()

        async def read() -> None:
            try:
                async for x in gen:
                    items.append(x)
                    ready.set()
            finally:
                done.set()
                ready.set()

        task = asyncio.create_task(read())
        self.live += 1
        first = True
        try:
            while True:
                if first or self.paced:
                    await ready.wait()
                else:
                    try:
                        await asyncio.wait_for(done.wait(), timeout=self.interval())
                    except TimeoutError:
                        pass
                if items:
                    first = False
                    out, items[:] = list(items), []
                    ready.clear()
                    yield out
                if done.is_set() and not items:
                    task.result()  # re-raise what ended the engine's stream
                    return
        finally:
            self.live -= 1
            if not task.done():
                task.cancel()  # a disconnect: the engine's generator is closed and aborts the request


class StreamBatching:
    """Mixin for a Ray Serve LLM ``LLMServer`` subclass: its streamed responses go through a ``StreamBatcher``
    (Ray's own batcher sends a message every 50 ms per stream, whatever the load)."""

    _batcher: StreamBatcher | None = None
    _paced_source = False  # a subclass whose engine paces its streams by the batcher's interval sets this

    def _stream_batcher(self) -> StreamBatcher:
        if self._batcher is None:  # one per replica: it counts the replica's live streams
            self._batcher = StreamBatcher(paced=self._paced_source)
        return self._batcher

    def _batch_output_stream(self, generator: AsyncIterator[T]) -> AsyncGenerator[list[T], None]:
        return self._stream_batcher().stream(generator)


__all__ = ["StreamBatcher", "StreamBatching"]
