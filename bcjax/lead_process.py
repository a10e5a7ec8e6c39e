"""Only process 0, the lead, writes files: the check, and the JSON writes that honour it.

Every process runs the same program; letting one write keeps shared filesystems free of
races and duplicate lines. Writers built on `is_lead` are no-ops elsewhere, so their callers
need no `if process_index == 0` of their own.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from etils import epath


def is_lead() -> bool:
    """Whether this process is the one that writes and prints."""
    return jax.process_index() == 0


def write_json(path: epath.Path, payload: Any) -> None:
    """Writes `payload` as indented JSON (see `json_safe`) on the lead process, creating the folder."""
    if is_lead():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(json_safe(payload), indent=2))


def json_safe(value: Any) -> Any:
    """JSON-safe copy: NumPy scalars and arrays to Python, NaN/Inf to None, mapping keys to str."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [json_safe(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value
