"""gFID curves on one sample size, for the convergence speed-up.

A generator's curve (:func:`pipeline.train_or_load_generative_curve`) scores ``gen_fid_n`` samples at intermediate
checkpoints and ``gen_fid_n_final`` (``cpu``: 5000 against 1000) at the last one. FID is biased upwards at small n
(the bias falls roughly as 1/n), so the last point of such a curve sits lower than the others for a reason that has
nothing to do with training. The final gFID of Tables 2/6 wants the large n; the speed-up
(:func:`verdicts.speedup_estimate`: the step at which a curve reaches a target read off the other curve's last point)
wants every point on ONE n, or a curve crossing between its last two checkpoints crosses partly because n changed.

:func:`on_one_n` therefore re-scores the last checkpoint on ``gen_fid_n`` samples drawn exactly as the curve's own
evaluations draw them: the checkpoint's EMA weights, the ``dit_eval`` seed stream of the replicate seed, the same
class-stratified labels, sampler and batch size. The value is what the curve would have logged at its last step had
that step used ``gen_fid_n`` samples (a test checks the equality on a curve that did, on the CPU). It is cached beside
the curve (``final_fid_n<N>.json``, keyed by n, step, seed, method, sampler, the checkpoint file's hash, the
autoencoder, the device type, extractor, reference statistics and this module's source).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import torch

from ..autoencoders import weights_hash
from ..io import atomic_write_json
from ..metrics import fid as fidm
from ..perf import enable_tf32
from ..train_gen import latest_checkpoint, load_gen_checkpoint, sample_from_checkpoint
from ..training import resolve_device
from .config import Config
from .pipeline import GenCurve, derive_seed, fid_labels, sampler_of

#: this module's source: part of the cache key of every re-scored value
_CODE = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def final_fid_at(P: Config, vae, seed: int, method: str, curve: GenCurve, extractor, reference,
                 n: int | None = None) -> dict:
    """gFID (and KID) of ``curve``'s last checkpoint on ``n`` samples (default ``gen_fid_n``), sampled as the curve's
    evaluations sample (see the module docstring), on the device training would use (:func:`training.resolve_device`,
    TF32 as in training). On the device type the curve was trained on, the value equals what the curve would have
    logged (tested on the CPU); across device types it is the same draw up to floating-point differences. May sample
    for a minute (n images).

    Args:
        vae: the autoencoder whose latents the generator was trained on (its weights hash is checked against the
            checkpoint's latent normalisation before sampling).
        seed: the replicate seed the curve was trained with; method: ``"dit"`` or ``"sit"`` (both checked against the
            checkpoint).
        extractor, reference: the FID feature extractor and the test set's reference statistics of the curve.

    Returns:
        ``{"fid", "kid", "n", "step", "metric", "device"}``.

    Raises:
        FileNotFoundError: the curve's run folder holds no checkpoint.
        ValueError: the latest checkpoint is not the curve's last evaluated step (a run trained further since), or
            was trained with another seed or method than given.
    """
    n = int(P.gen.gen_fid_n if n is None else n)
    ck_path = latest_checkpoint(curve.run_dir)
    if ck_path is None:
        raise FileNotFoundError(f"{curve.run_dir}: no checkpoint to re-score; re-run the curve "
                                "(train_or_load_generative_curve) first")
    sampler, steps = sampler_of(P, method)
    dev = resolve_device()
    path = Path(curve.run_dir) / f"final_fid_n{n}.json"
    key = {"n": n, "step": curve.steps[-1], "seed": seed, "method": method, "stream": "dit_eval", "sampler": sampler,
           "sample_steps": steps, "sample_batch": P.gen.gen_sample_batch, "device": dev.type,
           "checkpoint": hashlib.sha256(Path(ck_path).read_bytes()).hexdigest()[:16],
           "ae": weights_hash(vae), "extractor": extractor.weights_hash, "reference": reference.key, "code": _CODE}
    if path.exists():
        cached = json.loads(path.read_text())
        if cached.get("key") == key:
            return cached["result"]
    enable_tf32(dev)
    ck = load_gen_checkpoint(ck_path, device=dev)
    if ck.step != curve.steps[-1]:
        raise ValueError(f"{curve.run_dir}: the latest checkpoint is step {ck.step}, the curve ends at step "
                         f"{curve.steps[-1]}; re-run the curve (train_or_load_generative_curve) first")
    if (ck.config.seed, ck.config.method) != (seed, method):
        raise ValueError(f"{curve.run_dir}: the checkpoint was trained with seed {ck.config.seed}, method "
                         f"{ck.config.method!r}; asked to re-score it as seed {seed}, method {method!r}")
    g = torch.Generator().manual_seed(derive_seed(seed, "dit_eval"))  # the curve's evaluation stream
    labels = fid_labels(n, ck.num_classes, g)
    imgs = sample_from_checkpoint(ck, vae, n, sampler=sampler, steps=steps, labels=labels, generator=g,
                                  batch_size=P.gen.gen_sample_batch, progress=P.run.progress)
    r = fidm.compute_fid(imgs, reference, extractor, kid=True, verbose=False)
    kid = r.get("kid_mean")
    result = {"fid": float(r["fid"]), "kid": None if kid is None else float(kid), "n": n, "step": int(ck.step),
              "metric": r["metric"], "device": str(dev)}
    atomic_write_json(path, {"key": key, "result": result})
    return result


def on_one_n(P: Config, vae, seed: int, method: str, curve: GenCurve, extractor, reference) -> GenCurve:
    """``curve`` with every point on ``gen_fid_n`` samples: when its last point was scored on another n
    (``gen_fid_n_final``), that point is replaced by :func:`final_fid_at` (the intermediate points already use
    ``gen_fid_n``). The curve for the speed-up; the final gFID of the tables stays the curve's own last point.

    Raises:
        ValueError: an intermediate point was scored on a sample size other than ``gen_fid_n``.
    """
    n = int(P.gen.gen_fid_n)
    if any(k != n for k in curve.n_fid[:-1]):
        raise ValueError(f"{curve.run_dir}: intermediate checkpoints were scored on {list(curve.n_fid[:-1])} samples, "
                         f"not gen_fid_n = {n}")
    if curve.n_fid[-1] == n:
        return curve
    r = final_fid_at(P, vae, seed, method, curve, extractor, reference, n)
    return dataclasses.replace(curve, fid=curve.fid[:-1] + (r["fid"],), kid=curve.kid[:-1] + (r["kid"],),
                               n_fid=curve.n_fid[:-1] + (n,))
