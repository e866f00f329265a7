"""report.md and report.html of a run: the numbers, how sure they are, and on what.

Written for the reader who must put a number in a paper or a decision: every median
carries its interval and its repetition count, every excluded repetition its reason,
and the hardware, firmware and software it was measured on sit in the same file, so
the report can be read (and doubted) without the run directory. The HTML is one file
with inline CSS and embedded PNG plots: it opens offline, years later.

Samples are streamed and reduced to per-cell statistics as they are read, never held
as a list of dicts (100,000 samples as dicts are ~600 MB of Python objects).
"""

from __future__ import annotations

import base64
import gc
import html
import io
import json
import math
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

from cvmharness import __version__
from cvmharness.errors import InputError, Problem
from cvmharness.stats import (
    DEFAULT_NOISY_CV,
    CellStats,
    Estimate,
    MedianBootstrap,
    Ratio,
    ratios_to_baseline,
    summarize_cells,
)
from cvmharness.store import RUN_JSON, SAMPLES, iter_samples

DEFAULT_BASELINE = "host-local"
PLOTS_DIR = "report-plots"
MAX_BARS = 40
"""More cells than this in one workload: the bar chart shows the first ones, the table all."""
MAX_CURVES = 10
COORDINATED_OMISSION = (
    "wrk is a closed-loop load generator: each connection sends its next request only "
    "after the previous answer, so a slow server also slows the offered load "
    "(coordinated omission). Its latency percentiles therefore understate what an "
    "open-loop client at the same rate would see; compare them between scenarios, not "
    "with latency targets."
)
_PERCENTILE_CURVE = (("p50", 50.0), ("p75", 75.0), ("p90", 90.0), ("p99", 99.0),
                     ("p999", 99.9))
_PERCENTILE_X = tuple((f"latency_ms.{key}", -math.log10(1 - q / 100.0))
                      for key, q in _PERCENTILE_CURVE)
"""Metric name and x position (nines: 1 at p90, 2 at p99) of each percentile."""
_DASH = "\u2014"
_EN_DASH = "\u2013"


# --------------------------------------------------------------------------- formatting


def fmt_rate(x: float | None) -> str:
    """Requests/sec the way a reader compares them: no false digits above 100."""
    if x is None or not math.isfinite(x):
        return _DASH
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def fmt_ms(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return _DASH
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    if x >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def fmt_bytes_rate(x: float | None) -> str:
    """Binary units, as wrk prints them (its ``GB`` is GiB)."""
    if x is None or not math.isfinite(x):
        return _DASH
    for unit, scale in (("GiB/s", 1024**3), ("MiB/s", 1024**2), ("KiB/s", 1024)):
        if abs(x) >= 0.85 * scale:
            return f"{x / scale:.2f} {unit}"
    return f"{x:.0f} B/s"


def fmt_count(x: int | None) -> str:
    return _DASH if x is None else f"{x:,}"


def fmt_pct(x: float | None) -> str:
    return _DASH if x is None or not math.isfinite(x) else f"{x * 100:.1f}%"


def fmt_ratio(r: Ratio | None) -> str:
    if r is None or not math.isfinite(r.value):
        return _DASH
    if r.ci_low is None or r.ci_high is None:
        return f"{r.value:.3f}"
    return f"{r.value:.3f} [{r.ci_low:.3f}{_EN_DASH}{r.ci_high:.3f}]"


def fmt_change(r: Ratio | None) -> str:
    if r is None or not math.isfinite(r.value):
        return _DASH
    return f"{(r.value - 1.0) * 100:+.1f}%"


def fmt_ci(est: Estimate | None, fmt: Callable[[float | None], str]) -> str:
    if est is None or est.ci_low is None or est.ci_high is None:
        return _DASH
    return f"{fmt(est.ci_low)}{_EN_DASH}{fmt(est.ci_high)}"


def fmt_reps(reps: Sequence[int]) -> str:
    """``1-3, 5`` (with an en dash): repetition numbers as ranges."""
    out: list[str] = []
    ordered = sorted(reps)
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        out.append(str(ordered[i]) if i == j else f"{ordered[i]}{_EN_DASH}{ordered[j]}")
        i = j + 1
    return ", ".join(out)


def _text(value: Any) -> str:
    """A fact for a table: null is 'unknown' (never guessed), lists joined."""
    if value is None:
        return "unknown"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(_text(v) for v in value) if value else "none"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_text(v)}" for k, v in value.items())
    return str(value)


# --------------------------------------------------------------------------- document model


@dataclass(frozen=True)
class Table:
    """A table both renderers share: the numbers are formatted once."""

    headers: tuple[str, ...]
    rows: Sequence[Sequence[str]]
    numeric: tuple[bool, ...] = ()
    """Right-aligned columns."""
    caption: str | None = None
    css_class: str = ""
    groups: tuple[tuple[str, int], ...] = ()
    """An optional header row above ``headers``: (label, columns spanned)."""


@dataclass(frozen=True)
class Plot:
    name: str
    png: bytes
    alt: str
    caption: str


@dataclass
class Section:
    title: str
    anchor: str
    level: int = 2
    blocks: list[str | Table | Plot] = field(default_factory=list)
    """Paragraph text (``str``; `code` spans allowed), tables and plots, in order."""


def _distinct(values: Iterable[Any]) -> int:
    """How many different parameter values (JSON scalars, or lists and objects)."""
    items = list(values)
    try:
        return len(set(items))
    except TypeError:
        return len({json.dumps(v, sort_keys=True) for v in items})


def _md_escape(cell: str) -> str:
    return cell.replace("|", "\\|").replace("\n", " ")


def _html_escape(text: str) -> str:
    """html.escape (quotes too), as chained replaces: on a whole table's text at once
    that is many times quicker than str.translate, which maps character by character."""
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;").replace("'", "&#x27;"))


_CELL_SEPARATOR = "\x1f"


def _escaped_columns(rows: Sequence[Sequence[str]], escape: Callable[[str], str],
                     width: int | None = None) -> list[list[str]] | None:
    """The table's cells escaped, column by column, or None to go row by row (no rows,
    rows of different widths, a cell holding the separator).

    A big report has hundreds of thousands of cells: escaping them joined, in one call,
    and rendering rows from a template is several times quicker than cell by cell. Both
    escapes replace single characters (never the separator), so the result is the same.
    """
    if not rows:
        return None
    width = len(rows[0]) if width is None else width
    if not width or any(len(row) != width for row in rows):
        return None
    joined = _CELL_SEPARATOR.join(chain.from_iterable(rows))
    if joined.count(_CELL_SEPARATOR) != len(rows) * width - 1:
        return None
    cells = escape(joined).split(_CELL_SEPARATOR)
    return [cells[column::width] for column in range(width)]


def _md_table(table: Table) -> str:
    numeric = table.numeric or (False,) * len(table.headers)
    headers = list(table.headers)
    if table.groups:  # Markdown has one header row: prefix each column with its group
        labels = [g for g, span in table.groups for _ in range(span)]
        headers = [f"{g} {h}".strip() if g and g != h else h
                   for g, h in zip(labels, headers, strict=True)]
    lines = ["| " + " | ".join(_md_escape(h) for h in headers) + " |",
             "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    columns = _escaped_columns(table.rows, _md_escape)
    if columns is not None:
        lines.extend(map(("| " + " | ".join(["{}"] * len(columns)) + " |").format, *columns))
    else:
        lines.extend("| " + " | ".join(_md_escape(c) for c in row) + " |"
                     for row in table.rows)
    out = "\n".join(lines)
    return f"{out}\n\n{table.caption}" if table.caption else out


def _inline_html(text: str) -> str:
    """Escape, then turn `code` spans into <code> (the only markup paragraphs use)."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _html_table(table: Table) -> str:
    numeric = table.numeric or (False,) * len(table.headers)
    head = "".join(f'<th class="{"num" if n else ""}">{html.escape(h)}</th>'
                   for h, n in zip(table.headers, numeric, strict=True))
    if table.groups:
        top = "".join(f'<th colspan="{span}" class="group">{html.escape(g)}</th>'
                      for g, span in table.groups)
        head = f"{top}</tr><tr>{head}"
    cls = [' class="num"' if n else ' class="label"' if i == 0 else ""
           for i, n in enumerate(numeric)]
    columns = _escaped_columns(table.rows, _html_escape, width=len(cls))
    if columns is not None:
        row_html = "<tr>" + "".join(f"<td{c}>{{}}</td>" for c in cls) + "</tr>"
        body = "\n".join(map(row_html.format, *columns))
    else:
        body = "\n".join(
            "<tr>" + "".join(f"<td{c}>{_html_escape(v)}</td>"
                             for c, v in zip(cls, row, strict=True))
            + "</tr>" for row in table.rows)
    caption = f'<p class="caption">{_inline_html(table.caption)}</p>' if table.caption else ""
    return (f'<div class="scroll"><table class="{table.css_class}"><thead><tr>{head}'
            f"</tr></thead>\n<tbody>\n{body}\n</tbody></table></div>{caption}")


# --------------------------------------------------------------------------- reading a run


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError([Problem(str(path), "", f"cannot read: {exc.strerror or exc}")]) from None
    except ValueError as exc:
        raise InputError([Problem(str(path), "", f"not valid JSON: {exc}")]) from None


def _samples(run_dir: Path) -> Iterator[Mapping[str, Any]]:
    """Complete sample lines; a corrupt one is an input error naming the file."""
    try:
        yield from iter_samples(run_dir)
    except ValueError as exc:
        raise InputError([Problem(str(run_dir / SAMPLES), "",
                                  f"a line is not valid JSON: {exc}")]) from None


def _facts(run_dir: Path) -> dict[str, Mapping[str, Any] | str]:
    """Facts per node; an unreadable file is reported in the report, not fatal."""
    out: dict[str, Mapping[str, Any] | str] = {}
    facts_dir = run_dir / "facts"
    if not facts_dir.is_dir():
        return out
    for path in sorted(facts_dir.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            out[path.stem] = f"unreadable: {exc}"
            continue
        out[str(data.get("node") or path.stem) if isinstance(data, dict) else path.stem] = (
            data if isinstance(data, dict) else "unreadable: not a JSON object")
    return out


# --------------------------------------------------------------------------- plots


_DPI = 110


def _png(fig: Any) -> bytes:
    """The figure drawn by Agg at 110 dpi, as an RGB PNG without metadata.

    RGB, not the RGBA savefig writes: the figure is opaque, so its alpha channel is 255
    everywhere, and without it the PNG is about a tenth smaller and quicker to compress.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    fig.set_dpi(_DPI)
    canvas: Any = FigureCanvasAgg(fig)  # Any: matplotlib leaves draw() untyped
    canvas.draw()
    rgba = Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba(), "raw",
                            "RGBA", 0, 1)
    buf = io.BytesIO()
    rgba.convert("RGB").save(buf, format="png", dpi=(_DPI, _DPI))
    return buf.getvalue()


def _finish_sweep_axes(fig: Any, ax: Any, swept: str, ylabel: str, title: str,
                       legend_size: int) -> None:
    """Labels, grid, legend and margins shared by the line plots over a swept parameter."""
    _plain_ticks(ax.xaxis)
    _plain_ticks(ax.yaxis)
    ax.set_xlabel(swept)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    # legend outside the axes: loc="best" searches all data points (slow, and moves)
    ax.legend(fontsize=legend_size, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(title, y=1.0)
    fig.subplots_adjust(left=0.1, right=0.78, top=0.91, bottom=0.13)


def _curves_note(scenarios: int) -> str:
    return (f" Showing {MAX_CURVES} of {scenarios} scenarios."
            if scenarios > MAX_CURVES else "")


def _plain_ticks(axis: Any) -> None:
    """Tick labels as plain numbers (``20,000``, ``0.5``), never mathtext ``10^x`` or an
    offset ``1e5``: easier to read in a table-heavy report, and mathtext layout and
    minor ticks are the largest costs of drawing a plot."""
    from matplotlib.ticker import FuncFormatter, NullLocator

    axis.set_major_formatter(FuncFormatter(
        lambda v, _pos: f"{v:,.0f}" if abs(v) >= 1000 else f"{v:g}"))
    axis.set_minor_locator(NullLocator())  # log axes: dozens of unlabelled ticks, slow


def _label(cell: CellStats) -> str:
    point = cell.suffix.lstrip(".").replace(".", " ")
    return f"{cell.scenario} {point}".strip()


def _swept_field(cells: Sequence[CellStats]) -> str | None:
    """The one numeric parameter that varies across a workload's cells, if exactly one."""
    varying = []
    for key in sorted({k for c in cells for k in c.params}):
        if _distinct(c.params.get(key) for c in cells) > 1:
            varying.append(key)
    if len(varying) != 1:
        return None
    key = varying[0]
    if all(isinstance(c.params.get(key), int | float) and not isinstance(c.params.get(key), bool)
           for c in cells):
        return key
    return None


def _band(ax: Any, xs: Sequence[float], estimates: Sequence[Estimate], color: Any) -> None:
    """The CI band of a curve, as one polygon. What fill_between draws, at a fraction of
    its cost (and of ax.fill's, which measures the outline segment by segment)."""
    from matplotlib.patches import Polygon

    lows = [e.ci_low if e.ci_low is not None else e.median for e in estimates]
    highs = [e.ci_high if e.ci_high is not None else e.median for e in estimates]
    outline = list(zip([*xs, *reversed(xs)], [*lows, *reversed(highs)], strict=True))
    ax.add_artist(Polygon(outline, closed=True, facecolor=color, alpha=0.18, linewidth=0))
    ax.update_datalim(outline)  # as add_patch would: the band counts for autoscaling


def _throughput_plot(workload: str, cells: Sequence[CellStats], baseline: str | None
                     ) -> Plot | None:
    from matplotlib.figure import Figure

    measured = [c for c in cells if c.rps is not None]
    if not measured:
        return None
    swept = _swept_field(measured)
    scenarios = list(dict.fromkeys(c.scenario for c in measured))
    if swept is not None and len(measured) > len(scenarios):
        fig = Figure(figsize=(10.0, 4.2))
        ax = fig.add_subplot()
        for scenario in scenarios[:MAX_CURVES]:
            mine = sorted((c for c in measured if c.scenario == scenario),
                          key=lambda c: float(c.params[swept]))
            points = [(float(c.params[swept]), c.rps) for c in mine if c.rps is not None]
            xs = [x for x, _ in points]
            line = ax.plot(xs, [e.median for _, e in points], marker="o", markersize=3.5,
                           label=scenario, linewidth=2.2 if scenario == baseline else 1.4)[0]
            # one band per scenario, not a cap per point: readable with many sweep points
            _band(ax, xs, [e for _, e in points], line.get_color())
        values = sorted({float(c.params[swept]) for c in measured})
        if values[0] > 0 and values[-1] / values[0] > 20:
            ax.set_xscale("log")
        ax.set_ylim(bottom=0)
        _finish_sweep_axes(fig, ax, swept, "requests/sec (median; band: 95% CI)",
                           f"{workload}: requests/sec by {swept}", legend_size=8)
        note = _curves_note(len(scenarios))
        return Plot(f"{workload}-throughput", _png(fig),
                    f"requests per second of workload {workload} by {swept}",
                    f"Requests/sec of `{workload}` (median over ok repetitions, band: bootstrap "
                    f"95% CI of the median) by `{swept}`.{note}")
    shown = measured[:MAX_BARS]
    height = max(2.2, 0.38 * len(shown) + 1.2)
    fig = Figure(figsize=(8.5, height))
    ax = fig.add_subplot()
    positions = list(range(len(shown)))[::-1]
    medians = [c.rps.median for c in shown if c.rps is not None]
    err_lo = [max(0.0, c.rps.median - c.rps.ci_low) if c.rps and c.rps.ci_low is not None
              else 0.0 for c in shown]
    err_hi = [max(0.0, c.rps.ci_high - c.rps.median) if c.rps and c.rps.ci_high is not None
              else 0.0 for c in shown]
    colors = ["#1f4e79" if c.scenario == baseline else ("#c55a11" if c.noisy else "#5b9bd5")
              for c in shown]
    ax.barh(positions, medians, xerr=[err_lo, err_hi], color=colors, capsize=3,
            error_kw={"elinewidth": 1.2, "ecolor": "#222222"})
    ax.set_yticks(positions, [_label(c) for c in shown], fontsize=8)
    peak = max((m + h for m, h in zip(medians, err_hi, strict=True)), default=0.0)
    for y, c, m, h in zip(positions, shown, medians, err_hi, strict=True):
        ax.text(m + h + peak * 0.015, y, f"{fmt_rate(m)} (n={c.ok})", fontsize=7.5,
                va="center")
    ax.set_xlim(0, peak * 1.18 if peak > 0 else 1)
    _plain_ticks(ax.xaxis)
    ax.set_xlabel("requests/sec (median over ok repetitions; bars: bootstrap 95% CI)")
    ax.grid(True, axis="x", alpha=0.3)
    ax.set_title(f"{workload}: requests/sec per cell", y=1.0)
    # fixed margins (tight_layout measures every label: seconds on big runs)
    longest = max(len(_label(c)) for c in shown)
    fig.subplots_adjust(left=min(0.45, 0.03 + 0.0095 * longest), right=0.97,
                        top=1 - 0.45 / height, bottom=0.75 / height)
    note = f" Showing the first {MAX_BARS} of {len(measured)} cells." \
        if len(measured) > MAX_BARS else ""
    legend = (f" Dark: baseline `{baseline}`; orange: noisy (CV above threshold)."
              if baseline else " Orange: noisy (CV above threshold).")
    return Plot(f"{workload}-throughput", _png(fig),
                f"bar chart of requests per second of workload {workload} per cell",
                f"Requests/sec of `{workload}`, median with its bootstrap 95% CI.{legend}{note}")


def _latency_sweep_plot(workload: str, cells: Sequence[CellStats], swept: str) -> Plot:
    """p99 (solid, with its CI band) and p50 (dashed) against the swept parameter, one
    colour per scenario: with a sweep, how latency grows with load is the question."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10.0, 4.4))
    ax = fig.add_subplot()
    scenarios = list(dict.fromkeys(c.scenario for c in cells))
    for scenario in scenarios[:MAX_CURVES]:
        mine = sorted((c for c in cells if c.scenario == scenario),
                      key=lambda c: float(c.params[swept]))
        p99 = [(float(c.params[swept]), e) for c in mine if (e := c.latency("p99"))]
        p50 = [(float(c.params[swept]), e) for c in mine if (e := c.latency("p50"))]
        if not p99:
            continue
        xs = [x for x, _ in p99]
        line = ax.plot(xs, [e.median for _, e in p99], marker="o", markersize=3.5,
                       label=scenario)[0]
        _band(ax, xs, [e for _, e in p99], line.get_color())
        if p50:  # no legend entry of its own: the title says dashed is p50
            ax.plot([x for x, _ in p50], [e.median for _, e in p50], linestyle="--",
                    linewidth=1.0, color=line.get_color())
    values = sorted({float(c.params[swept]) for c in cells})
    if values[0] > 0 and values[-1] / values[0] > 20:
        ax.set_xscale("log")
    ax.set_yscale("log")
    _finish_sweep_axes(fig, ax, swept, "latency, ms (median; band: 95% CI)",
                       f"{workload}: p99 (solid) and p50 (dashed) latency by {swept}",
                       legend_size=7)
    note = _curves_note(len(scenarios))
    return Plot(f"{workload}-latency", _png(fig),
                f"p99 and p50 latency of workload {workload} by {swept}",
                f"Latency of `{workload}` by `{swept}`: p99 with the bootstrap 95% CI of its "
                f"median (band) and p50 (dashed), medians over ok repetitions; log scale. "
                f"Closed-loop numbers: see the note on coordinated omission.{note}")


def _latency_plot(workload: str, cells: Sequence[CellStats]) -> Plot | None:
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, NullLocator

    # cells with at least two percentiles: a curve each (their points are drawn only
    # without a sweep, and then for the first MAX_CURVES)
    drawn = [cell for cell in cells
             if sum(cell.metrics.get(name) is not None for name, _ in _PERCENTILE_X) >= 2]
    if not drawn:
        return None
    swept = _swept_field(drawn)
    if swept is not None and len(drawn) > len({cell.scenario for cell in drawn}):
        return _latency_sweep_plot(workload, drawn, swept)
    curves = [(cell, [(x, est) for name, x in _PERCENTILE_X
                      if (est := cell.metrics.get(name)) is not None])
              for cell in drawn[:MAX_CURVES]]
    fig = Figure(figsize=(10.0, 4.4))
    ax = fig.add_subplot()
    for cell, points in curves:
        xs = [x for x, _ in points]
        ys = [e.median for _, e in points]
        lo = [max(0.0, e.median - e.ci_low) if e.ci_low is not None else 0.0 for _, e in points]
        hi = [max(0.0, e.ci_high - e.median) if e.ci_high is not None else 0.0
              for _, e in points]
        ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", markersize=4, capsize=2,
                    label=_label(cell))
    ticks = [-math.log10(1 - q / 100.0) for _, q in _PERCENTILE_CURVE]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels(["p50", "p75", "p90", "p99", "p99.9"])
    ax.set_yscale("log")
    _plain_ticks(ax.yaxis)
    ax.set_ylabel("latency, ms (median over repetitions)")
    ax.set_xlabel("percentile (wrk, closed loop: see note)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(f"{workload}: latency percentiles per cell", y=1.0)
    fig.subplots_adjust(left=0.1, right=0.72, top=0.91, bottom=0.13)
    note = f" Showing {MAX_CURVES} of {len(drawn)} cells." if len(drawn) > MAX_CURVES else ""
    return Plot(f"{workload}-latency", _png(fig),
                f"latency percentile curves of workload {workload}",
                f"Latency percentiles of `{workload}` per cell (median over ok repetitions, "
                f"bars: bootstrap 95% CI); log scale. Closed-loop numbers: see the note on "
                f"coordinated omission.{note}")


def _draw_plots(groups: Mapping[str, Sequence[CellStats]], baseline: str | None,
                collecting: bool) -> dict[str, list[Plot]]:
    """Each workload's plots: requests/sec, then latency (those there is data for).

    Figures are reference cycles, so the garbage collector runs meanwhile if it ran
    before the report (``collecting``); what exists already is frozen first, so that
    its collections do not walk the cells and their estimates again and again.
    """
    frozen = collecting and gc.get_freeze_count() == 0  # never thaw what others froze
    if frozen:
        gc.freeze()
    if collecting:
        gc.enable()
    try:
        return {workload: [plot for plot in (_throughput_plot(workload, cells, baseline),
                                             _latency_plot(workload, cells))
                           if plot is not None]
                for workload, cells in groups.items()}
    finally:
        gc.disable()
        if frozen:
            gc.unfreeze()


# --------------------------------------------------------------------------- sections


def _param_text(key: str, value: Any) -> str:
    """A parameter as a reader writes it: ``duration=30 s``, ``connections=100``."""
    if value is None and key == "port":
        return "lab default"  # the server's first nginx_bench_ports entry
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = _text(value)
    return f"{text} s" if key in ("duration", "timeout", "warmup", "cooldown") else text


def _common_params(cells: Sequence[CellStats]) -> str:
    keys = list(dict.fromkeys(k for c in cells for k in c.params))
    same = []
    for key in keys:
        if _distinct(c.params.get(key) for c in cells) == 1:
            same.append(f"{key}={_param_text(key, cells[0].params.get(key))}")
    return ", ".join(same)


_MAIN_HEADERS = (
    "cell", "median", "95% CI", "CV", "transfer/s",
    "mean", "p50", "p99", "p99.9", "max",
    "connect", "read", "write", "timeout", "non-2xx/3xx",
    "ok/total", "noisy",
)
_MAIN_GROUPS = (("", 1), ("requests/sec", 4), ("latency, ms †", 5),
                ("socket errors (sum)", 5), ("repetitions", 2))
_MAIN_NUMERIC = (False, *([True] * 15), False)


_MAIN_LATENCIES = tuple(f"latency_ms.{k}" for k in ("mean", "p50", "p99", "p999", "max"))
_CI_LATENCIES = tuple(f"latency_ms.{k}" for k in ("p50", "p90", "p99", "p999"))
_ERROR_COLUMNS = ("connect", "read", "write", "timeout", "status")


def _main_row(cell: CellStats, label: str) -> tuple[str, ...]:
    """One cell's row of a workload's main table (``label``: its _label)."""
    metrics = cell.metrics
    rps = metrics.get("requests_per_sec")
    if rps is None:
        why = cell.status if cell.ok == 0 else "not measured"
        return (label, why, _DASH, _DASH, _DASH, _DASH, _DASH, _DASH, _DASH, _DASH,
                _DASH, _DASH, _DASH, _DASH, _DASH, f"{cell.ok}/{cell.recorded}", "")
    bps = metrics.get("bytes_per_sec")
    errors = cell.errors
    return (
        label, fmt_rate(rps.median), fmt_ci(rps, fmt_rate), fmt_pct(rps.cv),
        fmt_bytes_rate(bps.median if bps else None),
        *[fmt_ms(est.median if est else None) for est in map(metrics.get, _MAIN_LATENCIES)],
        *[fmt_count(errors.get(k, 0)) for k in _ERROR_COLUMNS],
        f"{cell.ok}/{cell.recorded}", "noisy" if cell.noisy else "",
    )


def _latency_ci_row(cell: CellStats, label: str) -> tuple[str, ...] | None:
    ests = [cell.metrics.get(name) for name in _CI_LATENCIES]
    if all(e is None for e in ests):
        return None
    return (label, *(fmt_ci(e, fmt_ms) for e in ests))


def _anchor(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text.lower()).strip("-")


@dataclass(frozen=True)
class _RunView:
    run_dir: Path
    meta: Mapping[str, Any]
    cells: list[CellStats]
    baseline: str | None
    rps_ratios: dict[str, Ratio]
    p99_ratios: dict[str, Ratio]
    facts: dict[str, Mapping[str, Any] | str]
    noisy_cv: float
    bootstrap: MedianBootstrap


def _by_workload(cells: Iterable[CellStats]) -> dict[str, list[CellStats]]:
    by_workload: dict[str, list[CellStats]] = {}
    for cell in cells:
        by_workload.setdefault(cell.workload, []).append(cell)
    return by_workload


def _workload_sections(view: _RunView, plots: Mapping[str, Sequence[Plot]] | None
                       ) -> list[Section]:
    """A section per workload, with its plots (``plots``: None for none)."""
    sections = []
    for workload, cells in _by_workload(view.cells).items():
        section = Section(f"Workload {workload}", _anchor(f"workload-{workload}"))
        tools = sorted({c.tool or "unknown" for c in cells})
        common = _common_params(cells)
        section.blocks.append(
            f"Tool `{', '.join(tools)}`; parameters common to all its cells: {common or 'none'}. "
            f"{len(cells)} cells, {sum(c.ok for c in cells)} of "
            f"{sum(c.recorded for c in cells)} recorded repetitions ok.")
        labels = [_label(c) for c in cells]
        section.blocks.append(Table(
            _MAIN_HEADERS, list(map(_main_row, cells, labels)), _MAIN_NUMERIC,
            groups=_MAIN_GROUPS,
            caption=("Medians over the ok repetitions; CI: bootstrap 95% interval of the median; "
                     "CV: stdev/mean of req/s over repetitions; socket errors and non-2xx/3xx "
                     "responses summed over the ok repetitions. † " + COORDINATED_OMISSION),
            css_class="main"))
        ci_rows = [r for r in map(_latency_ci_row, cells, labels) if r is not None]
        if ci_rows:
            section.blocks.append(Table(
                ("cell", "p50 ms 95% CI †", "p90 ms 95% CI †", "p99 ms 95% CI †",
                 "p99.9 ms 95% CI †"), ci_rows, (False, True, True, True, True),
                caption="Bootstrap 95% intervals of the median latency percentiles."))
        if view.baseline is not None:
            ratio_rows = []
            for cell, label in zip(cells, labels, strict=True):
                if cell.scenario == view.baseline or cell.rps is None:
                    continue
                r = view.rps_ratios.get(cell.cell_id)
                p = view.p99_ratios.get(cell.cell_id)
                ratio_rows.append((label, fmt_ratio(r), fmt_change(r), fmt_ratio(p),
                                   fmt_change(p)))
            if ratio_rows:
                section.blocks.append(Table(
                    ("cell", f"req/s ÷ {view.baseline} [95% CI]", "req/s change",
                     f"p99 ÷ {view.baseline} [95% CI] †", "p99 change"),
                    ratio_rows, (False, True, True, True, True),
                    caption=(f"Ratio of medians to the same workload and sweep point in the "
                             f"baseline scenario `{view.baseline}`; the interval resamples "
                             f"both cells independently. {_DASH}: the baseline cell has no "
                             f"ok repetition.")))
        if plots is not None:
            section.blocks.extend(plots.get(workload, ()))
            if all(c.latency("p50") is None for c in cells) and any(c.ok for c in cells):
                section.blocks.append(
                    "No latency distribution was recorded for this workload (wrk without "
                    "`--latency` or the JSON script): only mean and max latency are known.")
        sections.append(section)
    return sections


def _summary_section(view: _RunView, planned: int | None) -> Section:
    section = Section("Summary", "summary")
    meta = view.meta
    status = str(meta.get("status") or "unknown")
    recorded = sum(c.recorded for c in view.cells)
    ok = sum(c.ok for c in view.cells)
    if status == "running" or (meta.get("ended_at") is None and status not in ("ok", "failed")):
        progress = f"{recorded} of {planned} planned repetitions" if planned else \
            f"{recorded} repetitions"
        section.blocks.append(
            f"**This run is still in progress** (status `{status}`): the report covers the "
            f"{progress} recorded so far; numbers will change.")
    measured = [c for c in view.cells if c.ok]
    noisy = [c for c in view.cells if c.noisy]
    statuses: dict[str, int] = {}
    for cell in view.cells:
        if not cell.ok:
            statuses[cell.status] = statuses.get(cell.status, 0) + 1
    rows = [
        ("run", str(meta.get("run_id", view.run_dir.name))),
        ("status", status),
        ("cells", f"{len(view.cells)} recorded, {len(measured)} with ok repetitions"
         + "".join(f", {n} {s}" for s, n in sorted(statuses.items()))),
        ("repetitions", f"{ok} ok of {recorded} recorded"
         + (f" ({planned} planned)" if planned else "")),
        ("noisy cells", f"{len(noisy)} (req/s CV > {view.noisy_cv:.0%})"),
        ("baseline", view.baseline or "none (no scenario)"),
    ]
    section.blocks.append(Table(("", ""), rows, (False, False), css_class="kv"))
    if not measured:
        section.blocks.append("No cell has an ok repetition: there is nothing to compare. "
                              "The reasons are listed under Excluded repetitions.")
    return section


def _exclusions_section(view: _RunView) -> Section:
    section = Section("Excluded repetitions", "excluded")
    grouped: dict[tuple[str, str, str], list[int]] = {}
    for cell in view.cells:
        for ex in cell.excluded:
            grouped.setdefault((cell.cell_id, ex.status, ex.reason or "no reason recorded"),
                               []).append(ex.repetition)
    if not grouped:
        section.blocks.append("None: every recorded repetition is ok.")
        return section
    section.blocks.append(
        "Skipped (the lab cannot run the cell), failed (the tool gave no result) and invalid "
        "(it ran, but the result cannot be trusted) repetitions are left out of every "
        "statistic above.")
    rows = [(cell_id, status, fmt_reps(reps), reason)
            for (cell_id, status, reason), reps in grouped.items()]
    section.blocks.append(Table(("cell", "status", "repetitions", "reason"), rows,
                                (False, False, False, False), css_class="excl"))
    return section


def _noisy_section(view: _RunView) -> Section | None:
    noisy = [c for c in view.cells if c.noisy and c.rps is not None]
    if not noisy:
        return None
    section = Section("Noisy cells", "noisy")
    section.blocks.append(
        f"Cells whose req/s coefficient of variation exceeds {view.noisy_cv:.0%}: the "
        "machine was not quiet, or the setup is unstable. Their medians and intervals "
        "are reported, but more repetitions (or a quieter lab) are needed before a "
        "small difference means anything.")
    rows = [(c.cell_id, fmt_pct(c.rps.cv if c.rps else None),
             ", ".join(fmt_rate(v) for v in (c.rps.values if c.rps else ())))
            for c in noisy]
    section.blocks.append(Table(("cell", "CV", "req/s per repetition"), rows,
                                (False, True, False)))
    return section


_FACT_ROWS: tuple[tuple[str, Callable[[Mapping[str, Any]], Any]], ...] = (
    ("CPU model", lambda f: f.get("cpu", {}).get("model")),
    ("CPU vendor / family / model / stepping", lambda f: " / ".join(
        _text(f.get("cpu", {}).get(k)) for k in ("vendor", "family", "model_id", "stepping"))),
    ("microcode", lambda f: f.get("cpu", {}).get("microcode")),
    ("sockets / cores / threads", lambda f: " / ".join(
        _text(f.get("cpu", {}).get(k)) for k in ("sockets", "cores", "threads"))),
    ("CPU flags of interest", lambda f: f.get("cpu", {}).get("flags_of_interest")),
    ("memory (MiB)", lambda f: f.get("memory_mib")),
    ("kernel", lambda f: f.get("kernel", {}).get("release")),
    ("kernel build", lambda f: f.get("kernel", {}).get("version")),
    ("kernel command line", lambda f: f.get("kernel", {}).get("cmdline")),
    ("OS", lambda f: " ".join(_text(f.get("os", {}).get(k)) for k in ("name", "version"))),
    ("virtualization role / type", lambda f: " / ".join(
        _text(f.get("virtualization", {}).get(k)) for k in ("role", "type"))),
    ("KVM", lambda f: f.get("virtualization", {}).get("kvm")),
    ("TDX: kvm_intel.tdx", lambda f: f.get("tdx", {}).get("host", {}).get("kvm_intel_tdx")),
    ("TDX: module initialized",
     lambda f: f.get("tdx", {}).get("host", {}).get("module_initialized")),
    ("TDX: cpu flag tdx_host_platform",
     lambda f: f.get("tdx", {}).get("host", {}).get("cpu_flag")),
    ("TDX: dmesg", lambda f: f.get("tdx", {}).get("host", {}).get("dmesg")),
    ("TDX guest detected", lambda f: f.get("tdx", {}).get("guest", {}).get("detected")),
    *((f"version: {name}", (lambda key: lambda f: f.get("versions", {}).get(key))(name))
      for name in ("qemu", "libvirt", "nginx", "wrk", "k3s", "kata")),
    ("NICs", lambda f: [f"{_text(n.get('name'))} ({_text(n.get('driver'))}, "
                        f"{_text(n.get('speed_mbps'))} Mb/s, MTU {_text(n.get('mtu'))})"
                        for n in f.get("nics") or [] if isinstance(n, dict)]),
    ("gathered at", lambda f: f.get("gathered_at")),
)


def _fact(facts: Mapping[str, Any], getter: Callable[[Mapping[str, Any]], Any]) -> str:
    try:
        return _text(getter(facts))
    except (AttributeError, TypeError):  # a fact of the wrong shape: say so, do not guess
        return "unreadable"


def _facts_section(view: _RunView) -> Section:
    section = Section("Lab facts", "facts")
    if not view.facts:
        section.blocks.append(
            "No facts were gathered for this run (no `facts/*.json`): the hardware, firmware "
            "and software that produced these numbers are not recorded, so the run cannot be "
            "reproduced from this report.")
        return section
    nodes = list(view.facts)
    readable = {n: f for n, f in view.facts.items() if not isinstance(f, str)}
    for node, problem in view.facts.items():
        if isinstance(problem, str):
            section.blocks.append(f"`facts/{node}.json`: {problem}.")
    if readable:
        rows = [(label, *(_fact(readable[n], getter) for n in nodes if n in readable))
                for label, getter in _FACT_ROWS]
        section.blocks.append(Table(("fact", *(n for n in nodes if n in readable)), rows,
                                    css_class="facts",
                                    caption="As gathered by the `facts` role; `unknown` is a "
                                            "value that could not be read (never guessed)."))
    return section


def _run_section(view: _RunView) -> Section:
    meta = view.meta
    section = Section("Run", "run")
    harness = meta.get("harness") or {}
    matrix = meta.get("matrix") or {}
    lab = meta.get("lab") or {}
    plan = meta.get("plan") or {}
    rows = [
        ("run id", _text(meta.get("run_id"))),
        ("status", _text(meta.get("status"))),
        ("started / ended", f"{_text(meta.get('started_at'))} / {_text(meta.get('ended_at'))}"),
        ("resumed", _text(meta.get("resumed") or [])),
        ("matrix", f"{_text(matrix.get('name'))} ({_text(matrix.get('file'))})"),
        ("lab", f"{_text(lab.get('name'))} ({_text(lab.get('inventory'))}); hosts: "
                f"{_text(lab.get('hosts'))}"),
        ("plan", ", ".join(f"{k} {_text(v)}" for k, v in plan.items()) or "unknown"),
        ("harness", f"cvmharness {_text(harness.get('version'))}, git "
                    f"{_text(harness.get('git_revision'))}, Python {_text(harness.get('python'))}"),
        ("command", " ".join(str(a) for a in meta.get("argv") or []) or "unknown"),
        ("report by", f"cvmharness {__version__}; bootstrap {view.bootstrap.resamples} "
                      f"resamples, seed {view.bootstrap.seed}"),
    ]
    imported = meta.get("imported")
    if isinstance(imported, dict):
        rows.append(("imported from", _text([f"{f.get('path')} ({f.get('runs')} runs, sha256 "
                                             f"{str(f.get('sha256'))[:12]}…)"
                                             for f in imported.get("files") or []])))
    section.blocks.append(Table(("", ""), rows, (False, False), css_class="kv"))
    resolved = matrix.get("resolved")
    if resolved is not None:
        section.blocks.append("```json\n" + json.dumps(resolved, indent=2, sort_keys=True)
                              + "\n```")
    return section


def _method_section(view: _RunView) -> Section:
    section = Section("Method", "method")
    section.blocks.extend([
        "Each cell (scenario, workload, sweep point) ran several repetitions; only "
        "repetitions with status `ok` enter the statistics. A cell's value is the median "
        "over them; its interval is a percentile bootstrap 95% confidence interval of the "
        f"median ({view.bootstrap.resamples} resamples, seeded: the report is "
        "reproducible). With one repetition there is no interval; with few, the interval "
        "spans most of the observed range, which is the honest answer.",
        f"CV is the sample standard deviation over the mean of req/s; a cell is *noisy* when "
        f"it exceeds {view.noisy_cv:.0%}. Ratios to the baseline are ratios of medians, "
        "their intervals from resampling both cells independently.",
        COORDINATED_OMISSION,
    ])
    return section


# --------------------------------------------------------------------------- rendering


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
margin:24px auto;max-width:1500px;padding:0 16px;color:#1b1b1b;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:2px solid #1f4e79;padding-bottom:3px;
margin-top:1.8em}
nav ul{columns:3;font-size:.9em}
code{background:#f2f2f2;padding:0 3px;border-radius:3px;font-size:.92em}
.scroll{overflow-x:auto}
table{border-collapse:collapse;font-size:12.5px;margin:.6em 0;font-variant-numeric:tabular-nums}
th,td{border:1px solid #c8c8c8;padding:3px 7px;vertical-align:top}
th{background:#e8eef5;text-align:left}
th.num,td.num{text-align:right;white-space:nowrap}
td.label{white-space:nowrap}th.group{text-align:center;background:#d5e1ee}
tbody tr:nth-child(even){background:#f8f9fb}
table.kv td:first-child{font-weight:600;white-space:nowrap}
table.kv thead{display:none}
table.facts td:first-child{font-weight:600;white-space:nowrap}
.caption{font-size:.85em;color:#444;max-width:1100px}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:.85em;color:#444}
.banner{background:#fff4ce;border:1px solid #e0b400;padding:8px 12px}
pre{background:#f6f6f6;padding:8px;overflow-x:auto;font-size:12px;max-height:420px}
@media print{nav{display:none}pre{max-height:none}.scroll{overflow:visible}table{font-size:9px}}
"""


def _md_paragraph(text: str) -> str:
    return text


def _html_paragraph(text: str) -> str:
    if text.startswith("```"):
        body = text.split("\n", 1)[1].rsplit("```", 1)[0]
        return (f"<details><summary>resolved matrix</summary><pre>{html.escape(body)}</pre>"
                "</details>")
    escaped = _inline_html(text)
    while "**" in escaped:
        escaped = escaped.replace("**", "<strong>", 1).replace("**", "</strong>", 1)
    cls = ' class="banner"' if "still in progress" in text else ""
    return f"<p{cls}>{escaped}</p>"


def _render_md(title: str, sections: Sequence[Section], plot_paths: Mapping[str, str]) -> str:
    out = [f"# {title}", ""]
    for section in sections:
        out += [f"{'#' * section.level} {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, Table):
                out += [_md_table(block), ""]
            elif isinstance(block, Plot):
                out += [f"![{block.alt}]({plot_paths[block.name]})", "", block.caption, ""]
            else:
                out += [_md_paragraph(block), ""]
    return "\n".join(out)


def _render_html(title: str, sections: Sequence[Section]) -> str:
    nav = "".join(f'<li><a href="#{s.anchor}">{html.escape(s.title)}</a></li>'
                  for s in sections)
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>", f"<nav><ul>{nav}</ul></nav>",
    ]
    for section in sections:
        parts.append(f'<section id="{section.anchor}"><h{section.level}>'
                     f"{html.escape(section.title)}</h{section.level}>")
        for block in section.blocks:
            if isinstance(block, Table):
                parts.append(_html_table(block))
            elif isinstance(block, Plot):
                data = base64.b64encode(block.png).decode("ascii")
                parts.append(f'<figure><img alt="{html.escape(block.alt)}" '
                             f'src="data:image/png;base64,{data}">'
                             f"<figcaption>{_inline_html(block.caption)}</figcaption></figure>")
            else:
                parts.append(_html_paragraph(block))
        parts.append("</section>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _choose_baseline(cells: Sequence[CellStats], wanted: str | None) -> str | None:
    scenarios = list(dict.fromkeys(c.scenario for c in cells))
    if wanted is not None:
        if wanted not in scenarios:
            raise InputError([Problem("--baseline", "", f"no scenario {wanted!r} in this run "
                                      f"(scenarios: {', '.join(scenarios) or 'none'})")])
        return wanted
    if DEFAULT_BASELINE in scenarios:
        return DEFAULT_BASELINE
    return scenarios[0] if scenarios else None


def write_report(run_dir: Path, baseline: str | None = None, *,
                 noisy_cv: float = DEFAULT_NOISY_CV,
                 bootstrap: MedianBootstrap | None = None) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` into ``run_dir``; return their paths.

    Plots for the Markdown go to ``report-plots/`` beside it (replaced on each call); the
    HTML embeds the same images and needs nothing else.
    """
    # The cyclic garbage collector is paused throughout, as summarize_cells does while
    # reading: a big run is a million objects (cells, estimates, table rows), none in a
    # cycle, that each collection would walk again. Figures are cycles: see _draw_plots.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _write_report(Path(run_dir), baseline, noisy_cv, bootstrap, collecting)
    finally:
        if collecting:
            gc.enable()


def _write_report(run_dir: Path, baseline: str | None, noisy_cv: float,
                  bootstrap: MedianBootstrap | None, collecting: bool) -> tuple[Path, Path]:
    meta = _read_json(run_dir / RUN_JSON)
    if not isinstance(meta, dict):
        raise InputError([Problem(str(run_dir / RUN_JSON), "", "not a JSON object")])
    boot = bootstrap or MedianBootstrap()
    cells = summarize_cells(_samples(run_dir), noisy_cv=noisy_cv, bootstrap=boot)
    chosen = _choose_baseline(cells, baseline)
    view = _RunView(
        run_dir=run_dir, meta=meta, cells=cells, baseline=chosen,
        rps_ratios=ratios_to_baseline(cells, chosen, bootstrap=boot) if chosen else {},
        p99_ratios=(ratios_to_baseline(cells, chosen, metric="latency_ms.p99", bootstrap=boot)
                    if chosen else {}),
        facts=_facts(run_dir), noisy_cv=noisy_cv, bootstrap=boot,
    )
    plan = meta.get("plan") or {}
    planned = plan.get("repetitions") if isinstance(plan.get("repetitions"), int) else None
    plots = _draw_plots(_by_workload(cells), chosen, collecting)
    sections = [_summary_section(view, planned), *_workload_sections(view, plots)]
    noisy = _noisy_section(view)
    if noisy is not None:
        sections.append(noisy)
    sections += [_exclusions_section(view), _facts_section(view), _run_section(view),
                 _method_section(view)]
    title = f"cvmharness report: {meta.get('run_id', run_dir.name)}"

    plots_dir = run_dir / PLOTS_DIR
    if plots_dir.exists():
        shutil.rmtree(plots_dir)
    plot_paths: dict[str, str] = {}
    for section in sections:
        for block in section.blocks:
            if isinstance(block, Plot):
                plots_dir.mkdir(exist_ok=True)
                name = f"{_anchor(block.name)}.png"
                (plots_dir / name).write_bytes(block.png)
                plot_paths[block.name] = f"{PLOTS_DIR}/{name}"

    md_path = run_dir / "report.md"
    html_path = run_dir / "report.html"
    md_path.write_text(_render_md(title, sections, plot_paths), encoding="utf-8")
    html_path.write_text(_render_html(title, sections), encoding="utf-8")
    return md_path, html_path
