"""The feature alignment loss of RSPC: how far a block's features on corrupted images are from those on clean ones.

The backbone runs once on the paired batch ``cat([corrupted, clean])``. For every captured block, the distance is the
mean squared error between the first half (corrupted) and the second half (clean) of its output, with neither side
detached: the clean features move towards the corrupted ones as well. ``L_align`` is the mean over the blocks.
"""
from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ['paired_mse', 'mean_over_blocks']


def paired_mse(features: torch.Tensor) -> torch.Tensor:
    """MSE between the two halves (corrupted, clean) of a paired batch's features, computed in float32."""
    batch = features.shape[0]
    if batch % 2:
        raise ValueError(
            f'Paired features need an even batch (corrupted half, clean half), got a batch of {batch}.')
    half = batch // 2
    return F.mse_loss(features[:half].float(), features[half:].float())


def mean_over_blocks(distances: Sequence[torch.Tensor]) -> torch.Tensor:
    """``L_align``: the plain mean of the per-block distances.

    The authors divide the sum by ``num_blocks + 1e-4`` (a guard against zero blocks); that scales the loss and its
    gradients by ``1 - 1e-4 / num_blocks`` (``1 - 8e-6`` for 12 blocks), a difference without effect on training, so
    the exact mean is used here and an empty selection is an error instead.
    """
    if not distances:
        raise ValueError('No block distances were recorded: did the captured blocks run in this forward pass?')
    if len(distances) == 1:
        return distances[0]
    return torch.stack(list(distances)).mean()
