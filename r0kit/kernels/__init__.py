"""Fused ops for the hot reward-gradient and regularization math.

Each op has a pure-torch reference, a Triton kernel and an autograd.Function
beside each other in one module; the functions exported here dispatch.
"""

from r0kit.kernels.grad_combine import grad_combine

__all__ = ["grad_combine"]
