"""The kit's one batcher (eqvae_lib.data.iter_batches): any batch size gives the data in order, tensor / Dataset /
list / loader read alike, and the metrics, latent caches and latent statistics that use it do not depend on the
batch size."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from eqvae_lib import autoencoders as ae
from eqvae_lib.data import iter_batches
from eqvae_lib.latents import encode_dataset
from eqvae_lib.metrics import batching
from eqvae_lib.metrics.reconstruction import reconstruction_metrics

torch.set_num_threads(1)


def _data(n=11):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 8, 8, generator=g) * 2 - 1, torch.arange(n) % 3


@pytest.mark.parametrize("bs", [1, 3, 4, 11, 50])
def test_batches_concatenate_to_the_data_whatever_the_source(bs):
    x, y = _data()
    sources = {"tensor": x, "dataset": TensorDataset(x, y), "list of (x, y)": [(x[i], int(y[i])) for i in range(len(x))],
               "list of x": [x[i] for i in range(len(x))]}
    for name, src in sources.items():
        got = list(iter_batches(src, bs))
        assert [len(b) for b in got] == [min(bs, len(x) - i) for i in range(0, len(x), bs)], name
        assert torch.equal(torch.cat(got), x), name
    # labels: a Dataset's own, a tensor's from labels=, -1 where there are none
    for src, labels in ((TensorDataset(x, y), None), (x, y)):
        xs, ys = zip(*iter_batches(src, bs, with_labels=True, labels=labels))
        assert torch.equal(torch.cat(xs), x) and torch.equal(torch.cat(ys), y) and torch.cat(ys).dtype == torch.long
    ys = torch.cat([b[1] for b in iter_batches(x, bs, with_labels=True)])
    assert ys.tolist() == [-1] * len(x)
    # a loader is an iterable of batches: passed through as it is
    loader = DataLoader(TensorDataset(x, y), batch_size=5)
    assert [len(b) for b in iter_batches(loader, bs)] == [5, 5, 1]


def test_bad_input_is_refused_with_a_clear_message():
    x, y = _data()
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        next(iter_batches(x[0], 2))
    with pytest.raises(ValueError, match="batch_size"):
        next(iter_batches(x, 0))
    with pytest.raises(ValueError, match="11 items"):
        next(iter_batches(x, 2, with_labels=True, labels=y[:5]))
    with pytest.raises(ValueError, match="only for tensors"):
        next(iter_batches(TensorDataset(x, y), 2, with_labels=True, labels=y))
    with pytest.raises(ValueError, match="with_labels"):
        next(iter_batches(x, 2, labels=y))
    with pytest.raises(ValueError, match="ambiguous"):  # a list of batches is not read as a list of items
        next(iter_batches([x[:4], x[4:8]], 2))
    assert torch.equal(torch.cat(list(iter_batches(iter([x[:4], x[4:]]), 2))), x)  # iter(batches): passed through


def test_the_metrics_use_the_one_batcher():
    assert batching.iter_batches is iter_batches


def test_users_of_the_batcher_do_not_depend_on_the_batch_size():
    x, _ = _data(12)
    x = x.expand(-1, 3, -1, -1).contiguous()
    torch.manual_seed(0)
    vae = ae.build_autoencoder("small-f4", in_channels=3).eval()
    # reconstruction metrics: one big batch = batches of 5
    enc, dec = ae.make_encoder(vae, "mean"), (lambda z: ae.decode(vae, z))
    one = reconstruction_metrics(x, enc, dec, lpips=False, batch_size=len(x), return_per_image=True)
    many = reconstruction_metrics(TensorDataset(x), enc, dec, lpips=False, batch_size=5, return_per_image=True)
    assert many["per_image"]["psnr"] == pytest.approx(one["per_image"]["psnr"], rel=1e-5)
    assert many["per_image"]["ssim"] == pytest.approx(one["per_image"]["ssim"], rel=1e-5)
    # the measured latent normalisation: one batch = batches of 5 (accumulated in float64)
    s1, c1 = ae.measure_latent_norm(vae, x, latent="mean", batch_size=len(x), store=False)
    s5, c5 = ae.measure_latent_norm(vae, TensorDataset(x), latent="mean", batch_size=5, store=False)
    assert torch.allclose(s1, s5, atol=1e-6) and torch.allclose(c1, c5, rtol=1e-5)
    # latent cache encoding (repa: posterior mean and std): one batch = batches of 5
    a = encode_dataset(vae, x, mode="repa", batch_size=len(x), progress=False)
    b = encode_dataset(vae, x, mode="repa", batch_size=5, progress=False)
    assert torch.allclose(a["latents"], b["latents"], atol=1e-6) and torch.allclose(a["std"], b["std"], atol=1e-6)
