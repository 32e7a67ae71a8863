"""The ```python runnable blocks of docs/migration.md run, in order, in one namespace."""

from __future__ import annotations

import os
import re
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch

DOC = Path(__file__).resolve().parents[2] / "docs" / "migration.md"
RUNNABLE = re.compile(r"^```python runnable\n(.*?)^```", re.DOTALL | re.MULTILINE)


@pytest.fixture(autouse=True)
def keep_process_settings() -> Any:
    """The blocks set PYTHONHASHSEED, cuDNN flags, the thread count and the global seed."""
    threads = torch.get_num_threads()
    rng = torch.get_rng_state()
    env = dict(os.environ)
    cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    yield
    torch.set_num_threads(threads)
    torch.set_rng_state(rng)
    os.environ.clear()
    os.environ.update(env)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn


def test_doc_has_runnable_blocks() -> None:
    assert len(RUNNABLE.findall(DOC.read_text(encoding="utf-8"))) >= 4


def test_runnable_blocks_run() -> None:
    # a real module, so dataclasses and pickling can resolve the classes the blocks define
    module = types.ModuleType("migration_doc")
    sys.modules[module.__name__] = module
    try:
        for number, block in enumerate(RUNNABLE.findall(DOC.read_text(encoding="utf-8")), 1):
            code = compile(block, f"{DOC.name}[block {number}]", "exec")
            exec(code, module.__dict__)  # noqa: S102 - the doc's own examples
    finally:
        del sys.modules[module.__name__]
