"""Keep known, harmless messages of third-party libraries out of what an adapterhub user sees.

bitsandbytes is imported by peft and transformers whenever it is installed, so by every command. On CPUs
with AVX512-BF16 its import logs "Failed to load CPU gemm_4bit_forward from kernels-community ..." when the
optional ``kernels`` package (or the network) is missing, then falls back to its own CPU kernel: the line
gives the user nothing to act on. ``adapterhub/__init__`` installs the filter before anything imports
bitsandbytes; only that message is dropped, every other bitsandbytes log record still shows.

The ``adapterhub`` command goes further unless given ``--verbose`` (``show_library_output``): the warnings,
log records and progress bars of the model libraries (transformers' "Loading weights" bars, the
``FutureWarning`` of its own deprecations, peft's notices) are hidden, so that a command shows its own
output and progress only. Python callers of adapterhub keep every message.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

BITSANDBYTES_CPU_LOGGER = "bitsandbytes.backends.cpu.ops"
GEMM_4BIT_NOTICE = "Failed to load CPU gemm_4bit_forward from kernels-community"

LIBRARIES = ("transformers", "peft", "torch", "accelerate", "bitsandbytes", "kernels", "huggingface_hub", "triton")
"""The libraries whose warnings, logs and progress bars only ``--verbose`` shows."""
_LIBRARY_MODULES = rf"({'|'.join(LIBRARIES)})(\.|$)"


class _DropNotice(logging.Filter):
    """Drops the log records whose message starts with ``prefix``."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def silence_known_noise() -> None:
    """Filter bitsandbytes' kernels-community notice from its logger (created here if not yet imported); idempotent."""
    logger = logging.getLogger(BITSANDBYTES_CPU_LOGGER)
    if not any(isinstance(f, _DropNotice) for f in logger.filters):
        logger.addFilter(_DropNotice(GEMM_4BIT_NOTICE))


def show_library_output(verbose: bool) -> None:
    """With ``verbose`` False, hide the model libraries' warnings, their log records below ERROR and
    transformers' progress bars for the rest of the process; with True, show them all (the libraries' defaults).

    Called by the ``adapterhub`` group before any command runs, when transformers is usually not imported yet
    (the CLI starts without it): its verbosity and bars are then set through the variables it reads at import,
    which the command's child processes (``torchrun`` ranks) inherit as well.
    """
    level = logging.NOTSET if verbose else logging.ERROR
    for library in LIBRARIES:
        if library != "transformers":  # transformers sets its own level at import: handled below
            logging.getLogger(library).setLevel(level)
    if not verbose:
        warnings.filterwarnings("ignore", module=_LIBRARY_MODULES)
    if "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        transformers_logging.set_verbosity(logging.WARNING if verbose else logging.ERROR)
        (transformers_logging.enable_progress_bar if verbose else transformers_logging.disable_progress_bar)()
    elif not verbose:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' bars follow huggingface_hub's
