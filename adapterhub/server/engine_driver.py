"""Runs the continuous-batching engine from the server's event loop, and hands each request its events.

One asyncio task calls ``engine.step`` on the model thread (the batcher's one worker, so pool loads, the
static batcher's batches and the steps never overlap) for as long as there is work, and sleeps when there is
none. After each step it puts every request's event on that request's own queue, on the event loop: a
handler reads its queue as an async iterator (``Submitted.events``) and streams or gathers. Time to first
token and the gaps between tokens are measured here, where the tokens leave the engine.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from adapterhub.runtime.continuous import ContinuousEngine, EngineRequest, Event
from adapterhub.server.background import BackgroundLoop

log = logging.getLogger("adapterhub.server")


@dataclass
class Submitted:
    """A request handed to the engine: its ``EngineRequest`` and the queue its events arrive on."""

    engine_request: EngineRequest
    label: str = "base"  # the adapter's name in metrics
    queue: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)
    first_token_at: float | None = None
    last_token_at: float | None = None

    async def events(self) -> AsyncIterator[Event]:
        """Every event of this request, the last one with ``finish`` set."""
        while True:
            event = await self.queue.get()
            yield event
            if event.finish is not None:
                return


OnEvent = Callable[[Submitted, Event, float], None]
"""``on_event(request, event, now)``: called for every event as it leaves the engine (metrics)."""
OnStep = Callable[[int], None]
"""``on_step(rows)``: called after each step whose decode forward ran ``rows`` rows (metrics)."""


class EngineDriver(BackgroundLoop):
    def __init__(self, engine: ContinuousEngine, worker: ThreadPoolExecutor, on_event: OnEvent | None = None,
                 on_step: OnStep | None = None) -> None:  # fmt: skip
        self.engine, self.worker = engine, worker
        self.on_event = on_event or (lambda request, event, now: None)
        self.on_step = on_step or (lambda rows: None)
        self.requests: dict[int, Submitted] = {}
        self.wake: asyncio.Event | None = None

    def start(self) -> None:
        self.wake = asyncio.Event()
        super().start()

    def submit(self, request: EngineRequest, label: str = "base") -> Submitted:
        submitted = Submitted(request, label)
        self.requests[request.id] = submitted
        self.engine.submit(request)
        self.wake.set()
        return submitted

    def submit_many(self, requests: list[EngineRequest], label: str = "base") -> list[Submitted]:
        """Submit requests that belong together (one API call's ``n`` rows or prompts), in order: the engine
        prefills those with the same prompt and adapter once (``ContinuousEngine.submit_many``)."""
        submitted = [Submitted(request, label) for request in requests]
        for s in submitted:
            self.requests[s.engine_request.id] = s
        self.engine.submit_many(requests)
        self.wake.set()
        return submitted

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.engine.has_work():
                self.wake.clear()
                await self.wake.wait()
                continue
            try:
                events = await loop.run_in_executor(self.worker, self.engine.step)
            except Exception:  # a fault in the scheduler itself: log it, keep serving
                log.exception("a continuous-batching step failed")
                await asyncio.sleep(0.05)
                continue
            now = time.perf_counter()
            if self.engine.decoded_rows:
                self.on_step(self.engine.decoded_rows)
            for request, event in events:
                submitted = self.requests.get(request.id)
                if submitted is None:
                    continue
                if event.finish is not None:
                    del self.requests[request.id]
                self.on_event(submitted, event, now)
                if event.tokens:
                    submitted.first_token_at = submitted.first_token_at or now
                    submitted.last_token_at = now
                submitted.queue.put_nowait(event)
