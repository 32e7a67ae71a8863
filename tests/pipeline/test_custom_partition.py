"""`data.partition` takes an import path like dataset, model and algorithm do: the user's
partitioner gets the labels (and the images if it declares `features`), the client count and
a numpy generator; its partition is the stored one, recorded with its code, re-computed by
`verify`, identical in every mode; a partitioner's mistake is one line before any store."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from blazefl.data import partition_indices
from tests.pipeline.integrity_helpers import cli, one_line_error, sets

SPLITS = """
import numpy as np


def by_label(*, labels, num_clients, generator):
    # each client holds the samples of the labels congruent to its id, in a drawn order
    order = generator.permutation(len(labels))
    return [order[labels[order] % num_clients == c] for c in range(num_clients)]


def by_brightness(*, labels, num_clients, generator, features):
    # the darkest samples go to client 0, the brightest to the last client
    brightness = features.reshape(len(features), -1).mean(axis=1)
    ranked = np.argsort(brightness, kind="stable")
    return [part.tolist() for part in np.array_split(ranked, num_clients)]


def overlapping(*, labels, num_clients, generator):
    return [list(range(len(labels)))] * num_clients


def too_few(*, labels, num_clients, generator):
    return [[0]]
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "mysplits.py").write_text(textwrap.dedent(SPLITS))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _stored(run: Path) -> list[list[int]]:
    import zarr

    group = zarr.open_group(str(run / "partitions"), mode="r")
    idx, off = np.asarray(group["indices"][...]), np.asarray(group["offsets"][...])
    return [idx[off[c] : off[c + 1]].tolist() for c in range(len(off) - 1)]


@pytest.mark.parametrize("name", ["by_label", "by_brightness"])
def test_a_user_partitioner_is_the_stored_partition(name: str, project: Path) -> None:
    algo = f"data.partition=mysplits:{name}"
    runs = {}
    for mode in ("sequential", "threads"):
        runs[mode] = project / mode
        result = cli("run", "--out", str(runs[mode]), "-q", "--mode", mode, *sets(algo))
        assert result.exit_code == 0, result.output
    parts = _stored(runs["sequential"])
    assert len(parts) == 6 and sorted(sum(parts, [])) == list(range(600))
    if name == "by_label":
        labels = np.asarray(
            __import__("zarr").open_group(str(runs["sequential"] / "dataset"))["train_labels"][...]
        )
        assert all(set(labels[p] % 6) == {c} for c, p in enumerate(parts))
    manifest = json.loads((runs["sequential"] / "partitions" / "manifest.json").read_text())
    assert manifest["config"]["data.partition"] == f"mysplits:{name}"
    assert set(manifest["user_code"]) == {"mysplits.py"}
    assert cli("diff", str(runs["sequential"]), str(runs["threads"])).exit_code == 0
    refused = cli("verify", str(runs["threads"]))
    assert refused.exit_code == 2 and "data.partition=mysplits:" in refused.output
    assert cli("verify", str(runs["threads"]), "--trust-code").exit_code == 0


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("overlapping", "belong to no other client"),
        ("too_few", "one index list per client (6), got 1 lists"),
        ("missing", "has no attribute"),
    ],
)
def test_a_partitioners_mistake_is_one_line_before_any_store(
    name: str, fragment: str, project: Path
) -> None:
    out = project / "run"
    line = one_line_error(
        cli("run", "--out", str(out), "-q", *sets(f"data.partition=mysplits:{name}"))
    )
    assert fragment in line, line
    assert not out.exists() or not any(out.iterdir())


def test_builtins_take_no_features_and_keep_their_bytes() -> None:
    labels = np.arange(60) % 3
    with_features = partition_indices(labels, 4, "dirichlet", 0, features=np.zeros((60, 2)))
    plain = partition_indices(labels, 4, "dirichlet", 0)
    assert all(np.array_equal(a, b) for a, b in zip(with_features, plain, strict=True))


def test_the_partitioners_code_is_a_dep_of_the_partition_stage_only(project: Path) -> None:
    import yaml

    assert cli("dvc", *sets("data.partition=mysplits:by_label")).exit_code == 0
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    assert "mysplits.py" in stages["partition"]["deps"]
    assert "mysplits.py" not in stages["round_001"]["deps"]
    assert "mysplits.py" not in stages["prepare"].get("deps", [])
