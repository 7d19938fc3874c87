"""The notebooks' get-or-build layer: cache keys, curve arithmetic, design rule, parameters."""

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from eqvae_lib.experiment import pipeline
from eqvae_lib.experiment.config import ConfigError, build_config


def test_steps_to_reach_interpolates_and_reports_not_reached():
    steps, fid = [100, 200, 300], [50.0, 30.0, 20.0]
    assert pipeline.steps_to_reach(steps, fid, 40.0) == 150  # halfway between 50 (100) and 30 (200)
    assert pipeline.steps_to_reach(steps, fid, 60.0) == 100  # already below at the first checkpoint
    assert pipeline.steps_to_reach(steps, fid, 20.0) == 300
    assert pipeline.steps_to_reach(steps, fid, 10.0) is None
    # epochs (floats) are not rounded to whole epochs: 17.28 -> 11.56 between epochs 2 and 3 reaches 15.24 at 2.36
    assert pipeline.steps_to_reach([1.0, 2.0, 3.0], [60.0, 17.28, 11.56], 15.24) == pytest.approx(2.36)


def _gen_curve(steps, fid) -> pipeline.GenCurve:
    """A GenCurve as train_or_load_generative_curve returns it, with made-up values."""
    return pipeline.GenCurve(steps=tuple(steps), fid=tuple(fid), kid=(None,) * len(fid), n_fid=(8,) * len(fid),
                             loss=((1, 0.5),), run_dir=Path("run"), metric="m", sampler="ddpm 2", generator="DiT-T/2",
                             latents_per_s=None, key={})


def _maskgit_curve(epochs, fid) -> pipeline.MaskGITCurve:
    return pipeline.MaskGITCurve(epochs=tuple(epochs), fid=tuple(fid), kid=(None,) * len(fid), metric="m",
                                 run_dir=Path("run"))


def test_curve_stats_over_seeds():
    a = _gen_curve([1, 2], [10.0, 4.0])
    b = _gen_curve([1, 2], [14.0, 2.0])
    st = pipeline.curve_stats([a, b])
    assert (st.steps, st.mean, st.lo, st.hi, st.k) == ((1, 2), (12.0, 3.0), (10.0, 2.0), (14.0, 4.0), 2)
    with pytest.raises(ValueError, match="different steps"):
        pipeline.curve_stats([a, _gen_curve([1, 3], [1.0, 1.0])])
    with pytest.raises(ValueError, match="at least one"):
        pipeline.curve_stats([])
    # MaskGIT curves are aligned on their epochs
    m = pipeline.curve_stats([_maskgit_curve([0.5, 1.0], [9.0, 3.0]), _maskgit_curve([0.5, 1.0], [7.0, 5.0])])
    assert (m.steps, m.mean, m.lo, m.hi) == ((0.5, 1.0), (8.0, 4.0), (7.0, 3.0), (9.0, 5.0))
    with pytest.raises(ValueError, match="different steps"):
        pipeline.curve_stats([_maskgit_curve([0.5, 1.0], [9.0, 3.0]), _maskgit_curve([1.0, 2.0], [9.0, 3.0])])


def test_curve_objects_are_frozen_and_round_trip_their_json():
    c = _gen_curve([1, 2], [10.0, 4.0])
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.fid = (0.0, 0.0)
    sp = pipeline.FidSpread(fids=(3.0, 5.0), mean=4.0, sd=2 ** 0.5, range=2.0, n=16, draws=2, step=6, metric="m")
    back = pipeline._fid_spread(json.loads(json.dumps(dataclasses.asdict(sp))))  # as fid_spread.json stores it
    assert back == sp


def test_expected_branch_fractions_follow_eq7():
    f = pipeline.expected_branch_fractions(0.5, 0.25)
    assert f == {"plain": 0.375, "lowres": 0.125, "eq": 0.5}  # SPEC: 50 / 37.5 / 12.5 %
    f = pipeline.expected_branch_fractions(0.3, 0.5)
    assert sum(f.values()) == pytest.approx(1.0) and f["eq"] == pytest.approx(0.7)


def test_design_rule_prefers_the_largest_grid_that_fits():
    df = pd.DataFrame([
        dict(config="a 32px", latent="4x8x8", latent_side=8, n_scales_floor4=4, img_per_s=160, pretrain_min_projected=15),
        dict(config="b 64px", latent="4x16x16", latent_side=16, n_scales_floor4=12, img_per_s=50, pretrain_min_projected=50),
        dict(config="c 16px", latent="4x4x4", latent_side=4, n_scales_floor4=0, img_per_s=400, pretrain_min_projected=6),
    ])
    P = build_config({"image_size": 32, "ae_arch": "", "pilot_budget_minutes": 20, "pilot_pretrain_images": 1})
    choice = pipeline.design_choice(df, P)
    assert choice["chosen"] == "a 32px"  # b does not fit 20 min, c has no admissible scale
    assert pipeline.design_choice(df, P.replace(pilot_budget_minutes=60))["chosen"] == "b 64px"
    # labelled data first: a slightly faster unlabelled candidate of the same grid loses
    df2 = pd.DataFrame([
        dict(config="photo-crops 32px small-f4", latent="4x8x8", latent_side=8, n_scales_floor4=4, img_per_s=170,
             pretrain_min_projected=14),
        dict(config="fashion-mnist 32px small-f4", latent="4x8x8", latent_side=8, n_scales_floor4=4, img_per_s=165,
             pretrain_min_projected=15)])
    P = build_config({"dataset": "fashion-mnist", "image_size": 32, "ae_arch": "small-f4", "pilot_budget_minutes": 20,
                      "pilot_pretrain_images": 1})
    choice = pipeline.design_choice(df2, P)
    assert choice["chosen"] == "fashion-mnist 32px small-f4" and choice["matches_profile"]


def test_data_subset_and_batch_for_tensors_and_datasets():
    x = torch.arange(5.0).view(5, 1, 1, 1)
    assert torch.equal(pipeline.Data.subset(x, 3), x[:3])
    ds = torch.utils.data.TensorDataset(x, torch.zeros(5))
    sub = pipeline.Data.subset(ds, 2)
    assert len(sub) == 2
    assert torch.equal(pipeline.Data.batch(ds, 4), x[:4])


def test_evaluation_scale_sets_and_id_sizes():
    P = build_config({"min_latent_side": 4, "min_scale": 0.25, "family": "rotation+scale", "id_n": 200})
    assert pipeline.paper_eval_scales(8) == [0.25, 0.5, 0.75]  # the paper's T_S on the 8x8 latent
    assert pipeline.paper_eval_scales(6) == [0.5]  # 6 * 0.25 and 6 * 0.75 are not whole cells
    assert pipeline.trained_scales(P, 8) == [0.5, 0.625, 0.75, 0.875]  # m = 4..7 of 8 (floor of 4 cells)
    assert pipeline.trained_scales(P.replace(min_latent_side=1), 8) == [m / 8 for m in range(2, 8)]
    assert pipeline.trained_scales(P.replace(family="rotation"), 8) == []
    assert pipeline.id_sizes(P, 1000) == [200, 100]
    assert pipeline.id_sizes(P, 150) == [150, 100]
    assert pipeline.id_sizes(P.replace(id_sizes=[50, 400, 50]), 1000) == [400, 50]


def test_reference_stats_default_is_all_test_images(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(pipeline.fidm, "reference_statistics", lambda x, ext, cache_dir, verbose: seen.append(len(x)))
    monkeypatch.setattr(pipeline, "fid_cache_dir", lambda: tmp_path)
    x = torch.zeros(37, 1, 4, 4)
    data = pipeline.Data(x, torch.zeros(37, dtype=torch.long), x, torch.zeros(37, dtype=torch.long), "d", 4, 10,
                         "a", "b")
    P = build_config({"gen_fid_n": 10})
    pipeline.reference_stats(P, data, None)
    pipeline.reference_stats(P, data, None, n=5)
    assert seen == [37, 5]  # all test images by default (not gen_fid_n), the first n when given


def test_headline_generator_names_and_fid_sample_sizes():
    from eqvae_lib.experiment.config import load_config
    P = load_config("cpu")
    assert pipeline.headline_method(P) == "sit" and P.gen.gen_methods == ["sit"]
    assert pipeline.generator_name(P, "sit") == "SiT-T/2" and pipeline.generator_name(P, "dit") == "DiT-T/2"
    assert len(P.gen.gen_eval_steps) >= 5 and P.gen.gen_eval_steps[-1] == P.gen.gen_steps
    assert pipeline.gen_fid_n_at(P, P.gen.gen_steps) == 5000 and pipeline.gen_fid_n_at(P, 300) == 1000
    assert load_config("cpu-full").gen.gen_methods == ["sit", "dit"]
    assert pipeline.gen_config(P, "dit", 1, True).model == "DiT-T/2"
    assert pipeline.gen_fid_n_at(P.replace(gen_fid_n_final=None), 1500) == 1000  # None = gen_fid_n
    with pytest.raises(ValueError, match="gen_methods"):
        pipeline.headline_method(P.replace(gen_methods=[]))
    assert P.finetune.finetune_epochs == 3 and pipeline.fig5_epochs(P) == [1, 3]  # epochs 0 (base), 1, the last
    assert pipeline.fig5_epochs(P.replace(fig5_epochs=None)) == [1, 2, 3]
    assert pipeline.fig5_epochs(P.replace(fig5_epochs=[3, 1])) == [1, 3]
    # a Config built by hand (not validated) with an epoch beyond the run: the pipeline drops it itself
    assert pipeline.fig5_epochs(dataclasses.replace(P, gen=dataclasses.replace(P.gen, fig5_epochs=[3, 1, 7]))) == [1, 3]
    with pytest.raises(ConfigError, match=r"fig5_epochs = \[3, 1, 7\].*\[7\] lie beyond finetune_epochs = 3"):
        P.replace(fig5_epochs=[3, 1, 7])  # the config refuses an epoch the run never reaches
    with pytest.raises(ValueError, match="fig5_epochs"):
        pipeline.fig5_epochs(dataclasses.replace(P, gen=dataclasses.replace(P.gen, fig5_epochs=[4])))


def test_fid_labels_are_stratified_and_shared_by_arms_with_one_seed():
    import torch
    a = pipeline.fid_labels(5003, 10, torch.Generator().manual_seed(7))
    b = pipeline.fid_labels(5003, 10, torch.Generator().manual_seed(7))
    counts = torch.bincount(a, minlength=10)
    assert torch.equal(a, b) and int(counts.min()) == 500 and int(counts.max()) == 501 and int(counts.sum()) == 5003
    assert pipeline.fid_labels(10, 0, torch.Generator()) is None  # unconditional generator


def test_curve_stats_gives_a_t_interval_per_step():
    c = [_gen_curve([1, 2], [10.0, 5.0]), _gen_curve([1, 2], [12.0, 6.0]), _gen_curve([1, 2], [11.0, 7.0])]
    st = pipeline.curve_stats(c)
    t = pipeline.paired_t_interval([5.0, 6.0, 7.0])
    assert st.mean == pytest.approx([11.0, 6.0]) and st.k == 3
    assert (st.ci_low[1], st.ci_high[1]) == pytest.approx((t.low, t.high))
    one = pipeline.curve_stats(c[:1])
    assert one.ci_low == one.ci_high == (10.0, 5.0)
