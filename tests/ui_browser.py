"""What the real-browser tests of the web pages (tests/test_ui_browser.py) stand on: Debian's
chromium-headless-shell driven by Playwright (pytest-playwright's ``page``), `adapterhub ui` and `adapterhub serve`
started as processes on loopback over a registry filled through the public API with tiny real adapters, and the
screenshots docs/ui.md shows. Nothing here uses the network."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch
from tiny_models import make_tiny_llama

from adapterhub import adapters, merging
from adapterhub.base import Base, load_base
from adapterhub_registry import Registry
from adapterhub_registry.remote_config import RemoteConfigs

# The apt package's binary itself: /usr/bin/chromium-headless-shell is a shell wrapper that does not exec, so
# Playwright would stop the wrapper at the end and leave the browser running.
CHROMIUM = Path("/usr/lib/chromium/chromium-headless-shell")
# What lets it start offline as root: no sandbox (root), no GPU, and nothing that calls Google's servers.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]  # fmt: skip
INSTALL_HINT = (
    "the browser tests need Debian's chromium-headless-shell and Playwright for Python: "
    "`apt-get install -y chromium-headless-shell` and `pip install -e '.[test]'` (the README's install command)"
)
KEY = "sk-ui-test-key"
# The docs' screenshots are refreshed on purpose (ADAPTERHUB_UI_SCREENSHOTS=docs/images python -m pytest ...);
# an ordinary run writes them beside the other test output, so it leaves the checkout as it was.
SCREENSHOTS = Path(
    os.environ.get("ADAPTERHUB_UI_SCREENSHOTS") or Path(tempfile.gettempdir()) / "adapterhub-ui-screenshots"
)
CHAT_TEMPLATE = (
    "{% for m in messages %}<s> {{ m['role'] }} {{ m['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}<s> assistant{% endif %}"
)
# What `adapterhub train` keeps per evaluation (adapterhub/train.py), stored as the manifest's training.history.
TRAINING_HISTORY = [{"epoch": e, "step": 10 * e, "train_loss": loss, "accuracy": accuracy}
                    for e, loss, accuracy in ((1, 0.69, 0.64), (2, 0.52, 0.77), (3, 0.41, 0.83))]  # fmt: skip
HOSTILE_DESCRIPTION = "<script>alert(1)</script> and <img src=x onerror=alert(1)>"
HOSTILE_LABELS = ["<script>alert(1)</script>", "<img src=x onerror=alert(1)>"]


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """pytest-playwright's launch arguments, pointed at the apt browser (Playwright's own download is not used)."""
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: {INSTALL_HINT}", pytrace=False)
    return {**browser_type_launch_args, "executable_path": str(CHROMIUM), "args": CHROMIUM_ARGS}


@pytest.fixture
def browser_context_args(browser_context_args):
    return {**browser_context_args, "viewport": {"width": 1100, "height": 760}}


def screenshot(page, name: str, part=None) -> Path:
    """Save what the page shows as SCREENSHOTS/ui-NAME.png: the viewport (small files), at the top of the page or
    scrolled to the locator ``part``."""
    path = SCREENSHOTS / f"ui-{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    if part is not None:
        part.evaluate("element => element.scrollIntoView({block: 'center'})")
    page.screenshot(path=path, animations="disabled")
    return path


# ---- servers on loopback


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class RunningServer:
    """An `adapterhub` command serving HTTP on 127.0.0.1 in its own process."""

    process: subprocess.Popen
    url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)


def start_adapterhub(args: list[str], home: Path, ready_path: str, timeout_s: float = 180.0) -> RunningServer:
    """`adapterhub ARGS --port P` with ADAPTERHUB_HOME=home; returns once GET ready_path answers below 500."""
    executable = shutil.which("adapterhub")
    assert executable, "the adapterhub console script is not installed (pip install -e .)"
    port = free_port()
    log = home / f"{args[0]}-{port}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "ADAPTERHUB_HOME": str(home), "ADAPTERHUB_CACHE": str(home / "cache")}
    env.pop("ADAPTERHUB_REGISTRY", None)
    with log.open("wb") as sink:
        process = subprocess.Popen([executable, *args, "--port", str(port)], stdout=sink, stderr=subprocess.STDOUT,
                                   env=env)  # fmt: skip
    server = RunningServer(process, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise AssertionError(f"`adapterhub {args[0]}` exited with {process.returncode}:\n{server.output()}")
        if time.monotonic() > deadline:
            server.stop()
            raise AssertionError(f"`adapterhub {args[0]}` did not answer within {timeout_s:.0f}s:\n{server.output()}")
        try:
            if httpx.get(server.url + ready_path, timeout=5).status_code < 500:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.1)


# ---- a registry of tiny real adapters


def make_chat_llama(directory: Path) -> Path:
    """The suite's tiny Llama with a chat template, so the playground's chat mode has one to apply."""
    from transformers import AutoTokenizer

    make_tiny_llama(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(directory)
    return directory


def push_lora(registry: Registry, base: Base, name: str, workdir: Path, *, seed: int, r: int = 4,
              target_modules: str = "all-linear", manifest: dict | None = None, metrics: dict | None = None,
              tags: tuple[str, ...] = ()):  # fmt: skip
    """Push a LoRA with random (seeded) non-zero weights on ``base``: real tensors a server can load."""
    options = adapters.make_options("lora", {"r": r, "dropout": 0, "target_modules": target_modules})
    model = adapters.attach(base, "lora", options)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in (p for p in model.parameters() if p.requires_grad):
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    directory = adapters.save_adapter(model, workdir / f"{name}-{seed}", adapters.build_manifest(base, "lora", options))
    model.unload()
    return registry.push(name, directory, method="lora", base_fingerprint=base.fingerprint_id, manifest=manifest,
                         metrics=metrics, tags=tags)  # fmt: skip


@dataclass
class UiRegistry:
    root: Path  # the registry's root (`--registry`)
    home: Path  # ADAPTERHUB_HOME of the servers started over it
    base_path: Path  # the tiny chat Llama every adapter here was made on
    page_names: list[str]  # the `topic-NN` adapters that make the table longer than one page


def fill_registry(workdir: Path) -> UiRegistry:
    """Every kind of adapter the pages show, made on one tiny Llama:

    - ``sentiment`` @1..3 (tags ``prod`` -> 1, ``staging`` -> 3; accuracy 0.62, 0.71, 0.83; @2 has r=8; @3
      recorded a training history, the curve),
    - ``topic-00`` .. ``topic-11`` (accuracy 0.50 .. 0.61): paging,
    - ``blend`` @1: ``sentiment@1`` and ``topic-00@1`` merged (lineage),
    - ``shared`` @1: fetched from the file remote ``team`` (lineage: the remote and its version),
    - ``hostile`` @1: a manifest whose description, labels and data path hold markup,
    - ``tagged`` @1..2 (tag ``prod`` -> 1): for moving a tag.
    """
    base_path = make_chat_llama(workdir / "tiny-chat-llama")
    registry = Registry(workdir / "registry")
    base = load_base(base_path)
    made = workdir / "made"
    for version, (accuracy, r) in enumerate([(0.62, 4), (0.71, 8), (0.83, 4)], start=1):
        manifest = {"description": f"Sentiment, run {version}"}
        if version == 3:
            manifest["training"] = {"epochs": 3, "history": TRAINING_HISTORY}
        push_lora(registry, base, "sentiment", made, seed=version, r=r, metrics={"accuracy": accuracy},
                  manifest=manifest)  # fmt: skip
    registry.tag("sentiment@1", "prod")
    registry.tag("sentiment@3", "staging")
    page_names = [f"topic-{i:02d}" for i in range(12)]
    for i, name in enumerate(page_names):
        push_lora(registry, base, name, made, seed=100 + i, metrics={"accuracy": round(0.50 + i / 100, 2)})
    merging.merge(registry, "blend", ["sentiment@1", "topic-00@1"], str(base_path), weights=[0.6, 0.4])
    for version in (1, 2):
        push_lora(registry, base, "tagged", made, seed=200 + version)
    registry.tag("tagged@1", "prod")
    push_lora(registry, base, "hostile", made, seed=300, metrics={"accuracy": 0.5},
              manifest={"description": HOSTILE_DESCRIPTION, "labels": HOSTILE_LABELS,
                        "data": {"path": "<img src=x onerror=alert(1)>.csv", "sha256": "0" * 64}})  # fmt: skip
    team = Registry(workdir / "team-registry")
    RemoteConfigs(team.root).add("team", f"file://{workdir / 'shared-remote'}")
    RemoteConfigs(registry.root).add("team", f"file://{workdir / 'shared-remote'}")
    push_lora(team, base, "shared", made, seed=400, metrics={"accuracy": 0.77}, tags=("prod",))
    team.remote("team").push("shared@1", tags=["prod"])
    registry.remote("team").fetch("shared:prod")
    team.close()
    registry.close()
    return UiRegistry(registry.root, workdir / "home", base_path, page_names)
