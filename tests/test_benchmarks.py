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


# -- ray-2 and flower-2 (issue 18, part 3): no Ray is started here --------------------------
def test_w_runs_ray_and_flower_variants_against_the_right_references() -> None:
    from benchmarks.run_parse import mode_args

    variants = {v.name: v for v in workloads()["W"].variants}
    ray2, flower2 = variants["ray-2"], variants["flower-2"]
    assert (ray2.kind, ray2.mode, ray2.workers) == ("blazefl", "ray", 2)
    assert (ray2.reference, ray2.versus) == ("processes-2-shm", "flower-2")
    assert mode_args(ray2) == ["--mode", "ray", "--workers", "2"]  # no address: embedded
    assert mode_args(variants["processes-2-shm"])[-2:] == ["--ipc", "shared_memory"]
    assert (flower2.kind, flower2.workers, flower2.reference) == ("flower", 2, None)
    # PSS is measured for the whole Ray process tree, which runs on loopback
    assert ray2.multiprocess and flower2.multiprocess and ray2.uses_ray and flower2.uses_ray
    assert not variants["threads-2"].multiprocess and not variants["threads-2"].uses_ray
    blazefl = [v for v in variants.values() if v.kind == "blazefl"]
    assert all(v.versus == "flower-2" for v in blazefl)
    quick = {v.name: v for v in apply_quick(workloads()["W"]).variants}
    assert quick["ray-2"].versus == "flower-2" and quick["ray-2"].reference == "processes-2-shm"
    for name in ("resnet18", "clients1000", "shape"):
        assert not any(v.uses_ray for v in workloads()[name].variants)


def test_flower_client_trains_the_reference_model_on_the_reference_data() -> None:
    from benchmarks import flower_sim
    from benchmarks.reference import (
        LocalTrainer,
        _load_source,
        build_model,
        client_generator,
        flatten_,
    )

    cfg = {
        **dict(model="cnn", size=120, clients=3, epochs=1, batch=25, lr=0.1, momentum=0.0),
        **dict(weight_decay=0.0, seed=5, threads=1, tune_malloc=False, test_size=30),
    }
    # the data, partition and normalisation: the very bits reference.run builds
    datasets = _load_source("blazefl/data/datasets.py", "_benchref_datasets")
    partitioners = _load_source("blazefl/data/partitioners.py", "_benchref_partitioners")
    train = datasets.synthetic_dataset(120, 5)
    test = datasets.synthetic_dataset(30, 5, train=False)
    parts = partitioners.partition_indices(train.labels.numpy(), 3, "iid", 5)
    data = flower_sim.load_data(cfg)
    mine = data["train"]
    assert torch.equal(mine.images, train.images) and torch.equal(mine.labels, train.labels)
    assert all((a == b).all() for a, b in zip(data["parts"], parts, strict=True))
    on_server = flower_sim.load_data(cfg, train=False, test=True)  # test set only
    assert "train" not in on_server and torch.equal(on_server["test"].images, test.images)
    std = torch.tensor(train.std, dtype=torch.float64)  # the reference's normalisation
    mean = torch.tensor(train.mean, dtype=torch.float64)
    scale, shift = (1.0 / (255.0 * std)).to(torch.float32), (-mean / std).to(torch.float32)
    for got in (data, on_server):
        assert torch.equal(got["scale"].flatten(), scale)
        assert torch.equal(got["shift"].flatten(), shift)
    # a client's round: same bits as the reference's loop on the same client and round
    server = build_model("cnn", 5)
    state, loss, n = flower_sim.train_partition(server.state_dict(), cfg, cid=2, rnd=3)
    trainer = LocalTrainer(cfg, train.images, train.labels, data["scale"], data["shift"])
    gflat = flatten_(build_model("cnn", 5))
    ref_loss, steps = trainer.train_client(
        gflat, torch.from_numpy(parts[2]), client_generator(5, 3, 2)
    )
    assert n == len(parts[2]) and loss == ref_loss / steps
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(_bits(value), _bits(state[key])), key


def test_flower_clientapp_replies_with_the_trained_model() -> None:
    pytest.importorskip("flwr")
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from benchmarks import flower_sim
    from benchmarks.reference import build_model

    cfg = dict(model="cnn", size=60, clients=2, epochs=1, batch=30, lr=0.1, momentum=0.0)
    cfg.update(weight_decay=0.0, seed=1, threads=1, tune_malloc=False)
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0  # as a run sets
    model = build_model("cnn", 1)
    record = {"arrays": ArrayRecord(model.state_dict()), "config": ConfigRecord({**cfg})}
    record["config"]["server-round"] = 1
    msg = Message(content=RecordDict(record), dst_node_id=7, message_type="train")
    context = Context(1, 7, {"partition-id": 1}, RecordDict(), {})
    reply = flower_sim.client_train(msg, context)
    want, _, n = flower_sim.train_partition(model.state_dict(), cfg, cid=1, rnd=1)
    got = reply.content["arrays"].to_torch_state_dict()
    assert reply.content["metrics"]["num-examples"] == n == 30
    assert all(torch.equal(_bits(got[k]), _bits(v)) for k, v in want.items())


def test_flower_and_ray_argument_errors_are_one_line(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from benchmarks import flower_sim, run
    from benchmarks.args import find_flower_python

    python, why = find_flower_python(str(tmp_path / "no-python"))
    assert python is None and "\n" not in why
    assert "--flower-python" in why and "pip install -e '.[bench-flower,ray]'" in why
    for bad in (["--ray-netns", "sometimes"], ["--label", "../W"]):
        with pytest.raises(SystemExit):
            parse_args(bad)
    with pytest.raises(SystemExit, match=r"^need 1 <= workers <= clients[^\n]*$"):
        flower_sim.run_config(flower_sim.parse_args(["--workers", "3", "--clients", "2"]))
    # asked for by name: one line; only in the default list: skipped, said in one line
    monkeypatch.setattr(run, "ray_version", lambda: "2.x")
    wl = workloads()["W"]
    for variants in ("flower-2", None):
        argv = ["--flower-python", str(tmp_path / "none"), "--ray-netns", "off"]
        argv += ["--workdir", str(tmp_path)] + (["--variants", variants] if variants else [])
        args = parse_args(argv)
        bench = run.Bench(args, wl)
        try:
            chosen = [v for v in wl.variants if not variants or v.name == variants]
            if variants:
                with pytest.raises(SystemExit) as err:
                    run._ray_setup(args, chosen, bench)
                assert "\n" not in str(err.value) and "flower-2" in str(err.value)
            else:
                kept, info = run._ray_setup(args, chosen, bench)
                assert "flower-2" not in {v.name for v in kept} and "ray-2" in {
                    v.name for v in kept
                }
                assert info["loopback_netns"] is False
                assert "skipping: flower-2" in capsys.readouterr().err
        finally:
            bench.close()


def test_versus_ratios_column_and_targets() -> None:
    from benchmarks.report import summarize, table

    wl = workloads()["W"]
    chosen = [v for v in wl.variants if v.name in ("processes-2-shm", "ray-2", "flower-2")]

    def rec(wall: float, steady: float) -> dict[str, Any]:
        keys = ("peak_rss_sum_mb", "peak_unique_est_mb", "user_s", "sys_s", "minflt")
        return {"rc": 0, "repeat": 0, "wall_s": wall, "steady_round_s": steady} | dict.fromkeys(
            keys, 100.0
        )

    runs = {
        "processes-2-shm": [rec(10.0, 1.0)],
        "ray-2": [rec(12.0, 1.1)],
        "flower-2": [rec(30.0, 2.0)],
    }
    summary = summarize(runs, {}, chosen)
    assert summary["ray-2"]["ratios"]["steady_round_s"] == pytest.approx(1.1)
    assert summary["ray-2"]["ratios_versus"]["wall_s"] == pytest.approx(0.4)
    assert summary["flower-2"]["ratios_versus"] == {}
    md = table(summary, chosen)
    assert "vs flower-2: wall (steady)" in md and "| 0.400x (0.55x) |" in md
    targets = check_targets(wl, summary, {"help": None, "prepared": {}})
    status = {t["target"]: t["status"] for t in targets}
    assert status["ray-2 steady round <= 1.15x processes-2-shm"] == "PASS"
    assert status["ray-2 whole run (wall) <= 1.15x processes-2-shm"] == "FAIL"
    assert status["ray-2 whole run (wall) <= 0.50x flower-2"] == "PASS"
    assert status["processes-2-shm whole run (wall) <= 0.50x flower-2"] == "PASS"


def test_memory_sampling_covers_descendants_recursively(tmp_path: Any) -> None:
    import sys

    from benchmarks.measure import LOOPBACK_NETNS, loopback_netns_available, run_measured

    # python -> python -> sleep: the grandchild is in the tree and counted
    inner = "import subprocess; subprocess.run(['sleep', '0.8'])"
    outer = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {inner!r}])"
    p = run_measured([sys.executable, "-c", outer], tmp_path, {}, 0.1, 30)
    assert p.rc == 0 and p.memory["max_processes"] == 3
    assert p.memory["process_names"].get("sleep") == 1 and p.memory["leftover_processes"] == []
    assert p.memory["peak_pss_mb"] and p.memory["peak_rss_sum_mb"] >= p.memory["peak_pss_mb"] / 2
    if loopback_netns_available():  # what Ray sees: loopback alone; the tree's root is its own
        links = "import os, socket; print(os.getpid(), [n for _, n in socket.if_nameindex()])"
        p = run_measured(LOOPBACK_NETNS + [sys.executable, "-c", links], tmp_path, {}, None, 30)
        assert p.rc == 0 and p.stdout.split(" ", 1) == [str(p.pid), "['lo']\n"]
