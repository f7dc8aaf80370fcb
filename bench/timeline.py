"""bench/timeline.png: every API call of the paced runs over time, one row per process."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.lines import Line2D

from consumer.sandbox import CallRecord

COLOURS = {0: "tab:green", 90051: "tab:red"}
OTHER_CODE, NO_CODE = "tab:orange", "tab:grey"


@dataclass
class Row:
    """The calls one process made."""

    label: str
    calls: list[CallRecord]


@dataclass
class Panel:
    """One scenario: rows of calls on a common clock starting at `t0` (monotonic)."""

    title: str
    t0: float
    rows: list[Row]
    marks: list[tuple[float, str]] = field(default_factory=list)  # (monotonic time, label)


def colour(call: CallRecord) -> str:
    if call.code is None:
        return NO_CODE
    return COLOURS.get(call.code, OTHER_CODE)


def plot(panels: Sequence[Panel], path: Path) -> None:
    """Draw the panels stacked, one horizontal strip per row, and save a PNG."""
    heights = [0.9 + 0.45 * len(p.rows) for p in panels]
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(12, sum(heights) + 0.8), gridspec_kw={"height_ratios": heights}
    )
    for ax, panel in zip(axes if len(panels) > 1 else [axes], panels, strict=True):
        for y, row in enumerate(panel.rows):
            xs = [c.arrived - panel.t0 for c in row.calls]
            ax.scatter(xs, [y] * len(xs), c=[colour(c) for c in row.calls], marker="|", s=260)
        for at, label in panel.marks:
            ax.axvline(at - panel.t0, color="black", linestyle="--", linewidth=1)
            ax.annotate(
                label,
                (at - panel.t0, len(panel.rows) - 0.5),
                xytext=(4, 0),
                textcoords="offset points",
                fontsize=8,
                va="top",
            )
        ax.set_yticks(range(len(panel.rows)), [r.label for r in panel.rows], fontsize=8)
        ax.set_ylim(-0.6, len(panel.rows) - 0.4)
        ax.set_title(panel.title, fontsize=9, loc="left")
        ax.set_xlim(left=0)
        ax.grid(axis="x", alpha=0.3)
    (axes[-1] if len(panels) > 1 else axes).set_xlabel(
        "seconds since scenario start (arrival at the sandbox)"
    )
    legend = [
        Line2D(
            [], [], color=COLOURS[0], marker="|", linestyle="", markersize=12, label="0 recalled"
        ),
        Line2D(
            [],
            [],
            color=COLOURS[90051],
            marker="|",
            linestyle="",
            markersize=12,
            label="90051 too frequent",
        ),
        Line2D(
            [],
            [],
            color=OTHER_CODE,
            marker="|",
            linestyle="",
            markersize=12,
            label="other ErrorCode",
        ),
        Line2D([], [], color=NO_CODE, marker="|", linestyle="", markersize=12, label="HTTP error"),
    ]
    fig.legend(handles=legend, loc="upper right", ncol=4, fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
