"""torch's process-global CPU generator, for the few package paths that cannot avoid it.

Every thread of a process shares that generator, so client work never draws from it (each
client has its own `RNGSuite`). Two package paths still must use it: module constructors
draw their default init from it (a model is built at a worker's start, and a DS-FL client
builds its first model inside client work), and a user's model factory is seeded through it.
Both go through `global_rng_borrowed`, which holds `GLOBAL_RNG_LOCK` and puts the state
back, so a borrow never interleaves with another thread's borrow and leaves no trace.
`run_client_task` reads the state under the same lock before and after each client: a change
means the client's own code drew from the generator (`nn.Dropout`, `torch.rand` without
`generator=`), whose bytes would then depend on thread timing and on what ran before.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch

__all__ = ["GLOBAL_RNG_LOCK", "global_rng_borrowed", "global_rng_state"]

#: Held by every package path that draws from, seeds or reads torch's global CPU generator;
#: reentrant, as a borrow may build a model whose selector takes the lock itself.
GLOBAL_RNG_LOCK = threading.RLock()


@contextlib.contextmanager
def global_rng_borrowed(seed: int | None = None) -> Iterator[None]:
    """Draw from torch's global CPU generator (seeded with `seed`, if given) inside the block;
    afterwards its state is what it was before, and no other borrow ran in between.

    Only the CPU generator is seeded (`torch.manual_seed` would reseed every CUDA generator
    too, which the restore below would not undo).

    Example:
        >>> before = torch.get_rng_state()
        >>> with global_rng_borrowed(seed=7):
        ...     x = torch.rand(1)
        >>> bool(torch.equal(before, torch.get_rng_state()))
        True
    """
    with GLOBAL_RNG_LOCK:
        saved = torch.get_rng_state()
        try:
            if seed is not None:
                torch.default_generator.manual_seed(seed)
            yield
        finally:
            torch.set_rng_state(saved)


def global_rng_state() -> torch.Tensor:
    """A copy of torch's global CPU generator state, read while no borrow is in progress.

    Example:
        >>> global_rng_state().dtype
        torch.uint8
    """
    with GLOBAL_RNG_LOCK:
        return torch.get_rng_state()
