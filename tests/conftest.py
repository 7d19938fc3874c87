"""Shared pytest set-up: small thread count (tests run beside other work on 2 cores) and deterministic seeds."""

import os

import pytest
import torch

torch.set_num_threads(int(os.environ.get("EQVAE_TEST_THREADS", "2")))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
