"""Does bf16 autocast pay on the CPU? fp32 vs ``torch.autocast("cpu", bfloat16)`` for the `cpu` profile's hot loops.

Run: ``OMP_NUM_THREADS=2 .venv/bin/python bench/bench_cpu_bf16.py [--seconds 6] [--out bench/results/...json]``

The kit autocasts to bf16 on CUDA only (``train_ae``, ``train_gen``: ``bf16`` is ignored on the CPU). This measures,
in ONE run on this machine, the three steps that dominate the `cpu` profile's wall time (``make project``): a SiT-T/2
training step on 4×8×8 latents (batch 128, AdamW), a SiT-T/2 forward pass as in sampling (batch 250, no grad) and an
autoencoder step of the `cpu` base before its GAN starts (small-f4, 32 px, batch 64: encode, sample, decode, L1 +
ST-LPIPS, Adam; the PatchGAN's update is not included). Each is timed for ``--seconds`` after two untimed warm-up
calls, ``--repeats`` times with the order of the two precisions alternating (fp32 first on even repeats). Only the
ratios bf16/fp32 of one run are meaningful (``> 1``: bf16 is faster); the JSON gives each repeat's ratio and their
median, min and max. It names the CPU and whether it has AVX512-BF16 / AMX (bf16 without them is emulated and slow).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import socket
import statistics
import time
from pathlib import Path

import torch

from eqvae_lib import autoencoders as ae
from eqvae_lib.io import atomic_write_json, git_commit
from eqvae_lib.losses import PerceptualLoss
from eqvae_lib.train_gen import TrainGenConfig, build_model

RESULTS = Path(__file__).resolve().parent / "results"


def _rate(fn, seconds: float) -> float:
    """Calls per second of ``fn`` over ``seconds`` (after 2 untimed warm-up calls)."""
    fn()
    fn()
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return n / (time.perf_counter() - t0)


def _amp(on: bool):
    """bf16 autocast on the CPU when ``on``, else a no-op context."""
    return torch.autocast("cpu", dtype=torch.bfloat16) if on else contextlib.nullcontext()


def _cpu_flags() -> dict:
    """The CPU's model name and whether it has native bf16 (AVX512-BF16, AMX-BF16), from /proc/cpuinfo."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        flags = next(line for line in lines if line.startswith("flags"))
        model = next(line for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return {"model": platform.processor(), "avx512_bf16": None, "amx_bf16": None}
    return {"model": model.split(":", 1)[1].strip(), "avx512_bf16": " avx512_bf16" in flags,
            "amx_bf16": " amx_bf16" in flags}


def main(argv=None) -> None:
    """Measure the three step types in both precisions and write the JSON (``--out``)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=4.0, help="timed seconds per step type, precision and repeat")
    p.add_argument("--repeats", type=int, default=3, help="repeats, alternating which precision runs first")
    p.add_argument("--out", type=Path, default=RESULTS / f"bench_cpu_bf16_{socket.gethostname()}.json")
    args = p.parse_args(argv)
    torch.manual_seed(0)

    sit = build_model(TrainGenConfig(method="sit", model="SiT-T/2"), (4, 8, 8), 10)
    opt = torch.optim.AdamW(sit.parameters(), lr=1e-4)
    z, y = torch.randn(128, 4, 8, 8), torch.randint(0, 10, (128,))
    zs, ys = torch.randn(250, 4, 8, 8), torch.randint(0, 10, (250,))
    vae = ae.build_autoencoder("small-f4")
    perceptual = PerceptualLoss("stlpips-alex")
    opt_ae = torch.optim.Adam(vae.parameters(), lr=1e-4)
    x = torch.rand(64, 1, 32, 32) * 2 - 1

    def sit_train(bf16):
        def step():
            with _amp(bf16):
                loss = sit(z, torch.rand(128), y).float().pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return step

    def sit_sample_forward(bf16):
        def step():
            with torch.no_grad(), _amp(bf16):
                sit(zs, torch.rand(250), ys)
        return step

    def ae_train(bf16):
        def step():
            with _amp(bf16):
                x_rec = vae.decode(vae.encode(x).latent_dist.sample()).sample.float()
                loss = (x_rec - x).abs().mean() + perceptual(x, x_rec).mean()
            opt_ae.zero_grad()
            loss.backward()
            opt_ae.step()
        return step

    rows = {}
    for name, make, unit in (("sit_train_step_b128", sit_train, "steps/s"),
                             ("sit_forward_b250", sit_sample_forward, "forward passes/s"),
                             ("ae_step_small_f4_b64", ae_train, "steps/s")):
        fp32, bf16 = [], []
        for r in range(args.repeats):
            for use_bf16 in ((False, True) if r % 2 == 0 else (True, False)):
                (bf16 if use_bf16 else fp32).append(_rate(make(use_bf16), args.seconds))
        ratios = sorted(b / f for b, f in zip(bf16, fp32))
        rows[name] = {"fp32": fp32, "bf16": bf16, "unit": unit, "ratio_bf16_over_fp32": ratios,
                      "ratio_median": statistics.median(ratios), "ratio_min": ratios[0], "ratio_max": ratios[-1]}
        print(f"{name:22s} bf16/fp32 median {statistics.median(ratios):.2f} (min {ratios[0]:.2f}, max "
              f"{ratios[-1]:.2f}; {args.repeats} repeats; fp32 {statistics.median(fp32):.2f} {unit})", flush=True)
    atomic_write_json(args.out, {
        "bench": "bench_cpu_bf16", "host": socket.gethostname(), "cpu": _cpu_flags(),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "git_commit": git_commit(),
        "seconds_per_measurement": args.seconds, "repeats": args.repeats, "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rows": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
