"""The feature alignment loss of RSPC: how far a block's features on corrupted images are from those on clean ones.

The backbone runs once on the paired batch ``cat([corrupted, clean])``. For every captured block, the distance is the
mean squared error between the first half (corrupted) and the second half (clean) of its output, with neither side
detached: the clean features move towards the corrupted ones as well. ``L_align`` is the mean over the blocks
(with the authors' normaliser, see `mean_over_blocks`).
"""
from typing import Sequence

import torch
import torch.nn.functional as F

from timm_rspc.kernels import use_kernels

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
    if use_kernels(features):
        from timm_rspc.kernels.paired_distance import fused_paired_mse
        return fused_paired_mse(features)
    half = batch // 2
    return F.mse_loss(features[:half].float(), features[half:].float())


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
