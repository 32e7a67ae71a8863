"""A divergence is located at (round, client, epoch, step) and classified, with evidence: each
class is a constructed divergence (a config key, an edited plugin, a regenerated data file, a
flipped byte in a client's RNG state, threads per client, oneDNN's ISA cap), and `verify` names
the first step where its re-execution leaves the record."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from blazefl.core.step_trace import combine_traces, split_traces
from blazefl.pipeline.divergence import first_step_difference, manifest_causes
from blazefl.stages.artifacts import canonical_json, sha256_bytes
from tests.pipeline.client_data import flip_tensor_byte
from tests.pipeline.integrity_helpers import cli, sets
from tests.pipeline.rechain import rechain

EVERY_CLIENT = ["data.clients=4", "fl.clients_per_round=4"]


def _diff(a: Path, b: Path) -> list[str]:
    result = cli("diff", str(a), str(b))
    assert result.exit_code == 1, result.output
    return result.output.splitlines()


def _line(lines: list[str], start: str) -> str:
    found = [line.strip() for line in lines if line.strip().startswith(start)]
    assert found, "\n".join(lines)
    return found[0]


def _run(out: Path, *extra: str) -> None:
    result = cli("run", "--out", str(out), "-q", *sets(*extra))
    assert result.exit_code == 0, result.output


def test_a_config_key_is_named_and_its_first_step(tmp_path: Path) -> None:
    _run(tmp_path / "a")
    _run(tmp_path / "b", "train.lr=0.02")
    lines = _diff(tmp_path / "a", tmp_path / "b")
    assert "cause: config: train.lr: 0.05 (A) vs 0.02 (B)" in lines[-4:-1] or any(
        "cause: config: train.lr" in line for line in lines
    )
    where = _line(lines, "where:")
    assert where.startswith("where: round 1, client ") and where.endswith("epoch 0, step 0")
    step = _line(lines, "cause: numerics")
    assert "same batch" in step and "the config differs (above)" in step


def test_threads_per_client_is_recorded_as_config(tmp_path: Path) -> None:
    _run(tmp_path / "a")
    _run(tmp_path / "b", "runtime.threads_per_client=2")
    lines = _diff(tmp_path / "a", tmp_path / "b")
    assert any("cause: config: runtime.threads_per_client: 1 (A) vs 2 (B)" in x for x in lines)


PLUGIN = """
from blazefl.algorithms import FedAvg, FedAvgServerHandler


class Server(FedAvgServerHandler):
    def global_update(self):
        start = self.params.clone()
        super().global_update()
        self.params.copy_(start + FACTOR * (self.params - start))


class Scaled(FedAvg):
    Server = Server
"""


def test_an_edited_plugin_is_user_code_and_the_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    runs = {}
    for factor in ("1.0", "0.5"):
        (tmp_path / "scaledplug.py").write_text(textwrap.dedent(PLUGIN).replace("FACTOR", factor))
        runs[factor] = tmp_path / f"run-{factor}"
        # a fresh interpreter per version of the module (the registry caches imports)
        proc = subprocess.run(
            [sys.executable, "-m", "blazefl.pipeline.cli", "run", "--out", str(runs[factor]), "-q"]
            + sets("fl.algorithm=scaledplug:Scaled"),
            capture_output=True,
            text=True,
            cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stderr
    lines = _diff(runs["1.0"], runs["0.5"])
    assert _line(lines, "cause: user code").startswith("cause: user code: scaledplug.py differ")
    assert _line(lines, "where:") == "where: round 1, the server (every client step identical)"
    assert _line(lines, "cause: server").startswith("cause: server: the clients' steps are equal")


LOADER = """
import numpy as np
import torch

from blazefl.data import FeatureDataset


def table(*, root, size, seed, train):
    rows = np.loadtxt(f"{root}/{'train' if train else 'test'}.csv", delimiter=",")
    x = torch.from_numpy(rows[:, :-1].astype(np.float32))
    return FeatureDataset(x, torch.from_numpy(rows[:, -1].astype(np.int64)), num_classes=3)


def mlp(*, num_classes, input_shape, dropout):
    return torch.nn.Sequential(torch.nn.Linear(input_shape[0], 16), torch.nn.ReLU(),
                               torch.nn.Linear(16, num_classes))
"""


def _tables(folder: Path, seed: int) -> None:
    folder.mkdir(exist_ok=True)
    rng = torch.Generator().manual_seed(seed)
    for name, n in (("train", 80), ("test", 20)):
        y = torch.randint(0, 3, (n, 1), generator=rng).double()
        x = torch.randn(n, 5, generator=rng, dtype=torch.float64) + y
        rows = torch.cat([x, y], 1).numpy()
        (folder / f"{name}.csv").write_text(
            "\n".join(",".join(f"{v:.6f}" for v in row) for row in rows) + "\n"
        )


def test_a_regenerated_data_file_is_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tableplug.py").write_text(textwrap.dedent(LOADER))
    extra = ["data.dataset=tableplug:table", "model.name=tableplug:mlp", *EVERY_CLIENT]
    _tables(tmp_path / "data-a", 0)
    shutil.copytree(tmp_path / "data-a", tmp_path / "data-b")
    _tables(tmp_path / "regen", 1)  # one file regenerated with other numbers
    shutil.copy(tmp_path / "regen" / "train.csv", tmp_path / "data-b" / "train.csv")
    _run(tmp_path / "a", *extra, "data.root=data-a")
    _run(tmp_path / "b", *extra, "data.root=data-b")
    lines = _diff(tmp_path / "a", tmp_path / "b")
    causes = [line.strip() for line in lines if line.strip().startswith("cause:")]
    assert any(c.startswith("cause: data: the dataset") for c in causes), lines
    assert any(c.startswith("cause: config: data.root") for c in causes), lines


def _flip_torch_state_byte(path: Path, cid: int) -> None:
    """Flip one byte inside the torch generator state of client `cid` in a clients file (a
    valid Mersenne Twister state still: a mis-restored stream, not a corrupt file). The state
    holds a 24-byte header, then the 624 words of the twister as uint64 of which torch keeps
    the low 32 bits: the low byte of word 300 is flipped."""
    flip_tensor_byte(path, f"{cid:05d}/rng/torch", 24 + 8 * 300)


def test_a_flipped_byte_in_a_client_rng_state_is_the_random_stream(tmp_path: Path) -> None:
    extra = [*EVERY_CLIENT, "fl.rounds=2"]
    _run(tmp_path / "a", *extra)
    b = tmp_path / "b"
    shutil.copytree(tmp_path / "a", b)
    shutil.rmtree(b / "round-0002")
    for extra_file in ("summary.json", "metrics/round-0002.json"):
        (b / extra_file).unlink(missing_ok=True)
    target = "clients.safetensors"
    _flip_torch_state_byte(b / "round-0001" / target, 1)
    digest = sha256_bytes((b / "round-0001" / target).read_bytes())

    def reseal(rel: str, m: dict[str, object]) -> None:
        if rel == "round-0001/manifest.json":
            outputs = m["outputs"]
            assert isinstance(outputs, dict)
            outputs[target] = digest

    rechain(b, reseal)
    _run(b, *extra)  # resumes round 2 from the mis-restored stream
    lines = _diff(tmp_path / "a", b)
    client = "client 1's RNG state in round-0001/clients.safetensors"
    assert _line(lines, "where:") == f"where: round 1, {client} (every client step identical)"
    assert "  clients.safetensors differs: client 1's RNG state" in "\n".join(lines)
    assert _line(lines, "cause: random stream").startswith("cause: random stream: a client's")
    # verify re-executes round 1 from round 0 and finds the record's RNG state is not what the
    # steps leave behind
    result = cli("verify", str(b), "--rounds", "1")
    assert result.exit_code == 1, result.output
    assert (
        f"every client step equals the record, but {client} differs: random stream (the "
        "recorded RNG state was tampered or mis-restored)"
    ) in result.output
    # round 2 of B started client 1 from another state: its trace says so
    from blazefl.pipeline.compare import explain_round
    from blazefl.stages.artifacts import RunDir

    explained = explain_round(RunDir(tmp_path / "a"), RunDir(b), 2, [])
    assert explained[0] == "where: round 2, client 1, epoch 0, step 0"
    assert explained[1].startswith("cause: random stream: client 1 starts the round from another")


@pytest.mark.skipif(
    torch.backends.cpu.get_cpu_capability() != "AVX512",
    reason="needs a CPU where torch runs AVX-512 kernels (ONEDNN_MAX_CPU_ISA=AVX2 then differs)",
)
def test_onednn_isa_cap_is_numerics_and_environment(tmp_path: Path) -> None:
    def run(out: Path, **env: str) -> None:
        proc = subprocess.run(
            [sys.executable, "-m", "blazefl.pipeline.cli", "run", "--out", str(out), "-q", *sets()],
            capture_output=True,
            text=True,
            env={**os.environ, **env},
        )
        assert proc.returncode == 0, proc.stderr

    run(tmp_path / "a")
    run(tmp_path / "b", ONEDNN_MAX_CPU_ISA="AVX2")
    lines = _diff(tmp_path / "a", tmp_path / "b")
    assert _line(lines, "cause: environment").startswith(
        "cause: environment: env.ONEDNN_MAX_CPU_ISA: '(absent)' (A) vs 'AVX2' (B)"
    )
    assert _line(lines, "where:").startswith("where: round 1, client ")
    assert "the kernels differ" in _line(lines, "cause: numerics")
    # verify of A under the capped ISA re-executes and names the first differing step
    proc = subprocess.run(
        [sys.executable, "-m", "blazefl.pipeline.cli", "verify", str(tmp_path / "a")]
        + ["--rounds", "1"],
        capture_output=True,
        text=True,
        env={**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"},
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "first differing step: round 1, client " in proc.stdout
    assert "numerics: same batch" in proc.stdout


# -- the classifier on constructed traces ----------------------------------------------------


def _trace(steps: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "epoch": torch.tensor([i // 2 for i in range(steps)]),
        "batch": torch.randint(-(2**62), 2**62, (steps,), generator=g),
        "rng": torch.randint(-(2**62), 2**62, (steps,), generator=g),
        "params": torch.randint(-(2**62), 2**62, (steps,), generator=g),
        "start_rng": torch.tensor([7]),
    }


def _changed(trace: dict[str, torch.Tensor], column: str, i: int) -> dict[str, torch.Tensor]:
    out = {k: v.clone() for k, v in trace.items()}
    out[column][i] += 1
    return out


@pytest.mark.parametrize(
    ("column", "kind"),
    [("batch", "data"), ("params", "numerics"), ("rng", "random stream")],
)
def test_the_first_differing_column_names_the_class(column: str, kind: str) -> None:
    a = {2: _trace(6), 5: _trace(6, 1)}
    b = {2: a[2], 5: _changed(a[5], column, 3)}
    found = first_step_difference(split_traces(combine_traces(a)), split_traces(combine_traces(b)))
    assert found is not None and (found.cid, found.epoch, found.step, found.kind) == (
        5,
        1,
        1,
        kind,
    )
    assert found.where(4) == "round 4, client 5, epoch 1, step 1"


def test_other_trace_differences() -> None:
    a = {1: _trace(4)}
    assert first_step_difference(a, {1: _trace(4)}) is None
    assert first_step_difference(a, {}).kind == "sampling"  # type: ignore[union-attr]
    shorter = {1: {k: (v if k == "start_rng" else v[:3]) for k, v in a[1].items()}}
    assert first_step_difference(a, shorter).kind == "steps"  # type: ignore[union-attr]
    other_start = {1: _changed(a[1], "start_rng", 0)}
    assert first_step_difference(a, other_start).kind == "random stream"  # type: ignore[union-attr]


def test_manifest_causes_name_each_class() -> None:
    a = {
        "config": {"train.lr": 0.1},
        "user_code": {"p.py": "1"},
        "code": {"version": "0.3.0"},
        "environment": {"torch": "2.14"},
    }
    b = {
        "config": {"train.lr": 0.2},
        "user_code": {"p.py": "2"},
        "code": {"version": "0.4.0"},
        "environment": {"torch": "2.15"},
    }
    causes = manifest_causes(a, b, ["dataset"])
    assert [c.split(":")[0] for c in causes] == [
        "config",
        "user code",
        "package version",
        "environment",
        "data",
    ]
    assert manifest_causes(a, json.loads(canonical_json(a))) == []
