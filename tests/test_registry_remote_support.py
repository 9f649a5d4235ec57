"""Shared fixtures of the remote registry tests: a real S3 server on loopback (moto's server mode) and remotes.

moto runs as `ThreadedMotoServer` inside the test process, started once per session; each test gets its own
bucket, so tests never see each other's objects. Pushers in subprocesses reach the same server over HTTP.
Kept in a test module (not conftest.py), like test_registry_support; it holds no tests of its own.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import uuid

import pytest

from adapterhub_registry import Registry
from adapterhub_registry.remote_config import RemoteConfigs

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,  # never the developer's own ~/.aws settings
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}


@pytest.fixture(scope="session")
def moto_endpoint() -> str:
    """The URL of a moto S3 server on 127.0.0.1 (a free port), up for the whole session."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws_env(monkeypatch) -> dict[str, str]:
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return dict(AWS_ENV)


@pytest.fixture
def bucket(moto_endpoint, aws_env) -> str:
    """A new, empty bucket on the moto server."""
    import boto3

    name = f"adapters-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_endpoint).create_bucket(Bucket=name)
    return name


def add_remote(registry: Registry, url: str, endpoint_url: str | None = None, name: str = "origin") -> None:
    RemoteConfigs(registry.root).add(name, url, endpoint_url)


def home_with_remote(tmp_path, name: str, url: str, endpoint: str | None = None) -> Registry:
    """A registry of its own (one machine) under ``tmp_path/name``, with ``url`` as its remote ``origin``."""
    registry = Registry(tmp_path / name)
    add_remote(registry, url, endpoint)
    return registry


def pushed(registry: Registry, tmp_path, name: str, seed: int, **fields) -> str:
    """Push a random LoRA of ``seed`` to ``registry`` as ``name``; its ref."""
    from test_registry_support import write_adapter

    return registry.push(name, write_adapter(tmp_path / f"{name}-{seed}", seed=seed), method="lora", **fields).ref


def python_env(extra: dict[str, str]) -> dict[str, str]:
    """The environment for a subprocess (adapterhub_registry is installed, as the README installs it)."""
    return {**os.environ, **extra}


def start_python(code: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], env=python_env(env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def push_until_killed(root: str, count: int, ready) -> None:
    """Push `sst2@1..count` of the registry at `root` to its remote `origin`, tagging each `prod`, until killed
    (a multiprocessing target: this module imports no torch, so a forked child starts in milliseconds)."""
    remote = Registry(root).remote("origin")
    remote.store.list("index/")  # connected before the parent starts its clock
    ready.set()
    for version in range(1, count + 1):
        remote.push(f"sst2@{version}", tags=["prod"])
