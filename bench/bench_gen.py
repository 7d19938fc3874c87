"""Benchmark of the latent generative side (issue 5): run ``python bench/bench_gen.py`` (about 1 minute on 2 cores).

Measures, on this machine:
1. training throughput (latents/s) of the CPU-sized DiT-T/2 through the real ``train_gen`` loop (the logged
   ``latents_per_s`` after a warm-up interval), on 4x8x8 latents (32-px images, f4 AE, as the ``cpu`` profile);
2. sampling throughput (images/s, including decoding by a pilot-sized diffusers AutoencoderKL) for DiT DDPM-250,
   DiT DDIM-50 and SiT Heun-50;
3. the forward FLOPs of DiT-B/2 and DiT-XL/2 at 256 px (32x32x4 latents), counted with ``torch.utils.flop_counter``
   on the meta device, and a projected wall time for the paper's 400K-step runs at batch 256.

Projection assumption (stated in the table): training FLOPs = 3 x forward FLOPs per latent (backward = 2 x forward),
sustained at 40 % of the dense bf16 peak (A100 312 TFLOP/s, H100 SXM 989 TFLOP/s); EMA, data loading and
communication are ignored.
Writes ``runs/bench/bench_gen.json`` (atomic) and prints a markdown table (rows as they complete).
On a shared machine run it with ``OMP_NUM_THREADS=1``: oversubscribed OpenMP threads slowed a DiT-T/2 forward 25x
here while other jobs ran.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eqvae_lib.experiment.config import RUNS_DIR  # noqa: E402
from eqvae_lib.dit import count_params, dit_model, sample_dit  # noqa: E402
from eqvae_lib.io import atomic_write_json, git_commit, state_dict_hash  # noqa: E402
from eqvae_lib.latents import LatentCache, LatentNorm, decode_latents  # noqa: E402
from eqvae_lib.sit import sample_sit, sit_model  # noqa: E402
from eqvae_lib.train_gen import TrainGenConfig, train_gen  # noqa: E402

MFU = 0.40
PEAK_BF16 = {"A100 (312 TFLOP/s bf16)": 312e12, "H100 SXM (989 TFLOP/s bf16)": 989e12}


def pilot_vae():
    """The pilot's f4 AE: 3 blocks (16, 32, 64), no mid-block attention, latent 4x8x8 for 32-px images."""
    from diffusers import AutoencoderKL
    torch.manual_seed(0)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                         up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(16, 32, 64), latent_channels=4,
                         norm_num_groups=16, layers_per_block=1, mid_block_add_attention=False).eval()


def forward_flops(name: str, input_size: int = 32) -> float:
    from torch.utils.flop_counter import FlopCounterMode
    with torch.device("meta"):
        m = dit_model(name, input_size=input_size, in_channels=4, num_classes=1000)
        with FlopCounterMode(display=False) as fc:
            m(torch.empty(1, 4, input_size, input_size), torch.tensor([1]), torch.tensor([1]))
    return float(fc.get_total_flops())


def main() -> dict:
    threads = torch.get_num_threads()
    res: dict = {"threads": threads, "git": git_commit()}
    print(f"\n| measurement ({threads} CPU threads) | result | note |\n|---|---|---|", flush=True)

    class _Rows(list):
        def append(self, r):
            super().append(r)
            print(f"| {r[0]} | {r[1]} | {r[2]} |", flush=True)
    rows = _Rows()
    # 1. training throughput
    n, batch, steps = 4096, 128, 40
    g = torch.Generator().manual_seed(0)
    cache = LatentCache.from_tensors(torch.randn(n, 4, 8, 8, generator=g), torch.arange(n) % 10,
                                     LatentNorm(torch.zeros(4), torch.ones(4), "none"))
    for model, method in (("DiT-T/2", "dit"), ("SiT-T/2", "sit")):
        cfg = TrainGenConfig(model=model, method=method, steps=steps, batch_size=batch, log_every=10, ema_decay=0.999,
                             progress=False)
        with tempfile.TemporaryDirectory() as d:
            r = train_gen(cfg, cache, d)
            recs = [json.loads(line) for line in open(r.log_path) if "latents_per_s" in line]
            params = count_params(r.model)
        lps = sum(x["latents_per_s"] for x in recs[1:]) / len(recs[1:])  # first interval = warm-up
        res[f"train_{model}_latents_per_s"] = lps
        rows.append((f"train {model} ({params / 1e6:.2f}M params, {method}), batch {batch}, 4x8x8 latents",
                     f"{lps:.0f} latents/s", f"2000 steps at batch 128: {2000 * 128 / lps / 60:.1f} min"))
    # 2. sampling throughput incl. decoding
    vae = pilot_vae()
    norm = LatentNorm(torch.zeros(4), torch.ones(4), state_dict_hash(vae))
    torch.manual_seed(0)
    dit = dit_model("DiT-T/2", input_size=8, in_channels=4, num_classes=10).eval()
    sit = sit_model("SiT-T/2", input_size=8, in_channels=4, num_classes=10).eval()
    for p in list(dit.parameters()) + list(sit.parameters()):  # leave the all-zero init (same cost, realistic values)
        p.data.add_(0.02 * torch.randn_like(p))
    ns = 32
    y = torch.arange(ns) % 10
    for label, fn in (("DiT DDPM 250 steps", lambda gen: sample_dit(dit, ns, y=y, steps=250, generator=gen)),
                      ("DiT DDIM 50 steps", lambda gen: sample_dit(dit, ns, y=y, sampler="ddim", steps=50,
                                                                   generator=gen)),
                      ("SiT Heun 50 steps (99 evals)", lambda gen: sample_sit(sit, ns, y=y, steps=50, generator=gen)),
                      ("DiT DDPM 250 steps, CFG 4.0", lambda gen: sample_dit(dit, ns, y=y, steps=250, cfg_scale=4.0,
                                                                             generator=gen))):
        t0 = time.perf_counter()
        z = fn(torch.Generator().manual_seed(0))
        t1 = time.perf_counter()
        imgs = decode_latents(vae, z.clamp(-5, 5), norm, batch_size=64)
        t2 = time.perf_counter()
        ips = ns / (t2 - t0)
        res[f"sample_{label}_images_per_s"] = ips
        rows.append((f"sample {label} + decode, {ns} images 32 px", f"{ips:.1f} images/s",
                     f"decode share {100 * (t2 - t1) / (t2 - t0):.1f} %; 3000 samples: {3000 / ips / 60:.1f} min"))
        assert imgs.shape == (ns, 3, 32, 32)
    # 3. FLOP projection
    for name, runs in (("DiT-B/2", "paper Table 1/2: DiT-B/2 400K steps, batch 256"),
                       ("DiT-XL/2", "paper Table 2: DiT-XL/2 400K steps, batch 256")):
        f = forward_flops(name)
        total = 3 * f * 256 * 400_000
        res[f"{name}_forward_gflops"] = f / 1e9
        res[f"{name}_400k_total_flops"] = total
        for gpu, peak in PEAK_BF16.items():
            hours = total / (MFU * peak) / 3600
            res[f"{name}_400k_hours_{gpu.split()[0]}"] = hours
            rows.append((f"{runs}: {f / 1e9:.1f} GFLOP fwd/latent, {total:.2e} FLOP",
                         f"{hours:.1f} GPU-hours on one {gpu.split(' (')[0]}",
                         f"{MFU:.0%} of {gpu.split('(')[1].rstrip(')')}; {hours / 8:.1f} h on 8 GPUs"))
    atomic_write_json(RUNS_DIR / "bench" / "bench_gen.json", res)
    return res


if __name__ == "__main__":
    main()
