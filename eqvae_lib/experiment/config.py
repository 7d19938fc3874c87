"""Typed, strict configuration of the experiments: one dataclass per stage, profiles validated against them.

A profile ``profiles/NAME.yaml`` is a flat list of ``key: value``; every key is a field of exactly one stage below
(the field's name *is* the key, so ``grep -rn kl_weight`` finds every use). The defaults live here and only here
(the loss knobs' defaults are :class:`eqvae_lib.losses.LossConfig`'s). :func:`load_config` reads a profile (and the
profile it ``inherit``\\ s), applies overrides, and checks every value's type and range; an unknown key — in a
profile, a papermill ``-p`` or a notebook's parameters cell — is an error naming the key and the closest valid names,
raised before any work starts.

Stages (``Config`` attribute: class): ``run``: :class:`RunConfig` (seed, progress, checkpoint cadence), ``data``:
:class:`DataConfig`, ``base_ae``: :class:`BaseAEConfig`, ``loss``: :class:`LossStageConfig` (the objective's knobs,
shared by the base AE pretraining and every fine-tune), ``finetune``: :class:`FinetuneConfig`, ``metrics``:
:class:`MetricsConfig`, ``gen``: :class:`GeneratorConfig`, ``vq``: :class:`VQConfig` (VQ tokenizer + MaskGIT),
``pilot``: :class:`PilotConfig` (notebook 00).

Paths (``REPO_ROOT``, ``DATA_DIR``, ``RUNS_DIR``, ``FIGURES_DIR``), ``seed_everything`` and ``device`` live in
:mod:`eqvae_lib.runtime` (the method library imports them from there) and are re-exported here.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import sys
import types
import typing
from dataclasses import dataclass, field, fields
from typing import Any, Union

import yaml

from ..losses import PERCEPTUAL_CHOICES, LossConfig
from ..runtime import DATA_DIR, FIGURES_DIR, REPO_ROOT, RUNS_DIR, device, seed_everything  # noqa: F401 (re-export)
from ..transforms import FAMILIES, MODES

PROFILES_DIR = REPO_ROOT / "profiles"
PROFILES = ("smoke", "cpu", "cpu-full", "paper")


def knob(default: Any = None, *, choices: tuple | None = None, lo: float | None = None, hi: float | None = None,
         factory: Any = None) -> Any:
    """A stage field with its allowed values: ``choices`` (a tuple) or the closed range ``[lo, hi]``."""
    meta = {"choices": choices, "lo": lo, "hi": hi}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# ---------------------------------------------------------------------------------------------------- stages
@dataclass(frozen=True)
class RunConfig:
    """Settings of every stage. ``seed``: the root seed of the base autoencoder and the data (every other seed is
    derived by :func:`derive_seed`); ``replicate_seeds``: the replicates of the comparisons — replicate ``s`` is one
    fine-tune per arm (EQ, plain control) of the fixed base with training seed ``s`` plus each generator trained on
    it with seed ``s`` (the base arm's replicate ``s`` is the generator with seed ``s``); the arms of one replicate
    share data order and posterior noise (common random numbers, :mod:`eqvae_lib.rng`); ``progress``: tqdm bars;
    ``checkpoint_every_steps``: checkpoint cadence of the AE trainings (for resuming only)."""

    seed: int = knob(0, lo=0)
    replicate_seeds: list[int] = knob(factory=lambda: [0], lo=0)
    progress: bool = True
    checkpoint_every_steps: int = knob(500, lo=1)

    def __post_init__(self):
        seeds = list(self.replicate_seeds)
        if not seeds or len(set(seeds)) != len(seeds):
            raise ConfigError(f"replicate_seeds = {seeds!r}: give at least one seed, each once (e.g. [0, 1, 2])")


@dataclass(frozen=True)
class DataConfig:
    """The images (SPEC §3): ``dataset`` at ``image_size`` px with ``channels`` channels; the first ``n_train`` /
    ``n_test`` images (None = all); ``imagefolder`` reads ``data_root_train`` / ``data_root_test``; ``val_size``
    images of the test split are the AE trainings' fixed validation batch."""

    dataset: str = knob("fashion-mnist", choices=("fashion-mnist", "photo-crops", "imagefolder"))
    image_size: int = knob(32, lo=8, hi=4096)
    channels: int = knob(1, choices=(1, 3))
    n_train: int | None = knob(None, lo=1)
    n_test: int | None = knob(None, lo=1)
    data_root_train: str | None = None
    data_root_test: str | None = None
    val_size: int = knob(256, lo=1)


@dataclass(frozen=True)
class BaseAEConfig:
    """The base autoencoder (stand-in for SD-VAE): loaded from ``base_vae`` when set, else ``ae_arch`` pretrained with
    the plain objective until the validation L1 (on ``val_size`` held-out test images) plateaus (``pretrain_plateau_*``,
    checked every ``pretrain_val_every`` steps) or a cap (``pretrain_max_steps`` optimizer steps,
    ``pretrain_max_epochs`` epochs; None = no cap) is reached. Caps are counted in steps/epochs only, never minutes,
    so the base does not depend on the machine's speed. The GAN term starts at step ``pretrain_disc_start``.
    ``pretrain_lr`` None = the official scaled lr (constant: no schedule)."""

    base_vae: str | None = None
    ae_arch: str = "small-f4"
    latent_channels: int = knob(4, lo=1)
    pretrain_batch: int = knob(64, lo=1)
    pretrain_lr: float | None = knob(None, lo=0.0)
    pretrain_max_steps: int | None = knob(None, lo=1)
    pretrain_max_epochs: float | None = knob(3, lo=0.0)
    pretrain_disc_start: int = knob(1500, lo=0)
    pretrain_val_every: int = knob(250, lo=1)
    pretrain_plateau_window: int = knob(4, lo=2)
    pretrain_plateau_threshold: float = knob(0.005, lo=0.0)


def _loss_stage():
    """:class:`LossStageConfig`: the fields of :class:`~eqvae_lib.losses.LossConfig` (its defaults) except the two a
    stage sets itself (``objective``, ``disc_start``)."""
    hints = typing.get_type_hints(LossConfig)
    rules = {"perceptual": dict(choices=PERCEPTUAL_CHOICES), "family": dict(choices=FAMILIES),
             "scale_grid": dict(choices=("discrete", "continuous")), "interpolation": dict(choices=MODES),
             "p_alpha": dict(lo=0.0, hi=1.0), "p_prior_s": dict(lo=0.0, hi=1.0), "min_scale": dict(lo=0.0, hi=1.0),
             "min_latent_side": dict(lo=1), "disc_ndf": dict(lo=1), "disc_layers": dict(lo=1)}
    spec = [(f.name, hints[f.name], knob(f.default, **rules.get(f.name, {}))) for f in fields(LossConfig)
            if f.name not in ("objective", "disc_start")]
    cls = dataclasses.make_dataclass("LossStageConfig", spec, frozen=True)
    cls.__module__ = __name__
    cls.__doc__ = ("The autoencoder objective's knobs (Eq. 1, Eq. 7, Table 7; defaults = LossConfig's = the paper / "
                   "official code), shared by the base AE pretraining and every fine-tune.")
    return cls


LossStageConfig = _loss_stage()


@dataclass(frozen=True)
class FinetuneConfig:
    """EQ-VAE / plain / explicit fine-tuning of the base AE (Table 6 protocol): ``finetune_epochs`` epochs over the
    first ``finetune_subset`` training images at batch ``finetune_batch`` and lr ``finetune_lr`` (None = the base's
    final pretraining lr, read from its log: the fine-tune continues the base's training; a number = that lr, e.g.
    the official 4.5e-6 × batch). ``finetune_disc``: the PatchGAN the fine-tune starts from — ``"warm"`` = the base's
    discriminator (saved with the base; new Adam state), as a continued LDM training would, ``"fresh"`` = a newly
    initialised one (the only choice for a loaded ``base_vae``: released SD-VAE weights ship no discriminator).
    Ablations (notebook 09): ``ablations`` (labels of :func:`pipeline.ablation_variants`,
    None = all) for ``ablation_epochs`` epochs each, with a DiT run each when ``ablation_gfid``. The matched-rFID
    comparison (notebook 07) fine-tunes EQ-VAE at most ``matched_rfid_max_extra_epochs`` epochs further."""

    finetune_subset: int = knob(10000, lo=1)
    finetune_epochs: int = knob(3, lo=1)
    finetune_batch: int = knob(32, lo=1)
    finetune_lr: float | None = knob(None, lo=0.0)
    finetune_disc: str = knob("warm", choices=("warm", "fresh"))
    ablation_epochs: int = knob(1, lo=1)
    ablations: list[str] | None = None
    ablation_gfid: bool = False
    matched_rfid_max_extra_epochs: int = knob(0, lo=0)


@dataclass(frozen=True)
class MetricsConfig:
    """Autoencoder metrics: Δ and decoder PSNR on ``eval_n`` test images at ``eval_scales``; rFID/PSNR/SSIM/LPIPS from
    the ``recon_latent`` latent; FID features ``fid_extractor`` (the kit's classifier trained on
    ``classifier_n_train`` images for ``classifier_epochs`` epochs, or Inception); TwoNN on ``id_n`` latents with
    ``id_bootstrap`` resamples, and paired TwoNN of every autoencoder and of the images on the same first test
    images at each size of ``id_sizes`` (None = ``[id_n, id_n // 2]``); an extra Inception-FID headline on
    ``inception_n`` samples (0 = off)."""

    eval_n: int = knob(1000, lo=1)
    eval_scales: list[float] = knob(factory=lambda: [0.25, 0.5, 0.75])
    recon_latent: str = knob("sample", choices=("sample", "mean"))
    fid_extractor: str = knob("classifier", choices=("classifier", "inception"))
    classifier_n_train: int | None = knob(None, lo=1)
    classifier_epochs: int = knob(3, lo=1)
    id_n: int = knob(2000, lo=3)
    id_bootstrap: int = knob(200, lo=0)
    id_sizes: list[int] | None = knob(None, lo=3)
    inception_n: int = knob(0, lo=0)


@dataclass(frozen=True)
class GeneratorConfig:
    """DiT / SiT on cached latents (``latent_mode``). ``gen_methods``: the generators that run (``sit``/``dit``); the
    FIRST is the headline generator of Tables 2/6 and Fig. 5 (issue #15: SiT-T/2 in ``cpu``). ``gen_model`` gives the
    size (``DiT-T/2`` and ``SiT-T/2`` name the same backbone; each method runs under its own name), trained
    ``gen_steps`` steps (batch ``gen_batch``, lr ``gen_lr``, EMA ``gen_ema``) once per replicate seed
    (``run.replicate_seeds``); gFID at every ``gen_eval_steps`` step on ``gen_fid_n`` samples, at the last step on
    ``gen_fid_n_final`` (None = ``gen_fid_n``), class-stratified labels; the draw-to-draw spread of one final
    checkpoint from ``fid_spread_draws`` draws (0 = not measured); Fig. 5 at fine-tune epochs ``fig5_epochs``
    (epoch 0 = the base always; None = every epoch); samplers ``dit_sampler``/``sit_sampler`` with
    ``*_sample_steps`` steps."""

    latent_mode: str = knob("official", choices=("official", "repa"))
    gen_methods: list[str] = knob(factory=lambda: ["sit"], choices=("sit", "dit"))
    gen_model: str = "SiT-T/2"
    gen_steps: int = knob(1500, lo=1)
    gen_batch: int = knob(128, lo=1)
    gen_lr: float = knob(1e-4, lo=0.0)
    gen_ema: float = knob(0.9999, lo=0.0, hi=1.0)
    gen_eval_steps: list[int] = knob(factory=lambda: [1500], lo=1)
    gen_log_every: int = knob(100, lo=1)
    gen_fid_n: int = knob(1000, lo=2)
    gen_fid_n_final: int | None = knob(None, lo=2)
    fid_spread_draws: int = knob(0, lo=0)
    fig5_epochs: list[int] | None = knob(None, lo=1)
    gen_sample_batch: int = knob(250, lo=1)
    dit_sampler: str = knob("ddim", choices=("ddpm", "ddim"))
    dit_sample_steps: int = knob(50, lo=1)
    sit_sampler: str = knob("heun", choices=("euler", "heun"))
    sit_sample_steps: int = knob(50, lo=1)
    learn_sigma: bool = False


@dataclass(frozen=True)
class VQConfig:
    """The discrete path (notebook 10): a ``vq_arch`` tokenizer with ``vq_codebook_size`` codes pretrained like the
    base AE (``vq_pretrain_max_steps``/``vq_pretrain_max_epochs`` replace the base AE's caps when set) and
    fine-tuned ``vq_finetune_epochs`` epochs; a ``maskgit_model`` trained ``maskgit_epochs`` epochs (batch, lr, EMA),
    evaluated after every epoch of ``maskgit_eval_epochs`` with ``maskgit_decode_steps`` decoding steps."""

    vq_arch: str = "vq-f4"
    vq_codebook_size: int = knob(256, lo=2)
    vq_pretrain_max_steps: int | None = knob(None, lo=1)
    vq_pretrain_max_epochs: float | None = knob(None, lo=0.0)
    vq_finetune_epochs: int = knob(3, lo=1)
    maskgit_model: str = "maskgit-small"
    maskgit_batch: int = knob(128, lo=1)
    maskgit_lr: float = knob(4e-4, lo=0.0)
    maskgit_ema: float | None = knob(None, lo=0.0, hi=1.0)
    maskgit_epochs: int = knob(6, lo=1)
    maskgit_eval_epochs: list[int] = knob(factory=lambda: [6], lo=1)
    maskgit_decode_steps: int = knob(8, lo=1)


@dataclass(frozen=True)
class PilotConfig:
    """The design pilot (notebook 00): throughput of ``pilot_steps`` training steps at batch ``pilot_batch`` for each
    of ``pilot_candidates`` (dicts with dataset, image_size, arch), projected to ``pilot_pretrain_images`` images; a
    candidate fits when the projection is at most ``pilot_budget_minutes`` (a design rule for this machine only: the
    training itself is capped in steps/epochs, never minutes)."""

    pilot_candidates: list[dict] = knob(factory=list)
    pilot_steps: int = knob(12, lo=1)
    pilot_batch: int = knob(32, lo=1)
    pilot_pretrain_images: int = knob(150000, lo=1)
    pilot_budget_minutes: float = knob(40.0, lo=0.0)


STAGES: dict[str, type] = {"run": RunConfig, "data": DataConfig, "base_ae": BaseAEConfig, "loss": LossStageConfig,
                           "finetune": FinetuneConfig, "metrics": MetricsConfig, "gen": GeneratorConfig,
                           "vq": VQConfig, "pilot": PilotConfig}
#: every valid key -> the stage that owns it
KEY_STAGE: dict[str, str] = {f.name: stage for stage, cls in STAGES.items() for f in fields(cls)}
assert len(KEY_STAGE) == sum(len(fields(c)) for c in STAGES.values()), "a key belongs to two stages"


class ConfigError(ValueError):
    """A profile or override that no stage accepts: the message names the key, the file and the allowed values."""


def closest_keys(key: str, n: int = 3) -> list[str]:
    """The valid keys closest to ``key`` (difflib), for error messages."""
    return difflib.get_close_matches(key, list(KEY_STAGE) + ["profile"], n=n, cutoff=0.5)


#: keys of older profiles -> what replaces them (named in the unknown-key error)
REMOVED_KEYS = {
    "pretrain_max_minutes": "caps are counted in steps or epochs only (a result must not depend on the machine's "
                            "speed): use pretrain_max_steps and/or pretrain_max_epochs",
    "vq_pretrain_max_minutes": "caps are counted in steps or epochs only (a result must not depend on the machine's "
                               "speed): use vq_pretrain_max_steps and/or vq_pretrain_max_epochs",
    "gen_seeds": "replaced by replicate_seeds (stage run): one seed per replicate of every arm",
}


def unknown_key_error(key: str, where: str) -> ConfigError:
    near = closest_keys(key)
    hint = f"; did you mean {', '.join(near)}?" if near else ""
    if key in REMOVED_KEYS:
        hint = f": removed — {REMOVED_KEYS[key]}{hint.replace('; did', '. Did', 1) if hint else '.'}"
    return ConfigError(f"{key!r} ({where}) is not a key of any stage{hint} Valid keys are the fields of "
                       f"eqvae_lib.experiment.config's stage classes (python -m eqvae_lib config keys).")


# ------------------------------------------------------------------------------------------------ validation
def _matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin in (list, tuple):
        args = typing.get_args(hint)
        return isinstance(value, (list, tuple)) and all(_matches(v, args[0]) for v in value) if args else True
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return isinstance(value, hint)


def _coerce(value: Any, hint: Any) -> Any:
    """papermill passes lists as strings (``-p replicate_seeds '[0, 1]'``) and ``None`` as the string ``'None'`` sometimes;
    YAML-parse a string when the field is not a string; make floats of ints for float fields."""
    if isinstance(value, str) and not _matches(value, hint):
        parsed = _parse_scalar(value)
        if _matches(parsed, hint):
            value = parsed
    if isinstance(value, tuple):
        value = list(value)
    args = _flat_args(hint)
    if isinstance(value, int) and not isinstance(value, bool) and float in args and int not in args:
        value = float(value)
    return value


def _parse_scalar(text: str) -> Any:
    """A command-line value as papermill reads it: int, else float (``1e-5``, which YAML 1.1 keeps a string), else
    YAML (lists, ``null``, booleans), else the string."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _flat_args(hint: Any) -> tuple:
    return typing.get_args(hint) if typing.get_origin(hint) in (Union, types.UnionType) else (hint,)


def _type_name(hint: Any) -> str:
    return str(hint).replace("typing.", "") if not isinstance(hint, type) else hint.__name__


def _validate(cls: type, values: dict[str, Any], where: str) -> Any:
    """Build a ``cls`` from ``values`` (missing fields: the defaults), checking type and range of each value."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in fields(cls):
        if f.name not in values:
            continue
        hint, value = hints[f.name], _coerce(values[f.name], hints[f.name])
        if not _matches(value, hint):
            raise ConfigError(f"{f.name} = {values[f.name]!r} ({where}): expected {_type_name(hint)}")
        choices, lo, hi = f.metadata.get("choices"), f.metadata.get("lo"), f.metadata.get("hi")
        items = value if isinstance(value, list) else [value]
        for v in items:
            if v is None or isinstance(v, (dict, bool)):
                continue
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"{f.name} = {v!r} ({where}): must be a finite number")
            if choices is not None and v not in choices:
                raise ConfigError(f"{f.name} = {v!r} ({where}): allowed values are {', '.join(map(repr, choices))}")
            if isinstance(v, (int, float)) and ((lo is not None and v < lo) or (hi is not None and v > hi)):
                rng = f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
                raise ConfigError(f"{f.name} = {v!r} ({where}): must lie in {rng}")
        out[f.name] = value
    return cls(**out)


# ------------------------------------------------------------------------------------------------------ Config
@dataclass(frozen=True)
class Config:
    """The resolved configuration of a run: one frozen dataclass per stage, plus where it came from.

    ``cfg.loss.kl_weight`` is the typed access; ``cfg["kl_weight"]`` looks a key up in its stage (KeyError naming
    the closest valid keys for an unknown one). There is no ``.get(key, default)``: defaults live in the stage
    classes only.
    """

    profile: str
    source: str
    overrides: dict[str, Any]
    run: RunConfig
    data: DataConfig
    base_ae: BaseAEConfig
    loss: Any  # LossStageConfig
    finetune: FinetuneConfig
    metrics: MetricsConfig
    gen: GeneratorConfig
    vq: VQConfig
    pilot: PilotConfig
    knobs: tuple[str, ...] = ()

    def __getitem__(self, key: str) -> Any:
        if key == "profile":
            return self.profile
        if key not in KEY_STAGE:
            raise KeyError(str(unknown_key_error(key, "looked up in a Config")))
        return getattr(getattr(self, KEY_STAGE[key]), key)

    def __contains__(self, key: str) -> bool:
        return key == "profile" or key in KEY_STAGE

    def flat(self) -> dict[str, Any]:
        """Every key and its resolved value (``profile`` included), as in a profile YAML."""
        out = {"profile": self.profile}
        for stage in STAGES:
            out.update(dataclasses.asdict(getattr(self, stage)))
        return out

    def record(self) -> dict[str, Any]:
        """The resolved configuration for a result record: profile, source file, the overrides given, and every stage's
        fields (JSON-serialisable)."""
        return {"profile": self.profile, "source": self.source, "overrides": dict(self.overrides),
                "stages": {s: dataclasses.asdict(getattr(self, s)) for s in STAGES}}

    def print_knobs(self) -> None:
        """Print the notebook's knobs with their resolved values and where each comes from."""
        print(f"profile {self.profile} ({self.source})")
        for k in self.knobs:
            origin = "set here / -p" if k in self.overrides else "profile"
            print(f"  {k} = {self[k]!r}  ({KEY_STAGE[k]}; {origin})")

    def replace(self, **overrides: Any) -> "Config":
        """A copy with some keys changed (validated like a profile)."""
        return build_config({**self.flat(), **overrides}, profile=self.profile, source=self.source,
                            overrides={**self.overrides, **overrides})


def build_config(values: dict[str, Any], profile: str = "custom", source: str = "<dict>",
                 overrides: dict[str, Any] | None = None) -> Config:
    """A validated :class:`Config` from flat ``values`` (unknown key: :class:`ConfigError`)."""
    for key in values:
        if key != "profile" and key not in KEY_STAGE:
            raise unknown_key_error(key, source)
    stages = {s: _validate(cls, values, source) for s, cls in STAGES.items()}
    _check_schedules(stages, values, source, overrides or {})
    return Config(profile=profile, source=source, overrides=dict(overrides or {}), **stages)


def _check_schedules(stages: dict[str, Any], values: dict[str, Any], source: str, overrides: dict[str, Any]) -> None:
    """Refuse an evaluation point beyond the end of its run (``gen_eval_steps`` > ``gen_steps``, ``fig5_epochs`` >
    ``finetune_epochs``, ``maskgit_eval_epochs`` > ``maskgit_epochs``): it would never be evaluated, and a shortened
    run (``-p gen_steps 1000``) would silently lose checkpoints. Checked on the merged values only (a profile may set
    one key of a pair and inherit the other).

    Raises:
        ConfigError: naming both keys, their values and where each came from (``override``, the profile files, or
            ``default``: the stage dataclass's default).
    """
    def origin(key: str) -> str:
        return "override" if key in overrides else source if key in values else "default"

    gen, ft, vq = stages["gen"], stages["finetune"], stages["vq"]
    for key, points, end_key, end in (("gen_eval_steps", gen.gen_eval_steps, "gen_steps", gen.gen_steps),
                                      ("fig5_epochs", gen.fig5_epochs or [], "finetune_epochs", ft.finetune_epochs),
                                      ("maskgit_eval_epochs", vq.maskgit_eval_epochs, "maskgit_epochs",
                                       vq.maskgit_epochs)):
        beyond = [p for p in points if p > end]
        if beyond:
            raise ConfigError(f"{key} = {list(points)} ({origin(key)}): {beyond} lie beyond {end_key} = {end} "
                              f"({origin(end_key)}) and would "
                              f"never be evaluated; give {key} within the run (e.g. -p {key} "
                              f"'{[p for p in points if p <= end] or [end]}') or raise {end_key}")


def profile_name() -> str:
    """The active profile: ``$EQVAE_PROFILE`` or ``"cpu"``.

    Raises:
        ValueError: if the variable names no known profile.
    """
    name = os.environ.get("EQVAE_PROFILE", "cpu")
    if name not in PROFILES:
        raise ValueError(f"EQVAE_PROFILE={name!r} is not a profile; choose one of {', '.join(PROFILES)}")
    return name


def _read_profile(name: str) -> tuple[dict[str, Any], list[str]]:
    path = PROFILES_DIR / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"profile file {path} not found; known profiles: {', '.join(PROFILES)}")
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a profile is a mapping of key: value, got {type(values).__name__}")
    base = values.pop("inherit", None)
    for key in values:
        if key not in KEY_STAGE:
            raise unknown_key_error(key, str(path))
    _validate_all(values, str(path))
    if base:
        merged, files = _read_profile(base)
        return {**merged, **values}, files + [str(path)]
    return values, [str(path)]


def _validate_all(values: dict[str, Any], where: str) -> None:
    for stage, cls in STAGES.items():
        _validate(cls, values, where)


def load_config(profile: str | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Read ``profiles/<profile>.yaml`` (``None`` = ``$EQVAE_PROFILE``, default ``cpu``; a profile may ``inherit``
    another one, read first), apply ``overrides`` (values ``None`` are skipped = "from the profile"), validate.

    Raises:
        FileNotFoundError: unknown profile. ConfigError: an unknown key (naming the closest valid ones), a value of the
            wrong type or out of range (naming the key, the file and the allowed values), an evaluation point beyond
            the end of its run (see :func:`_check_schedules`).
    """
    name = profile or profile_name()
    values, files = _read_profile(name)
    given = {k: v for k, v in (overrides or {}).items() if v is not None and k != "profile"}
    for key in given:
        if key not in KEY_STAGE:
            raise unknown_key_error(key, "override")
    _validate_all(given, "override")
    return build_config({**values, **given}, profile=name, source=" < ".join(reversed(files)), overrides=given)


def load_profile(name: str | None = None) -> dict[str, Any]:
    """The flat dict of a profile's resolved values (every key, defaults filled in)."""
    return load_config(name).flat()


#: names a Jupyter/IPython kernel puts into a notebook's globals
_KERNEL_NAMES = {"In", "Out", "get_ipython", "exit", "quit", "open"}


def notebook_config(profile: str | None, namespace: dict[str, Any]) -> Config:
    """The configuration of a notebook run: the profile, overridden by every stage key that is a global of the notebook
    (its parameters cell, where ``None`` means "from the profile", or papermill's injected ``-p`` values).

    On the first call in a kernel every other plain-valued public global is an error (a papermill ``-p`` of a
    misspelled or unknown key fails here, naming the closest valid keys); later calls (a re-run in JupyterLab, where
    the notebook's own variables exist) only reject names close to a valid key. The knobs found are kept in
    ``Config.knobs`` (:meth:`Config.print_knobs`).

    Raises:
        ConfigError: unknown key, wrong type or out of range.
    """
    first = not namespace.get("_eqvae_config_resolved", False)
    overrides, knobs = {}, []
    for name, value in list(namespace.items()):
        if name.startswith("_") or name in _KERNEL_NAMES or name == "profile":
            continue
        if isinstance(value, types.ModuleType) or callable(value):
            continue
        if name in KEY_STAGE:
            knobs.append(name)
            overrides[name] = value
        elif first or _looks_like_a_key(name):
            raise unknown_key_error(name, "notebook global / papermill -p")
    namespace["_eqvae_config_resolved"] = True
    return dataclasses.replace(load_config(profile, overrides), knobs=tuple(knobs))


def _looks_like_a_key(name: str) -> bool:
    near = difflib.get_close_matches(name, list(KEY_STAGE), n=1, cutoff=0.85)
    return bool(near)


def check_overrides(args: list[str]) -> None:
    """Check papermill-style ``-p NAME VALUE`` (and raw ``-r NAME VALUE``) arguments against the stages
    (``make reproduce`` runs this before any notebook).

    Raises:
        ConfigError: an unknown name, a wrong type or an out-of-range value.
    """
    overrides, i = {}, 0
    while i < len(args):
        if args[i] not in ("-p", "--parameters", "-r", "--parameters_raw"):
            raise ConfigError(f"{args[i]!r}: expected -p NAME VALUE (or -r NAME VALUE) pairs, e.g. -p kl_weight 1e-5")
        if i + 2 >= len(args):
            raise ConfigError(f"{' '.join(args[i:])}: {args[i]} takes a NAME and a VALUE")
        raw = args[i] in ("-r", "--parameters_raw")
        overrides[args[i + 1]] = args[i + 2] if raw else _parse_scalar(args[i + 2])
        i += 3
    overrides.pop("profile", None)
    load_config(None, overrides)


def main(argv: list[str] | None = None) -> int:
    """``python -m eqvae_lib config keys`` lists the keys per stage; ``check -p NAME VALUE ...`` validates overrides
    against ``$EQVAE_PROFILE``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["keys"]:
        for stage, cls in STAGES.items():
            print(f"{stage} ({cls.__name__}): {', '.join(f.name for f in fields(cls))}")
        return 0
    if argv[:1] == ["check"]:
        if argv[1:2] in (["-h"], ["--help"]):
            print("usage: python -m eqvae_lib config check [-p NAME VALUE | -r NAME VALUE] ...   (exit 2 on a bad "
                  "name or value)")
            return 0
        try:
            check_overrides(argv[1:])
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"ok: {len(argv[1:]) // 3} override(s) valid")
        return 0
    print("usage: python -m eqvae_lib config keys | config check [-p NAME VALUE ...]\n"
          "  keys   list every knob, stage by stage\n"
          "  check  validate papermill-style overrides against the stages (exit 2 on a bad name or value)")
    return 0 if argv[:1] in ([], ["-h"], ["--help"]) else 2


if __name__ == "__main__":
    raise SystemExit(main())
