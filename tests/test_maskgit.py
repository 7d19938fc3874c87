"""Tests of eqvae_lib.maskgit: masking schedule, masked-token training, iterative decoding, guidance, training loop
(checkpoints, eval callback, JSONL log, exact resume) and the token cache keyed by the tokenizer's weights hash."""

import json
import math

import pytest
import torch

from eqvae_lib import maskgit as M
from eqvae_lib import train_maskgit as T
from eqvae_lib import vq as V
from eqvae_lib.io import state_dict_hash


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(codebook_size=16, grid=(4, 4), num_classes=8, width=64, depth=2, heads=4, dropout=0.0,
               label_dropout=0.0, label_smoothing=0.0)
    cfg.update(kw)
    return M.build_maskgit(**cfg)


def _batch(n=8, k=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, k, (n, 4, 4), generator=g), torch.arange(n) % 8


@pytest.mark.parametrize("kind", ["cosine", "linear", "square"])
def test_mask_schedule_endpoints_and_monotone(kind):
    assert M.mask_schedule(0.0, kind).item() == pytest.approx(1.0)  # all masked at the start
    assert M.mask_schedule(1.0, kind).item() == pytest.approx(0.0, abs=1e-7)  # none at the end
    r = torch.linspace(0, 1, 101)
    g = M.mask_schedule(r, kind)
    assert (g[1:] <= g[:-1]).all() and (g[1:] < g[:-1]).sum() >= 99
    if kind == "cosine":
        assert M.mask_schedule(0.5).item() == pytest.approx(math.cos(math.pi / 4))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        M.mask_schedule(1.5, kind)
    with pytest.raises(ValueError, match="unknown kind"):
        M.mask_schedule(0.5, "exp")


def test_random_mask_counts_follow_schedule():
    tok = torch.zeros(3, 4, 4, dtype=torch.long)
    m = M.random_mask(tok, r=torch.tensor([0.0, 0.5, 1.0]), generator=torch.Generator().manual_seed(0))
    n = m.reshape(3, -1).sum(1).tolist()
    assert n == [16, math.ceil(16 * math.cos(math.pi / 4)), 1]  # r=1 still masks one token (at least 1)


def test_decoding_starts_all_masked_and_ends_with_none():
    model = _model()
    seen = []
    orig = model.forward

    def spy(tokens, labels=None):
        seen.append(int((tokens == model.mask_id).sum(-1).min()))
        return orig(tokens, labels)

    model.forward = spy
    steps = 6
    out = M.sample(model, labels=torch.arange(3), steps=steps, seed=0)
    n = 16
    assert seen[0] == n  # first forward: everything masked
    expect = [n] + [max(1, math.floor(n * math.cos(math.pi / 2 * (t + 1) / steps))) for t in range(steps - 1)]
    assert seen == expect
    assert out.shape == (3, 4, 4) and out.dtype == torch.int64
    assert (out != model.mask_id).all() and out.min() >= 0 and out.max() < 16  # none masked at the end


def test_small_maskgit_overfits_one_batch():
    model = _model()
    tok, lab = _batch()
    mask = M.random_mask(tok, generator=torch.Generator().manual_seed(5))
    model.eval()
    l0 = M.maskgit_loss(model, tok, lab, mask=mask)[0].item()
    cfg = T.MaskGITTrainConfig(steps=150, batch_size=8, lr=3e-3, warmup_steps=10, weight_decay=0.0, log_every=50)
    T.train_maskgit(model, tok, lab, cfg)
    model.eval()
    l1, st = M.maskgit_loss(model, tok, lab, mask=mask)
    assert l0 > 2.0  # about log(16) at initialisation
    assert l1.item() < l0 / 20
    assert st["acc"] > 0.95
    # sampling each sample's class reproduces the memorised grid almost everywhere
    out = M.sample(model, labels=lab, steps=4, seed=0, temperature=0.0)
    assert (out == tok).float().mean() > 0.9


def test_deterministic_decoding_for_fixed_seed():
    model = _model()
    lab = torch.tensor([0, 1, 2, 3])
    a = M.sample(model, labels=lab, steps=5, seed=7)
    b = M.sample(model, labels=lab, steps=5, seed=7)
    c = M.sample(model, labels=lab, steps=5, seed=8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    g1 = M.sample(model, labels=lab, steps=5, seed=7, guidance=3.0)
    g2 = M.sample(model, labels=lab, steps=5, generator=torch.Generator().manual_seed(7), guidance=3.0)
    assert torch.equal(g1, g2)
    assert model.training  # mode restored


def test_guidance_formula():
    model = _model()
    lab = torch.tensor([1, 5])
    # guidance 0 -> logits = unconditional: equal to null-class sampling; greedy one-step decoding = argmax
    g0 = M.sample(model, labels=lab, steps=1, temperature=0.0, guidance=0.0)
    unc = M.sample(model, n=2, steps=1, temperature=0.0)
    assert torch.equal(g0, unc)
    model.eval()
    with torch.no_grad():
        full = torch.full((2, 4, 4), model.mask_id)
        lc, lu = model(full, lab), model(full, None)
    g3 = M.sample(model, labels=lab, steps=1, temperature=0.0, guidance=3.0)
    assert torch.equal(g3.reshape(2, -1), (lu + 3.0 * (lc - lu)).argmax(-1))
    with pytest.raises(ValueError, match="needs labels"):
        M.sample(model, n=2, guidance=2.0)


def test_input_validation():
    model = _model()
    with pytest.raises(ValueError, match="0..16"):
        model(torch.full((1, 4, 4), 17))
    with pytest.raises(ValueError, match="grid"):
        model(torch.zeros(1, 3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="labels must lie"):
        model(torch.zeros(1, 4, 4, dtype=torch.long), torch.tensor([9]))
    with pytest.raises(ValueError, match="0..15"):
        M.maskgit_loss(model, torch.full((1, 4, 4), 16), None)
    with pytest.raises(ValueError, match="divisible"):
        M.MaskGITConfig(width=30, heads=4)
    named = M.build_maskgit("maskgit-tiny", codebook_size=16, grid=(4, 4))
    assert named.config.width == 64 and named(torch.zeros(2, 4, 4, dtype=torch.long)).shape == (2, 16, 16)
    assert M.MASKGIT_CONFIGS["maskgit-tiny"].codebook_size == 256  # the registry entry is not modified
    with pytest.raises(ValueError, match="unknown MaskGIT config"):
        M.build_maskgit("maskgit-huge")
    with pytest.raises(ValueError, match="no field"):
        M.build_maskgit(depht=3)


def test_label_dropout_and_unlabelled_use_null_class():
    model = _model(label_dropout=1.0)
    seen = []
    orig = model.forward
    model.forward = lambda t, y=None: (seen.append(y), orig(t, y))[1]
    tok, lab = _batch(4)
    M.maskgit_loss(model, tok, lab, generator=torch.Generator().manual_seed(0))
    assert (seen[-1] == model.null_class).all()  # all dropped with p = 1
    M.maskgit_loss(model, tok, lab, label_dropout=0.0)
    assert torch.equal(seen[-1], lab)
    M.maskgit_loss(model, tok, None)
    assert seen[-1] is None  # -> null class inside forward


def test_train_loop_checkpoints_eval_log_and_exact_resume(tmp_path):
    tok, lab = _batch(12)
    cfg = T.MaskGITTrainConfig(steps=4, batch_size=5, lr=1e-3, warmup_steps=2, ema_decay=0.9,
                               checkpoint_steps=(2, 4), log_every=1)
    calls = []

    def eval_fn(step, model):
        calls.append((step, model.training))
        return {"probe": float(step)}

    ref = _model()
    res = T.train_maskgit(ref, tok, lab, cfg, out_dir=tmp_path / "a", eval_fn=eval_fn)
    assert [c[0] for c in calls] == [2, 4] and not any(c[1] for c in calls)  # eval mode
    assert [p.rsplit("/", 1)[-1] for p in res["checkpoints"]] == ["step_0000002.pt", "step_0000004.pt"]
    lines = [json.loads(s) for s in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    train = [r for r in lines if r["kind"] == "train"]
    evals = [r for r in lines if r["kind"] == "eval"]
    assert [r["step"] for r in train] == [1, 2, 3, 4] and train[-1]["epoch"] == pytest.approx(20 / 12)
    assert [r["probe"] for r in evals] == [2.0, 4.0]
    # the checkpoint's EMA weights load back
    ema = M.load_maskgit(tmp_path / "a" / "step_0000004.pt")
    assert state_dict_hash(ema) == state_dict_hash(res["ema"])
    assert state_dict_hash(M.load_maskgit(tmp_path / "a" / "step_0000004.pt", use_ema=False)) == state_dict_hash(ref)
    # resume from step 2 reproduces the uninterrupted run exactly (no dropout)
    resumed = _model(seed=123)
    res2 = T.train_maskgit(resumed, tok, lab, cfg, out_dir=tmp_path / "b", resume=tmp_path / "a" / "step_0000002.pt")
    assert res2["step"] == 4
    assert state_dict_hash(resumed) == state_dict_hash(ref)
    assert state_dict_hash(res2["ema"]) == state_dict_hash(res["ema"])
    with pytest.raises(ValueError, match="grid"):
        T.train_maskgit(_model(), torch.zeros(2, 3, 3, dtype=torch.long), None, cfg)


def test_token_cache_keyed_and_checked_by_tokenizer_hash(tmp_path):
    torch.manual_seed(0)
    vq = V.build_vq("vq-tiny", codebook_size=16)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(6, 1, 8, 8, generator=g) * 2 - 1
    V.init_codebook_from_latents(vq, V.encode_latents(vq, x).detach())
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    path = M.token_cache_path(vq, "toy", root=tmp_path)
    assert state_dict_hash(vq) in path.name
    cache = M.build_token_cache(vq, x, labels, path=path, batch_size=4, meta={"dataset": "toy"})
    loaded = M.load_token_cache(path, vq=vq)
    assert torch.equal(loaded.tokens, V.encode_tokens(vq.eval(), x)) and torch.equal(loaded.labels, labels)
    assert loaded.grid == (4, 4) and loaded.codebook_size == 16 and loaded.meta["dataset"] == "toy"
    imgs = M.decode_to_images(vq, loaded.tokens, loaded.tokenizer_hash)
    assert torch.equal(imgs, V.decode_tokens(vq, cache.tokens).clamp(-1, 1))
    # another tokenizer (one weight changed) is refused, both when loading and when decoding
    other = V.build_vq("vq-tiny", codebook_size=16)
    other.load_state_dict(vq.state_dict())
    with torch.no_grad():
        other.decoder.conv_out.bias.add_(0.01)
    with pytest.raises(ValueError, match="rebuild the cache"):
        M.load_token_cache(path, vq=other)
    with pytest.raises(ValueError, match="weights hash"):
        M.decode_to_images(other, loaded.tokens, loaded.tokenizer_hash)
    with pytest.raises(FileNotFoundError):
        M.load_token_cache(tmp_path / "missing.safetensors")
    # unlabelled data
    M.save_token_cache(M.TokenCache(cache.tokens, None, cache.tokenizer_hash, 16), tmp_path / "u.safetensors")
    assert M.load_token_cache(tmp_path / "u.safetensors").labels is None


def test_attention_is_sdpa_and_equals_the_softmax_formula(monkeypatch):
    model = _model().train()  # training path: nn.MultiheadAttention -> F.scaled_dot_product_attention
    layer = model.blocks.layers[0]
    h = torch.randn(2, 17, 64)
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **k: (calls.append(1), sdpa(*a, **k))[1])
    out = layer.self_attn(h, h, h, need_weights=False)[0]
    assert calls
    mha = layer.self_attn
    q, k, v = torch.nn.functional.linear(h, mha.in_proj_weight, mha.in_proj_bias).chunk(3, dim=-1)
    split = lambda t: t.reshape(2, 17, 4, 16).transpose(1, 2)  # noqa: E731
    w = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(16), dim=-1)
    ref = mha.out_proj((w @ split(v)).transpose(1, 2).reshape(2, 17, 64))
    assert torch.allclose(out, ref, atol=1e-5)


def test_forward_checks_can_be_switched_off_for_the_hot_path():
    model = _model()
    model.check_inputs = False  # what train_maskgit / sample do after validating their inputs once
    model(torch.zeros(1, 4, 4, dtype=torch.long))
    model.check_inputs = True
    with pytest.raises(ValueError, match="0..16"):
        model(torch.full((1, 4, 4), 17))
    with pytest.raises(ValueError, match="0..15"):  # the training loop validates the whole cache up front
        T.train_maskgit(_model(), torch.full((4, 4, 4), 16), None, T.MaskGITTrainConfig(steps=1, batch_size=2))


def test_two_process_ddp_equals_one_process(tmp_path):
    """2 gloo processes (DDP, each half of the global batch) compute the 1-process update: the masks and label
    dropout are drawn for the global batch and the summed cross-entropy is divided by its masked positions."""
    tok, lab = _batch(24)
    cfg = T.MaskGITTrainConfig(steps=4, batch_size=8, lr=1e-3, warmup_steps=2, lr_schedule="cosine", ema_decay=0.9,
                               checkpoint_steps=(4,), log_every=2)
    model = _model(label_dropout=0.3, label_smoothing=0.1)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    T.launch_spawn(2, model, tok, lab, cfg, tmp_path / "ddp")
    single = T.train_maskgit(model, tok, lab, cfg, out_dir=tmp_path / "one")
    ddp = torch.load(tmp_path / "ddp" / "step_0000004.pt", weights_only=True)
    assert ddp["world_size"] == 2 and ddp["format"] == "eqvae-maskgit-v1"
    for key, ref in (("model", single["model"]), ("ema", single["ema"])):
        diff = torch.cat([(ddp[key][k] - v).abs().reshape(-1) for k, v in ref.state_dict().items()])
        moved = torch.cat([(v - start[k]).abs().reshape(-1) for k, v in ref.state_dict().items()])
        assert float(moved.mean()) > 1e-4  # training moved the weights (~1e-3): the agreement is not trivial
        # float summation order only: Adam turns the rounding of a near-zero gradient into a step of up to ~lr for
        # a handful of elements (max ~3e-5 here); a per-process loss mean instead of the global one moves 99% of
        # the elements by ~1e-4..4e-3
        assert float(diff.quantile(0.99)) < 1e-6 and float(diff.mean()) < 1e-6 and float(diff.max()) < 2e-4, key
    lo = [r for r in map(json.loads, (tmp_path / "one" / "log.jsonl").read_text().splitlines()) if r["kind"] == "train"]
    hi = [r for r in map(json.loads, (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()) if r["kind"] == "train"]
    assert [r["step"] for r in lo] == [r["step"] for r in hi] == [2, 4]
    for a, b in zip(lo, hi):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5) and a["acc"] == pytest.approx(b["acc"], abs=1e-6)
        assert a["lr"] == b["lr"]
