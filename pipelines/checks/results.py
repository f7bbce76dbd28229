"""One checked expectation, as reported in ``reports/checks/<stage>.json`` and in the failure message."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np


def jsonable(value: Any) -> Any:
    """Plain JSON types (numpy scalars -> Python, NaN -> None) so the report is stable bytes."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [jsonable(v) for v in value]
        return sorted(items, key=repr) if isinstance(value, (set, frozenset)) else items
    if isinstance(value, np.ndarray):
        return [jsonable(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


@dataclass
class CheckResult:
    batch: str  # the frame (or file group) the expectation ran on, e.g. "stats", "sample", "manifest"
    type: str  # GX expectation type, or the name of a plain-Python check
    column: str | None
    kwargs: dict
    success: bool
    observed: Any = None

    def to_dict(self) -> dict:
        return jsonable({
            "batch": self.batch, "type": self.type, "column": self.column, "kwargs": self.kwargs,
            "success": bool(self.success), "observed": self.observed,
        })

    def describe(self) -> str:
        """``expect_x(column=c, min_value=0.2) on stats: observed 0.05`` for the failure message."""
        args = [f"column={self.column}"] if self.column else []
        args += [f"{k}={_number(v)}" for k, v in sorted(self.kwargs.items()) if k != "column"]
        return f"{self.type}({', '.join(args)}) on {self.batch}: observed {_short(self.observed)}"


def _number(value: Any) -> Any:
    """GX stores bounds as floats; print 0.0 as 0 so the message reads like the params."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _short(observed: Any, limit: int = 300) -> str:
    text = repr(jsonable(observed)) if not isinstance(observed, str) else observed
    return text if len(text) <= limit else text[: limit - 3] + "..."
