"""Every golden run (`tests/golden/v*/<name>/run`) through today's CLI: show, diff, verify.

A golden of the current manifest format must re-execute to the same bytes wherever the
environment is the one it recorded; elsewhere (another CPU model, torch build...) only its
files and chain are checked and the byte comparison is skipped, since bits are promised for
the same environment only. A golden of an older format is held to what the legacy fixtures
are: readable, files and chain checked, and one line naming the version that re-executes it.

Each test works on a copy in tmp_path. verify runs in a subprocess, from a folder that does
not hold the plugin's source (a reader has no author repository), so user code it imports
never enters this process.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from blazefl.pipeline.chain import chain_problems, store_problems
from blazefl.pipeline.cli import main
from blazefl.stages.artifacts import RunDir
from blazefl.stages.environment import environment
from blazefl.stages.manifest_schema import MANIFEST_FORMAT
from tests.golden.make_golden import (
    CONFIG,
    CURRENT,
    GOLDEN,
    HERE,
    cli_env,
    digest_of,
    last_round,
    manifest,
)

GOLDENS = sorted(p.parent for p in HERE.glob("v*/*/" + CONFIG))
IDS = [f"{p.parent.name}/{p.name}" for p in GOLDENS]
PLUGIN_PATH = "goldplug.algo:GoldAvg"
#: Runs the CLI like `blazefl ARGS` and reports, on exit, every goldplug module that was
#: looked up or is loaded: the proof that verify without consent imports nothing it names.
PROBE = """
import atexit, json, sys
seen = set()
class Watch:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.split(".")[0] == "goldplug":
            seen.add(name)
        return None
sys.meta_path.insert(0, Watch)
def report():
    seen.update(n for n in sys.modules if n.split(".")[0] == "goldplug")
    print("PROBE " + json.dumps(sorted(seen)))
atexit.register(report)
from blazefl.pipeline.cli import main
main(prog_name="blazefl")
"""


def config(golden: Path) -> dict[str, Any]:
    """The golden's config.json (what make_golden recorded)."""
    data: dict[str, Any] = json.loads((golden / CONFIG).read_text())
    return data


def copy_run(golden: Path, tmp_path: Path) -> Path:
    """A writable copy of the golden run (the committed files are never touched)."""
    return Path(shutil.copytree(golden / "run", tmp_path / "run", copy_function=shutil.copyfile))


def cli(*args: str) -> Result:
    """show / diff in-process: they never import the code a run names."""
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def verify(run: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`blazefl verify RUN ARGS` in a subprocess in `cwd`, through PROBE."""
    cwd.mkdir(exist_ok=True)
    cmd = [sys.executable, "-c", PROBE, "verify", str(run), *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=cli_env(), timeout=300)


def probed(proc: subprocess.CompletedProcess[str]) -> list[str]:
    """The goldplug modules PROBE saw looked up or loaded."""
    line = next(x for x in proc.stdout.splitlines() if x.startswith("PROBE "))
    names: list[str] = json.loads(line.removeprefix("PROBE "))
    return names


def one_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The single `error:` line of a refusal (exit 2)."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def environment_differences(run: Path) -> list[str]:
    """Fields of round 0's recorded environment that differ here (empty: the same one)."""
    m0 = manifest(run)
    cfg = m0["config"]
    rec = m0["environment"]
    now = environment(cfg["runtime.threads_per_client"], cfg.get("runtime.device", "cpu"))
    keys = sorted(k for k in set(rec) | set(now) if rec.get(k) != now.get(k))
    return [f"{k}: {rec.get(k)!r} recorded vs {now.get(k)!r} here" for k in keys]


def integrity_problems(run: Path) -> list[str]:
    """verify's file and chain checks (stores, every round), without re-executing."""
    rd = RunDir(run)
    out = [*store_problems(rd, "dataset"), *store_problems(rd, "partitions")]
    for t in range(last_round(run) + 1):
        out += [f"round {t}: {p}" for p in chain_problems(rd, t, rd.manifest(t))]
    return out


def test_every_golden_of_the_current_format_is_there() -> None:
    """After a format change, make_golden must be run: v<new>/ holds every golden."""
    missing = [name for name in GOLDEN if not (CURRENT / name / CONFIG).is_file()]
    assert not missing, (
        f"no golden runs of manifest format {MANIFEST_FORMAT} for {missing}: run "
        "`python -m tests.golden.make_golden` (and keep the older v*/ folders)"
    )


@pytest.mark.parametrize("golden", GOLDENS, ids=IDS)
def test_show_prints_the_digest(golden: Path, tmp_path: Path) -> None:
    run = copy_run(golden, tmp_path)
    result = cli("show", str(run))
    assert result.exit_code == 0, result.output
    digest = digest_of(run)
    assert digest == config(golden)["digest"], "the committed run is not the generated one"
    assert f"digest: {digest}" in result.stdout
    assert f"manifest format {manifest(run)['format']}" in result.stdout


@pytest.mark.parametrize("golden", GOLDENS, ids=IDS)
def test_diff_with_itself_is_identical(golden: Path, tmp_path: Path) -> None:
    run = copy_run(golden, tmp_path)
    result = cli("diff", str(run), str(run))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("identical"), result.output


@pytest.mark.parametrize("golden", GOLDENS, ids=IDS)
def test_verify(golden: Path, tmp_path: Path) -> None:
    """Re-executed to the same bytes (current format, same environment); else what is
    promised there: files and chain, and for an older format one line naming its version."""
    run = copy_run(golden, tmp_path)
    reader = tmp_path / "reader"
    trust = ["--trust-code"] if manifest(run).get("user_code") else []
    if manifest(run).get("format") != MANIFEST_FORMAT:
        proc = verify(run, reader, *trust)
        line = one_error(proc)
        assert f"pip install 'blazefl=={config(golden)['blazefl_version']}'" in line
        for t in range(last_round(run) + 1):
            assert f"round {t}: files and chain OK" in proc.stdout
        assert "corrupt" not in proc.stdout + proc.stderr
        return
    differences = environment_differences(run)
    if differences:
        assert integrity_problems(run) == []
        pytest.skip(
            "environment differs from the golden run's ("
            + "; ".join(differences)
            + "): files and chain checked, bytes not compared"
        )
    proc = verify(run, reader, *trust)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"rounds 0-{last_round(run)}: all OK" in proc.stdout
    if trust:
        assert "re-executing with the run's own copy of its user code" in proc.stdout
        assert probed(proc), "the probe saw no import of the plugin: it proves nothing"


def test_the_file_and_chain_check_finds_a_flipped_byte(tmp_path: Path) -> None:
    """What the skip path above still checks is not vacuous."""
    run = copy_run(CURRENT / "fedavg", tmp_path)
    assert integrity_problems(run) == []
    target = run / "round-0001" / "global.safetensors"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0x01
    target.write_bytes(bytes(data))
    problems = integrity_problems(run)
    assert any(p.startswith("round 1: global.safetensors differs") for p in problems), problems


def _plugin_goldens() -> list[Path]:
    return [g for g in GOLDENS if config(g)["sets"].get("fl.algorithm") == PLUGIN_PATH]


@pytest.mark.parametrize(
    "golden", _plugin_goldens(), ids=[f"{g.parent.name}/{g.name}" for g in _plugin_goldens()]
)
def test_plugin_verify_without_consent_imports_nothing(golden: Path, tmp_path: Path) -> None:
    """The reader's folder holds no plugin source; without --trust-code verify refuses in one
    line naming the import path and the recorded source hashes, before importing anything."""
    run = copy_run(golden, tmp_path)
    reader = tmp_path / "reader"
    recorded = manifest(run)["user_code"]
    assert set(recorded) == {"goldplug/__init__.py", "goldplug/algo.py", "goldplug/common.py"}
    proc = verify(run, reader)
    if manifest(run).get("format") != MANIFEST_FORMAT:  # older: refused before consent
        assert proc.returncode == 2 and probed(proc) == []
        return
    line = one_error(proc)
    assert f"fl.algorithm={PLUGIN_PATH}" in line and "--trust-code" in line
    for rel, sha in recorded.items():
        assert f"{rel} {sha[:12]}" in line
    assert probed(proc) == []
    assert not (reader / "goldplug").exists()  # nothing materialized where the reader stands
