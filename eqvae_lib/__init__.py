"""EQ-VAE reproducibility kit.

Reference: Kouzelis, Kakogeorgiou, Gidaris, Komodakis, "EQ-VAE: Equivariance Regularized Latent Space for Improved
Generative Image Modeling", ICML 2025, arXiv:2502.09509 (v3). Equation and table numbers in docstrings refer to it.

Modules (imports only point down this list; tests/test_import_graph.py checks it):
method library (``eqvae_lib.*``, ``eqvae_lib.metrics``): runtime, io, rng (the RNG rule), perf (TF32, fused
optimizers, compile) -> data, transforms -> autoencoders -> losses -> train_ae -> latents -> dit, sit, vq/maskgit ->
train_gen -> metrics; experiment layer (the subpackage ``eqvae_lib.experiment``; may import the library, never the
reverse): config (typed stage configs, profiles) -> records, claims, verdicts, plotting, paper_values -> pipeline
(train-or-load, caches), projection -> __main__ and notebooks.
"""

__version__ = "0.1.0"

import warnings as _warnings

# In a kernel without ipywidgets, tqdm.auto falls back to text bars (what papermill's log shows) and warns; the text
# bars are what we want there.
_warnings.filterwarnings("ignore", message="IProgress not found")
