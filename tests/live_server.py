"""An ASGI app served by uvicorn on a free loopback port, in a thread of the test process: real HTTP for real
clients (the openai package, httpx, the load generator), the app's objects still reachable from the test."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn


class LiveServer:
    def __init__(self, app, timeout_s: float = 60.0) -> None:
        self.app = app
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))  # bound here and handed over: no other process can take the port
        self.port = self.listener.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.listener]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
