"""Cost of one autoencoder training step: plain VAE loss (Eq. 1) vs EQ-VAE loss (Eq. 7), and its parts.

Run: ``OMP_NUM_THREADS=2 .venv/bin/python bench/bench_ae_step.py [--arch small-f4 --size 32 --batch 64 --iters 10]``

All numbers come from one run on one machine, so only ratios are meaningful. The EQ step is measured with branches
drawn as in training (50 % eq, 37.5 % plain, 12.5 % low-res at the defaults); per-branch costs are listed too.
Goal (issue 3): EQ step ≤ 1.1 × plain step. Peak memory: CUDA max_memory_allocated, or the process's peak RSS on CPU
(monotone over the run, so only the first rows are informative there).
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from eqvae_lib import autoencoders as ae
from eqvae_lib.losses import EQVAELoss, LossConfig


def _peak_mb(dev) -> float:
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--arch", default="small-f4")
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--iters", type=int, default=12)
    p.add_argument("--perceptual", default="stlpips-alex")
    args = p.parse_args(argv)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    vae = ae.build_autoencoder(args.arch, in_channels=args.channels).to(dev).train()
    x = (torch.rand(args.batch, args.channels, args.size, args.size) * 2 - 1).to(dev)
    rows = []

    def timeit(name, fn, iters=args.iters):
        fn()  # warm-up
        if dev.type == "cuda":
            torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        for _ in range(iters):
            fn()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        dt = (time.perf_counter() - t) / iters
        rows.append((name, dt, args.batch / dt, _peak_mb(dev)))
        return dt

    def step(objective, branch=None, seed=[0]):
        loss_fn = losses[objective]
        opt.zero_grad(set_to_none=True)
        seed[0] += 1
        g = torch.Generator().manual_seed(seed[0])
        loss, logs, pair = loss_fn.generator_loss(vae, x, 0, g, branch=branch)
        loss.backward()
        d, _ = loss_fn.discriminator_loss(*pair, 0)
        d.backward()
        opt.step()

    losses = {o: EQVAELoss(LossConfig(objective=o, perceptual=args.perceptual), args.channels).to(dev)
              for o in ("plain", "eq")}
    opt = torch.optim.Adam(vae.parameters(), lr=1e-5, betas=(0.5, 0.9))
    for _ in range(3):  # warm-up of both objectives
        step("plain"), step("eq")
    # plain and EQ steps interleaved, so that load changes on a shared machine hit both alike
    tp = te = 0.0
    for _ in range(2 * args.iters):
        t0 = time.perf_counter(); step("plain"); t1 = time.perf_counter(); step("eq"); t2 = time.perf_counter()
        tp, te = tp + t1 - t0, te + t2 - t1
    t_plain, t_eq = tp / (2 * args.iters), te / (2 * args.iters)
    rows.append(("step: plain VAE loss (Eq. 1)", t_plain, args.batch / t_plain, _peak_mb(dev)))
    rows.append(("step: EQ-VAE loss (Eq. 7, sampled branches)", t_eq, args.batch / t_eq, _peak_mb(dev)))
    for br in ("eq", "plain", "lowres"):
        timeit(f"  step, EQ loss forced branch={br}", lambda br=br: step("eq", br))
    post = ae.encode_posterior(vae, x)
    z = post.sample()
    timeit("part: encode fwd+bwd", lambda: ae.encode_posterior(vae, x).mean.sum().backward())
    timeit("part: decode fwd+bwd", lambda: ae.decode(vae, z.detach()).sum().backward())
    pl = losses["plain"].perceptual
    y = x.detach().flip(-1).requires_grad_(True)
    timeit("part: perceptual fwd+bwd", lambda: pl(x, y).sum().backward())
    disc = losses["plain"].discriminator
    timeit("part: discriminator fwd+bwd", lambda: disc(x).mean().backward())
    print(f"device {dev}, {args.arch} {args.channels}x{args.size}px, batch {args.batch}, perceptual {args.perceptual}")
    print(f"| {'what':48s} | ms/step | img/s | peak MB |")
    print("|---|---|---|---|")
    for name, dt, ips, mb in rows:
        print(f"| {name:48s} | {dt * 1e3:7.1f} | {ips:6.0f} | {mb:7.0f} |")
    print(f"\nEQ / plain step time ratio: {t_eq / t_plain:.3f} (goal <= 1.1)")


if __name__ == "__main__":
    main()
