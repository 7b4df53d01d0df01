"""Objective composition, evaluation and the gradient-normalized combine."""

from __future__ import annotations

import pytest
import torch

import r0kit
from r0kit import regularizer, reward
from r0kit.config import load_objective
from r0kit.errors import InputError, NonFiniteError, OptionError
from r0kit.objective import combine_normalized


def _sample(b=2, h=12, w=10, seed=0, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, h, w, generator=g, dtype=torch.float64)
    if requires_grad:
        x.requires_grad_(True)
    return r0kit.Sample(images=x, state={"param": x, "param_init": torch.full_like(x, 0.5)})


def test_arithmetic_equals_toml(tmp_path):
    toml = tmp_path / "obj.toml"
    toml.write_text(
        """
[objective]
normalize_gradients = true
[objective.rewards.colorfulness]
weight = 2
[objective.rewards.target_color]
weight = 0.5
color = "#102030"
[objective.regularizers.tv]
weight = 0.1
p = 2
"""
    )
    from_toml = load_objective(toml)
    in_python = (
        2 * reward("colorfulness") + 0.5 * reward("target_color", color="#102030") - 0.1 * regularizer("tv", p=2)
    ).with_options(normalize_gradients=True)
    assert from_toml == in_python
    assert from_toml != in_python.with_options(normalize_gradients=False)
    assert from_toml != 2 * reward("colorfulness") + reward("target_color", color="#102030")


def test_arithmetic_forms_are_equivalent():
    a, b, t = reward("contrast"), reward("colorfulness"), regularizer("tv")
    assert 2 * a + b - 0.1 * t == (a + b * 1.0) + a - t / 10
    assert -(a - b) == b - a
    assert (a + b) * 3 == 3 * a + 3 * b
    assert a + a == 2 * a and len((a + a).terms) == 1
    assert (a - a).terms[0].weight == 0.0
    with pytest.raises(OptionError, match="two different terms"):
        reward("target_color", color="#000000") + reward("target_color", color="#ffffff")
    assert len((a + a.named("contrast2")).terms) == 2


def test_totals_and_terms_per_sample():
    s = _sample()
    obj = 2 * reward("contrast") + 0.5 * reward("symmetry") - 0.1 * regularizer("tv") - 3 * regularizer("l2_init")
    res = obj.evaluate(s, ["a", "b"])
    x = s.images
    luma = (x * x.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1).flatten(1)
    contrast = torch.sqrt(luma.var(1, unbiased=False) + 1e-12)
    sym = -((x - x.flip(-1)) ** 2).flatten(1).mean(1)
    tv = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(1) + (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(1)
    l2 = ((x - 0.5) ** 2).flatten(1).mean(1)
    expected = 2 * contrast + 0.5 * sym - 0.1 * tv - 3 * l2
    torch.testing.assert_close(res.total, expected.float())
    torch.testing.assert_close(res.terms["contrast"], contrast)
    torch.testing.assert_close(res.terms["tv"], tv)
    assert res.weights == {"contrast": 2.0, "symmetry": 0.5, "tv": -0.1, "l2_init": -3.0}
    assert set(res.mean()) == {"total", "contrast", "symmetry", "tv", "l2_init"}


def test_backward_gradient_is_minus_total_gradient():
    obj = reward("colorfulness") + 0.3 * reward("contrast") - 0.2 * regularizer("tv")
    s1, s2 = _sample(seed=1), _sample(seed=1)
    obj.backward(s1, ["a", "b"])
    total = obj.evaluate(s2, ["a", "b"]).total.sum()
    (g,) = torch.autograd.grad(-total, s2.images)
    torch.testing.assert_close(s1.images.grad, g)
    assert s1.images.grad.abs().sum() > 0


def test_normalized_backward_matches_hand_computation():
    eps = 1e-6
    obj = (2 * reward("colorfulness") + 0.5 * reward("contrast") - 0.1 * regularizer("tv")).with_options(
        normalize_gradients=True, eps=eps
    )
    s = _sample(seed=2)
    res = obj.backward(s, ["a", "b"])

    ref = _sample(seed=2)
    x = ref.images
    grads = {}
    for name in ("colorfulness", "contrast"):
        v = reward(name).module(x, ["a", "b"]).sum()
        (grads[name],) = torch.autograd.grad(v, x)
    expected = torch.zeros_like(x)
    for name, w in (("colorfulness", 2.0), ("contrast", 0.5)):
        g = grads[name]
        n = g.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        expected += w * g / (n + eps)
        torch.testing.assert_close(res.grad_norms[name], g.flatten(1).norm(dim=1))
    tv = regularizer("tv").module(ref, None).sum()
    (gtv,) = torch.autograd.grad(tv, x)
    expected = -expected + 0.1 * gtv  # we minimize the negative objective
    torch.testing.assert_close(s.images.grad, expected)
    # Every per-sample reward direction has unit norm: scaling a reward does not change the step.
    obj_scaled = (200 * reward("colorfulness") + 50 * reward("contrast")).with_options(normalize_gradients=True, eps=0)
    obj_plain = (2 * reward("colorfulness") + 0.5 * reward("contrast")).with_options(normalize_gradients=True, eps=0)
    a, b = _sample(seed=3), _sample(seed=3)
    obj_scaled.backward(a, ["a", "b"])
    obj_plain.backward(b, ["a", "b"])
    torch.testing.assert_close(a.images.grad, 100 * b.images.grad)


def test_combine_normalized_gradcheck():
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(3, 2, 5, 4, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    weights = [1.5, -0.25, 0.01]

    def f(*gs):
        return combine_normalized(list(gs), weights, 1e-3)[0]

    assert torch.autograd.gradcheck(f, grads, eps=1e-6, atol=1e-5)
    out, norms = combine_normalized(grads, weights, 1e-3)
    assert norms.shape == (3, 3)
    manual = sum(w * gi / (gi.flatten(1).norm(dim=1).view(-1, 1, 1, 1) + 1e-3) for w, gi in zip(weights, grads))
    torch.testing.assert_close(out, manual)


def test_nonfinite_term_is_named():
    class NaNReward:
        def __call__(self, x, prompts):
            return torch.full((x.shape[0],), float("nan"))

    obj = reward("contrast") + r0kit.Term("reward", "nan_reward", NaNReward(), contract=reward("contrast").contract)
    s = _sample()
    with pytest.raises(NonFiniteError, match="nan_reward"):
        obj.backward(s, ["a", "b"])
    assert s.images.grad is None  # nothing was back-propagated


def test_wrong_shape_reward_names_the_plugin():
    bad = r0kit.Term("reward", "bad", lambda x, p: x.mean(), contract=reward("contrast").contract, plugin="my_plugin")
    with pytest.raises(InputError, match=r"my_plugin.*shape \[2\]"):
        (reward("contrast") + bad).evaluate(_sample(), ["a", "b"])


@pytest.mark.parametrize(
    "images, match",
    [
        (torch.rand(2, 4, 8, 8), "3 channels"),
        (torch.rand(3, 8, 8), r"\[B, 3, H, W\]"),
        (torch.rand(2, 3, 8, 8) * 2, r"\[0, 1\]"),
        ((torch.rand(2, 3, 8, 8) * 255).to(torch.uint8), "float"),
        (torch.full((2, 3, 8, 8), float("nan")), "NaN"),
    ],
)
def test_bad_images_are_rejected(images, match):
    with pytest.raises(InputError, match=match):
        reward("contrast").__add__(reward("symmetry")).evaluate(r0kit.Sample(images=images), ["a", "b"])


def test_prompt_count_must_match_when_a_reward_needs_prompts():
    needs = r0kit.RewardContract(size=None, mean=(0, 0, 0), std=(1, 1, 1), needs_prompt=True)
    t = r0kit.Term("reward", "p", lambda x, p: x.flatten(1).mean(1), contract=needs)
    with pytest.raises(InputError, match="1 prompt"):
        r0kit.Objective([t]).evaluate(_sample(), ["only one"])


def test_empty_objective_is_an_error():
    with pytest.raises(OptionError, match="no terms"):
        r0kit.Objective([]).evaluate(_sample(), ["a", "b"])


@pytest.mark.parametrize("normalize", [False, True])
def test_a_scalar_regularizer_counts_once_so_per_sample_gradients_do_not_depend_on_the_batch(normalize):
    """``reduction="sum"`` (test-time optimization): each sample's gradient is its own problem's. A regularizer
    returning one scalar for the batch (here Σ_b ‖x_b‖², which is per-sample separable) must give sample b the
    gradient -λ·2x_b at batch 3 as at batch 1; summing the scalar into every sample's total gave B times that."""
    penalty = r0kit.Term("regularizer", "sq", lambda s, g: (s.images**2).sum())
    obj = (reward("contrast") - 0.5 * penalty).with_options(normalize_gradients=normalize)
    x = _sample(3, seed=4).images.detach()
    grads = []
    for rows in (slice(0, 3), slice(1, 2)):
        leaf = x[rows].clone().requires_grad_(True)
        obj.backward(r0kit.Sample(images=leaf), ["p"] * leaf.shape[0], reduction="sum")
        grads.append(leaf.grad)
    torch.testing.assert_close(grads[0][1:2], grads[1], rtol=1e-5, atol=1e-6)
    # Under "mean" (training) the scalar is likewise one penalty: the loss λ·Σ‖x_b‖² has gradient λ·2x.
    leaf = x.clone().requires_grad_(True)
    only_penalty = r0kit.Objective([r0kit.Term("regularizer", "sq", penalty.module, weight=-0.5)])
    only_penalty.with_options(normalize_gradients=normalize).backward(r0kit.Sample(images=leaf), ["p"] * 3, reduction="mean")
    torch.testing.assert_close(leaf.grad, 0.5 * 2 * x)


@pytest.mark.parametrize("shape", [(2, 3, 1, 5), (2, 3, 5, 1), (2, 3, 1, 1)])
@pytest.mark.parametrize("p", [1, 2])
def test_tv_of_a_one_pixel_wide_image_is_the_other_axis_alone(shape, p):
    """The mean over an empty difference was NaN, silently, in evaluate."""
    from r0kit.plugins import get_host

    make = get_host().regularizers.get("tv").create
    x = torch.rand(*shape, dtype=torch.float64, requires_grad=True)
    tv = make(p=p)(r0kit.Sample(x))
    d = x[..., 1:, :] - x[..., :-1, :] if shape[-2] > 1 else x[..., :, 1:] - x[..., :, :-1]
    want = (d.abs() if p == 1 else d**2).flatten(1).mean(1) if d.numel() else torch.zeros(shape[0], dtype=x.dtype)
    torch.testing.assert_close(tv, want)
    if p == 2:  # |·| has a kink at 0; the squared form is smooth
        assert torch.autograd.gradcheck(lambda y: make(p=2)(r0kit.Sample(y)), (x,))
    obj = reward("contrast") - 0.1 * regularizer("tv", p=p)
    assert torch.isfinite(obj.evaluate(r0kit.Sample(x.detach().float()), ["a", "b"]).total).all()


@pytest.mark.parametrize(
    "call, needle",
    [
        (lambda obj, s: obj.evaluate(s.images, ["a", "b"]), "takes a r0kit.Sample, got a Tensor"),
        (lambda obj, s: obj.backward(s.images, ["a", "b"]), "takes a r0kit.Sample, got a Tensor"),
        (lambda obj, s: obj.evaluate(s, None), "prompts must be a list of str"),
        (lambda obj, s: obj.evaluate(s, "ab"), "got the str 'ab'"),
        (lambda obj, s: obj.evaluate(s, ["a", 2]), "prompts must be a list of str"),
        (lambda obj, s: obj.evaluate(r0kit.Sample(images=s.images[:0]), []), "holds no pixels"),
    ],
)
def test_the_python_api_names_a_wrong_argument_instead_of_a_raw_error(call, needle):
    """A bare tensor, None or a str for prompts, and an empty batch were AttributeError, TypeError, a
    prompt per character, or a RuntimeError from torch.min."""
    obj = reward("colorfulness") + reward("contrast")
    with pytest.raises(InputError, match=needle):
        call(obj, _sample())


def test_a_single_term_evaluates_and_backpropagates_as_a_one_term_objective():
    """`r0kit.reward("contrast").evaluate(...)` was an AttributeError."""
    term = 2 * reward("contrast")
    s = _sample()
    assert torch.equal(term.evaluate(s, ["a", "b"]).total, r0kit.Objective([term]).evaluate(s, ["a", "b"]).total)
    term.backward(s, ["a", "b"])
    g = s.images.grad.clone()
    s2 = _sample()
    r0kit.Objective([term]).backward(s2, ["a", "b"])
    assert torch.equal(g, s2.images.grad)


def test_score_checks_every_reward_option_before_building_the_first(monkeypatch):
    """A typo in the last -R option was found only after the first reward's model had loaded."""
    import r0kit.objective as objective_module
    from r0kit.score import build_rewards

    built = []
    real = objective_module.reward
    monkeypatch.setattr(objective_module, "reward", lambda *a, **k: built.append(a) or real(*a, **k))
    with pytest.raises(OptionError, match="'colorfulness' has no option 'nope'"):
        build_rewards(["contrast", "colorfulness"], {"colorfulness": {"nope": 1}})
    assert built == []
