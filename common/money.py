"""Money is a decimal string on the wire ("0.50"), computed with Decimal, never a float sum."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

CENT = Decimal("0.01")
PRECISION = Decimal("0.0001")


def to_decimal(value: object) -> Decimal:
    if value is None or value == "":
        return Decimal(0)
    if isinstance(value, Decimal):
        return value
    return Decimal(str(value))


def money(value: object) -> str:
    """At least two decimals, at most four: 0.5 → "0.50", 0.4267 → "0.4267"."""
    d = to_decimal(value).quantize(PRECISION, rounding=ROUND_HALF_UP)
    if d == d.quantize(CENT):
        d = d.quantize(CENT)
    else:
        d = d.normalize()
    return f"{d:f}"
