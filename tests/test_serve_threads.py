"""`adapterhub serve --threads N`: the server's process runs its forwards on N torch intra-op threads; without the
flag torch's own default stands (docs/serving.md, "Threads")."""

from __future__ import annotations

import pytest
import torch

from adapterhub.cli.serve import serve_command, spec_from_flags
from adapterhub.errors import OptionError
from adapterhub.server.build import build_server


def spec(*args: str):
    return spec_from_flags(serve_command.make_context("serve", list(args)).params)


def test_threads_flag_sets_the_torch_threads_of_the_built_server_and_is_left_alone_without_it(tiny_llama):
    before = torch.get_num_threads()
    try:
        assert spec("--base", str(tiny_llama)).threads is None
        torch.set_num_threads(2)
        build_server(spec("--base", str(tiny_llama)))
        assert torch.get_num_threads() == 2
        built = build_server(spec("--base", str(tiny_llama), "--threads", "1"))
        assert built.spec.threads == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)  # the test process's own setting, as it was


def test_threads_below_one_is_refused_naming_the_flag(tiny_llama):
    with pytest.raises(OptionError, match="--threads"):
        spec("--base", str(tiny_llama), "--threads", "0")
