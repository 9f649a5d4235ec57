"""The docs and the command line stay in step: every ``adapterhub <command> ... --flag`` written in README.md and
docs/*.md names a command that exists and a flag that command's ``--help`` lists, every core command is written
somewhere, and every relative link between the docs resolves.

Commands are read from shell code blocks (``bash``, ``sh``, ``console`` or unlabelled; lines ending in ``\\`` go
on) and from inline code outside them; ``python -m adapterhub.cli`` (as torchrun launches it) counts as
``adapterhub``. The CLI is walked in-process through click (no subprocess, no torch import), each command's
flags collected once.
"""

from __future__ import annotations

import difflib
import functools
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click

from adapterhub.cli import cli
from adapterhub.cli.main import CORE_COMMANDS

ROOT = Path(__file__).resolve().parents[1]
SHELL_FENCES = {"", "bash", "sh", "shell", "console"}
SEPARATORS = {";", "&", "&&", "|", "||", "(", ")", "<", ">", ">>", "<<", "2>", "&>"}
WRAPPERS = {"time", "env", "exec", "nohup"}  # words that may stand before `adapterhub` in a command


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@dataclass(frozen=True)
class Snippet:
    """Shell text written in a doc: a code-block line (continuations joined) or an inline code span."""

    path: Path
    line: int
    text: str
    lines: int = 1  # physical lines it spans

    def where(self, word: str = "") -> str:
        """``file:line`` of the snippet, or of its first physical line holding ``word``."""
        physical = _lines(self.path)[self.line - 1 : self.line - 1 + self.lines]
        offset = next((i for i, text in enumerate(physical) if word and word in text), 0)
        return f"{self.path.relative_to(ROOT)}:{self.line + offset}"


@functools.cache
def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def _fences(lines: list[str]) -> Iterator[tuple[int, int, str]]:
    """(first content line index, end index, info string) of each fenced code block."""
    start, info = None, ""
    for index, line in enumerate(lines):
        stripped = line.lstrip()
        if not stripped.startswith("```"):
            continue
        if start is None:
            start, info = index + 1, stripped[3:].strip().lower()
        else:
            yield start, index, info
            start = None


def _prose(lines: list[str]) -> str:
    """The doc with every fenced block's lines blanked, so offsets still give line numbers."""
    kept = list(lines)
    for start, end, _ in _fences(lines):
        for index in range(start - 1, end + 1):
            kept[index] = ""
    return "\n".join(kept)


def snippets(path: Path) -> Iterator[Snippet]:
    lines = _lines(path)
    for start, end, info in _fences(lines):
        if info not in SHELL_FENCES:
            continue
        index = start
        while index < end:
            first, text = index, lines[index]
            while text.endswith("\\") and index + 1 < end:
                index += 1
                text = text[:-1] + " " + lines[index]
            index += 1
            yield Snippet(path, first + 1, text, index - first)
    prose = _prose(lines)
    for match in re.finditer(r"`([^`]+)`", prose):
        code = match.group(1)
        yield Snippet(path, prose.count("\n", 0, match.start()) + 1, code.replace("\n", " "), code.count("\n") + 1)


def _words(text: str) -> list[str]:
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|()<>")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        return list(lexer)
    except ValueError:  # an unclosed quote (a JSON body cut at a line end): words as written
        return text.split()


def adapterhub_commands(snippet: Snippet) -> Iterator[list[str]]:
    """The words after ``adapterhub`` (or ``-m adapterhub.cli``) of each command in the snippet."""
    command: list[str] = []
    for word in [*_words(snippet.text), ";"]:
        if word not in SEPARATORS:
            command.append(word)
            continue
        words = command
        command = []
        while words and (re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]) or words[0] in WRAPPERS):
            words = words[1:]
        if words and words[0] == "adapterhub":
            yield words[1:]
        elif "adapterhub.cli" in words and words.index("adapterhub.cli") > 0:
            at = words.index("adapterhub.cli")
            if words[at - 1] == "-m":
                yield words[at + 1 :]


def _context(path: tuple[str, ...]) -> click.Context:
    context = click.Context(cli, info_name="adapterhub")
    command: click.Command = cli
    for name in path:
        command = command.get_command(context, name)  # type: ignore[union-attr]
        context = click.Context(command, parent=context, info_name=name)
    return context


@functools.cache
def command_at(path: tuple[str, ...]) -> click.Command | None:
    """The command ``adapterhub <path...>``, or None when one of the names is no command."""
    if not path:
        return cli
    group = command_at(path[:-1])
    if not isinstance(group, click.Group):
        return None
    return group.get_command(_context(path[:-1]), path[-1])


@functools.cache
def flags_of(path: tuple[str, ...]) -> dict[str, click.Option]:
    """Every flag ``adapterhub <path...> --help`` lists (hidden options are not listed), with its option."""
    command = command_at(path)
    assert command is not None
    flags: dict[str, click.Option] = {}
    for param in command.get_params(_context(path)):
        if isinstance(param, click.Option) and not param.hidden:
            flags.update(dict.fromkeys([*param.opts, *param.secondary_opts], param))
    return flags


def check_command(words: list[str], snippet: Snippet) -> tuple[tuple[str, ...], list[str]]:
    """The command path one written command (the words after ``adapterhub``) reaches, and what in it the CLI lacks."""
    path: tuple[str, ...] = ()
    problems: list[str] = []
    written = "adapterhub"
    index = 0
    while index < len(words):
        word = words[index].strip("[]")
        index += 1
        if word in ("", "-", "--", "...", "…") or word.startswith("$"):
            continue
        if word.startswith("-"):
            flag = word.split("=", 1)[0]
            option = flags_of(path).get(flag)
            if option is None:
                known = sorted(flags_of(path))
                hint = difflib.get_close_matches(flag, known, n=1)
                problems.append(
                    f"{snippet.where(flag)}: `{written} {flag}`: {written} has no flag {flag}"
                    + (f" (did you mean {hint[0]}?)" if hint else f" (its flags: {', '.join(known) or 'none'})")
                )
            elif not option.is_flag and not option.count and "=" not in word:
                index += 1  # its value: never a subcommand
            continue
        command = command_at(path)
        if not isinstance(command, click.Group):
            continue  # an argument of a leaf command
        if command_at((*path, word)) is None:
            known = ", ".join(sorted(command.list_commands(_context(path))))
            problems.append(
                f"{snippet.where(word)}: `{written} {word}`: no such command (commands of {written}: {known})"
            )
            break
        path = (*path, word)
        written = f"{written} {word}"
    return path, problems


@dataclass(frozen=True)
class Written:
    """A command as the docs write it: where, and its command path (names only)."""

    snippet: Snippet
    words: tuple[str, ...]


def written_commands() -> list[Written]:
    return [
        Written(snippet, tuple(words))
        for path in doc_files()
        for snippet in snippets(path)
        for words in adapterhub_commands(snippet)
    ]


def test_every_documented_command_and_flag_exists():
    written = written_commands()
    assert len(written) > 50, f"only {len(written)} adapterhub commands found in the docs: is the scan broken?"
    problems = [problem for item in written for problem in check_command(list(item.words), item.snippet)[1]]
    assert not problems, f"{len(problems)} command(s) or flag(s) in the docs the CLI lacks:\n" + "\n".join(problems)


def _core_command_paths() -> Iterator[tuple[str, ...]]:
    """Every command and subcommand the core defines (plugin commands are their plugins' to document)."""
    names = {
        *CORE_COMMANDS,
        *(name for name, c in cli.commands.items() if c.callback.__module__.startswith("adapterhub.")),
    }
    stack = [(name,) for name in sorted(names)]
    while stack:
        path = stack.pop(0)
        yield path
        command = command_at(path)
        if isinstance(command, click.Group):
            stack.extend((*path, name) for name in command.list_commands(_context(path)))


def test_every_core_command_is_documented():
    documented = set()
    for item in written_commands():
        path = check_command(list(item.words), item.snippet)[0]
        documented.update(path[:end] for end in range(1, len(path) + 1))
    missing = [" ".join(("adapterhub", *path)) for path in _core_command_paths() if path not in documented]
    assert not missing, "commands no doc writes out (add one to the doc of its topic):\n" + "\n".join(missing)


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@functools.cache
def anchors(path: Path) -> set[str]:
    lines = _prose(path.read_text(encoding="utf-8").splitlines()).splitlines()
    seen: dict[str, int] = {}
    found = set()
    for line in lines:
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            anchor = _anchor(heading.group(1))
            count = seen.get(anchor, 0)
            seen[anchor] = count + 1
            found.add(anchor if count == 0 else f"{anchor}-{count}")
    return found


def broken_links(path: Path) -> Iterator[str]:
    prose = re.sub(r"`[^`]*`", lambda m: " " * len(m.group(0)), _prose(path.read_text(encoding="utf-8").splitlines()))
    for match in LINK.finditer(prose):
        target = match.group(1)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
            continue
        file_part, _, fragment = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        where = f"{path.relative_to(ROOT)}:{prose.count(chr(10), 0, match.start()) + 1}"
        if not resolved.exists():
            yield f"{where}: link to {target}: {file_part} does not exist"
        elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
            yield f"{where}: link to {target}: {resolved.relative_to(ROOT)} has no heading #{fragment}"


def test_links_between_docs_resolve():
    problems = [problem for path in doc_files() for problem in broken_links(path)]
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_docs_link_each_other():
    """README reaches every doc, so none is orphaned."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    linked = {(ROOT / m.group(1).partition("#")[0]).resolve() for m in LINK.finditer(readme)}
    orphans = [str(p.relative_to(ROOT)) for p in doc_files()[1:] if p.resolve() not in linked]
    assert not orphans, "docs the README does not link: " + ", ".join(orphans)
