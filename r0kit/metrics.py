"""Set-level evaluation metrics: FID, diversity, and the one output check every metric goes through.

A *metric* (registered by the ``r0kit_register_metrics`` hook) judges a set of
generated images: ``metric(images [N, 3, H, W] in [0, 1], prompts) -> {name: float}``.
Unlike a reward it is never optimized. FID is computed by torchmetrics'
``FrechetInceptionDistance`` (Heusel et al., 2017), with Inception-v3 pool3
features for real images or any feature network given as a module.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from r0kit.errors import InputError, OptionError, PluginError, WeightsError

#: torch-fidelity's Inception-v3 weights (the TF FID network ported to torch), which torchmetrics loads.
INCEPTION_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"


def check_metric_values(values: Any, *, name: str, plugin: str = "") -> dict[str, float]:
    """The output contract of a metric: a non-empty ``dict[str, float]`` of finite numbers.

    :raises PluginError: naming the metric and what it returned instead.
    """
    where = f"metric {name!r}" + (f" (plugin {plugin})" if plugin else "")
    if not isinstance(values, dict) or not values:
        raise PluginError(f"{where} returned {type(values).__name__}; it must return a non-empty dict of name -> float")
    out = {}
    for k, v in values.items():
        if not isinstance(k, str) or not k:
            raise PluginError(f"{where} returned the key {k!r}; keys must be non-empty strings")
        if isinstance(v, torch.Tensor):
            if v.numel() != 1:
                raise PluginError(f"{where}: {k!r} is a tensor of shape {tuple(v.shape)}; it must be one number")
            v = v.item()
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise PluginError(f"{where}: {k!r} is a {type(v).__name__}; it must be a number")
        if math.isnan(v) or math.isinf(v):
            raise PluginError(f"{where}: {k!r} is {v}; metrics must be finite")
        out[k] = float(v)
    return out


def check_images(images: Any, prompts: Sequence[str], *, name: str) -> None:
    """Refuse a metric input that is not ``[N, 3, H, W]`` float in [0, 1] with one prompt per image."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise InputError(f"metric {name!r} needs float images [N, 3, H, W], got {shape}")
    if len(prompts) != images.shape[0]:
        raise InputError(f"metric {name!r}: {len(prompts)} prompt(s) for {images.shape[0]} image(s)")


@torch.no_grad()
def features(network: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, *, batch_size: int = 64) -> torch.Tensor:
    """``network`` applied in batches: ``[N, D]`` float64 features on the CPU."""
    device = next((p.device for p in getattr(network, "parameters", lambda: iter(()))()), torch.device("cpu"))
    return torch.cat([network(c.to(device)).double().cpu() for c in images.split(batch_size)])


def frechet_distance(network: torch.nn.Module, real: torch.Tensor, fake: torch.Tensor, *, batch_size: int = 64) -> float:
    """FID between two image sets (``[N, 3, H, W]`` in [0, 1]) in the feature space of ``network``.

    Computed by torchmetrics' ``FrechetInceptionDistance`` with ``network`` as its
    custom feature extractor (it receives the float images as they are).

    :raises OptionError: torchmetrics is not installed (``pip install 'r0kit[eval]'``).
    :raises InputError: a set of fewer than 2 images (the covariance is undefined).
    """
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
    except ImportError as exc:
        raise OptionError(f"FID needs torchmetrics ({exc}); install it with pip install 'r0kit[eval]'") from None
    for label, imgs in (("reference", real), ("generated", fake)):
        if imgs.shape[0] < 2:
            raise InputError(f"FID needs at least 2 {label} images, got {imgs.shape[0]}")
    fid = FrechetInceptionDistance(feature=network, normalize=True, input_img_size=tuple(real.shape[1:]))
    device = next(network.parameters()).device
    fid = fid.to(device)
    for imgs, is_real in ((real, True), (fake, False)):
        for chunk in imgs.split(batch_size):
            fid.update(chunk.to(device).float(), real=is_real)
    return float(fid.compute())


def diversity(feats: torch.Tensor, prompts: Sequence[str]) -> float:
    """Mean pairwise cosine distance between the features of images that share a prompt
    (averaged over prompts with at least two images); 0 when every seed gives the same image.

    :raises InputError: no prompt has two images.
    """
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(p, []).append(i)
    f = torch.nn.functional.normalize(feats.double(), dim=1)
    per_prompt = []
    for idx in groups.values():
        if len(idx) < 2:
            continue
        g = f[idx]
        sim = g @ g.T
        n = len(idx)
        per_prompt.append(float((1 - sim)[~torch.eye(n, dtype=torch.bool)].mean()))
    if not per_prompt:
        raise InputError("diversity needs at least two images (seeds) of one prompt: evaluate generators and models "
                         "with --seeds 2 or more; an image folder needs two or more images with the same prompt")
    return sum(per_prompt) / len(per_prompt)


def inception(weights: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> torch.nn.Module:
    """torchmetrics' Inception-v3 (FID's pool3, 2048 features) with its weights resolved locally first.

    The weights come from ``weights`` (a file), else the torch hub cache
    (``$TORCH_HOME/hub/checkpoints``), else a download unless ``HF_HUB_OFFLINE`` is set.

    :raises WeightsError: the weights are not on this machine and cannot be fetched, naming the
        URL and where to put the file.
    """
    from r0kit.weights import is_offline

    try:
        from torchmetrics.image.fid import NoTrainInceptionV3
    except ImportError as exc:
        raise OptionError(f"FID with Inception needs torchmetrics and torch-fidelity ({exc}); pip install 'r0kit[eval]'") from None
    cache = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    path = Path(weights).expanduser() if weights is not None else cache
    how = (
        f"download {INCEPTION_URL} on a machine with network access and put it at {cache} "
        f"(or pass weights=/path/to/{INCEPTION_FILE})"
    )
    if weights is not None and not path.is_file():
        raise WeightsError(f"FID: the Inception weights file {str(path)!r} does not exist; {how}")
    if not path.is_file():
        if is_offline():
            raise WeightsError(f"FID: the Inception-v3 weights are not in the torch hub cache and HF_HUB_OFFLINE is set; {how}")
        try:
            torch.hub.download_url_to_file(INCEPTION_URL, str(cache), progress=False)
        except Exception as exc:
            raise WeightsError(f"FID: could not download the Inception-v3 weights ({type(exc).__name__}: {exc}); {how}") from None
    try:
        net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=str(path))
    except Exception as exc:
        raise WeightsError(f"FID: {str(path)!r} is not the Inception-v3 weights ({type(exc).__name__}: {exc}); {how}") from None
    return _UnitRange(net).to(device).eval()


class _UnitRange(torch.nn.Module):
    """Feeds [0, 1] float images to torchmetrics' Inception, which takes uint8 [0, 255]."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x.clamp(0, 1) * 255).round().to(torch.uint8))


__all__ = ["INCEPTION_URL", "check_images", "check_metric_values", "diversity", "features", "frechet_distance", "inception"]
