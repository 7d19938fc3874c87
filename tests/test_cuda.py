"""The CUDA paths of the library (skipped without a GPU; CI has none): the objective, the AE and DiT/SiT/MaskGIT
training loops and samplers run on CUDA and agree with the CPU where the arithmetic is the same.

Run on a GPU machine with ``pytest tests/test_cuda.py``. TF32 is switched off inside the comparisons so that CPU and
CUDA do the same fp32 arithmetic (up to summation order); training runs keep the library's bf16 autocast.
"""

import contextlib
import json

import pytest
import torch

from eqvae_lib import autoencoders as ae
from eqvae_lib import maskgit as M
from eqvae_lib import train_maskgit as T
from eqvae_lib.io import state_dict_hash
from eqvae_lib.latents import LatentCache, LatentNorm
from eqvae_lib.losses import EQVAELoss, LossConfig
from eqvae_lib.train_ae import AETrainConfig, train_autoencoder
from eqvae_lib.train_gen import TrainGenConfig, load_gen_checkpoint, sample_images, train_gen
from eqvae_lib.transforms import Transform

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@contextlib.contextmanager
def _no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _vae(seed=0):
    torch.manual_seed(seed)
    return ae.build_autoencoder("small-f4", in_channels=3, block_out_channels=(16, 16, 16))


@pytest.mark.parametrize("branch,tau", [("plain", None), ("eq", Transform(k=1, sx=0.5, sy=0.5))])
def test_objective_agrees_between_cpu_and_cuda(branch, tau):
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    out = {}
    with _no_tf32():
        for dev in ("cpu", "cuda"):
            vae = _vae().to(dev)
            loss_fn = EQVAELoss(LossConfig(perceptual="none", disc_ndf=8), in_channels=3).to(dev)
            kw = {"tau": tau} if tau is not None else {}
            loss, logs, (target, recon) = loss_fn.generator_loss(vae, x.to(dev), 0, torch.Generator().manual_seed(2),
                                                                 branch=branch, **kw)
            loss.backward()
            grad = vae.encoder.conv_in.weight.grad.detach().cpu()
            out[dev] = (loss.item(), recon.detach().cpu(), grad, float(logs["d_weight"]))
    (lc, rc, gc, dc), (lg, rg, gg, dg) = out["cpu"], out["cuda"]
    assert lg == pytest.approx(lc, rel=1e-4)
    torch.testing.assert_close(rg, rc, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(gg, gc, atol=1e-4 * gc.abs().max().item(), rtol=1e-3)
    assert dg == pytest.approx(dc, rel=1e-3)  # the adaptive GAN weight (gradients through the last layer)


def test_train_autoencoder_on_cuda_trains_saves_and_resumes(tmp_path):
    x = torch.rand(64, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    cfg = dict(loss=LossConfig(perceptual="none", disc_ndf=8, min_latent_side=2), batch_size=8, device="cuda",
               progress=False, val_every=4, val_size=8, norm_images=16, checkpoint_every_steps=2)
    train_autoencoder(_vae(), x, AETrainConfig(max_steps=5, **cfg), tmp_path / "r")
    train_autoencoder(_vae(), x, AETrainConfig(max_epochs=2, **cfg), tmp_path / "r")  # resumes at step 5
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert s["device"].startswith("cuda") and s["steps"] == 16 and s["images_seen"] == 128
    steps = [r["step"] for r in map(json.loads, (tmp_path / "r" / "log.jsonl").read_text().splitlines()) if "loss" in r]
    assert steps == list(range(1, 17))  # one log line per step across the resume
    losses = [r["loss"] for r in map(json.loads, (tmp_path / "r" / "log.jsonl").read_text().splitlines()) if "loss" in r]
    assert all(torch.isfinite(torch.tensor(losses)))
    m = ae.load_autoencoder(tmp_path / "r" / "model")  # saved from CUDA, loads on CPU with the logged hash
    assert ae.weights_hash(m) == s["weights_hash"]


def _cache(n=64, ae_hash="none"):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(n, 4, 4, 4, generator=g) * 2 + 1
    return LatentCache.from_tensors(z, torch.arange(n) % 3, LatentNorm(torch.ones(4), torch.full((4,), 0.5), ae_hash))


@pytest.mark.parametrize("method", ["dit", "sit"])
def test_train_gen_on_cuda_resumes_and_samples_like_cpu(tmp_path, method):
    torch.manual_seed(0)
    vae = ae.build_autoencoder("small-f4", in_channels=3, block_out_channels=(8, 16), norm_num_groups=8)
    cache = _cache(ae_hash=state_dict_hash(vae))
    cfg = dict(model="DiT-M/2", method=method, batch_size=8, log_every=2, ema_decay=0.9, lr=1e-3, progress=False)
    full = train_gen(TrainGenConfig(steps=8, ckpt_steps=[4], **cfg), cache, tmp_path / "full", device="cuda")
    train_gen(TrainGenConfig(steps=4, ckpt_steps=[4], **cfg), cache, tmp_path / "part", device="cuda")
    resumed = train_gen(TrainGenConfig(steps=8, ckpt_steps=[4], **cfg), cache, tmp_path / "part", device="cuda")
    assert next(full.model.parameters()).is_cuda and resumed.step == 8
    for k, v in full.model.state_dict().items():  # same run; CUDA atomics may reorder sums in the backward
        torch.testing.assert_close(resumed.model.state_dict()[k], v, atol=1e-3, rtol=1e-3)
    ck = load_gen_checkpoint(full.checkpoints[-1])  # on CPU
    kw = dict(method=method, steps=5, batch_size=4, progress=False)
    with _no_tf32():
        a = sample_images(ck.model, vae, ck.norm, 6, generator=torch.Generator().manual_seed(0), **kw)
        b = sample_images(ck.model.cuda(), vae.cuda(), ck.norm, 6, generator=torch.Generator().manual_seed(0), **kw)
    assert a.shape == b.shape == (6, 3, 8, 8) and not b.is_cuda and b.min() >= -1 and b.max() <= 1
    torch.testing.assert_close(b, a, atol=2e-3, rtol=2e-3)  # same noise from the CPU generator


def test_maskgit_overfits_one_batch_on_cuda_and_decodes_deterministically():
    torch.manual_seed(0)
    model = M.build_maskgit(codebook_size=16, grid=(4, 4), num_classes=8, width=64, depth=2, heads=4, dropout=0.0,
                            label_dropout=0.0, label_smoothing=0.0).cuda()
    g = torch.Generator().manual_seed(0)
    tok, lab = torch.randint(0, 16, (8, 4, 4), generator=g), torch.arange(8)
    T.train_maskgit(model, tok, lab, T.MaskGITTrainConfig(steps=150, batch_size=8, lr=3e-3, warmup_steps=10,
                                                           weight_decay=0.0, log_every=50))
    model.eval()
    mask = M.random_mask(tok, generator=torch.Generator().manual_seed(5))
    _, st = M.maskgit_loss(model, tok.cuda(), lab.cuda(), mask=mask.cuda())
    assert st["acc"] > 0.95
    a = M.sample(model, labels=lab, steps=4, seed=0, temperature=0.0)
    b = M.sample(model, labels=lab, steps=4, seed=0, temperature=0.0)
    assert torch.equal(a, b) and (a.cpu() == tok).float().mean() > 0.9


def test_attention_runs_on_sdpa_fast_kernels_under_bf16():
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from eqvae_lib.dit import dit_model
    torch.manual_seed(0)
    dit = dit_model("DiT-S/2", input_size=16, in_channels=4, num_classes=10).cuda().train()
    mg = M.build_maskgit(codebook_size=64, grid=(8, 8), num_classes=10, width=128, depth=2, heads=4).cuda().train()
    y = torch.randint(0, 10, (4,), device="cuda")
    # only flash / memory-efficient kernels allowed: raises if the attention would fall back to the math path
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]), \
            torch.autocast("cuda", dtype=torch.bfloat16):
        dit(torch.randn(4, 4, 16, 16, device="cuda"), torch.randint(0, 1000, (4,), device="cuda"), y).sum().backward()
        mg(torch.randint(0, 64, (4, 8, 8), device="cuda"), y).float().sum().backward()


def test_compiled_train_gen_matches_eager_closely(tmp_path):
    cache = _cache()
    cfg = dict(model="DiT-M/2", batch_size=8, steps=4, log_every=2, ema_decay=0.9, lr=1e-3, progress=False)
    eager = train_gen(TrainGenConfig(**cfg), cache, tmp_path / "e", device="cuda")
    comp = train_gen(TrainGenConfig(compile=True, **cfg), cache, tmp_path / "c", device="cuda")
    for k, v in eager.model.state_dict().items():  # same draws (RNG rule); compiled kernels sum differently
        torch.testing.assert_close(comp.model.state_dict()[k], v, atol=2e-2, rtol=2e-2)
