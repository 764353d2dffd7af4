"""Robustness to patch-noise occlusion: accuracy and true-class confidence when a fraction of patches is noise.

Two ways of choosing the patches, both occluding the same number per image:

- random: a fixed random subset per image (the paper's sensitivity study, 10% of the patches, mask kept fixed);
- worst case: a patch corruption model (RSPC's C) fitted against the frozen model under test to maximise the
  feature distortion, i.e. the patches this model is most sensitive to. Each model gets its own attacker with the
  same budget, so the comparison is fair.

Occluded patches are filled with uniform noise in pixel space ([0, 1] per channel, then normalised like the
images). All randomness comes from explicit seeds.
"""
from dataclasses import dataclass
from typing import Dict, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class OcclusionScores:
    accuracy: float      # top-1, percent
    confidence: float    # mean softmax probability of the true class, percent


def patch_grid(model: nn.Module) -> Tuple[Tuple[int, int], int]:
    """``(grid_size, patch_size)`` of a timm ViT-like model, read from its patch embedding."""
    patch_embed = getattr(model, 'patch_embed', None)
    if patch_embed is None or not hasattr(patch_embed, 'grid_size'):
        raise ValueError(f'{type(model).__name__} has no patch grid (patch_embed.grid_size).')
    patch_size = patch_embed.patch_size
    return tuple(patch_embed.grid_size), patch_size[0] if isinstance(patch_size, (tuple, list)) else patch_size


def num_occluded(grid_size: Tuple[int, int], ratio: float) -> int:
    return max(1, int(round(ratio * grid_size[0] * grid_size[1])))


def random_keep_masks(count: int, grid_size: Tuple[int, int], ratio: float, generator: torch.Generator) -> torch.Tensor:
    """(count, 1, gh, gw) masks, 1 = keep, with exactly ``num_occluded`` zeros per image at random places."""
    num_patches = grid_size[0] * grid_size[1]
    order = torch.rand(count, num_patches, generator=generator).argsort(dim=1)
    keep = torch.ones(count, num_patches)
    keep.scatter_(1, order[:, :num_occluded(grid_size, ratio)], 0.)
    return keep.view(count, 1, *grid_size)


def occlude(images: torch.Tensor, keep: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Replace the patches where ``keep`` (patch grid) is 0 by ``noise`` (same shape as ``images``)."""
    scale = images.shape[-1] // keep.shape[-1]
    keep_pixels = F.interpolate(keep, scale_factor=scale, mode='nearest')
    return keep_pixels * images + (1 - keep_pixels) * noise


def normalized_noise(shape, mean, std, generator: torch.Generator) -> torch.Tensor:
    """Uniform [0, 1) pixel noise expressed in the model's normalised input space."""
    mean = torch.tensor(mean).view(1, -1, 1, 1)
    std = torch.tensor(std).view(1, -1, 1, 1)
    return (torch.rand(shape, generator=generator) - mean) / std


@torch.inference_mode()
def score(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, batch_size: int = 256) -> OcclusionScores:
    model.eval()
    correct, confidence = 0., 0.
    for start in range(0, images.shape[0], batch_size):
        logits = model(images[start:start + batch_size])
        target = targets[start:start + batch_size]
        correct += (logits.argmax(-1) == target).sum().item()
        confidence += logits.softmax(-1).gather(1, target[:, None]).sum().item()
    n = images.shape[0]
    return OcclusionScores(accuracy=100. * correct / n, confidence=100. * confidence / n)


def evaluate_random_occlusion(
        model: nn.Module, images: torch.Tensor, targets: torch.Tensor, ratio: float, mean, std,
        seed: int, repeats: int = 3,
) -> OcclusionScores:
    """Mean scores over ``repeats`` draws of fixed random masks and noise (same draws for every model)."""
    grid_size, _ = patch_grid(model)
    generator = torch.Generator().manual_seed(seed)
    runs = []
    for _ in range(repeats):
        keep = random_keep_masks(images.shape[0], grid_size, ratio, generator)
        noise = normalized_noise(images.shape, mean, std, generator)
        runs.append(score(model, occlude(images, keep, noise), targets))
    return OcclusionScores(
        accuracy=sum(r.accuracy for r in runs) / repeats, confidence=sum(r.confidence for r in runs) / repeats)


def evaluate_worst_case_occlusion(
        model: nn.Module, images: torch.Tensor, targets: torch.Tensor, fit_images: torch.Tensor, ratio: float,
        mean, std, seed: int, steps: int, lr: float, batch_size: int = 64,
) -> Tuple[OcclusionScores, Dict[str, float]]:
    """Fit a corruption model against the frozen ``model`` on ``fit_images``, then score ``images`` occluded where
    it points. Returns the scores and the attacker's alignment loss before / after fitting."""
    from .worst_case import fit_corruption_model, corruption_keep_masks
    generator = torch.Generator().manual_seed(seed)
    corruption, history = fit_corruption_model(
        model, fit_images, ratio, mean, std, generator, steps=steps, lr=lr, batch_size=batch_size)
    keep = corruption_keep_masks(corruption, images, batch_size=256)
    noise = normalized_noise(images.shape, mean, std, generator)
    return score(model, occlude(images, keep, noise), targets), history
