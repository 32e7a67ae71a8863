"""`torch.Generator` objects cross process edges by value.

torch's multiprocessing reductions send every tensor, a generator's state tensor included, as a
shared-memory file descriptor. A generator's state is a temporary tensor, freed as soon as it
is pickled, so a spawned worker that unpickles it later fails with "unable to resize file ...
Invalid argument (22)". A workload or a client config holding a generator (the original
BlazeFL's quickstart dataset keeps one in its augmentation transforms) then kills every worker.

Registering a by-value reduction with multiprocessing's pickler fixes that for every pool: the
state (about 5 KB for a CPU generator) travels in the message itself and the worker rebuilds an
equal generator. Importing this module registers it (idempotent).
"""

from __future__ import annotations

from collections.abc import Callable
from multiprocessing.reduction import ForkingPickler

import torch

__all__ = ["rebuild_generator", "reduce_generator"]


def rebuild_generator(device: str, state: bytes) -> torch.Generator:
    """A generator on `device` whose state is `state` (the bytes of `get_state()`)."""
    generator = torch.Generator(device=device)
    generator.set_state(torch.frombuffer(bytearray(state), dtype=torch.uint8))
    return generator


def reduce_generator(
    generator: torch.Generator,
) -> tuple[Callable[[str, bytes], torch.Generator], tuple[str, bytes]]:
    """Pickle `generator` by value: its device and the bytes of its state."""
    state = generator.get_state().contiguous()
    return rebuild_generator, (str(generator.device), bytes(state.numpy().tobytes()))


ForkingPickler.register(torch.Generator, reduce_generator)
