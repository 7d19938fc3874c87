"""SiT (Ma et al. 2024): the DiT backbone trained on a linear interpolant with velocity prediction, ODE sampling.

Used for the SiT-B/2 and SiT-XL/2 rows of EQ-VAE (arXiv 2502.09509 v3, Table 2). The backbone is ``dit.DiT`` with
``learn_sigma=False`` (SiT's network has learn_sigma=True but discards the second half of its output; dropping it
changes nothing but a few output weights).

Time convention (REPA's, as the issue asks): ``t = 0`` is data, ``t = 1`` is noise:

    x_t = (1 - t) x_0 + t ε,     target velocity  v = dx_t/dt = ε - x_0,     t ~ U(0, 1) in training.

SiT's own code uses the mirrored convention (t = 1 data); the two are equivalent up to t -> 1 - t. The network gets
``t_scale · t`` as its timestep (SiT: t_scale = 1, i.e. t in [0, 1] straight into the sinusoidal embedding; a larger
value such as 1000 spreads the embedding's frequencies as in DDPM and may help very small models).
Samplers integrate dx/dt = v from t = 1 to t = 0 on a uniform grid with Euler or Heun (Heun's last step, which would
evaluate at t = 0, is an Euler step, as in EDM).
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .dit import DIT_CONFIGS, DiT

SIT_CONFIGS = {name.replace("DiT", "SiT"): cfg for name, cfg in DIT_CONFIGS.items()}


def sit_model(name: str, **kwargs) -> DiT:
    """Build a SiT backbone by name (``SiT-{XL,L,B,S,T,M}/{1,2,4,8}``, same sizes as DiT): a ``DiT`` with
    ``learn_sigma=False`` (C output channels = the velocity). ``kwargs`` go to ``DiT``.

    Raises:
        ValueError: for an unknown name.
    """
    if name not in SIT_CONFIGS:
        raise ValueError(f"unknown SiT config {name!r}; known: {', '.join(SIT_CONFIGS)}")
    kwargs.setdefault("learn_sigma", False)
    return DiT(**SIT_CONFIGS[name], **kwargs)


class LinearInterpolant:
    """Linear interpolant x_t = (1 - t) x_0 + t ε with velocity prediction (SiT "Linear" path, "velocity" model).

    Args:
        t_scale: the network is called with ``t_scale * t`` (SiT: 1.0).
        t_min, t_max: training times are drawn from U(t_min, t_max) (SiT's train_eps = 0 for this path).
    """

    def __init__(self, t_scale: float = 1.0, t_min: float = 0.0, t_max: float = 1.0):
        self.t_scale, self.t_min, self.t_max = float(t_scale), float(t_min), float(t_max)

    @staticmethod
    def _bc(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return t.to(x.dtype).view(-1, *([1] * (x.ndim - 1)))

    def interpolate(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = (1 - t) x_0 + t ε for ``t [B]`` in [0, 1]; ``t = 0`` returns the data, ``t = 1`` the noise."""
        t = self._bc(t, x0)
        return (1 - t) * x0 + t * noise

    @staticmethod
    def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """d x_t / dt = ε - x_0 (independent of t for the linear path)."""
        return noise - x0

    def sample_t(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training times ``[n]`` float32 ~ U(t_min, t_max) (on the generator's device)."""
        dev = generator.device if generator is not None else "cpu"
        return self.t_min + (self.t_max - self.t_min) * torch.rand(n, generator=generator, device=dev)

    def _call(self, model, x, t, model_kwargs):
        return model(x, self.t_scale * t, **(model_kwargs or {})).float()[:, :x.shape[1]]

    def loss(self, model, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
             model_kwargs: dict | None = None) -> torch.Tensor:
        """Per-sample loss ``[B]``: mean squared error between predicted and target velocity (SiT / REPA)."""
        x_t = self.interpolate(x_start, noise, t)
        v = self._call(model, x_t, t, model_kwargs)
        return ((v - self.velocity_target(x_start, noise)) ** 2).mean(dim=list(range(1, x_start.ndim)))

    @torch.no_grad()
    def sample_ode(self, model, shape, noise: torch.Tensor | None = None, model_kwargs: dict | None = None,
                   method: str = "heun", steps: int = 50, generator: torch.Generator | None = None, device=None,
                   progress: bool = False) -> torch.Tensor:
        """Integrate dx/dt = v(x, t) from t = 1 (x = noise) to t = 0 on ``steps`` uniform intervals.

        ``method``: ``"euler"`` (``steps`` network calls) or ``"heun"`` (2 per step, Euler on the last).
        Returns x_0 with ``shape``. The only randomness is the initial noise (from ``generator``).

        Raises:
            ValueError: unknown method or steps < 1.
        """
        if method not in ("euler", "heun"):
            raise ValueError(f"SiT ODE method must be 'euler' or 'heun', got {method!r}")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        device = device or (noise.device if noise is not None else "cpu")
        if noise is None:
            noise = (torch.randn(shape, device=device) if generator is None else
                     torch.randn(shape, generator=generator, device=generator.device))
        x = noise.to(device).float()
        ts = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
        B = x.shape[0]
        for i in tqdm(range(steps), desc=f"SiT {method}", disable=not progress, leave=False):
            t_cur, t_next = float(ts[i]), float(ts[i + 1])
            tc = torch.full((B,), t_cur, device=device)
            v = self._call(model, x, tc, model_kwargs)
            x_next = x + (t_next - t_cur) * v
            if method == "heun" and t_next > 0:
                v2 = self._call(model, x_next, torch.full((B,), t_next, device=device), model_kwargs)
                x_next = x + (t_next - t_cur) * 0.5 * (v + v2)
            x = x_next
        return x


@torch.no_grad()
def sample_sit(model: DiT, n: int, *, y: torch.Tensor | None = None, cfg_scale: float = 1.0, method: str = "heun",
               steps: int = 50, generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
               t_scale: float = 1.0, progress: bool = False) -> torch.Tensor:
    """Sample ``n`` normalised latents z_n ``[n, C, H, W]`` from a SiT with the ODE sampler.

    Args:
        y: labels ``[n]`` or ``None`` (null class: unconditional).
        cfg_scale: classifier-free guidance on the velocity (1.0 = none).
        method, steps: ``"euler"`` / ``"heun"`` and the number of steps.
        generator: torch.Generator for the initial noise (determinism); ``noise`` overrides it.
        t_scale: must equal the value used in training (``LinearInterpolant.t_scale``).
    """
    device = next(model.parameters()).device
    if y is not None:
        y = y.to(device)
    interp = LinearInterpolant(t_scale=t_scale)
    was_training = model.training
    model.eval()

    def fn(x, t):
        return model.forward_with_cfg(x, t, y, cfg_scale) if cfg_scale != 1.0 else model(x, t, y)

    try:
        return interp.sample_ode(fn, (n, model.in_channels, model.input_size, model.input_size), noise,
                                 method=method, steps=steps, generator=generator, device=device, progress=progress)
    finally:
        model.train(was_training)
