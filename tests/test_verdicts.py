"""Verdict rules (issue #14): analytic answers for the t interval, Holm and non-inferiority, and a calibration of the
verdict words on the profile's own design (k = 2 and 3 replicates, normal and t3 noise)."""

import math

import numpy as np
import pytest
from scipy import stats

from eqvae_lib.experiment import verdicts as V


def test_paired_t_interval_matches_the_textbook_formula():
    d = [1.0, 2.0, 3.0]  # mean 2, sd 1, se 1/sqrt(3), t_{0.975,2} = 4.302652...
    t = V.paired_t_interval(d)
    half = 4.302652729911275 / math.sqrt(3)
    assert t.mean == pytest.approx(2.0) and t.sd == pytest.approx(1.0)
    assert (t.low, t.high) == pytest.approx((2 - half, 2 + half), rel=1e-9)
    assert t.p == pytest.approx(stats.ttest_1samp(d, 0.0).pvalue, rel=1e-9)
    two = V.paired_t_interval([0.0, 2.0])  # mean 1, sd sqrt(2), se 1, t_{0.975,1} = 12.7062...
    assert (two.low, two.high) == pytest.approx((1 - 12.706204736174707, 1 + 12.706204736174707), rel=1e-9)


def test_one_replicate_gives_no_interval_and_is_never_reproduced():
    with pytest.raises(ValueError, match="k >= 2"):
        V.paired_t_interval([5.0])
    v = V.replicate_verdict([-100.0], direction="lower", paper_effect=-9.4)
    assert v.word == V.NOT_TESTABLE and "one replicate" in v.text and v.low is None and v.high is None
    assert V.replicate_verdict([], direction="lower").word == V.NOT_RUN


def test_holm_adjusted_pvalues_and_levels():
    # p sorted: 0.01 (x4 = 0.04), 0.02 (x3 = 0.06), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04 -> monotone 0.06)
    assert V.holm_adjust([0.03, 0.01, 0.04, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    adj = V.holm_adjust([0.001, math.nan, 0.2])  # nan = untested member: m stays 3
    assert adj[0] == pytest.approx(0.003) and math.isnan(adj[1]) and adj[2] == pytest.approx(0.4)
    levels = V.holm_levels([0.03, 0.01, 0.04, 0.02], alpha=0.05)
    # rank 1 (0.01 < 0.0125) rejects at 0.05/4; rank 2 (0.02 >= 0.05/3) stops: the rest share 0.05/3
    assert levels == pytest.approx([0.05 / 3, 0.05 / 4, 0.05 / 3, 0.05 / 3])
    for p, a, lev in zip([0.03, 0.01, 0.04, 0.02], V.holm_adjust([0.03, 0.01, 0.04, 0.02]), levels):
        assert (p < lev) == (a < 0.05)  # the interval at the Holm level excludes 0 exactly when Holm rejects
    with pytest.raises(ValueError):
        V.holm_adjust([1.5])


def test_noninferiority_words_and_pvalue():
    # rFID ratio, lower is better, margin 1.10
    assert V.noninferiority_word(0.9, 1.05, 1.10, "lower") == V.REPRODUCED
    assert V.noninferiority_word(1.0, 1.2, 1.10, "lower") == V.WITHIN_NOISE
    assert V.noninferiority_word(1.2, 1.5, 1.10, "lower") == V.OPPOSITE
    # PSNR difference, higher is better, margin -0.3 dB
    assert V.noninferiority_word(-0.2, 0.4, -0.3, "higher") == V.REPRODUCED
    assert V.noninferiority_word(-0.5, 0.1, -0.3, "higher") == V.WITHIN_NOISE
    assert V.noninferiority_word(-2.0, -0.5, -0.3, "higher") == V.OPPOSITE
    d = [0.0, 0.1, 0.2]  # mean 0.1, se 0.1/sqrt(3); against margin -0.3: t = 0.4 / se
    p = V.noninferiority_p(d, -0.3, "higher")
    assert p == pytest.approx(2 * stats.t.sf(0.4 / (0.1 / math.sqrt(3)), 2), rel=1e-9)
    t = V.paired_t_interval(d, alpha=p)  # at level p the interval touches the margin
    assert t.low == pytest.approx(-0.3, abs=1e-9)
    v = V.replicate_verdict([1.02, 1.05, 1.03], kind="ratio", direction="lower", margin=1.10)
    assert v.word == V.REPRODUCED and v.high < 1.10 and "kept within the margin" in v.text


def test_verdict_text_gives_interval_paper_value_and_detectable_effect():
    v = V.replicate_verdict([-5.0, -6.0, -7.0], direction="lower", paper_effect=-9.4)
    assert v.word == V.REPRODUCED and v.text.startswith("direction reproduced: effect -6 [")
    assert "vs paper -9.4" in v.text
    w = V.replicate_verdict([-5.1, -7.8], direction="lower", paper_effect=-9.4)  # Table 2's two seeds
    assert w.word == V.WITHIN_NOISE and "no measurable difference" in w.text and "80% power" in w.text
    assert w.low < 0 < w.high and w.mde > abs(w.effect)
    o = V.replicate_verdict([3.0, 3.5, 4.0], direction="lower")
    assert o.word == V.OPPOSITE


def test_min_detectable_effect_has_80_percent_power():
    sd, k = 2.0, 5
    mde = V.min_detectable_effect(sd, k)
    crit = stats.t.ppf(0.975, k - 1)
    ncp = mde / (sd / math.sqrt(k))
    power = stats.nct.sf(crit, k - 1, ncp) + stats.nct.cdf(-crit, k - 1, ncp)
    assert power == pytest.approx(0.80, abs=1e-6)
    assert math.isnan(V.min_detectable_effect(sd, 1))


def _simulate(rng, k, effect, noise, reps=400):
    words = []
    for _ in range(reps):
        e = rng.standard_normal(k) if noise == "normal" else rng.standard_t(3, k) / math.sqrt(3.0)  # unit SD
        words.append(V.replicate_verdict(effect + e, direction="lower").word)
    return {w: words.count(w) / reps for w in set(words)}


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("noise", ["normal", "t3"])
def test_calibration_under_zero_effect(k, noise):
    shares = _simulate(np.random.default_rng(1400 + k), k, 0.0, noise)
    assert 0.91 <= shares.get(V.WITHIN_NOISE, 0) <= 0.99, shares
    assert shares.get(V.REPRODUCED, 0) <= 0.05 and shares.get(V.OPPOSITE, 0) <= 0.05, shares


@pytest.mark.parametrize("noise", ["normal", "t3"])
def test_calibration_three_sd_effect_at_k3_is_mostly_reproduced(noise):
    shares = _simulate(np.random.default_rng(14), 3, -3.0, noise)  # the paper's direction: lower
    assert shares.get(V.REPRODUCED, 0) >= 0.5, shares
    assert shares.get(V.OPPOSITE, 0) == 0, shares


def test_correlation_over_one_trajectory_is_never_reproduced():
    rng = np.random.default_rng(5)
    for _ in range(400):
        ids = np.cumsum(rng.normal(-1, 0.1, 5))  # five epochs of one fine-tune: ID and gFID both drift
        gfid = 2 * ids + rng.normal(0, 0.05, 5)
        v = V.correlation_verdict(ids, gfid, independent=False)
        assert v.word == V.NOT_TESTABLE and v.word != V.REPRODUCED
    assert "not independent" in v.text


def test_correlation_interval_is_fisher_z():
    x = np.arange(8.0)
    y = np.array([0.1, 1.3, 1.9, 3.2, 3.8, 5.1, 6.2, 6.8])
    v = V.correlation_verdict(x, y, independent=True)
    r = np.corrcoef(x, y)[0, 1]
    half = 1.959963984540054 / math.sqrt(5)
    assert (v.low, v.high) == pytest.approx((math.tanh(math.atanh(r) - half), math.tanh(math.atanh(r) + half)))
    assert v.word == V.REPRODUCED
    w = V.correlation_verdict([11.31, 11.1, 11.23, 10.75, 11.01, 11.06, 10.95, 11.29],
                              [124.2, 107.1, 112.0, 111.3, 103.5, 124.6, 100.1, 95.6], independent=True)
    assert w.word == V.WITHIN_NOISE and w.effect == pytest.approx(0.111, abs=0.01)  # cpu-full's 8 autoencoders
    assert V.correlation_verdict([1, 2, 3], [1, 2, 3], independent=True).word == V.NOT_TESTABLE  # n < 4


def test_identical_replicates_give_no_interval():
    v = V.replicate_verdict([-0.1, -0.1, -0.1], direction="lower")
    assert v.word == V.NOT_TESTABLE and v.low is None and v.k == 3
    assert V.replicate_verdict([-0.1, -0.12, -0.11], direction="lower").word == V.REPRODUCED
