"""The experiment trackers `runtime.track` and `blazefl run --track` may name, in a module that
imports nothing heavy, so the command line can list them without importing torch.

Tracking never changes a run's bytes: it reads what a run commits and copies it elsewhere
(an MLflow store or server, TensorBoard event files), so `runtime.track` is not hashed.

Example:
    >>> parse_track("mlflow,tensorboard")
    ('mlflow', 'tensorboard')
    >>> parse_track("none")
    ()
"""

from __future__ import annotations

from collections.abc import Iterator

__all__ = ["TRACKERS", "TRACK_INSTALL_HINT", "TrackChoices", "parse_track"]

#: mlflow: params, per-round metrics, the digest and the manifests to an MLflow store or
#: server; tensorboard: per-round metrics as TensorBoard event files.
TRACKERS = ("mlflow", "tensorboard")

#: What to install for each tracker (both are in the `track` extra).
TRACK_INSTALL_HINT = {
    "mlflow": "pip install 'blazefl[track]' (or: pip install 'mlflow>=2')",
    "tensorboard": "pip install 'blazefl[track]' (or: pip install tensorboard)",
}


def parse_track(value: object) -> tuple[str, ...]:
    """The trackers a `runtime.track` value names: "none", one name, or names joined by
    commas ("mlflow,tensorboard"); each at most once, in `TRACKERS` order.

    Raises:
        ValueError: not a string, an unknown name, or "none" mixed with a tracker.
    """
    if not isinstance(value, str):
        raise ValueError(f"runtime.track must be {TrackChoices.choices_text()}, got {value!r}")
    names = [n.strip() for n in value.split(",")]
    if names == ["none"]:
        return ()
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise ValueError(f"runtime.track must be {TrackChoices.choices_text()}, got {value!r}")
    return tuple(n for n in TRACKERS if n in names)


class TrackChoices:
    """The allowed `runtime.track` values, for the settings validator and the schema."""

    def __iter__(self) -> Iterator[str]:
        return iter(("none", *TRACKERS, ",".join(TRACKERS)))

    @staticmethod
    def valid(value: object) -> bool:
        try:
            parse_track(value)
        except ValueError:
            return False
        return True

    @staticmethod
    def choices_text() -> str:
        return "none, mlflow, tensorboard or mlflow,tensorboard"
