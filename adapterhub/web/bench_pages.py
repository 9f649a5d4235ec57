"""``/ui/benchmarks``: the recorded benchmark results (``benchmarks/results/<suite>-<device>.{json,md,png}``) as
tables with their plots.

Only files directly in the results folder are read, by a name that matches ``RESULT``; the folder's listing is
the allow-list, so no request can name a path outside it (``..``, a slash, a link pointing elsewhere). The
markdown reports are shown as their tables and paragraphs, every piece of text escaped by the template.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from adapterhub.web.context import UI
from adapterhub.web.render import PageError, query_fields, render

RESULT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*\.(json|md|png)$")
_BOLD = re.compile(r"\*\*(.+?)\*\*")


@dataclass
class Block:
    kind: str  # heading, paragraph, item, table
    text: str = ""
    header: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)


def add_routes(router: APIRouter, ui: UI) -> None:
    @router.get("/benchmarks")
    def benchmarks(request: Request):
        query_fields(request, ())
        files = _files(ui.bench_results)
        suites = sorted({name.rsplit(".", 1)[0] for name in files if name.endswith(".md")})
        return render("benchmarks.html", suites=suites, folder=ui.bench_results, **ui.common(request))

    @router.get("/benchmarks/files/{name}")
    def result_file(name: str) -> FileResponse:
        path = _files(ui.bench_results).get(name)
        if path is None:
            raise PageError(404, f"no recorded result {name!r}; /ui/benchmarks lists them")
        media = {"json": "application/json", "md": "text/plain; charset=utf-8", "png": "image/png"}
        return FileResponse(path, media_type=media[name.rsplit(".", 1)[1]])

    @router.get("/benchmarks/{suite}")
    def one_suite(suite: str, request: Request):
        query_fields(request, ())
        files = _files(ui.bench_results)
        report = files.get(f"{suite}.md")
        if report is None:
            raise PageError(404, f"no recorded benchmark {suite!r}; /ui/benchmarks lists them")
        blocks = markdown_blocks(report.read_text(encoding="utf-8", errors="replace"))
        return render("bench_suite.html", suite=suite, blocks=blocks, plot=f"{suite}.png" if f"{suite}.png" in files else None,
                      data=f"{suite}.json" if f"{suite}.json" in files else None, **ui.common(request))  # fmt: skip


def _files(folder: Path | None) -> dict[str, Path]:
    """Result files directly in ``folder`` by name: regular files only, never a link or a subfolder."""
    if folder is None or not folder.is_dir():
        raise PageError(404, "no benchmark results folder here; record one with "
                             "`adapterhub bench SUITE --output benchmarks/results`")  # fmt: skip
    found = {}
    for path in folder.iterdir():
        if RESULT.match(path.name) and path.is_file() and not path.is_symlink():
            found[path.name] = path
    return found


def markdown_blocks(text: str) -> list[Block]:
    """The report's headings, paragraphs, list items and pipe tables (what ``benchmarks/report.py`` writes)."""
    blocks: list[Block] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("|"):
            cells = [plain(c.strip()) for c in stripped.strip("|").split("|")]
            if blocks and blocks[-1].kind == "table":
                if not all(set(c) <= set("-: ") for c in cells):
                    blocks[-1].rows.append(cells)
            else:
                blocks.append(Block("table", header=cells))
        elif stripped.startswith("#"):
            blocks.append(Block("heading", plain(stripped.lstrip("#").strip())))
        elif stripped.startswith(("- ", "* ")):
            blocks.append(Block("item", plain(stripped[2:])))
        else:
            blocks.append(Block("paragraph", plain(stripped)))
    return blocks


def plain(text: str) -> str:
    """Markdown emphasis and code marks dropped: the template shows the words."""
    return _BOLD.sub(r"\1", text).replace("`", "").replace("*", "")
