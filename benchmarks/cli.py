"""`adapterhub bench` and `python -m benchmarks`: list the suites, run some or all, print where results went.

Results go to ./bench-results unless --output says otherwise. The harness itself is imported when the command
runs: `adapterhub --help` adds this command without paying for it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from benchmarks import DEFAULT_OUTPUT


def _suites():
    from benchmarks import suites

    return suites


def _print_suites() -> None:
    suites = _suites()
    for name in suites.names():
        suite = suites.load(name)
        missing = suite.missing()
        click.echo(f"{name:<14} {suite.description}" + (f"  [needs: {' '.join(missing)}]" if missing else ""))


@click.command("bench")
@click.argument("suite_names", metavar="SUITE...", nargs=-1)
@click.option("--list", "list_only", is_flag=True, help="List the suites and exit.")
@click.option(
    "--quick", is_flag=True, help="Small sizes and few repeats (all suites in ~2 min on 2 CPU cores); for CI."
)
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_OUTPUT, show_default=True,
              help="Where <suite>-<device>[-quick].{json,md,png} are written (relative to the current directory).")  # fmt: skip
@click.option(
    "--model",
    default=None,
    help="Base model (directory or .gguf) for suites that load one [SmolLM2-135M; a tiny Llama with --quick].",
)
@click.option(
    "--device", type=click.Choice(["cpu", "cuda"]), default=None, help="Device [cuda when available, else cpu]."
)
@click.option("--repeats", type=click.IntRange(min=1), default=None, help="Timed runs per case [20; 5 with --quick].")
@click.option(
    "--warmup", type=click.IntRange(min=0), default=None, help="Untimed warm-up runs per case [3; 1 with --quick]."
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
@click.option("--json", "as_json", is_flag=True, help="Print the written files and the adapterhub/peft ratios as JSON.")
def bench_command(
    suite_names, list_only, quick, output, model, device, repeats, warmup, seed, no_progress, as_json
) -> None:
    """Benchmark adapterhub against the plain peft baseline, side by side in one run.

    SUITE is a suite name from --list, or 'all'. With several suites, those that cannot run here (a missing
    package, a CUDA-only suite on a CPU) are skipped with one line each and the rest run. Results are written as JSON (every sample,
    environment), a markdown table and a PNG plot.
    """
    from benchmarks.runner import RunOptions, run_suite

    suites = _suites()
    if list_only:
        _print_suites()
        return
    if not suite_names:
        raise click.UsageError(f"name a suite (or 'all'); known suites: {', '.join(suites.names())}")
    selected = suites.names() if "all" in suite_names else list(dict.fromkeys(suite_names))
    for name in selected:
        suites.load(name)  # an unknown name fails before anything runs
    options = RunOptions(quick, output, model, device, repeats, warmup, seed, progress=not no_progress)
    outcome = {}
    for name in selected:
        try:
            document, paths = run_suite(name, options)
        except suites.SuiteUnavailable as exc:
            if len(selected) == 1:
                raise
            outcome[name] = {"skipped": exc.message}  # several suites: run what can run here, say what was left out
            if not as_json:
                click.echo(f"{name}: skipped — {exc.message}")
            continue
        outcome[name] = {
            "files": [str(p) for p in paths],
            "comparisons": document["comparisons"],
            "checks": document["checks"],
        }
        if not as_json:
            click.echo(f"{name}: wrote {', '.join(str(p) for p in paths)}")
            for row in document["comparisons"]:
                params = ", ".join(f"{k}={v}" for k, v in row["params"].items())
                ratio = "n/a (a side measured 0)" if row["ratio"] is None else f"{row['ratio']:.2f}x"
                click.echo(f"  {row['case']:<18} {params:<22} adapterhub {row['adapterhub_median']:>10.3f} {row['unit']:<3}"
                           f" peft {row['peft_median']:>10.3f} {row['unit']:<3} ratio {ratio}")  # fmt: skip
            for check in document["checks"]:
                click.echo(
                    f"  target {check['what']}: {check['value']:.2f} {check['unit']} ({'met' if check['ok'] else 'MISSED'})"
                )
    if as_json:
        click.echo(json.dumps(outcome, indent=2))


def main(argv: list[str] | None = None) -> int:
    from adapterhub.cli import run_command

    return run_command(bench_command, argv, "python -m benchmarks")


if __name__ == "__main__":
    sys.exit(main())
