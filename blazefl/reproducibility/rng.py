"""Per-stream RNG suites and their exact, byte-stable state encoding.

An :class:`RNGSuite` bundles the generators a client (or the server) draws from: a
``random.Random``, a numpy ``Generator``, a CPU ``torch.Generator`` (``torch_cpu``, also reachable
as ``torch``) and, for work on a GPU, an optional CUDA ``torch.Generator`` (``torch_cuda``). Each
suite is derived once from ``(experiment seed, stream id)`` and afterwards only travels as its
captured state, so that a round re-executes from its artifacts.

State is captured as 1-D ``uint8`` tensors, one per generator, ready for safetensors:

- ``"torch"``: the CPU generator's ``get_state()`` as is.
- ``"torch_cuda"``: the CUDA generator's ``get_state()``, present only when the suite has one
  (a CPU-only suite captures exactly the three keys below, byte for byte as before).
- ``"numpy"``: ``bit_generator.state`` as canonical JSON (sorted keys, fixed separators); the
  128-bit integers of PCG64 are exact JSON integers, ndarray fields (MT19937, Philox, SFC64) are
  tagged with their dtype.
- ``"python"``: ``Random.getstate()`` packed little-endian: magic ``b"PYR3"``, the 625 state words
  as uint32, a gauss flag byte and the pending gauss value as float64 (zero when absent).

Equal states always give equal bytes; nothing depends on dict order or float formatting.
"""

from __future__ import annotations

import json
import operator
import random
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "SERVER_STREAM_ID",
    "RNGSuite",
    "create_rng_suite",
    "decode_numpy_bitgen_state",
    "decode_python_state",
    "encode_numpy_bitgen_state",
    "encode_python_state",
]

SERVER_STREAM_ID: int = 2**62
"""Stream id of the server's suite (client sampling, server-side randomness).

Clients use their client id as stream id; 2**62 lies far above any realistic client count, so the
server's stream never collides with a client's.
"""

STATE_KEYS: tuple[str, ...] = ("python", "numpy", "torch")
CUDA_STATE_KEY = "torch_cuda"  # only in the state of a suite that has a CUDA generator

_PY_MAGIC = b"PYR3"
_PY_WORDS = 625  # 624 Mersenne Twister words + the position index
_PY_LAYOUT = struct.Struct(f"<4s{_PY_WORDS}IBd")
_NDARRAY_TAG = "__ndarray__"
_MASK63 = (1 << 63) - 1


# --------------------------------------------------------------------------- tensor <-> bytes


def bytes_to_tensor(data: bytes) -> Tensor:
    """Wrap ``data`` in a fresh 1-D ``uint8`` CPU tensor (owns its memory)."""
    if not data:
        return torch.empty(0, dtype=torch.uint8)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def tensor_to_bytes(tensor: Tensor, name: str) -> bytes:
    """Return the bytes of a 1-D ``uint8`` tensor; ValueError naming ``name`` otherwise."""
    if not isinstance(tensor, Tensor):
        raise ValueError(f"RNG state {name!r} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype != torch.uint8 or tensor.dim() != 1:
        raise ValueError(
            f"RNG state {name!r} must be a 1-D uint8 tensor, "
            f"got dtype={tensor.dtype} shape={tuple(tensor.shape)}"
        )
    return tensor.detach().cpu().contiguous().numpy().tobytes()


# --------------------------------------------------------------------------- python random


def encode_python_state(state: tuple[Any, ...]) -> bytes:
    """Pack a ``random.Random.getstate()`` tuple into fixed-size little-endian bytes.

    Args:
        state: ``(version, 625-int tuple, gauss_next)`` as returned by ``getstate()``.

    Returns:
        ``4 + 2500 + 1 + 8`` bytes; equal states give equal bytes.

    Example:
        >>> r = random.Random(0)
        >>> decode_python_state(encode_python_state(r.getstate())) == r.getstate()
        True
    """
    version, internal, gauss_next = state
    if version != 3 or len(internal) != _PY_WORDS:
        raise ValueError(f"unsupported random.Random state (version {version!r})")
    has_gauss = gauss_next is not None
    return _PY_LAYOUT.pack(_PY_MAGIC, *internal, has_gauss, gauss_next if has_gauss else 0.0)


def unpack_checked(layout: struct.Struct, magic: bytes, data: bytes, what: str) -> list[Any]:
    """Unpack a fixed-size packed RNG state after checking its length and magic prefix.

    Returns:
        The fields after the magic.

    Raises:
        ValueError: truncated/oversized data or a wrong magic, naming `what`.
    """
    if len(data) != layout.size:
        raise ValueError(f"{what} must be {layout.size} bytes, got {len(data)} (truncated?)")
    found, *rest = layout.unpack(data)
    if found != magic:
        raise ValueError(f"{what} has bad magic {found!r}, expected {magic!r}")
    return rest


def decode_python_state(data: bytes) -> tuple[Any, ...]:
    """Inverse of :func:`encode_python_state`; ValueError on corrupt or truncated bytes.

    Args:
        data: bytes produced by :func:`encode_python_state`.

    Returns:
        A tuple accepted by ``random.Random.setstate``.
    """
    rest = unpack_checked(_PY_LAYOUT, _PY_MAGIC, data, "python RNG state")
    internal, flag, gauss = rest[:_PY_WORDS], rest[_PY_WORDS], rest[_PY_WORDS + 1]
    if flag not in (0, 1):
        raise ValueError(f"python RNG state has bad gauss flag {flag}")
    if internal[-1] > 624:
        raise ValueError(f"python RNG state has bad position index {internal[-1]}")
    return (3, tuple(internal), gauss if flag else None)


# --------------------------------------------------------------------------- numpy bit generator


def _to_jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _to_jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return {_NDARRAY_TAG: value.tolist(), "dtype": value.dtype.str}
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, int | str | float) or value is None:
        return value
    raise ValueError(f"cannot encode numpy RNG state value of type {type(value).__name__}")


def _from_jsonable(obj: dict[str, Any]) -> Any:
    if _NDARRAY_TAG in obj:
        return np.asarray(obj[_NDARRAY_TAG], dtype=np.dtype(obj["dtype"]))
    return obj


def encode_numpy_bitgen_state(state: Mapping[str, Any]) -> bytes:
    """Encode a numpy ``bit_generator.state`` dict as canonical JSON bytes.

    Args:
        state: e.g. ``np.random.PCG64(0).state`` (128-bit ints are kept exact).

    Returns:
        UTF-8 JSON with sorted keys and fixed separators.

    Example:
        >>> bg = np.random.PCG64(0)
        >>> decode_numpy_bitgen_state(encode_numpy_bitgen_state(bg.state)) == bg.state
        True
    """
    return json.dumps(
        _to_jsonable(dict(state)), sort_keys=True, separators=(",", ":"), allow_nan=False
    ).encode("utf-8")


def decode_numpy_bitgen_state(data: bytes) -> dict[str, Any]:
    """Inverse of :func:`encode_numpy_bitgen_state`; ValueError on corrupt input.

    Args:
        data: bytes produced by :func:`encode_numpy_bitgen_state`.

    Returns:
        A dict assignable to ``bit_generator.state``.
    """
    try:
        state = json.loads(data.decode("utf-8"), object_hook=_from_jsonable)
    except (UnicodeDecodeError, json.JSONDecodeError, TypeError) as exc:
        raise ValueError(f"numpy RNG state is not valid canonical JSON: {exc}") from exc
    if not isinstance(state, dict) or not isinstance(state.get("bit_generator"), str):
        raise ValueError("numpy RNG state lacks a 'bit_generator' name")
    return state


def _numpy_bit_generator(state: dict[str, Any]) -> np.random.BitGenerator:
    """Build a bit generator of the class named in ``state`` and load ``state`` into it."""
    name = state["bit_generator"]
    cls = getattr(np.random, name, None)
    if not (isinstance(cls, type) and issubclass(cls, np.random.BitGenerator)):
        raise ValueError(f"numpy RNG state names unknown bit generator {name!r}")
    bit_generator = cls(0)  # fixed seed: skips OS entropy, the state is overwritten next
    _set_numpy_state(bit_generator, state)
    return bit_generator


def _set_numpy_state(bit_generator: np.random.BitGenerator, state: dict[str, Any]) -> None:
    try:
        bit_generator.state = state
    except (ValueError, TypeError, KeyError, OverflowError) as exc:
        raise ValueError(f"numpy RNG state is invalid for {state['bit_generator']}: {exc}") from exc


# --------------------------------------------------------------------------- the suite


@dataclass(eq=False)
class RNGSuite:
    """The generators one stream draws from; never touches global RNG state.

    Not thread-safe: a suite belongs to one client (or the server) at a time. Pass
    ``suite.torch_cpu`` (alias ``suite.torch``) as ``generator=`` to CPU torch ops,
    ``suite.torch_cuda`` to CUDA ops, and draw numpy/python numbers from ``suite.numpy`` /
    ``suite.python``. Field names follow the original BlazeFL ``RNGSuite``.

    Example:
        >>> suite = create_rng_suite(seed=42, stream_id=7)
        >>> suite.torch is suite.torch_cpu
        True
        >>> saved = suite.state_tensors()
        >>> a = suite.numpy.random()
        >>> suite.load_state_tensors(saved)
        >>> suite.numpy.random() == a
        True
    """

    python: random.Random
    numpy: np.random.Generator
    torch_cpu: torch.Generator
    torch_cuda: torch.Generator | None = None

    def __getattr__(self, name: str) -> Any:
        # only reached for a stream left out by `from_state_tensors(deferred=True)`: decode it
        # on first use (the encode/decode of the python and numpy streams is most of the
        # per-client cost of a small client, and most clients never draw from them)
        deferred = self.__dict__.get("_deferred")
        if not deferred or name not in deferred:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        data = tensor_to_bytes(deferred.pop(name), name)
        if name == "python":
            stream: Any = random.Random(0)  # a fixed seed skips OS entropy; overwritten next
            stream.setstate(decode_python_state(data))
        else:
            stream = np.random.Generator(_numpy_bit_generator(decode_numpy_bitgen_state(data)))
        setattr(self, name, stream)
        return stream

    def state_tensors(self) -> dict[str, Tensor]:
        """Capture the exact state of every generator in the suite.

        Returns:
            ``{"python": ..., "numpy": ..., "torch": ...}`` plus ``"torch_cuda"`` when the suite
            has a CUDA generator; each a fresh 1-D ``uint8`` CPU tensor; equal states give equal
            bytes (safe to hash or write to safetensors).
        """
        deferred = self.__dict__.get("_deferred", {})
        tensors = {  # a stream never used since `from_state_tensors(deferred=True)` is unchanged
            "python": deferred["python"].clone()
            if "python" in deferred
            else bytes_to_tensor(encode_python_state(self.python.getstate())),
            "numpy": deferred["numpy"].clone()
            if "numpy" in deferred
            else bytes_to_tensor(encode_numpy_bitgen_state(self.numpy.bit_generator.state)),
            "torch": self.torch_cpu.get_state().clone(),
        }
        if self.torch_cuda is not None:
            tensors[CUDA_STATE_KEY] = self.torch_cuda.get_state().clone()
        return tensors

    def load_state_tensors(self, tensors: Mapping[str, Tensor]) -> None:
        """Restore every generator in place from :meth:`state_tensors` output.

        Everything is validated before anything is changed, so a failed load leaves the suite
        untouched. If the numpy state names a different bit generator class than the current
        one, ``self.numpy`` is replaced by a new ``Generator`` of that class. A ``"torch_cuda"``
        state given to a suite without a CUDA generator creates one on the current CUDA device.

        Args:
            tensors: mapping with keys ``"python"``, ``"numpy"``, ``"torch"`` and, exactly when
                the suite has a CUDA generator (or should get one), ``"torch_cuda"``.

        Raises:
            ValueError: missing key, wrong dtype/shape, corrupt or truncated state, a CUDA state
                without CUDA, or a suite with a CUDA generator given a CPU-only state.
        """
        missing = [key for key in STATE_KEYS if key not in tensors]
        if missing:
            raise ValueError(f"RNG state tensors lack keys {missing}; expected {list(STATE_KEYS)}")
        py_state = decode_python_state(tensor_to_bytes(tensors["python"], "python"))
        np_state = decode_numpy_bitgen_state(tensor_to_bytes(tensors["numpy"], "numpy"))
        torch_state = _checked_torch_state(tensors["torch"], "torch")
        cuda_generator = self._checked_cuda_target(tensors)

        # All or nothing: decoding fully checks the python state, torch is checked on a scratch
        # generator, and numpy (the only remaining failure point) is set before anything else.
        try:
            torch.Generator().set_state(torch_state)
        except RuntimeError as exc:
            raise ValueError(f"torch RNG state is invalid: {exc}") from exc
        if type(self.numpy.bit_generator).__name__ == np_state["bit_generator"]:
            _set_numpy_state(self.numpy.bit_generator, np_state)
        else:
            self.numpy = np.random.Generator(_numpy_bit_generator(np_state))
        self.torch_cpu.set_state(torch_state)
        self.python.setstate(py_state)
        if cuda_generator is not None:
            self.torch_cuda = cuda_generator

    def _checked_cuda_target(self, tensors: Mapping[str, Tensor]) -> torch.Generator | None:
        """Validate the CUDA state and return the generator now holding it (None: no CUDA)."""
        if CUDA_STATE_KEY not in tensors:
            if self.torch_cuda is not None:
                raise ValueError(
                    f"RNG state tensors lack {CUDA_STATE_KEY!r} but the suite has a CUDA "
                    "generator; capture the state from a suite on the same device"
                )
            return None
        cuda_state = _checked_torch_state(tensors[CUDA_STATE_KEY], CUDA_STATE_KEY)
        if self.torch_cuda is not None:
            target = torch.Generator(device=self.torch_cuda.device)
        elif torch.cuda.is_available():
            target = torch.Generator(device="cuda")
        else:
            raise ValueError(
                f"RNG state has a {CUDA_STATE_KEY!r} generator but CUDA is not available; "
                "restore it on a machine with a GPU"
            )
        try:
            target.set_state(cuda_state)
        except RuntimeError as exc:
            raise ValueError(f"torch_cuda RNG state is invalid: {exc}") from exc
        return target

    @property
    def torch(self) -> torch.Generator:
        """The CPU torch generator (this package's older name for :attr:`torch_cpu`)."""
        return self.torch_cpu

    @torch.setter
    def torch(self, generator: torch.Generator) -> None:
        self.torch_cpu = generator

    @classmethod
    def from_state_tensors(cls, tensors: Mapping[str, Tensor], deferred: bool = False) -> RNGSuite:
        """Build a new suite from :meth:`state_tensors` output.

        Args:
            tensors: mapping with keys ``"python"``, ``"numpy"``, ``"torch"`` and optionally
                ``"torch_cuda"`` (then the suite gets a CUDA generator on the current device).
            deferred: decode the python and numpy streams on first use instead of now, and
                hand back their input bytes from :meth:`state_tensors` if they were never
                used. Only for states already validated by a non-deferred load (client tasks:
                the session validates every client's state when it loads a round).

        Returns:
            A suite whose next draws equal those of the captured suite.

        Raises:
            ValueError: missing key, wrong dtype/shape, corrupt or truncated state, or a CUDA
                state without CUDA.

        Example:
            >>> twin = RNGSuite.from_state_tensors(create_rng_suite(1).state_tensors())
        """
        missing = [key for key in STATE_KEYS if key not in tensors]
        if missing:
            raise ValueError(f"RNG state tensors lack keys {missing}; expected {list(STATE_KEYS)}")
        if deferred:
            suite = cls.__new__(cls)
            suite.torch_cpu = torch.Generator()
            suite.torch_cpu.set_state(_checked_torch_state(tensors["torch"], "torch"))
            suite.torch_cuda = suite._checked_cuda_target(tensors)  # reads the class default None
            suite.__dict__["_deferred"] = {k: tensors[k] for k in ("python", "numpy")}
            return suite
        np_state = decode_numpy_bitgen_state(tensor_to_bytes(tensors["numpy"], "numpy"))
        suite = cls(
            python=random.Random(0),  # overwritten below; a fixed seed skips OS entropy
            numpy=np.random.Generator(_numpy_bit_generator(np_state)),
            torch_cpu=torch.Generator(),
        )
        suite.load_state_tensors(tensors)
        return suite


def _checked_torch_state(tensor: Tensor, name: str) -> Tensor:
    if not isinstance(tensor, Tensor):
        raise ValueError(f"RNG state {name!r} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype != torch.uint8 or tensor.dim() != 1:
        raise ValueError(
            f"RNG state {name!r} must be a 1-D uint8 tensor, "
            f"got dtype={tensor.dtype} shape={tuple(tensor.shape)}"
        )
    return tensor.detach().cpu().contiguous()


def create_rng_suite(
    seed: int, stream_id: int = 0, device: str | torch.device | None = None
) -> RNGSuite:
    """Derive an independent RNG suite from ``(seed, stream_id)``.

    ``np.random.SeedSequence(entropy=seed, spawn_key=(stream_id,))`` seeds numpy's PCG64
    directly (its first four 64-bit words); word 4 (masked to 63 bits) seeds the CPU torch
    generator, words 5-6 seed ``random.Random`` and word 7 (masked to 63 bits) seeds the CUDA
    generator when one is asked for. Global RNG state is never read or written.

    Args:
        seed: experiment seed, ``>= 0``.
        stream_id: client id, or :data:`SERVER_STREAM_ID` for the server; ``>= 0``.
        device: where the stream's torch work runs. A CUDA device (``"cuda"``, ``"cuda:1"``)
            adds a ``torch_cuda`` generator on it; ``None`` or a CPU device gives a CPU-only
            suite, identical to the one created without ``device``.

    Returns:
        A fresh :class:`RNGSuite`; equal arguments give equal streams.

    Raises:
        ValueError: ``seed`` or ``stream_id`` is negative (or not an integer), ``device`` is
            neither CPU nor CUDA, or a CUDA device is asked for without CUDA.

    Example:
        >>> a, b = create_rng_suite(42, 3), create_rng_suite(42, 3)
        >>> a.numpy.integers(1 << 30) == b.numpy.integers(1 << 30)
        True
    """
    seed = _non_negative_int(seed, "seed")
    stream_id = _non_negative_int(stream_id, "stream_id")
    cuda_device = _cuda_device_or_none(device)
    seq = np.random.SeedSequence(entropy=seed, spawn_key=(stream_id,))
    # generate_state(n) is a prefix of generate_state(n + 1): word 7 leaves words 0-6 unchanged.
    words = [int(w) for w in seq.generate_state(8, dtype=np.uint64)]
    torch_generator = torch.Generator()
    torch_generator.manual_seed(words[4] & _MASK63)
    cuda_generator = None
    if cuda_device is not None:
        cuda_generator = torch.Generator(device=cuda_device)
        cuda_generator.manual_seed(words[7] & _MASK63)
    return RNGSuite(
        python=random.Random(words[5] | (words[6] << 64)),
        numpy=np.random.Generator(np.random.PCG64(seq)),
        torch_cpu=torch_generator,
        torch_cuda=cuda_generator,
    )


def _cuda_device_or_none(device: str | torch.device | None) -> torch.device | None:
    if device is None:
        return None
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"device must be a torch device such as 'cpu' or 'cuda', got {device!r}"
        ) from None
    if parsed.type == "cpu":
        return None
    if parsed.type != "cuda":
        raise ValueError(f"device must be a CPU or CUDA device, got {device!r}")
    if not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asks for CUDA but CUDA is not available; use 'cpu'")
    return parsed


def _non_negative_int(value: int, name: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    try:
        as_int = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}") from None
    if as_int < 0:
        raise ValueError(f"{name} must be >= 0, got {as_int}")
    return as_int
