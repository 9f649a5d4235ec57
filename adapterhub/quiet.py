"""Keep known, harmless messages of third-party libraries out of what an adapterhub user sees.

bitsandbytes is imported by peft and transformers whenever it is installed, so by every command. On CPUs
with AVX512-BF16 its import logs "Failed to load CPU gemm_4bit_forward from kernels-community ..." when the
optional ``kernels`` package (or the network) is missing, then falls back to its own CPU kernel: the line
gives the user nothing to act on. ``adapterhub/__init__`` installs the filter before anything imports
bitsandbytes; only that message is dropped, every other bitsandbytes log record still shows.
"""

from __future__ import annotations

import logging

BITSANDBYTES_CPU_LOGGER = "bitsandbytes.backends.cpu.ops"
GEMM_4BIT_NOTICE = "Failed to load CPU gemm_4bit_forward from kernels-community"


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
