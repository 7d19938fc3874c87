"""Benchmark of the metric wrappers against the libraries called directly, measured in one run (ratios).

* Feature extraction (images/s): the kit's ``FeatureExtractor.features`` (float [-1, 1] images → uint8 → torch-fidelity
  module, batches of 64) vs torch-fidelity's own ``get_featuresdict_from_dataset`` on a ready uint8 dataset with the
  same module — for the TF-FID Inception extractor and the kit's classifier extractor.
* TwoNN time against N: ``intrinsic_dimension(n_bootstrap=0, mle=False)`` (dedupe + scikit-learn neighbours +
  skdim TwoNN on the N×2 distances) vs ``skdim.id.TwoNN().fit(X)`` on the same points; plus the full call with 200
  bootstrap refits and the MLE cross-check.

Kit and library runs alternate and each figure is the median of ``--repeats`` runs, so machine load hits both alike.
Usage: ``python bench/bench_metrics.py [--repeats 3] [--inception-n 24] [--classifier-n 4000]`` (< 3 min on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import numpy as np
import torch


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def alternate(kit, lib, repeats):
    """Median seconds of ``kit`` and ``lib`` over alternating runs (one warm-up each)."""
    kit(), lib()
    tk, tl = [], []
    for _ in range(repeats):
        tk.append(timed(kit))
        tl.append(timed(lib))
    return statistics.median(tk), statistics.median(tl)


def bench_extractor(ext, images, repeats, batch_size=64):
    from torch_fidelity.utils import get_featuresdict_from_dataset

    from eqvae_lib.metrics.fid_inputs import UInt8ImageDataset

    u8 = UInt8ImageDataset(images)
    ready = torch.utils.data.TensorDataset(torch.stack([u8[i] for i in range(len(u8))]))

    class Bare(torch.utils.data.Dataset):  # torch-fidelity needs bare tensors
        def __len__(self):
            return len(ready)

        def __getitem__(self, i):
            return ready[i][0]

    module = ext.module
    tk, tl = alternate(lambda: ext.features(images, batch_size=batch_size, verbose=False),
                       lambda: get_featuresdict_from_dataset(Bare(), module, batch_size, ext.cuda, True, False),
                       repeats)
    n = len(images)
    return {"n": n, "kit_img_s": n / tk, "lib_img_s": n / tl, "ratio_kit_over_lib_time": tk / tl}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--inception-n", type=int, default=24)
    p.add_argument("--classifier-n", type=int, default=4000)
    p.add_argument("--twonn-n", default="1000,2000,4000")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    import skdim

    from eqvae_lib.data import FashionMNIST
    from eqvae_lib.metrics.extractors import classifier_extractor, inception_extractor
    from eqvae_lib.metrics.intrinsic_dim import intrinsic_dimension

    rows = {"threads": torch.get_num_threads()}
    x = FashionMNIST("test", n=max(args.classifier_n, args.inception_n)).tensors()[0]
    with tempfile.TemporaryDirectory() as tmp:
        clf = classifier_extractor(cache_dir=tmp, n_train=500, epochs=1, verbose=False)  # weights don't affect speed
        rows["classifier"] = bench_extractor(clf, x[: args.classifier_n], args.repeats)
    inc = inception_extractor()
    rows["inception"] = bench_extractor(inc, x[: args.inception_n], max(1, args.repeats - 1), batch_size=8)
    rows["twonn"] = []
    rng = np.random.default_rng(0)
    for n in [int(v) for v in args.twonn_n.split(",")]:
        pts = rng.standard_normal((n, 8)) @ rng.standard_normal((8, 256))  # 8-dim data in a 4x8x8 latent space
        res = {}
        tk, tl = alternate(lambda: res.update(kit=intrinsic_dimension(pts, n_bootstrap=0, mle=False)["twonn"]),
                           lambda: res.update(lib=skdim.id.TwoNN().fit(pts).dimension_), args.repeats)
        full = timed(lambda: intrinsic_dimension(pts, n_bootstrap=200, mle=True))
        rows["twonn"].append({"n": n, "kit_s": tk, "lib_s": tl, "ratio_kit_over_lib_time": tk / tl,
                              "kit_full_with_bootstrap200_mle_s": full, "id_kit": res["kit"], "id_lib": res["lib"]})

    print(json.dumps(rows, indent=2))
    print("\n| measurement | kit | library direct | kit time / library time |")
    print("|---|---|---|---|")
    for k, name in (("inception", "Inception-v3 features (32 px in, 299 px inside)"),
                    ("classifier", "classifier features (32 px)")):
        r = rows[k]
        print(f"| {name}, N={r['n']} | {r['kit_img_s']:.1f} img/s | {r['lib_img_s']:.1f} img/s | "
              f"{r['ratio_kit_over_lib_time']:.3f} |")
    for r in rows["twonn"]:
        print(f"| TwoNN N={r['n']} (256-d) | {r['kit_s']:.3f} s | {r['lib_s']:.3f} s | "
              f"{r['ratio_kit_over_lib_time']:.3f} |  (with 200 bootstraps + MLE: {r['kit_full_with_bootstrap200_mle_s']:.2f} s;"
              f" ID {r['id_kit']:.2f} vs {r['id_lib']:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
