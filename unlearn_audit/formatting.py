"""Number formatting shared by the verdict sentence and every view."""

from __future__ import annotations

import math


def percent(share: float | None) -> str:
    """A share as a whole percentage: 0.943 -> "94%", None or NaN -> "n/a"; never "-0%"."""
    if share is None or (isinstance(share, float) and math.isnan(share)):
        return "n/a"
    value = round(share * 100)
    return f"{value + 0:.0f}%" if value else "0%"
