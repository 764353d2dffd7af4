"""Worst-case patches for a frozen model: RSPC's patch corruption model, fitted to maximise feature distortion.

The attacker is the method's corruption model C (patch scores -> top-rho binarisation with a straight-through
estimator), trained by gradient ascent on RSPC's own objective: the alignment loss between clean and corrupted
features over the blocks RSPC aligns by default, measured by the same paired forward as in training. Any
patch-based timm model can be attacked, trained with RSPC or not; each gets a fresh C with the same budget.
"""
from typing import Callable, Dict, Tuple

import torch

from timm_rspc.method import (
    PairedBlockDistance, PatchCorruptionModel, RSPCTrainableModule, find_patch_grid, top_rho_straight_through,
)

from .pixel_model import PixelModel

__all__ = ['fit_corruption_model']


def fit_corruption_model(
        model: PixelModel, images: torch.Tensor, ratio: float, fill: Callable, generator: torch.Generator,
        steps: int, lr: float, batch_size: int = 64,
) -> Tuple[PatchCorruptionModel, Dict[str, float]]:
    """Train a fresh C against frozen ``model`` for ``steps`` Adam steps on random batches of ``images`` (pixels);
    C sees them normalised by the model's own normalisation, as in RSPC training.

    ``fill(images, keep, generator)`` corrupts the patches ``keep`` marks 0. Returns C and its alignment loss at the
    first step (C at initialisation) and averaged over the last fifth of the steps.
    """
    if steps < 1:
        raise ValueError(f'The worst-case attacker needs at least one step, got {steps}.')
    img_size, patch_size = find_patch_grid(model.model, model.img_size)
    seed = int(torch.randint(0, 2 ** 31 - 1, (1,), generator=generator, device=generator.device))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        corruption = PatchCorruptionModel(img_size, patch_size, in_chans=images.shape[1], ratio=ratio)
    corruption.to(images.device)
    optimizer = torch.optim.Adam(corruption.parameters(), lr=lr)
    model.eval()
    trainable = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    losses = []
    try:
        paired = RSPCTrainableModule(model, PairedBlockDistance(model.model))
        for _ in range(steps):
            pick = torch.randint(0, images.shape[0], (batch_size,), generator=generator, device=generator.device)
            clean = images[pick.to(images.device)]
            # C scores the normalised image, as in RSPC training; the noise goes into the pixels.
            scores = corruption.score(model.normalize(clean))
            # Centred per image: the mask (a ranking) is unchanged, but the gradient's common part, which pushes
            # every score down at once against a frozen model until they tie, is projected out.
            keep = top_rho_straight_through(scores - scores.mean(1, keepdim=True), ratio)
            _, align_loss = paired(clean, fill(clean, keep, generator))
            optimizer.zero_grad()
            (-align_loss).backward()  # ascend: find the patches that change the features most
            optimizer.step()
            losses.append(align_loss.detach())
    finally:
        for p, requires_grad in zip(model.parameters(), trainable):
            p.requires_grad_(requires_grad)
    tail = torch.stack(losses[-max(1, steps // 5):]).mean()
    return corruption, {'align_loss_start': losses[0].item(), 'align_loss_end': tail.item()}
