"""Fault injection for the registry: processes killed with SIGKILL mid-write, and many processes at once.

Two workloads, each returning a summary of what it did and what it checked:

* `run_crashes`: a child process pushes, tags, re-tags, sets metrics and deletes adapters in a loop and is
  killed with SIGKILL, either from outside at a random moment or by itself at a chosen point of a write
  (before/after an fsync, before/after a rename, inside an open transaction, between a delete's commit and
  its blob removal). After every kill the registry is reopened and checked: every push the child saw
  return is there with its bytes, every entry verifies, no temp file of the dead writer survives the
  reopen, and `verify(repair=True)` leaves no orphan blob.
* `run_concurrency`: worker processes push, tag, pull, load and delete on a few shared names at once. Every
  push gets a version nobody else got, no entry is lost or corrupt, every pull is byte-exact, and no error
  other than "not found" (another worker deleted it first) reaches a caller.

The tests (tests/test_reliability_crash.py, tests/test_reliability_concurrency.py) run them small; run them
big with `ADAPTERHUB_STRESS=1 python -m pytest tests/test_reliability_crash.py
tests/test_reliability_concurrency.py`, or directly:

    python tests/stress/registry_stress.py crash --crashes 200
    python tests/stress/registry_stress.py concurrency --workers 8 --ops 200

Processes are forked, so a child starts in milliseconds with torch already imported.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import random
import signal
import sqlite3
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from adapterhub_registry import NotFoundError, Registry
from adapterhub_registry import index as index_module
from adapterhub_registry.blobs import BlobStore
from adapterhub_registry.index import Writer

CONFIG = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}
KILL_POINTS = ("fsync", "after-fsync", "replace", "after-replace", "in-transaction", "before-blob-removal")
_FORK = multiprocessing.get_context("fork")


def make_adapters(directory: Path, count: int) -> list[Path]:
    """`count` PEFT directories of different content and size (4 KiB .. ~1 MiB), so writes take a while."""
    made = []
    for i in range(count):
        generator = torch.Generator().manual_seed(i)
        width = 8 << (i % 8)  # 8 .. 1024 columns
        path = directory / f"adapter-{i}"
        path.mkdir(parents=True, exist_ok=True)
        tensors = {
            "base_model.model.q_proj.lora_A.weight": torch.randn(64, width, generator=generator),
            "base_model.model.q_proj.lora_B.weight": torch.randn(width, 4, generator=generator),
        }
        save_file(tensors, path / "adapter_model.safetensors")
        (path / "adapter_config.json").write_text(json.dumps(CONFIG))
        made.append(path)
    return made


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class _Log:
    """Append-only JSON lines, one `os.write` each, so a kill leaves at most a missing last line."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def __call__(self, **event: object) -> None:
        os.write(self._fd, (json.dumps(event) + "\n").encode())


def read_log(path: Path) -> list[dict]:
    events = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                pass  # a line cut by the kill
    return events


# ---------------------------------------------------------------------------------------------- crashes


def _install_kill_point(point: str, after: int) -> None:
    """Make this (child) process SIGKILL itself at the `after`-th time it reaches `point`."""
    count = 0

    def reached() -> None:
        nonlocal count
        count += 1
        if count >= after:
            os.kill(os.getpid(), signal.SIGKILL)

    def wrap(owner: object, name: str, before: bool) -> None:
        original = getattr(owner, name)

        def patched(*args, **kwargs):
            if before:
                reached()
            result = original(*args, **kwargs)
            if not before:
                reached()
            return result

        setattr(owner, name, patched)

    if point in ("fsync", "after-fsync"):
        wrap(os, "fsync", before=point == "fsync")
    elif point in ("replace", "after-replace"):
        wrap(os, "replace", before=point == "replace")
    elif point == "in-transaction":  # the row is written, COMMIT has not run
        wrap(Writer, "add_version", before=False)
        wrap(Writer, "delete", before=False)
        wrap(Writer, "set_tag", before=False)
    elif point == "before-blob-removal":  # a delete committed its rows; the blobs are still there
        wrap(BlobStore, "remove", before=True)


def _fresh_copy(template: Path, directory: Path, rng: random.Random) -> Path:
    """`template` with its last 8 data bytes randomised: a valid adapter whose bytes are not stored yet."""
    directory.mkdir(parents=True, exist_ok=True)
    weights = bytearray((template / "adapter_model.safetensors").read_bytes())
    weights[-8:] = rng.randbytes(8)
    (directory / "adapter_model.safetensors").write_bytes(weights)
    (directory / "adapter_config.json").write_text(json.dumps(CONFIG))
    return directory


def _crash_victim(root: str, adapters: list[str], log_path: str, seed: int, point: str | None, after: int) -> None:
    if point is not None:
        _install_kill_point(point, after)
    rng = random.Random(seed)
    log = _Log(Path(log_path))
    registry = Registry(root)
    fresh = Path(log_path).parent / f"fresh-{os.getpid()}"
    while True:
        roll = rng.random()
        name = f"n{rng.randrange(4)}"
        if roll < 0.55:
            # Mostly new bytes (a blob is written), sometimes bytes already stored (the blob is shared).
            directory = (
                _fresh_copy(Path(rng.choice(adapters)), fresh, rng)
                if rng.random() < 0.7
                else Path(rng.choice(adapters))
            )
            tags = ["latest"] if rng.random() < 0.5 else []
            record = registry.push(name, directory, method="lora", tags=tags, metrics={"seed": seed})
            log(
                op="pushed",
                ref=record.ref,
                sha=record.blob_sha256,
                expected=sha256_of(directory / "adapter_model.safetensors"),
            )
            continue
        versions = registry.list(name=name, all_versions=True)
        if not versions:
            continue
        target = rng.choice(versions)
        if roll < 0.7:
            registry.tag(target.ref, f"t{rng.randrange(3)}")
        elif roll < 0.8:
            registry.set_metrics(target.ref, {"step": rng.randrange(100)})
        else:
            log(op="deleting", ref=target.ref)
            registry.delete(target.ref)
            log(op="deleted", ref=target.ref)


@dataclass
class CrashSummary:
    crashes: int = 0
    external_kills: int = 0
    self_kills: dict[str, int] = field(default_factory=dict)
    pushes_committed: int = 0
    entries_verified: int = 0  # entries re-hashed by verify(), summed over all checks
    entries_loaded: int = 0  # entries loaded with safetensors at the end
    temp_files_cleaned_on_open: int = 0
    orphan_blobs_repaired: int = 0
    deletes_interrupted: int = 0
    problems: list[str] = field(default_factory=list)


def _index_problems(root: Path) -> list[str]:
    """Structural checks straight on the SQLite file: integrity, tags and counters consistent with rows."""
    conn = sqlite3.connect(f"file:{root / 'index.sqlite'}?mode=ro", uri=True)
    try:
        problems = []
        (integrity,) = conn.execute("PRAGMA integrity_check").fetchone()
        if integrity != "ok":
            problems.append(f"integrity_check: {integrity}")
        dangling = conn.execute(
            "SELECT name, tag, version FROM tags t WHERE NOT EXISTS"
            " (SELECT 1 FROM adapters a WHERE a.name = t.name AND a.version = t.version)"
        ).fetchall()
        if dangling:
            problems.append(f"tags pointing at no version: {dangling}")
        behind = conn.execute(
            "SELECT a.name FROM adapters a LEFT JOIN version_counters c ON c.name = a.name"
            " GROUP BY a.name HAVING max(a.version) > coalesce(max(c.last_version), 0)"
        ).fetchall()
        if behind:
            problems.append(f"version counters behind their rows (versions could be reused): {behind}")
        return problems
    finally:
        conn.close()


def _check_after_crash(root: Path, log_path: Path, summary: CrashSummary, repair: bool) -> None:
    blob_dir = root / "blobs" / "sha256"
    temps_before = [p for p in blob_dir.iterdir() if p.name.startswith(".tmp-")] if blob_dir.exists() else []
    with Registry(root) as registry:  # opening removes temp files of dead writers
        left = [p.name for p in blob_dir.iterdir() if p.name.startswith(".tmp-")]
        if left:
            summary.problems.append(f"crash {summary.crashes}: temp files survived reopening: {left}")
        summary.temp_files_cleaned_on_open += len(temps_before) - len(left)
        summary.problems += [f"crash {summary.crashes}: {p}" for p in _index_problems(root)]

        events = read_log(log_path)
        deleted = {e["ref"] for e in events if e["op"] == "deleted"}
        in_flight = {e["ref"] for e in events if e["op"] == "deleting"} - deleted
        summary.deletes_interrupted = len(in_flight)
        for event in events:
            if event["op"] != "pushed":
                continue
            if event["sha"] != event["expected"]:
                summary.problems.append(f"{event['ref']} stored as {event['sha']}, pushed {event['expected']}")
            if event["ref"] in deleted | in_flight:
                continue
            try:
                record = registry.resolve(event["ref"])
            except NotFoundError:
                summary.problems.append(f"crash {summary.crashes}: committed push {event['ref']} is lost")
                continue
            if record.blob_sha256 != event["sha"]:
                summary.problems.append(f"crash {summary.crashes}: {event['ref']} now points at other bytes")
        for ref in deleted:
            try:
                registry.resolve(ref)
                summary.problems.append(f"crash {summary.crashes}: deleted {ref} came back")
            except NotFoundError:
                pass

        report = registry.verify(repair=repair)
        summary.entries_verified += report.checked
        if report.corrupt:
            summary.problems.append(f"crash {summary.crashes}: corrupt entries {report.corrupt}")
        if repair:
            summary.orphan_blobs_repaired += len(report.orphans)
            after = registry.verify()
            if after.orphans or after.temp_files or not after.ok_all:
                summary.problems.append(f"crash {summary.crashes}: repair left {after.to_dict()}")


def run_crashes(
    root: Path, crashes: int, *, seed: int = 0, repair_every: int = 5, max_wait_s: float = 0.3
) -> CrashSummary:
    """Kill a writing process `crashes` times (half from outside at random times, half at chosen points)."""
    rng = random.Random(seed)
    work = Path(tempfile.mkdtemp(prefix="crash-work-", dir=root.parent))
    adapters = [str(p) for p in make_adapters(work / "adapters", 12)]
    log_path = work / "log.jsonl"
    Registry(root).close()
    summary = CrashSummary()
    for i in range(crashes):
        point = None if i % 2 == 0 else KILL_POINTS[(i // 2) % len(KILL_POINTS)]
        after = rng.randint(1, 6)
        child = _FORK.Process(
            target=_crash_victim, args=(str(root), adapters, str(log_path), rng.randrange(1 << 30), point, after)
        )
        child.start()
        if point is None:
            time.sleep(rng.uniform(0.0, max_wait_s))
            child.kill()
        child.join(timeout=30)
        if child.is_alive():  # a self-kill point never reached: stop it from outside instead
            child.kill()
            child.join()
            summary.problems.append(f"crash {i}: kill point {point} #{after} not reached in 30 s")
        if child.exitcode != -signal.SIGKILL:
            summary.problems.append(f"crash {i}: the writer exited with {child.exitcode}, not by SIGKILL (it raised)")
        summary.crashes += 1
        if point is None:
            summary.external_kills += 1
        else:
            summary.self_kills[point] = summary.self_kills.get(point, 0) + 1
        _check_after_crash(root, log_path, summary, repair=(i + 1) % repair_every == 0 or i == crashes - 1)
    summary.pushes_committed = sum(1 for e in read_log(log_path) if e["op"] == "pushed")
    with Registry(root) as registry:
        for record in registry.list(all_versions=True):
            registry.load(record.ref)
            summary.entries_loaded += 1
    return summary


# ------------------------------------------------------------------------------------------ concurrency


def _concurrency_worker(root: str, adapters: list[str], log_path: str, seed: int, ops: int, pull_dir: str) -> None:
    # SQLite's own busy wait is cut to 1 ms so lock contention reaches the registry's retry-with-backoff
    # loop, whose sleeps are counted here (nothing else in this process sleeps).
    index_module._BUSY_TIMEOUT_MS = 1
    retries = 0
    sleep = time.sleep

    def counted_sleep(seconds: float) -> None:
        nonlocal retries
        retries += 1
        sleep(seconds)

    time.sleep = counted_sleep
    rng = random.Random(seed)
    log = _Log(Path(log_path))
    registry = Registry(root)
    for i in range(ops):
        roll = rng.random()
        name = f"c{rng.randrange(3)}"
        try:
            if roll < 0.4:
                template = Path(rng.choice(adapters))
                directory = (
                    _fresh_copy(template, Path(pull_dir) / f"fresh-{os.getpid()}", rng)
                    if rng.random() < 0.5
                    else template
                )
                record = registry.push(name, directory, method="lora", tags=["latest"] if rng.random() < 0.3 else [])
                log(
                    op="pushed",
                    ref=record.ref,
                    sha=record.blob_sha256,
                    expected=sha256_of(directory / "adapter_model.safetensors"),
                )
                continue
            versions = registry.list(name=name, all_versions=True)
            if not versions:
                continue
            target = rng.choice(versions)
            if roll < 0.55:
                registry.tag(target.ref, f"t{rng.randrange(3)}")
                log(op="tagged")
            elif roll < 0.7:
                dest = Path(pull_dir) / f"{os.getpid()}-{i}"
                record = registry.pull(target.ref, dest)
                exact = sha256_of(dest / "adapter_model.safetensors") == record.blob_sha256
                log(op="pulled", ref=record.ref, exact=exact)
            elif roll < 0.8:
                record, tensors = registry.load(target.ref)
                log(op="loaded", ref=record.ref, tensors=len(tensors))
            elif roll < 0.95:  # sometimes every version at once, so deletes race with pulls of the same name
                deleted = registry.delete(name if rng.random() < 0.3 else target.ref)
                log(op="deleted", refs=[r.ref for r in deleted])
            else:
                report = registry.verify()
                log(op="verified", corrupt=report.corrupt)
        except NotFoundError:
            log(op="not-found")  # another worker deleted it between our list and our call: expected
        except Exception as exc:  # anything else is a failure the test reports
            log(op="error", error=f"{type(exc).__name__}: {exc}")
    registry.close()
    log(op="lock-retries", count=retries)


@dataclass
class ConcurrencySummary:
    workers: int = 0
    operations: int = 0  # completed calls (a call that found nothing to act on is not counted)
    by_op: dict[str, int] = field(default_factory=dict)
    lock_retries: int = 0  # times a worker found the index locked and backed off
    entries_at_end: int = 0
    entries_loaded: int = 0
    problems: list[str] = field(default_factory=list)


def run_concurrency(
    root: Path, workers: int, ops: int, *, seed: int = 0, timeout_s: float = 120.0
) -> ConcurrencySummary:
    """`workers` processes doing `ops` random operations each on one registry; then check the result."""
    work = Path(tempfile.mkdtemp(prefix="concurrency-work-", dir=root.parent))
    adapters = [str(p) for p in make_adapters(work / "adapters", 6)]
    Registry(root).close()
    logs = [work / f"worker-{w}.jsonl" for w in range(workers)]
    processes = [
        _FORK.Process(
            target=_concurrency_worker,
            args=(str(root), adapters, str(logs[w]), seed * 1000 + w, ops, str(work / "pulled")),
        )
        for w in range(workers)
    ]
    for process in processes:
        process.start()
    deadline = time.monotonic() + timeout_s
    summary = ConcurrencySummary(workers=workers)
    for process in processes:
        process.join(timeout=max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()
            summary.problems.append(f"worker {process.pid} did not finish in {timeout_s:.0f} s (deadlock?)")
        elif process.exitcode != 0:
            summary.problems.append(f"worker {process.pid} exited with {process.exitcode}")

    events = [e for log in logs for e in read_log(log)]
    for event in events:
        if event["op"] == "lock-retries":
            summary.lock_retries += event["count"]
        else:
            summary.by_op[event["op"]] = summary.by_op.get(event["op"], 0) + 1
            summary.operations += 1
    summary.problems += [f"a caller saw: {e['error']}" for e in events if e["op"] == "error"]
    summary.problems += [
        f"pull of {e['ref']} was not byte-exact" for e in events if e["op"] == "pulled" and not e["exact"]
    ]
    summary.problems += [
        f"verify during the run reported {e['corrupt']}" for e in events if e["op"] == "verified" and e["corrupt"]
    ]

    pushed = [e["ref"] for e in events if e["op"] == "pushed"]
    deleted = [ref for e in events if e["op"] == "deleted" for ref in e["refs"]]
    for kind, refs in (("pushed", pushed), ("deleted", deleted)):
        twice = sorted({r for r in refs if refs.count(r) > 1})
        if twice:
            summary.problems.append(f"{kind} twice (duplicated versions): {twice}")
    summary.problems += [
        f"{e['ref']} stored as other bytes" for e in events if e["op"] == "pushed" and e["sha"] != e["expected"]
    ]
    expected = set(pushed) - set(deleted)
    sha_of = {e["ref"]: e["sha"] for e in events if e["op"] == "pushed"}
    with Registry(root) as registry:
        present = {r.ref: r for r in registry.list(all_versions=True)}
        if set(present) != expected:
            lost, extra = sorted(expected - set(present)), sorted(set(present) - expected)
            summary.problems.append(f"index disagrees with what callers saw: lost {lost}, unexplained {extra}")
        summary.entries_at_end = len(present)
        for ref, record in present.items():
            if ref in sha_of and record.blob_sha256 != sha_of[ref]:
                summary.problems.append(f"{ref} points at other bytes than were pushed")
            registry.load(ref)
            summary.entries_loaded += 1
        report = registry.verify()
        if not report.ok_all:
            summary.problems.append(f"verify after the run: {report.to_dict()}")
    summary.problems += _index_problems(root)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="workload", required=True)
    crash = sub.add_parser("crash", help="kill -9 a writer repeatedly, check the registry after each kill")
    crash.add_argument("--crashes", type=int, default=200)
    crash.add_argument("--seed", type=int, default=0)
    concurrency = sub.add_parser("concurrency", help="several processes pushing, tagging, pulling, deleting")
    concurrency.add_argument("--workers", type=int, default=8)
    concurrency.add_argument("--ops", type=int, default=200, help="operations per worker")
    concurrency.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="registry-stress-") as scratch:
        root = Path(scratch) / "registry"
        started = time.monotonic()
        if args.workload == "crash":
            summary = asdict(run_crashes(root, args.crashes, seed=args.seed))
        else:
            summary = asdict(run_concurrency(root, args.workers, args.ops, seed=args.seed, timeout_s=3600))
        summary["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(summary, indent=2))
    return 1 if summary["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
