"""The CPU path must not get slower (issue 17): the loops of ``bench_ae_step.py`` and ``bench_gen.py`` measured with
the library as of the baseline commit (``bench/_legacy.py``, default 8bf3814) and as it is now, interleaved
(old, new, old, new, …) in ONE process, so that load changes on a shared machine hit both alike.

Run: ``OMP_NUM_THREADS=1 python bench/bench_cpu_old_vs_new.py [--reps 3]`` (about 3 minutes on one free core).

Rows (each: median CPU seconds of this process — ``time.process_time``, less disturbed by other jobs than wall time on
a shared machine; run with one thread — old / new over the repetitions, and new/old; wall medians are in the JSON):
1. AE loss step (bench_ae_step's unit): ``generator_loss`` + backward + ``discriminator_loss`` + backward + Adam,
   small-f4, 32 px, batch 16, ST-LPIPS-alex, forced plain branch, same generator: also checks that the loss VALUES are
   bit-identical (only the RNG rule may change numbers; this path draws nothing new);
2. ``train_autoencoder`` end to end (small-f4, 16 px, batch 8, 12 steps, no validation), plain objective: the EQ
   objective's branch sequence depends on the RNG rule, and the branches cost differently, so only the plain loop
   compares the loops themselves;
3. ``train_gen`` DiT-T/2 on 4x8x8 latents, batch 128, 10 steps (bench_gen's training row);
4. DDPM-250 sampling of DiT-T/2, 16 latents (bench_gen's sampling row): also checks bit-identical samples.
Writes ``runs/bench/bench_cpu_old_vs_new.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import eqvae_lib  # noqa: E402
from _legacy import BASELINE, legacy_package  # noqa: E402
from eqvae_lib.experiment.config import RUNS_DIR  # noqa: E402
from eqvae_lib.io import atomic_write_json, git_commit  # noqa: E402


def _mods(pkg):
    return {m: importlib.import_module(f"{pkg.__name__}.{m}") for m in
            ("autoencoders", "losses", "train_ae", "train_gen", "latents", "dit")}


def ae_loss_steps(M, n=3):
    torch.manual_seed(0)
    vae = M["autoencoders"].build_autoencoder("small-f4", in_channels=1).train()
    loss_fn = M["losses"].EQVAELoss(M["losses"].LossConfig(perceptual="stlpips-alex"), 1)
    x = torch.rand(16, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    opt = torch.optim.Adam(vae.parameters(), lr=1e-5, betas=(0.5, 0.9))
    values = []
    t0 = time.perf_counter()
    for i in range(n):
        opt.zero_grad(set_to_none=True)
        loss, logs, pair = loss_fn.generator_loss(vae, x, 0, torch.Generator().manual_seed(i), branch="plain")
        loss.backward()
        d, _ = loss_fn.discriminator_loss(*pair, 0)
        d.backward()
        opt.step()
        values.append(float(logs["nll"]))  # a user's logging reads it once
    return time.perf_counter() - t0, values


def train_ae_loop(M):
    torch.manual_seed(0)
    vae = M["autoencoders"].build_autoencoder("small-f4", block_out_channels=(16, 16, 16))
    x = torch.rand(96, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    lc = M["losses"].LossConfig(objective="plain", perceptual="none", disc_ndf=8, min_latent_side=2)
    cfg = M["train_ae"].AETrainConfig(loss=lc,
                                      batch_size=8, max_steps=12, max_epochs=None, progress=False, val_every=0,
                                      measure_norm=False, export_ldm=False, device="cpu")
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        M["train_ae"].train_autoencoder(vae, x, cfg, Path(d) / "r")
        return time.perf_counter() - t0, None


def train_gen_loop(M):
    g = torch.Generator().manual_seed(0)
    L = M["latents"]
    cache = L.LatentCache.from_tensors(torch.randn(2048, 4, 8, 8, generator=g), torch.arange(2048) % 10,
                                       L.LatentNorm(torch.zeros(4), torch.ones(4), "none"))
    cfg = M["train_gen"].TrainGenConfig(model="DiT-T/2", steps=10, batch_size=128, log_every=5, ema_decay=0.999,
                                        progress=False)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        M["train_gen"].train_gen(cfg, cache, d, device="cpu")
        return time.perf_counter() - t0, None


def ddpm_sampling(M):
    torch.manual_seed(0)
    dit = M["dit"].dit_model("DiT-T/2", input_size=8, in_channels=4, num_classes=10).eval()
    for p in dit.parameters():
        p.data.add_(0.02 * torch.randn_like(p))
    t0 = time.perf_counter()
    z = M["dit"].sample_dit(dit, 16, y=torch.arange(16) % 10, steps=250, generator=torch.Generator().manual_seed(0))
    return time.perf_counter() - t0, z


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--old-commit", default=BASELINE)
    p.add_argument("--old-src", help="folder holding the old eqvae_lib/ (instead of git archive)")
    args = p.parse_args(argv)
    old_pkg, why = legacy_package(args.old_commit, args.old_src)
    if old_pkg is None:
        print(f"bench_cpu_old_vs_new.py: skipped ({why})")
        return {}
    old, new = _mods(old_pkg), _mods(eqvae_lib)
    res = {"threads": torch.get_num_threads(), "git_commit": git_commit(), "old_commit": args.old_commit,
           "date": time.strftime("%Y-%m-%d %H:%M:%S"), "rows": []}
    print(f"| what ({torch.get_num_threads()} CPU thread(s)) | old CPU s | new CPU s | new/old | same numbers |\n"
          "|---|---|---|---|---|", flush=True)
    for label, fn in (("AE loss step x3 (small-f4 32px b16, ST-LPIPS)", ae_loss_steps),
                      ("train_autoencoder plain, 12 steps (small-f4 16px b8)", train_ae_loop),
                      ("train_gen DiT-T/2 10 steps (b128, 4x8x8)", train_gen_loop),
                      ("sample_dit DDPM-250, 16 latents (DiT-T/2)", ddpm_sampling)):
        fn(old), fn(new)  # warm-up of both
        t_old, t_new, c_old, c_new, outs = [], [], [], [], {}
        for _ in range(args.reps):
            for name, M, ts, cs in (("old", old, t_old, c_old), ("new", new, t_new, c_new)):
                c0 = time.process_time()
                t, out = fn(M)
                cs.append(time.process_time() - c0)
                ts.append(t)
                outs[name] = out
        same = None
        if outs["old"] is not None:
            a, b = outs["old"], outs["new"]
            same = bool(torch.equal(a, b)) if isinstance(a, torch.Tensor) else a == b
        mo, mn = statistics.median(c_old), statistics.median(c_new)
        row = {"what": label, "old_cpu_s": c_old, "new_cpu_s": c_new, "old_wall_s": t_old, "new_wall_s": t_new,
               "old_median_cpu_s": mo, "new_median_cpu_s": mn, "new_over_old_cpu": mn / mo,
               "new_over_old_wall": statistics.median(t_new) / statistics.median(t_old), "identical_numbers": same}
        res["rows"].append(row)
        print(f"| {label} | {mo:.3f} | {mn:.3f} | {mn / mo:.3f} | {'n/a (RNG rule)' if same is None else same} |",
              flush=True)
    atomic_write_json(RUNS_DIR / "bench" / "bench_cpu_old_vs_new.json", res)
    return res


if __name__ == "__main__":
    main()
