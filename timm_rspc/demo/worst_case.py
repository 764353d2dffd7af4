"""Worst-case patches for a frozen model: RSPC's patch corruption model, fitted to maximise feature distortion.

The attacker is the paper's corruption model C (patch scores -> top-rho binarisation with a straight-through
estimator) trained by gradient ascent on the alignment objective, the mean over the model's blocks of the squared
difference between clean and corrupted features. Block features come from timm's ``forward_intermediates``, so any
timm ViT-like model can be attacked, trained with RSPC or not.
"""
from typing import Dict, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .patch_occlusion import normalized_noise, patch_grid


def _new_corruption_model(in_chans: int, patch_size: int, grid_size: Tuple[int, int], ratio: float) -> nn.Module:
    # TEMPORARY: the shim's model until timm_rspc.method is merged; then the method's corruption model.
    from timm_rspc.train._method_shim import PatchCorruptionModel
    return PatchCorruptionModel(in_chans, patch_size, grid_size, ratio)


def _block_features(model: nn.Module, x: torch.Tensor):
    return model.forward_intermediates(x, intermediates_only=True)


def alignment_loss(model: nn.Module, clean: torch.Tensor, corrupted: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        reference = _block_features(model, clean)
    features = _block_features(model, corrupted)
    return torch.stack([F.mse_loss(f, r) for f, r in zip(features, reference)]).mean()


def fit_corruption_model(
        model: nn.Module, images: torch.Tensor, ratio: float, mean, std, generator: torch.Generator,
        steps: int, lr: float, batch_size: int = 64,
) -> Tuple[nn.Module, Dict[str, float]]:
    """Train a fresh corruption model against frozen ``model`` for ``steps`` Adam steps on batches of ``images``.

    Returns the fitted model and its alignment loss at the start (a random C) and over the last steps.
    """
    grid_size, patch_size = patch_grid(model)
    seed = int(torch.randint(0, 2 ** 31 - 1, (1,), generator=generator))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        corruption = _new_corruption_model(images.shape[1], patch_size, grid_size, ratio)
    optimizer = torch.optim.Adam(corruption.parameters(), lr=lr)
    model.eval()
    was_trainable = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    losses = []
    try:
        for _ in range(steps):
            idx = torch.randint(0, images.shape[0], (batch_size,), generator=generator)
            clean = images[idx]
            keep = corruption(clean)
            noise = normalized_noise(clean.shape, mean, std, generator)
            loss = alignment_loss(model, clean, keep * clean + (1 - keep) * noise)
            optimizer.zero_grad()
            (-loss).backward()  # ascend: find the patches that change the features most
            optimizer.step()
            losses.append(loss.detach())
    finally:
        for p, trainable in zip(model.parameters(), was_trainable):
            p.requires_grad_(trainable)
    tail = losses[-max(1, steps // 5):]
    return corruption, {'align_loss_start': losses[0].item(), 'align_loss_end': torch.stack(tail).mean().item()}


@torch.no_grad()
def corruption_keep_masks(corruption: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The fitted model's keep masks on the patch grid, (N, 1, gh, gw)."""
    masks = []
    for start in range(0, images.shape[0], batch_size):
        pixel_keep = corruption(images[start:start + batch_size])
        patch = images.shape[-1] // corruption.grid_size[1]
        masks.append(F.avg_pool2d(pixel_keep, patch))
    return torch.cat(masks).round()
