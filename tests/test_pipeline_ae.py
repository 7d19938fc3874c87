"""The autoencoder side of protocol v2 (issue 15) through the pipeline: replicate seeds, a warm discriminator saved
with the base, the fine-tune lr continuing the base's, caps in steps, on a tiny synthetic problem in tmp_path."""

import dataclasses
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from eqvae_lib import train_ae
from eqvae_lib.experiment import curve_fid, pipeline
from eqvae_lib.experiment.config import build_config

TINY = dict(dataset="fashion-mnist", image_size=16, channels=1, n_train=64, n_test=32, val_size=16, seed=0,
            replicate_seeds=[0, 1], progress=False, ae_arch="small-f4", perceptual="none", disc_ndf=8,
            min_latent_side=2, pretrain_batch=16, pretrain_lr=3.3e-4, pretrain_max_steps=4, pretrain_max_epochs=None,
            pretrain_disc_start=2, pretrain_val_every=2, pretrain_plateau_window=2, pretrain_plateau_threshold=0.0,
            finetune_subset=32, finetune_batch=16, finetune_epochs=1, finetune_lr=None, finetune_disc="warm")


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(96, 1, 16, 16, generator=g) * 2 - 1
    y = torch.arange(96) % 10
    return pipeline.Data(x[:64], y[:64], x[64:], y[64:], "synthetic", 16, 10, "train-id", "test-id")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One base autoencoder for the module (4 steps), in its own cache."""
    root = tmp_path_factory.mktemp("ae") / "cache"
    mp = pytest.MonkeyPatch()
    mp.setattr(pipeline, "CACHE", root)
    try:
        base = pipeline.train_or_load_base_autoencoder(build_config(TINY), _data())
    finally:
        mp.undo()
    return root, base


@pytest.fixture
def cache(built, monkeypatch):
    monkeypatch.setattr(pipeline, "CACHE", built[0])
    return built[0]


@pytest.fixture
def orders(monkeypatch):
    """Every epoch permutation drawn by train_ae, as (seed, epoch, indices)."""
    seen = []
    real = train_ae._epoch_indices

    def spy(n, seed, epoch, rank, world):
        out = real(n, seed, epoch, rank, world)
        seen.append((seed, epoch, out))
        return out

    monkeypatch.setattr(train_ae, "_epoch_indices", spy)
    return seen


def test_base_stops_at_its_step_cap_and_saves_its_discriminator(cache, built):
    base = built[1]
    s = base.summary
    assert s["steps"] == 4 and s["stop_reason"] == "max_steps" and s["config"]["max_time_s"] is None
    assert base.seed == 0 and base.wall_s == s["wall_time_s"] > 0
    cfg = json.loads((base.run_dir / "discriminator_config.json").read_text())
    assert (cfg["class"], cfg["in_channels"], cfg["ndf"], cfg["n_layers"]) == ("NLayerDiscriminator", 1, 8, 3)
    state = load_file(str(base.run_dir / "discriminator.safetensors"))
    ck = torch.load(base.run_dir / "checkpoint.pt", weights_only=True)  # the discriminator at the end of training
    assert state.keys() == ck["disc"].keys() and all(torch.equal(state[k], ck["disc"][k]) for k in state)
    assert cfg["weights_hash"] == s["discriminator_final_hash"]


def test_replicate_seeds_set_the_finetune_seed_key_and_weights_and_arms_share_data_order(cache, built, orders, monkeypatch):
    P, data = build_config(TINY), _data()
    base = built[1]
    orders.clear()
    plain0 = pipeline.train_or_load_finetuned_autoencoders(P, "plain", data, base)  # seed None = replicate_seeds[0]
    eq0 = pipeline.train_or_load_finetuned_autoencoders(P, "eq", data, base, seed=0)
    plain1 = pipeline.train_or_load_finetuned_autoencoders(P, "plain", data, base, seed=1)
    assert [a.seed for a in plain0 + eq0 + plain1] == [0, 0, 1]
    assert plain0[-1].summary["config"]["seed"] == 0 and plain1[-1].summary["config"]["seed"] == 1
    assert plain0[-1].summary["replicate_seed"] == 0 and plain1[-1].summary["replicate_seed"] == 1
    assert plain1[-1].key != plain0[-1].key and plain1[-1].hash != plain0[-1].hash
    # common random numbers: the plain and EQ fine-tunes of seed 0 walk the data in the same order; seed 1 does not
    by_seed = {}
    for seed, epoch, idx in orders:
        by_seed.setdefault(seed, []).append(idx)
    assert len(by_seed[0]) == 2 and by_seed[0][0] == by_seed[0][1]
    assert by_seed[1][0] != by_seed[0][0]
    # the same seed again, built from empty caches elsewhere: the same key and the same weights
    monkeypatch.setattr(pipeline, "CACHE", cache.parent / "cache2")
    again = pipeline.train_or_load_finetuned_autoencoders(P, "plain", data, base, seed=0)
    assert again[-1].key == plain0[-1].key and again[-1].hash == plain0[-1].hash
    assert again[-1].run_dir != plain0[-1].run_dir  # really built again
    monkeypatch.setattr(pipeline, "CACHE", cache)
    suite = pipeline.train_or_load_autoencoder_suite(P, data, seed=1)
    assert suite["plain"].hash == plain1[-1].hash and suite["eq"].seed == 1


def test_warm_discriminator_starts_from_the_base_and_fresh_does_not(cache, built, monkeypatch):
    P, data = build_config(TINY), _data()
    base = built[1]
    saved = load_file(str(base.run_dir / "discriminator.safetensors"))
    at_step0 = []
    real = train_ae.EQVAELoss.generator_loss

    def spy(self, vae, x, step=0, generator=None, **kw):
        if step == 0 and not at_step0:
            at_step0.append({k: v.detach().clone() for k, v in self.discriminator.state_dict().items()})
        return real(self, vae, x, step, generator, **kw)

    monkeypatch.setattr(train_ae.EQVAELoss, "generator_loss", spy)
    warm = pipeline.train_or_load_finetuned_autoencoders(P, "plain", data, base, tag="disc")[-1]  # not cached yet
    assert all(torch.equal(at_step0[0][k], saved[k]) for k in saved)
    assert warm.summary["discriminator"] == f"warm (base {base.hash})"
    assert warm.summary["discriminator_init"]["mode"] == "warm"
    at_step0.clear()
    fresh = pipeline.train_or_load_finetuned_autoencoders(P.replace(finetune_disc="fresh"), "plain", data, base,
                                                          tag="disc")[-1]
    assert not all(torch.equal(at_step0[0][k], saved[k]) for k in saved)
    assert fresh.summary["discriminator"] == "fresh" and fresh.key != warm.key
    # warm requested, no weights saved with the base: a clear error, never a fresh discriminator in its place
    bare = cache.parent / "base-without-discriminator"
    shutil.copytree(base.run_dir, bare, ignore=shutil.ignore_patterns("discriminator.safetensors"))
    with pytest.raises(ValueError, match="finetune_disc: fresh") as e:
        pipeline.train_or_load_finetuned_autoencoders(P, "eq", data, dataclasses.replace(base, run_dir=bare))
    assert str(bare) in str(e.value)
    loaded = pipeline.AEArtefact(base.model, None, None, base.hash, source="some/hub-id")
    with pytest.raises(ValueError, match="some/hub-id.*finetune_disc: fresh"):
        pipeline.train_or_load_finetuned_autoencoders(P.replace(finetune_lr=1e-4), "eq", data, loaded)


def test_finetune_lr_none_continues_at_the_base_logged_final_lr(cache, built):
    P, data = build_config(TINY), _data()
    base = built[1]
    logged = [json.loads(ln) for ln in (base.run_dir / "log.jsonl").read_text().splitlines()]
    last = [r for r in logged if "loss" in r and "event" not in r][-1]["lr"]
    assert pipeline.base_final_lr(base) == last == pytest.approx(3.3e-4)
    ft = pipeline.train_or_load_finetuned_autoencoders(P, "plain", data, base)[-1]
    assert ft.summary["lr"] == last and "base's final lr" in ft.summary["lr_source"]
    lr, source = pipeline.finetune_lr(P.replace(finetune_lr=1e-5), base)
    assert lr == 1e-5 and "finetune_lr" in source
    loaded = pipeline.AEArtefact(base.model, None, None, base.hash, source="some/hub-id")
    with pytest.raises(ValueError, match="set finetune_lr"):
        pipeline.finetune_lr(P, loaded)


def test_saved_discriminator_round_trips_and_a_different_architecture_is_refused(tmp_path):
    from eqvae_lib.losses import LossConfig, NLayerDiscriminator

    torch.manual_seed(3)
    disc, lc = NLayerDiscriminator(1, 8, 3), LossConfig(disc_ndf=8, disc_layers=3)
    cfg = train_ae.discriminator_config(disc, lc, 1)
    train_ae.save_discriminator(disc, tmp_path, cfg)
    state, saved = train_ae.load_discriminator(tmp_path, expected=cfg)
    other = NLayerDiscriminator(1, 8, 3)
    other.load_state_dict(state)
    assert train_ae.state_dict_hash(other) == saved["weights_hash"] == cfg["weights_hash"]
    with pytest.raises(ValueError, match="ndf"):
        train_ae.load_discriminator(tmp_path, expected=train_ae.discriminator_config(
            NLayerDiscriminator(1, 16, 3), LossConfig(disc_ndf=16), 1))
    with pytest.raises(ValueError, match="finetune_disc: fresh"):
        train_ae.load_discriminator(tmp_path / "nothing-here")


def test_the_last_checkpoint_re_scored_on_gen_fid_n_equals_what_the_curve_logs_at_that_n(cache, built):
    """curve_fid: a curve scored on 24 samples at its last step, re-scored on gen_fid_n = 16 from its checkpoint,
    equals the last point of the same run scored on 16 samples in training (same weights, same sampling stream)."""
    _, base = built
    gen = dict(TINY, gen_methods=["sit"], gen_model="SiT-T/2", gen_steps=4, gen_batch=8, gen_eval_steps=[2, 4],
               gen_fid_n=16, gen_sample_batch=8, sit_sample_steps=2, classifier_epochs=1, gen_log_every=1)
    data = _data()
    P16, P24 = build_config({**gen, "gen_fid_n_final": 16}), build_config({**gen, "gen_fid_n_final": 24})
    extractor = pipeline.feature_extractor(P16, data)
    reference = pipeline.reference_stats(P16, data, extractor)
    c16 = pipeline.train_or_load_generative_curve(P16, data, base.model, 0, "sit", extractor, reference)
    c24 = pipeline.train_or_load_generative_curve(P24, data, base.model, 0, "sit", extractor, reference)
    assert c16.run_dir != c24.run_dir and c16.n_fid == (16, 16) and c24.n_fid == (16, 24)
    assert c16.fid[0] == c24.fid[0]  # one training, one sampling stream: identical up to the last step
    assert curve_fid.on_one_n(P16, base.model, 0, "sit", c16, extractor, reference) is c16  # already on one n
    one = curve_fid.on_one_n(P24, base.model, 0, "sit", c24, extractor, reference)
    assert one.n_fid == (16, 16) and one.fid[0] == c24.fid[0]
    assert one.fid[-1] == pytest.approx(c16.fid[-1], rel=1e-6, abs=1e-9)  # what training logged on 16 samples
    assert one.fid[-1] != pytest.approx(c24.fid[-1], rel=1e-6)  # ...not the 24-sample value
    cached = json.loads((c24.run_dir / "final_fid_n16.json").read_text())
    assert cached["result"]["fid"] == one.fid[-1] and cached["key"]["step"] == 4
    assert curve_fid.final_fid_at(P24, base.model, 0, "sit", c24, extractor, reference)["fid"] == one.fid[-1]
    with pytest.raises(ValueError, match="trained with seed 0, method 'sit'; asked to re-score it as seed 1"):
        curve_fid.final_fid_at(P24, base.model, 1, "sit", c24, extractor, reference)
    with pytest.raises(ValueError, match="latest checkpoint is step 4, the curve ends at step 3"):
        curve_fid.final_fid_at(P24, base.model, 0, "sit", dataclasses.replace(c24, steps=(2, 3)), extractor, reference)
    with pytest.raises(ValueError, match="intermediate checkpoints were scored on"):
        curve_fid.on_one_n(build_config({**gen, "gen_fid_n": 12, "gen_fid_n_final": 24}), base.model, 0, "sit",
                           c24, extractor, reference)
