"""How much of a small-scale gFID is the sampler? Run ``python bench/diag_dit_samplers.py`` after ``make reproduce``
(profile ``cpu``). Protocol v2's ``cpu`` trains SiT only (``gen_methods``), so the DiT-T/2 of the base autoencoder
is trained here first (cached under the pipeline's key; the SiT comes from notebook 07's cache); ``cpu-full``'s
notebook 07 trains both. Not timed under v2.

Takes the final EMA checkpoint of the DiT-T/2 that notebook 07 trained on the base autoencoder's latents (seed
``replicate_seeds[0]``), samples ``--n`` images with each sampler below from the same label and noise seed, and measures gFID
with the profile's FID extractor against the profile's reference statistics, plus the sampling time.
Samplers: DDIM with 25 (the ``cpu`` profile's), 50 and 100 steps, DDPM with 250 steps (the paper's), and for the
SiT of the same AE and seed, Heun with 13 (the profile's) and 50 steps. Then the spread that the sample draw alone
gives: the profile's DiT sampler with sample seeds 10000 + seed (notebook 07's evaluation draw), 20000 + seed and
30000 + seed.

The numbers are comparisons within one run: same checkpoints, same n, same reference. Writes
``runs/bench/diag_dit_samplers.json`` (atomic) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eqvae_lib.experiment import pipeline  # noqa: E402
from eqvae_lib.experiment.config import RUNS_DIR, load_config  # noqa: E402
from eqvae_lib.io import atomic_write_json, git_commit  # noqa: E402
from eqvae_lib.metrics import fid as fidm  # noqa: E402
from eqvae_lib.train_gen import latest_checkpoint, load_gen_checkpoint, sample_from_checkpoint  # noqa: E402

SAMPLERS = {"dit": [("ddim", 25), ("ddim", 50), ("ddim", 100), ("ddpm", 250)], "sit": [("heun", 13), ("heun", 50)]}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--profile", default="cpu")
    p.add_argument("--n", type=int, default=1000, help="samples per sampler (default 1000, the cpu profile's)")
    args = p.parse_args(argv)
    P = load_config(args.profile, {"progress": False})
    data = pipeline.load_data(P)
    base = pipeline.train_or_load_base_autoencoder(P, data)
    vae = base.model
    extractor = pipeline.feature_extractor(P, data)
    reference = pipeline.reference_stats(P, data, extractor)
    seed = P["replicate_seeds"][0]
    res = {"profile": args.profile, "n": args.n, "seed": seed, "ae": base.hash, "metric": extractor.metric_name,
           "git_commit": git_commit(), "rows": []}
    print(f"| model | sampler | sample seed | gFID ({extractor.metric_name}, n={args.n}) | sampling s |\n"
          "|---|---|---|---|---|")
    for method, samplers in SAMPLERS.items():
        # cached when notebook 07 trained this method (cpu: SiT only), else trained here first
        curve = pipeline.train_or_load_generative_curve(P, data, vae, seed, method, extractor, reference)
        ck = load_gen_checkpoint(latest_checkpoint(curve.run_dir))
        runs = [(sampler, steps, 20_000) for sampler, steps in samplers]
        if method == "dit":  # the sample draw's own spread, with the profile's sampler
            runs += [(P["dit_sampler"], int(P["dit_sample_steps"]), base) for base in (10_000, 30_000)]
        for sampler, steps, base in runs:
            t0 = time.time()
            imgs = sample_from_checkpoint(ck, vae, args.n, sampler=sampler, steps=steps, progress=False,
                                          generator=torch.Generator().manual_seed(base + seed),
                                          batch_size=int(P["gen_sample_batch"]))
            dt = time.time() - t0
            r = fidm.compute_fid(imgs, reference, extractor, kid=False, verbose=False)
            row = {"model": f"{P['gen_model']} ({method}, step {ck.step})", "sampler": f"{sampler}-{steps}",
                   "sample_seed": base + seed, "gfid": r["fid"], "sampling_s": dt}
            res["rows"].append(row)
            atomic_write_json(RUNS_DIR / "bench" / "diag_dit_samplers.json", res)
            print(f"| {row['model']} | {row['sampler']} | {row['sample_seed']} | {row['gfid']:.2f} | {dt:.0f} |",
                  flush=True)
    return res


if __name__ == "__main__":
    main()
