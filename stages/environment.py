"""The environment a run's bits depend on besides its config, as manifests record it.

The function itself lives in `blazefl.core.environment`: a Ray worker node computes its own
with it and the core trainer compares it with the driver's before the node runs a client.
"""

from __future__ import annotations

from blazefl.core.environment import BIT_ENV_VARS, environment

__all__ = ["BIT_ENV_VARS", "environment"]
