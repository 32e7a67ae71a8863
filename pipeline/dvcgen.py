"""`blazefl dvc`: write dvc.yaml (one explicit stage per round) and params.yaml for a config.

The pipeline is a straight chain, one stage per step of the run directory::

    prepare -> partition -> round_000 (init) -> round_001 -> ... -> round_T -> report

Why explicit stages: DVC templating (`foreach`) cannot make round t depend on round t-1, and
one stage for all rounds would re-run every round when one is added. With a stage per round,
`dvc repro -s -f round_007` re-runs one round and `git diff --exit-code dvc.lock` says whether
it reproduced; extending `fl.rounds` only adds stages.

Each stage lists as params only the keys its bytes depend on: `prepare` the dataset keys,
`partition` the partition keys, init and rounds every byte-relevant key (their manifests
record the whole byte config). The round count, execution mode, worker count and IPC
(declared `affects_bytes=False`) are never listed, and the stage commands never pass them:
the commands read them from the params file, so switching to processes or adding rounds
makes nothing stale. No output is `persist`: DVC deletes a stage's outs before running it, which the
stages expect. Per-round metrics, the summary and the plot data are `cache: false` (small,
meant for git, `dvc exp show` and `dvc plots show`); `timings/` and the PNG are not outputs
at all (timings vary; the PNG needs the optional matplotlib).

The stage commands call `blazefl` by name, found on the PATH of whoever runs `dvc`: activate
the environment that has it first (`. .venv/bin/activate`). An interpreter path written into
dvc.yaml would make the `cmd` of every stage, and so dvc.lock, differ between clones, and a
reader's `dvc repro` would then rerun every stage instead of reproducing the lock.

User code named by import path (`fl.algorithm: myfl.feddyn:FedDyn`) is a dependency of the
stages that run it, and so is every module of the folder it imports (`myfl/common.py`) and
its packages' `__init__.py` files: `prepare` depends on the dataset loader's code, `partition`
on the algorithm's, init and rounds on the model's and the algorithm's. The files are found
by reading the source (`blazefl.stages.user_code.config_code`), not by importing it, so an
edit to a helper module makes exactly those stages stale.

Switching algorithms: the params of a stage are the keys of the selected algorithm only
(`dsfl.kd_lr` is no param of a FedAvg pipeline, so editing it reruns nothing). To switch,
regenerate: `blazefl dvc --set fl.algorithm=dsfl` writes the new algorithm's section into
params.yaml and its keys into the stages' params; `dvc repro` then reruns partition and every
round.

Example:
    >>> from blazefl.stages.config import load_config
    >>> write_dvc(load_config(None), out="artifacts/default", dvc_file=Path("dvc.yaml"),
    ...           params_file=Path("params.yaml"))
    [PosixPath('params.yaml'), PosixPath('dvc.yaml')]
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from blazefl.stages.config import (
    CODE_KEYS,
    DATA_KEYS,
    RunConfig,
    byte_keys,
    dump_yaml,
    partition_keys,
)
from blazefl.stages.user_code import config_code

__all__ = ["stage_name", "stage_code", "dvc_yaml", "write_dvc", "path_note"]

#: The top-level plots of dvc.yaml: name -> (title, y label, metrics fields drawn; x = round).
PLOTS = {
    "accuracy": ("Test accuracy", "accuracy", ("test_accuracy",)),
    "loss": ("Loss", "loss", ("train_loss", "test_loss")),
}


def stage_name(t: int, rounds: int) -> str:
    """DVC stage of round t: `round_000` is init; three digits, more when rounds >= 1000."""
    return f"round_{t:0{max(3, len(str(rounds)))}d}"


def _rel(path: str | os.PathLike[str], base: Path) -> str:
    """`path` (relative to the working directory) as a posix path relative to `base`."""
    return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(base))).as_posix()


class _Flow(list):  # type: ignore[type-arg]
    """A list dumped in YAML flow style (`[a, b]`): keeps long params lists on few lines."""


def _dumper() -> Any:
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def flow(dumper: yaml.SafeDumper, data: _Flow) -> Any:
        return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)

    Dumper.add_representer(_Flow, flow)
    return Dumper


def _params(keys: list[str], params_rel: str) -> list[Any]:
    """A stage's `params:` entry; names the file unless it is the default `params.yaml`."""
    if params_rel == "params.yaml":
        return _Flow(keys)
    return [{params_rel: _Flow(keys)}]


def stage_code(config: Mapping[str, Any], base: Path) -> dict[str, list[str]]:
    """The user code each stage kind runs, relative to dvc.yaml's folder `base`: editing any
    file of it (the named module, a helper it imports, a parent package's `__init__.py`) must
    make exactly the stages that run it stale.

    The files come from reading the source (`config_code`), never from importing it, and are
    resolved from `base` because DVC runs the stage commands there (and `blazefl` puts that
    folder on `sys.path`). Code outside `base` (an installed package) is the environment's,
    recorded in the manifests like torch's version.

    Args:
        config: the config, or just its import-path keys (read as text: nothing is imported).
        base: the folder dvc.yaml lies in.

    Returns:
        {stage kind: sorted posix paths relative to base}.

    Example:
        >>> stage_code({"fl.algorithm": "myfl.feddyn:FedDyn", "model.name": "cnn",
        ...             "data.dataset": "synthetic"}, Path("."))["partition"]
        ['myfl/__init__.py', 'myfl/common.py', 'myfl/feddyn.py']
    """
    kinds = sorted({kind for stages in CODE_KEYS.values() for kind in stages})
    return {kind: sorted(config_code(config, kind, base)) for kind in kinds}


def dvc_yaml(
    config: RunConfig,
    out: str,
    params: str,
    header: str = "",
    code: dict[str, list[str]] | None = None,
) -> str:
    """The text of dvc.yaml.

    Args:
        config: the validated `RunConfig` (`fl.rounds` sets the number of round stages).
        out: the run directory, relative to dvc.yaml's directory (posix).
        params: the params file, relative to dvc.yaml's directory (posix).
        header: comment lines put first.
        code: files each stage kind reads besides the run's own, by stage kind (the user's
            source files, see `stage_code`; `data.root` for prepare), added as its deps.

    Returns:
        Deterministic YAML text: the same arguments always give the same bytes.
    """
    import yaml

    rounds = config.spec.fl.rounds
    root = PurePosixPath(out)

    def p(*parts: str) -> str:
        return root.joinpath(*parts).as_posix()

    def round_dir(t: int) -> str:
        return p(f"round-{t:04d}")

    def metrics(t: int) -> str:
        return p("metrics", f"round-{t:04d}.json")

    def cmd(*args: str) -> str:
        return shlex.join(["blazefl", "stage", *args, "--config", params, "--out", out])

    round_keys = byte_keys(config)
    code = code or {}

    def code_deps(stage: str) -> list[str]:
        return sorted(code.get(stage, []))

    stages: dict[str, Any] = {
        "prepare": {
            "cmd": cmd("prepare"),
            **({"deps": code_deps("prepare")} if code_deps("prepare") else {}),
            "params": _params(sorted(DATA_KEYS), params),
            "outs": [p("dataset")],
        },
        "partition": {
            "cmd": cmd("partition"),
            "deps": [p("dataset"), *code_deps("partition")],
            "params": _params(partition_keys(config.spec), params),
            "outs": [p("partitions")],
        },
        stage_name(0, rounds): {
            "cmd": cmd("init"),
            "deps": [p("dataset"), p("partitions"), *code_deps("init")],
            "params": _params(round_keys, params),
            "outs": [round_dir(0)],
        },
    }
    for t in range(1, rounds + 1):
        stages[stage_name(t, rounds)] = {
            "cmd": cmd("round", "--round", str(t)),
            "deps": [p("dataset"), p("partitions"), round_dir(t - 1), *code_deps("round")],
            "params": _params(round_keys, params),
            "outs": [round_dir(t), {metrics(t): {"cache": False}}],
        }
    plot_data = p("plots", "metrics.json")
    stages["report"] = {
        "cmd": cmd("report"),
        # report checks that rounds 0..T exist; with no rounds its only input is init.
        "deps": [metrics(t) for t in range(1, rounds + 1)] or [round_dir(0)],
        # A plain out, not a stage `plots:` entry: the top-level plot below draws it once.
        "outs": [{plot_data: {"cache": False}}],
        "metrics": [{p("summary.json"): {"cache": False}}],
    }
    # `dvc plots` draws series only from JSON lists: the per-round metrics files (one object
    # each) give it nothing, so the plots read report's list of all rounds. Accuracy and loss
    # are separate plots: on one y axis the accuracy curve would be flattened by the loss.
    plots = [
        {
            name: {
                "title": title,
                "template": "linear",
                "x": "round",
                "y": {plot_data: _Flow(fields)},
                "x_label": "round",
                "y_label": y_label,
            }
        }
        for name, (title, y_label, fields) in PLOTS.items()
    ]
    doc: dict[str, Any] = {"stages": stages, "plots": plots}
    body = yaml.dump(doc, Dumper=_dumper(), sort_keys=False, default_flow_style=False, width=72)
    return header + body


def _write(path: Path, text: str) -> None:
    """Write a text file atomically (temporary sibling, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.partial"
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_dvc(
    config: RunConfig,
    out: str | os.PathLike[str],
    dvc_file: Path,
    params_file: Path,
) -> list[Path]:
    """Write `params_file` (the full config) and `dvc_file` (the pipeline) atomically.

    Paths inside dvc.yaml are relative to its directory, which is where DVC runs the
    commands; `out` and `params_file` are taken relative to the working directory.

    Args:
        config: the validated config (`RunConfig`).
        out: the run directory the stages write.
        dvc_file: where dvc.yaml goes.
        params_file: where params.yaml goes (read by DVC and by the stage commands).

    Returns:
        The files written: [params_file, dvc_file].
    """
    base = dvc_file.parent
    out_rel = _rel(out, base)
    params_rel = _rel(params_file, base)
    # The regenerate hint is relative to this file's directory, so the bytes never depend on
    # where `blazefl dvc` ran.
    regen = ["blazefl", "dvc", "--config", params_rel, "--out", out_rel]
    if dvc_file.name != "dvc.yaml":
        regen += ["--dvc-file", dvc_file.name]
    header = (
        "# Generated by `blazefl dvc` from the params file: edit that file (or pass --set),\n"
        f"# then regenerate, from this directory: {shlex.join(regen)}\n"
    )
    deps = stage_code(config, base)
    root = config.spec.data.root
    if root is not None:
        # the files the dataset loader reads: regenerating one must make prepare stale (DVC
        # runs the stage in dvc.yaml's folder, where a relative data.root resolves as here)
        deps["prepare"] = sorted({*deps.get("prepare", []), Path(root).as_posix()})
    _write(params_file, dump_yaml(config))
    _write(dvc_file, dvc_yaml(config, out_rel, params_rel, header, deps))
    return [params_file, dvc_file]


def path_note() -> str | None:
    """A one-line hint when the `blazefl` that dvc.yaml's commands call is not this one.

    DVC runs each stage's `cmd` through the shell with the PATH of whoever runs `dvc`, so
    `dvc repro` in a shell where the environment is not activated fails with "blazefl: command
    not found", or runs another installation.

    Returns:
        None when `blazefl` on PATH is the script next to this interpreter; else the hint.

    Example:
        >>> path_note() is None  # inside an activated virtual environment
        True
    """
    found = shutil.which("blazefl")
    here = Path(sys.executable).parent / "blazefl"
    if found is not None and (not here.exists() or Path(found).resolve() == here.resolve()):
        return None
    what = "is not on PATH" if found is None else f"on PATH is {found}, not {here}"
    activate = Path(sys.prefix) / "bin" / "activate"
    return (
        f"note: dvc.yaml's stages call `blazefl`, which {what}: activate this environment "
        f"before running dvc (. {activate})"
    )
