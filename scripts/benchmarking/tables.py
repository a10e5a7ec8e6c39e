"""The report's text tables: every table is a list of `Column`s, laid out by one function."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any


@dataclasses.dataclass(frozen=True)
class Column:
    """A table column: its title, its width and alignment ('<8', '>10'), where a row keeps its value
    (a key, or a function of the row) and the value's number format (None prints '-')."""

    title: str
    align: str
    value: str | Callable[[dict], Any]
    spec: str = ""

    def cell(self, row: dict) -> str:
        value = self.value(row) if callable(self.value) else row.get(self.value)
        return format(_fmt(value, self.spec), self.align)


def _fmt(value: Any, spec: str) -> str:
    """`value` formatted with `spec`; a missing figure (None) is '-'."""
    return "-" if value is None else format(value, spec)


def layout(keys: list[Column], values: list[Column], rows: list[dict], title_suffix: str = "") -> str:
    """A title line, then a line a row: its key columns, then its value columns or, for a row whose
    run failed (a `status` other than 'ok'), two spaces and that status."""
    lines = ["".join(format(c.title, c.align) for c in keys + values) + title_suffix]
    for row in rows:
        key = "".join(c.cell(row) for c in keys)
        failed = row.get("status", "ok") != "ok"
        lines.append(key + (f"  {row['status']}" if failed else "".join(c.cell(row) for c in values)))
    return "\n".join(lines)


RESULT_KEYS = [
    Column("recipe", "<17", lambda r: f"{r['recipe']} {r['height']}x{r['width']}"),
    Column("dtype", "<10", "dtype"),
    Column("framework", "<10", "framework"),
]
RESULT_VALUES = [
    Column("images/s", ">10", "images_per_s", ".2f"),
    Column("TFLOP/s", ">9", "tflops", ".3f"),
    Column("MFU", ">6", "mfu", ".0%"),
    Column("step s", ">9", "step_s", ".3f"),
    Column("cpu s", ">8", "cpu_s", ".2f"),
    Column("first s", ">9", "first_step_s", ".1f"),
    Column("compile s", ">11", "compile_s", ".1f"),
    Column("init s", ">8", "init_s", ".1f"),
    Column("RSS MB", ">9", "peak_rss_mb", ".0f"),
    Column("dev MB", ">9", "peak_device_mb", ".0f"),
    Column("  device, note", "", lambda r: f"  {r['device']}, {r['note']}"),
]
RECIPE_DTYPE = [Column("recipe", "<8", "recipe"), Column("dtype", "<10", "dtype")]


def results_table(rows: list[dict]) -> str:
    """One line per worker: speed, compute, timing and memory figures, or why it did not run."""
    return layout(RESULT_KEYS, RESULT_VALUES, rows)


def ratios_table(entries: list[dict]) -> str:
    """bcjax's images/s over Keras' and torch's, per recipe and dtype."""
    values = [Column(name, ">13", name, ".2f") for name in ("bcjax/keras", "bcjax/torch")]
    return layout(RECIPE_DTYPE, values, entries)


def compile_table(pairs: list[tuple[dict, dict]]) -> str:
    """bcjax's first step on a cold and then a warm persistent compilation cache, row under row."""
    rows = [{**r, "cache": label} for cold, warm in pairs for label, r in (("cold", cold), ("warm", warm))]
    values = [
        Column("first s", ">9", "first_step_s", ".1f"),
        Column("compile s", ">11", "compile_s", ".1f"),
        Column("trace", ">8", "trace_s", ".1f"),
        Column("lower", ">8", "lower_s", ".1f"),
        Column("xla", ">8", "xla_compile_s", ".1f"),
        Column("hits", ">6", "cache_hits"),
        Column("init s", ">8", "init_s", ".1f"),
    ]
    return layout([*RECIPE_DTYPE, Column("", "<6", "cache")], values, rows)


def time_to_result_table(entries: list[dict]) -> str:
    """Hours each row's step time would take to train the published schedules."""
    keys = [
        Column("schedule", "<48", "schedule"),
        Column("dtype", "<10", "dtype"),
        Column("framework", "<10", "framework"),
    ]
    values = [Column("steps", ">8", "steps"), Column("hours", ">9", "hours", ".1f")]
    return "extrapolated from measured step time (training steps only):\n" + layout(keys, values, entries)


def breakdown_table(rows: list[dict]) -> str:
    """bcjax's transfer, forward pass, backward + update and whole step, for the rows that timed them."""
    keys = ("transfer_s", "forward_s", "backward_update_s", "step_s")
    timed = [{"recipe": r["recipe"], "dtype": r["dtype"], **r["breakdown_s"]} for r in rows if "breakdown_s" in r]
    values = [Column(k[:-2], ">18", k, ".3f") for k in keys]
    return layout(RECIPE_DTYPE, values, timed, title_suffix="   (bcjax, seconds)")
