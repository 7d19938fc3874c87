"""GPU benchmark of the paper-scale pieces (issue 5's projection, measured): run ``python bench/bench_gpu.py`` on a
CUDA machine (about 3 minutes on one H200).

Measures, through the kit's real training loops (``train_gen``, ``train_autoencoder``) with their bf16 autocast:
1. DiT-B/2 and DiT-XL/2 training throughput (latents/s) at the paper's batch 256 on 4x32x32 latents (256-px images,
   f8 AE), from the logged ``latents_per_s`` after a warm-up interval; the projected wall time of the paper's 400K-step
   run on this one GPU (no torch.compile, no data loading: the latents are in memory);
2. DiT-B/2 sampling throughput with 250 DDPM steps (batch 256, latents only) and the time for the 50K samples of gFID;
3. the EQ-VAE fine-tuning step of the SD-VAE architecture (kl-f8, random weights: the SD-VAE weights are not
   reachable offline) at 256 px, micro-batch 32, EQ objective without the perceptual term (ST-LPIPS's package is too
   large to carry to the GPU machine), with the PatchGAN discriminator; the projected time of the paper's 5 epochs x
   10K steps at effective batch 160 (= 5 micro-batches of 32 per step).

Ratios, not absolute targets: every number comes from this run. Writes ``runs/bench/bench_gpu.json`` (atomic; also
``--out DIR/bench_gpu.json``) and prints a markdown table. Without a GPU it prints that it skipped and exits 0.
The measured H200 run is in ``bench/results/bench_gpu_h200.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eqvae_lib import autoencoders as ae  # noqa: E402
from eqvae_lib.config import RUNS_DIR  # noqa: E402
from eqvae_lib.dit import count_params, dit_model, sample_dit  # noqa: E402
from eqvae_lib.io import atomic_write_json, git_commit  # noqa: E402
from eqvae_lib.latents import LatentCache, LatentNorm  # noqa: E402
from eqvae_lib.losses import LossConfig  # noqa: E402
from eqvae_lib.train_ae import AETrainConfig, train_autoencoder  # noqa: E402
from eqvae_lib.train_gen import TrainGenConfig, train_gen  # noqa: E402


def _peak_mem() -> float:
    """GiB of CUDA memory allocated at the peak since the last reset (``_reset_peak``)."""
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")


def _reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def gen_throughput(model: str, steps: int = 60, log_every: int = 20, side: int = 32, device: str = "cuda") -> dict:
    """Latents/s of ``train_gen`` for ``model`` at batch 256 (mean of the logged intervals after the first)."""
    _reset_peak()
    g = torch.Generator().manual_seed(0)
    cache = LatentCache.from_tensors(torch.randn(4096, 4, side, side, generator=g), torch.randint(0, 1000, (4096,), generator=g),
                                     LatentNorm(torch.zeros(4), torch.ones(4), "bench"))
    with tempfile.TemporaryDirectory() as d:
        cfg = TrainGenConfig(model=model, steps=steps, batch_size=256, log_every=log_every, ema_decay=0.9999,
                             num_classes=1000, progress=False)
        t0 = time.time()
        r = train_gen(cfg, cache, Path(d) / "run", device=device)
        wall = time.time() - t0
        rates = [x["latents_per_s"] for x in _log(r.log_path) if "latents_per_s" in x][1:]
    rate = sum(rates) / len(rates)
    return {"model": model, "params_M": count_params(r.model) / 1e6, "latents_per_s": rate,
            "step_ms": 1000 * 256 / rate, "hours_400k_steps": 400_000 * 256 / rate / 3600,
            "wall_s": wall, "peak_mem_GiB": _peak_mem()}


@torch.no_grad()
def dit_sampling(model: str = "DiT-B/2", n: int = 256, steps: int = 250) -> dict:
    m = dit_model(model, input_size=32, in_channels=4, num_classes=1000, learn_sigma=True).cuda().eval()
    y = torch.randint(0, 1000, (n,))
    sample_dit(m, 16, y=y[:16], sampler="ddpm", steps=10, generator=torch.Generator().manual_seed(0))  # warm-up
    torch.cuda.synchronize()
    t0 = time.time()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        sample_dit(m, n, y=y, sampler="ddpm", steps=steps, generator=torch.Generator().manual_seed(0))
    torch.cuda.synchronize()
    dt = time.time() - t0
    return {"model": model, "sampler": f"ddpm-{steps}", "batch": n, "images_per_s": n / dt,
            "minutes_50k": 50_000 / (n / dt) / 60}


def eq_finetune_step(micro_batch: int = 32, steps: int = 8, arch: str = "kl-f8", side: int = 256,
                     device: str = "cuda") -> dict:
    """Seconds per micro-batch of the EQ objective on kl-f8 at 256 px (mean over the steps after the first 3)."""
    _reset_peak()
    torch.manual_seed(0)
    vae = ae.build_autoencoder(arch, in_channels=3, out_channels=3)
    x = torch.rand(micro_batch * steps, 3, side, side) * 2 - 1
    with tempfile.TemporaryDirectory() as d:
        cfg = AETrainConfig(loss=LossConfig(perceptual="none"), batch_size=micro_batch, max_steps=steps,
                            max_epochs=None, device=device, progress=False, val_every=0, measure_norm=False,
                            export_ldm=False)
        train_autoencoder(vae, x, cfg, Path(d) / "run")
        el = [r["elapsed_s"] for r in _log(Path(d) / "run" / "log.jsonl") if "elapsed_s" in r and "loss" in r]
    per_step = (el[-1] - el[2]) / (len(el) - 3)
    step160 = per_step * 160 / micro_batch
    return {"model": arch + (" (SD-VAE architecture)" if arch == "kl-f8" else ""), "micro_batch": micro_batch, "s_per_micro_batch": per_step,
            "images_per_s": micro_batch / per_step, "hours_5x10k_steps_batch160": 50_000 * step160 / 3600,
            "peak_mem_GiB": _peak_mem()}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", help="also write bench_gpu.json into this folder")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_gpu.py: skipped, it needs a CUDA GPU (none is visible to torch); `make bench` goes on")
        return {}
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "git_commit": git_commit(),
           "date": time.strftime("%Y-%m-%d %H:%M:%S"), "gen": [], "sampling": [], "ae": []}

    def save():
        for folder in [RUNS_DIR / "bench"] + ([Path(args.out)] if args.out else []):
            atomic_write_json(folder / "bench_gpu.json", res)

    print("| what | measured | projection |\n|---|---|---|", flush=True)
    for model in ("DiT-B/2", "DiT-XL/2"):
        r = gen_throughput(model)
        res["gen"].append(r)
        save()
        print(f"| {model} training, batch 256, bf16 | {r['latents_per_s']:.0f} latents/s ({r['step_ms']:.0f} ms/step) "
              f"| 400K steps: {r['hours_400k_steps']:.1f} h on this GPU |", flush=True)
    r = dit_sampling()
    res["sampling"].append(r)
    save()
    print(f"| DiT-B/2 DDPM-250 sampling, batch 256 | {r['images_per_s']:.1f} latents/s | 50K samples: "
          f"{r['minutes_50k']:.1f} min |", flush=True)
    r = eq_finetune_step()
    res["ae"].append(r)
    save()
    print(f"| kl-f8 EQ fine-tuning, 256 px, micro-batch 32, no LPIPS | {r['images_per_s']:.0f} img/s | 5 x 10K steps "
          f"at batch 160: {r['hours_5x10k_steps_batch160']:.1f} h |", flush=True)
    return res


if __name__ == "__main__":
    main()
