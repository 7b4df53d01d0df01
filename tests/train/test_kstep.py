"""The kstep generator and the weight_l2 regularizer on a tiny random-weight pipeline."""

from __future__ import annotations

import pytest
import torch

import r0kit
from r0kit.images import preprocess_many
from r0kit.objective import Objective

from .conftest import SIZE, kstep

PROMPTS = ["a red apple", "a blue car", "a green tree"]


def _count_unet_calls(gen):
    calls: list[bool] = []
    gen.unet.register_forward_hook(lambda mod, args, out: calls.append(torch.is_grad_enabled()))
    return calls


def test_random_eta_statistics(tiny_model):
    gen = kstep(tiny_model, train="none", steps=4, eta=(0.2, 0.7))
    g = torch.Generator().manual_seed(0)
    etas = torch.cat([gen.draw_etas(64, g) for _ in range(40)], dim=1)  # [K, 2560]
    assert etas.shape == (4, 2560)
    assert float(etas.min()) >= 0.2 and float(etas.max()) <= 0.7
    n = etas.numel()
    mean, var = 0.45, 0.5**2 / 12
    assert abs(float(etas.mean()) - mean) < 4 * (var / n) ** 0.5
    assert abs(float(etas.var()) - var) < 0.1 * var
    # independent per step and per sample: no two rows or columns coincide, and the
    # correlation between steps is near zero
    corr = torch.corrcoef(etas)
    assert float((corr - torch.eye(4)).abs().max()) < 0.1
    # each step's η is drawn while training and enters the sample; evaluation uses η = 0
    gen.train(True)
    s = gen.sample(PROMPTS, generator=torch.Generator().manual_seed(1))
    assert s.state["etas"].shape == (4, 3) and float(s.state["etas"].min()) >= 0.2
    gen.eval()
    assert float(gen.sample(PROMPTS, generator=torch.Generator().manual_seed(1)).state["etas"].abs().max()) == 0.0


def test_eta_changes_the_sample_and_zero_eta_is_deterministic(tiny_model):
    gen = kstep(tiny_model, train="none", steps=3)
    noise = gen.noise_for_seeds([0, 1])
    with torch.no_grad():
        a = gen.sample(PROMPTS[:2], noise=noise, eta=0.0, generator=torch.Generator().manual_seed(0)).images
        b = gen.sample(PROMPTS[:2], noise=noise, eta=0.0, generator=torch.Generator().manual_seed(5)).images
        c = gen.sample(PROMPTS[:2], noise=noise, eta=1.0, generator=torch.Generator().manual_seed(0)).images
    assert torch.equal(a, b)
    assert float((a - c).abs().max()) > 1e-4


@pytest.mark.parametrize("bad", [0, -1])
def test_zero_steps_is_an_option_error(tiny_model, bad):
    with pytest.raises(r0kit.OptionError, match="steps"):
        kstep(tiny_model, steps=bad, train="none")


@pytest.mark.parametrize("eta", [(-0.1, 0.5), (0.2, 1.5), (0.8, 0.2)])
def test_eta_outside_unit_interval_is_an_option_error(tiny_model, eta):
    with pytest.raises(r0kit.OptionError, match="eta"):
        kstep(tiny_model, eta=eta, train="none")


def test_lora_trains_only_adapter_weights_and_intermediate_supervision_stops_gradient(tiny_model):
    gen = kstep(tiny_model, steps=4, intermediate_supervision=True)
    names = [n for n, _ in gen.named_parameters()]
    assert names and all("lora_" in n for n in names)
    calls = _count_unet_calls(gen)
    obj = r0kit.reward("colorfulness") + r0kit.reward("contrast")
    seen = set()
    for seed in range(12):
        calls.clear()
        for p in gen.model.unet.parameters():
            p.grad = None
        s = gen.sample(PROMPTS, generator=torch.Generator().manual_seed(seed))
        j = int(s.state["supervised_step"])
        seen.add(j)
        obj.backward(s, PROMPTS, gen, reduction="mean")
        # steps 0..j ran, only step j with autograd: the path before it carries no gradient
        assert calls == [False] * j + [True]
        assert int(s.state["grad_from_step"]) == j
        grads = {n: p.grad for n, p in gen.unet.named_parameters() if p.grad is not None}
        assert grads and set(grads) == set(names)
        assert any(float(g.abs().max()) > 0 for g in grads.values())
        assert all(p.grad is None for p in gen.model.vae.parameters())
        assert all(p.grad is None for p in gen.model.text_encoders[0].parameters())
    assert seen == {0, 1, 2, 3}


def test_intermediate_gradient_equals_a_one_step_graph_from_the_detached_state(tiny_model):
    """The R0+ gradient is that of x̂₀ predicted from a detached x_j: nothing flows through steps < j."""
    gen = kstep(tiny_model, steps=4, intermediate_supervision=True)
    with torch.no_grad():  # a LoRA that changes the output, so the gradients are informative
        for p in gen.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    seed = next(s for s in range(50) if int(gen.sample(PROMPTS, generator=torch.Generator().manual_seed(s)).state["supervised_step"]) == 2)
    s = gen.sample(PROMPTS, generator=torch.Generator().manual_seed(seed))
    r = r0kit.reward("colorfulness").module(s.images, PROMPTS).sum()
    g_gen = torch.autograd.grad(r, gen.parameters())

    m = gen.model
    noise, etas, xi_seed = s.state["noise"], s.state["etas"], int(s.state["xi_seed"])
    cond = m.encode_prompts(PROMPTS, height=SIZE, width=SIZE)
    with torch.no_grad():
        x_j = m.unroll(noise, cond, gen.timesteps[:2], eta=etas[:2], seed=xi_seed).latents  # x̂₀ at step 1
        # rebuild x_2 from step 1's x̂₀ and ε̂ exactly as the sampler does
        full = m.unroll(noise, cond, gen.timesteps[:3], eta=etas[:3], seed=xi_seed, grad_from_step=3, return_x0s=True)
    assert torch.equal(full.x0s[1], x_j)
    manual = m.unroll(noise, cond, gen.timesteps[:3], eta=etas[:3], seed=xi_seed, grad_from_step=2).latents
    r2 = r0kit.reward("colorfulness").module(m.decode(manual), PROMPTS).sum()
    g_manual = torch.autograd.grad(r2, gen.parameters())
    for a, b in zip(g_gen, g_manual):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    # and it differs from back-propagating through every step
    full_grad = m.unroll(noise, cond, gen.timesteps[:3], eta=etas[:3], seed=xi_seed).latents
    r3 = r0kit.reward("colorfulness").module(m.decode(full_grad), PROMPTS).sum()
    g_full = torch.autograd.grad(r3, gen.parameters())
    assert max(float((a - b).abs().max()) for a, b in zip(g_full, g_manual)) > 1e-6


def test_truncated_backprop_runs_only_the_last_k_steps_with_autograd(tiny_model):
    gen = kstep(tiny_model, steps=4, backprop_steps=2)
    calls = _count_unet_calls(gen)
    s = gen.sample(PROMPTS, generator=torch.Generator().manual_seed(0))
    r0kit.reward("contrast").module(s.images, PROMPTS).sum().backward()
    assert calls == [False, False, True, True]
    assert all(p.grad is not None for p in gen.parameters())


def test_gradient_normalization_matches_a_hand_computation(tiny_model):
    gen = kstep(tiny_model, steps=2)
    with torch.no_grad():
        for p in gen.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel() + 1)))
    w = {"colorfulness": 2.0, "contrast": 0.5}
    obj = Objective([r0kit.reward(k) * v for k, v in w.items()], normalize_gradients=True, eps=1e-8)
    s = gen.sample(PROMPTS, generator=torch.Generator().manual_seed(7))
    obj.backward(s, PROMPTS, gen, reduction="mean")
    got = [p.grad.clone() for p in gen.parameters()]

    # by hand: per reward, per sample g_i/(‖g_i‖+ε), weighted, summed, pushed through the generator, averaged
    for p in gen.parameters():
        p.grad = None
    s2 = gen.sample(PROMPTS, generator=torch.Generator().manual_seed(7))
    x = s2.images.detach().requires_grad_(True)
    combined = torch.zeros_like(x)
    for name, weight in w.items():
        term = r0kit.reward(name)
        (xin,) = preprocess_many(x, [term.contract])  # the reward's input contract, as the objective applies it
        (g,) = torch.autograd.grad(term.module(xin, PROMPTS).sum(), x)
        norm = g.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        combined += weight * g / (norm + 1e-8)
    ref = torch.autograd.grad(s2.images, list(gen.parameters()), grad_outputs=-combined / len(PROMPTS))
    scale = max(float(b.abs().max()) for b in ref)
    assert scale > 0
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * scale)


def test_weight_l2_is_zero_at_start_and_its_gradient_is_2_lambda_delta(tiny_model):
    gen = kstep(tiny_model, steps=2, train="lora")
    lam = 0.3
    obj = r0kit.reward("contrast") * 0.0 - lam * r0kit.regularizer("weight_l2")
    s = gen.sample(PROMPTS[:1], generator=torch.Generator().manual_seed(0))
    res = obj.evaluate(s, PROMPTS[:1], gen)
    assert float(res.terms["weight_l2"]) == 0.0
    params, refs = gen.weight_reference()
    deltas = [0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(i)) for i, p in enumerate(params)]
    with torch.no_grad():
        for p, d in zip(params, deltas):
            p.add_(d)
    s = gen.sample(PROMPTS[:1], generator=torch.Generator().manual_seed(0))
    res = obj.backward(s, PROMPTS[:1], gen, reduction="mean")
    expected = sum(float((d.double() ** 2).sum()) for d in deltas)
    assert float(res.terms["weight_l2"]) == pytest.approx(expected, rel=1e-5)
    for p, d in zip(params, deltas):  # minimizing −(−λ‖θ−θ₀‖²) ⇒ grad = 2λ(θ−θ₀)
        torch.testing.assert_close(p.grad, 2 * lam * d, rtol=1e-4, atol=1e-7)
    # the reference is the weights as built, not as trained
    assert all(torch.equal(r, p.detach() - d) or torch.allclose(r, p.detach() - d, atol=1e-7) for p, r, d in zip(params, refs, deltas))


def test_weight_l2_without_trainable_generator_is_an_option_error(tiny_model):
    gen = kstep(tiny_model, steps=1, train="none")
    obj = r0kit.reward("contrast") - r0kit.regularizer("weight_l2")
    s = gen.sample(PROMPTS[:1], generator=torch.Generator().manual_seed(0))
    with pytest.raises(r0kit.OptionError, match="weight_l2"):
        obj.evaluate(s, PROMPTS[:1], gen)


def test_full_finetuning_trains_every_unet_weight(tiny_model):
    gen = kstep(tiny_model, steps=2, train="full", gradient_checkpointing=True)
    assert len(gen.parameters()) == len(list(gen.unet.parameters()))
    s = gen.sample(PROMPTS[:2], generator=torch.Generator().manual_seed(0))
    r0kit.reward("colorfulness").module(s.images, PROMPTS[:2]).sum().backward()
    assert sum(p.grad is not None for p in gen.parameters()) > 0.9 * len(gen.parameters())
