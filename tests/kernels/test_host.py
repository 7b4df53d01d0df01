"""The host side of every launch, checked on the CPU: no sync, no host-to-device copy, no allocation
but the outputs and workspaces, no torch glue ops, no recompilation across the real shapes, and no
graph break under ``torch.compile``.

The kernels are replaced by stubs that record their launch, and a ``TorchDispatchMode`` records
every aten op the host code runs; on a GPU each of those ops would be a launch or a sync.
"""

from __future__ import annotations

import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from r0kit.images import CLIP_MEAN, CLIP_STD, RewardContract
from r0kit.kernels import cosine_head, eta_step, grad_combine, preprocess_fused, weight_l2

from kt_helpers import DEVICE, INTERPRETER_UNAVAILABLE

MOD = {name: sys.modules[f"r0kit.kernels.{name}"] for name in ("grad_combine", "preprocess", "eta_step", "cosine_head", "weight_l2")}
KERNELS = {
    "grad_combine": ("_sumsq_kernel", "_combine_fwd_kernel", "_combine_bwd_kernel"),
    "preprocess": ("_preprocess_fwd_kernel", "_preprocess_bwd_kernel"),
    "eta_step": ("_eta_fwd_kernel", "_eta_bwd_kernel"),
    "cosine_head": ("_cosine_fwd_kernel", "_cosine_bwd_kernel"),
    "weight_l2": ("_weight_l2_kernel",),
}
#: ops that only make views or fresh (uninitialized) memory: no launch, no sync
VIEWS = {"aten.view.default", "aten._unsafe_view.default", "aten.unbind.int", "aten.reshape.default", "aten.t.default",
         "aten.as_strided.default", "aten.detach.default", "aten.alias.default", "aten.select.int",
         "aten.split_with_sizes.default", "aten.split.Tensor"}
ALLOCS = {"aten.empty.memory_format", "aten.empty_like.default", "aten.empty_strided.default", "aten.new_empty.default"}

pytestmark = pytest.mark.skipif(INTERPRETER_UNAVAILABLE, reason="needs Triton's CPU interpreter")


class Record(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))

    def allocs(self) -> int:
        return sum(op in ALLOCS for op in self.ops)

    def other(self) -> list[str]:
        """Everything that is neither a view nor an allocation: launches and syncs on a GPU."""
        return [op for op in self.ops if op not in VIEWS and op not in ALLOCS]


class Stub:
    """Stands in for a Triton kernel: ``kernel[grid](*args, **constexprs)`` records the call."""

    def __init__(self, name, log):
        self.name, self.log = name, log

    def __getitem__(self, grid):
        return lambda *args, **kw: self.log.append((self.name, {k: v for k, v in kw.items() if k != "num_warps"}))


@pytest.fixture
def stubs(monkeypatch):
    monkeypatch.setenv("R0KIT_KERNELS", "triton")
    log: list = []
    for op, names in KERNELS.items():
        for name in names:
            monkeypatch.setattr(MOD[op], name, Stub(name, log))
    return log


def _cases():
    """(op, forward thunk returning differentiable outputs and their inputs, upstream gradients)."""
    def leaf(t):
        return t.to(DEVICE).requires_grad_(True)

    g = [leaf(torch.randn(2, 3, 16, 16)) for _ in range(4)]
    x = leaf(torch.rand(2, 3, 40, 48))
    contracts = [RewardContract(size=16), RewardContract(size=16, crop="pad"), RewardContract(size=12, crop_offset="floor")]
    x0, ep = leaf(torch.randn(2, 4, 8, 8)), leaf(torch.randn(2, 4, 8, 8))
    eta = leaf(torch.tensor([0.3, 0.7]))
    a, t = leaf(torch.randn(3, 64)), leaf(torch.randn(3, 64))
    ps = [leaf(torch.randn(s)) for s in ((100,), (7, 9), (3,))]
    rs = [torch.randn(s).to(DEVICE) for s in ((100,), (7, 9), (3,))]
    return {
        # op: (thunk, inputs, expected allocations forward, backward)
        "grad_combine": (lambda: grad_combine(g, [1.0, 2.0, 0.5, 3.0])[0], g, 3, 2),  # part, out, norms | dpart, dg
        "preprocess": (lambda: tuple(preprocess_fused(x, contracts)), [x], 3, 1),  # one output per contract | dx
        "eta_step": (lambda: eta_step(x0, ep, 0.8, 0.6, 0.5, seed=1, offset=0), [x0, ep], 1, 2),  # x | dx0, deps
        "eta_step[B]": (lambda: eta_step(x0, ep, 0.8, 0.6, eta, seed=1, offset=0), [x0, ep, eta], 1, 3),  # + [3, B, NC]
        "cosine_head": (lambda: cosine_head(a, t, 100.0), [a, t], 2, 2),  # y, stats | da, dt
        "weight_l2": (lambda: weight_l2(ps, rs, 0.1, accumulate_grad=False), ps, 1, 2),  # partials | flat ∂θ, partials
    }


@pytest.mark.parametrize("op", ["grad_combine", "preprocess", "eta_step", "eta_step[B]", "cosine_head", "weight_l2"])
def test_a_launch_is_sync_free_copy_free_and_allocates_only_outputs(stubs, op):
    fwd, inputs, n_fwd, n_bwd = _cases()[op]
    warm = fwd()  # first call: plans, chunk layouts and tables are built and cached
    warm = warm if isinstance(warm, tuple) else (warm,)
    torch.autograd.grad(warm, inputs, [torch.ones_like(o) for o in warm])
    stubs.clear()
    with Record() as rec:
        out = fwd()
    assert stubs, "the kernels were not launched"
    outs = [o for o in (out if isinstance(out, tuple) else (out,))]
    allowed_fwd = {"weight_l2": ["aten.sum.default"]}.get(op, [])  # the chunk partials' sum is the loss
    assert rec.other() == allowed_fwd, f"{op} forward ran {rec.other()} besides its kernels"
    assert rec.allocs() == n_fwd, f"{op} forward allocated {rec.allocs()} tensors: {rec.ops}"
    ups = [torch.randn_like(o) for o in outs]
    with Record() as rec:
        torch.autograd.grad(outs, inputs, ups)
    allowed_bwd = {"eta_step[B]": ["aten.sum.dim_IntList"]}.get(op, [])  # [3, B, NC] -> [3, B] ∂α, ∂σ, ∂η
    assert rec.other() == allowed_bwd, f"{op} backward ran {rec.other()} besides its kernels"
    assert rec.allocs() == n_bwd, f"{op} backward allocated {rec.allocs()} tensors: {rec.ops}"


def test_weight_l2_accumulate_is_sync_free_and_reuses_its_table(stubs):
    ps = [torch.randn(s).to(DEVICE).requires_grad_(True) for s in ((1000,), (30, 7), (5,))]
    rs = [torch.randn(s).to(DEVICE) for s in ((1000,), (30, 7), (5,))]
    for p in ps:
        p.grad = torch.zeros_like(p)
    weight_l2(ps, rs, 0.1)
    tables = len(MOD["weight_l2"]._TABLE_CACHE)
    with Record() as rec:
        weight_l2(ps, rs, 0.1)
    assert rec.other() == ["aten.sum.default"] and rec.allocs() == 1  # the partial sums
    assert len(MOD["weight_l2"]._TABLE_CACHE) == tables  # same pointers: the cached table, no new copy


# --------------------------------------------------------------------------- no recompilation at the real shapes
def test_constexprs_do_not_change_across_the_real_shapes(stubs, monkeypatch):
    """Block sizes and flags are the same for every real shape of an op, so Triton compiles each kernel once
    (sizes go in as runtime arguments). Shapes as on the GPU: the interpreter's larger blocks are switched off."""
    common = sys.modules["r0kit.kernels._common"]
    monkeypatch.setattr(common, "interpreter_enabled", lambda: False)
    monkeypatch.setattr(MOD["preprocess"], "interpreter_enabled", lambda: False)
    monkeypatch.setattr(MOD["cosine_head"], "interpreter_enabled", lambda: False)
    monkeypatch.setattr(MOD["weight_l2"], "interpreter_enabled", lambda: False)
    hps = RewardContract(crop="pad")
    pick = RewardContract(crop_offset="floor", mean=CLIP_MEAN, std=CLIP_STD)
    with torch.no_grad():
        for B in (1, 4, 8):  # R0's and ReNO's images: 512²
            for n in (2, 4, 5):
                grad_combine([torch.empty(B, 3, 512, 512, device=DEVICE) for _ in range(n)], [1.0] * n)
            preprocess_fused(torch.empty(B, 3, 512, 512, device=DEVICE), [RewardContract(), hps, pick])
        for B in (1, 2, 4, 8, 16):  # latents
            for R in (64, 128):
                z = torch.empty(B, 4, R, R, device=DEVICE)
                eta_step(z, z, 0.8, 0.6, 0.5, seed=0)
        for B in (1, 4, 16):
            cosine_head(torch.empty(B, 1024, device=DEVICE), torch.empty(B, 1024, device=DEVICE), 100.0)
    variants: dict[str, set] = {}
    for name, kw in stubs:
        variants.setdefault(name, set()).add(tuple(sorted((k, str(v)) for k, v in kw.items())))
    assert variants and all(len(v) == 1 for v in variants.values()), {k: v for k, v in variants.items() if len(v) > 1}


# --------------------------------------------------------------------------- torch.compile: no graph break
def _recording_backend(graphs):
    from torch._dynamo.backends.common import aot_autograd

    def compiler(name):
        def fn(gm, example_inputs):
            graphs.append((name, {str(n.target) for n in gm.graph.nodes if n.op == "call_function"}))
            return gm.forward

        return fn

    return aot_autograd(fw_compiler=compiler("forward"), bw_compiler=compiler("backward"))


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("op", ["grad_combine", "preprocess", "eta_step[B]", "cosine_head", "weight_l2"])
def test_ops_compile_in_one_graph(monkeypatch, backend, op):
    """fullgraph=True fails on any graph break. On the Triton path the kernels are custom ops
    (``torch.ops.r0kit.*``) in the forward and backward graphs; values and gradients equal eager."""
    monkeypatch.setenv("R0KIT_KERNELS", backend)
    torch._dynamo.reset()
    fwd, inputs, _, _ = _cases()[op]
    eager = fwd()
    eager = eager if isinstance(eager, tuple) else (eager,)
    ups = [torch.randn_like(o) for o in eager]
    want = torch.autograd.grad(eager, inputs, ups)
    graphs: list = []
    got_out = torch.compile(fwd, fullgraph=True, backend=_recording_backend(graphs))()
    got_out = got_out if isinstance(got_out, tuple) else (got_out,)
    got = torch.autograd.grad(got_out, inputs, ups)
    for a, b in zip(got_out + got, eager + want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    ops = {name: targets for name, targets in graphs}
    assert set(ops) == {"forward", "backward"}
    if backend == "triton":
        for name in ("forward", "backward"):
            assert any(t.startswith("r0kit.") for t in ops[name]), f"no r0kit custom op in the {name} graph: {ops[name]}"
    else:
        assert not any(t.startswith("r0kit.") for g in ops.values() for t in g)


def test_weight_l2_accumulate_compiles_in_one_graph(monkeypatch):
    monkeypatch.setenv("R0KIT_KERNELS", "triton")
    torch._dynamo.reset()
    ps = [torch.randn(5, device=DEVICE, requires_grad=True), torch.randn(3, 3, device=DEVICE, requires_grad=True)]
    ps[0].grad = torch.ones(5, device=DEVICE)
    qs = [p.detach().clone().requires_grad_(True) for p in ps]
    qs[0].grad = torch.ones(5, device=DEVICE)
    rs = [torch.randn(5, device=DEVICE), torch.randn(3, 3, device=DEVICE)]
    loss = torch.compile(lambda a, b: weight_l2([a, b], rs, 0.1), fullgraph=True, backend="aot_eager")(*ps)
    want = weight_l2(qs, rs, 0.1)
    torch.testing.assert_close(loss, want)
    for p, q in zip(ps, qs):
        torch.testing.assert_close(p.grad, q.grad)
