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
from typing import Dict, Sequence, Tuple

import torch
import torch.nn as nn

from timm_rspc.method import blend_noise, draw_noise, find_patch_grid, normalized_pixel_range, patch_mask_to_pixels


@dataclass
class OcclusionScores:
    accuracy: float      # top-1, percent
    confidence: float    # mean softmax probability of the true class, percent


def patch_grid(model: nn.Module) -> Tuple[Tuple[int, int], int]:
    """``(grid_size, patch_size)`` of a patch-based timm model (RSPC's own patch-grid discovery)."""
    img_size, patch_size = find_patch_grid(model)
    return (img_size[0] // patch_size, img_size[1] // patch_size), patch_size


def num_occluded(grid_size: Tuple[int, int], ratio: float) -> int:
    """Patches RSPC's corruption model occludes at ``ratio``: those below the ratio-quantile of N distinct scores."""
    return int(ratio * (grid_size[0] * grid_size[1] - 1)) + 1


def random_keep_masks(count: int, grid_size: Tuple[int, int], ratio: float, generator: torch.Generator) -> torch.Tensor:
    """(count, N) patch masks, 1 = keep, with exactly ``num_occluded`` zeros per image at random places."""
    num_patches = grid_size[0] * grid_size[1]
    order = torch.rand(count, num_patches, generator=generator).argsort(dim=1)
    keep = torch.ones(count, num_patches)
    keep.scatter_(1, order[:, :num_occluded(grid_size, ratio)], 0.)
    return keep


class PatchNoise:
    """Fills the patches a mask marks 0 with uniform [0, 1) pixel noise, in the model's normalised input space."""

    def __init__(self, grid_size: Tuple[int, int], patch_size: int, mean: Sequence[float], std: Sequence[float]):
        self.grid_size, self.patch_size = grid_size, patch_size
        self.lower, self.upper = normalized_pixel_range(mean, std)

    def __call__(self, images: torch.Tensor, keep: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        noise = draw_noise(images, 'pixel', self.lower, self.upper, generator=generator)
        pixel_keep = patch_mask_to_pixels(keep, self.grid_size, self.patch_size)
        return blend_noise(images, pixel_keep, noise, self.lower, self.upper)


@torch.inference_mode()
def score(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, batch_size: int = 256) -> OcclusionScores:
    model.eval()
    correct = torch.zeros((), dtype=torch.float64)
    confidence = torch.zeros((), dtype=torch.float64)
    for start in range(0, images.shape[0], batch_size):
        logits = model(images[start:start + batch_size])
        target = targets[start:start + batch_size]
        correct += (logits.argmax(-1) == target).sum()
        confidence += logits.softmax(-1).gather(1, target[:, None]).sum()
    n = images.shape[0]
    return OcclusionScores(accuracy=100. * correct.item() / n, confidence=100. * confidence.item() / n)


def evaluate_random_occlusion(
        model: nn.Module, images: torch.Tensor, targets: torch.Tensor, ratio: float, mean, std,
        seed: int, repeats: int = 3,
) -> OcclusionScores:
    """Mean scores over ``repeats`` draws of fixed random masks and noise (the same draws for every model)."""
    grid_size, patch_size = patch_grid(model)
    fill = PatchNoise(grid_size, patch_size, mean, std)
    generator = torch.Generator().manual_seed(seed)
    runs = []
    for _ in range(repeats):
        keep = random_keep_masks(images.shape[0], grid_size, ratio, generator)
        runs.append(score(model, fill(images, keep, generator), targets))
    return OcclusionScores(
        accuracy=sum(r.accuracy for r in runs) / repeats, confidence=sum(r.confidence for r in runs) / repeats)


def evaluate_worst_case_occlusion(
        model: nn.Module, images: torch.Tensor, targets: torch.Tensor, fit_images: torch.Tensor, ratio: float,
        mean, std, seed: int, steps: int, lr: float, batch_size: int = 64,
) -> Tuple[OcclusionScores, Dict[str, float]]:
    """Fit a corruption model against the frozen ``model`` on ``fit_images``, then score ``images`` occluded where
    it points. Returns the scores and the attacker's alignment loss before / after fitting."""
    from .worst_case import corruption_keep_masks, fit_corruption_model
    grid_size, patch_size = patch_grid(model)
    fill = PatchNoise(grid_size, patch_size, mean, std)
    generator = torch.Generator().manual_seed(seed)
    corruption, history = fit_corruption_model(
        model, fit_images, ratio, fill, generator, steps=steps, lr=lr, batch_size=batch_size)
    keep = corruption_keep_masks(corruption, images)
    history['distinct_masks'] = torch.unique(keep, dim=0).shape[0]  # 1: C settled on fixed positions
    history['occluded_per_patch'] = (1 - keep).sum(0).tolist()
    return score(model, fill(images, keep, generator), targets), history
