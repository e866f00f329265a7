"""Statistics over the repetitions of each cell: what the report and compare stand on.

A cell's result is the *median* over its ``ok`` repetitions, with a bootstrap 95%
confidence interval of that median. The median, not the mean, because one disturbed
repetition (a noisy neighbour, a GC pause in the guest) should move the answer as
little as possible; a bootstrap interval, because repetitions of a network benchmark are
few and not normal, so a t-interval would claim a precision we do not have.

The bootstrap is computed without materialising resamples. The median of a resample of
``n`` sorted values is fixed by the ranks of its middle order statistics, and the k-th
smallest of ``n`` uniform indices is ``floor(n * U(k))`` with ``U(k) ~ Beta(k, n + 1 - k)``
(the next one is ``U(k) + (1 - U(k)) * Beta(1, n - k)``). So for each sample size we draw
the middle ranks of ``resamples`` resamples once, from a seeded generator, and every cell
of that size reuses them: the same distribution as resampling, in O(resamples) instead of
O(resamples * n) per cell. That is what lets a report of 100,000 samples take seconds.
Because the draws depend only on (seed, n), results are reproducible to the last digit.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from operator import itemgetter
from typing import Any

import numpy as np
import numpy.typing as npt

DEFAULT_RESAMPLES = 10_000
DEFAULT_SEED = 20_250_101
DEFAULT_CONFIDENCE = 0.95
DEFAULT_NOISY_CV = 0.05
"""A cell whose requests/sec vary more than 5% (stdev / mean) across repetitions."""

LATENCY_KEYS = ("mean", "stdev", "max", "p50", "p75", "p90", "p99", "p999")
ERROR_KINDS = ("connect", "read", "write", "timeout", "status")
THROUGHPUT_KEYS = ("requests_per_sec", "bytes_per_sec")

_ATOMS_CHUNK = 2_000_000
"""Upper bound on the matrix elements held at once while computing quantiles."""
_EXACT_RATIO_ATOMS = 4_096
"""Above this many (numerator x denominator) atoms a ratio CI pairs draws one to one."""
_PRUNE_MAX_ATOMS = 4_096
"""Up to this many atoms, which can hold an end of a CI is worked out (atoms x atoms)."""
_PRUNE_MAX_PAIRED_ATOMS = 640
"""Likewise for paired ratio CIs (two products of matrices this size, once per shape)."""
_PRUNE_MIN_ROWS = 32
"""Fewer rows than this (cells of one size) are cheaper to compute in full."""

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Estimate:
    """One metric of one cell over its ok repetitions."""

    n: int
    median: float
    mean: float
    stdev: float | None
    """Sample standard deviation (n - 1); None with one repetition."""
    cv: float | None
    """stdev / mean; None when it cannot be told (one repetition, zero mean)."""
    ci_low: float | None
    """Bootstrap percentile interval of the median; None with one repetition."""
    ci_high: float | None
    minimum: float
    maximum: float
    values: tuple[float, ...] = field(repr=False, compare=False)
    """The repetitions' values in the order recorded, for ratios and rank tests."""


@dataclass(frozen=True)
class Ratio:
    """median(numerator) / median(denominator), with a bootstrap interval."""

    value: float
    ci_low: float | None
    ci_high: float | None
    n_num: int
    n_den: int


@dataclass(frozen=True)
class Exclusion:
    """A repetition left out of the statistics, and why."""

    repetition: int
    status: str
    reason: str | None


@dataclass(frozen=True)
class CellStats:
    """Everything the report says about one cell."""

    cell_id: str
    scenario: str
    workload: str
    tool: str | None
    params: Mapping[str, Any]
    recorded: int
    """Repetitions that have a line in samples.ndjson (any status)."""
    ok: int
    metrics: Mapping[str, Estimate]
    """``requests_per_sec``, ``bytes_per_sec``, ``latency_ms.<key>``: those measured."""
    errors: Mapping[str, int]
    """Socket errors and non-2xx/3xx responses, summed over the ok repetitions."""
    excluded: tuple[Exclusion, ...]
    noisy: bool
    """requests/sec CV above the threshold: the median is less trustworthy than it looks."""

    @property
    def rps(self) -> Estimate | None:
        return self.metrics.get("requests_per_sec")

    def latency(self, key: str) -> Estimate | None:
        return self.metrics.get(f"latency_ms.{key}")

    @property
    def status(self) -> str:
        """``ok`` when anything was measured, else the status its repetitions share."""
        if self.ok:
            return "ok"
        kinds = {e.status for e in self.excluded}
        return kinds.pop() if len(kinds) == 1 else "failed"

    @property
    def suffix(self) -> str:
        """The cell id without scenario and workload: the sweep point, e.g. ``.connections-100``."""
        head = f"{self.scenario}.{self.workload}"
        return self.cell_id[len(head):] if self.cell_id.startswith(head) else ""


# --------------------------------------------------------------------------- bootstrap


class MedianBootstrap:
    """Bootstrap distribution of the median for any sample size, seeded and cached.

    ``atoms(n)`` describes the medians of ``resamples`` resamples of ``n`` sorted values as
    pairs of ranks (lower, upper middle order statistic; equal for odd n) with how often
    each pair was drawn. Any cell with n values gets its bootstrap medians as
    ``(v[lo] + v[hi]) / 2`` over those pairs.
    """

    def __init__(self, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
                 confidence: float = DEFAULT_CONFIDENCE) -> None:
        if resamples < 2:
            raise ValueError("the bootstrap needs at least 2 resamples")
        if not 0.0 < confidence < 1.0:
            raise ValueError("confidence must be between 0 and 1")
        self.resamples = resamples
        self.seed = seed
        self.confidence = confidence
        self._ranks: dict[tuple[int, int], tuple[IntArray, IntArray]] = {}
        self._atoms: dict[tuple[int, int],
                          tuple[IntArray, IntArray, IntArray, IntArray]] = {}
        self._tails: dict[tuple[int, bool], tuple[_Tail, _Tail]] = {}
        self._ratio_plans: dict[tuple[int, int, bool], tuple[_Tail, _Tail] | None] = {}

    @property
    def quantiles(self) -> tuple[float, float]:
        tail = (1.0 - self.confidence) / 2.0
        return tail, 1.0 - tail

    def ranks(self, n: int, stream: int = 0) -> tuple[IntArray, IntArray]:
        """0-based ranks of the lower and upper middle value of each resample.

        ``stream`` gives independent draws for the same n (numerator and denominator of
        a ratio of two cells of equal size must not share resamples).
        """
        key = (n, stream)
        if key not in self._ranks:
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, n, stream]))
            k = (n + 1) // 2
            u_lo = rng.beta(k, n + 1 - k, size=self.resamples)
            # for even n the upper middle rank follows the lower one: see the module doc
            u_hi = u_lo if n % 2 else u_lo + (1.0 - u_lo) * rng.beta(1, n - k,
                                                                      size=self.resamples)
            lo = np.minimum((u_lo * n).astype(np.int64), n - 1)
            hi = np.minimum((u_hi * n).astype(np.int64), n - 1)
            self._ranks[key] = (lo, hi)
        return self._ranks[key]

    def atoms(self, n: int, stream: int = 0) -> tuple[IntArray, IntArray, IntArray, IntArray]:
        """Distinct (lo, hi) rank pairs, how often each was drawn (summing to resamples),
        and for each draw the index of its pair."""
        key = (n, stream)
        if key not in self._atoms:
            lo, hi = self.ranks(n, stream)
            codes, inverse, counts = np.unique(lo * n + hi, return_inverse=True,
                                               return_counts=True)
            self._atoms[key] = (codes // n, codes % n, counts.astype(np.int64),
                                inverse.astype(np.int64))
        return self._atoms[key]

    def median_cis(self, rows: FloatArray) -> FloatArray:
        """Percentile CI of the median for each row of sorted values (C x n) -> (C x 2)."""
        count, n = rows.shape
        out = np.full((count, 2), np.nan)
        if n < 2 or count == 0:
            return out
        lo, hi, counts, _ = self.atoms(n)
        pruned = count >= _PRUNE_MIN_ROWS or len(counts) <= _PRUNE_MIN_ROWS
        for column, tail in enumerate(self._median_tails(n, pruned)):
            t_lo, t_hi, t_w = lo[tail.members], hi[tail.members], counts[tail.members]
            step = max(1, _ATOMS_CHUNK // max(1, len(t_w)))
            for start in range(0, count, step):
                block = rows[start:start + step]
                medians = (block[:, t_lo] + block[:, t_hi]) / 2.0
                out[start:start + step, column] = _weighted_order_statistic(medians, t_w, tail)
        return out

    def _median_tails(self, n: int, pruned: bool) -> tuple[_Tail, _Tail]:
        """The atoms of sample size n that can hold each end of the interval (all of them
        when not ``pruned``: for a few rows, finding out costs more than it saves)."""
        lo, hi, counts, _ = self.atoms(n)
        pruned = pruned and len(counts) <= _PRUNE_MAX_ATOMS
        key = (n, pruned)
        if key not in self._tails:
            if pruned:
                le = _rank_dominance(lo, hi).astype(np.int64)
                below, above = counts @ le - counts, le @ counts - counts
            else:
                below = above = np.zeros(len(counts), dtype=np.int64)
            self._tails[key] = _tails(below, above, counts, self.resamples, self.quantiles)
        return self._tails[key]

    def ratio_cis(self, num: FloatArray, den: FloatArray) -> FloatArray:
        """Percentile CI of median(num)/median(den) per row; rows sorted, (C x n_a), (C x n_b).

        Numerator and denominator are resampled independently (different streams). With
        few distinct bootstrap medians (small n) every pairing of the two sets is weighed,
        which is exact for the drawn resamples; otherwise the i-th resample of one is
        paired with the i-th of the other.

        Rows whose bootstrap medians are all positive (numerator: not negative) take a
        shortcut with the same result: see _tails.
        """
        count, n_a = num.shape
        n_b = den.shape[1]
        out = np.full((count, 2), np.nan)
        if count == 0 or n_a < 1 or n_b < 1 or (n_a < 2 and n_b < 2):
            return out
        a_lo, a_hi, a_w, a_draw = self._atoms_or_point(n_a, stream=0)
        b_lo, b_hi, b_w, b_draw = self._atoms_or_point(n_b, stream=1)
        pairs = len(a_w) * len(b_w)
        exact = pairs <= _EXACT_RATIO_ATOMS
        width = pairs if exact else self.resamples
        step = max(1, _ATOMS_CHUNK // width)
        weights = np.outer(a_w, b_w).ravel()
        total = int(a_w.sum() * b_w.sum())
        tails = self._ratio_tails(n_a, n_b, exact) if count >= _PRUNE_MIN_ROWS else None
        for start in range(0, count, step):
            stop = min(start + step, count)
            a = (num[start:stop, a_lo] + num[start:stop, a_hi]) / 2.0
            b = (den[start:stop, b_lo] + den[start:stop, b_hi]) / 2.0
            if not exact:  # float32: half the memory traffic; CIs are printed to 3 digits
                a, b = a.astype(np.float32), b.astype(np.float32)
            if tails is None:
                rows, other = np.arange(0), np.arange(stop - start)
            else:  # a / b grows with a and falls with b only where a >= 0 and b > 0
                monotone = (np.isfinite(a).all(axis=1) & np.isfinite(b).all(axis=1)
                            & (a >= 0).all(axis=1) & (b > 0).all(axis=1))
                rows, other = np.flatnonzero(monotone), np.flatnonzero(~monotone)
            with np.errstate(divide="ignore", invalid="ignore"):
                if len(rows) and tails is not None:
                    a_m, b_m = a[rows], b[rows]
                    for column, tail in enumerate(tails):
                        t_a, t_b = tail.members // len(b_w), tail.members % len(b_w)
                        ratios = a_m[:, t_a] / b_m[:, t_b]
                        out[start + rows, column] = (
                            _weighted_order_statistic(ratios, weights[tail.members], tail)
                            if exact else _order_statistic(ratios, tail))
                if len(other) and exact:
                    every_pair = (a[other, :, None] / b[other, None, :]).reshape(len(other),
                                                                                 pairs)
                    out[start + other] = _weighted_quantiles(every_pair, weights, total,
                                                             self.quantiles)
                elif len(other):
                    paired = a[other][:, a_draw] / b[other][:, b_draw]
                    out[start + other] = _linear_quantiles(paired, self.quantiles)
        return out

    def _ratio_tails(self, n_a: int, n_b: int, exact: bool
                     ) -> tuple[_Tail, _Tail] | None:
        """For rows with positive medians: the (numerator, denominator) atom pairs that can
        hold each end of the interval, as ``a_atom * len(b_atoms) + b_atom``; exact: every
        pair, weighed; otherwise one member per resample (its pair, repeated)."""
        key = (n_a, n_b, exact)
        if key not in self._ratio_plans:
            a_lo, a_hi, a_w, a_draw = self._atoms_or_point(n_a, stream=0)
            b_lo, b_hi, b_w, b_draw = self._atoms_or_point(n_b, stream=1)
            plan: tuple[_Tail, _Tail] | None = None
            if exact:
                # a pair is below another when its numerator atom is and its denominator
                # atom is above; pairs are weighed a_w x b_w, so the sums factor
                le_a = _rank_dominance(a_lo, a_hi).astype(np.int64)
                le_b = _rank_dominance(b_lo, b_hi).astype(np.int64)
                weights = np.outer(a_w, b_w)
                below = np.outer(a_w @ le_a, le_b @ b_w) - weights
                above = np.outer(le_a @ a_w, b_w @ le_b) - weights
                plan = _tails(below.ravel(), above.ravel(), weights.ravel(),
                              int(weights.sum()), self.quantiles)
            elif max(len(a_w), len(b_w)) <= _PRUNE_MAX_PAIRED_ATOMS:
                le_a = _rank_dominance(a_lo, a_hi).astype(np.float64)
                le_b = _rank_dominance(b_lo, b_hi).astype(np.float64)
                drawn = np.zeros((len(a_w), len(b_w)))
                np.add.at(drawn, (a_draw, b_draw), 1.0)
                # exact in float64 (counts below 2**53); BLAS makes it quick
                below = np.rint(le_a.T @ drawn @ le_b.T - drawn).astype(np.int64)
                above = np.rint(le_a @ drawn @ le_b - drawn).astype(np.int64)
                per_draw = a_draw * len(b_w) + b_draw
                plan = _tails(below.ravel()[per_draw], above.ravel()[per_draw],
                              np.ones(len(per_draw), dtype=np.int64), len(per_draw),
                              self.quantiles, members=per_draw)
            self._ratio_plans[key] = plan
        return self._ratio_plans[key]

    def _atoms_or_point(self, n: int, stream: int) -> tuple[IntArray, IntArray, IntArray,
                                                             IntArray]:
        """Atoms of a sample size; one certain atom for n = 1 (its only median)."""
        if n == 1:
            zero = np.zeros(1, dtype=np.int64)
            return (zero, zero, np.array([self.resamples], dtype=np.int64),
                    np.zeros(self.resamples, dtype=np.int64))
        return self.atoms(n, stream)


@dataclass(frozen=True)
class _Tail:
    """Where one end of a percentile interval lies among fewer candidates.

    A bootstrap value is a function of two ranks (or two atoms) that never decreases when
    either rank grows (or, for a denominator, shrinks), whatever the sorted row. So if
    some candidate has at least k units of weight below it *in that order*, the k
    smallest values of every row are found without it: it may be dropped when only the
    k smallest matter (and likewise from the top). Dropping all of them is safe too:
    the lowest dropped candidate has its k below it all kept. The order statistics, and
    so the interval, are then exactly those over all candidates.
    """

    members: IntArray
    """Indices of the candidates kept (atoms, atom pairs or resamples)."""
    positions: tuple[int, int]
    """The two order statistics (0-based, over the kept candidates' weights) to blend."""
    frac: float
    """How far between them: numpy's 'linear' interpolation."""


def _rank_dominance(lo: IntArray, hi: IntArray) -> npt.NDArray[np.bool_]:
    """le[i, j]: atom i's median is at most atom j's in every sorted row (both ranks)."""
    return (lo[:, None] <= lo[None, :]) & (hi[:, None] <= hi[None, :])


def _tails(below: IntArray, above: IntArray, weights: IntArray, total: int,
           qs: Sequence[float], members: IntArray | None = None) -> tuple[_Tail, _Tail]:
    """Candidates for each quantile of the (weighted) values, as _Tail explains.

    ``below[i]``/``above[i]``: weight of the *other* candidates that are at most/at least
    candidate i in every row. Each quantile keeps the side (bottom or top) with fewer
    values to reach; ``members`` (default: the indices) is what the kept ones stand for.
    """
    out = []
    for q in qs:
        h = (total - 1) * q
        j = math.floor(h)
        first, second = j, min(j + 1, total - 1)
        if second + 1 <= total - first:  # the (second + 1) smallest suffice
            keep = np.flatnonzero(below < second + 1)
            shift = 0
        else:  # the (total - first) largest suffice
            keep = np.flatnonzero(above < total - first)
            shift = total - int(weights[keep].sum())
        out.append(_Tail(keep if members is None else members[keep],
                         (first - shift, second - shift), h - j))
    return out[0], out[1]


def _weighted_order_statistic(values: FloatArray, weights: IntArray, tail: _Tail
                              ) -> FloatArray:
    """Per row, the value at ``tail.positions`` of the sample with every value repeated
    ``weight`` times, blended by ``tail.frac``: as _weighted_quantiles computes it."""
    order = np.argsort(values, axis=1)
    ordered = np.take_along_axis(values, order, axis=1)
    cumulative = np.cumsum(weights[order], axis=1)
    last = ordered.shape[1] - 1
    rows = np.arange(ordered.shape[0])
    first, second = tail.positions
    x_j = ordered[rows, np.minimum((cumulative <= first).sum(axis=1), last)]
    x_next = ordered[rows, np.minimum((cumulative <= second).sum(axis=1), last)]
    out: FloatArray = x_j + tail.frac * (x_next - x_j)
    return out


def _order_statistic(values: npt.NDArray[np.floating[Any]], tail: _Tail
                     ) -> npt.NDArray[np.floating[Any]]:
    """Per row, the values at ``tail.positions`` blended by ``tail.frac``, by partial sort
    (as _linear_quantiles does; in the values' own precision)."""
    first, second = tail.positions
    part = np.partition(values, sorted({first, second}), axis=1)
    low = part[:, first]
    out: npt.NDArray[np.floating[Any]] = low + tail.frac * (part[:, second] - low)
    return out


def _linear_quantiles(values: npt.NDArray[np.floating[Any]], qs: Sequence[float]
                      ) -> FloatArray:
    """numpy's default ('linear') quantiles per row, by partial sort only (NaN-free rows)."""
    last = values.shape[1] - 1
    positions = [(last * q, math.floor(last * q)) for q in qs]
    kth = sorted({k for _, j in positions for k in (j, min(j + 1, last))})
    part = np.partition(values, kth, axis=1)
    out = np.empty((values.shape[0], len(qs)))
    for column, (h, j) in enumerate(positions):
        low = part[:, j]
        out[:, column] = low + (h - j) * (part[:, min(j + 1, last)] - low)
    return out


def _weighted_quantiles(values: FloatArray, weights: IntArray, total: int,
                        qs: Sequence[float]) -> FloatArray:
    """Quantiles per row of a weighted sample, as numpy's default ('linear') would give
    on the sample with every value repeated ``weight`` times (``total`` values in all)."""
    order = np.argsort(values, axis=1, kind="stable")
    ordered = np.take_along_axis(values, order, axis=1)
    cumulative = np.cumsum(weights[order], axis=1)
    last = ordered.shape[1] - 1
    out = np.empty((ordered.shape[0], len(qs)))
    for column, q in enumerate(qs):
        h = (total - 1) * q
        j = math.floor(h)
        frac = h - j
        at_j = np.minimum((cumulative <= j).sum(axis=1), last)
        at_next = np.minimum((cumulative <= j + 1).sum(axis=1), last)
        rows = np.arange(ordered.shape[0])
        x_j = ordered[rows, at_j]
        x_next = ordered[rows, at_next]
        out[:, column] = x_j + frac * (x_next - x_j)
    return out


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _estimate_matrix(raw: FloatArray, boot: MedianBootstrap) -> list[Estimate]:
    """Estimates for each row of a (C x n) matrix of finite values, in row order."""
    count, n = raw.shape
    rows = np.sort(raw, axis=1)
    medians = np.median(rows, axis=1)
    means = rows.mean(axis=1)
    if n > 1:
        stdevs = rows.std(axis=1, ddof=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            cvs = stdevs / np.abs(means)
    else:
        stdevs = np.full(count, np.nan)
        cvs = stdevs
    cis = boot.median_cis(rows)
    columns = zip(raw.tolist(), medians.tolist(), means.tolist(), stdevs.tolist(),
                  cvs.tolist(), cis[:, 0].tolist(), cis[:, 1].tolist(), rows[:, 0].tolist(),
                  rows[:, -1].tolist(), strict=True)
    isfinite = math.isfinite
    if not _FAST_ESTIMATES:
        return [
            Estimate(  # positional: this runs once per cell and metric
                n, median, mean,
                stdev if isfinite(stdev) else None,
                cv if isfinite(cv) else None,
                ci_low if isfinite(ci_low) else None,
                ci_high if isfinite(ci_high) else None,
                low, high, tuple(values),
            )
            for values, median, mean, stdev, cv, ci_low, ci_high, low, high in columns
        ]
    # The same objects, built as __init__ would leave them, at half the cost: a frozen
    # dataclass's __init__ sets each field through object.__setattr__ (20,000 cells x 9
    # metrics take ~0.2 s that way).
    new, set_attribute = object.__new__, object.__setattr__
    out = []
    for values, median, mean, stdev, cv, ci_low, ci_high, low, high in columns:
        est = new(Estimate)
        set_attribute(est, "__dict__", {
            "n": n, "median": median, "mean": mean,
            "stdev": stdev if isfinite(stdev) else None,
            "cv": cv if isfinite(cv) else None,
            "ci_low": ci_low if isfinite(ci_low) else None,
            "ci_high": ci_high if isfinite(ci_high) else None,
            "minimum": low, "maximum": high, "values": tuple(values)})
        out.append(est)
    return out


_FAST_ESTIMATES = (
    tuple(f.name for f in fields(Estimate)) == ("n", "median", "mean", "stdev", "cv", "ci_low",
                                                 "ci_high", "minimum", "maximum", "values")
    and not hasattr(Estimate, "__post_init__") and not hasattr(Estimate, "__slots__"))
"""Whether _estimate_matrix may build Estimates by their __dict__ (a plain dataclass)."""


def estimate_groups(groups: Sequence[Sequence[float]],
                    bootstrap: MedianBootstrap | None = None) -> list[Estimate]:
    """Estimates for many value lists at once (vectorised by list length)."""
    boot = bootstrap or MedianBootstrap()
    out: list[Estimate | None] = [None] * len(groups)
    by_n: dict[int, list[int]] = {}
    for index, values in enumerate(groups):
        if not values:
            raise ValueError("an estimate needs at least one value")
        by_n.setdefault(len(values), []).append(index)
    for n, indices in by_n.items():
        raw = np.array([groups[i] for i in indices], dtype=np.float64).reshape(len(indices), n)
        for index, est in zip(indices, _estimate_matrix(raw, boot), strict=True):
            out[index] = est
    return [e for e in out if e is not None]


def estimate(values: Sequence[float], bootstrap: MedianBootstrap | None = None) -> Estimate:
    """Median, mean, stdev, CV and bootstrap CI of the median of one list of values."""
    return estimate_groups([values], bootstrap)[0]


def ratios(pairs: Sequence[tuple[Sequence[float], Sequence[float]]],
           bootstrap: MedianBootstrap | None = None) -> list[Ratio]:
    """median(a)/median(b) with a bootstrap CI, for many (a, b) pairs at once."""
    boot = bootstrap or MedianBootstrap()
    out: list[Ratio | None] = [None] * len(pairs)
    by_shape: dict[tuple[int, int], list[int]] = {}
    for index, (a, b) in enumerate(pairs):
        if not a or not b:
            raise ValueError("a ratio needs values on both sides")
        by_shape.setdefault((len(a), len(b)), []).append(index)
    for (n_a, n_b), indices in by_shape.items():
        num = np.sort(np.array([pairs[i][0] for i in indices], dtype=np.float64)
                      .reshape(len(indices), n_a), axis=1)
        den = np.sort(np.array([pairs[i][1] for i in indices], dtype=np.float64)
                      .reshape(len(indices), n_b), axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            values = np.median(num, axis=1) / np.median(den, axis=1)
        cis = boot.ratio_cis(num, den)
        for row, index in enumerate(indices):
            out[index] = Ratio(value=float(values[row]),
                               ci_low=_finite(float(cis[row, 0])),
                               ci_high=_finite(float(cis[row, 1])),
                               n_num=n_a, n_den=n_b)
    return [r for r in out if r is not None]


def ratio(num: Sequence[float], den: Sequence[float],
          bootstrap: MedianBootstrap | None = None) -> Ratio:
    return ratios([(num, den)], bootstrap)[0]


# --------------------------------------------------------------------------- cells


_METRIC_KEYS = (*THROUGHPUT_KEYS, *(f"latency_ms.{k}" for k in LATENCY_KEYS if k != "stdev"))
"""Metrics estimated per cell. wrk's latency stdev is a spread within one run, not a
quantity to put a confidence interval on across runs, so it is left out."""
_LATENCY_ESTIMATED = tuple(k for k in LATENCY_KEYS if k != "stdev")

_Flat = tuple[float | None, ...]
"""One repetition's metrics as numbers: _METRIC_KEYS, then ERROR_KINDS."""


@dataclass
class _CellAccumulator:
    cell_id: str
    scenario: str
    workload: str
    tool: str | None
    params: Mapping[str, Any]
    by_repetition: dict[int, tuple[str, str | None, _Flat | None]] = field(
        default_factory=dict)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


_LATENCY_VALUES = itemgetter(*_LATENCY_ESTIMATED)
_ERROR_VALUES = itemgetter(*ERROR_KINDS)


def _flatten(metrics: dict[str, Any]) -> _Flat:
    """The numbers of a metrics object, so that the object itself need not be kept:
    100,000 samples as nested dicts would take hundreds of MB. Written out in full
    because it runs once per sample; values are checked later, per cell, with numpy."""
    get = metrics.get
    latency = get("latency_ms")
    errors = get("errors")
    if type(metrics) is dict and type(latency) is dict and type(errors) is dict:
        try:  # the usual case, plain JSON objects with every key: a few C calls
            return (metrics["requests_per_sec"], metrics["bytes_per_sec"],
                    *_LATENCY_VALUES(latency), *_ERROR_VALUES(errors))
        except KeyError:
            pass
    lat = latency.get if isinstance(latency, dict) else _none
    err = errors.get if isinstance(errors, dict) else _none
    return (get("requests_per_sec"), get("bytes_per_sec"), lat("mean"), lat("max"),
            lat("p50"), lat("p75"), lat("p90"), lat("p99"), lat("p999"),
            err("connect"), err("read"), err("write"), err("timeout"), err("status"))


def _none(key: str) -> None:
    return None


def _matrix(rows: Sequence[Sequence[_Flat]]) -> FloatArray:
    """Cells x repetitions x numbers as floats, NaN where a value is missing or not a
    number (a string in a hand-edited file, say)."""
    try:
        out = np.array(rows, dtype=np.float64)
    except (TypeError, ValueError):  # something that is not a number: check one by one
        out = np.array([[[_number(v) if _number(v) is not None else np.nan for v in flat]
                         for flat in cell] for cell in rows], dtype=np.float64)
    out[~np.isfinite(out)] = np.nan
    return out


def summarize_cells(samples: Iterable[Mapping[str, Any]], *,
                    noisy_cv: float = DEFAULT_NOISY_CV,
                    bootstrap: MedianBootstrap | None = None) -> list[CellStats]:
    """Per-cell statistics, in the order cells first appear in the samples.

    Only ``ok`` repetitions are measured; every other one is listed as an exclusion with
    its reason. A repetition recorded twice (a resumed run that repeated it) counts once,
    the later line winning, as ``--resume`` would have it. ``samples`` may be a stream:
    each sample is reduced to its numbers as it is read.
    """
    boot = bootstrap or MedianBootstrap()
    with _gc_paused():
        return _summarize(_accumulate(samples), boot, noisy_cv)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while samples are read and summarized, then
    restore it.

    Reading creates ~20 container objects per sample and frees them at once, and the
    summary keeps an Estimate (with a tuple of values) per cell and metric; none form
    cycles, but every ~700 allocations the collector walks the survivors, which makes
    reading 100,000 samples about a third slower and the summary of 20,000 cells nearly
    twice as slow. Reference counting still frees everything; the previous GC state is
    restored even on error.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _accumulate(samples: Iterable[Mapping[str, Any]]) -> dict[str, _CellAccumulator]:
    cells: dict[str, _CellAccumulator] = {}
    # The loop below runs once per sample (100,000 in a big run): plain dict checks
    # (JSON objects are dicts) and bound methods, no per-sample abstractions.
    for sample in samples:
        get = sample.get
        cell_id = str(get("cell_id"))
        acc = cells.get(cell_id)
        if acc is None:
            acc = _CellAccumulator(
                cell_id=cell_id,
                scenario=str(get("scenario")),
                workload=str(get("workload")),
                tool=get("tool"),
                params=get("params") or {},
            )
            cells[cell_id] = acc
        repetition = get("repetition")
        if type(repetition) is not int:
            repetition = int(repetition or 0)
        metrics = get("metrics")
        acc.by_repetition[repetition] = (str(get("status")), get("reason"),
                                         _flatten(metrics) if isinstance(metrics, dict)
                                         else None)
    return cells


def _summarize(cells: Mapping[str, _CellAccumulator], boot: MedianBootstrap,
               noisy_cv: float) -> list[CellStats]:
    """Estimates for every cell and metric, computed per group of cells with the same
    number of ok repetitions: one numpy pass per group, not one per cell."""
    metric_count = len(_METRIC_KEYS)
    parts: list[tuple[_CellAccumulator, int, dict[str, int], tuple[Exclusion, ...]]] = []
    per_cell: list[dict[str, Estimate]] = []
    by_n: dict[int, list[tuple[int, list[_Flat]]]] = {}
    for index, acc in enumerate(cells.values()):
        excluded: list[Exclusion] = []
        rows: list[_Flat] = []
        for repetition in sorted(acc.by_repetition):
            status, reason, flat = acc.by_repetition[repetition]
            if status != "ok" or flat is None:
                why = reason if status != "ok" else (reason or "no metrics recorded")
                excluded.append(Exclusion(repetition, status if status != "ok" else "invalid",
                                          why))
                continue
            rows.append(flat)
        if rows:
            by_n.setdefault(len(rows), []).append((index, rows))
        parts.append((acc, len(rows), dict.fromkeys(ERROR_KINDS, 0), tuple(excluded)))
        per_cell.append({})

    ragged: list[list[float]] = []
    ragged_slots: list[tuple[int, str]] = []
    for members in by_n.values():
        indices = [index for index, _ in members]
        table = _matrix([rows for _, rows in members])  # C x n x (metrics + errors)
        sums = np.nansum(table[:, :, metric_count:], axis=1)
        for index, row in zip(indices, sums.tolist(), strict=True):
            parts[index][2].update(zip(ERROR_KINDS, (int(v) for v in row), strict=True))
        for column, key in enumerate(_METRIC_KEYS):
            values = table[:, :, column]
            missing = np.isnan(values)
            complete = ~missing.any(axis=1)
            if complete.any():
                chosen = [indices[row] for row in np.flatnonzero(complete).tolist()]
                for index, est in zip(chosen, _estimate_matrix(values[complete], boot),
                                      strict=True):
                    per_cell[index][key] = est
            for row in np.flatnonzero(~complete & ~missing.all(axis=1)).tolist():
                ragged_slots.append((indices[row], key))
                ragged.append(values[row][~missing[row]].tolist())
    for (index, key), est in zip(ragged_slots, estimate_groups(ragged, boot), strict=True):
        per_cell[index][key] = est

    out: list[CellStats] = []
    for (acc, ok, errors, exclusions), metrics in zip(parts, per_cell, strict=True):
        rps = metrics.get("requests_per_sec")
        out.append(CellStats(
            cell_id=acc.cell_id,
            scenario=acc.scenario,
            workload=acc.workload,
            tool=acc.tool,
            params=acc.params,
            recorded=len(acc.by_repetition),
            ok=ok,
            metrics=metrics,
            errors=errors,
            excluded=exclusions,
            noisy=bool(rps is not None and rps.cv is not None and rps.cv > noisy_cv),
        ))
    return out


def baseline_cell_id(cell: CellStats, baseline: str) -> str:
    """The cell of the baseline scenario with the same workload and sweep point."""
    return f"{baseline}.{cell.workload}{cell.suffix}"


def ratios_to_baseline(cells: Sequence[CellStats], baseline: str, *,
                       metric: str = "requests_per_sec",
                       bootstrap: MedianBootstrap | None = None) -> dict[str, Ratio]:
    """Ratio of each cell's median ``metric`` to its baseline cell's, keyed by cell id.

    Cells of the baseline scenario itself and cells without a measured counterpart are
    absent: a ratio to nothing is not 1.0, it is unknown.
    """
    by_id = {c.cell_id: c for c in cells}
    wanted: list[tuple[str, tuple[float, ...], tuple[float, ...]]] = []
    for cell in cells:
        if cell.scenario == baseline:
            continue
        base = by_id.get(baseline_cell_id(cell, baseline))
        mine = cell.metrics.get(metric)
        theirs = base.metrics.get(metric) if base is not None else None
        if mine is None or theirs is None:
            continue
        wanted.append((cell.cell_id, mine.values, theirs.values))
    results = ratios([(a, b) for _, a, b in wanted], bootstrap) if wanted else []
    return {cell_id: r for (cell_id, _, _), r in zip(wanted, results, strict=True)}
