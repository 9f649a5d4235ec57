"""One page of adapters, filtered and sorted in SQL: what a browsing client (the web pages) asks the index.

`Registry.page` returns the rows of one page and how many match, with `LIMIT`/`OFFSET` and `ORDER BY` run by
SQLite, so a page costs the same at 100 adapters as at 100,000 up to the one `count(*)`: no page reads every
record into Python. The row of a name is its newest version among those matching the filters (as `list` picks
it); the text query then matches that row as `search` does (name, method, a tag or the manifest's
description, case-insensitive substring). Metric filters and sorts read the metrics column with SQLite's JSON
functions; a version without that metric never passes a metric filter and sorts after every version that has it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from adapterhub_registry.errors import RegistryError

METRIC_OPERATORS = (">=", "<=", "!=", ">", "<", "=")  # longest first: `>=` is not `>` followed by `=0.7`
SORTS = ("-created", "created", "name", "-name")  # and metric:NAME, -metric:NAME
MAX_LIMIT = 10_000
_METRIC_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True)
class MetricFilter:
    """`metric op value`, e.g. `MetricFilter("accuracy", ">=", 0.7)`."""

    metric: str
    op: str
    value: float

    def __post_init__(self) -> None:
        check_metric_name(self.metric)
        if self.op not in METRIC_OPERATORS:
            raise RegistryError(f"metric operator {self.op!r} is not one of {', '.join(METRIC_OPERATORS)}")

    @classmethod
    def parse(cls, text: str) -> MetricFilter:
        """`accuracy>=0.7` -> `MetricFilter("accuracy", ">=", 0.7)`."""
        for op in METRIC_OPERATORS:
            metric, found, value = text.partition(op)
            if found:
                try:
                    number = float(value)
                except ValueError:
                    raise RegistryError(f"metric filter {text!r}: {value!r} is not a number; "
                                        "write it as NAME>=NUMBER, e.g. accuracy>=0.7") from None  # fmt: skip
                if number != number:  # NaN compares false with everything
                    raise RegistryError(f"metric filter {text!r}: compare with a number, not NaN")
                return cls(metric.strip(), op, number)
        raise RegistryError(
            f"metric filter {text!r} has no comparison; write it as NAME OP NUMBER with OP one of "
            f"{', '.join(METRIC_OPERATORS)}, e.g. accuracy>=0.7"
        )


@dataclass(frozen=True)
class PageQuery:
    """What one page shows: the filters (each optional), the sort and the window."""

    text: str | None = None
    tag: str | None = None
    method: str | None = None
    base: str | None = None  # a base fingerprint or its prefix
    metrics: Sequence[MetricFilter] = field(default_factory=tuple)
    sort: str = "-created"
    offset: int = 0
    limit: int = 50

    def __post_init__(self) -> None:
        sort_key(self.sort)
        if not isinstance(self.offset, int) or self.offset < 0:
            raise RegistryError(f"offset must be a non-negative integer, got {self.offset!r}")
        if not isinstance(self.limit, int) or not 0 <= self.limit <= MAX_LIMIT:
            raise RegistryError(f"limit must be an integer from 0 to {MAX_LIMIT}, got {self.limit!r}")


def check_metric_name(metric: str) -> str:
    if not _METRIC_NAME.match(metric):
        raise RegistryError(
            f"metric name {metric!r} is not valid: letters, digits, '_', '.', '-' only, e.g. accuracy or eval_f1"
        )
    return metric


def sort_key(sort: str) -> tuple[str, bool]:
    """`-metric:accuracy` -> ("metric:accuracy", descending=True); an unknown sort is a `RegistryError`."""
    descending = sort.startswith("-")
    key = sort[1:] if descending else sort
    if sort in SORTS or (key.startswith("metric:") and check_metric_name(key.removeprefix("metric:"))):
        return key, descending
    raise RegistryError(f"unknown sort {sort!r}; use one of {', '.join(SORTS)}, metric:NAME or -metric:NAME")


def metric_path(metric: str) -> str:
    """The JSON path of a top-level metric; the name is checked, so it cannot close the quotes."""
    return f'$."{check_metric_name(metric)}"'


def like_pattern(text: str) -> str:
    """`text` as a LIKE pattern matching it anywhere, with `%`, `_` and `\\` taken literally (ESCAPE '\\')."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def page_sql(query: PageQuery, columns: str) -> tuple[str, str, dict[str, Any]]:
    """(the page's SELECT, the matching rows' count, their named parameters)."""
    params: dict[str, Any] = {}
    filters: list[str] = []  # on alias {a}: which versions are candidates
    if query.method is not None:
        filters.append("{a}.method = :method")
        params["method"] = query.method
    if query.base is not None:
        filters.append("{a}.base_fingerprint LIKE :base ESCAPE '\\'")
        params["base"] = like_pattern(query.base)[1:]  # a prefix
    if query.tag is not None:
        filters.append(
            "EXISTS (SELECT 1 FROM tags t WHERE t.name = {a}.name AND t.version = {a}.version AND t.tag = :tag)"
        )
        params["tag"] = query.tag
    for i, metric in enumerate(query.metrics):
        value = f"json_extract({{a}}.metrics, :mpath{i})"
        filters.append(f"(typeof({value}) IN ('integer', 'real') AND {value} {metric.op} :mvalue{i})")
        params[f"mpath{i}"], params[f"mvalue{i}"] = metric_path(metric.metric), metric.value
    newest = " AND ".join(["b.name = a.name", *(f.format(a="b") for f in filters)])
    where = [f.format(a="a") for f in filters]
    where.append(f"a.version = (SELECT max(b.version) FROM adapters b WHERE {newest})")
    if query.text:
        where.append(
            "(a.name LIKE :text ESCAPE '\\' OR a.method LIKE :text ESCAPE '\\'"
            " OR json_extract(a.manifest, '$.description') LIKE :text ESCAPE '\\'"
            " OR EXISTS (SELECT 1 FROM tags t WHERE t.name = a.name AND t.version = a.version AND t.tag LIKE :text ESCAPE '\\'))"
        )
        params["text"] = like_pattern(query.text)
    key, descending = sort_key(query.sort)
    direction = "DESC" if descending else "ASC"
    if key == "created":
        order = f"a.created_at {direction}, a.name"
    elif key == "name":
        order = f"a.name {direction}"
    else:
        params["sort_path"] = metric_path(key.removeprefix("metric:"))
        order = (f"json_extract(a.metrics, :sort_path) IS NULL, json_extract(a.metrics, :sort_path) {direction}, "
                 "a.name")  # fmt: skip
    condition = " AND ".join(where)
    params.update(limit=query.limit, offset=query.offset)
    select = f"SELECT {columns} FROM adapters a WHERE {condition} ORDER BY {order} LIMIT :limit OFFSET :offset"
    count = f"SELECT count(*) FROM adapters a WHERE {condition}"
    return select, count, params
