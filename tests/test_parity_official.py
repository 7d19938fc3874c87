"""Parity with maintained references: the kit's DDPM / DDIM sampling against diffusers' ``DDPMScheduler`` /
``DDIMScheduler`` on the same model and noise, and the kit's DiT state dict against the official DiT checkpoint layout
(so official DiT weights load)."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from eqvae_lib.dit import create_diffusion, dit_model, linear_betas, sample_dit, space_timesteps
from eqvae_lib.dit_weights import (kit_to_official_key, load_official_dit_checkpoint, load_official_dit_state_dict,
                                   official_to_kit_key)

# ------------------------------------------------------------------------------------------------ samplers
SCHEDULE = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")


def tiny_dit(learn_sigma: bool) -> torch.nn.Module:
    """An unconditional DiT-M/2 on 4x8x8 latents whose zero-initialised layers are randomised, so that its output
    depends on x and t (a freshly initialised DiT outputs zeros)."""
    torch.manual_seed(0)
    m = dit_model("DiT-M/2", input_size=8, in_channels=4, num_classes=0, learn_sigma=learn_sigma).eval()
    with torch.no_grad():
        for p in m.parameters():
            if p.requires_grad and not p.abs().sum():
                p.normal_(0, 0.3)
    return m


class NearOptimalDiT(torch.nn.Module):
    """The ε-prediction of the optimal denoiser of N(0, I) data, √(1-ᾱ_t)·x_t, plus 0.1 × a random DiT's output (and
    tanh of its variance channels with learned σ): samples stay of order 1 (a random DiT alone predicts x_0 of order
    100 at large t, where float32 rounding of the two implementations differs visibly). Duck-types a DiT for
    ``sample_dit``."""

    def __init__(self, learn_sigma: bool):
        super().__init__()
        self.dit = tiny_dit(learn_sigma)
        self.in_channels, self.input_size, self.learn_sigma = 4, 8, learn_sigma
        self.register_buffer("acp", torch.from_numpy(np.cumprod(1 - linear_betas(1000))).float())

    def forward(self, x, t, y=None):
        t = t.expand(len(x)) if t.ndim == 0 else t
        out = self.dit(x, t, y)
        eps = (1 - self.acp[t]).sqrt().view(-1, 1, 1, 1) * x + 0.1 * out[:, :4]
        return torch.cat([eps, torch.tanh(out[:, 4:])], 1) if self.learn_sigma else eps


def test_linear_schedule_matches_diffusers():
    sched = DDPMScheduler(**SCHEDULE)
    d = create_diffusion("")
    np.testing.assert_allclose(linear_betas(1000), sched.betas.double().numpy(), rtol=1e-6)
    np.testing.assert_allclose(d.alphas_cumprod, sched.alphas_cumprod.double().numpy(), rtol=1e-5)


def _diffusers_loop(sched, model, x, timesteps, generator, **step_kwargs):
    with torch.no_grad():
        for t in timesteps:
            out = model(x, torch.full((len(x),), int(t), dtype=torch.long), None)
            x = sched.step(out, t, x, generator=generator, **step_kwargs).prev_sample
    return x


@pytest.mark.parametrize("learn_sigma", [False, True])
def test_ddpm_sampling_matches_diffusers(learn_sigma):
    """Ancestral DDPM over 10 respaced steps: the kit's ``sample_dit`` ("fixed large" variance without learned σ, DiT's
    "learned range" with it) against ``DDPMScheduler`` with the same kept steps, the same start noise and the same
    per-step noise (one generator seeded alike, drawn in the same order)."""
    model = NearOptimalDiT(learn_sigma).eval()
    noise = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    kept = space_timesteps(1000, "10")
    sched = DDPMScheduler(**SCHEDULE, clip_sample=False,
                          variance_type="learned_range" if learn_sigma else "fixed_large")
    sched.set_timesteps(timesteps=kept[::-1])
    ref = _diffusers_loop(sched, model, noise.clone(), sched.timesteps, torch.Generator().manual_seed(7))
    ours = sample_dit(model, 3, sampler="ddpm", steps=10, noise=noise.clone(),
                      generator=torch.Generator().manual_seed(7))
    assert not torch.allclose(ours, noise, atol=0.1)  # the loop did something
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("steps, eta", [(25, 0.0), (10, 1.0)])
def test_ddim_sampling_matches_diffusers(steps, eta):
    """DDIM with DDIM striding (``"ddim25"`` = steps 0, 40, ..., 960 = diffusers' "leading" spacing), ᾱ_prev = 1 at
    the last step (``set_alpha_to_one``), no clipping; η = 1 adds noise from the same seeded generator."""
    model = NearOptimalDiT(False).eval()
    noise = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    sched = DDIMScheduler(**SCHEDULE, clip_sample=False, set_alpha_to_one=True, steps_offset=0,
                          timestep_spacing="leading")
    sched.set_timesteps(steps)
    assert sorted(sched.timesteps.tolist()) == space_timesteps(1000, f"ddim{steps}")
    ref = _diffusers_loop(sched, model, noise.clone(), sched.timesteps, torch.Generator().manual_seed(9), eta=eta)
    ours = sample_dit(model, 3, sampler="ddim", steps=steps, eta=eta, noise=noise.clone(),
                      generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


def test_sampler_parity_fails_for_a_different_schedule():
    """The comparison can fail: diffusers with a scaled-linear schedule gives other samples."""
    model = NearOptimalDiT(False).eval()
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    sched = DDIMScheduler(**{**SCHEDULE, "beta_schedule": "scaled_linear"}, clip_sample=False, set_alpha_to_one=True)
    sched.set_timesteps(10)
    ref = _diffusers_loop(sched, model, noise.clone(), sched.timesteps, None)
    ours = sample_dit(model, 2, sampler="ddim", steps=10, noise=noise.clone())
    assert not torch.allclose(ours, ref, atol=1e-2)


# --------------------------------------------------------------------------------------- official DiT layout
def official_dit_layout(depth: int, hidden: int, patch: int, in_channels: int = 4, input_size: int = 32,
                        num_classes: int = 1000, class_dropout_prob: float = 0.1, learn_sigma: bool = True,
                        mlp_ratio: float = 4.0) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the official DiT state dict, written from facebookresearch/DiT ``models.py`` (commit
    00d70ac): timm ``PatchEmbed`` (``x_embedder.proj`` Conv2d), ``TimestepEmbedder.mlp`` = Linear(256, D), SiLU,
    Linear(D, D); ``LabelEmbedder.embedding_table`` = Embedding(num_classes + (dropout > 0), D); ``pos_embed``
    Parameter [1, T, D]; per block: LayerNorms without affine parameters, timm ``Attention(qkv_bias=True)``
    (``qkv``, ``proj``), timm ``Mlp`` (``fc1``, ``fc2``), ``adaLN_modulation`` = SiLU, Linear(D, 6D);
    ``FinalLayer``: ``linear`` = Linear(D, p·p·C_out), ``adaLN_modulation`` = SiLU, Linear(D, 2D); C_out = 2C with
    learned σ."""
    D, h = hidden, int(hidden * mlp_ratio)
    c_out = 2 * in_channels if learn_sigma else in_channels
    out = {"x_embedder.proj.weight": (D, in_channels, patch, patch), "x_embedder.proj.bias": (D,),
           "t_embedder.mlp.0.weight": (D, 256), "t_embedder.mlp.0.bias": (D,),
           "t_embedder.mlp.2.weight": (D, D), "t_embedder.mlp.2.bias": (D,),
           "y_embedder.embedding_table.weight": (num_classes + int(class_dropout_prob > 0), D),
           "pos_embed": (1, (input_size // patch) ** 2, D)}
    for i in range(depth):
        b = f"blocks.{i}."
        out.update({b + "attn.qkv.weight": (3 * D, D), b + "attn.qkv.bias": (3 * D,),
                    b + "attn.proj.weight": (D, D), b + "attn.proj.bias": (D,),
                    b + "mlp.fc1.weight": (h, D), b + "mlp.fc1.bias": (h,),
                    b + "mlp.fc2.weight": (D, h), b + "mlp.fc2.bias": (D,),
                    b + "adaLN_modulation.1.weight": (6 * D, D), b + "adaLN_modulation.1.bias": (6 * D,)})
    out.update({"final_layer.linear.weight": (patch * patch * c_out, D),
                "final_layer.linear.bias": (patch * patch * c_out,),
                "final_layer.adaLN_modulation.1.weight": (2 * D, D), "final_layer.adaLN_modulation.1.bias": (2 * D,)})
    return out


def test_kit_dit_xl2_keys_and_shapes_map_onto_the_official_layout():
    with torch.device("meta"):
        model = dit_model("DiT-XL/2", input_size=32, in_channels=4, num_classes=1000, learn_sigma=True)
    kit = {kit_to_official_key(k): tuple(v.shape) for k, v in model.state_dict().items()}
    assert kit == official_dit_layout(28, 1152, 2)
    assert all(official_to_kit_key(kit_to_official_key(k)) == k for k in model.state_dict())


def test_official_dit_xl2_state_dict_loads_strictly():
    """A state dict with the official keys and shapes of DiT-XL/2 (256 px: 32x32x4 latents, 1000 classes, learned σ)
    loads into the kit's DiT-XL/2 (meta tensors: no 2.7 GB of weights), and a wrong configuration is refused."""
    sd = {k: torch.empty(s, device="meta") for k, s in official_dit_layout(28, 1152, 2).items()}
    with torch.device("meta"):
        model = dit_model("DiT-XL/2", input_size=32, in_channels=4, num_classes=1000, learn_sigma=True)
    load_official_dit_state_dict(model, sd)
    assert model.x_embedder.weight.shape == (1152, 4, 2, 2)
    with torch.device("meta"):
        wrong = dit_model("DiT-XL/2", input_size=32, in_channels=4, num_classes=1000, learn_sigma=False)
    with pytest.raises(ValueError, match="final_layer.linear.weight"):
        load_official_dit_state_dict(wrong, sd)
    with pytest.raises(ValueError, match="missing"):
        load_official_dit_state_dict(model, {k: v for k, v in sd.items() if not k.startswith("blocks.27.")})


def test_official_layout_round_trip_gives_the_same_model(tmp_path):
    """Real weights: a DiT-T/2 saved in the official layout (plain .pt, as the released files) and loaded into a fresh
    model computes the same output; a training checkpoint's "ema" entry is used as the official sample.py does."""
    src = tiny_dit(True)
    official = {kit_to_official_key(k): v.clone() for k, v in src.state_dict().items()}
    assert set(official) == set(official_dit_layout(4, 64, 2, input_size=8, num_classes=0, learn_sigma=True))
    path = tmp_path / "dit.pt"
    torch.save(official, path)
    dst = dit_model("DiT-M/2", input_size=8, in_channels=4, num_classes=0, learn_sigma=True).eval()
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([3, 500])
    assert not torch.allclose(dst(x, t), src(x, t))
    load_official_dit_checkpoint(dst, path)
    torch.testing.assert_close(dst(x, t), src(x, t), atol=0, rtol=0)
    fresh = dit_model("DiT-M/2", input_size=8, in_channels=4, num_classes=0, learn_sigma=True).eval()
    load_official_dit_state_dict(fresh, {"ema": official, "opt": {}})
    torch.testing.assert_close(fresh(x, t), src(x, t), atol=0, rtol=0)
