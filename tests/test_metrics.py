"""Set-level metrics: the output contract, FID (torchmetrics) against the formula, diversity, Inception's offline miss."""

from __future__ import annotations

import pytest
import torch

from r0kit.errors import InputError, PluginError, WeightsError
from r0kit.metrics import check_metric_values, diversity, frechet_distance


@pytest.mark.parametrize(
    "bad, match",
    [
        (None, "non-empty dict"),
        ({}, "non-empty dict"),
        ([1.0], "non-empty dict"),
        ({"fid": float("nan")}, "finite"),
        ({"fid": float("inf")}, "finite"),
        ({"fid": "3"}, "number"),
        ({"fid": True}, "number"),
        ({"fid": torch.ones(2)}, "one number"),
        ({"": 1.0}, "non-empty strings"),
    ],
)
def test_metric_output_contract_refuses(bad, match):
    with pytest.raises(PluginError, match=match):
        check_metric_values(bad, name="m", plugin="p")


def test_metric_output_contract_accepts_numbers_and_scalar_tensors():
    assert check_metric_values({"a": 1, "b": torch.tensor(2.5)}, name="m") == {"a": 1.0, "b": 2.5}


class _Flatten(torch.nn.Module):
    """A fixed linear feature map (so the FID can be checked against the closed form)."""

    def __init__(self, d_in: int, d: int = 6) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(d_in, d, bias=False)
        torch.nn.init.normal_(self.proj.weight, generator=torch.Generator().manual_seed(0))

    def forward(self, x):
        return self.proj(x.flatten(1))


def _fid_formula(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖μa − μb‖² + Tr(Σa + Σb − 2 (Σa^½ Σb Σa^½)^½) in float64 (Heusel et al., 2017)."""
    a, b = a.double(), b.double()
    ma, mb = a.mean(0), b.mean(0)
    ca, cb = torch.cov(a.T), torch.cov(b.T)

    def sqrtm(m):
        w, v = torch.linalg.eigh((m + m.T) / 2)
        return v @ torch.diag(w.clamp_min(0).sqrt()) @ v.T

    s = sqrtm(ca)
    return float(((ma - mb) ** 2).sum() + torch.trace(ca + cb - 2 * sqrtm(s @ cb @ s)))


def test_fid_equals_the_closed_form_on_the_same_features():
    g = torch.Generator().manual_seed(1)
    real = torch.rand(64, 3, 4, 4, generator=g)
    fake = (torch.rand(64, 3, 4, 4, generator=g) * 0.7 + 0.2).clamp(0, 1)
    net = _Flatten(48)
    with torch.no_grad():
        expected = _fid_formula(net(real), net(fake))
    got = frechet_distance(net, real, fake, batch_size=16)
    assert got == pytest.approx(expected, rel=1e-3, abs=1e-4)
    assert frechet_distance(net, real, real) == pytest.approx(0.0, abs=1e-3)
    assert got > 0.05


def test_fid_needs_two_images_per_set():
    with pytest.raises(InputError, match="at least 2"):
        frechet_distance(_Flatten(48), torch.rand(1, 3, 4, 4), torch.rand(4, 3, 4, 4))


def test_diversity_is_zero_for_copies_and_grows_with_spread():
    f = torch.randn(4, 8, generator=torch.Generator().manual_seed(2))
    same = diversity(torch.cat([f[:1]] * 3 + [f[1:2]] * 3), ["a"] * 3 + ["b"] * 3)
    assert same == pytest.approx(0.0, abs=1e-9)
    assert diversity(f, ["a", "a", "b", "b"]) > 0.1
    with pytest.raises(InputError, match="two images"):
        diversity(f, ["a", "b", "c", "d"])


def test_inception_offline_miss_names_the_file_and_how_to_get_it(tmp_path, monkeypatch):
    pytest.importorskip("torchmetrics")
    pytest.importorskip("torch_fidelity")
    from r0kit.metrics import INCEPTION_URL, inception

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError) as exc:
        inception()
    assert INCEPTION_URL in str(exc.value) and str(tmp_path) in str(exc.value)
    with pytest.raises(WeightsError, match="does not exist"):
        inception(tmp_path / "nope.pth")
