from __future__ import annotations

import pytest
import torch

from r0kit.errors import InputError
from r0kit.kernels import cosine_head, cosine_head_reference


from kt_helpers import DTYPES, close, leaf, twin


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 16), (3, 37), (8, 512), (5, 1000)], ids=str)
@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_forward_and_backward_match_reference(triton_backend, device, dtype, shape, scale):
    gen = torch.Generator().manual_seed(shape[1])
    a, t = leaf(shape, dtype, device, gen=gen), leaf(shape, dtype, device, gen=gen)
    ra, rt = twin(a), twin(t)
    y = cosine_head(a, t, scale)
    r = cosine_head_reference(ra, rt, scale)
    assert y.shape == (shape[0],) and y.dtype == dtype
    close(y, r, "reduction", dtype, scale=scale, msg="score")
    gy = (torch.randn(shape[0], generator=gen) * 2.0).to(device=device, dtype=dtype)
    y.backward(gy)
    r.backward(gy.float())
    close(a.grad, ra.grad, "reduction", dtype, scale=scale, msg="d img_emb")
    close(t.grad, rt.grad, "reduction", dtype, scale=scale, msg="d txt_emb")


def test_zero_embedding_matches_reference(triton_backend, device):
    a = torch.zeros(2, 8, device=device)
    a[1] = torch.arange(8.0)
    a.requires_grad_(True)
    t = torch.randn(2, 8, device=device, requires_grad=True)
    ra, rt = twin(a), twin(t)
    cosine_head(a, t, 2.0).sum().backward()
    cosine_head_reference(ra, rt, 2.0).sum().backward()
    close(a.grad, ra.grad, "reduction", torch.float32)
    close(t.grad, rt.grad, "reduction", torch.float32)


def test_gradcheck_reference_float64():
    a = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    t = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, y: cosine_head_reference(x, y, 3.0), (a, t))


def test_bad_input_errors():
    with pytest.raises(InputError, match="expand"):
        cosine_head(torch.ones(2, 4), torch.ones(1, 4))
    with pytest.raises(InputError, match="floating-point"):
        cosine_head(torch.ones(2, 4, dtype=torch.int32), torch.ones(2, 4, dtype=torch.int32))
    with pytest.raises(InputError, match="cast"):
        cosine_head(torch.ones(2, 4), torch.ones(2, 4, dtype=torch.float64))
