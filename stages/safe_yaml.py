"""Loading a params YAML file that may be hostile, with bounded time and memory.

`yaml.safe_load` alone expands aliases ("billion laughs": a few hundred bytes that become
gigabytes) and composes nodes recursively (a file nested 50,000 levels deep raises
`RecursionError`). Here the document is first scanned as a stream of parse events, which
PyYAML produces with an explicit state stack, not recursion; anchors and aliases are refused,
and nesting depth and node count are bounded. Only a document that passes is composed.
Every failure is a `YAMLInputError` with one line naming the file and the fix.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "YAMLInputError",
    "MAX_YAML_BYTES",
    "MAX_YAML_DEPTH",
    "MAX_YAML_NODES",
    "load_yaml",
    "load_yaml_file",
]

#: Largest params file accepted (a real one is well under 10 KiB).
MAX_YAML_BYTES = 1 << 20
#: Deepest nesting of mappings / sequences accepted (the config is two levels deep).
MAX_YAML_DEPTH = 32
#: Most nodes (scalars, mappings, sequences) accepted in one document.
MAX_YAML_NODES = 100_000

# libyaml when present: same events and documents, and far faster on a 1 MiB file
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_NODE_EVENTS = (yaml.ScalarEvent, yaml.SequenceStartEvent, yaml.MappingStartEvent)


class YAMLInputError(ValueError):
    """A params file that is not a small, plain YAML document; the message says the fix."""


def _one_line(text: object, limit: int = 120) -> str:
    return " ".join(str(text).split())[:limit]


def _scan(text: str, source: str, max_depth: int, max_nodes: int) -> None:
    """Walk the parse events of `text`, refusing aliases, anchors, deep nesting, many nodes
    and more than one document, before anything is built from them."""
    depth = nodes = documents = 0
    for event in yaml.parse(text, Loader=_LOADER):
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise YAMLInputError(
                f"{source} uses YAML anchors or aliases (&name / *name), which are not "
                "allowed in params files: write each value out in full"
            )
        if isinstance(event, yaml.DocumentStartEvent):
            documents += 1
            if documents > 1:
                raise YAMLInputError(
                    f"{source} holds more than one YAML document (---): keep only one"
                )
        if isinstance(event, _NODE_EVENTS):
            nodes += 1
            if nodes > max_nodes:
                raise YAMLInputError(
                    f"{source} holds more than {max_nodes} YAML values: a params file is "
                    "a small mapping of config keys"
                )
        if isinstance(event, yaml.SequenceStartEvent | yaml.MappingStartEvent):
            depth += 1
            if depth > max_depth:
                mark = event.start_mark
                raise YAMLInputError(
                    f"{source} is nested more than {max_depth} levels deep (line "
                    f"{mark.line + 1}): a params file is a small mapping of config keys"
                )
        elif isinstance(event, yaml.SequenceEndEvent | yaml.MappingEndEvent):
            depth -= 1


def load_yaml(
    text: str,
    source: str,
    *,
    max_bytes: int = MAX_YAML_BYTES,
    max_depth: int = MAX_YAML_DEPTH,
    max_nodes: int = MAX_YAML_NODES,
) -> Any:
    """Parse one YAML document with aliases refused and size, depth and node count bounded.

    Args:
        text: the YAML text.
        source: what to call it in errors (a file name, or "--set train.lr").
        max_bytes: largest UTF-8 size accepted.
        max_depth: deepest nesting of mappings and sequences accepted.
        max_nodes: most values accepted.

    Returns:
        The document, as `yaml.safe_load` builds it (None for an empty text).

    Raises:
        YAMLInputError: too large, too deep, aliases, invalid YAML, or a value YAML cannot
            build (e.g. an integer of 5,000 digits, a date like 2020-13-45).

    Example:
        >>> load_yaml("train:\\n  lr: 0.05\\n", "params.yaml")
        {'train': {'lr': 0.05}}
    """
    if len(text) > max_bytes or len(text.encode("utf-8", "surrogatepass")) > max_bytes:
        raise YAMLInputError(
            f"{source} is larger than {max_bytes} bytes: a params file is a small mapping "
            "of config keys"
        )
    try:
        _scan(text, source, max_depth, max_nodes)
        return yaml.load(text, Loader=_LOADER)  # noqa: S506 (a safe loader)
    except YAMLInputError:
        raise
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or exc
        raise YAMLInputError(
            f"{source} is not valid YAML{where}: {_one_line(problem)}: fix the syntax"
        ) from None
    except Exception as exc:
        # The safe constructors raise plain Python errors on values they cannot build (an
        # integer of 5,000 digits, the date 2020-13-45, `!!timestamp abc`): with the size,
        # depth and alias bounds above, what is left is a bad value, never a resource problem.
        raise YAMLInputError(
            f"{source} holds a value YAML cannot read ({_one_line(exc)}): write it as a "
            "plain number or a quoted string"
        ) from None


def load_yaml_file(path: str | os.PathLike[str], *, max_bytes: int = MAX_YAML_BYTES) -> Any:
    """Read and parse a params file with `load_yaml`'s bounds.

    The file must be a regular file of at most `max_bytes` bytes holding UTF-8 text: a folder,
    a FIFO (opened without waiting for a writer), a device or a binary file is refused with one
    line before anything large is read.

    Args:
        path: the params file.
        max_bytes: largest size accepted.

    Returns:
        The document (None for an empty file).

    Raises:
        YAMLInputError: missing, unreadable, not a regular file, too large, not UTF-8, or as
            `load_yaml`.

    Example:
        >>> load_yaml_file("params.yaml")
        {'seed': 0}
    """
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise YAMLInputError(f"config file {p} does not exist: pass an existing --config") from None
    except OSError as exc:
        raise YAMLInputError(f"cannot read config file {p} ({exc.strerror}): check it") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise YAMLInputError(f"config file {p} is a folder: pass the params YAML file")
        if not stat.S_ISREG(info.st_mode):
            raise YAMLInputError(f"config file {p} is not a regular file: pass a YAML file")
        if info.st_size > max_bytes:
            raise YAMLInputError(
                f"config file {p} holds {info.st_size} bytes, more than the {max_bytes} "
                "allowed: pass the params YAML file"
            )
        try:
            data = os.read(fd, max_bytes + 1)
        except OSError as exc:
            raise YAMLInputError(f"cannot read config file {p} ({exc.strerror})") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise YAMLInputError(f"config file {p} grew past {max_bytes} bytes while being read")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise YAMLInputError(
            f"config file {p} is not UTF-8 text (byte {exc.start}): pass the params YAML file"
        ) from None
    return load_yaml(text, str(p), max_bytes=max_bytes)
