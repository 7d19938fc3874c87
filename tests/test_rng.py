"""The RNG rule (eqvae_lib.rng): per-(seed, stream, step) generators, global-batch draws sliced per rank."""

import pytest
import torch

from eqvae_lib import rng


def test_stream_seed_is_a_fixed_function_of_seed_stream_and_index():
    a = rng.stream_seed(0, "noise", 5)
    assert a == rng.stream_seed(0, "noise", 5) and 0 <= a < 2 ** 63
    others = {rng.stream_seed(1, "noise", 5), rng.stream_seed(0, "timesteps", 5), rng.stream_seed(0, "noise", 6),
              rng.stream_seed(0, "noise", 5, 0)}
    assert a not in others and len(others) == 4
    # the rule is written down: blake2b of "eqvae-rng-v1|seed|stream|index..." (little-endian 8 bytes >> 1)
    import hashlib
    ref = int.from_bytes(hashlib.blake2b(b"eqvae-rng-v1|0|noise|5", digest_size=8).digest(), "little") >> 1
    assert a == ref
    with pytest.raises(ValueError, match="unknown RNG stream"):
        rng.stream_seed(0, "dropout", 1)


def test_generators_restart_per_step_and_streams_are_independent():
    x = torch.randn(4, generator=rng.generator(3, "posterior", 7))
    assert torch.equal(x, torch.randn(4, generator=rng.generator(3, "posterior", 7)))  # no state carried
    # drawing from another stream in between (e.g. a branch choice) does not shift this one
    g_obj = rng.generator(3, "objective", 7)
    torch.rand(2, generator=g_obj)
    assert torch.equal(x, torch.randn(4, generator=rng.generator(3, "posterior", 7)))
    assert not torch.equal(x, torch.randn(4, generator=rng.generator(3, "posterior", 8)))


def test_rank_slices_of_a_global_draw_do_not_depend_on_the_world_size():
    full = torch.randn(8, 3, generator=rng.generator(0, "noise", 2))
    for world in (1, 2, 4):
        parts = [torch.randn(8, 3, generator=rng.generator(0, "noise", 2))[rng.rank_slice(8, r, world)]
                 for r in range(world)]
        assert torch.equal(torch.cat(parts), full)
    with pytest.raises(ValueError, match="cannot split"):
        rng.rank_slice(10, 0, 4)
