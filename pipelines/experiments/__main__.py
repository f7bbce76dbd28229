"""``python -m pipelines.experiments NAME [args]``: run experiment NAME (module ``pipelines.experiments.NAME``)."""
from __future__ import annotations

import importlib
import pkgutil
import sys

import pipelines.experiments as experiments
from pipelines.runtime import quiet_threads


def names() -> list[str]:
    """The experiments: every public module of this package."""
    return sorted(m.name for m in pkgutil.iter_modules(experiments.__path__) if not m.name.startswith("_"))


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in names():
        print(f"usage: python -m pipelines.experiments NAME [args]; NAME: {', '.join(names())}", file=sys.stderr)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    quiet_threads()  # before the experiment imports torch
    return importlib.import_module(f"{experiments.__name__}.{argv[0]}").main(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
