"""Process-wide settings that must be in place before torch is imported (so: no torch import here)."""
from __future__ import annotations

import os
from collections.abc import MutableMapping


def quiet_threads(env: MutableMapping[str, str] | None = None) -> MutableMapping[str, str]:
    """Idle OpenMP threads sleep instead of spinning (OMP_WAIT_POLICY=PASSIVE), unless the user chose a policy.

    Why: on a small shared CPU box (2 cores here), torch's spinning OpenMP threads in one process
    starve every other process; a 2-thread training step measured 20x slower under load.
    When: the OpenMP runtime reads the variable once, as torch loads it, so set it before the first
    ``import torch`` of a process: call this at the top of an entry point (this process's
    ``os.environ``), or pass the environment a child process will start with. Returns ``env``.
    """
    env = os.environ if env is None else env
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env
