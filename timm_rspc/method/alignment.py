"""The feature alignment loss of RSPC: how far a block's features on corrupted images are from those on clean ones.

The backbone runs once on the paired batch ``cat([corrupted, clean])``. For every captured block, the distance is the
mean squared error between the first half (corrupted) and the second half (clean) of its output, with neither side
detached: the clean features move towards the corrupted ones as well. ``L_align`` is the mean over the blocks
(with the authors' normaliser, see `mean_over_blocks`).
"""
from typing import Sequence

import torch

from timm_rspc.kernels import register_reference, use_kernels

__all__ = ['paired_mse', 'mean_over_blocks', 'AUTHORS_BLOCK_COUNT_EPS']

AUTHORS_BLOCK_COUNT_EPS = 1e-4


def paired_mse(features: torch.Tensor) -> torch.Tensor:
    """MSE between the two halves (corrupted, clean) of a paired batch's features, computed in float32.

    On CUDA with Triton installed this is one fused kernel (`timm_rspc.kernels.paired_distance`), equal up to the order
    of the float32 summation; ``TIMM_RSPC_KERNELS=0`` keeps the PyTorch composition below.
    """
    batch = features.shape[0]
    if batch % 2:
        raise ValueError(
            f'Paired features need an even batch (corrupted half, clean half), got a batch of {batch}.')
    if use_kernels(features, 'paired_distance'):
        from timm_rspc.kernels.paired_distance import fused_paired_mse
        return fused_paired_mse(features)
    return _PairedMSE.apply(features)


# The kernel's self-check and fallback compare with / run this function (the kernels layer imports nothing above it).
register_reference('paired_distance', paired_mse=paired_mse)


class _PairedMSE(torch.autograd.Function):
    """``mse_loss(features[:B].float(), features[B:].float())`` with a cheaper backward.

    Through autograd, the two slices would each get a zero-filled gradient of the whole paired batch, added together
    and then into the block's gradient: per block, two image-batch-sized fills, two copies and an extra sum. Here the
    backward writes the one gradient of the paired batch directly (``+-2 (a - b) / n``), recomputing ``a - b`` from
    the saved block output (which autograd keeps anyway) instead of keeping a difference tensor per block.
    """

    @staticmethod
    def forward(ctx, features: torch.Tensor) -> torch.Tensor:
        half = features.shape[0] // 2
        diff = (features[:half].float() - features[half:].float()).flatten()
        ctx.save_for_backward(features)
        return torch.dot(diff, diff) / diff.numel()

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor) -> torch.Tensor:
        features, = ctx.saved_tensors
        half = features.shape[0] // 2
        grad_half = features[:half].float() - features[half:].float()
        grad_half.mul_(grad_loss * (2. / grad_half.numel()))
        grad = torch.empty_like(features)
        grad[:half] = grad_half
        torch.neg(grad_half, out=grad_half)
        grad[half:] = grad_half
        return grad


def mean_over_blocks(distances: Sequence[torch.Tensor], eps: float = AUTHORS_BLOCK_COUNT_EPS) -> torch.Tensor:
    """``L_align``: the sum of the per-block distances divided by ``number of blocks + eps``.

    ``eps = 1e-4`` is the authors' normaliser (a guard against zero blocks in their code); it keeps ``L_align`` and its
    gradients identical to theirs to float32 precision, and differs from the plain mean (``eps=0``) by a factor
    ``1 - 1e-4 / num_blocks`` (``1 - 8e-6`` for 12 blocks). An empty selection is an error here rather than a zero.
    """
    if not distances:
        raise ValueError('No block distances were recorded: did the captured blocks run in this forward pass?')
    total = distances[0] if len(distances) == 1 else torch.stack(list(distances)).sum()
    return total / (len(distances) + eps)
