"""The benchmark harness: the reference's own model, the workloads and the target report.

No timings are measured here; the harness's end-to-end runs are `python -m benchmarks.run`.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.args import parse_args
from benchmarks.reference import TextbookCNN, build_model
from benchmarks.report import check_targets, render_markdown
from benchmarks.workloads import apply_quick, workloads
from blazefl.models.cnn import CNN


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().view(torch.int32)


def _same_bits(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert torch.equal(_bits(sa[key]), _bits(sb[key])), key


def test_textbook_cnn_starts_from_the_same_bits_as_blazefl_cnn() -> None:
    torch.manual_seed(7)
    ref = TextbookCNN()
    torch.manual_seed(7)
    ours = CNN()
    assert sum(p.numel() for p in ref.parameters()) == 62_006
    _same_bits(ref, ours)
    # build_model seeds itself and builds the textbook class, not the framework's
    built = build_model("cnn", 7)
    assert type(built) is TextbookCNN
    _same_bits(built, ours)


def test_textbook_cnn_trains_to_the_same_bits_as_blazefl_cnn() -> None:
    models: list[nn.Module] = []
    for cls in (TextbookCNN, CNN):
        torch.manual_seed(0)
        models.append(cls())
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(32, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (32,), generator=gen)
    for model in models:
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        model.train()
        for _ in range(3):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    ref, ours = models
    for (name, p), (name2, q) in zip(ref.named_parameters(), ours.named_parameters(), strict=True):
        assert name == name2
        assert torch.equal(_bits(p), _bits(q)), name
    _same_bits(ref, ours)


def test_workload_choices_come_from_the_workload_table() -> None:
    names = list(workloads())
    assert "shape" in names
    for name in [*names, "all"]:
        assert parse_args(["--workload", name]).workload == name
    with pytest.raises(SystemExit):
        parse_args(["--workload", "nope"])


def test_shape_workload() -> None:
    wl = workloads()["shape"]
    cfg = wl.config
    assert cfg["data.size"] == 4000 and cfg["data.test_size"] == 1000
    assert cfg["data.clients"] == 100 == cfg["fl.clients_per_round"]
    assert cfg["data.size"] // cfg["data.clients"] == 40
    assert (cfg["fl.rounds"], cfg["train.local_epochs"], cfg["train.batch_size"]) == (3, 5, 32)
    assert (cfg["train.lr"], cfg["train.momentum"], cfg["train.weight_decay"]) == (0.05, 0, 0)
    assert cfg["train.augment"] is False and cfg["model.name"] == "cnn"
    names = {v.name for v in wl.variants}
    assert {"ref-1", "ref-2", "sequential", "threads-2", "processes-2-sto"} <= names
    quick = apply_quick(wl)
    assert quick.config["data.size"] < cfg["data.size"]


def _summary(values: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A minimal summary: per variant, `ratios` and medians of the named keys."""
    out: dict[str, Any] = {}
    for name, v in values.items():
        s: dict[str, Any] = {"ratios": v.get("ratios", {})}
        for key in ("steady_round_s", "peak_rss_sum_mb", "write_share"):
            if key in v:
                s[key] = {"median": v[key], "min": v[key], "max": v[key], "n": 1}
        out[name] = s
    return out


def test_clients1000_targets_and_info_lines() -> None:
    wl = workloads()["clients1000"]
    assert "ref-1@100" in {v.name for v in wl.variants}
    summary = _summary(
        {
            "ref-1@100": {"steady_round_s": 2.0},
            "ref-1@1000": {"steady_round_s": 2.4, "ratios": {"steady_round_s": 1.2}},
            "threads-2@100": {"steady_round_s": 1.0},
            "threads-2@1000": {
                "steady_round_s": 1.32,
                "ratios": {"steady_round_s": 1.32, "peak_rss_sum_mb": 1.1},
            },
        }
    )
    targets = check_targets(wl, summary, {"help": None, "prepared": {}})
    per_client = next(t for t in targets if "1.15x threads-2@100" in t["target"])
    assert per_client["status"] == "FAIL" and per_client["value"] == pytest.approx(1.32)
    info = [t for t in targets if t["status"] == "info"]
    assert [t["value"] for t in info] == [pytest.approx(1.2), pytest.approx(1.1)]
    memory = [t for t in targets if "peak memory" in t["target"]]
    assert [t["status"] for t in memory] == ["PASS", "n/a"]
    md = _render(wl.name, targets)
    assert "- info: " in md and "- FAIL: " in md


def test_w_targets_pass_and_fail() -> None:
    wl = workloads()["W"]
    summary = _summary(
        {
            "ref-1": {"peak_rss_sum_mb": 800.0},
            "ref-2": {},
            "sequential": {"ratios": {"steady_round_s": 0.79}},
            "threads-2": {
                "peak_rss_sum_mb": 801.0,
                "write_share": 0.01,
                "ratios": {"steady_round_s": 0.81, "wall_s": 0.6},
            },
            "processes-2-shm": {"ratios": {"steady_round_s": 0.85}},
            "processes-2-sto": {"ratios": {"steady_round_s": 0.86}},
        }
    )
    targets = check_targets(wl, summary, {"help": None, "prepared": {}})
    status = {t["target"]: t["status"] for t in targets}
    expect = {
        "sequential steady round": "PASS",
        "threads-2 steady round": "FAIL",
        "threads-2 whole run": "PASS",
        "processes-2-shm steady round": "PASS",
        "processes-2-sto steady round": "FAIL",
        "threads-2 peak memory": "FAIL",
        "write share": "PASS",
    }
    for prefix, want in expect.items():
        got = [s for t, s in status.items() if t.startswith(prefix)]
        assert got == [want], (prefix, status)


def _render(workload: str, targets: list[dict[str, Any]]) -> str:
    result = {
        "workload": workload,
        "quick": True,
        "started": "2026-01-01T00:00:00",
        "description": "test",
        "machine": {
            "cpu_model": "cpu",
            "cores": 2,
            "memory_mb": 1,
            "python": "3",
            "torch": "2",
            "git_commit": "0" * 40,
            "git_dirty": False,
        },
        "repeats": 1,
        "loadavg_before": None,
        "loadavg_after": None,
        "summary": {},
        "pss_mode": "off",
        "startup": {"help": None, "prepared": {}},
        "targets": targets,
        "runs": {},
        "variants": [],
    }
    return render_markdown(result, [])


def test_model_step_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.model_step import main as model_step

    model_step(["--repeats", "1", "--steps", "1", "--profile"])
    out = capsys.readouterr().out
    assert (
        "convolution share" in out
        and "max_pool2x2" in out
        and "textbook channels-last" in out
        and "blazefl CNN" in out
    )
