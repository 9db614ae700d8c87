"""How the studies draw plots: SVG with a transparent background, text kept as text, and two ink colours
(text and grid) that the site swaps for the dark scheme (`dark_variant`, used by tools/site/pilots.py).

No torch here: the site generator imports this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

LIGHT = {"text": "#1f2328", "grid": "#d0d7de"}
DARK = {"text": "#e6edf3", "grid": "#3d444d"}


def rc(ink: dict[str, str] = LIGHT) -> dict[str, Any]:
    """matplotlib rc settings that draw every text, tick, spine and grid line in `ink`'s two colours."""
    return {
        "svg.fonttype": "none",
        "svg.hashsalt": "efficient-lvlm",
        "font.family": "sans-serif",
        "font.size": 9,
        "text.color": ink["text"],
        "axes.labelcolor": ink["text"],
        "axes.titlecolor": ink["text"],
        "axes.edgecolor": ink["grid"],
        "xtick.color": ink["text"],
        "ytick.color": ink["text"],
        "grid.color": ink["grid"],
        "legend.edgecolor": ink["grid"],
        "legend.facecolor": "none",
        "legend.labelcolor": ink["text"],
    }


def save_svg(figure: Any, target: Path | Any) -> None:
    """Write `figure` as SVG to a path or a text buffer: transparent, with no date, so reruns diff cleanly."""
    figure.savefig(target, format="svg", transparent=True, metadata={"Date": None, "Creator": None})


def dark_variant(svg: str) -> str:
    """The same plot for a dark background: the light ink colours replaced by the dark ones."""
    for role, colour in LIGHT.items():
        svg = svg.replace(colour, DARK[role])
    return svg
