"""Loading a params YAML file that may be hostile, with bounded time and memory.

`yaml.safe_load` alone expands aliases ("billion laughs": a few hundred bytes that become
gigabytes) and composes nodes recursively (a file nested 50,000 levels deep raises
`RecursionError`). Here the document is first scanned as a stream of parse events, which
PyYAML produces with an explicit state stack, not recursion; anchors and aliases are refused,
and nesting depth and node count are bounded. Only a document that passes is composed.
Every failure is a `YAMLInputError` with one line naming the file and the fix.

Composition is stricter than `yaml.safe_load`: a key repeated in one mapping (silently
last-wins in PyYAML) and a YAML 1.1 base-60 number (`1:30` read as 90) are refused. Error
messages never echo the input: they name the source, the line and the problem, so pointing
`--config` at a file that is not a params file (`/etc/shadow`, a binary) discloses nothing.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "YAMLInputError",
    "MAX_YAML_BYTES",
    "MAX_YAML_DEPTH",
    "MAX_YAML_NODES",
    "CONFIG_KEY",
    "load_yaml",
    "load_yaml_file",
]

#: Largest params file accepted (a real one is well under 10 KiB).
MAX_YAML_BYTES = 1 << 20
#: Deepest nesting of mappings / sequences accepted (the config is two levels deep).
MAX_YAML_DEPTH = 32
#: Most nodes (scalars, mappings, sequences) accepted in one document.
MAX_YAML_NODES = 100_000

#: What a key of a params file looks like (`seed`, `train`, `lr`, `train.lr`): anything else
#: is refused without being echoed, as it is likely not a params file at all.
CONFIG_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,99}")

# libyaml when present: same events and documents, and far faster on a 1 MiB file
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_NODE_EVENTS = (yaml.ScalarEvent, yaml.SequenceStartEvent, yaml.MappingStartEvent)


class YAMLInputError(ValueError):
    """A params file that is not a small, plain YAML document; the message says the fix."""


class _Refused(Exception):
    """Raised while building the document; `load_yaml` adds the source name."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


def _one_line(text: object, limit: int = 120) -> str:
    return " ".join(str(text).split())[:limit]


# PyYAML and libyaml quote the offending character, tag or value in their problem text
# ("found character '\\t'", "the tag '!secret'", "#x0001", "position 3"): all of it comes
# from the input, so it is removed and only the fixed wording of the problem is kept.
# A quoted YAML indicator or token name ("could not find expected ':'", "but found
# '<scalar>'") is part of the fixed wording and kept.
_QUOTED = re.compile(r"\"[^\"]*\"|'[^']*'|#x[0-9a-fA-F]+|\s+in \"<[^>]*>\", position \d+")
_WORDING = re.compile(r"'(?:[-:?,\[\]{}]|<[a-z ]+>)'")
_FIXED_WORDING = re.compile(r"[A-Za-z ,:()<>'?{}\[\]-]*")


def _problem(problem: object) -> str:
    """The wording of a parser problem, with every fragment of the input taken out."""
    text = _QUOTED.sub(
        lambda m: m.group(0) if _WORDING.fullmatch(m.group(0)) else "", _one_line(problem, 200)
    )
    match = _FIXED_WORDING.match(text)  # stops at any character that may be the input's
    kept = " ".join((match.group(0) if match else "").split()).replace(" :", ":")
    kept = kept.strip(" :,-")
    return kept or "invalid syntax"


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _checking_loader(base: Any) -> Any:
    """A subclass of the loader `base` that refuses duplicate keys, base-60 numbers and
    (when `key_pattern` is set on the instance) keys that are not config key names."""
    cached = _LOADERS.get(base)
    if cached is not None:
        return cached

    class Loader(base):  # type: ignore[misc, valid-type]
        key_pattern: re.Pattern[str] | None = None

        def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
            try:
                return super().construct_object(node, deep=deep)
            except (_Refused, yaml.YAMLError):
                raise
            except Exception:
                # A value the safe constructors cannot build (an integer of 5,000 digits,
                # the date 2020-13-45): the exception text quotes the value, so only the
                # line is reported.
                raise _Refused(
                    _line(node),
                    "holds a value YAML cannot read: write it as a plain number or a quoted string",
                ) from None

        def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> Any:
            self._check_keys(node)
            return super().construct_mapping(node, deep=deep)

        def _check_keys(self, node: yaml.MappingNode) -> None:
            paths: dict[int, str] = self.__dict__.setdefault("_paths", {})
            prefix = paths.get(id(node), "")
            seen: dict[Any, int] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<`: keys merged in may be overridden on purpose
                key = self.construct_object(key_node, deep=True)
                line = _line(key_node)
                if self.key_pattern is not None and not (
                    isinstance(key, str) and self.key_pattern.fullmatch(key)
                ):
                    raise _Refused(
                        line,
                        "holds a key that is not a config key name (letters, digits, _ and "
                        ".): pass the params YAML file",
                    )
                try:
                    first = seen.get(key)
                    seen.setdefault(key, line)
                except TypeError:
                    continue  # unhashable: the base constructor refuses it
                if first is not None:
                    # named only when it looks like a config key: a key is file content
                    plain = isinstance(key, str) and CONFIG_KEY.fullmatch(key)
                    name = f"the key {prefix}{key}" if plain else "a key"
                    raise _Refused(
                        line,
                        f"repeats {name} (first on line {first}): keep one of them",
                    )
                if isinstance(value_node, yaml.MappingNode) and isinstance(key, str):
                    paths[id(value_node)] = f"{prefix}{key}."

        def _no_base_60(self, node: yaml.ScalarNode) -> None:
            if ":" in str(node.value):
                raise _Refused(
                    _line(node),
                    "holds a number with ':' that YAML 1.1 reads in base 60 (1:30 is 90): "
                    "quote it or write a plain number",
                )

        def construct_yaml_int(self, node: yaml.ScalarNode) -> Any:
            self._no_base_60(node)
            return super().construct_yaml_int(node)

        def construct_yaml_float(self, node: yaml.ScalarNode) -> Any:
            self._no_base_60(node)
            return super().construct_yaml_float(node)

    Loader.add_constructor("tag:yaml.org,2002:int", Loader.construct_yaml_int)
    Loader.add_constructor("tag:yaml.org,2002:float", Loader.construct_yaml_float)
    _LOADERS[base] = Loader
    return Loader


_LOADERS: dict[Any, Any] = {}


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
    key_pattern: re.Pattern[str] | None = None,
) -> Any:
    """Parse one YAML document with aliases refused and size, depth and node count bounded.

    Keys repeated within one mapping and YAML 1.1 base-60 numbers (`1:30`) are refused, and
    no error message quotes the text.

    Args:
        text: the YAML text.
        source: what to call it in errors (a file name, or "--set train.lr").
        max_bytes: largest UTF-8 size accepted.
        max_depth: deepest nesting of mappings and sequences accepted.
        max_nodes: most values accepted.
        key_pattern: when given, every mapping key must be a string matching it.

    Returns:
        The document, as `yaml.safe_load` builds it (None for an empty text).

    Raises:
        YAMLInputError: too large, too deep, aliases, invalid YAML, a repeated key, a base-60
            number, a key not matching `key_pattern`, or a value YAML cannot build (e.g. an
            integer of 5,000 digits, a date like 2020-13-45).

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
        loader = _checking_loader(_LOADER)(text)
        try:
            loader.key_pattern = key_pattern
            return loader.get_single_data()
        finally:
            loader.dispose()
    except YAMLInputError:
        raise
    except _Refused as exc:
        raise YAMLInputError(f"{source} (line {exc.line}) {exc.message}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or exc
        raise YAMLInputError(
            f"{source} is not valid YAML{where}: {_problem(problem)}: fix the syntax"
        ) from None
    except Exception:
        # The constructors' own errors are turned into `_Refused` with a line above; what
        # is left (e.g. a recursion error of a bound set too high) is reported without its
        # text, which may quote the input.
        raise YAMLInputError(
            f"{source} holds a value YAML cannot read: write it as a plain number or a "
            "quoted string"
        ) from None


def load_yaml_file(
    path: str | os.PathLike[str],
    *,
    max_bytes: int = MAX_YAML_BYTES,
    key_pattern: re.Pattern[str] | None = None,
) -> Any:
    """Read and parse a params file with `load_yaml`'s bounds.

    The file must be a regular file of at most `max_bytes` bytes holding UTF-8 text: a folder,
    a FIFO (opened without waiting for a writer), a device or a binary file is refused with one
    line before anything large is read.

    Args:
        path: the params file.
        max_bytes: largest size accepted.
        key_pattern: as in `load_yaml`.

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
    return load_yaml(text, str(p), max_bytes=max_bytes, key_pattern=key_pattern)
