"""Class-stratified labels for the generated samples of a gFID (issue #14, item 4)."""

import pytest
import torch

from eqvae_lib.metrics.fid_inputs import stratified_labels


@pytest.mark.parametrize("n,k", [(1000, 10), (1003, 10), (7, 10), (0, 3), (5, 1)])
def test_stratified_labels_balance_every_class(n, k):
    y = stratified_labels(n, k, torch.Generator().manual_seed(0))
    assert y.shape == (n,) and y.dtype == torch.int64
    counts = torch.bincount(y, minlength=k)
    assert counts.sum() == n and int(counts.max() - counts.min()) <= (1 if n % k else 0)
    if n and n % k == 0:
        assert torch.all(counts == n // k)


def test_stratified_labels_are_reproducible_and_shuffled():
    a = stratified_labels(100, 10, torch.Generator().manual_seed(3))
    b = stratified_labels(100, 10, torch.Generator().manual_seed(3))
    c = stratified_labels(100, 10, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a, torch.arange(10).repeat(10))  # not in class order
    with pytest.raises(ValueError, match="num_classes"):
        stratified_labels(10, 0)
