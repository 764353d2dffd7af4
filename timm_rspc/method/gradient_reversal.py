"""Gradient reversal: identity forward, negated (and optionally scaled) gradient backward.

RSPC trains the corruption model C to *maximise* the feature alignment loss that the backbone minimises. Placing a
reversal on C's output lets one backward pass of ``task_loss + lambda * align_loss`` give the backbone the descent
direction and C the ascent direction, without a second backward or flipping gradients by hand afterwards.
"""
import torch

__all__ = ['reverse_gradient']


class _GradientReversal(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        return grad_output * -ctx.scale, None


def reverse_gradient(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Return ``x`` unchanged; in backward, multiply the incoming gradient by ``-scale``."""
    return _GradientReversal.apply(x, scale)
