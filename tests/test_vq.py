"""Tests of eqvae_lib.vq: VQ autoencoder construction, straight-through quantisation, token round trips, codebook
statistics and dead-code re-initialisation (issue 8, the discrete path)."""

import math

import pytest
import torch

from eqvae_lib import vq as V


def _tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return V.build_vq("vq-tiny", **kw)


def _images(n=4, side=16, channels=1, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, side, side, generator=g) * 2 - 1


def test_build_vq_shapes_and_factor():
    vq = _tiny(codebook_size=24, embed_dim=3)
    assert vq.vq_config.f == 2
    assert V.codebook_size(vq) == 24
    x = _images()
    z = V.encode_latents(vq, x)
    assert z.shape == (4, 3, 8, 8)
    assert vq.decode(z).sample.shape == x.shape
    # three levels -> f = 4; RGB input
    vq4 = V.build_vq("vq-tiny", block_out_channels=(8, 16, 16), in_channels=3)
    assert vq4.vq_config.f == 4
    assert V.encode_latents(vq4, _images(2, 16, 3)).shape == (2, 4, 4, 4)
    with pytest.raises(ValueError, match="unknown VQ config"):
        V.build_vq("nope")
    with pytest.raises(ValueError, match="no field"):
        V.vq_config("vq-tiny", codebook=3)
    with pytest.raises(ValueError, match="norm_num_groups"):
        V.vq_config("vq-tiny", block_out_channels=(8, 12))


def test_quantize_nearest_code_and_straight_through_gradient():
    vq = _tiny()
    V.init_codebook_from_latents(vq, V.encode_latents(vq, _images(8)).detach())
    x = _images()
    z = V.encode_latents(vq, x)
    z.retain_grad()
    zq, idx, _ = V.quantize(vq, z)
    zq.retain_grad()
    # indices = brute-force nearest code; z_q = that code
    emb = vq.quantize.embedding.weight.detach()
    flat = z.detach().permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    brute = ((flat[:, None, :] - emb[None]) ** 2).sum(-1).argmin(1).reshape(idx.shape)
    assert torch.equal(idx, brute)
    assert torch.allclose(zq.detach(), emb[idx].permute(0, 3, 1, 2), atol=1e-6)
    # straight-through: dL/dz == dL/dz_q, and the gradient reaches the encoder
    w = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    (V.decode_quantized(vq, zq) * w).sum().backward()
    assert zq.grad.abs().sum() > 0
    assert torch.equal(z.grad, zq.grad)
    enc_grads = [p.grad for p in vq.encoder.parameters() if p.grad is not None]
    assert enc_grads and sum(g.abs().sum() for g in enc_grads) > 0


@pytest.mark.parametrize("legacy", [True, False])
def test_vq_loss_value_and_commitment_gradient(legacy):
    vq = _tiny(legacy=legacy)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 4, 3, 3, generator=g).requires_grad_(True)
    zq, idx, loss = V.quantize(vq, z)
    mse = ((zq.detach() - z.detach()) ** 2).mean()
    assert torch.allclose(loss, (1 + 0.25) * mse, rtol=1e-5)  # both forms have the same value
    loss.backward()
    # commitment term pulls z towards its code: weight 1 (legacy / taming form) or beta (VQ-VAE paper form)
    wc = 1.0 if legacy else 0.25
    expect = wc * 2 * (z.detach() - zq.detach()) / z.numel()
    assert torch.allclose(z.grad, expect, atol=1e-7)


def test_token_round_trip():
    vq = _tiny(codebook_size=16)
    V.init_codebook_from_latents(vq, V.encode_latents(vq, _images(8)).detach(), seed=2)
    vq.eval()
    x = _images()
    with torch.no_grad():
        idx = V.encode_tokens(vq, x)
        assert idx.dtype == torch.int64 and idx.shape == (4, 8, 8)
        assert 0 <= idx.min() and idx.max() < 16
        zq = V.indices_to_latents(vq, idx)
        # decode(tokens) is exactly decode of the quantised latents without re-quantising ...
        a = V.decode_tokens(vq, idx)
        b = vq.decode(zq, force_not_quantize=True).sample
        assert torch.equal(a, b)
        # ... and equals diffusers' own path (quantise inside decode) up to the straight-through rounding
        c = vq.decode(V.encode_latents(vq, x)).sample
        assert torch.allclose(a, c, atol=1e-5)
        # quantising a code gives the code back
        assert torch.equal(V.latents_to_indices(vq, zq), idx)
    with pytest.raises(ValueError, match="0..15"):
        V.indices_to_latents(vq, torch.full((1, 2, 2), 16))
    with pytest.raises(ValueError, match=r"\[B, h, w\]"):
        V.indices_to_latents(vq, torch.zeros(4, dtype=torch.long))


def test_codebook_stats_closed_forms():
    idx = torch.arange(8).repeat(5)  # uniform over 8 of 16 codes
    s = V.codebook_stats(idx, 16)
    assert s["perplexity"] == pytest.approx(8.0)
    assert s["usage"] == 0.5 and s["n_used"] == 8 and s["n_tokens"] == 40
    assert V.codebook_stats(torch.zeros(10, dtype=torch.long), 16)["perplexity"] == pytest.approx(1.0)
    # from counts: p = (3/4, 1/4) -> exp(H)
    s = V.codebook_stats(torch.tensor([3, 1, 0, 0]))
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert s["perplexity"] == pytest.approx(math.exp(h)) and s["usage"] == 0.5


def test_dead_code_monitor_reinitialises_unused_codes():
    vq = _tiny(codebook_size=16)
    x = _images(4)
    with torch.no_grad():
        z0 = V.encode_latents(vq, x)
        w = vq.quantize.embedding.weight
        w.copy_(z0.permute(0, 2, 3, 1).reshape(-1, 4)[:1].repeat(16, 1) + 100.0)  # every code far away ...
        w[3] = z0.mean((0, 2, 3))  # ... except code 3, which then takes every token
    opt = torch.optim.Adam(vq.parameters(), lr=1e-3)
    mon = V.DeadCodeMonitor(vq, every=2, seed=0)
    vq.train()
    infos = []
    for _ in range(2):
        out = vq(x)
        # the last term gives every code a gradient, so every row has non-zero Adam moments before the restart
        loss = (out.sample - x).abs().mean() + out.commit_loss.mean()
        loss = loss + 1e-3 * vq.quantize.embedding.weight.square().sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        infos.append(mon.step(opt))
    assert infos[0] is None
    info = infos[1]
    assert info["n_used"] == 1 and info["perplexity"] == pytest.approx(1.0)
    assert info["n_reinit"] == 15
    # re-initialised codes lie near encoder outputs (the pool), code 3 kept; Adam moments of new rows zeroed
    w = vq.quantize.embedding.weight.detach()
    pool = mon.pool
    dist = torch.cdist(w, pool).min(1).values
    assert (dist[torch.arange(16) != 3] < 0.1 * pool.std(0).norm()).all()
    st = opt.state[vq.quantize.embedding.weight]
    assert st["exp_avg"][torch.arange(16) != 3].abs().sum() == 0 and st["exp_avg"][3].abs().sum() > 0
    # after the restart the codebook is used far more
    vq.eval()
    assert V.codebook_stats(V.encode_tokens(vq, x), 16)["n_used"] > 4
    # eval-mode calls are not counted; the window was reset
    assert mon.counts.sum() == 0
    mon.close()
    vq.train()
    with torch.no_grad():
        vq(x)
    assert mon.counts.sum() == 0


def test_init_codebook_from_latents_uses_data():
    vq = _tiny(codebook_size=8)
    z = V.encode_latents(vq, _images(2)).detach()
    V.init_codebook_from_latents(vq, z, noise=0.0)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 4)
    w = vq.quantize.embedding.weight.detach()
    d2 = ((w[:, None, :] - flat[None]) ** 2).sum(-1).min(1).values  # every code IS an encoder output vector
    assert torch.equal(d2, torch.zeros(8))


def test_dead_code_monitor_auto_mode_window():
    vq = _tiny(codebook_size=16)
    x = _images(2)  # 2 x 8 x 8 = 128 tokens per call
    mon = V.DeadCodeMonitor(vq, every=2, auto=True)
    vq.train()
    for _ in range(3):
        vq(x).sample.sum().backward()
    with torch.no_grad():  # no-grad and eval calls are not training steps
        vq(x)
    vq.eval()
    vq(x)
    assert len(mon.history) == 1
    h = mon.history[0]
    assert h["step"] == 2 and h["n_tokens"] == 2 * 128  # the check before call 3 saw exactly calls 1 and 2
    assert h["n_reinit"] == 16 - h["n_used"]
    assert mon.counts.sum() == 128  # call 3 opened the next window
    mon.close()


def test_pretrain_and_finetune_vq_through_train_ae(tmp_path):
    import json

    from eqvae_lib import autoencoders as ae
    from eqvae_lib.losses import LossConfig
    from eqvae_lib.train_ae import AETrainConfig

    x = _images(16, 16, 1, seed=4)
    cfg = AETrainConfig(loss=LossConfig(perceptual="none", disc_weight=0.0), batch_size=4, max_steps=4,
                        max_epochs=None, lr=1e-3, val_every=0, val_size=8, progress=False)
    run = V.pretrain_vq(x, cfg, tmp_path / "base", arch="vq-tiny", codebook_size=16, dead_code_every=2,
                        init_from_data=True)
    rec = json.loads((run / "codebook.json").read_text())
    assert rec["vq_weight"] == 256.0  # C*H*W = 1*16*16 (taming balance)
    assert [h["step"] for h in rec["dead_code_history"]] == [2]
    assert 1 <= rec["final"]["n_used"] <= 16 and rec["final"]["n_tokens"] == 8 * 64
    vq = ae.load_autoencoder(run / "model")
    assert V.is_vq(vq) and V.codebook_size(vq) == 16
    summary = json.loads((run / "summary.json").read_text())
    assert summary["weights_hash"] == ae.weights_hash(vq)
    # EQ fine-tuning of the VQ model: tau acts on the continuous latent, the codebook moves, the encoder moves
    cfg_eq = AETrainConfig(loss=LossConfig(objective="eq", perceptual="none", disc_weight=0.0, p_alpha=0.0),
                           batch_size=4, max_steps=2, max_epochs=None, lr=1e-3, val_every=0, val_size=8,
                           progress=False)
    before = {k: v.clone() for k, v in vq.state_dict().items()}
    run2 = V.finetune_vq(vq, x, cfg_eq, tmp_path / "eq", dead_code_every=None)
    after = {k: v.cpu() for k, v in vq.state_dict().items()}  # on a GPU machine training ran on CUDA
    assert not torch.equal(before["encoder.conv_in.weight"], after["encoder.conv_in.weight"])
    assert (run2 / "codebook.json").is_file()
    branches = json.loads((run2 / "summary.json").read_text())["branch_counts"]
    assert branches["eq"] == 2
    with pytest.raises(ValueError, match="VQModel"):
        V.finetune_vq(ae.build_autoencoder("small-f4"), x, cfg_eq, tmp_path / "kl")
