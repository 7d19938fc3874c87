"""Verdict rules: pure functions that turn replicate-level numbers into one verdict word that cannot claim more than
the numbers support (issue #14).

Words (``VERDICT_WORDS``, the only ones a report or ``results.csv`` may use):

- ``reproduced``: the effect's interval excludes the null value in the paper's direction (non-inferiority: the whole
  interval lies inside the margin). For primary claims the level is Holm-adjusted across the primary family.
- ``opposite``: the interval excludes the null value the other way (non-inferiority: it lies wholly beyond the margin).
- ``within noise``: the interval contains the null value (non-inferiority: it straddles the margin). The verdict also
  gives the smallest effect this design would detect with 80% power, so "no measurable difference" has a size.
- ``not testable at this scale``: with the reason. A single replicate (k < 2) gives no interval and is always this
  word (decided: one replicate is never ``reproduced``, ``opposite`` or ``within noise``); so is a correlation over
  epochs of one fine-tune trajectory (not independent autoencoders) or over fewer than 4 autoencoders.
- ``not run in this profile``; ``measurement`` for rows that compare nothing (steps, throughput).

Intervals: a two-sided Student t interval over the k paired replicate differences (``scipy.stats.t``); ratio effects
are analysed on the log scale and reported as ratios. Correlations: Fisher z interval over n independent
autoencoders. A bootstrap over images or sampling draws describes noise inside one replicate and is never used here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import optimize, stats

REPRODUCED, OPPOSITE, WITHIN_NOISE = "reproduced", "opposite", "within noise"
NOT_TESTABLE, NOT_RUN, MEASUREMENT = "not testable at this scale", "not run in this profile", "measurement"
VERDICT_WORDS = (REPRODUCED, OPPOSITE, WITHIN_NOISE, NOT_TESTABLE, NOT_RUN, MEASUREMENT)

#: Family-wise error rate of the primary family and the two-sided level of every other interval.
ALPHA = 0.05
#: Power at which the smallest detectable effect is quoted.
POWER = 0.80


@dataclass(frozen=True)
class TInterval:
    """Paired t summary of k replicate differences: ``mean``, two-sided ``low``/``high`` at ``1 - alpha``, the
    two-sided p-value against 0, the sample SD of the differences, ``k`` and ``alpha``."""

    mean: float
    low: float
    high: float
    p: float
    sd: float
    k: int
    alpha: float


def paired_t_interval(diffs: Sequence[float], alpha: float = ALPHA) -> TInterval:
    """Two-sided ``1 - alpha`` Student t interval for the mean of k paired replicate differences.

    Args:
        diffs: k ≥ 2 finite differences (treatment − comparator, one per replicate seed; log-ratios for ratios).
        alpha: two-sided level in (0, 1).

    Returns:
        ``TInterval``; mean ± t_{1−α/2, k−1} · sd/√k, and p = 2·P(T_{k−1} > |mean|/(sd/√k)). With sd = 0 the interval
        is the point and p is 0 (or 1 when the mean is 0).

    Raises:
        ValueError: fewer than 2 differences (one replicate gives no interval), non-finite values, bad alpha.
    """
    d = np.asarray(diffs, dtype=float).ravel()
    if d.size < 2:
        raise ValueError(f"a t interval needs k >= 2 replicate differences, got {d.size}: one replicate has no "
                         "interval (its verdict is 'not testable at this scale')")
    if not np.all(np.isfinite(d)):
        raise ValueError(f"replicate differences must be finite, got {d.tolist()}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    k, mean, sd = d.size, float(d.mean()), float(d.std(ddof=1))
    se = sd / math.sqrt(k)
    if se == 0:
        return TInterval(mean, mean, mean, 1.0 if mean == 0 else 0.0, sd, k, alpha)
    half = float(stats.t.ppf(1 - alpha / 2, k - 1)) * se
    p = float(2 * stats.t.sf(abs(mean) / se, k - 1))
    return TInterval(mean, mean - half, mean + half, p, sd, k, alpha)


def holm_adjust(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979), in the input order.

    p_(i) sorted ascending, i = 1..m: adj_(i) = max_{j ≤ i} min(1, (m − j + 1) · p_(j)). Rejecting where adj < α
    controls the family-wise error at α. ``nan`` entries (untested claims) are returned as ``nan`` and do not change m
    (m = the number of entries: the family is fixed in advance, so an untested member still counts).

    Raises:
        ValueError: a p-value outside [0, 1].
    """
    p = np.asarray(pvalues, dtype=float)
    if np.any((p < 0) | (p > 1)):
        raise ValueError(f"p-values must lie in [0, 1], got {p.tolist()}")
    m = p.size
    out = np.full(m, np.nan)
    order = [i for i in np.argsort(np.where(np.isnan(p), np.inf, p)) if not np.isnan(p[i])]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def holm_levels(pvalues: Sequence[float], alpha: float = ALPHA) -> list[float]:
    """Per-claim two-sided levels α_i compatible with Holm's procedure, so that the ``1 − α_i`` interval of claim i
    excludes the null exactly when Holm rejects it.

    With the tested p-values sorted ascending and m = family size: the i-th (1-based) gets α/(m − i + 1) while Holm
    keeps rejecting; from the first non-rejected rank j on, every remaining claim gets α/(m − j + 1). ``nan`` entries
    (untested) get ``nan``.
    """
    p = np.asarray(pvalues, dtype=float)
    m = p.size
    out = np.full(m, np.nan)
    order = [i for i in np.argsort(np.where(np.isnan(p), np.inf, p)) if not np.isnan(p[i])]
    stopped_level = None
    for rank, i in enumerate(order):
        level = alpha / (m - rank)
        if stopped_level is None and p[i] >= level:
            stopped_level = level
        out[i] = level if stopped_level is None else stopped_level
    return out.tolist()


def min_detectable_effect(sd: float, k: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """Smallest true mean difference that a two-sided paired t test at level ``alpha`` over ``k`` replicates with
    difference SD ``sd`` detects with probability ``power`` (non-central t, exact).

    Returns ``nan`` when k < 2 or sd is not positive (no variance estimate). Same units as ``sd``.
    """
    if k < 2 or not sd > 0 or not math.isfinite(sd):
        return float("nan")
    df, crit = k - 1, float(stats.t.ppf(1 - alpha / 2, k - 1))

    def gap(ncp: float) -> float:
        lower = float(stats.nct.cdf(-crit, df, ncp))  # the wrong-sign tail; scipy returns nan where it underflows
        return float(stats.nct.sf(crit, df, ncp)) + (lower if math.isfinite(lower) else 0.0) - power

    hi = 2 * crit + 4
    while gap(hi) < 0 and hi < 1e4:
        hi *= 2
    ncp = optimize.brentq(gap, 1e-9, hi)
    return ncp * sd / math.sqrt(k)


def direction_word(low: float, high: float, null: float, direction: str) -> str:
    """``reproduced``/``opposite``/``within noise`` for an interval [low, high] against ``null``; ``direction`` is the
    paper's sign of (treatment − comparator): ``"lower"`` or ``"higher"``.

    Raises:
        ValueError: unknown direction.
    """
    if direction not in ("lower", "higher"):
        raise ValueError(f"direction must be 'lower' or 'higher', got {direction!r}")
    if low <= null <= high:
        return WITHIN_NOISE
    below = high < null
    return REPRODUCED if below == (direction == "lower") else OPPOSITE


def noninferiority_word(low: float, high: float, margin: float, direction: str) -> str:
    """Non-inferiority ("reconstruction is kept"): ``direction`` = the side that is better (``"lower"`` for rFID,
    ``"higher"`` for PSNR); ``margin`` = the worst acceptable effect (rFID ratio 1.10, PSNR difference −0.3 dB).

    ``reproduced`` when the whole interval lies on the good side of the margin, ``opposite`` when it lies wholly
    beyond it, ``within noise`` when it contains the margin.
    """
    if direction == "lower":
        return REPRODUCED if high < margin else (OPPOSITE if low > margin else WITHIN_NOISE)
    if direction == "higher":
        return REPRODUCED if low > margin else (OPPOSITE if high < margin else WITHIN_NOISE)
    raise ValueError(f"direction must be 'lower' or 'higher', got {direction!r}")


def noninferiority_p(diffs: Sequence[float], margin: float, direction: str) -> float:
    """Two-sided-equivalent p-value of the non-inferiority test: 2 × the one-sided t p-value of H0 "effect is on the
    bad side of ``margin``", capped at 1, so that p < α ⇔ the two-sided ``1 − α`` interval lies inside the margin
    (used to place a margin claim in the Holm family). Needs k ≥ 2."""
    t = paired_t_interval(diffs)
    se = t.sd / math.sqrt(t.k)
    if se == 0:
        good = t.mean < margin if direction == "lower" else t.mean > margin
        return 0.0 if good else 1.0
    stat = (margin - t.mean) / se if direction == "lower" else (t.mean - margin) / se
    return float(min(1.0, 2 * stats.t.sf(stat, t.k - 1)))


@dataclass(frozen=True)
class Verdict:
    """One claim's verdict: ``word`` (one of ``VERDICT_WORDS``), ``text`` (why, with numbers), the effect and its
    interval (``None`` when there is none), the level used, the smallest detectable effect (``nan`` unknown) and k."""

    word: str
    text: str
    effect: float | None = None
    low: float | None = None
    high: float | None = None
    alpha: float | None = None
    mde: float | None = None
    k: int = 0


def _fmt(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"


def _paper(paper_effect: float | None) -> str:
    return f"paper {_fmt(paper_effect)}" if paper_effect is not None else "paper: no number"


def replicate_verdict(diffs: Sequence[float], *, kind: str = "difference", direction: str = "lower",
                      margin: float | None = None, alpha: float = ALPHA,
                      paper_effect: float | None = None) -> Verdict:
    """Verdict of one comparison between arms from its k paired replicate differences.

    Args:
        diffs: per-replicate differences treatment − comparator (``kind="difference"``) or per-replicate ratios
            treatment / comparator (``kind="ratio"``, analysed as log-ratios; must be > 0).
        kind: ``"difference"`` (null 0) or ``"ratio"`` (null 1).
        direction: the paper's direction of the effect (``"lower"``/``"higher"``), or for a margin claim the better
            side.
        margin: ``None`` for a directional claim; the non-inferiority margin on the effect's own scale (ratio 1.10,
            difference −0.3) otherwise.
        alpha: two-sided level (Holm-adjusted for primary claims: see :func:`holm_levels`).
        paper_effect: the paper's effect on the same scale, quoted in the text.

    Returns:
        ``Verdict``; k < 2 → ``not testable at this scale`` ("one replicate"), never an interval; so are k identical
        replicates (sd = 0: no variance estimate, e.g. one cached artefact counted twice).
    """
    if kind not in ("difference", "ratio"):
        raise ValueError(f"kind must be 'difference' or 'ratio', got {kind!r}")
    x = np.asarray(diffs, dtype=float).ravel()
    if kind == "ratio":
        if np.any(x <= 0):
            raise ValueError(f"ratios must be positive, got {x.tolist()}")
        x = np.log(x)
    back = np.exp if kind == "ratio" else (lambda v: v)
    null = 0.0
    if x.size == 0:
        return Verdict(NOT_RUN, "no replicate of this comparison in the records")
    if x.size < 2:
        eff = float(back(x[0]))
        return Verdict(NOT_TESTABLE, f"one replicate (k = 1) gives no interval: effect {_fmt(eff)} (single "
                       f"replicate) vs {_paper(paper_effect)}; needs k >= 3 replicate seeds", eff, k=1)
    t = paired_t_interval(x, alpha)
    if t.sd <= 1e-12 * max(1.0, abs(t.mean)):  # identical replicates (up to round-off), or one artefact counted
        # twice: no variance estimate, no interval
        eff = float(back(t.mean))
        return Verdict(NOT_TESTABLE, f"the k = {t.k} replicates are identical (effect {_fmt(eff)}): no variance "
                       f"estimate, so no interval; {_paper(paper_effect)}", eff, k=t.k)
    eff, lo, hi = float(back(t.mean)), float(back(t.low)), float(back(t.high))
    mde_log = min_detectable_effect(t.sd, t.k, alpha)
    mde = float(np.exp(mde_log)) if kind == "ratio" else mde_log
    mde_txt = (f"×{_fmt(mde)}" if kind == "ratio" else _fmt(mde))
    ci = f"effect {_fmt(eff)} [{_fmt(lo)}, {_fmt(hi)}] (k = {t.k}, {100 * (1 - alpha):.4g}% t interval)"
    if margin is None:
        word = direction_word(t.low, t.high, null, direction)
    else:
        m = math.log(margin) if kind == "ratio" else margin
        word = noninferiority_word(t.low, t.high, m, direction)
    ref = f"margin {_fmt(margin)}" if margin is not None else f"null {_fmt(float(back(null)))}"
    if word == REPRODUCED:
        text = f"{'kept within the margin' if margin is not None else 'direction reproduced'}: {ci} vs " \
               f"{_paper(paper_effect)}"
    elif word == OPPOSITE:
        text = f"{'beyond the margin' if margin is not None else 'opposite direction'}: {ci} vs {_paper(paper_effect)}"
    else:
        text = (f"no measurable difference: {ci} contains the {ref}; smallest effect detectable with 80% power at "
                f"this design: {mde_txt}; {_paper(paper_effect)}")
    return Verdict(word, text, eff, lo, hi, alpha, mde, t.k)


def correlation_verdict(x: Sequence[float], y: Sequence[float], *, independent: bool, direction: str = "higher",
                        alpha: float = ALPHA, paper_effect: float | None = None,
                        unit: str = "autoencoders") -> Verdict:
    """Pearson r between x and y with a Fisher z interval, counted only over independent autoencoders.

    Args:
        x, y: one value per autoencoder (n ≥ 4 for an interval).
        independent: True only when the points are independent autoencoders (different fine-tune seeds or
            families). False (e.g. epochs of one fine-tune trajectory) always gives ``not testable at this scale``.
        direction: the paper's sign of r (``"higher"`` = positive).

    Returns:
        ``Verdict`` with effect r and its interval tanh(atanh r ± z_{1−α/2}/√(n−3)); the smallest detectable |r|
        at 80% power is tanh((z_{1−α/2} + z_{0.8})/√(n−3)).
    """
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"x and y must have the same length, got {a.size} and {b.size}")
    n = a.size
    r = float(np.corrcoef(a, b)[0, 1]) if n >= 2 else float("nan")
    if not independent:
        return Verdict(NOT_TESTABLE, f"r = {_fmt(r)} over {n} {unit} that are not independent (epochs of one "
                       "fine-tune trajectory); a correlation counts only over independent autoencoders "
                       "(different fine-tune seeds or families)", r, k=n)
    if n < 4 or not math.isfinite(r):
        return Verdict(NOT_TESTABLE, f"r over {n} {unit}: an interval needs at least 4 independent ones", r, k=n)
    z, se = math.atanh(max(min(r, 1 - 1e-12), -1 + 1e-12)), 1 / math.sqrt(n - 3)
    zc = float(stats.norm.ppf(1 - alpha / 2))
    lo, hi = math.tanh(z - zc * se), math.tanh(z + zc * se)
    mde = math.tanh((zc + float(stats.norm.ppf(POWER))) * se)
    word = direction_word(lo, hi, 0.0, "lower" if direction == "lower" else "higher")
    ci = f"r = {_fmt(r)} [{_fmt(lo)}, {_fmt(hi)}] over {n} independent {unit} (Fisher z)"
    if word == WITHIN_NOISE:
        text = (f"no measurable correlation: {ci} contains 0; smallest |r| detectable with 80% power: {_fmt(mde)}; "
                f"{_paper(paper_effect)}")
    else:
        text = f"{'direction reproduced' if word == REPRODUCED else 'opposite direction'}: {ci} vs " \
               f"{_paper(paper_effect)}"
    return Verdict(word, text, r, lo, hi, alpha, mde, n)


# ------------------------------------------------------------------------------------------------- speed-up
def steps_to_reach(steps: list[int] | list[float], values: list[float], target: float) -> int | float | None:
    """First evaluated step at which ``values`` (e.g. a gFID curve) is ≤ ``target``, linearly interpolated between
    checkpoints; ``None`` when the curve never gets there within the budget. Integer steps give an integer step;
    fractional units (e.g. epochs ``[1.0, 2.0, 3.0]``) give a float rounded to 0.01."""
    integral = not any(isinstance(s, float) for s in steps)
    prev = None
    for s, v in zip(steps, values):
        if v <= target:
            if prev is None:
                return s
            s0, v0 = prev
            if v0 == v:
                return s
            at = s0 + (s - s0) * (v0 - target) / (v0 - v)
            return int(round(at)) if integral else round(float(at), 2)
        prev = (s, v)
    return None


@dataclass(frozen=True)
class SpeedupEstimate:
    """One replicate's convergence speed-up read from two gFID curves of the same seed (Table 2 / Fig. 1 right).

    ``target`` = the WORSE (higher) of the two curves' final gFIDs — a level both curves reach by their last
    checkpoint, so the estimate is symmetric in the two arms (swapping them inverts it) and can be < 1 (the subject is
    slower); ``reach`` / ``comparator_reach`` = the step at which the subject's / comparator's curve first gets to
    ``target`` (linearly interpolated, :func:`steps_to_reach`; None = never within the budget); ``speedup`` =
    ``comparator_reach / reach`` (None when ``censored``). ``at_first_checkpoint``: the subject was already at the
    target at its first evaluated step, so ``speedup`` is a lower bound; ``comparator_at_first_checkpoint``: the
    comparator was, so it is an upper bound (the curves say nothing earlier)."""

    target: float
    reach: float | None
    speedup: float | None
    censored: bool
    at_first_checkpoint: bool
    comparator_reach: float | None = None
    comparator_at_first_checkpoint: bool = False

    def describe(self, subject: str = "EQ", comparator: str = "the comparator", unit: str = "step") -> str:
        """One line for a record's notes: the target and where each curve reaches it (``unit``: ``"step"`` or
        ``"epoch"``), or why there is no number, and whether the speed-up is a bound, e.g. ``"target 41.2: EQ
        reaches it at step 600, the base at 1500"``. The claim module reads the phrases ``"a lower bound"``, ``"an
        upper bound"`` and ``"no bound"`` (:func:`claims._speedup_row`)."""
        if not math.isfinite(self.target):
            return "no finite final gFID in one of the curves: no target, censored"
        if self.censored:
            return f"target {self.target:.4g}: a curve never reaches it (censored)"
        text = (f"target {self.target:.4g}: {subject} reaches it at {unit} {self.reach:g}, {comparator} at "
                f"{self.comparator_reach:g}")
        if self.at_first_checkpoint and self.comparator_at_first_checkpoint:
            return text + " — both already at the first checkpoint: no bound (the curves say nothing before it)"
        if self.at_first_checkpoint:
            text += f" — {subject} already at the first checkpoint, a lower bound"
        if self.comparator_at_first_checkpoint:
            text += f" — {comparator} already at the first checkpoint, an upper bound"
        return text


def speedup_estimate(steps: Sequence[float], subject: Sequence[float], comparator: Sequence[float]
                     ) -> SpeedupEstimate:
    """The speed-up of ``subject`` over ``comparator`` (gFID curves evaluated at the same ``steps``, lower = better)
    in one replicate: target = max(final gFID of subject, final gFID of comparator) (the worse final, which both
    curves reach), speed-up = comparator's first-reach step / subject's first-reach step (:func:`steps_to_reach`,
    linear interpolation). Symmetric: under "both arms are one curve + noise" its log is centred on 0, and a slower
    subject gives a speed-up < 1 (so ``opposite`` is possible). Right-censoring (a curve never reaching the target
    within the budget, ``speedup`` None, never a made-up number) cannot happen with this target on finite curves;
    the path stays for robustness (e.g. a NaN evaluation).

    Raises:
        ValueError: curves of different lengths than ``steps``, or empty."""
    if not len(steps) or len(subject) != len(steps) or len(comparator) != len(steps):
        raise ValueError(f"curves must have one value per step: {len(steps)} steps, {len(subject)} and "
                         f"{len(comparator)} values")
    finals = (float(subject[-1]), float(comparator[-1]))
    if not all(math.isfinite(f) for f in finals):  # no usable final value: no target, censored
        return SpeedupEstimate(float("nan"), None, None, True, False, None, False)
    target = max(finals)
    reach = steps_to_reach(list(steps), list(subject), target)
    creach = steps_to_reach(list(steps), list(comparator), target)
    if reach is None or creach is None:
        return SpeedupEstimate(target, None if reach is None else float(reach), None, True, False,
                               None if creach is None else float(creach), False)
    return SpeedupEstimate(target, float(reach), float(creach) / max(float(reach), 1e-12), False,
                           float(reach) == float(steps[0]), float(creach), float(creach) == float(steps[0]))


def speedup_verdict(speedups: Sequence[float | None], *, alpha: float = ALPHA, paper_effect: float | None = None,
                    comparator: str = "the comparator") -> Verdict:
    """Verdict of a convergence speed-up from its per-replicate estimates (:func:`speedup_estimate`, symmetric: values
    < 1 = the subject was slower; ``None`` = censored: a curve never reached the target within the budget). Any
    censored replicate makes
    the claim ``not testable at this scale`` (the speed-up of that replicate is below the budget's resolution, its
    value unknown: no number is made up); otherwise a t interval over the replicates on the log scale
    (:func:`replicate_verdict`, kind ratio, direction higher, null 1: ``reproduced``, ``opposite`` or ``within
    noise``)."""
    k = len(speedups)
    censored = sum(v is None for v in speedups)
    if k == 0:
        return Verdict(NOT_RUN, "no replicate of this comparison in the records")
    if censored:
        return Verdict(NOT_TESTABLE, f"censored: in {censored} of {k} replicates a curve never reached "
                       f"the worse of its and {comparator}'s final gFID within the budget, so no speed-up number exists "
                       f"for them (the "
                       f"budget or the checkpoints would have to be extended); {_paper(paper_effect)}", k=k)
    return replicate_verdict([float(v) for v in speedups], kind="ratio", direction="higher", alpha=alpha,
                             paper_effect=paper_effect)

