"""Read training data from local files and split it reproducibly.

Classification data is CSV or JSONL with a text and a label column; causal-LM data is a plain text file
cut into token blocks. A file is read once (``read_data_file``): its text is parsed from the bytes read, and
the same bytes give the sha256 recorded with the adapter. The held-out split is decided by a hash of each example's normalised text (and the
seed), not by shuffling: the same file always gives the same test set, in `train` and later in `eval`,
and duplicated texts (e.g. retweets) can never straddle train and test.
"""

from __future__ import annotations

import codecs
import csv
import difflib
import hashlib
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

from adapterhub import packaged
from adapterhub.errors import DataError, OptionError

_RETWEET = re.compile(r"^(rt\s+)?(@\w+:?\s*)+", re.IGNORECASE)
_URL = re.compile(r"https?://\S+")
_SPACE = re.compile(r"\s+")


@dataclass
class ClassificationData:
    """Texts with integer labels; ``label_names[i]`` is the name of label ``i``."""

    texts: list[str]
    labels: list[int]
    label_names: list[str]

    def subset(self, indices: list[int]) -> ClassificationData:
        return ClassificationData([self.texts[i] for i in indices], [self.labels[i] for i in indices], self.label_names)

    def majority_fraction(self) -> float:
        """Accuracy of always predicting the most frequent label (the baseline to beat)."""
        if not self.labels:
            return 0.0
        return max(self.labels.count(label) for label in set(self.labels)) / len(self.labels)


def normalise(text: str) -> str:
    """Lower-case text without retweet prefixes, URLs or repeated spaces: the key for dedupe and splitting."""
    return _SPACE.sub(" ", _URL.sub("", _RETWEET.sub("", text.strip()))).strip().lower()


def check_encoding(encoding: str) -> None:
    """Refuse an encoding name Python does not know, before any file is opened with it."""
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise OptionError(
            f"encoding {encoding!r} is not one Python knows; pass a codec name such as utf-8, latin-1 or cp1252"
        ) from None


def _not_decodable(path: Path, encoding: str, exc: UnicodeDecodeError) -> DataError:
    return DataError(
        f"{path} is not valid {encoding} (byte {exc.object[exc.start]:#04x} at offset {exc.start}: {exc.reason}); "
        f"pass --encoding with the file's encoding (e.g. --encoding latin-1)"
    )


@dataclass(frozen=True)
class DataFile:
    """A data file as read, once: its decoded text and the sha256 of its bytes."""

    path: Path
    text: str  # decoded, newlines as in the file
    sha256: str


def read_data_file(path: str | Path, encoding: str = "utf-8", *, kind: str = "data file") -> DataFile:
    """Read ``path`` (or the file of a packaged name: ``adapterhub.packaged``) once; a missing file or one not in
    ``encoding`` is a ``DataError`` naming it."""
    path = packaged.resolve(path, packaged.DATA)
    if not path.is_file():
        raise DataError(
            f"{kind} {str(path)!r} not found: pass --data with the path of a file, or a packaged name: "
            f"{packaged.help_names(packaged.DATA)}"
        )
    raw = path.read_bytes()
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as exc:
        raise _not_decodable(path, encoding, exc) from None
    return DataFile(path, text, hashlib.sha256(raw).hexdigest())


def _rows(file: DataFile) -> list[dict]:
    handle = io.StringIO(file.text, newline="")  # csv sees the file's own line ends, as with open(newline="")
    if file.path.suffix in (".jsonl", ".json"):
        try:
            return [json.loads(line) for line in handle if line.strip()]
        except json.JSONDecodeError as exc:
            raise DataError(f"{file.path} line {exc.lineno}: not valid JSON ({exc.msg})") from None
    return list(csv.DictReader(handle))


def load_classification(
    path: str | Path,
    *,
    text_column: str = "text",
    label_column: str = "label",
    encoding: str = "utf-8",
    dedupe: bool = False,
    label_names: list[str] | None = None,
) -> ClassificationData:
    """Read a CSV/JSONL file of labelled texts; see ``parse_classification``."""
    return parse_classification(
        read_data_file(path, encoding), text_column=text_column, label_column=label_column, dedupe=dedupe,
        label_names=label_names,
    )  # fmt: skip


def parse_classification(
    file: DataFile,
    *,
    text_column: str = "text",
    label_column: str = "label",
    dedupe: bool = False,
    label_names: list[str] | None = None,
) -> ClassificationData:
    """The labelled texts of a CSV/JSONL file already read. ``dedupe`` keeps the first of texts equal after
    ``normalise``. ``label_names`` fixes the label order (e.g. from a trained adapter); otherwise labels are sorted.
    """
    path = file.path
    rows = _rows(file)
    if not rows:
        raise DataError(f"{path} has no rows")
    flags = {text_column: "--text-column", label_column: "--label-column"}
    missing = [c for c in flags if c not in rows[0]]
    if missing:
        if _looks_like_plain_text(file, list(rows[0])):
            raise DataError(
                f"{path} looks like plain text, not a table of labelled texts: its first line "
                f"{_first_line(file)!r} would be its header. To train a language model on it pass --model-task "
                f"causal-lm; to train a classifier give a CSV or JSONL file with a text and a label column."
            )
        near = [f"{flags[c]} {match}" for c in missing for match in difflib.get_close_matches(c, list(rows[0]), n=1)]
        raise DataError(
            f"{path} has no column {', '.join(f'{c!r} ({flags[c]})' for c in missing)}; its columns are "
            f"{', '.join(rows[0])}. "
            + (
                f"Did you mean {' '.join(near)}?"
                if near
                else "Pass --text-column / --label-column with its column names."
            )
        )
    seen: set[str] = set()
    texts, names = [], []
    for row in rows:
        text, label = str(row[text_column] or "").strip(), str(row[label_column]).strip()
        key = normalise(text)
        if not key or (dedupe and key in seen):
            continue
        seen.add(key)
        texts.append(text)
        names.append(label)
    label_names = list(label_names) if label_names else sorted(set(names))
    unknown = sorted(set(names) - set(label_names))
    if unknown:
        raise DataError(f"{path} has labels {unknown} that the adapter does not know (it knows {label_names})")
    index = {name: i for i, name in enumerate(label_names)}
    return ClassificationData(texts, [index[name] for name in names], label_names)


def _first_line(file: DataFile) -> str:
    line = file.text.lstrip("\ufeff").split("\n", 1)[0].strip()
    return line if len(line) <= 60 else line[:57] + "..."


def _looks_like_plain_text(file: DataFile, columns: list[str]) -> bool:
    """A ``.txt`` file, or a "header" that reads as a sentence (a name of four words or more): prose, not a table."""
    return file.path.suffix.lower() == ".txt" or any(len(str(c).split()) >= 4 for c in columns)


def cap(data: ClassificationData, max_samples: int | None, seed: int) -> ClassificationData:
    """A deterministic subset of ``max_samples`` examples (by hash order), identical in train and eval."""
    if not max_samples or max_samples >= len(data.texts):
        return data
    keyed = sorted(
        range(len(data.texts)), key=lambda i: hashlib.sha256(f"{seed}|{normalise(data.texts[i])}".encode()).digest()
    )
    return data.subset(sorted(keyed[:max_samples]))


def in_test_split(key: str, test_fraction: float, seed: int) -> bool:
    """Whether an example (by its key) belongs to the held-out split; stable across runs and machines."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < test_fraction


def split_classification(
    data: ClassificationData, test_fraction: float, seed: int
) -> tuple[ClassificationData, ClassificationData]:
    """``(train, test)`` split by hash of the normalised text."""
    test = [in_test_split(normalise(text), test_fraction, seed) for text in data.texts]
    return (
        data.subset([i for i, t in enumerate(test) if not t]),
        data.subset([i for i, t in enumerate(test) if t]),
    )


def read_text(path: str | Path, encoding: str = "utf-8") -> str:
    """The whole text file; a missing file or one not in ``encoding`` is a ``DataError`` naming it."""
    return plain_text(read_data_file(path, encoding, kind="text file"))


def plain_text(file: DataFile) -> str:
    """The file's text with every line end as ``\\n`` (as ``Path.read_text`` gives it)."""
    return file.text.replace("\r\n", "\n").replace("\r", "\n")


def load_text_blocks(path: str | Path, tokenizer, block_size: int, encoding: str = "utf-8") -> list[list[int]]:
    """Tokenise a text file and cut it into blocks of ``block_size`` tokens; see ``text_blocks``."""
    return text_blocks(read_data_file(path, encoding, kind="text file"), tokenizer, block_size)


def text_blocks(file: DataFile, tokenizer, block_size: int) -> list[list[int]]:
    """Blocks of ``block_size`` tokens of a text file already read (the last partial block kept if long enough)."""
    ids = tokenizer(plain_text(file), add_special_tokens=False)["input_ids"]
    blocks = [ids[i : i + block_size] for i in range(0, len(ids), block_size)]
    blocks = [b for b in blocks if len(b) >= max(2, block_size // 4)]
    if not blocks:
        raise DataError(f"{file.path} is too short: it gives no block of {block_size} tokens")
    return blocks


def split_blocks(blocks: list[list[int]], test_fraction: float, seed: int) -> tuple[list[list[int]], list[list[int]]]:
    """``(train, test)`` blocks, split by hash of each block's tokens; at least one block each when possible."""
    test_flags = [in_test_split(",".join(map(str, b)), test_fraction, seed) for b in blocks]
    if test_fraction > 0 and not any(test_flags) and len(blocks) > 1:
        test_flags[-1] = True
    return [b for b, t in zip(blocks, test_flags) if not t], [b for b, t in zip(blocks, test_flags) if t]


def balanced_class_weights(labels: list[int], n_classes: int) -> list[float]:
    """``n / (n_classes * count(c))`` per class ``c`` (a class absent from ``labels`` gets weight 0: it adds no loss).
    scikit-learn's ``compute_class_weight("balanced")`` computes the same but refuses a class absent from the
    training split, which a small or hash-cut split can have."""
    counts = [labels.count(c) for c in range(n_classes)]
    return [len(labels) / (n_classes * count) if count else 0.0 for count in counts]
