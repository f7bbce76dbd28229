"""Where `make venv` finds the locked wheels: the extra `uv pip install` arguments, printed one a line.

Standard library only: it runs before anything is installed (``python3 pipelines/install.py``).
The lock pins PyTorch's CPU build (``torch==X+cpu``), which the default package index does not serve:

- ``PIP_FIND_LINKS`` set (a local wheel folder, as on the build machines): ``--find-links`` each entry;
- otherwise, when the lock pins a ``+cpu`` (or ``+cuNNN``) torch: PyTorch's wheel index for that build,
  ``https://download.pytorch.org/whl/<build>``, as an extra index (``PIPELINES_TORCH_INDEX`` overrides
  it; ``none`` leaves it out).
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

TORCH_INDEX = "https://download.pytorch.org/whl/{build}"
_TORCH = re.compile(r"^torch==[^+\s]+\+(cpu|cu\d+|rocm[\d.]+)\s*$", re.M)


def index_args(lock_text: str, env: dict[str, str]) -> list[str]:
    links = (env.get("PIP_FIND_LINKS") or "").split()
    if links:
        return [arg for link in links for arg in ("--find-links", link)]
    override = (env.get("PIPELINES_TORCH_INDEX") or "").strip()
    if override:
        return [] if override == "none" else ["--extra-index-url", override]
    m = _TORCH.search(lock_text)
    return ["--extra-index-url", TORCH_INDEX.format(build=m.group(1))] if m else []


def main() -> int:
    lock = Path(sys.argv[1] if len(sys.argv) > 1 else "requirements.lock")
    print("\n".join(index_args(lock.read_text(), dict(os.environ))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
