"""The batching queue of the server: requests that arrive together run as one mixed-adapter batch.

Each request is queued with a future. One asyncio task takes the first waiting request, keeps collecting
for at most ``max_wait_ms`` or until ``max_batch_size`` requests are in, splits what it has by batch key
(requests with different generation settings cannot share a ``generate`` call), and runs each group on a
single worker thread, so the model never runs two batches at once and the event loop stays responsive.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from adapterhub.server.background import BackgroundLoop


@dataclass
class Job:
    """One request in the queue: what to run, its batch key, and the future its caller awaits."""

    key: Hashable
    payload: Any
    future: asyncio.Future
    queued_at: float = field(default_factory=time.perf_counter)


RunBatch = Callable[[Hashable, Sequence[Any]], list]
"""``run(key, payloads) -> results``: one result per payload, each a value or an exception to raise to its caller."""


class Batcher(BackgroundLoop):
    def __init__(self, run: RunBatch, *, max_batch_size: int = 16, max_wait_ms: float = 5.0,
                 on_batch: Callable[[int, float], None] | None = None) -> None:  # fmt: skip
        self.run, self.max_batch_size, self.max_wait = run, max_batch_size, max_wait_ms / 1000
        self.on_batch = on_batch or (lambda size, seconds: None)
        self.queue: asyncio.Queue[Job] | None = None
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="adapterhub-model")

    def start(self) -> None:
        self.queue = asyncio.Queue()
        super().start()

    async def stop(self) -> None:
        await super().stop()
        self.worker.shutdown(wait=True)

    async def submit(self, key: Hashable, payload: Any) -> Any:
        """Queue one request and wait for its result (or its error)."""
        job = Job(key, payload, asyncio.get_running_loop().create_future())
        await self.queue.put(job)
        return await job.future

    async def _collect(self) -> list[Job]:
        jobs = [await self.queue.get()]
        deadline = time.perf_counter() + self.max_wait
        while len(jobs) < self.max_batch_size:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            try:
                jobs.append(await asyncio.wait_for(self.queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return jobs

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._collect()
            by_key: dict[Hashable, list[Job]] = {}
            for job in jobs:
                by_key.setdefault(job.key, []).append(job)
            for key, group in by_key.items():
                started = time.perf_counter()
                try:
                    results = await loop.run_in_executor(self.worker, self.run, key, [j.payload for j in group])
                except Exception as exc:  # the batch failed as a whole: every caller gets the error, the loop lives
                    results = [exc] * len(group)
                self.on_batch(len(group), time.perf_counter() - started)
                for job, result in zip(group, results):
                    if job.future.done():
                        continue  # the caller went away
                    if isinstance(result, BaseException):
                        job.future.set_exception(result)
                    else:
                        job.future.set_result(result)
