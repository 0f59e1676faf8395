"""The one table: rows of measurements, rendered as Markdown for the terminal and the file."""

from __future__ import annotations

import math
from dataclasses import dataclass

from bench.load import LoadResult

__all__ = ["Row", "fmt_ms", "fmt_pair", "fmt_rps", "latency_ratio", "render_table"]

COLUMNS = ("Measurement", "Before fixes", "Now", "vs baseline", "vs REST", "Target", "Met")


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the table; empty cells stay empty."""

    measurement: str
    before: str = ""
    now: str = ""
    vs_baseline: str = ""
    vs_rest: str = ""
    target: str = ""
    met: str = ""

    def cells(self) -> tuple[str, ...]:
        return (
            self.measurement,
            self.before,
            self.now,
            self.vs_baseline,
            self.vs_rest,
            self.target,
            self.met,
        )


def fmt_rps(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:,.0f}"


def fmt_ms(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:,.0f}"


def fmt_pair(result: LoadResult | None) -> str:
    """``p50 / p99`` of a load result, in ms."""
    return "" if result is None else f"{fmt_ms(result.p50_ms)} / {fmt_ms(result.p99_ms)}"


def latency_ratio(result: LoadResult, reference: LoadResult) -> str:
    """How many times slower than the reference, at p50 and p99."""
    return f"x{result.p50_ms / reference.p50_ms:.1f} / x{result.p99_ms / reference.p99_ms:.1f}"


def render_table(rows: list[Row]) -> str:
    """A Markdown table, columns padded so that it reads in a terminal too."""
    cells = [COLUMNS, *(row.cells() for row in rows)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]

    def line(values: tuple[str, ...]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)) + " |"

    separator = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(COLUMNS), separator, *(line(row.cells()) for row in rows)])
