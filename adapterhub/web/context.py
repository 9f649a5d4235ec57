"""What every page handler of one UI shares: the registry, the sessions, the serving state (under ``serve``) and
where the benchmark results are."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Request

from adapterhub.web.sessions import Sessions
from adapterhub_registry import Registry


@dataclass(frozen=True)
class UI:
    registry: Registry
    sessions: Sessions
    state: Any | None = None  # the server's AppState when mounted under `serve` (the web layer sits below it)
    bench_results: Path | None = None

    def common(self, request: Request) -> dict[str, Any]:
        """What the base template needs: the session (sign-in link or CSRF for logout), the serving links.
        Remembered on the request, so that an error page shows the same navigation."""
        common = getattr(request.state, "ui_common", None)
        if common is None:
            common = request.state.ui_common = {"session": self.sessions.current(request),
                                                "serving": self.state is not None,
                                                "can_sign_in": self.sessions.configured}  # fmt: skip
        return common
