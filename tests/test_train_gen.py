"""Generative training loop: bit-identical resume, 2-process DDP (gloo) == 1 process, EMA, eval callback, checkpoints,
unconditional training, end-to-end sampling through the AE."""

import copy
import json

import pytest
import torch

from eqvae_lib.io import state_dict_hash
from eqvae_lib.latents import LatentCache, LatentCacheMismatchError, LatentNorm, save_latent_cache
from eqvae_lib.train_gen import (TrainGenConfig, build_model, checkpoint_path, launch_spawn, load_gen_checkpoint, main,
                                 sample_from_checkpoint, sample_images, sample_latents, train_gen)

torch.set_num_threads(1)


def _cache(n=64, labelled=True, repa=False, ae_hash="none"):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(n, 4, 4, 4, generator=g) * 2 + 1
    y = torch.arange(n) % 3 if labelled else None
    std = torch.rand(n, 4, 4, 4, generator=g) * 0.3 if repa else None
    return LatentCache.from_tensors(z, y, LatentNorm(torch.ones(4), torch.full((4,), 0.5), ae_hash), std=std)


def _cfg(**kw):
    base = dict(model="DiT-M/2", steps=6, batch_size=8, log_every=2, ckpt_steps=[3], ema_decay=0.9, lr=1e-3,
                progress=False)
    base.update(kw)
    return TrainGenConfig(**base)


def _losses(log_path):
    return [(r["step"], r["loss"]) for r in map(json.loads, open(log_path)) if "loss" in r]


def _equal_states(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)  # GPU runs train on CUDA


@pytest.mark.parametrize("method,repa", [("dit", False), ("sit", True)])
def test_resume_is_bit_identical(tmp_path, method, repa):
    cache = _cache(repa=repa)
    full = train_gen(_cfg(method=method), cache, tmp_path / "full")
    train_gen(_cfg(method=method, steps=3), cache, tmp_path / "part")  # "interrupted" after the step-3 checkpoint
    resumed = train_gen(_cfg(method=method), cache, tmp_path / "part")  # picks up step 3, runs 4..6
    assert resumed.checkpoints == [checkpoint_path(tmp_path / "part", 6)]
    assert _equal_states(full.model.state_dict(), resumed.model.state_dict())
    assert _equal_states(full.ema.state_dict(), resumed.ema.state_dict())
    assert _losses(full.log_path) == _losses(resumed.log_path)
    assert [s for s, _ in _losses(full.log_path)] == [2, 4, 6]
    a = torch.load(checkpoint_path(tmp_path / "full", 6), weights_only=True)
    b = torch.load(checkpoint_path(tmp_path / "part", 6), weights_only=True)
    assert a["opt"]["state"].keys() == b["opt"]["state"].keys() and len(a["opt"]["state"]) > 10
    assert all(_equal_states(a["opt"]["state"][k], b["opt"]["state"][k]) for k in a["opt"]["state"])
    # training moved the weights (the equality above is not trivially true)
    fresh = train_gen(_cfg(method=method, steps=1, ckpt_steps=[]), cache, tmp_path / "one")
    assert not _equal_states(fresh.model.state_dict(), full.model.state_dict())


def test_resume_refuses_other_model_or_cache(tmp_path):
    cache = _cache()
    train_gen(_cfg(steps=3), cache, tmp_path / "r")
    with pytest.raises(ValueError, match="cannot resume.*model"):
        train_gen(_cfg(model="DiT-T/2"), cache, tmp_path / "r")
    other = _cache(ae_hash="another-ae")
    with pytest.raises(ValueError, match="cannot resume.*AE hash"):
        train_gen(_cfg(), other, tmp_path / "r")


def test_two_process_ddp_equals_one_process(tmp_path):
    cache = _cache()
    save_latent_cache(cache, tmp_path / "cache")
    cfg = _cfg(steps=4, ckpt_steps=[])
    single = train_gen(cfg, cache, tmp_path / "single", device="cpu")  # launch_spawn runs gloo on the CPU
    launch_spawn(2, cfg, tmp_path / "cache", tmp_path / "ddp")
    ddp = torch.load(checkpoint_path(tmp_path / "ddp", 4), weights_only=True)
    assert ddp["world_size"] == 2
    for k, v in single.model.state_dict().items():
        torch.testing.assert_close(ddp["model"][k], v, atol=2e-5, rtol=1e-4)
    lo = [x for _, x in _losses(single.log_path)]
    hi = [x for _, x in _losses(tmp_path / "ddp" / "log.jsonl")]
    assert len(lo) == len(hi) == 2 and all(abs(a - b) < 1e-4 for a, b in zip(lo, hi))


def test_ema_eval_callback_and_checkpoint_loading(tmp_path):
    cache = _cache()
    calls = []

    def eval_fn(step, ema):
        calls.append((step, ema.training, state_dict_hash(ema)))
        return {"fid": 100.0 - step}

    r = train_gen(_cfg(ema_decay=0.0, ckpt_steps=[2, 4]), cache, tmp_path / "e", eval_fn=eval_fn)
    assert [c[0] for c in calls] == [2, 4, 6] and not any(c[1] for c in calls)
    assert _equal_states(r.ema.state_dict(), r.model.state_dict())  # decay 0: EMA = model
    evals = [json.loads(line) for line in open(r.log_path) if "eval" in line]
    assert [(e["step"], e["eval"]["fid"]) for e in evals] == [(2, 98.0), (4, 96.0), (6, 94.0)]
    assert all(checkpoint_path(tmp_path / "e", s).is_file() for s in (2, 4, 6))
    ck = load_gen_checkpoint(checkpoint_path(tmp_path / "e", 4))
    assert ck.step == 4 and state_dict_hash(ck.model) == calls[1][2] and not ck.model.training
    assert ck.norm == cache.norm and ck.num_classes == 3
    init = train_gen(_cfg(ema_decay=1.0, steps=2, ckpt_steps=[]), cache, tmp_path / "i")  # seeds itself (seed 0)
    torch.manual_seed(0)
    ref = build_model(_cfg(), (4, 4, 4), 3)
    assert _equal_states(init.ema.state_dict(), ref.state_dict())  # decay 1: EMA = initial weights


def test_unconditional_training_and_label_errors(tmp_path):
    unl = _cache(labelled=False)
    with pytest.raises(ValueError, match="num_classes=0"):
        train_gen(_cfg(num_classes=5), unl, tmp_path / "a")
    r = train_gen(_cfg(steps=30, ckpt_steps=[], log_every=10, lr=3e-3), unl, tmp_path / "b")
    assert r.model.num_classes == 0
    losses = [x for _, x in _losses(r.log_path)]
    assert losses[-1] < losses[0]  # learns something (shifted data: the zero-init model starts off)
    with pytest.raises(ValueError, match="exceeds"):
        train_gen(_cfg(batch_size=128), unl, tmp_path / "c")


def _tiny_vae():
    from diffusers import AutoencoderKL
    torch.manual_seed(0)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                         norm_num_groups=8, layers_per_block=1).eval()


def test_sample_images_end_to_end(tmp_path):
    vae = _tiny_vae()
    cache = _cache(ae_hash=state_dict_hash(vae))
    r = train_gen(_cfg(steps=2, ckpt_steps=[]), cache, tmp_path / "s")
    ck = load_gen_checkpoint(r.checkpoints[-1])
    kw = dict(steps=5, batch_size=3, progress=False)
    a, ya = sample_images(ck.model, vae, ck.norm, 5, generator=torch.Generator().manual_seed(0),
                          return_labels=True, **kw)
    b = sample_from_checkpoint(ck, vae, 5, generator=torch.Generator().manual_seed(0), **kw)
    assert a.shape == (5, 3, 8, 8) and a.min() >= -1 and a.max() <= 1 and torch.equal(a, b)
    assert ya.shape == (5,) and ya.max() < 3
    # sample_images = decode(denormalize(sample_latents)) with the same labels and generator stream
    g = torch.Generator().manual_seed(0)
    torch.randint(0, 3, (5,), generator=g)  # the draw of the random labels
    z2, _ = sample_latents(ck.model, 5, labels=ya, generator=g, **kw)
    with torch.no_grad():
        want = vae.decode(ck.norm.denormalize(z2)).sample.clamp(-1, 1)
    torch.testing.assert_close(a, want, atol=1e-5, rtol=1e-5)
    other = copy.deepcopy(vae)
    with torch.no_grad():
        other.decoder.conv_out.weight.mul_(1.01)
    with pytest.raises(LatentCacheMismatchError, match="weights hash"):
        sample_images(ck.model, other, ck.norm, 2, **kw)
    with pytest.raises(ValueError, match="heun/euler"):
        sample_images(ck.model, vae, ck.norm, 2, sampler="heun", **kw)


def test_cli_main(tmp_path, capsys):
    cache = _cache()
    save_latent_cache(cache, tmp_path / "cache")
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps({"model": "DiT-M/2", "batch_size": 8, "progress": False}))
    assert main(["--cache", str(tmp_path / "cache"), "--run-dir", str(tmp_path / "run"), "--config", str(cfg_file),
                 "--set", "steps=2", "ckpt_steps=[1]", "log_every=1"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["step"] == 2 and len(out["checkpoints"]) == 2


def test_arms_with_one_seed_share_initialisation_and_batches(tmp_path, monkeypatch):
    """Common random numbers (issue #14): the generators of two arms (different latents, one seed) start from the same
    weights and see the same batch indices; another seed starts elsewhere."""
    from eqvae_lib import train_gen as tg

    drawn: list[list[torch.Tensor]] = []

    class SpyBatches(tg._Batches):  # records the indices each train_gen run actually draws
        def __init__(self, *args, **kw):
            super().__init__(*args, **kw)
            drawn.append([])

        def __call__(self, step):
            idx = super().__call__(step)
            drawn[-1].append(idx.clone())
            return idx

    monkeypatch.setattr(tg, "_Batches", SpyBatches)
    a = _cache()
    g = torch.Generator().manual_seed(1)
    b = LatentCache.from_tensors(torch.randn(64, 4, 4, 4, generator=g) * 3 - 1, torch.arange(64) % 3, a.norm)
    ra = train_gen(_cfg(ema_decay=1.0, steps=10, ckpt_steps=[], seed=5), a, tmp_path / "a")
    rb = train_gen(_cfg(ema_decay=1.0, steps=10, ckpt_steps=[], seed=5), b, tmp_path / "b")
    rc = train_gen(_cfg(ema_decay=1.0, steps=10, ckpt_steps=[], seed=6), a, tmp_path / "c")
    assert _equal_states(ra.ema.state_dict(), rb.ema.state_dict())  # decay 1: EMA = the initial weights
    assert not _equal_states(ra.ema.state_dict(), rc.ema.state_dict())
    assert not _equal_states(ra.model.state_dict(), rb.model.state_dict())  # different latents trained differently
    # the batch indices the two arms' runs drew (10 steps: past one epoch of 64 / 8), step by step
    assert len(drawn) == 3 and len(drawn[0]) == len(drawn[1]) == 10
    assert all(torch.equal(x, y) for x, y in zip(drawn[0], drawn[1]))
    assert not all(torch.equal(x, y) for x, y in zip(drawn[0], drawn[2]))  # another seed, other batches
