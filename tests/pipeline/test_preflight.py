"""An impossible config fails with one line before the first store is written: more clients
than samples, a GPU the machine lacks, user code (a model factory, a dataset loader) that
raises. Found later, such a mistake left `dataset/` and `partitions/` behind, which the
corrected run then refused as made with another config."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result

from tests.pipeline.integrity_helpers import cli, one_line_error, sets

BROKEN = """
def factory(*, num_classes, in_channels, image_size, dropout):
    raise RuntimeError("the researcher's bug")


def loader(*, root, size, seed, train):
    raise KeyError("no such column")
"""


def _nothing_written(out: Path) -> None:
    assert not out.exists() or not any(out.iterdir()), sorted(p.name for p in out.iterdir())


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["data.clients=1000000"], "data.clients (1000000) must be <= "),
        (["runtime.device=cuda:99"], "cuda:99"),
        (["model.name=preflight_broken:factory"], "RuntimeError: the researcher's bug"),
        (["data.dataset=preflight_broken:loader"], "KeyError: 'no such column'"),
    ],
    ids=["clients", "device", "factory", "loader"],
)
def test_refused_before_any_store_is_written(
    extra: list[str],
    fragment: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    blazefl: Callable[..., Result],
) -> None:
    (tmp_path / "preflight_broken.py").write_text(textwrap.dedent(BROKEN))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    line = one_line_error(cli("run", "--out", str(out), "-q", *sets(*extra)))
    assert fragment in line, line
    _nothing_written(out)
    # the corrected config then runs in the same folder: nothing stale was left to refuse
    assert cli("run", "--out", str(out), "-q", *sets()).exit_code == 0
