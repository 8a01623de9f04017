"""The one rule every layer uses for "a whole number" option (counts, sizes, axes, steps), so that a
numpy integer passes everywhere and a bool (an int to Python) is refused everywhere."""

from __future__ import annotations

from typing import Any

import numpy as np


def is_whole(value: Any, minimum: int = 0) -> bool:
    """Whether ``value`` is a whole number (Python or numpy, not a bool) of at least ``minimum``."""
    return not isinstance(value, bool) and isinstance(value, (int, np.integer)) and value >= minimum
