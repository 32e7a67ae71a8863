"""Global-RNG strategy: seed, capture and restore the process-global generators.

This mirrors the original BlazeFL's ``seed_everything`` / ``RandomStateSnapshot`` (same names,
same meaning). It is meant for scripts and the sequential trainer. Client work in thread pools
must use an explicit :class:`~blazefl.reproducibility.rng.RNGSuite` instead: the global
generators are shared by all threads of a process, so concurrent clients would race on them.
"""

from __future__ import annotations

import os
import random
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from blazefl.reproducibility.rng import (
    bytes_to_tensor,
    decode_python_state,
    encode_python_state,
    tensor_to_bytes,
    unpack_checked,
)
from blazefl.reproducibility.setup import setup_reproducibility

__all__ = ["RandomStateSnapshot", "seed_everything"]

_NP_MAGIC = b"NPM1"
_NP_WORDS = 624
# magic, 624 MT19937 key words, position, has_gauss flag, cached gaussian
_NP_LAYOUT = struct.Struct(f"<4s{_NP_WORDS}IIBd")
_CUDA_PREFIX = "cuda."


def seed_everything(seed: int) -> None:
    """Seed python ``random``, numpy's legacy global RNG and torch (CPU and CUDA).

    Also calls :func:`setup_reproducibility` (``PYTHONHASHSEED`` and cuDNN's deterministic
    flags), as the original BlazeFL's ``seed_everything`` does. For scripts and sequential runs.
    Do not call it from client work: the global generators are shared by every thread in the
    process, so concurrent clients would race on them. Setting ``PYTHONHASHSEED`` only affects
    interpreters started afterwards (e.g. spawned workers).

    Args:
        seed: integer in ``[0, 2**32)`` (numpy's legacy ``np.random.seed`` accepts no more).

    Raises:
        ValueError: ``seed`` out of range.

    Example:
        >>> seed_everything(42)
        >>> a = torch.rand(1)
        >>> seed_everything(42)
        >>> bool(torch.equal(a, torch.rand(1)))
        True
    """
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    seed = int(seed)
    setup_reproducibility(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():  # torch.manual_seed already does this; explicit for clarity
        torch.cuda.manual_seed_all(seed)


def _encode_numpy_legacy(state: tuple[Any, ...]) -> bytes:
    name, keys, pos, has_gauss, cached_gaussian = state
    if name != "MT19937" or len(keys) != _NP_WORDS:
        raise ValueError(f"unsupported numpy global RNG state {name!r}")
    return _NP_LAYOUT.pack(
        _NP_MAGIC, *keys.tolist(), int(pos), int(has_gauss), float(cached_gaussian)
    )


def _decode_numpy_legacy(data: bytes) -> tuple[Any, ...]:
    rest = unpack_checked(_NP_LAYOUT, _NP_MAGIC, data, "numpy global RNG state")
    keys = np.asarray(rest[:_NP_WORDS], dtype=np.uint32)
    pos, has_gauss, cached = rest[_NP_WORDS], rest[_NP_WORDS + 1], rest[_NP_WORDS + 2]
    if pos > _NP_WORDS or has_gauss not in (0, 1):
        raise ValueError(f"numpy global RNG state is corrupt (pos={pos}, has_gauss={has_gauss})")
    return ("MT19937", keys, pos, has_gauss, cached)


@dataclass(eq=False)
class RandomStateSnapshot:
    """Exact state of the process-global generators at one point in time.

    Holds python's ``random`` state, numpy's legacy global state (``np.random.get_state()``), the
    torch CPU generator state (``torch_cpu``, alias ``torch``), when CUDA is available one state
    per CUDA device (``torch_cuda_all``; ``torch_cuda`` is the current device's, as in the
    original BlazeFL) and ``PYTHONHASHSEED`` (``environ``). Capture and restore are not atomic
    with respect to other threads using the global generators.

    Example:
        >>> snap = RandomStateSnapshot.capture()
        >>> a = torch.rand(3)
        >>> snap.restore()
        >>> bool(torch.equal(a, torch.rand(3)))
        True
    """

    python: tuple[Any, ...]
    numpy: tuple[Any, ...]
    torch_cpu: Tensor
    torch_cuda_all: tuple[Tensor, ...] = field(default_factory=tuple)
    environ: str | None = None  # PYTHONHASHSEED at capture time; None: unset or not recorded

    @property
    def torch(self) -> Tensor:
        """The torch CPU generator state (alias of ``torch_cpu``)."""
        return self.torch_cpu

    @property
    def torch_cuda(self) -> Tensor | None:
        """The current CUDA device's generator state, ``None`` without CUDA (original meaning)."""
        if not self.torch_cuda_all:
            return None
        current = torch.cuda.current_device() if torch.cuda.is_available() else 0
        return self.torch_cuda_all[min(current, len(self.torch_cuda_all) - 1)]

    @classmethod
    def capture(cls) -> RandomStateSnapshot:
        """Capture the current global RNG states.

        Returns:
            A snapshot; restoring it makes the global generators repeat their next draws.
        """
        cuda_states: tuple[Tensor, ...] = ()
        if torch.cuda.is_available():
            cuda_states = tuple(s.clone() for s in torch.cuda.get_rng_state_all())
        np_state = np.random.get_state(legacy=True)
        if not isinstance(np_state, tuple):
            raise ValueError("numpy's global RNG is not MT19937; cannot snapshot its legacy state")
        return cls(
            python=random.getstate(),
            numpy=(np_state[0], np_state[1].copy(), *np_state[2:]),
            torch_cpu=torch.get_rng_state().clone(),
            torch_cuda_all=cuda_states,
            environ=os.environ.get("PYTHONHASHSEED"),
        )

    def restore(self) -> None:
        """Set the global generators (and a recorded ``PYTHONHASHSEED``) back to the snapshot.

        ``RandomStateSnapshot.restore(snapshot)``, the original's spelling, works too.

        Raises:
            RuntimeError: the snapshot holds CUDA states for more devices than are available.
        """
        if self.torch_cuda_all:
            available = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if available < len(self.torch_cuda_all):
                raise RuntimeError(
                    f"snapshot holds {len(self.torch_cuda_all)} CUDA RNG states, "
                    f"but only {available} CUDA devices are available"
                )
        if self.environ is not None:
            os.environ["PYTHONHASHSEED"] = self.environ
        random.setstate(self.python)
        np.random.set_state(self.numpy)
        torch.set_rng_state(self.torch_cpu)
        for device, state in enumerate(self.torch_cuda_all):
            torch.cuda.set_rng_state(state, device)

    def to_tensors(self) -> dict[str, Tensor]:
        """Encode the snapshot exactly as 1-D ``uint8`` tensors (deterministic bytes).

        ``environ`` is not encoded (it is configuration, not generator state).

        Returns:
            Keys ``"python"``, ``"numpy"``, ``"torch"`` and ``"cuda.<i>"`` per CUDA device.
        """
        tensors = {
            "python": bytes_to_tensor(encode_python_state(self.python)),
            "numpy": bytes_to_tensor(_encode_numpy_legacy(self.numpy)),
            "torch": self.torch_cpu.clone(),
        }
        for device, state in enumerate(self.torch_cuda_all):
            tensors[f"{_CUDA_PREFIX}{device}"] = state.clone()
        return tensors

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, Tensor]) -> RandomStateSnapshot:
        """Decode :meth:`to_tensors` output.

        Args:
            tensors: mapping with keys ``"python"``, ``"numpy"``, ``"torch"``, optional
                ``"cuda.0"``, ``"cuda.1"``, ...

        Returns:
            The snapshot (not yet restored; call :meth:`restore`).

        Raises:
            ValueError: missing key, wrong dtype/shape, corrupt or truncated state.
        """
        missing = [key for key in ("python", "numpy", "torch") if key not in tensors]
        if missing:
            raise ValueError(f"snapshot tensors lack keys {missing}")
        cuda_keys = [key for key in tensors if key.startswith(_CUDA_PREFIX)]
        expected = [f"{_CUDA_PREFIX}{i}" for i in range(len(cuda_keys))]
        if sorted(cuda_keys) != sorted(expected):
            raise ValueError(f"snapshot CUDA keys must be {expected}, got {sorted(cuda_keys)}")
        cpu_state = tensors["torch"]
        tensor_to_bytes(cpu_state, "torch")  # dtype / shape check
        try:
            torch.Generator().set_state(cpu_state.detach().cpu().contiguous())
        except RuntimeError as exc:
            raise ValueError(f"torch RNG state is invalid: {exc}") from exc
        for key in expected:
            tensor_to_bytes(tensors[key], key)
        return cls(
            python=decode_python_state(tensor_to_bytes(tensors["python"], "python")),
            numpy=_decode_numpy_legacy(tensor_to_bytes(tensors["numpy"], "numpy")),
            torch_cpu=tensors["torch"].detach().cpu().clone(),
            torch_cuda_all=tuple(tensors[key].detach().cpu().clone() for key in expected),
        )
