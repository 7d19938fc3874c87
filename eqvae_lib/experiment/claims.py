"""Every claim of the paper as data (one table), and the one function that turns result records into verdict rows.

Each ``Claim`` names the record and metric holding our numbers, the treatment (``subject``) and the ``comparator``
(the matched plain control where the paper has one — Table 6 —, else the base), the effect definition (difference
or ratio, null 0 or 1), the paper's direction or a non-inferiority margin, the replicate unit, the paper's two values
(from :mod:`paper_values` only) and whether the claim is **primary**. The primary family is fixed before
results are seen (issue #14): Δ_R, Δ_S, reconstruction kept (rFID), intrinsic dimension, gFID at a fixed budget
(against the plain control), Fig. 5 epoch 1. Its levels are Holm-adjusted (family size 6, untested members count).

The replicate unit: one replicate of an arm = one fine-tune of the base with seed s plus each generator trained on
its latents with seed s; the base arm's replicate is the generator with seed s; arms pair by s. A metric carrying
``seed`` in a record is one replicate. Today's committed runs have ONE fine-tune per arm: every comparison has k = 1
full replicate and comes out ``not testable at this scale``; where generators ran with 2 seeds on that one
fine-tune, the paired interval over generator seeds is reported beside it as *conditional on the fine-tune*
(``cond_*`` columns) — it describes generator noise only and never sets the verdict. All results are conditional on
one base autoencoder.

Generative claims read the profile's headline generator (the first of ``gen_methods``, named in each metric's notes)
under generator-agnostic names (``gFID_final``, ``speedup_vs_base``...); the ``dit_*``/``sit_*`` rows name one
generator. Speed-ups are estimated per replicate from the curves (:func:`verdicts.speedup_estimate`:
target = the worse of the two arms' final gFIDs, speed-up = comparator's steps to it / subject's, symmetric, can be
< 1); a replicate whose curve never reaches the target is censored and the claim gets no number. If the base autoencoder
stopped at a cap instead of its plateau — or its stop reason is not recorded — every generative claim is ``not
testable at this scale`` (:func:`base_cap_reason`, :func:`apply_base_cap_rule`, issue #15; the VQ base likewise for
Table 3, :func:`vq_base_cap_reason`), and such voided primaries take no rank in the Holm family. A base latent whose
TwoNN ID lies inside the data's own ID interval makes ``table5_ID`` ``not testable`` (:func:`data_id_reason`).
"""

from __future__ import annotations

import dataclasses

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np

from . import paper_values as pv
from . import verdicts as V

DIFF, RATIO, SPEEDUP, CORR, MEAS = "difference", "ratio", "speed-up", "correlation", "measurement"
FINETUNE_UNIT = "fine-tune seed s (+ generator seed s), paired by s"
GEN_UNIT = "fine-tune seed s + generator seed s, paired by s"
PRIMARY_FAMILY_SIZE = 6
#: A primary claim needs at least this many paired replicates (issue #14): fewer is ``not testable at this scale``.
MIN_PRIMARY_K = 3
#: Comparators that are one fixed artefact for every replicate (the base autoencoder), not an arm with seeds.
FIXED_COMPARATORS = ("base", "none (base)")
#: Non-inferiority margins of "reconstruction is kept" (issue #14): EQ's rFID at most 10% above the comparator's, its
#: PSNR at most 0.3 dB below. The only place these numbers are typed.
RFID_KEPT_MARGIN = 1.10
PSNR_KEPT_MARGIN_DB = -0.3


@dataclass(frozen=True)
class Claim:
    """One claim of the paper.

    Attributes:
        id: stable id (column ``claim`` of ``results.csv``).
        ref: where the paper makes it (``"Table 1"``).
        statement: the claim in words.
        record: the result record's claim id holding our numbers (``"table1"``).
        metric: the metric name in that record.
        subject: the treatment (``"eq"``); for a speed-up the arm whose steps are divided into the comparator's.
        comparator: ``"plain"`` where the paper has a matched control, else ``"base"``; ``""`` for measurements and
            correlations.
        kind: ``difference`` (null 0) | ``ratio`` (null 1) | ``speed-up`` (comparator steps / subject steps, null 1)
            | ``correlation`` (Pearson r, null 0) | ``measurement`` (compares nothing).
        direction: the paper's direction of the effect (``lower``/``higher``), or for a margin claim the better side.
        margin: non-inferiority margin on the effect's scale (rFID ratio 1.10, PSNR −0.3 dB) or ``None``.
        paper: (treatment, comparator) values of the paper, or a single effect for speed-ups/correlations.
        unit: the replicate unit.
        primary: member of the fixed primary family.
        samples_param: the record parameter giving n samples (``eval_n``, ``gen_fid_n``...).
        needs_gen_seeds_note: rows read per-seed generator values.
    """

    id: str
    ref: str
    statement: str
    record: str
    metric: str
    subject: str
    comparator: str
    kind: str
    direction: str = ""
    margin: float | None = None
    paper: tuple[float | None, float | None] | float | None = None
    unit: str = FINETUNE_UNIT
    primary: bool = False
    samples_param: str = ""

    @property
    def null_value(self) -> float | None:
        return {DIFF: 0.0, RATIO: 1.0, SPEEDUP: 1.0, CORR: 0.0}.get(self.kind)

    @property
    def paper_effect(self) -> float | None:
        if isinstance(self.paper, tuple):
            a, b = self.paper
            if a is None or b is None:
                return None
            return a / b if self.kind == RATIO else a - b
        return self.paper


_T1, _T5, _T6, _T12 = pv.TABLE1["SD-VAE"], pv.TABLE5, pv.TABLE6, pv.TABLE12
_VQ = pv.TABLE1["VQ-GAN"]
_DEF = "rotation+scale (default)"
_BASE5 = "none (base)"


def _family(name: str, label: str) -> list[Claim]:
    return [
        Claim(f"table5_ID_{label}", "Table 5", f"the {name} family lowers the latent intrinsic dimension",
              "ablations", "ID", name, _BASE5, DIFF, "lower",
              paper=(_T5[label]["ID"], _T5["none (SD-VAE)"]["ID"]), samples_param="id_n"),
        Claim(f"table5_gFID_{label}", "Table 5", f"the {name} family lowers gFID (DiT, fixed budget)",
              "ablations", "gFID", name, _BASE5, DIFF, "lower",
              paper=(_T5[label]["gFID"], _T5["none (SD-VAE)"]["gFID"]), unit=GEN_UNIT, samples_param="gen_fid_n"),
    ]


#: The claim table. Order = order of the rows in results.csv.
CLAIMS: tuple[Claim, ...] = (
    # --- primary family (fixed before results are seen) ---
    Claim("table1_delta_R", "Table 1", "EQ-VAE lowers the rotation equivariance error Δ_R", "table1", "delta_R",
          "eq", "base", DIFF, "lower", paper=(_T1["eq"]["delta_R"], _T1["base"]["delta_R"]), primary=True,
          samples_param="eval_n"),
    Claim("table1_delta_S", "Table 1", "EQ-VAE lowers the scale equivariance error Δ_S", "table1", "delta_S",
          "eq", "base", DIFF, "lower", paper=(_T1["eq"]["delta_S"], _T1["base"]["delta_S"]), primary=True,
          samples_param="eval_n"),
    Claim("recon_kept_rFID", "Tables 1/6", "reconstruction is kept: EQ's rFID at most 10% above the plain control's",
          "table1", "rFID", "eq", "plain", RATIO, "lower", margin=RFID_KEPT_MARGIN,
          paper=(_T6["EQ-VAE"]["rFID"], _T6["plain +5 ep"]["rFID"]), primary=True, samples_param="eval_n"),
    Claim("table5_ID", "Table 5", "EQ-VAE lowers the latents' intrinsic dimension (TwoNN)", "table5_id", "ID_TwoNN",
          "eq", "base", DIFF, "lower", paper=(_T5["rotation+scale"]["ID"], _T5["none (SD-VAE)"]["ID"]), primary=True,
          samples_param="id_n"),
    Claim("table6_gFID_fixed_budget", "Table 6", "at a fixed generator budget, gFID on EQ latents is lower than on "
          "the plain control's (the profile's headline generator, named in the record; paper: DiT-B/2)", "table2",
          "gFID_final", "eq", "plain", DIFF, "lower",
          paper=(_T6["EQ-VAE"]["gFID"], _T6["plain +5 ep"]["gFID"]), unit=GEN_UNIT, primary=True,
          samples_param="gen_fid_n_final"),
    Claim("fig5_epoch1", "Fig. 5", "one EQ fine-tuning epoch already lowers gFID: EQ after epoch 1 vs the plain "
          "control after epoch 1, paired by seed (headline generator; the paper compares with epoch 0, and its plain "
          "control has SD-VAE's gFID, Table 6: no paper number for this contrast)", "fig5", "gFID", "eq epoch 1",
          "plain epoch 1", DIFF, "lower", paper=None, unit=GEN_UNIT, primary=True, samples_param="gen_fid_n_final"),
    # --- exploratory ---
    Claim("table1_rFID", "Table 1", "EQ-VAE's rFID is lower than the base's", "table1", "rFID", "eq", "base", RATIO,
          "lower", paper=(_T1["eq"]["rFID"], _T1["base"]["rFID"]), samples_param="eval_n"),
    Claim("table1_delta_S_trained", "Table 1", "EQ-VAE lowers Δ_S over the scales its fine-tune trains (s = m/n "
          "whose latent keeps at least min_latent_side cells; the record names them). Added after protocol v1's "
          "results were seen, not pre-specified: the primary table1_delta_S over the paper's T_S stands. No paper "
          "number: the paper's Δ_S is over T_S", "table1", "delta_S_trained", "eq", "base", DIFF, "lower",
          samples_param="eval_n"),
    Claim("table12_PSNR_kept", "Table 12", "reconstruction is kept: EQ's PSNR at most 0.3 dB below the base's",
          "table1", "PSNR", "eq", "base", DIFF, "higher", margin=PSNR_KEPT_MARGIN_DB,
          paper=(_T12["EQ-VAE"]["PSNR"], _T12["SD-VAE"]["PSNR"]), samples_param="eval_n"),
    Claim("fig5_epoch1_vs_base", "Fig. 5", "one EQ fine-tuning epoch lowers gFID below the base's (epoch 1 vs "
          "epoch 0, the paper's own comparison; headline generator)", "fig5", "gFID", "eq epoch 1", "epoch 0", DIFF,
          "lower", paper=(pv.FIG5[1], pv.FIG5[0]), unit=GEN_UNIT, samples_param="gen_fid_n_final"),
    Claim("table2_gFID", "Table 2", "gFID is lower on EQ latents than on the base's (the profile's headline "
          "generator, named in the record; paper: DiT-B/2)", "table2", "gFID_final", "eq", "base", DIFF, "lower",
          paper=pv.TABLE2["DiT-B/2 400K"][::-1], unit=GEN_UNIT, samples_param="gen_fid_n_final"),
    Claim("table2_DiT", "Table 2", "DiT gFID is lower on EQ latents than on the base's", "table2", "dit_gFID_final",
          "eq", "base", DIFF, "lower", paper=pv.TABLE2["DiT-B/2 400K"][::-1], unit=GEN_UNIT,
          samples_param="gen_fid_n"),
    Claim("table2_SiT", "Table 2", "SiT gFID is lower on EQ latents than on the base's", "table2", "sit_gFID_final",
          "eq", "base", DIFF, "lower", paper=pv.TABLE2["SiT-B/2 400K"][::-1], unit=GEN_UNIT,
          samples_param="gen_fid_n"),
    Claim("table6_SiT", "Table 6 (SiT)", "SiT gFID is lower on EQ latents than on the plain control's (no paper "
          "number)", "table2", "sit_gFID_final", "eq", "plain", DIFF, "lower", unit=GEN_UNIT,
          samples_param="gen_fid_n"),
    Claim("table2_inception", "Table 2", "Inception FID (headline generator) is lower on EQ latents than on the "
          "base's", "table2", "gFID_inception", "eq", "base", DIFF, "lower", paper=pv.TABLE2["DiT-B/2 400K"][::-1],
          unit=GEN_UNIT, samples_param="inception_n"),
    Claim("table6_matched_rFID", "Table 6", "gFID (headline generator) on EQ latents (fine-tuned longer to match "
          "the control's rFID) is lower than on the plain control's", "table2", "gFID_final", "eq (matched rFID)",
          "plain", DIFF, "lower", paper=(_T6["EQ-VAE"]["gFID"], _T6["plain +5 ep"]["gFID"]), unit=GEN_UNIT,
          samples_param="gen_fid_n_final"),
    Claim("speedup", "Table 2 / Fig. 1", "EQ latents reach a gFID level in fewer generator steps than the base "
          "(the worse of the two final gFIDs, headline generator; per replicate, read from the curves on one FID "
          "sample size; paper: ×7, DiT-XL/2 7M vs 1.5M steps)", "table2", "speedup_vs_base", "eq", "base", SPEEDUP,
          "higher", paper=pv.SPEEDUP_CLAIMED["DiT-XL/2"], unit=GEN_UNIT),
    Claim("speedup_vs_plain", "Table 6 / Fig. 1", "EQ latents reach a gFID level in fewer generator steps than the "
          "plain control (the worse of the two final gFIDs, on the curves' one FID sample size; headline generator; "
          "no paper number)", "table2", "speedup_vs_plain", "eq", "plain", SPEEDUP, "higher", unit=GEN_UNIT),
    Claim("speedup_DiT", "Table 2 / Fig. 1", "EQ latents reach a gFID level (the worse of the two final gFIDs, on "
          "the curves' one FID sample size) in fewer DiT steps than the base (paper: ×7, DiT-XL/2 7M vs 1.5M steps)",
          "table2", "dit_speedup_vs_base", "eq", "base", SPEEDUP, "higher", paper=pv.SPEEDUP_CLAIMED["DiT-XL/2"],
          unit=GEN_UNIT),
    Claim("fig3_rFID_s0.25", "Fig. 3", "EQ decodes scaled latents (s = 0.25) better than the base", "fig3",
          "decoder_rFID_s0.25", "eq", "base", RATIO, "lower", samples_param="eval_n"),
    Claim("fig3_rFID_s0.5", "Fig. 3", "EQ decodes scaled latents (s = 0.5) better than the base", "fig3",
          "decoder_rFID_s0.5", "eq", "base", RATIO, "lower", samples_param="eval_n"),
    Claim("fig3_rFID_s0.75", "Fig. 3", "EQ decodes scaled latents (s = 0.75) better than the base", "fig3",
          "decoder_rFID_s0.75", "eq", "base", RATIO, "lower", samples_param="eval_n"),
    Claim("fig3_rFID_rot", "Fig. 3", "EQ decodes rotated latents better than the base", "fig3",
          "decoder_rFID_rot", "eq", "base", RATIO, "lower", samples_param="eval_n"),
    Claim("fig7_roughness", "Fig. 1/7", "EQ latents are smoother (the paper shows it qualitatively)", "fig7",
          "latent_roughness", "eq", "base", DIFF, "lower", samples_param="eval_n"),
    *_family("rotation", "rotation"),
    *_family("scale", "scale"),
    *_family("rotation+anisotropic", "rotation+anisotropic"),
    Claim("table7_explicit_rFID", "Table 7", "the explicit regulariser reconstructs worse than the implicit one",
          "ablations", "rFID", "explicit (λ=0.1)", _DEF, DIFF, "higher",
          paper=(pv.TABLE7["explicit"]["rFID"], pv.TABLE7["implicit"]["rFID"]), samples_param="eval_n"),
    Claim("table7_explicit_gFID", "Table 7", "the explicit regulariser gives worse gFID than the implicit one",
          "ablations", "gFID", "explicit (λ=0.1)", _DEF, DIFF, "higher",
          paper=(pv.TABLE7["explicit"]["gFID"], pv.TABLE7["implicit"]["gFID"]), unit=GEN_UNIT,
          samples_param="gen_fid_n"),
    Claim("table8_palpha0.3_gFID", "Table 8", "p_α = 0.3 gives worse gFID than the default 0.5", "ablations", "gFID",
          "p_alpha=0.3", _DEF, DIFF, "higher", paper=(pv.TABLE8[0.3]["gFID"], pv.TABLE8[0.5]["gFID"]),
          unit=GEN_UNIT, samples_param="gen_fid_n"),
    Claim("table8_palpha0.7_gFID", "Table 8", "p_α = 0.7 gives worse gFID than the default 0.5", "ablations", "gFID",
          "p_alpha=0.7", _DEF, DIFF, "higher", paper=(pv.TABLE8[0.7]["gFID"], pv.TABLE8[0.5]["gFID"]),
          unit=GEN_UNIT, samples_param="gen_fid_n"),
    Claim("id_gfid_relation", "Table 5", "lower intrinsic dimension goes with lower gFID (positive r over "
          "independent autoencoders)", "ablations", "ID~gFID", "", "", CORR, "higher",
          unit="independent autoencoders (fine-tune seeds or families)"),
    Claim("table1_vq_delta_R", "Table 1 (VQ-GAN)", "EQ lowers Δ_R of a VQ tokenizer", "table1_vq", "delta_R", "eq",
          "base", DIFF, "lower", paper=(_VQ["eq"]["delta_R"], _VQ["base"]["delta_R"]), samples_param="eval_n"),
    Claim("table1_vq_delta_S", "Table 1 (VQ-GAN)", "EQ lowers Δ_S of a VQ tokenizer", "table1_vq", "delta_S", "eq",
          "base", DIFF, "lower", paper=(_VQ["eq"]["delta_S"], _VQ["base"]["delta_S"]), samples_param="eval_n"),
    Claim("table1_vq_rFID_kept", "Table 1 (VQ-GAN)", "a VQ tokenizer's reconstruction is kept: EQ's rFID at most 10% "
          "above the base's", "table1_vq", "rFID", "eq", "base", RATIO, "lower", margin=RFID_KEPT_MARGIN,
          paper=(_VQ["eq"]["rFID"], _VQ["base"]["rFID"]), samples_param="eval_n"),
    Claim("table3_maskgit_gFID", "Table 3", "MaskGIT gFID at a fixed budget is lower on EQ tokens than on the base's",
          "table1_vq", "maskgit_gFID_final", "eq", "base", DIFF, "lower",
          paper=(pv.TABLE3["eq_300ep"], pv.TABLE3["base_300ep"]), unit=GEN_UNIT, samples_param="gen_fid_n"),
    Claim("table3_speedup", "Table 3", "MaskGIT on EQ tokens reaches a gFID level (the worse of the two final "
          "gFIDs) in fewer epochs than on the base's tokens (paper: the base's 300-epoch gFID at epoch 130)",
          "table1_vq", "maskgit_speedup_vs_base", "eq", "base", SPEEDUP, "higher",
          paper=pv.TABLE3["speedup_epochs"], unit=GEN_UNIT),
    # --- measurements (compare nothing) ---
    Claim("design_throughput", "—", "training throughput of the chosen configuration", "design", "throughput",
          "fashion-mnist 32px small-f4", "", MEAS),
    Claim("base_pretrain_steps", "—", "base autoencoder pretraining steps", "base_ae", "pretrain_steps", "base", "",
          MEAS),
    Claim("base_plateau_reached", "—", "the base autoencoder stopped at its validation plateau (1) or at a cap (0)",
          "base_ae", "plateau_reached", "base", "", MEAS),
    Claim("finetune_steps_eq", "Table 6 protocol", "EQ fine-tuning steps (same budget as the plain control)",
          "table6_finetune", "finetune_steps", "eq", "", MEAS),
    Claim("finetune_steps_plain", "Table 6 protocol", "plain-control fine-tuning steps", "table6_finetune",
          "finetune_steps", "plain", "", MEAS),
    Claim("branch_fraction_eq", "Eq. 7", "share of EQ fine-tuning steps in the equivariance branch (0.5 expected)",
          "table6_finetune", "branch_fraction_eq", "eq", "", MEAS),
    Claim("vq_base_pretrain_steps", "—", "base VQ pretraining steps", "table1_vq", "base_vq_pretrain_steps", "base",
          "", MEAS),
    Claim("vq_codebook_usage_eq", "—", "fraction of the codebook the EQ VQ uses", "table1_vq", "codebook_usage", "eq",
          "", MEAS),
)

PRIMARY = tuple(c.id for c in CLAIMS if c.primary)
assert len(PRIMARY) == PRIMARY_FAMILY_SIZE, PRIMARY

#: Columns of results.csv (in order).
COLUMNS = ["claim", "ref", "record", "metric", "subject", "comparator", "ours", "comparator_value", "effect",
           "effect_ci_low", "effect_ci_high", "relative_effect", "null_value", "margin", "direction", "n_replicates",
           "n_samples", "paper_value", "paper_comparator", "paper_effect", "primary", "alpha", "min_detectable_effect",
           "cond_effect", "cond_ci_low", "cond_ci_high", "cond_k", "verdict", "verdict_text"]


@dataclass
class Obs:
    """One number of a record in replicate form: ``seed`` = replicate seed (None = one unseeded value), ``full`` =
    True when the seed is a full replicate (fine-tune + generator), False when only the generator seed varies over
    one fine-tune."""

    subject: str
    metric: str
    value: float | None
    seed: int | None = None
    full: bool = True
    notes: str = ""


_GEN_SEED = re.compile(r"^(?P<g>\w+?)_gFID_step(?P<step>\d+)_seed(?P<seed>\d+)$")
_VQ_SEED = re.compile(r"^(?P<subject>.+), seed (?P<seed>\d+)$")
_EPOCH = re.compile(r"epoch (?P<e>\d+)")


def observations(record: Any) -> list[Obs]:
    """Normalise a record's metrics into ``Obs`` rows. Metrics with a ``seed`` attribute are full replicates. Two
    legacy encodings of per-generator-seed values over ONE fine-tune are mapped onto the aggregate's name with
    ``full=False``: ``{g}_gFID_step{N}_seed{s}`` at the last step N (table2) → ``{g}_gFID_final``, and subject
    ``"X, seed s"`` metric ``maskgit_gFID`` with notes ``"epoch E; ..."`` at the last E (table1_vq) →
    ``maskgit_gFID_final``; subject ``"X, seed s"`` of a ``maskgit_speedup_vs_*`` metric (table1_vq: one VQ fine-tune
    per arm, MaskGIT seeds only) → that metric, ``full=False``."""
    out: list[Obs] = []
    last_step: dict[str, int] = {}
    last_epoch = -1
    for m in record.metrics:
        g = _GEN_SEED.match(m.name)
        if g:
            last_step[g["g"]] = max(last_step.get(g["g"], -1), int(g["step"]))
        if m.name == "maskgit_gFID" and _EPOCH.search(m.notes or ""):
            last_epoch = max(last_epoch, int(_EPOCH.search(m.notes)["e"]))
    for m in record.metrics:
        seed = getattr(m, "seed", None)
        g, vq = _GEN_SEED.match(m.name), _VQ_SEED.match(m.subject or "")
        if seed is not None:
            out.append(Obs(m.subject, m.name, m.value, int(seed), True, m.notes))
        elif g:
            if int(g["step"]) == last_step[g["g"]]:
                out.append(Obs(m.subject, f"{g['g']}_gFID_final", m.value, int(g["seed"]), False, m.notes))
        elif vq and m.name == "maskgit_gFID":
            e = _EPOCH.search(m.notes or "")
            if e and int(e["e"]) == last_epoch:
                out.append(Obs(vq["subject"], "maskgit_gFID_final", m.value, int(vq["seed"]), False, m.notes))
        elif vq and m.name.startswith("maskgit_speedup_vs_"):
            out.append(Obs(vq["subject"], m.name, m.value, int(vq["seed"]), False, m.notes))
        else:
            out.append(Obs(m.subject, m.name, m.value, None, True, m.notes))
    return out


def _finite(v: Any) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def _pick(obs: list[Obs], subject: str, metric: str) -> tuple[float | None, dict[int, float], dict[int, float]]:
    """(aggregate value, full-replicate values by seed, generator-only values by seed)."""
    agg, full, gen = None, {}, {}
    for o in obs:
        if o.subject != subject or o.metric != metric:
            continue
        if o.seed is None:
            agg = o.value if agg is None else agg
        elif _finite(o.value):
            (full if o.full else gen)[o.seed] = float(o.value)
    if agg is None and full:
        agg = float(np.mean(list(full.values())))
    if agg is None and gen:
        agg = float(np.mean(list(gen.values())))
    return agg, full, gen


def _n_samples(record: Any, claim: Claim, notes: str) -> int | None:
    m = re.search(r"\bn\s*=\s*(\d+)", notes or "")
    if m:
        return int(m.group(1))
    v = _param(record.params or {}, claim.samples_param) if claim.samples_param else None
    return int(v) if isinstance(v, (int, float)) and v else None


def _param(params: dict, key: str) -> Any:
    """A parameter of a record: flat (records before the typed configs, and those re-derived from tables) or under
    ``params["stages"][stage][key]`` (:meth:`config.Config.record`)."""
    if key in params:
        return params[key]
    for stage in (params.get("stages") or {}).values():
        if isinstance(stage, dict) and key in stage:
            return stage[key]
    return None


def _num(v: Any) -> str:
    return f"{v:.3g}" if _finite(v) else "n/a"


def _effect(c: Claim, a: float, b: float) -> float:
    if c.kind == RATIO:
        return a / b
    if c.kind == SPEEDUP:
        return b / a
    return a - b


def _row(c: Claim, **kw: Any) -> dict[str, Any]:
    pe = c.paper_effect
    paper_value = c.paper[0] if isinstance(c.paper, tuple) else None
    paper_comp = c.paper[1] if isinstance(c.paper, tuple) else None
    row = dict(claim=c.id, ref=c.ref, record=c.record, metric=c.metric, subject=c.subject, comparator=c.comparator,
               null_value=c.null_value, margin=c.margin, direction=c.direction, paper_value=paper_value,
               paper_comparator=paper_comp, paper_effect=pe, primary=c.primary, n_replicates=0)
    row.update(kw)
    return {k: row.get(k) for k in COLUMNS}


def evaluate(records: Iterable[Any], claims: Iterable[Claim] = CLAIMS, alpha: float = V.ALPHA) -> list[dict]:
    """Verdict rows (one per claim, columns ``COLUMNS``) from result records.

    A claim whose record or metric is absent is ``not run in this profile``. Comparisons: k = the number of seeds
    with full replicates in both arms; k < 2 → ``not testable at this scale``; else a paired t interval, the primary
    family at Holm-adjusted levels. Correlations over the ``ablations`` record's per-variant (ID, gFID) pairs count as
    independent autoencoders (one per family); a record holding only ``pearson_ID_gFID`` (notebook 09 in profile
    cpu: the base, the EQ epochs of one trajectory and the plain control) is ``not testable at this scale``.
    """
    recs = {r.claim: r for r in records}
    claims = list(claims)
    prepared: list[tuple[Claim, dict, list[float] | None]] = []
    for c in claims:
        rec = recs.get(c.record)
        if rec is None:
            prepared.append((c, _row(c, verdict=V.NOT_RUN, verdict_text=f"record {c.record!r} not in this profile's "
                                     "records (its notebook did not run)"), None))
            continue
        obs = observations(rec)
        if c.kind == CORR:
            prepared.append((c, _corr_row(c, rec, obs), None))
            continue
        ours, full_t, gen_t = _pick(obs, c.subject, c.metric)
        has_metric = any(o.subject == c.subject and o.metric == c.metric for o in obs)
        if not has_metric:
            prepared.append((c, _row(c, verdict=V.NOT_RUN, verdict_text=f"no {c.metric!r} for {c.subject!r} in "
                                     f"record {c.record!r} (not computed in this profile)"), None))
            continue
        n_samp = _n_samples(rec, c, next((o.notes for o in obs if o.subject == c.subject and o.metric == c.metric),
                                         ""))
        if c.kind == MEAS:
            prepared.append((c, _row(c, ours=ours, n_replicates=max(1, len(full_t)), n_samples=n_samp,
                                     verdict=V.MEASUREMENT, verdict_text=c.statement), None))
            continue
        if c.kind == SPEEDUP and any(o.seed is not None for o in obs if o.subject == c.subject
                                     and o.metric == c.metric):
            prepared.append((c, _speedup_row(c, obs), None))
            continue
        comp, full_c, gen_c = _pick(obs, c.comparator, c.metric)
        if c.kind == SPEEDUP and not _finite(ours):
            prepared.append((c, _row(c, n_replicates=1, n_samples=n_samp, verdict=V.NOT_TESTABLE, verdict_text=(
                f"{c.subject} did not reach the {c.comparator}'s final value within the budget (one replicate); "
                f"vs paper ×{_num(c.paper_effect)}")), None))
            continue
        if not any(o.subject == c.comparator and o.metric == c.metric for o in obs):
            prepared.append((c, _row(c, ours=ours, n_samples=n_samp, verdict=V.NOT_RUN, verdict_text=f"no "
                                     f"{c.metric!r} for the comparator {c.comparator!r} in record {c.record!r}"), None))
            continue
        if not _finite(ours) or not _finite(comp):
            why = (f"{c.subject} did not reach the comparator's final value within the budget"
                   if c.kind == SPEEDUP and not _finite(ours) else f"{c.metric} not computed (no value) for "
                   f"{c.subject!r} or {c.comparator!r}")
            prepared.append((c, _row(c, ours=ours, comparator_value=comp, n_replicates=1, n_samples=n_samp,
                                     verdict=V.NOT_TESTABLE, verdict_text=f"{why}; one replicate"), None))
            continue
        eff = _effect(c, ours, comp)
        rel = eff - 1 if c.kind in (RATIO, SPEEDUP) else (eff / comp if comp else None)
        if full_t and not full_c and c.comparator in FIXED_COMPARATORS:
            # the base arm (issue #14): its replicate s is the generator trained with seed s on the one base
            # autoencoder; an autoencoder-side metric of the base is one fixed value that pairs with every replicate.
            # Results are conditional on that base (the report says so). A generative claim's base arm has its own
            # generator seeds: one unseeded base gFID paired as a constant would ignore the base generator's seed
            # noise, so it is not testable.
            if gen_c:
                full_c = dict(gen_c)
            elif c.unit != GEN_UNIT:
                full_c = {s: comp for s in full_t}
            else:
                prepared.append((c, _row(c, ours=ours, comparator_value=comp, n_replicates=1, n_samples=n_samp,
                                         verdict=V.NOT_TESTABLE, verdict_text=(
                                             f"comparator has no replicate seeds: the {c.comparator}'s {c.metric} is "
                                             "one value without a generator seed, and a generator's seed noise is "
                                             "part of each replicate (the base arm's replicate s = its generator "
                                             "with seed s), so it cannot pair with the subject's seeds")), None))
                continue
        seeds = sorted(set(full_t) & set(full_c))
        per_rep = [_effect(c, full_t[s], full_c[s]) for s in seeds]
        cond = {}
        gseeds = sorted(set(gen_t) & set(gen_c))
        if len(seeds) < 2 and len(gseeds) >= 2:
            d = [_effect(c, gen_t[s], gen_c[s]) for s in gseeds]
            x = np.log(d) if c.kind in (RATIO, SPEEDUP) else np.asarray(d)
            t = V.paired_t_interval(x, alpha)
            back = np.exp if c.kind in (RATIO, SPEEDUP) else (lambda v: v)
            cond = dict(cond_effect=float(back(t.mean)), cond_ci_low=float(back(t.low)),
                        cond_ci_high=float(back(t.high)), cond_k=len(gseeds))
        base = dict(ours=ours, comparator_value=comp, effect=eff if len(seeds) < 2 else None,
                    relative_effect=rel, n_replicates=max(1, len(seeds)), n_samples=n_samp, **cond)
        prepared.append((c, base, per_rep if len(seeds) >= 2 else [eff]))
    # The cap rule first (issue #15): a primary it will void is untested, so it takes no rank in the Holm family.
    cap, vq_cap = base_cap_reason(recs.values()), vq_base_cap_reason(recs.values())
    id_void = data_id_reason(recs.values())

    def voided(c: Claim) -> bool:
        return bool((cap and is_generative(c)) or (vq_cap and _is_table3_generative(c))
                    or (id_void and _is_latent_id(c)))

    # Holm levels over the fixed primary family (size PRIMARY_FAMILY_SIZE; untested members count in m, as nan).
    pvals = []
    for c, _, reps in prepared:
        if not c.primary:
            continue
        pvals.append(_pvalue(c, reps) if reps is not None and len(reps) >= MIN_PRIMARY_K and not voided(c)
                     else math.nan)
    pvals += [math.nan] * (PRIMARY_FAMILY_SIZE - len(pvals))
    levels = iter(V.holm_levels(pvals, alpha))
    rows = []
    for c, row, reps in prepared:
        level = next(levels) if c.primary else alpha
        if reps is None:
            rows.append(row if "claim" in row else _row(c, **row))
            continue
        if not math.isfinite(level):
            level = alpha / PRIMARY_FAMILY_SIZE if c.primary else alpha
        vkind = RATIO if c.kind in (RATIO, SPEEDUP) else DIFF
        v = V.replicate_verdict(reps, kind=vkind, direction=c.direction, margin=c.margin, alpha=level,
                                paper_effect=c.paper_effect)
        text = v.text
        if c.primary and 2 <= len(reps) < MIN_PRIMARY_K and v.word != V.NOT_TESTABLE:
            text = (f"a primary claim needs k >= {MIN_PRIMARY_K} replicate seeds, this run has k = {len(reps)} "
                    f"(the interval below is reported, not judged): {v.text}")
            v = dataclasses.replace(v, word=V.NOT_TESTABLE)
        if "cond_effect" in row and row.get("cond_effect") is not None:
            text += (f"; conditional on the one fine-tune per arm, over {row['cond_k']} generator seeds: "
                     f"{row['cond_effect']:.3g} [{row['cond_ci_low']:.3g}, {row['cond_ci_high']:.3g}] (generator "
                     "noise only, not the verdict's interval)")
        row.update(effect=v.effect if v.effect is not None else row.get("effect"), effect_ci_low=v.low,
                   effect_ci_high=v.high, alpha=v.alpha, min_detectable_effect=v.mde, verdict=v.word,
                   verdict_text=text)
        rows.append(_row(c, **row))
    _base_caveat(rows, recs)
    apply_base_cap_rule(rows, cap, claims)
    apply_base_cap_rule(rows, vq_cap, claims, which=_is_table3_generative)
    apply_base_cap_rule(rows, id_void, claims, which=_is_latent_id)
    return rows


def _speedup_row(c: Claim, obs: list[Obs]) -> dict:
    """A speed-up claim from per-replicate estimates (metric values with ``seed``; None = censored, a curve never
    reached the worse of the two final gFIDs): :func:`verdicts.speedup_verdict`."""
    mine = [o for o in obs if o.subject == c.subject and o.metric == c.metric and o.seed is not None]
    reps = {o.seed: (float(o.value) if _finite(o.value) else None) for o in mine if o.full}
    gen = {o.seed: (float(o.value) if _finite(o.value) else None) for o in mine if not o.full}
    if not reps and gen:  # one fine-tune per arm: the seeds are the generator's only
        g = V.speedup_verdict([gen[s] for s in sorted(gen)], comparator=f"the {c.comparator}")
        cond = (dict(cond_effect=g.effect, cond_ci_low=g.low, cond_ci_high=g.high, cond_k=len(gen))
                if g.effect is not None else {})
        return _row(c, n_replicates=1, verdict=V.NOT_TESTABLE, verdict_text=(
            f"one fine-tune per arm: the {len(gen)} seeds are the generator's only, so they measure generator noise, "
            "not the effect of the autoencoder" + (f"; conditional on the one fine-tune per arm: {g.effect:.3g} "
                                                  f"[{g.low:.3g}, {g.high:.3g}] (not the verdict's interval)"
                                                  if g.effect is not None and g.low is not None else
                                                  f"; conditional estimate: {g.text}")), **cond)
    vals = [reps[s] for s in sorted(reps)]
    v = V.speedup_verdict(vals, paper_effect=c.paper_effect, comparator=f"the {c.comparator}")
    done = [x for x in vals if x is not None]
    ours = float(np.exp(np.mean(np.log(done)))) if done and len(done) == len(vals) else None
    notes = [o.notes or "" for o in obs if o.subject == c.subject and o.metric == c.metric and o.seed is not None]
    bounds = [(phrase, sum(phrase in n for n in notes)) for phrase in ("a lower bound", "an upper bound", "no bound")]
    text = v.text + "".join(  # the phrases of verdicts.SpeedupEstimate.describe
        f"; {k} replicate(s) reached the target at the first checkpoint, so their speed-up is "
        + (phrase if phrase != "no bound" else "no bound (both arms were there)") for phrase, k in bounds if k)
    return _row(c, ours=ours, effect=v.effect, effect_ci_low=v.low, effect_ci_high=v.high,
                relative_effect=(v.effect - 1) if v.effect is not None else None, n_replicates=len(vals),
                alpha=v.alpha, min_detectable_effect=v.mde, verdict=v.word, verdict_text=text)


def _is_latent_id(c: Claim) -> bool:
    return c.id == "table5_ID"


def _is_table3_generative(c: Claim) -> bool:
    return c.id.startswith("table3_")


def is_generative(c: Claim) -> bool:
    """Claims that rest on a generator trained on the continuous autoencoders' latents (gFID, speed-up, Fig. 5,
    ID–gFID); the discrete path's (``table1_vq``: MaskGIT on the VQ tokenizer, with its own base) is not one."""
    if c.record == "table1_vq" or c.kind == MEAS:
        return False
    return c.unit == GEN_UNIT or c.kind == SPEEDUP or c.id == "id_gfid_relation"


def base_cap_reason(records: Iterable[Any]) -> str | None:
    """Why the generative claims on the continuous autoencoders cannot be tested (issue #15 item 1), or None: the
    base autoencoder stopped at a cap (steps/epochs) instead of its validation plateau — read from the ``base_ae``
    record's ``plateau_reached`` or any record's ``base_plateau_reached`` (1 = plateau, 0 = cap). Then
    "fine-tuning" is also "more training" and a gFID difference between arms can come from decoder training, not
    latent structure. Fails closed: a kit-trained base (a ``base_ae`` record exists) whose stop reason is not
    recorded (no value) counts as not converged. No ``base_ae`` record and no ``base_plateau_reached`` → None
    (nothing is known about the base; e.g. a lone record in a test)."""
    records = list(records)
    known = False
    for r in records:
        for m in r.metrics:
            if m.name == "base_plateau_reached" or (r.claim == "base_ae" and m.name == "plateau_reached"):
                if not _finite(m.value):
                    continue
                known = True
                if m.value == 0:
                    return ("the base autoencoder stopped at a cap, not at its validation plateau (record "
                            f"{r.claim!r}); fine-tuning then also means more training, and a generative comparison "
                            "cannot separate latent structure from it — a base trained to its plateau would test it")
    if not known and any(r.claim == "base_ae" for r in records):
        return ("the base's stop reason is not recorded (record 'base_ae' has no plateau_reached value), so the base "
                "counts as not converged: fine-tuning may also mean more training, and a generative comparison cannot "
                "separate latent structure from it")
    return None


_VQ_STOP = re.compile(r"stop reason:\s*([\w-]+)")


def vq_base_cap_reason(records: Iterable[Any]) -> str | None:
    """The same rule for the discrete path (Table 3, MaskGIT on the VQ tokenizer): notebook 10 records the base VQ's
    stop reason in the notes of ``base_vq_pretrain_steps`` (``"stop reason: plateau"`` or a cap). A ``table1_vq``
    record whose stop reason is not ``plateau`` or not recorded → the reason; no ``table1_vq`` record → None."""
    for r in records:
        if r.claim != "table1_vq":
            continue
        m = next((m for m in r.metrics if m.name == "base_vq_pretrain_steps"), None)
        found = _VQ_STOP.search((m.notes or "") if m is not None else "")
        if found is None:
            return ("the base VQ tokenizer's stop reason is not recorded (record 'table1_vq'), so it counts as not "
                    "converged: EQ fine-tuning may also mean more training of the tokenizer")
        if found.group(1) != "plateau":
            return (f"the base VQ tokenizer stopped at a cap ({found.group(1)}), not at its validation plateau; EQ "
                    "fine-tuning then also means more training, and MaskGIT's comparison cannot separate token "
                    "structure from it")
    return None


_ID_SIZE = re.compile(r"^ID_TwoNN_n(\d+)$")
_CI = re.compile(r"CI \[(?:np\.float\d+\()?([-+\d.eE]+)\)?,\s*(?:np\.float\d+\()?([-+\d.eE]+)")


def data_id_reason(records: Iterable[Any]) -> str | None:
    """Issue #14: a base latent whose TwoNN intrinsic dimension lies inside the data's own ID interval has no
    dimension to lose, so "EQ lowers the latent ID" (``table5_ID``) is ``not testable at this scale``. Read from the
    ``table5_id`` record (notebook 06): ``ID_TwoNN_n{m}`` of subject ``base`` (unseeded) and of the subjects
    ``data: pixels`` / ``data: pooled 2x2`` whose notes carry ``95% CI [low, high]``, at the largest size m both
    have. Returns the reason, or None (no such record, sizes or intervals: the rule cannot be checked)."""
    for r in records:
        if r.claim != "table5_id":
            continue
        base, data = {}, {}
        for m in r.metrics:
            size = _ID_SIZE.match(m.name)
            if not size or not _finite(m.value):
                continue
            if m.subject == "base" and getattr(m, "seed", None) is None:
                base[int(size.group(1))] = float(m.value)
            elif (m.subject or "").startswith("data: "):
                ci = _CI.search(m.notes or "")
                if ci:
                    data.setdefault(int(size.group(1)), []).append(
                        (m.subject[len("data: "):], float(ci.group(1)), float(ci.group(2))))
        common = sorted(set(base) & set(data))
        if not common:
            return None
        n = common[-1]
        for kind, lo, hi in data[n]:
            if lo <= base[n] <= hi:
                return (f"the latent has no dimension to lose: the base's TwoNN ID at n = {n} ({base[n]:.3g}) lies "
                        f"inside the data's own ID interval ({kind}: [{lo:.3g}, {hi:.3g}]), so a lower latent ID "
                        "cannot be tested at this scale (a latent well above the data's ID would test it)")
    return None


def apply_base_cap_rule(rows: list[dict], reason: str | None, claims: Iterable[Claim] = CLAIMS,
                        which: Callable[[Claim], bool] = is_generative) -> None:
    """Issue #15 item 1: when ``reason`` (:func:`base_cap_reason`) is given, every claim selected by ``which``
    (default: the generative claims, :func:`is_generative`; Table 3's for :func:`vq_base_cap_reason`) that was judged
    becomes ``not testable at this scale`` with that reason, in either direction; its interval stays in the row,
    reported, not judged. Rows not run / measurements are left alone. In place."""
    if not reason:
        return
    gen = {c.id for c in claims if which(c)}
    for r in rows:
        if r["claim"] in gen and r["verdict"] not in (V.NOT_RUN, V.MEASUREMENT):
            was = r["verdict"]
            r["verdict"] = V.NOT_TESTABLE
            r["verdict_text"] = f"{reason} (the interval is reported, not judged; without this rule: {was}: " \
                                f"{r['verdict_text']})"


def _pvalue(c: Claim, reps: list[float]) -> float:
    """The claim's two-sided p-value for the Holm family; nan for an untestable design: fewer than 2 replicates, or
    identical replicates (sd = 0, the row is ``not testable at this scale``: no variance estimate, so no test)."""
    x = np.log(reps) if c.kind in (RATIO, SPEEDUP) else np.asarray(reps, dtype=float)
    if x.size < 2 or float(np.std(x, ddof=1)) <= 1e-12 * max(1.0, abs(float(np.mean(x)))):
        return math.nan
    if c.margin is not None:
        m = math.log(c.margin) if c.kind == RATIO else c.margin
        return V.noninferiority_p(x, m, c.direction)
    return V.paired_t_interval(x).p


def _corr_row(c: Claim, rec: Any, obs: list[Obs]) -> dict:
    # one point per autoencoder: a (subject, fine-tune seed) pair; replicates of one variant are independent
    # fine-tunes, epochs of one trajectory are not (those records carry only pearson_ID_gFID, below). A fixed
    # comparator (the one base autoencoder) is ONE autoencoder however many generator seeds it was recorded with:
    # its values are averaged into one point.
    vals: dict[str, dict[tuple, list[float]]] = {"ID": {}, "gFID": {}}
    for o in obs:
        if o.metric in vals and _finite(o.value):
            key = (o.subject, None) if o.subject in FIXED_COMPARATORS else (o.subject, o.seed)
            vals[o.metric].setdefault(key, []).append(float(o.value))
    ids = {k: float(np.mean(v)) for k, v in vals["ID"].items()}
    gfids = {k: float(np.mean(v)) for k, v in vals["gFID"].items()}
    names = [s for s in ids if s in gfids]
    if len(names) >= 2:
        v = V.correlation_verdict([ids[s] for s in names], [gfids[s] for s in names], independent=True,
                                  direction=c.direction, unit="autoencoders (one per family and fine-tune seed, the "
                                  "base once; gFID averaged over a fixed autoencoder's generator seeds)")
        return _row(c, ours=v.effect, effect=v.effect, effect_ci_low=v.low, effect_ci_high=v.high,
                    n_replicates=len(names), alpha=v.alpha, min_detectable_effect=v.mde, verdict=v.word,
                    verdict_text=v.text)
    r = next((o for o in obs if o.metric == "pearson_ID_gFID"), None)
    if r is None:
        return _row(c, verdict=V.NOT_RUN, verdict_text="no ID–gFID pairs in the ablations record")
    n = re.search(r"over (\d+)", r.notes or "")
    return _row(c, ours=r.value, effect=r.value, n_replicates=int(n.group(1)) if n else None,
                verdict=V.NOT_TESTABLE, verdict_text=f"r = {r.value:.3g} over {n.group(1) if n else '?'} autoencoders "
                "that are the base, the epochs of ONE EQ fine-tune trajectory and the plain control (not independent "
                "autoencoders); a correlation counts only over independent fine-tune seeds or families (profile "
                "cpu-full computes it over the ablation families)")


def _base_caveat(rows: list[dict], recs: dict) -> None:
    base = recs.get("base_ae")
    if base is None:
        return
    reached = next((m.value for m in base.metrics if m.name == "plateau_reached"), None)
    if reached == 0:
        for r in rows:
            if r["comparator"] in ("base", "epoch 0", _BASE5) and r["record"] != "table1_vq" and r["verdict"] not in (V.NOT_RUN, V.MEASUREMENT):
                r["verdict_text"] += ("; the base stopped at a cap, not at its plateau: EQ − base also contains "
                                      "extra training (compare with the plain control)")


def check_rows(rows: Iterable[dict]) -> None:
    """Raise ``ValueError`` when a row uses a word outside ``VERDICT_WORDS`` or claims ``reproduced`` with an interval
    that contains the null value (directional claims) or leaves the margin (margin claims)."""
    for r in rows:
        if r["verdict"] not in V.VERDICT_WORDS:
            raise ValueError(f"claim {r['claim']}: verdict {r['verdict']!r} is not one of {V.VERDICT_WORDS}")
        if r["verdict"] != V.REPRODUCED:
            continue
        lo, hi = r.get("effect_ci_low"), r.get("effect_ci_high")
        if not (_finite(lo) and _finite(hi)):
            raise ValueError(f"claim {r['claim']}: 'reproduced' without an interval")
        ref = r["margin"] if _finite(r.get("margin")) else r["null_value"]
        if lo <= ref <= hi:
            raise ValueError(f"claim {r['claim']}: 'reproduced' but the interval [{lo}, {hi}] contains {ref}")


_STRENGTH = {V.NOT_TESTABLE: 0, V.WITHIN_NOISE: 1, V.OPPOSITE: 2, V.REPRODUCED: 2}


def record_verdict(record: Any, others: Iterable[Any] = (), rows: list[dict] | None = None) -> tuple[str, str]:
    """(word, text) summarising a record's claims, for ``RunRecord.set_verdict`` in a notebook's verdict cell and the
    report's per-record lines.

    The per-claim rows (``results.csv``) are the verdicts; a record's summary word never claims more than its least
    conclusive comparison: all its comparisons share a word → that word; otherwise ``within noise`` when the
    inconclusive ones have intervals, else ``not testable at this scale``. A record with only measurements gives
    ``measurement``. ``others``: every other record of the run (:func:`records.load_records`): the base's
    stop reason lives in ``base_ae``, so a caller that leaves them out misses the cap rule (:func:`base_cap_reason`)
    and its summary could contradict ``results.csv``; every caller passes them.

    ``rows``: the run's full evaluation (:func:`evaluate` over every record, as ``results.csv``); the summary then reads
    this record's rows from it, so it agrees with ``results.csv``. Without it (a notebook, before the later records
    exist) this record's claims are evaluated alone: its primaries take the first Holm ranks of the fixed family of
    :data:`PRIMARY_FAMILY_SIZE`, the strictest levels, so on the Holm family it may say less than ``results.csv``
    will, never more (a rule that needs a record which did not exist yet can still differ).
    """
    mine = [c for c in CLAIMS if c.record == record.claim]
    if rows is not None:
        ids = {c.id for c in mine}
        rows = [r for r in rows if r["claim"] in ids and r["verdict"] != V.NOT_RUN]
    else:
        others = [o for o in others if o.claim != record.claim]  # a saved (older) copy of this record never wins
        rows = [r for r in evaluate([record, *others], mine) if r["verdict"] != V.NOT_RUN]
    comps = [r for r in rows if r["verdict"] != V.MEASUREMENT]
    text = "; ".join(f"{r['claim']}: {r['verdict']} ({r['verdict_text']})" for r in comps)
    if not comps:
        meas = ", ".join(f"{r['claim']} = {r['ours']:.4g}" for r in rows if _finite(r.get("ours")))
        return V.MEASUREMENT, meas or "compares nothing"
    words = {r["verdict"] for r in comps}
    if len(words) == 1:
        return words.pop(), text
    weakest = min(words, key=lambda w: _STRENGTH[w])
    return (V.WITHIN_NOISE if weakest == V.WITHIN_NOISE else V.NOT_TESTABLE), "claims differ: " + text
