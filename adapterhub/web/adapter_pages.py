"""The registry's pages: the adapters table (paged, searched, filtered and sorted in SQL), one adapter's page,
two versions compared, and moving a tag.

Handlers are plain functions (FastAPI runs them on its thread pool, so the SQLite reads never block the event
loop of a server that is streaming tokens). A page reads one page of the index (``Registry.page``) or one
adapter's versions, never every adapter.
"""

from __future__ import annotations

import math
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse

from adapterhub.web import adapter_view
from adapterhub.web.context import UI
from adapterhub.web.lineage import adapter_href, curve_of, lineage_of
from adapterhub.web.render import PageError, form_fields, positive_int, query_fields, render
from adapterhub_registry import AdapterRecord, InvalidNameError, NotFoundError, RegistryError
from adapterhub_registry.paging import MetricFilter, sort_key

LIST_FIELDS = ("q", "tag", "method", "base", "metric", "sort", "page", "size")
DEFAULT_SIZE, MAX_SIZE = 50, 200
SORT_CHOICES = ("-created", "created", "name", "-name")


def add_routes(router: APIRouter, ui: UI) -> None:
    @router.get("/adapters")
    def adapters(request: Request):
        fields = query_fields(request, LIST_FIELDS)
        size = positive_int(fields.get("size"), "size", DEFAULT_SIZE, MAX_SIZE)
        page = positive_int(fields.get("page"), "page", 1)
        sort = fields.get("sort") or "-created"
        metrics = [_metric(text) for text in request.query_params.getlist("metric") if text]
        try:
            sort_key(sort)
            records, total = ui.registry.page(
                fields.get("q") or None, tag=fields.get("tag") or None, method=fields.get("method") or None,
                base=fields.get("base") or None, metrics=metrics, sort=sort, offset=(page - 1) * size, limit=size,
            )  # fmt: skip
        except RegistryError as exc:
            raise PageError(400, str(exc)) from None
        pages = max(1, math.ceil(total / size))
        if page > pages:
            raise PageError(400, f"page {page} is past the end: {total} adapters match, {pages} page(s) of {size}; "
                                 f"ask for page={pages} or fewer")  # fmt: skip
        kept = {k: v for k, v in fields.items() if k not in ("page", "metric") and v}
        kept_metrics = [("metric", m) for m in request.query_params.getlist("metric") if m]

        def link(number: int) -> str:
            return "/ui/adapters?" + urlencode([*kept.items(), *kept_metrics, ("page", str(number))])

        return render(
            "adapters.html", records=records, total=total, page=page, pages=pages, size=size,
            prev_href=link(page - 1) if page > 1 else None, next_href=link(page + 1) if page < pages else None,
            fields=fields, metric_text=", ".join(m for _, m in kept_metrics), sort=sort, sorts=SORT_CHOICES,
            href=adapter_href, **ui.common(request),
        )  # fmt: skip

    @router.get("/adapters/{name}/compare")
    def compare(name: str, request: Request):
        fields = query_fields(request, ("a", "b"))
        if not fields.get("a") or not fields.get("b"):
            raise PageError(400, "name two versions to compare: ?a=1&b=2")
        a = _version(ui, name, positive_int(fields["a"], "a", 1))
        b = _version(ui, name, positive_int(fields["b"], "b", 1))
        settings, metrics = adapter_view.compared(a, b)
        return render("compare.html", name=name, a=a, b=b, settings=settings, metrics=metrics, href=adapter_href,
                      differing=sum(1 for row in settings if row[3]), **ui.common(request))  # fmt: skip

    @router.get("/adapters/{name}")
    def newest(name: str, request: Request):
        return _adapter_page(ui, request, _resolve(ui, name))

    @router.get("/adapters/{name}/{version}")
    def one_version(name: str, version: str, request: Request):
        return _adapter_page(ui, request, _version(ui, name, positive_int(version, "version", 1)))

    @router.post("/adapters/{name}/tags")
    async def move_tag(name: str, request: Request):
        form = await form_fields(request)
        ui.sessions.require(request, form.get("csrf"))
        tag = form.get("tag", "").strip()
        if not tag:
            raise PageError(400, "give the tag to move and the version (a number) it should point at")
        version = positive_int(form.get("version", "").strip() or "-", "version", 1)
        try:
            ui.registry.tag(f"{name}@{version}", tag)
        except NotFoundError as exc:
            raise PageError(404, str(exc)) from None
        except (InvalidNameError, RegistryError) as exc:
            raise PageError(400, str(exc)) from None
        return RedirectResponse(adapter_href(name), status_code=303)


def _metric(text: str) -> MetricFilter:
    try:
        return MetricFilter.parse(text)
    except RegistryError as exc:
        raise PageError(400, str(exc)) from None


def _resolve(ui: UI, ref: str) -> AdapterRecord:
    try:
        return ui.registry.resolve(ref)
    except NotFoundError as exc:
        raise PageError(404, str(exc)) from None
    except (InvalidNameError, RegistryError) as exc:
        raise PageError(400, str(exc)) from None


def _version(ui: UI, name: str, version: int) -> AdapterRecord:
    return _resolve(ui, f"{name}@{version}")


def _adapter_page(ui: UI, request: Request, record: AdapterRecord):
    versions = ui.registry.list(name=record.name, all_versions=True)
    tags = sorted((tag, v.version) for v in versions for tag in v.tags)
    lineage = lineage_of(record, ui.registry)
    previous = max((v.version for v in versions if v.version < record.version), default=None)
    return render(
        "adapter.html", record=record, versions=versions, tags=tags,
        sections=adapter_view.manifest_sections(record.manifest), metrics=adapter_view.metric_cells(record.metrics),
        files=adapter_view.files_of(record, ui.registry.peft_config_text(record)), lineage=lineage,
        curve=curve_of(adapter_view.history_of(record.manifest)), compare_with=previous, href=adapter_href,
        **ui.common(request),
    )  # fmt: skip
