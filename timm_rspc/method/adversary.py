"""The adversary of RSPC for one model: the corruption model C sized for its patch grid, the noise blend in its input
normalisation, and C's own optimiser, all configured by `RSPCSettings`.

Shared by `RSPCTask` and `RSPCHook`, which differ only in how the paired forward pass is driven.
"""
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.data import resolve_data_config
from timm.utils import unwrap_model

from .capture import find_patch_grid
from .corruption import AdversarialPatchCorruption, PatchCorruptionModel
from .corruption_optimizer import CorruptionOptimizer
from .settings import RSPCSettings

__all__ = ['create_adversary', 'resolve_mean_std']


def resolve_mean_std(
        model: nn.Module,
        mean: Optional[Sequence[float]] = None,
        std: Optional[Sequence[float]] = None,
        data_config: Optional[Dict[str, Any]] = None,
) -> Tuple[Tuple[float, ...], Tuple[float, ...], Dict[str, Any]]:
    """The input normalisation (mean, std) of ``model``: explicit values, else timm's data config of the model."""
    config = resolve_data_config(dict(data_config or {}), model=unwrap_model(model))
    mean = tuple(float(v) for v in (mean if mean is not None else config['mean']))
    std = tuple(float(v) for v in (std if std is not None else config['std']))
    return mean, std, config


def create_adversary(
        model: nn.Module,
        settings: RSPCSettings,
        *,
        mean: Optional[Sequence[float]] = None,
        std: Optional[Sequence[float]] = None,
        img_size: Union[None, int, Sequence[int]] = None,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
) -> Tuple[AdversarialPatchCorruption, CorruptionOptimizer]:
    """C for ``model`` with its noise blend and its optimiser.

    ``mean`` / ``std`` (default: timm's data config of the model) set the range corrupted images are clamped to;
    ``img_size`` (the training resolution; default: the model's) and ``settings.patch_size`` (default: the model's
    own or 16 px, see `find_patch_grid`) set C's patch grid; C is created on ``device`` with ``dtype``.
    """
    mean, std, _ = resolve_mean_std(model, mean, std)
    img_size, patch_size = find_patch_grid(model, img_size, settings.patch_size)
    corruption_model = PatchCorruptionModel(
        img_size, patch_size, in_chans=len(mean), ratio=settings.ratio, device=device, dtype=dtype)
    corruption = AdversarialPatchCorruption(corruption_model, mean, std, noise=settings.noise)
    return corruption, CorruptionOptimizer(corruption_model, settings)
