"""FID / KID: closed forms, identities, cached reference statistics, the classifier and Inception extractors."""

import numpy as np
import pytest
import torch

from eqvae_lib.metrics import extractors as X
from eqvae_lib.metrics import fid as F
from eqvae_lib.metrics import fid_inputs as FI


def gaussian_fid_closed_form(mu1, var1, mu2, var2):
    """FID of two Gaussians with diagonal covariances: ‖μ1-μ2‖² + Σ (√v1 - √v2)²."""
    return float(((mu1 - mu2) ** 2).sum() + ((np.sqrt(var1) - np.sqrt(var2)) ** 2).sum())


def test_frechet_distance_exact_statistics_diagonal():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    v1, v2 = rng.uniform(0.5, 2, 6), rng.uniform(0.5, 2, 6)
    got = F.frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2))
    assert got == pytest.approx(gaussian_fid_closed_form(mu1, v1, mu2, v2), rel=1e-9)


def test_frechet_distance_full_covariance_rotation_invariant():
    # FID is invariant to a common orthogonal change of basis: rotate diagonal covariances
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    v1, v2 = rng.uniform(0.5, 2, 5), rng.uniform(0.5, 2, 5)
    got = F.frechet_distance(q @ mu1, q @ np.diag(v1) @ q.T, q @ mu2, q @ np.diag(v2) @ q.T)
    assert got == pytest.approx(gaussian_fid_closed_form(mu1, v1, mu2, v2), rel=1e-7)


def test_fid_of_gaussian_samples_matches_closed_form_and_torch_fidelity():
    rng = np.random.default_rng(2)
    d, n = 4, 40000
    mu1, mu2 = np.zeros(d), np.array([0.5, -0.3, 0.0, 0.2])
    v1, v2 = np.ones(d), np.array([1.5, 0.7, 1.0, 2.0])
    a = torch.from_numpy(rng.normal(mu1, np.sqrt(v1), (n, d)))
    b = torch.from_numpy(rng.normal(mu2, np.sqrt(v2), (n, d)))
    res = F.fid_kid(a, b, kid=False)
    assert res["fid_impl"] == "torch-fidelity"
    assert res["fid"] == pytest.approx(gaussian_fid_closed_form(mu1, v1, mu2, v2), abs=0.02)
    sa, sb = F.feature_stats(a), F.feature_stats(b)
    assert F.frechet_distance(sa.mu, sa.sigma, sb.mu, sb.sigma) == pytest.approx(res["fid"], rel=1e-8)


def test_fid_of_identical_sets_is_zero_and_kid_matches_unbiased_mmd_closed_form():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(300, 16, generator=g).double()
    res = F.fid_kid(f, f)
    assert abs(res["fid"]) < 1e-8
    # subset size = N: every subset is the whole set, and the unbiased MMD² of a set with itself is
    # 2(S - D)/(m(m-1)) - 2S/m² (S: sum of the kernel matrix, D: its trace) — slightly negative, ~0
    k = (f @ f.T / 16 + 1) ** 3
    m, S, D = 300, float(k.sum()), float(k.trace())
    assert res["kid_subset_size"] == 300
    assert res["kid_mean"] == pytest.approx(2 * (S - D) / (m * (m - 1)) - 2 * S / m ** 2, rel=1e-6)
    assert abs(res["kid_mean"]) < 0.1 * abs(F.fid_kid(f, f + 0.5)["kid_mean"])


def test_kid_of_two_samples_of_one_distribution_is_near_zero():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(2000, 16, generator=g), torch.randn(2000, 16, generator=g)
    res = F.fid_kid(a, b, kid_subset_size=500)
    assert res["kid_subset_size"] == 500
    assert abs(res["kid_mean"]) < 3 * res["kid_std"] + 1e-3
    assert F.fid_kid(a, b + 1.0, kid_subset_size=500)["kid_mean"] > 0.1


def test_reference_npz_round_trip_and_own_frechet(tmp_path):
    rng = np.random.default_rng(3)
    a, b = torch.from_numpy(rng.normal(size=(500, 8))), torch.from_numpy(rng.normal(0.3, 1, (500, 8)))
    sb = F.feature_stats(b)
    np.savez(tmp_path / "ref.npz", mu=sb.mu, sigma=sb.sigma, arr_0=np.zeros((1, 2, 2, 3), np.uint8))
    ref = F.load_reference_npz(tmp_path / "ref.npz")
    res = F.fid_kid(a, ref)
    assert res["fid_impl"].startswith("frechet_distance") and res["kid_mean"] is None
    assert res["fid"] == pytest.approx(F.fid_kid(a, b, kid=False)["fid"], rel=1e-8)
    np.savez(tmp_path / "bad.npz", m=sb.mu)
    with pytest.raises(KeyError, match="mu"):
        F.load_reference_npz(tmp_path / "bad.npz")


def test_uint8_dataset_yields_bare_rgb_uint8():
    ds = FI.UInt8ImageDataset(torch.zeros(2, 1, 8, 8))
    item = ds[0]
    assert isinstance(item, torch.Tensor) and item.dtype == torch.uint8 and item.shape == (3, 8, 8)
    assert int(item[0, 0, 0]) == 128
    with pytest.raises(ValueError, match="1 or 3"):
        FI.UInt8ImageDataset(torch.zeros(2, 2, 8, 8))


# ----------------------------------------------------------------------------------------- classifier extractor
TINY = dict(n_train=1500, epochs=2, batch_size=50, lr=5e-3, width=8, verbose=False)  # ~60 steps: seconds


@pytest.fixture(scope="module")
def clf(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    ext = X.classifier_extractor(cache_dir=cache, **TINY)
    return ext, cache


@pytest.fixture(scope="module")
def fmnist():
    from eqvae_lib.data import FashionMNIST

    return FashionMNIST("test", n=300).tensors()[0]


def test_classifier_extractor_is_cached_and_named(clf):
    ext, cache = clf
    assert ext.metric_name == "FID (Fashion-MNIST classifier features)"
    assert "Inception" not in ext.metric_name
    again = X.classifier_extractor(cache_dir=cache, **TINY)
    assert again.weights_path == ext.weights_path and again.weights_hash == ext.weights_hash
    assert ext.info["holdout_accuracy"] > 0.3  # 10 classes: chance is 0.1


def test_classifier_constructor_accepts_extra_kwargs(clf):
    ext, _ = clf
    m = X.ClassifierFeatureExtractor(X.CLASSIFIER_NAME, ["feat"], feature_extractor_weights_path=str(ext.weights_path),
                                     cuda=False, kid_subset_size=7, verbose=False)
    out = m(torch.zeros(2, 3, 28, 28, dtype=torch.uint8))
    assert out[0].shape == (2, 128)


def test_fid_rises_monotonically_with_noise(clf, fmnist):
    ext, cache = clf
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(fmnist.shape, generator=g)
    fids = [F.compute_fid((fmnist + s * noise).clamp(-1, 1), fmnist, ext, cache_dir=cache, verbose=False)["fid"]
            for s in (0.0, 0.1, 0.25, 0.5)]
    assert abs(fids[0]) < 1e-6
    assert all(a < b for a, b in zip(fids, fids[1:])), fids


def test_compute_fid_agrees_with_torch_fidelity_calculate_metrics(clf, fmnist):
    ext, cache = clf
    y = (fmnist.flip(-1))
    ours = F.compute_fid(y, fmnist, ext, kid=True, cache_dir=cache, verbose=False)
    theirs = F.torch_fidelity_metrics(y, fmnist, ext, kid=True, cache_input2=True, cache_dir=cache)
    assert ours["fid"] == pytest.approx(theirs["frechet_inception_distance"], rel=1e-4)
    assert ours["kid_mean"] == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-3, abs=1e-6)
    assert ours["metric"] == ext.metric_name and ours["weights_hash"] == ext.weights_hash


def test_reference_statistics_cache_key_depends_on_data_and_n(clf, fmnist):
    ext, cache = clf
    s1 = F.reference_statistics(fmnist, ext, cache_dir=cache, verbose=False)
    s2 = F.reference_statistics(fmnist, ext, cache_dir=cache, verbose=False)
    s3 = F.reference_statistics(fmnist, ext, n=200, cache_dir=cache, verbose=False)
    s4 = F.reference_statistics(fmnist.flip(-1), ext, cache_dir=cache, verbose=False)
    assert s1.key == s2.key and np.array_equal(s1.mu, s2.mu)
    assert len({s1.key, s3.key, s4.key}) == 3
    assert s3.n == 200 and not np.allclose(s1.mu, s4.mu)


# ------------------------------------------------------------------------------------------ Inception extractor
@pytest.mark.slow
def test_inception_weights_build_and_verify(tmp_path):
    import json

    path = X.build_inception_weights(cache_dir=tmp_path)
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["verify_max_abs_diff"] < 1e-4
    ext = X.FeatureExtractor(X.INCEPTION_NAME, path, "2048", "FID (Inception-v3 pool3)", meta["weights_hash"],
                             cuda=False)
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    f = ext.features(x, verbose=False)
    assert f.shape == (3, 2048) and torch.isfinite(f).all() and (f >= 0).all()  # pool3 after ReLU
    assert not torch.allclose(f[0], f[1])
