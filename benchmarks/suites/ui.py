"""Web pages: server time and time to the browser's load event of the adapters page and of one adapter's page at 1,000, 10,000 and 100,000 adapters.

Each page is requested through the real app (`adapterhub.web.ui_app` under FastAPI's in-process TestClient:
routing, the registry's SQL, the Jinja2 rendering), so a time is what the server spends on the request, without
a network or a browser. The registry is filled by a bulk writer: one adapter pushed through `Registry.push`, then
rows inserted into its SQLite index in one transaction, all pointing at that blob (pushing 100,000 adapters one
fsynced transaction at a time would take most of an hour and measure the push, not the page).

Cases, at each size:

* adapters page — `GET /ui/adapters` (newest first, 50 a page), against the baseline of building the same page
  from `Registry.list()` (every adapter read, sorted and sliced in Python): what a page that reads every adapter
  would cost;
* adapters page, search — `?q=sentiment`; adapters page, metric — `?metric=accuracy>=0.5&sort=-metric:accuracy`;
  adapters page, deep — the middle page;
* adapter page — `GET /ui/adapters/NAME` of a merged adapter with 3 versions, two inputs and a training curve;
* adapters page, browser load and adapter page, browser load — the same two pages served over loopback by uvicorn in
  a thread (the app `adapterhub ui` runs, without an API key, so no sign-in) and opened in Debian's
  chromium-headless-shell driven by Playwright, launched as tests/ui_browser.py launches it: the time from the start
  of the navigation to the end of the `load` event, as the page's Navigation Timing entry states it
  (`loadEventEnd - startTime`), one navigation per sample after untimed warm-up navigations. Without Playwright or
  the browser these rows are left out and a note says what to install.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from benchmarks.harness import OURS, Context, Side

SIZES = (1_000, 10_000, 100_000)
QUICK_SIZES = (100, 1_000)
TARGET_MS = 300.0
TARGET_AT = 10_000
READ_ALL = "every adapter read"  # the baseline: a page built from Registry.list()
PAGE = 50
TOPICS = ("sentiment", "news", "code", "legal", "medical", "chat", "math", "translate")
HISTORY = [{"epoch": e, "step": 10 * e, "train_loss": 1 / e, "accuracy": 0.5 + e / 10} for e in range(1, 6)]
# As tests/ui_browser.py: the apt package's binary itself (/usr/bin/chromium-headless-shell is a wrapper that does
# not exec), no sandbox (root), no GPU, nothing that calls Google's servers.
CHROMIUM = Path("/usr/lib/chromium/chromium-headless-shell")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]  # fmt: skip
BROWSER_INSTALL = ("`apt-get install -y chromium-headless-shell` and `pip install -e '.[test]'` (Playwright for Python; "
                   "Playwright's own browser download is not used)")  # fmt: skip
# The page's own navigation entry, read once the load event's handlers have returned (loadEventEnd set).
LOAD_MS = "(() => { const n = performance.getEntriesByType('navigation')[0]; return n.loadEventEnd - n.startTime; })()"
LOAD_DONE = "(() => { const n = performance.getEntriesByType('navigation')[0]; return !!n && n.loadEventEnd > 0; })()"
INSERT = ("INSERT INTO adapters (name, version, method, base_fingerprint, peft_config, manifest, metrics, blob_sha256,"
          " size_bytes, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")  # fmt: skip


def _adapter_dir(directory: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    tensors = {"base_model.model.q_proj.lora_A.weight": torch.zeros(4, 16)}
    save_file(tensors, str(directory / "adapter_model.safetensors"), metadata={"format": "pt"})
    (directory / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    return directory


def fill(root: Path, n: int, staging: Path):
    """A registry of ``n`` adapters (plus the adapter page's subject and its inputs); returns it."""
    from adapterhub_registry import Registry

    registry = Registry(root)
    seed = registry.push("seed-input", _adapter_dir(staging), method="lora")
    config = registry.peft_config_text(seed)
    rows, tags = [], []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        metrics = json.dumps({"accuracy": (i * 7919 % 1000) / 1000} if i % 5 else {})
        manifest = json.dumps({"description": f"{topic} adapter number {i}", "training": {"lr": 1e-4, "epochs": 3}})
        rows.append((f"{topic}-{i:06d}", 1, "lora" if i % 3 else "ia3", "f" * 64, config, manifest, metrics,
                     seed.blob_sha256, seed.size_bytes, 1_700_000_000 + i))  # fmt: skip
        if i % 10 == 0:
            tags.append((f"{topic}-{i:06d}", "prod", 1))
    with sqlite3.connect(root / "index.sqlite") as conn:  # one transaction
        conn.executemany(INSERT, rows)
        conn.executemany("INSERT INTO tags (name, tag, version) VALUES (?, ?, ?)", tags)
        conn.executemany("INSERT INTO version_counters (name, last_version) VALUES (?, 1)", [(r[0],) for r in rows])
    merge = {"inputs": [{"ref": seed.ref, "sha256": seed.blob_sha256}, {"ref": "sentiment-000000@1", "sha256": seed.blob_sha256}],
             "weights": [0.5, 0.5], "combination": "linear"}  # fmt: skip
    for version in range(3):
        registry.push("merged", staging, method="lora", metrics={"accuracy": 0.8 + version / 100},
                      manifest={"merge": merge, "training": {"lr": 1e-4 * (version + 1), "history": HISTORY}})  # fmt: skip
    registry.close()
    return Registry(root)


def _browser_missing() -> str | None:
    """Why the browser rows cannot be measured here (what to install), or None."""
    if importlib.util.find_spec("playwright") is None:
        return f"Playwright for Python is not installed; install it and the browser: {BROWSER_INSTALL}"
    if not CHROMIUM.is_file():
        return f"{CHROMIUM} is missing; install it: {BROWSER_INSTALL}"
    return None


@contextmanager
def _serve(app) -> Iterator[str]:
    """``app`` served by uvicorn on a free loopback port in a thread, as `adapterhub ui` serves it; yields its URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="ui-bench-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start serving the UI app on loopback")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def _load_times(ctx: Context, page, url: str, label: str) -> list[float]:
    """``ctx.warmup`` untimed navigations to ``url``, then ``ctx.repeats`` timed ones: navigation start to the
    end of the load event, in ms, from the Navigation Timing entry."""
    samples: list[float] = []
    with ctx._bar(label, ctx.warmup + ctx.repeats) as bar:
        for i in range(ctx.warmup + ctx.repeats):
            answer = page.goto(url, wait_until="load")
            assert answer is not None and answer.status == 200, (url, answer and answer.status)
            page.wait_for_function(LOAD_DONE)
            if i >= ctx.warmup:
                samples.append(float(page.evaluate(LOAD_MS)))
            bar.update(1)
    return samples


@contextmanager
def _browser(ctx: Context, missing: str | None):
    """A Playwright page in chromium-headless-shell (as tests/ui_browser.py launches it), or None with a note
    saying what to install when Playwright or the browser is missing."""
    if missing is not None:
        ctx.note(f"Time to the browser's load event not measured (server rows only): {missing}")
        click.echo(f"ui benchmark: browser rows left out: {missing}", err=True)
        yield None
        return
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1100, "height": 760})
            ctx.settings.update(browser=f"chromium-headless-shell {browser.version} via Playwright",
                                browser_time="navigation start to loadEventEnd (Navigation Timing), loopback")  # fmt: skip
            yield context.new_page()
        finally:
            browser.close()


def run(ctx: Context) -> None:
    from fastapi.testclient import TestClient

    from adapterhub.web import ui_app

    sizes = QUICK_SIZES if ctx.quick else SIZES
    ctx.settings.update(sizes=list(sizes), page_size=PAGE, server_time="in-process TestClient request, no network")
    missing = _browser_missing()
    with ctx.scratch("ui") as root, _browser(ctx, missing) as page:
        for n in sizes:
            registry = fill(root / f"registry-{n}", n, root / f"staging-{n}")
            client = TestClient(ui_app(registry, api_key=None, bench_results=None))
            params = {"adapters": n}

            def get(url: str) -> None:
                answer = client.get(url)
                assert answer.status_code == 200, (url, answer.status_code, answer.text[:300])

            def every_adapter_page() -> None:
                records = sorted(registry.list(), key=lambda r: -r.created_at)[:PAGE]
                assert records

            listing, _ = ctx.compare(
                "adapters page",
                Side(OURS, "GET /ui/adapters (SQL LIMIT 50, newest first)", lambda: get("/ui/adapters")),
                Side(READ_ALL, "Registry.list(), sorted and sliced in Python (no rendering)", every_adapter_page),
                params=params,
            )
            for case, url in (
                ("adapters page, search", "/ui/adapters?q=sentiment"),
                ("adapters page, metric", "/ui/adapters?metric=accuracy%3E%3D0.5&sort=-metric:accuracy"),
                ("adapters page, deep", f"/ui/adapters?sort=name&page={max(1, (n + 3) // PAGE // 2)}"),
            ):
                ctx.time(case, Side(OURS, f"GET {url}", lambda url=url: get(url)), params=params)
            adapter = ctx.time("adapter page", Side(OURS, "GET /ui/adapters/merged", lambda: get("/ui/adapters/merged")),
                               params=params)  # fmt: skip
            loads = {}
            if page is not None:
                with _serve(ui_app(registry, api_key=None, bench_results=None)) as url:
                    for case, path in (("adapters page, browser load", "/ui/adapters"),
                                       ("adapter page, browser load", "/ui/adapters/merged")):  # fmt: skip
                        label = f"{ctx.suite}: {case} adapters={n}"
                        samples = _load_times(ctx, page, url + path, label)
                        loads[case] = ctx.record(case, OURS, samples, params=params, warmup=ctx.warmup,
                                                 what=f"chromium-headless-shell: {path} over loopback, navigation start "
                                                      "to loadEventEnd (Navigation Timing)")  # fmt: skip
            if n == TARGET_AT:
                ctx.check(f"adapters page at {n:,} adapters (median)", listing.stats.median, TARGET_MS)
                ctx.check(f"adapter page at {n:,} adapters (median)", adapter.stats.median, TARGET_MS)
                for case, measurement in loads.items():
                    ctx.check(f"{case} at {n:,} adapters (median)", measurement.stats.median, TARGET_MS)
            registry.close()
