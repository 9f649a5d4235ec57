"""The writing half of the harness: one suite's run as `<suite>-<device>.json`, `.md` and `.png`.

The JSON holds everything (environment, settings, every sample, statistics, ratios, checks); the markdown
table and the plot are views of it. Ratios are adapterhub / baseline on the median: below 1 means
adapterhub took less time (or memory).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from benchmarks.environment import summary_line
from benchmarks.harness import BASELINE, OURS, Context, Measurement, params_label


def _key(m: Measurement) -> tuple[str, str]:
    return m.case, json.dumps(m.params, sort_keys=True)


def _rows(measurements: list[Measurement]) -> list[tuple[str, dict, dict[str, Measurement]]]:
    """(case, params, {impl: measurement}) in the order the suite measured them."""
    rows: dict[tuple[str, str], tuple[str, dict, dict[str, Measurement]]] = {}
    for m in measurements:
        rows.setdefault(_key(m), (m.case, m.params, {}))[2][m.impl] = m
    return list(rows.values())


def _impls(measurements: list[Measurement]) -> list[str]:
    return list(dict.fromkeys(m.impl for m in measurements))


def comparisons(measurements: list[Measurement]) -> list[dict]:
    """adapterhub / baseline ratios of median time and of peak memory, for every case both sides ran."""
    result = []
    for case, params, by_impl in _rows(measurements):
        ours, theirs = by_impl.get(OURS), by_impl.get(BASELINE)
        if ours is None or theirs is None:
            continue
        entry = {
            "case": case, "params": params, "unit": ours.unit,
            "adapterhub_median": ours.stats.median, "peft_median": theirs.stats.median,
            "ratio": ours.stats.median / theirs.stats.median if theirs.stats.median else None,
        }  # fmt: skip
        for key in ("peak_rss_mb", "rss_increase_mb", "cuda_peak_mb"):
            if ours.memory.get(key) and theirs.memory.get(key):
                entry[f"{key}_ratio"] = ours.memory[key] / theirs.memory[key]
        result.append(entry)
    return result


def result_document(ctx: Context, description: str, environment: dict, started: str, duration_s: float) -> dict:
    return {
        "suite": ctx.suite,
        "description": description,
        "quick": ctx.quick,
        "device": ctx.device,
        "started": started,
        "duration_s": round(duration_s, 1),
        "repeats": ctx.repeats,
        "warmup": ctx.warmup,
        "seed": ctx.seed,
        "environment": environment,
        "settings": ctx.settings,
        "notes": ctx.notes,
        "measurements": [m.to_dict() for m in ctx.measurements],
        "comparisons": comparisons(ctx.measurements),
        "checks": [c.to_dict() for c in ctx.checks],
        "tables": ctx.tables,
    }


def _number(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}" if value < 1 else f"{value:.2f}"


def _cell(m: Measurement | None) -> str:
    if m is None:
        return "–"
    s = m.stats
    if s.n == 1:
        return f"{_number(s.median)} {m.unit}"
    return f"**{_number(s.median)}** {m.unit} (IQR {_number(s.q1)}–{_number(s.q3)}; {_number(s.min)}–{_number(s.max)}; n={s.n})"


def runs_line(measurements: list[Measurement]) -> str:
    """How many runs the rows hold, from the rows themselves: a suite's own counts (one whole training run, a
    derived value) are stated as they are, not as the harness defaults."""
    counts = Counter((m.stats.n, m.warmup) for m in measurements)
    parts = []
    for (n, warmup), rows in sorted(counts.items(), key=lambda item: (-item[1], item[0][0])):
        label = f"{rows} row{'s' if rows > 1 else ''}"
        if warmup is not None:
            parts.append(
                f"{label}: n={n} timed run{'s' if n > 1 else ''} after {warmup} untimed warm-up run{'s' if warmup != 1 else ''}"
            )
        elif n == 1:
            parts.append(f"{label}: one measurement each (n=1; a whole run or a derived value, see the notes)")
        else:
            parts.append(f"{label}: n={n} samples the suite measured itself (see the notes)")
    spread = " Cells with n > 1 show the **median**, the inter-quartile range and min–max." if any(
        m.stats.n > 1 for m in measurements) else ""  # fmt: skip
    return "Runs per row — " + "; ".join(parts) + "." + spread


def markdown(document: dict, measurements: list[Measurement], plot_name: str | None) -> str:
    impls = _impls(measurements)
    compare = OURS in impls and BASELINE in impls
    quick = " (quick)" if document["quick"] else ""
    lines = [
        f"# `{document['suite']}` benchmark — {document['device']}{quick}",
        "",
        document["description"],
        "",
        f"*Machine:* {summary_line(document['environment'])}.  ",
        f"*Run:* {document['started']}, {document['duration_s']} s, commit {document['environment'].get('git_commit') or '?'}. "
        f"{runs_line(measurements)}",
        "",
        "| case | parameters | " + " | ".join(impls) + (" | adapterhub / peft |" if compare else " |"),
        "|---|---|" + "---|" * len(impls) + ("---:|" if compare else ""),
    ]
    for case, params, by_impl in _rows(measurements):
        cells = [_cell(by_impl.get(impl)) for impl in impls]
        ratio = ""
        if compare:
            ours, theirs = by_impl.get(OURS), by_impl.get(BASELINE)
            ratio = (
                f" {ours.stats.median / theirs.stats.median:.2f}× |"
                if ours and theirs and theirs.stats.median
                else " – |"
            )
        lines.append(f"| {case} | {params_label(params) or '–'} | " + " | ".join(cells) + " |" + ratio)
    with_memory = [m for m in measurements if m.memory]
    if with_memory:
        lines += ["", "Peak memory (resident set size of the process; CUDA peak allocation on GPU):", "",
                  "| case | parameters | implementation | peak RSS | RSS increase | CUDA peak |", "|---|---|---|---:|---:|---:|"]  # fmt: skip
        for m in with_memory:
            cuda = m.memory.get("cuda_peak_mb")
            lines.append(
                f"| {m.case} | {params_label(m.params) or '–'} | {m.impl} | {m.memory['peak_rss_mb']:,.0f} MB | "
                f"{m.memory.get('rss_increase_mb', 0):,.0f} MB | {'–' if cuda is None else f'{cuda:,.0f} MB'} |"
            )
    for table in document.get("tables", []):
        lines += [
            "",
            f"**{table['title']}**",
            "",
            "| " + " | ".join(table["columns"]) + " |",
            "|" + "---|" * len(table["columns"]),
        ]
        lines += ["| " + " | ".join(_table_cell(cell) for cell in row) + " |" for row in table["rows"]]
        if table["note"]:
            lines += ["", table["note"]]
    if document["checks"]:
        lines += ["", "Targets:", ""]
        for check in document["checks"]:
            verdict = "met" if check["ok"] else "**missed**"
            lines.append(
                f"- {check['what']}: {_number(check['value'])} {check['unit']} (target ≤ {_number(check['limit'])} {check['unit']}) — {verdict}"
            )
    lines += ["", "What each side runs:", ""]
    for case, what in dict.fromkeys((m.case, f"{m.impl}: {m.what}") for m in measurements):
        lines.append(f"- {case} — {what}")
    if document["notes"]:
        lines += ["", "Notes:", ""] + [f"- {note}" for note in document["notes"]]
    if document["settings"]:
        lines += ["", "Settings: `" + json.dumps(document["settings"], sort_keys=True) + "`"]
    if plot_name:
        lines += ["", f"![{document['suite']} plot]({plot_name})"]
    return "\n".join(lines) + "\n"


def _table_cell(cell) -> str:
    if cell is None:
        return "–"
    if isinstance(cell, float):
        return f"{cell:.3f}" if abs(cell) < 10 else _number(cell)
    return str(cell)


def plot(document: dict, measurements: list[Measurement], path: Path) -> None:
    """One panel per case (bars per implementation, whiskers min–max), plus a peak-memory panel if measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter

    impls = _impls(measurements)
    cases = list(dict.fromkeys(m.case for m in measurements))
    panels: list[tuple[str, list[Measurement], str]] = [
        (case, [m for m in measurements if m.case == case], "time") for case in cases
    ]
    with_memory = [m for m in measurements if m.memory.get("peak_rss_mb")]
    if with_memory:
        panels.append(("peak RSS", with_memory, "memory"))
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.8 * columns, 3.6 * rows), squeeze=False)
    width = 0.8 / max(1, len(impls))
    for axis, (title, panel, kind) in zip(axes.flat, panels):
        labels = list(dict.fromkeys(_x_label(m, kind) for m in panel))
        values = []
        for offset, impl in enumerate(impls):
            xs, heights, low, high = [], [], [], []
            for m in panel:
                if m.impl != impl:
                    continue
                value = m.memory["peak_rss_mb"] if kind == "memory" else m.stats.median
                xs.append(labels.index(_x_label(m, kind)) + (offset - (len(impls) - 1) / 2) * width)
                heights.append(value)
                low.append(0 if kind == "memory" else value - m.stats.min)
                high.append(0 if kind == "memory" else m.stats.max - value)
                values.append(value)
            if xs:
                axis.bar(xs, heights, width, yerr=[low, high], capsize=3, label=impl)
        axis.set_xticks(range(len(labels)))
        axis.set_xticklabels(labels, rotation=15 if len(labels) > 2 else 0, fontsize=8)
        unit = "MB" if kind == "memory" else panel[0].unit
        axis.set_title(f"{title} ({unit})", fontsize=10)
        positive = [v for v in values if v > 0]
        if positive and max(positive) / min(positive) > 30:
            axis.set_yscale("log")
            axis.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        axis.legend(fontsize=8)
    for axis in list(axes.flat)[len(panels) :]:
        axis.axis("off")
    quick = ", quick" if document["quick"] else ""
    figure.suptitle(f"{document['suite']} — {document['device']}{quick} (median, whiskers min–max)", fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _x_label(m: Measurement, kind: str) -> str:
    label = params_label(m.params) or "–"
    return f"{m.case}\n{label}" if kind == "memory" else label


def write(document: dict, measurements: list[Measurement], directory: Path, stem: str,
          suite_plot: Callable[[dict, Path], None] | None = None) -> list[Path]:  # fmt: skip
    """Write `<stem>.json`, `<stem>.md` and `<stem>.png` into `directory`; return their paths. The PNG is the
    suite's own figure when it drew one (`suite_plot(document, path)`), else the bar panels of `plot`."""
    directory.mkdir(parents=True, exist_ok=True)
    json_path, md_path, png_path = (directory / f"{stem}{suffix}" for suffix in (".json", ".md", ".png"))
    json_path.write_text(json.dumps(document, indent=1, sort_keys=False) + "\n")
    if suite_plot is not None:
        suite_plot(document, png_path)
    else:
        plot(document, measurements, png_path)
    md_path.write_text(markdown(document, measurements, png_path.name))
    return [json_path, md_path, png_path]
