"""The kit's one RNG rule for training: every random draw of a step comes from a generator derived from
``(seed, stream, step[, …])``.

Rule (``RNG_RULE = "eqvae-rng-v1"``)::

    generator(seed, stream, *index, device) = torch.Generator(device).manual_seed(
        int.from_bytes(blake2b(f"eqvae-rng-v1|{seed}|{stream}|{i0}|{i1}|…", digest_size=8), "little") >> 1)

* A fresh generator per (seed, stream, step): nothing is carried from step to step, so a resumed run draws exactly
  what the uninterrupted run drew (no RNG state in checkpoints), and a draw that one arm makes and another does not
  (a branch choice, a τ, a low-resolution image) cannot shift any other stream.
* Draws of a step are made for the GLOBAL batch (all processes, all micro-batches) and each rank takes its slice
  (:func:`rank_slice`), so N processes draw what one process draws for the same global batch.
* Tensors are drawn on the training device (``device="cuda"`` draws with CUDA's Philox generator, no host copy);
  draws that steer Python control flow (the objective's branch / τ / scale) use a CPU generator so that reading them
  never waits for the GPU. CPU and CUDA generators give different numbers for the same seed: runs agree bit for bit
  on the same device type, not across them.

Streams (:data:`STREAMS`):

==============  =========================================================================================
``data``        epoch permutations of the training set (index: epoch)
``posterior``   posterior noise ε of z = μ + σ ε (autoencoder training; REPA-mode latent caches)
``objective``   the EQ-VAE objective's own draws: branch (Eq. 7), τ, low-resolution scale, explicit τ
``timesteps``   diffusion timesteps / interpolant times of the generator's training
``noise``       the diffusion / interpolant noise of the generator's training
``labels``      label dropout (classifier-free guidance training)
``mask``        MaskGIT's training masks
==============  =========================================================================================

Common random numbers (issue 14, item 2): two arms run with the same seed (EQ fine-tune and the plain control; a DiT
trained on either arm's latents) share every stream except ``objective``, whose draws only the EQ arm uses. So
with p_α = 1 and no low-resolution branch the EQ fine-tune equals the plain one bit for bit, and at p_α = 0.5 the
steps that both arms run in the plain branch decode with the same posterior noise.
"""

from __future__ import annotations

import hashlib

import torch

#: Name and version of the rule (changes of the rule change every training result: put it in cache keys).
RNG_RULE = "eqvae-rng-v1"

#: The named streams of the rule.
STREAMS = ("data", "posterior", "objective", "timesteps", "noise", "labels", "mask")


def stream_seed(seed: int, stream: str, *index: int) -> int:
    """The 63-bit seed of ``(seed, stream, *index)`` under :data:`RNG_RULE` (blake2b; independent of Python's
    ``hash`` randomisation, the same on every machine).

    Raises:
        ValueError: ``stream`` is not one of :data:`STREAMS`.
    """
    if stream not in STREAMS:
        raise ValueError(f"unknown RNG stream {stream!r}; the rule's streams are {STREAMS}")
    key = "|".join([RNG_RULE, str(int(seed)), stream, *(str(int(i)) for i in index)])
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") >> 1


def generator(seed: int, stream: str, *index: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A fresh ``torch.Generator`` on ``device`` seeded with :func:`stream_seed` ``(seed, stream, *index)``.
    Typical index: the optimizer step (and, for per-process draws, the rank and micro-batch)."""
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return torch.Generator(device=dev).manual_seed(stream_seed(seed, stream, *index))


def rank_slice(global_batch: int, rank: int, world: int) -> slice:
    """The rows ``[rank·b, (rank+1)·b)`` of a global batch of ``global_batch = world·b`` rows that process ``rank``
    uses.

    Raises:
        ValueError: ``global_batch`` not divisible by ``world`` or a rank outside ``0..world-1``.
    """
    if world < 1 or not 0 <= rank < world or global_batch % world:
        raise ValueError(f"cannot split a global batch of {global_batch} over {world} processes (rank {rank})")
    b = global_batch // world
    return slice(rank * b, (rank + 1) * b)


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The data order of epoch ``epoch``: ``torch.randperm(n)`` drawn from stream ``data`` (seed, epoch) on the CPU
    (int64 ``[n]``, a permutation of ``0..n-1``). Every training loop of the kit orders its data with it."""
    return torch.randperm(int(n), generator=generator(seed, "data", epoch))
