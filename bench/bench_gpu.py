"""GPU benchmark of the paper-scale training and sampling loops, old loop vs new loop in ONE run (issue 17).

Run on a CUDA machine: ``python bench/bench_gpu.py`` (about 6 minutes on one H200; must stay under 8). Without a GPU
it prints that it skipped and exits 0.

For each model, three variants measured in the same process, one after the other:

* ``old_eager``   — the loops as of the baseline commit (``bench/_legacy.py`` imports ``eqvae_lib`` of 8bf3814 via
  ``git archive``, or ``--old-src DIR``): per-step host syncs, noise drawn on the CPU and copied, no TF32, no fused
  optimizer;
* ``new_eager``   — today's loops (sync-free steps, device RNG, TF32, fused Adam/AdamW);
* ``new_compiled`` — today's loops with ``compile=True`` (``torch.compile``; the compile time is excluded: the first
  logging interval is a warm-up).

Models:
1. ``dit_b2_train`` — DiT-B/2 training through ``train_gen`` at the paper's batch 256, 4x32x32 latents (256-px images,
   f8 AE), bf16 autocast; latents/s from the logged intervals after the first.
2. ``klf8_eq_finetune`` — the EQ-VAE fine-tune of the kl-f8 (SD-VAE) architecture (random weights: the SD-VAE weights
   are not reachable offline) through ``train_autoencoder`` at 256 px, micro-batch 16, WITH the perceptual term
   (``--perceptual``, default ST-LPIPS-alex; if its package is missing the row says so and runs without) and the
   PatchGAN; images/s from the logged ``elapsed_s`` after a warm-up. The branch mix of the EQ objective differs between
   the old and new RNG rules (branches cost differently): each variant records its branch counts.
3. ``ddpm250_sampling`` — DiT-B/2 ancestral DDPM sampling, 250 steps, 256 latents, bf16 autocast, CPU generator (the
   kit's sampling API).

Per variant: step time, samples/s, achieved TFLOP/s, ``fraction_of_peak`` (achieved / the device's dense bf16 peak from
:data:`PEAK_BF16_DENSE`), peak CUDA memory. FLOPs are counted as ``bench_gen.py`` counts them: ``FlopCounterMode``
(2 FLOPs per multiply-add); DiT training = 3 x forward per latent; sampling = 1 forward per latent per step; the AE
step = the FLOPs ``FlopCounterMode`` counts for one plain-branch step (encoder, decoder, perceptual net,
discriminator, adaptive weight, both backward passes) — the most expensive branch, so the AE fraction is an upper
bound. Also records whether attention runs on SDPA's flash / memory-efficient kernels under bf16.

Writes ``bench/results/bench_gpu_loops_<device>.json`` (atomic; ``--out FILE`` to change) with the device name and
commit; ``python bench/gpu_table.py FILE`` prints the README's GPU table from it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import eqvae_lib  # noqa: E402
from _legacy import BASELINE, legacy_package  # noqa: E402
from eqvae_lib.io import atomic_write_json, git_commit  # noqa: E402

#: Dense (no sparsity) bf16 tensor-core peaks in FLOP/s, by a substring of ``torch.cuda.get_device_name()``; the
#: first match wins (more specific names first). Sources: NVIDIA data sheets (H100/H200 SXM 989.5 TFLOP/s; H100 PCIe
#: 756; H100 NVL 835 per GPU; A100 312; L40S 362; L4 121; A10 125).
PEAK_BF16_DENSE = [("GH200", 989e12), ("H200", 989e12), ("H100 NVL", 835e12), ("H100 PCIe", 756e12),
                   ("H100", 989e12), ("H800", 989e12), ("A100", 312e12), ("A800", 312e12), ("L40S", 362e12),
                   ("L4", 121e12), ("A10", 125e12)]

VARIANTS = ("old_eager", "new_eager", "new_compiled")


def device_peak(name: str) -> tuple[float | None, str | None]:
    """(peak FLOP/s, matched table key) for a CUDA device name, or (None, None) when the table has no entry."""
    for key, peak in PEAK_BF16_DENSE:
        if key in name:
            return peak, key
    return None, None


#: sizes of the run; ``--smoke`` swaps in CPU-sized ones to check the script's own code paths without a GPU
SIZES = {"device": "cuda", "dit": "DiT-B/2", "side": 32, "batch": 256, "n_latents": 4096, "dit_steps": 40,
         "dit_log_every": 10, "ae": "kl-f8", "ae_side": 256, "micro": 16, "ae_steps": 24, "ae_warm": 6,
         "sample_n": 256, "sample_steps": 250}
SMOKE = {"device": "cpu", "dit": "DiT-T/2", "side": 8, "batch": 8, "n_latents": 64, "dit_steps": 4,
         "dit_log_every": 2, "ae": "small-f4", "ae_side": 32, "micro": 2, "ae_steps": 4, "ae_warm": 2,
         "sample_n": 4, "sample_steps": 5}


def _cuda() -> bool:
    return SIZES["device"] == "cuda"


def _sync() -> None:
    if _cuda():
        torch.cuda.synchronize()


def _reset_peak() -> None:
    if _cuda():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if _cuda() else float("nan")


def _mods(pkg) -> dict:
    return {m: importlib.import_module(f"{pkg.__name__}.{m}") for m in
            ("autoencoders", "losses", "train_ae", "train_gen", "latents", "dit")}


def _log(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


# ------------------------------------------------------------------------------------------------------- FLOPs
def dit_forward_flops(name: str = "DiT-B/2", input_size: int = 32) -> float:
    """Forward FLOPs of one latent (meta device, as bench_gen.py)."""
    from torch.utils.flop_counter import FlopCounterMode
    from eqvae_lib.dit import dit_model
    with torch.device("meta"):
        m = dit_model(name, input_size=input_size, in_channels=4, num_classes=1000)
        with FlopCounterMode(display=False) as fc:
            m(torch.empty(1, 4, input_size, input_size), torch.tensor([1]), torch.tensor([1]))
    return float(fc.get_total_flops())


def ae_step_flops(perceptual: str, micro: int, side: int) -> float:
    """FLOPs of one plain-branch fine-tuning step of kl-f8 per image (forward + backward of AE, perceptual net and
    discriminator; the adaptive weight's two gradient calls), counted on CUDA with ``FlopCounterMode``."""
    from torch.utils.flop_counter import FlopCounterMode
    from eqvae_lib import autoencoders as ae
    from eqvae_lib.losses import EQVAELoss, LossConfig
    torch.manual_seed(0)
    dev = SIZES["device"]
    vae = ae.build_autoencoder(SIZES["ae"], in_channels=3, out_channels=3).to(dev).train()
    loss_fn = EQVAELoss(LossConfig(perceptual=perceptual), in_channels=3).to(dev).train()
    x = torch.rand(micro, 3, side, side, device=dev) * 2 - 1
    with FlopCounterMode(display=False) as fc, torch.autocast(dev, dtype=torch.bfloat16, enabled=_cuda()):
        loss, _, pair = loss_fn.generator_loss(vae, x, 0, torch.Generator().manual_seed(0), branch="plain")
        loss.backward()
        d, _ = loss_fn.discriminator_loss(*pair, 0)
        d.backward()
    del vae, loss_fn
    return float(fc.get_total_flops()) / micro


# ------------------------------------------------------------------------------------------------- the models
def dit_train(M: dict, compile_: bool) -> dict:
    L, S = M["latents"], SIZES
    g = torch.Generator().manual_seed(0)
    n, b, steps = S["n_latents"], S["batch"], S["dit_steps"]
    cache = L.LatentCache.from_tensors(torch.randn(n, 4, S["side"], S["side"], generator=g),
                                       torch.randint(0, 1000, (n,), generator=g),
                                       L.LatentNorm(torch.zeros(4), torch.ones(4), "bench"))
    kw = {"compile": True} if compile_ else {}
    cfg = M["train_gen"].TrainGenConfig(model=S["dit"], steps=steps, batch_size=b, log_every=S["dit_log_every"],
                                        ema_decay=0.9999, num_classes=1000, progress=False, **kw)
    _reset_peak()
    with tempfile.TemporaryDirectory() as d:
        r = M["train_gen"].train_gen(cfg, cache, Path(d) / "run", device=S["device"])
        rates = [x["latents_per_s"] for x in _log(r.log_path) if "latents_per_s" in x][1:]  # first = warm-up
    rate = sum(rates) / len(rates)
    return {"samples_per_s": rate, "step_s": b / rate, "batch": b, "steps": steps, "peak_mem_GiB": _peak_gib()}


def ae_finetune(M: dict, compile_: bool, perceptual: str) -> dict:
    S = SIZES
    micro, side, steps, warm = S["micro"], S["ae_side"], S["ae_steps"], S["ae_warm"]
    torch.manual_seed(0)
    vae = M["autoencoders"].build_autoencoder(S["ae"], in_channels=3, out_channels=3)
    x = torch.rand(micro * steps, 3, side, side, generator=torch.Generator().manual_seed(0)) * 2 - 1
    log_every = 1 if "compile" not in M["train_ae"].AETrainConfig.__dataclass_fields__ else warm
    kw = {"compile": True} if compile_ else {}
    cfg = M["train_ae"].AETrainConfig(loss=M["losses"].LossConfig(perceptual=perceptual), batch_size=micro,
                                      max_steps=steps, max_epochs=None, device=S["device"], progress=False,
                                      val_every=0,
                                      measure_norm=False, export_ldm=False, log_every=log_every, **kw)
    _reset_peak()
    with tempfile.TemporaryDirectory() as d:
        M["train_ae"].train_autoencoder(vae, x, cfg, Path(d) / "run")
        lines = [r for r in _log(Path(d) / "run" / "log.jsonl") if "elapsed_s" in r and "loss" in r]
        counts = json.loads((Path(d) / "run" / "summary.json").read_text())["branch_counts"]
    a = next(r for r in lines if r["step"] >= warm)
    b = lines[-1]
    step_s = (b["elapsed_s"] - a["elapsed_s"]) / (b["step"] - a["step"])
    return {"samples_per_s": micro / step_s, "step_s": step_s, "batch": micro, "steps": steps,
            "log_every": log_every, "branch_counts": counts, "peak_mem_GiB": _peak_gib()}


def ddpm_sampling(M: dict, compile_: bool) -> dict:
    S = SIZES
    n, steps = S["sample_n"], S["sample_steps"]
    torch.manual_seed(0)
    m = M["dit"].dit_model(S["dit"], input_size=S["side"], in_channels=4, num_classes=1000,
                           learn_sigma=True).to(S["device"]).eval()
    if compile_:
        m.compile()
    y = torch.randint(0, 1000, (n,), generator=torch.Generator().manual_seed(0))
    _reset_peak()
    with torch.autocast(S["device"], dtype=torch.bfloat16, enabled=_cuda()):
        M["dit"].sample_dit(m, n, y=y, sampler="ddpm", steps=5, generator=torch.Generator().manual_seed(0))  # warm-up
        _sync()
        t0 = time.perf_counter()
        M["dit"].sample_dit(m, n, y=y, sampler="ddpm", steps=steps, generator=torch.Generator().manual_seed(0))
        _sync()
    dt = time.perf_counter() - t0
    return {"samples_per_s": n / dt, "step_s": dt / steps, "batch": n, "steps": steps, "wall_s": dt,
            "peak_mem_GiB": _peak_gib()}


def sdpa_fast_kernels() -> dict:
    """Whether DiT-B/2's and MaskGIT-base's attention run with only the flash / memory-efficient SDPA kernels
    allowed (bf16 autocast, training mode): ``{"dit": true|error, "maskgit": true|error}``."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from eqvae_lib.dit import dit_model
    from eqvae_lib.maskgit import build_maskgit
    out = {}
    for name, make, run in (
            ("dit", lambda: dit_model("DiT-B/2", input_size=32, in_channels=4, num_classes=1000),
             lambda m: m(torch.randn(8, 4, 32, 32, device="cuda"), torch.randint(0, 1000, (8,), device="cuda"),
                         torch.randint(0, 1000, (8,), device="cuda"))),
            ("maskgit", lambda: build_maskgit("maskgit-base"),
             lambda m: m(torch.randint(0, 1024, (8, 16, 16), device="cuda"), torch.randint(0, 1000, (8,),
                                                                                            device="cuda")))):
        try:
            m = make().cuda().train()
            with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]), \
                    torch.autocast("cuda", dtype=torch.bfloat16):
                run(m).float().sum().backward()
            out[name] = True
        except Exception as e:  # noqa: BLE001 - recorded, not fatal
            out[name] = f"{type(e).__name__}: {e}"[:300]
    return out


# ------------------------------------------------------------------------------------------------------- main
def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", help="JSON file (default bench/results/bench_gpu_loops_<device>.json)")
    p.add_argument("--old-commit", default=BASELINE)
    p.add_argument("--old-src", help="folder holding the old eqvae_lib/ (instead of git archive)")
    p.add_argument("--perceptual", default="stlpips-alex")
    p.add_argument("--budget-s", type=float, default=300,
                   help="start no compiled variant once this many seconds are used (whole run < 8 min on one H200)")
    p.add_argument("--only", nargs="*", default=None, help="subset of dit_b2_train klf8_eq_finetune ddpm250_sampling")
    p.add_argument("--smoke", action="store_true", help="CPU-sized run of every code path (checks the script; its "
                                                        "numbers mean nothing); needs --out")
    args = p.parse_args(argv)
    if args.smoke:
        if not args.out:
            p.error("--smoke needs --out (its numbers must not land in bench/results/)")
        SIZES.update(SMOKE)
    elif not torch.cuda.is_available():
        print("bench_gpu.py: skipped, it needs a CUDA GPU (none is visible to torch)")
        return {}
    t_start = time.time()
    name = torch.cuda.get_device_name() if _cuda() else "cpu (--smoke)"
    peak, key = device_peak(name)
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower().replace("nvidia", "")).strip("_")
    out = Path(args.out) if args.out else Path(__file__).resolve().parent / "results" / f"bench_gpu_loops_{slug}.json"
    res = {"device": name, "torch": torch.__version__, "git_commit": git_commit(), "old_commit": args.old_commit,
           "date": time.strftime("%Y-%m-%d %H:%M:%S"), "peak_bf16_dense_tflops": peak / 1e12 if peak else None,
           "peak_table_key": key, "variants": list(VARIANTS), "models": {}}
    old_pkg, why = legacy_package(args.old_commit, args.old_src)
    mods = {"old_eager": _mods(old_pkg) if old_pkg is not None else None, "new_eager": _mods(eqvae_lib),
            "new_compiled": _mods(eqvae_lib)}
    if old_pkg is None:
        res["old_unavailable"] = why
    perceptual = args.perceptual
    try:
        from eqvae_lib.losses import PerceptualLoss
        PerceptualLoss(perceptual)
    except RuntimeError as e:
        res["perceptual_note"] = f"{perceptual} unavailable ({e}); the AE rows run without the perceptual term"
        perceptual = "none"
    res["sdpa_fast_kernels"] = sdpa_fast_kernels() if _cuda() else None

    def save():
        atomic_write_json(out, res)

    dit_f = dit_forward_flops(SIZES["dit"], SIZES["side"])
    specs = {
        "dit_b2_train": ("DiT-B/2 training, batch 256, bf16", "latents/s", 3 * dit_f,
                         dit_train),
        "klf8_eq_finetune": (f"kl-f8 EQ fine-tune, 256 px, micro-batch 16, perceptual {perceptual}", "img/s",
                             None, lambda M, c: ae_finetune(M, c, perceptual)),
        "ddpm250_sampling": ("DiT-B/2 DDPM-250 sampling, 256 latents, bf16", "latents/s", SIZES["sample_steps"] * dit_f,
                             ddpm_sampling),
    }
    print(f"device {name}; dense bf16 peak {peak / 1e12 if peak else '?'} TFLOP/s ({key})", flush=True)
    print("| model | variant | step s | samples/s | TFLOP/s | of peak | peak GiB |\n|---|---|---|---|---|---|---|",
          flush=True)
    for mid, (label, unit, flops, fn) in specs.items():
        if args.only and mid not in args.only:
            continue
        if flops is None:
            flops = ae_step_flops(perceptual, SIZES["micro"], SIZES["ae_side"])
        row = {"label": label, "unit": unit, "flops_per_sample": flops, "variants": {}, "fraction_of_peak": {}}
        res["models"][mid] = row
        for v in VARIANTS:
            if mods[v] is None:
                row["variants"][v] = {"skipped": why}
                continue
            if v == "new_compiled" and time.time() - t_start > args.budget_s:
                row["variants"][v] = {"skipped": f"time budget ({args.budget_s:.0f} s) used"}
                continue
            try:
                r = fn(mods[v], v == "new_compiled")
            except Exception as e:  # noqa: BLE001 - one failed variant must not lose the others
                row["variants"][v] = {"error": f"{type(e).__name__}: {e}"[:500]}
                save()
                continue
            r["tflops_per_s"] = flops * r["samples_per_s"] / 1e12
            r["fraction_of_peak"] = flops * r["samples_per_s"] / peak if peak else None
            row["variants"][v] = r
            row["fraction_of_peak"][v] = r["fraction_of_peak"]
            frac = f"{r['fraction_of_peak']:.1%}" if peak else "?"
            print(f"| {label} | {v} | {r['step_s']:.4f} | {r['samples_per_s']:.1f} | {r['tflops_per_s']:.1f} | "
                  f"{frac} | {r['peak_mem_GiB']:.1f} |", flush=True)
            save()
        old = row["variants"].get("old_eager", {}).get("samples_per_s")
        for v in ("new_eager", "new_compiled"):
            new = row["variants"].get(v, {}).get("samples_per_s")
            if old and new:
                row[f"speedup_{v}_over_old"] = new / old
        save()
    res["wall_s"] = round(time.time() - t_start, 1)
    save()
    print(f"wrote {out} ({res['wall_s']} s)", flush=True)
    return res


if __name__ == "__main__":
    main()
