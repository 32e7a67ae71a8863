"""The artifact store: run-directory layout, atomic commits, canonical files, manifests.

Layout (the README's artifact section)::

    RUN/dataset/            zarr store of the data + manifest.json        (prepare)
    RUN/partitions/         zarr: flat indices + offsets + manifest.json  (partition)
    RUN/round-0000/         global.safetensors, rng.safetensors, manifest.json   (init)
    RUN/round-NNNN/         same, plus state/ for stateful algorithms     (round)
    RUN/metrics/round-NNNN.json                                           (evaluate)
    RUN/timings/round-NNNN.json   wall times: the only files allowed to vary
    RUN/summary.json, RUN/plots/metrics.json (all rounds' metrics as one list, for
        `dvc plots`), RUN/plots/metrics.png                               (report)

A directory is written as a hidden `.NAME.partial` sibling, fsync'ed, then renamed into place:
it exists complete or not at all. A round counts as complete only with its manifest.json.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "ArtifactError",
    "RunDir",
    "canonical_json",
    "sha256_bytes",
    "sha256_file",
    "atomic_dir",
    "atomic_write",
    "safetensors_bytes",
    "read_safetensors",
    "environment",
    "MANIFEST",
]

MANIFEST = "manifest.json"
_ROUND_RE = re.compile(r"^round-(\d{4,})$")


class ArtifactError(ValueError):
    """A missing, corrupt or mismatched artifact; the message names it and the fix."""


def canonical_json(obj: Any) -> bytes:
    """Canonical JSON bytes: sorted keys, fixed separators, trailing newline."""
    return (
        json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
        + "\n"
    ).encode()


def sha256_bytes(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def partial_path(final: Path) -> Path:
    return final.parent / f".{final.name}.partial"


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Write a directory atomically: yields a temporary sibling, renamed onto `final` on success.

    On error the temporary directory is removed and `final` is untouched.

    Example:
        >>> with atomic_dir(run / "round-0003") as tmp:
        ...     (tmp / "global.safetensors").write_bytes(data)
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(final)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
        if final.exists():  # re-running a stage replaces its output
            old = final.parent / f".{final.name}.old"
            shutil.rmtree(old, ignore_errors=True)
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old)
        else:
            os.rename(tmp, final)
        _fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write(path: Path, data: bytes) -> None:
    """Write a file atomically (temporary sibling, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.partial"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def safetensors_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    """Canonical safetensors bytes: keys sorted, no metadata (so the header is deterministic)."""
    from safetensors.torch import save

    return save({k: tensors[k].contiguous() for k in sorted(tensors)})


def read_safetensors(path: Path, run_root: Path | None = None) -> dict[str, torch.Tensor]:
    """Load a safetensors file; a missing or corrupt file raises `ArtifactError`."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    shown = path.relative_to(run_root) if run_root else path
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ArtifactError(f"{shown} is missing: re-create it (blazefl run resumes)") from None
    try:
        return load(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise ArtifactError(
            f"{shown} is corrupt ({str(exc).splitlines()[0][:80]}): delete its round directory "
            "and run again"
        ) from None


def environment(threads_per_client: int) -> dict[str, Any]:
    """What the bits depend on besides the config: software versions and CPU ISA. No times."""
    import numpy

    return {
        "cpu_isa": torch.backends.cpu.get_cpu_capability(),
        "machine": platform.machine(),
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "threads_per_client": threads_per_client,
        "torch": torch.__version__,
    }


class RunDir:
    """Paths and queries of one run directory.

    Example:
        >>> run = RunDir("artifacts/default"); run.last_complete_round()
        3
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    @property
    def dataset(self) -> Path:
        return self.root / "dataset"

    @property
    def partitions(self) -> Path:
        return self.root / "partitions"

    def round_dir(self, t: int) -> Path:
        return self.root / f"round-{t:04d}"

    def metrics_path(self, t: int) -> Path:
        return self.root / "metrics" / f"round-{t:04d}.json"

    def timings_path(self, t: int) -> Path:
        return self.root / "timings" / f"round-{t:04d}.json"

    @property
    def summary_path(self) -> Path:
        return self.root / "summary.json"

    @property
    def plot_path(self) -> Path:
        return self.root / "plots" / "metrics.png"

    @property
    def plot_data_path(self) -> Path:
        """Every round's metrics as one JSON list: what `dvc plots` draws (it cannot draw a
        series from per-round files that each hold one JSON object)."""
        return self.root / "plots" / "metrics.json"

    def rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def complete_rounds(self) -> list[int]:
        """Rounds whose directory holds a manifest (round 0 = init), ascending."""
        if not self.root.is_dir():
            return []
        rounds = []
        for entry in self.root.iterdir():
            m = _ROUND_RE.match(entry.name)
            if m and (entry / MANIFEST).is_file():
                rounds.append(int(m.group(1)))
        return sorted(rounds)

    def last_complete_round(self) -> int | None:
        """The highest round t such that rounds 0..t are all complete, or None."""
        done = set(self.complete_rounds())
        t = -1
        while t + 1 in done:
            t += 1
        return t if t >= 0 else None

    def clean_partials(self) -> list[Path]:
        """Remove leftovers of interrupted writes (`.NAME.partial`, `.NAME.old`)."""
        removed = []
        if self.root.is_dir():
            for entry in self.root.rglob(".*.partial"):
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
                removed.append(entry)
            for entry in self.root.glob(".*.old"):
                shutil.rmtree(entry, ignore_errors=True)
        return removed

    def read_json(self, path: Path) -> dict[str, Any]:
        """Read a JSON artifact; missing or corrupt raises `ArtifactError`."""
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            raise ArtifactError(
                f"{self.rel(path)} is missing in {self.root}: run the stage that makes it "
                "(blazefl run resumes)"
            ) from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ArtifactError(
                f"{self.rel(path)} is corrupt (not JSON): delete it and run again"
            ) from None
        if not isinstance(data, dict):
            raise ArtifactError(f"{self.rel(path)} is corrupt (not a JSON object)")
        return data

    def manifest(self, t: int) -> dict[str, Any]:
        """Round t's manifest (round 0 = init)."""
        path = self.round_dir(t) / MANIFEST
        if not path.exists():
            last = self.last_complete_round()
            have = "no complete round" if last is None else f"rounds 0-{last} are complete"
            raise ArtifactError(
                f"round {t} is missing or incomplete in {self.root} ({have}): run the "
                "earlier stages first"
            )
        return self.read_json(path)

    def manifest_sha256(self, path: Path) -> str:
        if not path.exists():
            raise ArtifactError(f"{self.rel(path)} is missing: run the stage that makes it")
        return sha256_file(path)
