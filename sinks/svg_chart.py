"""A horizontal bar chart as a standalone SVG file, written by hand: no plotting dependency for one chart.

Bar lengths are proportional to the values; the labels print the exact amounts (rounded to cents for the eye,
the CSV and JSON outputs keep every decimal).
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import ROUND_HALF_EVEN, Decimal
from xml.sax.saxutils import escape

BAR_HEIGHT = 22
GAP = 6
LABEL_WIDTH = 220
BAR_WIDTH = 460
VALUE_WIDTH = 140
TOP = 44
COLORS = ("#3b6fb6", "#4f8fd6", "#6aa7e8", "#8bbcef")


def bar_chart_svg(title: str, labels: Sequence[str], values: Sequence[Decimal], *, unit: str = "USD") -> str:
    """One bar per label, in the order given; negative values (credits) are drawn as empty bars."""
    if len(labels) != len(values):
        raise ValueError(f"{len(labels)} labels for {len(values)} values")
    largest = max((v for v in values if v > 0), default=Decimal(0))
    width = LABEL_WIDTH + BAR_WIDTH + VALUE_WIDTH + 20
    height = TOP + len(labels) * (BAR_HEIGHT + GAP) + 20
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="13">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="10" y="26" font-size="16" font-weight="bold">{escape(title)}</text>',
    ]
    for index, (label, value) in enumerate(zip(labels, values)):
        y = TOP + index * (BAR_HEIGHT + GAP)
        length = 0 if largest == 0 or value <= 0 else max(1, round(float(value / largest) * BAR_WIDTH))
        amount = Decimal(value).quantize(Decimal("0.01"), ROUND_HALF_EVEN)
        parts.append(f'<text x="{LABEL_WIDTH - 8}" y="{y + 16}" text-anchor="end">{escape(str(label) or "(none)")}</text>')
        parts.append(f'<rect x="{LABEL_WIDTH}" y="{y}" width="{length}" height="{BAR_HEIGHT}" '
                     f'fill="{COLORS[index % len(COLORS)]}"><title>{escape(str(label))}: {value} {unit}</title></rect>')
        parts.append(f'<text x="{LABEL_WIDTH + length + 6}" y="{y + 16}">{amount:,} {escape(unit)}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
