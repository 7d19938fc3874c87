"""TwoNN intrinsic dimension on data of known dimension."""

import numpy as np
import pytest
import torch

from eqvae_lib.metrics.intrinsic_dim import intrinsic_dimension, latent_points, twonn_at_sizes


@pytest.mark.parametrize("d", [2, 5])
def test_linear_subspace(d):
    rng = np.random.default_rng(d)
    pts = rng.standard_normal((1500, d)) @ rng.standard_normal((d, 48))  # d-dim subspace of R^48
    res = intrinsic_dimension(torch.from_numpy(pts).reshape(1500, 3, 4, 4), n_bootstrap=50)
    assert res["ambient_dim"] == 48 and res["n_points"] == 1500
    assert res["twonn"] == pytest.approx(d, rel=0.1)
    lo, hi = res["twonn_ci"]
    assert lo < res["twonn"] < hi and lo < d * 1.15 and hi > d * 0.85
    assert res["mle"] == pytest.approx(d, rel=0.15)


def test_swiss_roll_is_two_dimensional():
    from sklearn.datasets import make_swiss_roll

    x, _ = make_swiss_roll(2000, noise=0.0, random_state=0)
    res = intrinsic_dimension(x, n_bootstrap=0)
    assert res["twonn"] == pytest.approx(2.0, abs=0.25)
    assert res["twonn_ci"] is None


def test_duplicates_removed_and_subset_size():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((600, 3))
    with_dups = np.concatenate([x, x[:200]])
    res = intrinsic_dimension(with_dups, n=500, n_bootstrap=0, mle=False)
    assert res["n_duplicates_removed"] == 200 and res["n_points"] == 500
    assert res["twonn"] == pytest.approx(3, rel=0.2)
    assert res["mle"] is None
    with pytest.raises(ValueError, match="exceeds"):
        intrinsic_dimension(with_dups, n=700)


def test_bad_discard_fraction_and_too_few_points():
    x = np.random.default_rng(0).standard_normal((50, 4))
    with pytest.raises(ValueError, match="discard_fraction"):
        intrinsic_dimension(x, discard_fraction=0.0)
    with pytest.raises(ValueError, match="at least 3"):
        intrinsic_dimension(np.ones((10, 4)))


def test_latent_points_flattens_encoder_output():
    x = torch.rand(5, 1, 8, 8)
    pts = latent_points(x, lambda a: torch.nn.functional.avg_pool2d(a, 2), batch_size=2)
    assert pts.shape == (5, 16)


def _subspace_points(n=400, d=5, D=64, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, d)) @ rng.standard_normal((d, D))).astype(np.float32)


def _last_bit_copies(x, m=40, seed=1):
    """``m`` copies of rows of ``x`` that differ from the originals only in the last bit of every value."""
    rng = np.random.default_rng(seed)
    src = x[rng.choice(len(x), m, replace=False)]
    bits = src.view(np.uint32) ^ np.uint32(1)
    return bits.view(np.float32)


def test_last_bit_copies_do_not_collapse_twonn():
    """Issue #16: 400 float32 points on a 5-dim subspace of R^64 give ≈ 5; 40 copies that differ in the last bit
    gave 0.16 (MLE 0.0) before near-duplicates were detected; now they are removed, counted, and the estimate stays."""
    x = _subspace_points()
    clean = intrinsic_dimension(torch.from_numpy(x), n_bootstrap=0)
    assert clean["twonn"] == pytest.approx(5, abs=0.8) and clean["n_near_duplicates"] == 0 and clean["reliable"]
    copies = _last_bit_copies(x)
    assert not (copies == x[:, None]).all(-1).any()  # not byte-identical to any original
    dirty = np.concatenate([x, copies])
    with pytest.warns(UserWarning, match="near duplicates"):
        res = intrinsic_dimension(torch.from_numpy(dirty), n_bootstrap=20)
    assert res["n_near_duplicates"] == 40 and res["n_exact_duplicates"] == 0 and res["n_points"] == 400
    assert res["twonn"] == pytest.approx(clean["twonn"], abs=1e-9)  # the same 400 distinct points
    assert res["mle"] == pytest.approx(clean["mle"], abs=1e-9) and res["twonn"] == pytest.approx(5, abs=0.8)
    assert res["near_duplicate_tolerance"]["relative"] == pytest.approx(1e-5)
    assert not res["reliable"] and any("near duplicates" in f for f in res["flags"])  # 40/440 > 5 %: flagged
    # kept (report-only mode): the collapse is flagged, with the count of degenerate distances it rests on
    with pytest.warns(UserWarning, match="degenerate"):
        kept = intrinsic_dimension(torch.from_numpy(dirty), n_bootstrap=0, near_duplicates="keep")
    assert kept["twonn"] < 1.0 and kept["n_degenerate_distances_used"] >= 40
    assert not kept["reliable"] and any("degenerate" in f for f in kept["flags"])


def test_near_duplicate_tolerance_is_relative_to_the_data_scale():
    """The same points scaled by 1e6 or 1e-6 find the same near-duplicates; genuine close points are kept."""
    x = _subspace_points(200, 3, 16)
    dirty = np.concatenate([x, _last_bit_copies(x, 10)])
    for s in (1e-6, 1.0, 1e6):
        res = intrinsic_dimension((dirty * np.float32(s)), n_bootstrap=0, mle=False)
        assert res["n_near_duplicates"] == 10, s
    close = np.concatenate([x, x[:10] + 1e-3 * np.abs(x).max()])  # distinct points, well above round-off
    assert intrinsic_dimension(close, n_bootstrap=0, mle=False)["n_near_duplicates"] == 0


def test_twonn_at_sizes_uses_nested_prefixes_of_a_known_manifold():
    rng = np.random.default_rng(3)
    pts = rng.standard_normal((1200, 4)) @ rng.standard_normal((4, 40))  # 4-dim subspace of R^40
    res = twonn_at_sizes(pts, [1200, 600], seed=0, n_bootstrap=0, mle=False)
    assert list(res) == [1200, 600]
    for m, r in res.items():
        assert r["n_points"] == m and r["twonn"] == pytest.approx(4, rel=0.12)
    # the smaller size is the FIRST 600 points (paired across autoencoders), not a random subset
    assert res[600]["twonn"] == pytest.approx(intrinsic_dimension(pts[:600], n_bootstrap=0, mle=False)["twonn"])
    assert res[600]["twonn"] != pytest.approx(intrinsic_dimension(pts[600:], n_bootstrap=0, mle=False)["twonn"])
    with pytest.raises(ValueError, match=r"must lie in \[3, 1200\]"):
        twonn_at_sizes(pts, [2000])
