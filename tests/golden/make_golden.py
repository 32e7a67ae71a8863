"""Regenerate the golden runs (`tests/golden/v<format>/`) and the pinned digests
(`tests/golden/digests.json`) with the installed blazefl, from the repository root:

    python -m tests.golden.make_golden               # every golden run, then the digests
    python -m tests.golden.make_golden --runs        # the golden runs only
    python -m tests.golden.make_golden --digests     # this environment's pinned digests only
    python -m tests.golden.make_golden --only dsfl   # one golden run

Each golden run is made by `blazefl run` in a subprocess, in an empty temporary folder (the
plugin run: in `v2/plugin-src`, so its modules are recorded as `goldplug/...`), then packed
and unpacked: what is kept is exactly what a reader of a published run gets (no timings, no
PNG, no run lock, plain files instead of hard links). `v<format>/<name>/config.json` records
the `--set` values, the command, the digest and the environment it was made in.

Runs go to the folder of the manifest format the installed package writes: once the format
changes, a new `v3/` appears beside `v2/`, which is kept as it is (see README.md).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

from blazefl.stages.manifest_schema import MANIFEST_FORMAT

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
#: Golden runs of the format this package writes (older `v*/` folders are never rewritten).
CURRENT = HERE / f"v{MANIFEST_FORMAT}"
#: The plugin's source: the working directory of the plugin run (see goldplug/__init__.py).
PLUGIN_SRC = HERE / "v2" / "plugin-src"
DIGESTS = HERE / "digests.json"
CONFIG = "config.json"

#: The legacy fixture fedavg-2d6de98's config (tests/golden/legacy/README.md): the golden
#: fedavg run has the same config hash, so `blazefl diff` of the two shows what the format
#: change alone did to a run.
BASE = {
    "data.size": "32",
    "data.test_size": "16",
    "data.clients": "4",
    "fl.clients_per_round": "2",
    "fl.rounds": "2",
    "train.local_epochs": "1",
    "train.batch_size": "16",
    "model.name": "cnn_small",
    "runtime.mode": "sequential",
}
#: Stateful algorithms write a model-sized state file per client or a float64 server buffer
#: every round: two clients, one sampled per round, and half the data keep them near 1 MB.
SMALL = {
    **BASE,
    "data.size": "16",
    "data.test_size": "8",
    "data.clients": "2",
    "fl.clients_per_round": "1",
    "train.batch_size": "8",
}


@dataclass(frozen=True)
class Golden:
    """One golden run: its `--set` values, and whether it runs the plugin's code."""

    sets: dict[str, str]
    plugin: bool = False


GOLDEN: dict[str, Golden] = {
    "fedavg": Golden({**BASE, "fl.algorithm": "fedavg"}),
    "fedprox": Golden({**BASE, "fl.algorithm": "fedprox", "fedprox.mu": "0.1"}),
    "dsfl": Golden(
        {
            **SMALL,
            "fl.algorithm": "dsfl",
            "dsfl.open_size": "8",  # held back from the 16 training samples
            "dsfl.public_size_per_round": "4",
            "dsfl.kd_epochs": "1",
            "dsfl.kd_batch_size": "4",
        }
    ),
    "scaffold": Golden({**SMALL, "fl.algorithm": "scaffold", "scaffold.server_lr": "0.5"}),
    "fedavgm": Golden({**SMALL, "fl.algorithm": "fedavgm", "fedavgm.server_momentum": "0.5"}),
    "plugin": Golden(
        {**BASE, "fl.algorithm": "goldplug.algo:GoldAvg", "goldavg.mix": "0.5"}, plugin=True
    ),
}
#: The reference configs of the pinned digests: the built-in golden configs (tiny, and one
#: per built-in algorithm); each is run in sequential mode and with 2 worker threads.
REFERENCE: dict[str, dict[str, str]] = {name: g.sets for name, g in GOLDEN.items() if not g.plugin}
MODES: dict[str, list[str]] = {
    "sequential": ["--mode", "sequential"],
    "threads": ["--mode", "threads", "--workers", "2"],
}


# -- running the CLI -------------------------------------------------------------------------
def cli_env() -> dict[str, str]:
    """The environment of a CLI subprocess: no PYTHONPATH (user code is found only in its
    working directory, as for a reader) and no bytecode written into the plugin's folder."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def blazefl(cwd: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """`blazefl ARGS` in a subprocess in `cwd` (imports of user code stay out of this one)."""
    cmd = [sys.executable, "-m", "blazefl.pipeline.cli", *args]
    return subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, env=cli_env(), timeout=timeout
    )


def set_args(sets: dict[str, str]) -> list[str]:
    """`--set KEY=VALUE` arguments, in the order given."""
    return [arg for key, value in sets.items() for arg in ("--set", f"{key}={value}")]


class GoldenError(RuntimeError):
    """A step of making a golden run or a digest failed; the message holds the CLI's output."""


def _checked(proc: subprocess.CompletedProcess[str], what: str) -> str:
    if proc.returncode != 0:
        raise GoldenError(f"{what} failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def run_config(sets: dict[str, str], out: Path, cwd: Path, mode: str = "sequential") -> Path:
    """Run one config to `out` (absolute) from `cwd`; returns `out`.

    Raises:
        GoldenError: the run failed (with the CLI's output).
    """
    proc = blazefl(cwd, "run", "--out", str(out), *set_args(sets), *MODES[mode], "-q")
    _checked(proc, f"blazefl run ({mode}) of {sets.get('fl.algorithm')}")
    return out


# -- reading a run -----------------------------------------------------------------------------
def last_round(run: Path) -> int:
    """The highest round folder of a run."""
    return max(int(p.name.split("-")[1]) for p in run.glob("round-[0-9][0-9][0-9][0-9]"))


def digest_of(run: Path) -> str:
    """The run's digest: sha256 of its last round's manifest (what `blazefl show` prints)."""
    manifest = run / f"round-{last_round(run):04d}" / "manifest.json"
    return hashlib.sha256(manifest.read_bytes()).hexdigest()


def manifest(run: Path, t: int = 0) -> dict[str, Any]:
    """Round t's manifest as JSON."""
    data: dict[str, Any] = json.loads((run / f"round-{t:04d}" / "manifest.json").read_text())
    return data


def environment_label(env: dict[str, Any]) -> str:
    """A human-readable name of a recorded environment: torch build / ISA / CPU model."""
    label = f"torch {env.get('torch')} / {env.get('cpu_isa')} / {env.get('cpu_model')}"
    extra = sorted(k for k in env if k.startswith("env.") or k.startswith("gpu"))
    return label + "".join(f" / {k}={env[k]}" for k in extra)


def environment_key(env: dict[str, Any]) -> str:
    """Key of the bit-relevant environment a run recorded: 12 hex digits of the sha256 of its
    canonical JSON (any field, env.* variables included, gives another key), then a label."""
    canonical = json.dumps(env, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return f"{hashlib.sha256(canonical.encode()).hexdigest()[:12]} {environment_label(env)}"


def installed_version() -> str:
    """The installed package version: the one every manifest records as `code.version`."""
    return package_version("blazefl")


# -- golden runs -------------------------------------------------------------------------------
def copy_published(src: Path, dest: Path) -> tuple[int, int]:
    """Copy an unpacked run's files to `dest` (replaced) as plain, writable files, leaving out
    hidden leftovers. Returns (files, bytes)."""
    if dest.exists():
        shutil.rmtree(dest)  # committed files are 0444; their folders are writable
    files = size = 0
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)  # content only: no 0444 mode, no hard link
        target.chmod(0o644)
        files, size = files + 1, size + target.stat().st_size
    return files, size


def command_line(sets: dict[str, str]) -> str:
    """The documented command that made a golden run."""
    return " ".join(["blazefl run --out run", *set_args(sets), "-q"])


def make_run(name: str, scratch: Path) -> dict[str, Any]:
    """Make golden run `name` in `scratch`, publish it to CURRENT/<name>/run and write its
    config.json. Returns the config record."""
    golden = GOLDEN[name]
    cwd = PLUGIN_SRC if golden.plugin else scratch / "empty"
    cwd.mkdir(exist_ok=True)
    made = run_config(golden.sets, scratch / "run", cwd)
    # pack + unpack: the golden is what a reader of the published archive gets
    _checked(blazefl(scratch, "pack", "run", "run.tar"), f"blazefl pack of {name}")
    _checked(blazefl(scratch, "unpack", "run.tar", "published"), f"blazefl unpack of {name}")
    target = CURRENT / name
    files, size = copy_published(scratch / "published", target / "run")
    m0 = manifest(made)
    record = {
        "name": name,
        "sets": golden.sets,
        "working_directory": (
            PLUGIN_SRC.relative_to(ROOT).as_posix() if golden.plugin else "an empty folder"
        ),
        "command": command_line(golden.sets),
        "blazefl_version": m0["code"]["version"],
        "manifest_format": m0.get("format"),
        "user_code": m0.get("user_code", {}),
        "environment": m0["environment"],
        "digest": digest_of(target / "run"),
        "files": files,
        "bytes": size,
    }
    if record["digest"] != digest_of(made):
        raise GoldenError(f"{name}: the published copy has another digest than the run")
    (target / CONFIG).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return record


def make_runs(names: list[str]) -> None:
    """Regenerate the named golden runs (print one line per run)."""
    for name in names:
        with tempfile.TemporaryDirectory(prefix=f"golden-{name}-") as tmp:
            rec = make_run(name, Path(tmp))
        print(
            f"{CURRENT.name}/{name}: {rec['files']} files, {rec['bytes']:,} bytes, "
            f"digest {rec['digest']}"
        )


# -- pinned digests ----------------------------------------------------------------------------
def reference_digests(scratch: Path) -> tuple[dict[str, str], dict[str, Any]]:
    """Run every reference config in both modes; returns ({name: digest}, environment).
    Raises GoldenError when the modes disagree (that is a bug, never something to pin)."""
    digests: dict[str, str] = {}
    envs: list[dict[str, Any]] = []
    for name, sets in REFERENCE.items():
        got = {}
        for mode in MODES:
            work = scratch / f"{name}-{mode}"
            work.mkdir()
            got[mode] = digest_of(run_config(sets, work / "run", work, mode))
            envs.append(manifest(work / "run")["environment"])
        if len(set(got.values())) != 1:
            raise GoldenError(f"{name}: sequential and threads give other bytes: {got}")
        digests[name] = got["sequential"]
    if any(env != envs[0] for env in envs):
        raise GoldenError("the runs recorded different environments: record again")
    return digests, envs[0]


def record_digests() -> None:
    """Pin this environment's digests in digests.json (a new version starts a new file)."""
    version = installed_version()
    with tempfile.TemporaryDirectory(prefix="golden-digests-") as tmp:
        digests, env = reference_digests(Path(tmp))
    key = environment_key(env)
    old = json.loads(DIGESTS.read_text()) if DIGESTS.is_file() else {}
    if old.get("version") != version:  # other versions' digests pin other bytes: dropped
        old = {}
    data = {
        "version": version,
        "environments": {**old.get("environments", {}), key: digests},
        "environment_records": {**old.get("environment_records", {}), key: env},
    }
    DIGESTS.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"digests.json: version {version}, environment {key}")


def main(argv: list[str] | None = None) -> None:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m tests.golden.make_golden")
    parser.add_argument("--runs", action="store_true", help="the golden runs only")
    parser.add_argument("--digests", action="store_true", help="the pinned digests only")
    parser.add_argument("--only", action="append", choices=sorted(GOLDEN), help="one run")
    args = parser.parse_args(argv)
    both = not (args.runs or args.digests or args.only)
    try:
        if both or args.runs or args.only:
            make_runs(args.only or list(GOLDEN))
        if both or args.digests:
            record_digests()
    except GoldenError as exc:
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    main()
