"""The one background task the batcher and the engine driver each run on the server's event loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable


class BackgroundLoop:
    """``start()`` runs ``self._loop()`` as a task of the running event loop; ``stop()`` cancels it and waits."""

    task: asyncio.Task | None = None
    _loop: Callable[[], Awaitable[None]]

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
