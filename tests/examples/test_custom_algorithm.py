"""A researcher's own algorithm, model and dataset (examples/custom_algorithm), named by import
path in params.yaml, through every `blazefl` verb and the real `dvc repro`, with no edit to the
package.

The example's modules sit next to its params.yaml and the commands run in that folder (import
paths are looked up from the working directory), so this module works in the example folder.
Runs are tiny and shared through module-scoped fixtures.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result

from blazefl.pipeline.cli import main

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "custom_algorithm"
USER_FILES = ("myalgo.py", "mymodel.py", "mydata.py", "params.yaml")
USER_KEYS = [
    "fedadam.beta1",
    "fedadam.beta2",
    "fedadam.clip_norm",
    "fedadam.server_lr",
    "fedadam.tau",
]
TINY = {
    "data.size": 240,
    "data.test_size": 80,
    "data.clients": 4,
    "fl.clients_per_round": 2,
    "fl.rounds": 3,
    "fedadam.clip_norm": 0.5,  # exercised (it clips at this size), not only declared
    "model.dropout": 0.1,  # the user's generator-driven dropout, in every mode
}
SETS = [arg for key, value in TINY.items() for arg in ("--set", f"{key}={value}")]
OUT = "artifacts/exp"
# two rounds under DVC (one `blazefl stage` process per stage): round 2 restores round 1's
# server moments from disk, which is what a stateful algorithm needs from the pipeline
DVC_SETS = [*SETS, "--set", "fl.rounds=2", "--set", "runtime.mode=sequential"]
DVC_ROUNDS = ["round_000", "round_001", "round_002"]
BIN = Path(sys.executable).parent
NOT_ARTIFACTS = (".gitignore", ".blazefl.lock")


def blazefl(*args: str) -> Result:
    """The CLI in-process (in the example folder, where the config's import paths resolve)."""
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def files(root: Path) -> dict[str, str]:
    """sha256 of every artifact by relative path; timings vary, and the PNG, the run lock
    and git files are not artifacts."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        skip = rel.startswith("timings/") or rel.endswith(".png") or p.name in NOT_ARTIFACTS
        if p.is_file() and not skip:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def same_code(root: Path) -> dict[str, object]:
    """`files(root)`, with each manifest read as JSON without what names the code version.

    Manifests record the commit of the blazefl checkout; in a working tree that others commit
    to while the test runs, a run made minutes later may name another commit. Everything else
    in a manifest (config, output hashes, uplinks, metrics) is compared as it is; what hashes
    a manifest (the parent link, manifest inputs) is left out with it.
    """
    out: dict[str, object] = dict(files(root))
    for rel in [k for k in out if k.endswith("manifest.json") and k.startswith("round-")]:
        manifest = json.loads((root / rel).read_text())
        manifest.pop("code", None)
        manifest.pop("parent", None)
        inputs = manifest.get("inputs", {})
        manifest["inputs"] = {k: v for k, v in inputs.items() if not k.endswith("manifest.json")}
        out[rel] = manifest
    return out


@pytest.fixture(scope="module", autouse=True)
def in_example_folder() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(EXAMPLE)
        yield


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder for this module's runs."""
    return tmp_path_factory.mktemp("custom")


@pytest.fixture(scope="module")
def ref_run(runs: Path) -> Path:
    """The reference: `blazefl run` in sequential mode (read only: copy to modify)."""
    out = runs / "sequential"
    result = blazefl("run", "--out", str(out), "--mode", "sequential", "-q", *SETS)
    assert result.exit_code == 0, result.output
    return out


# -- run, stage, verify, diff, show -----------------------------------------------------------


def test_run_uses_the_users_algorithm_model_and_dataset(ref_run: Path) -> None:
    manifest = json.loads((ref_run / "round-0003" / "manifest.json").read_text())
    config = manifest["config"]
    assert config["fl.algorithm"] == "myalgo:FedAdam"
    assert config["model.name"] == "mymodel:mlp"
    assert config["data.dataset"] == "mydata:stripes"
    assert {k: config[k] for k in USER_KEYS} == {
        "fedadam.beta1": 0.9,
        "fedadam.beta2": 0.99,
        "fedadam.clip_norm": 0.5,
        "fedadam.server_lr": 0.03,
        "fedadam.tau": 0.001,
    }
    assert not [k for k in config if k.startswith("dsfl.")]
    # the server's Adam moments are state, snapshotted every round
    assert "state/server.safetensors" in manifest["outputs"]
    dataset = json.loads((ref_run / "dataset" / "zarr.json").read_text())
    assert dataset["attributes"]["num_classes"] == 4  # stripes has 4 classes


@pytest.mark.parametrize(
    "mode_args",
    [("--mode", "threads", "--workers", "2"), ("--mode", "processes", "--workers", "2")],
    ids=["threads", "processes"],
)
def test_every_mode_writes_the_same_bytes(
    ref_run: Path, runs: Path, mode_args: tuple[str, ...]
) -> None:
    # processes: spawned workers import the user's modules (the workload is pickled by name)
    out = runs / mode_args[1]
    result = blazefl("run", "--out", str(out), "-q", *mode_args, *SETS)
    assert result.exit_code == 0, result.output
    assert files(out) == files(ref_run)


def test_stages_one_by_one_write_the_same_bytes(ref_run: Path, runs: Path) -> None:
    out = str(runs / "staged")
    steps = [["prepare"], ["partition"], ["init"]]
    steps += [["round", "--round", str(t)] for t in (1, 2, 3)] + [["report"]]
    for step in steps:
        result = blazefl("stage", *step, "--out", out, *SETS)
        assert result.exit_code == 0, (step, result.output)
    assert files(Path(out)) == files(ref_run)
    metrics = Path(out) / "metrics" / "round-0002.json"
    metrics.unlink()
    result = blazefl("stage", "evaluate", "--round", "2", "--out", out, *SETS)
    assert result.exit_code == 0, result.output
    assert files(Path(out)) == files(ref_run)


def test_verify_reexecutes_the_users_rounds_and_catches_a_tampered_byte(
    ref_run: Path, runs: Path
) -> None:
    refused = blazefl("verify", str(ref_run), "--mode", "sequential")
    assert refused.exit_code == 2 and "--trust-code" in refused.output  # consent first
    result = blazefl("verify", str(ref_run), "--mode", "sequential", "--trust-code")
    assert result.exit_code == 0, result.output
    assert {f"round {t}: OK" for t in range(4)} <= set(result.output.splitlines())
    tampered = runs / "tampered"
    shutil.copytree(ref_run, tampered)
    state = tampered / "round-0002" / "state" / "server.safetensors"  # FedAdam's moments
    data = bytearray(state.read_bytes())
    data[-3] ^= 1
    state.write_bytes(bytes(data))
    result = blazefl("verify", str(tampered), "--mode", "sequential", "--trust-code")
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert "round 2: state/server.safetensors differs from its manifest (modified on disk)" in lines
    assert "round 1: OK" in lines


@pytest.mark.parametrize(
    ("key", "value", "side"),
    [("fedadam.server_lr", 0.01, "server"), ("fedadam.clip_norm", 0.2, "clients")],
    ids=["server_lr", "clip_norm"],
)
def test_diff_names_the_users_key_and_the_first_differing_round(
    ref_run: Path, runs: Path, key: str, value: float, side: str
) -> None:
    out = runs / key
    sets = [*SETS, "--set", f"{key}={value}"]
    result = blazefl("run", "--out", str(out), "--mode", "sequential", "-q", *sets)
    assert result.exit_code == 0, result.output
    result = blazefl("diff", str(ref_run), str(out))
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert any(line.startswith(f"config differs: {key}: ") for line in lines), lines
    assert "first difference: round 1 (round 0 identical)" in lines, lines
    # a server-side key changes only the aggregate; a client-side one what clients upload
    clients_differ = any(line.strip().startswith("uplinks differ for clients") for line in lines)
    assert clients_differ == (side == "clients"), lines


def test_show_lists_every_round_of_the_users_run(ref_run: Path) -> None:
    result = blazefl("show", str(ref_run))
    assert result.exit_code == 0, result.output
    manifest = json.loads((ref_run / "round-0000" / "manifest.json").read_text())
    lines = result.output.splitlines()
    assert manifest["config_sha256"][:12] in lines[0]
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["round", "kind"])
    rows = [line.split() for line in lines[header + 1 :]]
    assert [row[0] for row in rows[:4]] == ["0", "1", "2", "3"]
    assert rows[0][1] == "init" and all(row[1] == "round" for row in rows[1:4])


# -- dvc ----------------------------------------------------------------------------------


def test_dvc_yaml_lists_the_users_keys_for_rounds_only(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    shutil.copy(EXAMPLE / "params.yaml", params)
    result = blazefl(
        "dvc", "--config", str(params), "--out", str(tmp_path / OUT),
        "--dvc-file", str(tmp_path / "dvc.yaml"), *SETS,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    stages = yaml.safe_load((tmp_path / "dvc.yaml").read_text())["stages"]
    for name in ("round_000", "round_001", "round_002", "round_003"):
        keys = stages[name]["params"]
        assert set(USER_KEYS) <= set(keys), name
        assert {"fl.algorithm", "model.name", "data.dataset"} <= set(keys), name
        assert not [k for k in keys if k.split(".")[0] in ("dsfl", "fedavg")], name
    for name in ("prepare", "partition"):
        assert not set(USER_KEYS) & set(stages[name]["params"]), name
    assert "data.dataset" in stages["prepare"]["params"]
    tree = yaml.safe_load(params.read_text())
    assert tree["fl"]["algorithm"] == "myalgo:FedAdam" and "fedadam" in tree
    assert "dsfl" not in tree


def _tool(name: str) -> str | None:
    here = BIN / name
    return str(here) if here.exists() else shutil.which(name)


def _sh(repo: Path, *args: str) -> str:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # dvc.yaml calls `blazefl`
    env["DVC_NO_ANALYTICS"] = "1"
    env["DVC_SITE_CACHE_DIR"] = str(repo.parent / "dvc-site-cache")
    proc = subprocess.run(
        [_tool(args[0]) or args[0], *args[1:]], cwd=repo, env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def dvc_repo(runs: Path) -> Path:
    """A git + DVC repository holding only the researcher's files, reproduced by `dvc repro`."""
    if not (_tool("dvc") and _tool("git") and _tool("blazefl")):
        pytest.skip("needs dvc, git and the blazefl console script (pip install -e .[dev,dvc])")
    repo = runs / "repo"
    repo.mkdir()
    for name in USER_FILES:
        shutil.copy(EXAMPLE / name, repo / name)
    _sh(repo, "git", "init", "-q")
    _sh(repo, "git", "config", "user.email", "test@example.com")
    _sh(repo, "git", "config", "user.name", "test")
    _sh(repo, "git", "config", "commit.gpgsign", "false")
    _sh(repo, "dvc", "init", "-q")
    _sh(repo, "dvc", "config", "core.analytics", "false")
    _sh(repo, "blazefl", "dvc", "--out", OUT, *DVC_SETS)
    _sh(repo, "dvc", "repro")
    return repo


@pytest.mark.slow
def test_dvc_repro_runs_the_users_code_with_the_bytes_of_blazefl_run(
    dvc_repo: Path, ref_run: Path
) -> None:
    via_dvc = same_code(dvc_repo / OUT)
    assert "round-0002/state/server.safetensors" in via_dvc
    # the 3-round reference holds every file of the 2-round pipeline, with the same bytes
    # (the round count is not part of any round's bytes); only the report differs
    rounds = {k: v for k, v in via_dvc.items() if k != "summary.json" and "plots/" not in k}
    assert rounds == {k: v for k, v in same_code(ref_run).items() if k in rounds}
    assert json.loads(_sh(dvc_repo, "dvc", "status", "--json").strip().splitlines()[-1]) == {}


def _stale(repo: Path, path: str, old: str, new: str) -> dict[str, object]:
    """`dvc status` with one text replaced in `path` (restored afterwards)."""
    file = repo / path
    text = file.read_text()
    assert old in text
    try:
        file.write_text(text.replace(old, new))
        return json.loads(_sh(repo, "dvc", "status", "--json").strip().splitlines()[-1])
    finally:
        file.write_text(text)


@pytest.mark.slow
def test_changing_a_user_key_makes_rounds_stale_but_not_data(dvc_repo: Path) -> None:
    stale = _stale(dvc_repo, "params.yaml", "server_lr: 0.03", "server_lr: 0.01")
    assert sorted(stale) == DVC_ROUNDS
    assert "fedadam.server_lr" in json.dumps(stale["round_001"])


@pytest.mark.slow
def test_editing_the_users_algorithm_makes_rounds_stale(dvc_repo: Path) -> None:
    stale = _stale(dvc_repo, "myalgo.py", "(no bias correction", "(no bias  correction")
    assert set(DVC_ROUNDS) <= set(stale)


# -- mistakes in the user's config --------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("fl.algorithm", "nope.mod:X", ["nope.mod", "cannot import"]),
        ("fl.algorithm", "myalgo:Nope", ["myalgo", "no attribute"]),
        ("fl.algorithm", "mymodel:mlp", ["mymodel:mlp", "name"]),  # a function, not an Algorithm
        ("fl.algorithm", "myalgo:FedAdamHParams", ["FedAdamHParams"]),  # a class, not one either
        ("fedadam.server_lr", "0", ["fedadam.server_lr", "> 0.0"]),
        ("fedadam.beta2", "1", ["beta2", "< 1.0"]),
        ("fedadam.typo", "1", ["fedadam.typo", "fedadam.server_lr"]),
        ("model.name", "nope.mod:f", ["nope.mod", "cannot import"]),
        ("data.dataset", "nope.mod:load", ["nope.mod", "cannot import"]),
    ],
)
def test_a_broken_user_config_is_one_line_and_exit_2(
    tmp_path: Path, key: str, value: str, words: list[str]
) -> None:
    result = blazefl("run", "--out", str(tmp_path / "run"), "-q", *SETS, "--set", f"{key}={value}")
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert all(w in lines[0] for w in words), lines[0]


@pytest.mark.parametrize(
    ("key", "source"),
    [
        ("data.dataset", "def load(size, seed):\n    return None\n"),
        ("model.name", "def load(num_classes):\n    return None\n"),
    ],
    ids=["dataset", "model"],
)
def test_a_user_function_with_the_wrong_signature_is_one_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str, source: str
) -> None:
    module = f"wrong_signature_{key.split('.')[0]}"  # a fresh name: the registry caches imports
    (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = str(tmp_path / "run")
    result = blazefl("run", "--out", out, "-q", *SETS, "--set", f"{key}={module}:load")
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1


def test_fedadam_takes_the_adam_step_the_paper_describes() -> None:
    """The example's algorithm is what it claims: after one round the global model is
    x0 + lr * m / (sqrt(v) + tau), with FedAvg's average giving the pseudo-gradient."""
    import torch

    from blazefl.experiment import build_experiment, simulate
    from blazefl.spec import ExperimentSpec

    common: dict[str, object] = {k: v for k, v in TINY.items() if not k.startswith("fedadam.")}
    common.update({"fl.rounds": 1, "model.name": "mymodel:mlp", "data.dataset": "mydata:stripes"})
    fedavg = ExperimentSpec.from_flat({**common, "fl.algorithm": "fedavg"})
    fedadam = ExperimentSpec.from_flat({**common, "fl.algorithm": "myalgo:FedAdam"})
    hp = fedadam.hparams
    x0 = torch.cat(
        [p.detach().flatten() for p in build_experiment(fedadam).initial_model().parameters()]
    )
    average = simulate(fedavg, mode="sequential")[0].flat  # same clients: same server stream
    server = simulate(fedadam, mode="sequential")[0]
    delta = average.double() - x0.double()
    m, v = (1 - hp.beta1) * delta, (1 - hp.beta2) * delta.square()
    torch.testing.assert_close(server.m, m, rtol=0, atol=0)
    expected = (x0.double() + hp.server_lr * m / (v.sqrt() + hp.tau)).float()
    torch.testing.assert_close(server.flat, expected, rtol=0, atol=0)
