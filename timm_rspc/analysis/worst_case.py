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
        steps: int, lr: float, batch_size: int = 64, eval_every: int = 10,
) -> Tuple[PatchCorruptionModel, Dict]:
    """Train a fresh C against frozen ``model`` for ``steps`` Adam steps on random batches of ``images`` (pixels);
    C sees them normalised by the model's own normalisation, as in RSPC training.

    The objective is stochastic (random batches and noise through a straight-through estimator), so a step can lower
    it. C is therefore scored every ``eval_every`` steps on one fixed batch with fixed noise, and the best C, the
    initial one included, is returned: the fitted objective is never below the starting one. ``fill(images, keep,
    generator)`` corrupts the patches ``keep`` marks 0. Returns C and its history: the objective on the fixed batch
    at the start and for the C returned, the step it came from, and every evaluation.
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
    fixed = images[:batch_size]
    try:
        paired = RSPCTrainableModule(model, PairedBlockDistance(model.model))

        def align_loss(clean: torch.Tensor, noise_generator: torch.Generator) -> torch.Tensor:
            # C scores the normalised image, as in RSPC training; the noise goes into the pixels.
            scores = corruption.score(model.normalize(clean))
            # Centred per image: the mask (a ranking) is unchanged, but the gradient's common part, which pushes
            # every score down at once against a frozen model until they tie, is projected out.
            keep = top_rho_straight_through(scores - scores.mean(1, keepdim=True), ratio)
            return paired(clean, fill(clean, keep, noise_generator))[1]

        def objective() -> float:
            with torch.no_grad():
                fixed_noise = torch.Generator(device=generator.device).manual_seed(seed)
                return align_loss(fixed, fixed_noise).item()

        best = (objective(), 0, {k: v.clone() for k, v in corruption.state_dict().items()})
        evaluations = [(0, best[0])]
        for step in range(1, steps + 1):
            pick = torch.randint(0, images.shape[0], (batch_size,), generator=generator, device=generator.device)
            loss = align_loss(images[pick.to(images.device)], generator)
            optimizer.zero_grad()
            (-loss).backward()  # ascend: find the patches that change the features most
            optimizer.step()
            if step % eval_every == 0 or step == steps:
                evaluations.append((step, objective()))
                if evaluations[-1][1] > best[0]:
                    best = (evaluations[-1][1], step, {k: v.clone() for k, v in corruption.state_dict().items()})
        corruption.load_state_dict(best[2])
    finally:
        for p, requires_grad in zip(model.parameters(), trainable):
            p.requires_grad_(requires_grad)
    return corruption, {'align_loss_start': evaluations[0][1], 'align_loss_end': best[0], 'best_step': best[1],
                        'evaluations': [list(e) for e in evaluations]}
