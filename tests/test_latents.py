"""Latent caches: round trip, flips and posterior sampling, REPA sampling, stale-cache detection, wrong-AE and
wrong-normalisation errors, decoding with the inverse normalisation."""

import copy

import pytest
import torch

from eqvae_lib.io import state_dict_hash
from eqvae_lib.latents import (LatentCache, LatentCacheMismatchError, LatentNorm, build_latent_cache,
                               decode_latents, latent_cache_key, load_latent_cache, save_latent_cache)

torch.set_num_threads(1)


def tiny_vae(seed=0):
    from diffusers import AutoencoderKL
    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                         norm_num_groups=8, layers_per_block=1).eval()


@pytest.fixture(scope="module")
def vae():
    return tiny_vae()


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(24, 3, 16, 16, generator=g) * 2 - 1
    x[:, :, :, :8] *= 0.2  # left/right asymmetric so that a flip changes the latent
    return x, torch.arange(24) % 5


SHIFT = torch.tensor([0.1, -0.2, 0.3, 0.0])
SCALE = torch.tensor([2.0, 0.5, 1.5, 0.18215])


def test_official_round_trip_flip_and_sample(vae, images, tmp_path):
    x, y = images
    cache = build_latent_cache(vae, x, tmp_path / "c", shift=SHIFT, scale=SCALE, labels=y, batch_size=10,
                               seed=3, progress=False)
    assert cache.latents.shape == (24, 4, 8, 8) and cache.mode == "official"
    loaded = load_latent_cache(tmp_path / "c", vae=vae, shift=SHIFT, scale=SCALE, mode="official")
    assert torch.equal(loaded.latents, cache.latents) and torch.equal(loaded.labels, y)
    assert torch.equal(loaded.norm.shift, SHIFT) and loaded.norm.ae_hash == state_dict_hash(vae)
    flipped = loaded.flipped.bool()
    assert 0 < flipped.sum() < 24  # p = 0.5 flips
    with torch.no_grad():
        dist = vae.encode(torch.where(flipped.view(-1, 1, 1, 1), x.flip(-1), x)).latent_dist
    eps = (loaded.latents - dist.mean) / dist.std  # the stored sample = mean + std * N(0, 1) of the FLIPPED image
    assert abs(eps.mean().item()) < 0.1 and abs(eps.std().item() - 1) < 0.1
    # the flips themselves, checked exactly on posterior means (repa mode with hflip=True, same seed -> same flips)
    r = build_latent_cache(vae, x, tmp_path / "cf", shift=SHIFT, scale=SCALE, labels=y, mode="repa", hflip=True,
                           batch_size=10, seed=3, progress=False)
    assert torch.equal(r.flipped, loaded.flipped)
    torch.testing.assert_close(r.latents, dist.mean, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        unflipped = vae.encode(x).latent_dist.mean
    assert (r.latents[flipped] - unflipped[flipped]).abs().max() > 1e-2
    z_n, yy = loaded.get(torch.tensor([0, 5]))
    torch.testing.assert_close(z_n, (loaded.latents[[0, 5]] - SHIFT.view(1, 4, 1, 1)) * SCALE.view(1, 4, 1, 1))
    assert yy.tolist() == [0, 0]


def test_repa_mode_stores_moments_and_samples(vae, images, tmp_path):
    x, y = images
    build_latent_cache(vae, x, tmp_path / "r", shift=SHIFT, scale=SCALE, labels=y, mode="repa", progress=False)
    with torch.no_grad():
        dist = vae.encode(x).latent_dist
    loaded = load_latent_cache(tmp_path / "r", mode="repa")
    torch.testing.assert_close(loaded.latents, dist.mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loaded.std, dist.std, atol=1e-5, rtol=1e-5)
    assert loaded.flipped.sum() == 0  # no flip by default in repa mode
    idx = torch.arange(24)
    a, _ = loaded.get(idx, generator=torch.Generator().manual_seed(1))
    b, _ = loaded.get(idx, generator=torch.Generator().manual_seed(1))
    c, _ = loaded.get(idx, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    eps = (loaded.norm.denormalize(a) - dist.mean) / dist.std
    assert abs(eps.std().item() - 1) < 0.1
    with pytest.raises(LatentCacheMismatchError, match="mode"):
        load_latent_cache(tmp_path / "r", mode="official")


def test_reuse_and_stale_rebuild(vae, images, tmp_path):
    x, y = images
    folder = tmp_path / "s"
    build_latent_cache(vae, x, folder, shift=SHIFT, scale=SCALE, labels=y, progress=False)
    mtime = (folder / "latents.safetensors").stat().st_mtime_ns
    again = build_latent_cache(vae, x, folder, shift=SHIFT, scale=SCALE, labels=y, progress=False)
    assert (folder / "latents.safetensors").stat().st_mtime_ns == mtime  # reused, not re-encoded
    assert again.norm.ae_hash == state_dict_hash(vae)
    other = tiny_vae(seed=1)
    with pytest.warns(UserWarning, match="stale.*ae_hash"):
        fresh = build_latent_cache(other, x, folder, shift=SHIFT, scale=SCALE, labels=y, progress=False)
    assert fresh.norm.ae_hash == state_dict_hash(other) != state_dict_hash(vae)
    assert load_latent_cache(folder).norm.ae_hash == state_dict_hash(other)
    with pytest.warns(UserWarning, match="shift/scale"):
        build_latent_cache(other, x, folder, shift=SHIFT, scale=SCALE * 2, labels=y, progress=False)
    assert torch.equal(load_latent_cache(folder).norm.scale, SCALE * 2)
    key = latent_cache_key(state_dict_hash(vae), "official", "toy")
    assert key.startswith(state_dict_hash(vae)) and key != latent_cache_key(state_dict_hash(other), "official", "toy")


def test_decode_inverts_normalisation_and_checks_ae(vae, images, tmp_path):
    x, y = images
    cache = build_latent_cache(vae, x[:6], tmp_path / "d", shift=SHIFT, scale=SCALE, labels=y[:6], progress=False)
    z_n, _ = cache.get(torch.arange(6))
    imgs = decode_latents(vae, z_n, cache.norm, batch_size=4)
    with torch.no_grad():
        want = vae.decode(cache.latents).sample.clamp(-1, 1)
    torch.testing.assert_close(imgs, want, atol=1e-5, rtol=1e-5)
    assert imgs.min() >= -1 and imgs.max() <= 1
    changed = copy.deepcopy(vae)
    with torch.no_grad():
        changed.decoder.conv_out.bias.add_(1e-3)
    with pytest.raises(LatentCacheMismatchError, match="weights hash"):
        decode_latents(changed, z_n, cache.norm)
    with pytest.raises(LatentCacheMismatchError, match="weights hash"):
        load_latent_cache(tmp_path / "d", vae=changed)
    with pytest.raises(LatentCacheMismatchError, match="normalisation scale"):
        load_latent_cache(tmp_path / "d", vae=vae, shift=SHIFT, scale=torch.full((4,), 0.18215))
    with pytest.raises(TypeError, match="LatentNorm"):
        decode_latents(vae, z_n, None)


def test_bad_normalisation_shapes(vae, images, tmp_path):
    x, y = images
    with pytest.raises(ValueError, match="3 entries but the latents have 4"):
        build_latent_cache(vae, x, tmp_path / "b", shift=[0, 0, 0], scale=1.0, labels=y, progress=False)
    norm = LatentNorm(0.0, 0.5, "h")  # scalars broadcast to one channel here...
    with pytest.raises(ValueError, match="latents must be"):
        norm.normalize(torch.zeros(1, 4, 2, 2))  # ...and are refused for 4-channel latents
    with pytest.raises(ValueError, match="non-zero"):
        LatentNorm(torch.zeros(4), torch.zeros(4), "h")


def test_in_memory_cache_save_load_and_dataset_input(vae, images, tmp_path):
    x, y = images
    norm = LatentNorm(SHIFT, SCALE, "none")
    mem = LatentCache.from_tensors(torch.randn(7, 4, 2, 2), None, norm, meta={"data_id": "toy"})
    assert not mem.labelled and mem.num_classes == 0
    save_latent_cache(mem, tmp_path / "m")
    back = load_latent_cache(tmp_path / "m", ae_hash="none")
    assert torch.equal(back.latents, mem.latents) and back.labels.tolist() == [-1] * 7
    ds = torch.utils.data.TensorDataset(x[:9], y[:9])
    c = build_latent_cache(vae, ds, tmp_path / "ds", shift=SHIFT, scale=SCALE, mode="repa", batch_size=4,
                           progress=False)
    assert c.labels.tolist() == y[:9].tolist() and c.labelled and c.num_classes == 5
    with pytest.raises(FileNotFoundError, match="build_latent_cache"):
        load_latent_cache(tmp_path / "nothing")


def test_latent_norm_round_trip_and_the_autoencoders_norm_is_the_same_object(vae):
    g = torch.Generator().manual_seed(1)
    z = torch.randn(3, 4, 5, 5, generator=g)
    norm = LatentNorm(SHIFT, SCALE, "none")
    zn = norm.normalize(z)
    assert torch.allclose(zn, (z - SHIFT.view(1, -1, 1, 1)) * SCALE.view(1, -1, 1, 1))
    assert torch.allclose(norm.denormalize(zn), z, atol=1e-6)
    assert torch.allclose(norm.normalize(norm.denormalize(z)), z, atol=1e-5)
    shift, scale = norm  # unpacks as (shift, scale)
    assert torch.equal(shift, SHIFT) and torch.equal(scale, SCALE)
    assert LatentNorm.from_dict(norm.to_dict()) == norm
    # an AE's normalisation (autoencoders.latent_norm) is a LatentNorm tied to its weights: what a latent cache stores
    from eqvae_lib import autoencoders as ae
    m = copy.deepcopy(vae)
    m.register_to_config(latents_mean=[0.5, -1.0, 0.0, 2.0], latents_std=[2.0, 0.5, 1.0, 4.0], scaling_factor=1.0)
    an = ae.latent_norm(m)
    assert isinstance(an, LatentNorm) and an.ae_hash == state_dict_hash(m)
    assert torch.allclose(an.normalize(z), (z - torch.tensor([0.5, -1.0, 0.0, 2.0]).view(1, -1, 1, 1))
                          / torch.tensor([2.0, 0.5, 1.0, 4.0]).view(1, -1, 1, 1))
    an.check_ae(m)  # no error: the AE it was read from
