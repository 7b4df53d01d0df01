"""Fused ops for the hot reward-gradient and regularization math.

Each op lives in one module with its Triton kernels (forward and backward), a
pure-torch reference, a ``torch.autograd.Function`` and the host launcher; the
functions exported here dispatch between kernel and reference (see
:mod:`r0kit.kernels._dispatch`, env var ``R0KIT_KERNELS=auto|triton|torch``).

Importing this package never requires Triton: the kernels are defined only
when it imports, and a forced ``triton`` backend without it raises
:class:`KernelBackendError` naming the fix.
"""

from r0kit.kernels._dispatch import KernelBackendError, select_backend, triton_available
from r0kit.kernels.cosine_head import cosine_head, cosine_head_reference
from r0kit.kernels.eta_step import eta_noise, eta_step, eta_step_reference
from r0kit.kernels.grad_combine import grad_combine, grad_combine_reference
from r0kit.kernels.preprocess import preprocess_fused, preprocess_reference
from r0kit.kernels.weight_l2 import weight_l2, weight_l2_reference

__all__ = [
    "KernelBackendError",
    "cosine_head",
    "cosine_head_reference",
    "eta_noise",
    "eta_step",
    "eta_step_reference",
    "grad_combine",
    "grad_combine_reference",
    "preprocess_fused",
    "preprocess_reference",
    "select_backend",
    "triton_available",
    "weight_l2",
    "weight_l2_reference",
]
