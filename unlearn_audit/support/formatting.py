"""Number formatting shared by the verdict sentence and every view."""

from __future__ import annotations

import math


def percent(share: float | None, digits: int = 0) -> str:
    """A share as a percentage: 0.943 -> "94%" (``digits`` decimals: 0.99962 -> "99.96%" with 2), None or
    NaN -> "n/a"; never "-0%"."""
    if share is None or (isinstance(share, float) and math.isnan(share)):
        return "n/a"
    value = round(share * 100, digits)
    return f"{value + 0:.{digits}f}%" if value else f"{0:.{digits}f}%"
