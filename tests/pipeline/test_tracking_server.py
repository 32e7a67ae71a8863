"""Tracking against real MLflow servers, started here on the loopback address only: the
README's "Tracking" commands run as written (a free port for 5000, a tiny params.yaml), and
what a run tracked to a server sends arrives there (params, metrics per round, the digest
tag, the manifests), read back through MLflow's client API."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.pipeline.conftest import TINY_SETS

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[2] / "README.md"

#: A server starts in 5-30 s on 2 busy cores (database set-up, imports).
START_TIMEOUT = 240


def _block(name: str) -> list[str]:
    """The command lines of the README's block between `<!-- name:start/end -->`."""
    found = re.search(
        rf"<!-- {name}:start -->\n```bash\n(.*?)```\n<!-- {name}:end -->", README.read_text(), re.S
    )
    assert found, f"README lost its {name} block"
    return [line.split("  #")[0].strip() for line in found.group(1).splitlines() if line.strip()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _split(line: str, port: int) -> tuple[dict[str, str], list[str]]:
    """(leading VAR=value assignments, argv) of a README line, its port 5000 made `port`."""
    words = shlex.split(line.replace("5000", str(port)).rstrip("& "))
    env = {}
    while "=" in words[0] and not words[0].startswith("-"):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    return env, words


def _tool(argv: list[str]) -> list[str]:
    """This environment's copy of a README command (`blazefl`, `mlflow`)."""
    return [str(Path(sys.executable).parent / argv[0]), *argv[1:]]


@pytest.fixture()
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder with a tiny params.yaml, as the README's commands expect; no tracking
    variables inherited from the machine."""
    pytest.importorskip("mlflow")
    tiny: dict[str, Any] = {}
    for item in TINY_SETS:
        key, _, value = item.partition("=")
        section, _, leaf = key.partition(".")
        tiny.setdefault(section, {})[leaf] = json.loads(value)
    (tmp_path / "params.yaml").write_text(json.dumps(tiny))  # JSON is YAML
    for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
        monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture()
def servers(workdir: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Servers a test starts; each one's process group is ended afterwards."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        with _suppress_gone():
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with _suppress_gone():
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


class _suppress_gone:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, *_: Any) -> bool:
        return kind is ProcessLookupError


def _serve(argv: list[str], port: int, cwd: Path, started: list[Any]) -> str:
    """Start a README server line; wait until it answers. Returns its URL."""
    assert "--host" not in argv or argv[argv.index("--host") + 1] == "127.0.0.1"
    log = (cwd / f"server-{port}.log").open("wb")
    proc = subprocess.Popen(
        _tool(argv), cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    started.append(proc)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        assert proc.poll() is None, (cwd / f"server-{port}.log").read_text()[-2000:]
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as answer:
                if answer.status == 200:
                    return url
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"{argv[0]} did not answer on {url} within {START_TIMEOUT} s")


def _run(env: dict[str, str], argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        _tool(argv), cwd=cwd, env={**os.environ, **env}, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr, proc.stderr
    return proc


def _digest(run: Path) -> str:
    shown = _run({}, ["blazefl", "show", str(run)], run.parent.parent).stdout
    return next(line.split()[1] for line in shown.splitlines() if line.startswith("digest: "))


def _record(client: Any, name: str) -> Any:
    experiment = client.get_experiment_by_name("blazefl")
    (found,) = client.search_runs([experiment.experiment_id], f"attributes.run_name = '{name}'")
    assert found.info.status == "FINISHED"
    return found


def _check_record(client: Any, name: str, run: Path, tmp: Path) -> None:
    """What MLflow holds of `run` is what the run holds."""
    record = _record(client, name)
    rounds = [json.loads(p.read_text()) for p in sorted((run / "metrics").glob("round-*.json"))]
    config = json.loads((run / "round-0003" / "manifest.json").read_text())["config"]
    assert record.data.params == {
        k: v if isinstance(v, str) else json.dumps(v) for k, v in config.items()
    }
    assert record.data.tags["blazefl.digest"] == _digest(run)
    for key in ("test_accuracy", "test_loss", "train_loss"):
        history = client.get_metric_history(record.info.run_id, key)
        assert [(m.step, m.value) for m in history] == [(r["round"], r[key]) for r in rounds]
    names = [f.path for f in client.list_artifacts(record.info.run_id)]
    assert {"dataset", "partitions", "round-0000", "round-0003", "summary.json"} <= set(names)
    for rel in ("round-0003/manifest.json", "dataset/manifest.json", "summary.json"):
        copy = client.download_artifacts(record.info.run_id, rel, str(tmp))
        assert Path(copy).read_bytes() == (run / rel).read_bytes(), rel


def test_readme_tracking_commands_work_as_written(
    workdir: Path, servers: list[subprocess.Popen[bytes]]
) -> None:
    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    port = _free_port()
    lines = _block("tracking")
    assert [line.split()[0] for line in lines] == ["blazefl", "blazefl", "mlflow", "tensorboard"]
    for line in lines[:2]:
        _run(*_split(line, port), workdir)
    assert sorted(p.name for p in (workdir / "artifacts").iterdir()) == [
        "default", "lr02", "tracking",
    ]  # fmt: skip

    # `mlflow ui` as written serves both runs (asked through the client, over HTTP)
    env, argv = _split(lines[2], port)
    url = _serve(argv, port, workdir, servers)
    client = MlflowClient(tracking_uri=url)
    for name in ("default", "lr02"):
        _check_record(client, name, workdir / "artifacts" / name, workdir / "dl" / name)
    assert _record(client, "lr02").data.params["train.lr"] == "0.02"

    # `tensorboard --logdir` as written: the first run's event files are there
    logdir = Path(_split(lines[3], port)[1][2])
    events = EventAccumulator(str(logdir / "default"))
    events.Reload()
    assert [s.step for s in events.Scalars("test_accuracy")] == [1, 2, 3]
    assert not (logdir / "lr02").exists()  # tracked with mlflow only


def test_a_run_tracked_to_a_server_arrives_there(
    workdir: Path, servers: list[subprocess.Popen[bytes]]
) -> None:
    from mlflow import MlflowClient

    port = _free_port()
    server, run = _block("tracking-server")
    url = _serve(_split(server, port)[1], port, workdir, servers)
    env, argv = _split(run, port)
    assert env == {"MLFLOW_TRACKING_URI": url}
    out = _run(env, argv, workdir)
    assert out.stderr.splitlines()[-1].startswith("mlflow: run ")
    assert out.stderr.splitlines()[-1].endswith(f" in {url}")
    assert not (workdir / "artifacts" / "tracking").exists()  # the server has it all
    _check_record(
        MlflowClient(tracking_uri=url), "served", workdir / "artifacts" / "served", workdir / "dl"
    )
