"""TwoNN intrinsic dimension on data of known dimension."""

import numpy as np
import pytest
import torch

from eqvae_lib.metrics.intrinsic_dim import intrinsic_dimension, latent_points


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
