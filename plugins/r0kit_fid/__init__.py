"""The ``fid`` metric: Fréchet Inception Distance against a folder of reference images.

torchmetrics' ``FrechetInceptionDistance`` with Inception-v3 pool3 features
(torch-fidelity's port of the TF FID network, as in R0's and most papers' tables).
The weights resolve locally first (see :func:`r0kit.metrics.inception`); an
offline miss names the file and how to get it. Needs ``pip install 'r0kit[eval]'``.
"""

from __future__ import annotations

import r0kit


def fid_metric(reference: str, weights: str | None = None, size: int = 299, batch_size: int = 32, device: str | None = None):
    """Build the metric.

    :param reference: a folder of reference images (any size; each is resized to ``size``).
    :param weights: a local Inception-v3 weights file (default: the torch hub cache, then a download).
    """
    from r0kit.metrics import inception
    from r0kit.score import list_images, load_image

    files = list_images(reference)
    net = inception(weights, device or "cpu")

    def resize(x):
        import torch.nn.functional as F

        return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)

    import torch

    real = torch.cat([resize(load_image(f)[0][None]) for f in files])

    def metric(images, prompts):
        from r0kit.metrics import frechet_distance

        return {"fid": frechet_distance(net, real, resize(images.float()), batch_size=batch_size)}

    metric.min_images = 2  # FID's covariance (see r0kit.evaluate.check_metric_needs)
    metric.lower_is_better = ("fid",)  # a distance: the evaluation table marks the lowest as best
    return metric


@r0kit.hookimpl
def r0kit_register_metrics(register):
    register("fid", fid_metric, description="FID (Inception-v3, torchmetrics) against a folder of reference images")
