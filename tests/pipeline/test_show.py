"""`blazefl show`: a header with config hash and environment, then one row per round."""

from __future__ import annotations

import json

from blazefl.stages.artifacts import sha256_file


def test_show_prints_a_row_per_round_with_metrics(tiny_run, blazefl) -> None:
    result = blazefl("show", str(tiny_run))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    m0 = json.loads((tiny_run / "round-0000" / "manifest.json").read_text())
    assert m0["config_sha256"][:12] in lines[0]
    assert m0["environment"]["torch"] in lines[1] and m0["environment"]["cpu_isa"] in lines[1]
    assert lines[2].split() == [
        "round",
        "kind",
        "clients",
        "global",
        "manifest",
        "train_loss",
        "test_loss",
        "test_acc",
    ]
    rows = [line.split() for line in lines[3:] if line.split()[0].isdigit()]
    assert any(line.startswith("digest: ") for line in lines)
    assert [int(r[0]) for r in rows] == [0, 1, 2, 3]
    assert rows[0][1] == "init" and rows[0][5:] == ["-", "-", "-"]
    for t in (1, 2, 3):
        manifest = json.loads((tiny_run / f"round-{t:04d}" / "manifest.json").read_text())
        metrics = json.loads((tiny_run / "metrics" / f"round-{t:04d}.json").read_text())
        row = rows[t]
        assert row[1:3] == ["round", str(len(manifest["clients"]))]
        assert row[3] == manifest["outputs"]["global.safetensors"][:12]
        assert row[4] == sha256_file(tiny_run / f"round-{t:04d}" / "manifest.json")[:12]
        assert [float(x) for x in row[5:8]] == [
            round(metrics[k], 4) for k in ("train_loss", "test_loss", "test_accuracy")
        ]


def test_show_of_a_non_run_directory_exits_2(blazefl, tmp_path) -> None:
    result = blazefl("show", str(tmp_path))
    assert result.exit_code == 2
    assert result.output.strip().startswith("error:")
    assert len(result.output.strip().splitlines()) == 1
