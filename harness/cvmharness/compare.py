"""Compare two runs cell by cell: did anything get slower, and can we tell?

A change is called a regression only when two things hold: it is larger than the
threshold a reader cares about (default 5%), and a Mann-Whitney U rank test over the
repetitions says it is unlikely to be noise (two-sided, alpha 0.05). The rank test,
because repetitions of a network benchmark are few, skewed and prone to one outlier,
and it assumes none of that away. It also has an honest limit: with 3 repetitions a side
the smallest p-value it can give is 0.1, so such cells are reported as "n too small for
significance" instead of being flagged or silently passed.

``scipy.stats.mannwhitneyu`` computes the test (exact distribution for small samples
without ties, normal approximation with tie correction otherwise).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from scipy.stats import mannwhitneyu

from cvmharness.errors import InputError, Problem
from cvmharness.stats import CellStats, MedianBootstrap, summarize_cells
from cvmharness.store import RUN_JSON, iter_samples

ALPHA = 0.05
Verdict = Literal["regressed", "improved", "unchanged", "within threshold", "n too small",
                  "no data"]


def min_p_value(n_a: int, n_b: int) -> float:
    """Smallest two-sided p-value an exact rank test can reach with these sample sizes.

    All of one side below all of the other is 1 arrangement of C(n_a + n_b, n_a); two-sided
    doubles it.
    """
    if n_a < 1 or n_b < 1:
        return 1.0
    return min(1.0, 2.0 / math.comb(n_a + n_b, n_a))


@dataclass(frozen=True)
class MetricChange:
    """One metric of one cell, run A (before) against run B (after)."""

    metric: str
    higher_is_better: bool
    n_a: int
    n_b: int
    median_a: float | None
    median_b: float | None
    change_pct: float | None
    """(median_b - median_a) / median_a, in percent."""
    p_value: float | None
    """Mann-Whitney U two-sided; None when it cannot be computed or cannot be significant."""
    verdict: Verdict

    @property
    def worse_pct(self) -> float | None:
        """How much worse B is than A, in percent (negative: better)."""
        if self.change_pct is None:
            return None
        return -self.change_pct if self.higher_is_better else self.change_pct


def _compare_values(metric: str, higher_is_better: bool, a: Sequence[float],
                    b: Sequence[float], threshold_pct: float, alpha: float) -> MetricChange:
    n_a, n_b = len(a), len(b)
    if not a or not b:
        return MetricChange(metric, higher_is_better, n_a, n_b, _median(a), _median(b), None,
                            None, "no data")
    med_a, med_b = _median(a), _median(b)
    assert med_a is not None and med_b is not None
    change = (med_b - med_a) / abs(med_a) * 100.0 if med_a != 0 else None
    worse = None if change is None else (-change if higher_is_better else change)
    if min_p_value(n_a, n_b) > alpha:
        return MetricChange(metric, higher_is_better, n_a, n_b, med_a, med_b, change, None,
                            "n too small")
    if len(set(a) | set(b)) == 1:
        p_value = 1.0
    else:
        p_value = float(mannwhitneyu(a, b, alternative="two-sided").pvalue)
    significant = p_value < alpha
    verdict: Verdict
    if worse is None or not significant:
        verdict = "unchanged"
    elif abs(worse) <= threshold_pct:
        verdict = "within threshold"
    else:
        verdict = "regressed" if worse > 0 else "improved"
    return MetricChange(metric, higher_is_better, n_a, n_b, med_a, med_b, change, p_value,
                        verdict)


def _median(values: Sequence[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2.0


@dataclass(frozen=True)
class CellComparison:
    cell_id: str
    rps: MetricChange
    p99: MetricChange

    @property
    def regressed(self) -> bool:
        return self.rps.verdict == "regressed" or self.p99.verdict == "regressed"

    @property
    def verdict(self) -> str:
        """The cell's overall word: a regression of either metric wins, then improvement."""
        verdicts = (self.rps.verdict, self.p99.verdict)
        for word in ("regressed", "improved"):
            if word in verdicts:
                return word
        if self.rps.verdict in ("no data", "n too small"):
            return "n too small for significance" if self.rps.verdict == "n too small" \
                else "no data"
        return self.rps.verdict


@dataclass(frozen=True)
class Comparison:
    run_a: Path
    run_b: Path
    threshold_pct: float
    alpha: float
    cells: tuple[CellComparison, ...]
    only_in_a: tuple[str, ...]
    only_in_b: tuple[str, ...]

    @property
    def regressed(self) -> tuple[CellComparison, ...]:
        return tuple(c for c in self.cells if c.regressed)

    @property
    def exit_code(self) -> int:
        """1 when any cell regressed (for CI gates), else 0."""
        return 1 if self.regressed else 0

    def format_text(self) -> str:
        """A terminal table, one line per common cell, then a verdict line."""
        rows = [("cell", "req/s A", "req/s B", "change", "p", "p99 A ms", "p99 B ms",
                 "change", "p", "verdict")]
        for c in self.cells:
            rows.append((
                c.cell_id, _num(c.rps.median_a), _num(c.rps.median_b), _pct(c.rps.change_pct),
                _p(c.rps), _num(c.p99.median_a, ms=True), _num(c.p99.median_b, ms=True),
                _pct(c.p99.change_pct), _p(c.p99), c.verdict,
            ))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [f"A: {self.run_a}", f"B: {self.run_b}",
                 f"regression: worse by more than {self.threshold_pct:g}% and Mann-Whitney U "
                 f"p < {self.alpha:g} (two-sided), on req/s or p99 latency", ""]
        for row in rows:
            lines.append("  ".join(v.ljust(w) if i in (0, 9) else v.rjust(w)
                                   for i, (v, w) in enumerate(zip(row, widths, strict=True)))
                         .rstrip())
        small = [c for c in self.cells if c.rps.verdict == "n too small"]
        if small:
            lines.append("")
            lines.append(f"{len(small)} cell(s): n too small for significance (with "
                         f"{small[0].rps.n_a} and {small[0].rps.n_b} repetitions the smallest "
                         f"possible p is {min_p_value(small[0].rps.n_a, small[0].rps.n_b):.3g});"
                         " run more repetitions to decide.")
        if self.only_in_a:
            lines.append(f"only in A ({len(self.only_in_a)}): {', '.join(self.only_in_a)}")
        if self.only_in_b:
            lines.append(f"only in B ({len(self.only_in_b)}): {', '.join(self.only_in_b)}")
        lines.append("")
        count = len(self.regressed)
        lines.append(f"{count} of {len(self.cells)} common cells regressed" if count else
                     f"no regression in {len(self.cells)} common cells")
        return "\n".join(lines)


def _num(x: float | None, ms: bool = False) -> str:
    if x is None:
        return "-"
    if ms:
        return f"{x:.3g}" if x < 100 else f"{x:,.0f}"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:+.1f}%"


def _p(m: MetricChange) -> str:
    return "-" if m.p_value is None else f"{m.p_value:.3f}"


def _cells(run_dir: Path) -> dict[str, CellStats]:
    if not (run_dir / RUN_JSON).is_file():
        raise InputError([Problem(str(run_dir), "", "not a run directory (no run.json)")])
    # Compare uses only medians and raw values: one resample keeps the summary cheap.
    boot = MedianBootstrap(resamples=2)
    try:
        cells = summarize_cells(iter_samples(run_dir), bootstrap=boot)
    except ValueError as exc:
        raise InputError([Problem(str(run_dir / "samples.ndjson"), "",
                                  f"a line is not valid JSON: {exc}")]) from None
    return {c.cell_id: c for c in cells}


def _values(cell: CellStats, key: str) -> tuple[float, ...]:
    est = cell.metrics.get(key)
    return est.values if est is not None else ()


def compare_runs(run_a: Path, run_b: Path, threshold_pct: float = 5.0,
                 alpha: float = ALPHA) -> Comparison:
    """Compare B (new) against A (reference) on every cell id they share."""
    cells_a, cells_b = _cells(Path(run_a)), _cells(Path(run_b))
    common = [cid for cid in cells_a if cid in cells_b]
    out = []
    for cid in common:
        a, b = cells_a[cid], cells_b[cid]
        out.append(CellComparison(
            cell_id=cid,
            rps=_compare_values("requests_per_sec", True, _values(a, "requests_per_sec"),
                                _values(b, "requests_per_sec"), threshold_pct, alpha),
            p99=_compare_values("latency_ms.p99", False, _values(a, "latency_ms.p99"),
                                _values(b, "latency_ms.p99"), threshold_pct, alpha),
        ))
    return Comparison(
        run_a=Path(run_a), run_b=Path(run_b), threshold_pct=threshold_pct, alpha=alpha,
        cells=tuple(out),
        only_in_a=tuple(cid for cid in cells_a if cid not in cells_b),
        only_in_b=tuple(cid for cid in cells_b if cid not in cells_a),
    )
