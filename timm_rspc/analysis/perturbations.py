"""The perturbations of the sensitivity analysis, each restricted to a set of patches per image.

Every perturbation works on pixels in [0, 1] and is *bound* to one model before use (``bind(model)``): PGD needs the
model's gradients and the worst-case attacker fits a corruption model against it. A bound perturbation is called as
``perturb(pixels, targets, keep, generator)`` with ``keep`` the (B, N) patch mask (1 = leave alone, 0 = perturb) and
returns the perturbed pixels; pixels outside the perturbed patches come back bit-identical.

- `NoiseOcclusion`: uniform [0, 1) pixel noise in the patches, RSPC's corruption (the method's noise draw and blend).
- `PatchPGD`: L_inf projected gradient ascent on the cross-entropy, the perturbation confined to the patches, to the
  budget and to the valid pixel range.
- `PatchCorruption`: one of the common corruptions of `corruptions`, kept only inside the patches.
- `WorstCasePatches`: uniform noise in the patches a corruption model fitted against the frozen model scores lowest
  (it ignores ``keep``: the attacker picks its own patches, exactly as many).
"""
import hashlib
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from timm_rspc.method import blend_noise, draw_noise, find_patch_grid, patch_mask_to_pixels

from .corruptions import CORRUPTIONS, corrupt
from .masks import num_occluded
from .pixel_model import PixelModel

__all__ = [
    'NoiseOcclusion', 'PatchPGD', 'PatchCorruption', 'WorstCasePatches', 'patch_grid', 'shared_patch_grid',
    'batch_generator', 'pixel_keep_mask', 'occlude_with_noise',
]

BoundPerturbation = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Generator]], torch.Tensor]


def patch_grid(model: PixelModel) -> Tuple[Tuple[int, int], int]:
    """``(grid_size, patch_size)`` of the patches the analyses perturb: the corruption model's patches in training
    (RSPC's own rule, `find_patch_grid`) at the model's input size."""
    img_size, patch_size = find_patch_grid(model.model, model.img_size)
    return (img_size[0] // patch_size, img_size[1] // patch_size), patch_size


def shared_patch_grid(models: Dict[str, PixelModel]) -> Tuple[int, int]:
    """The patch grid all ``models`` share; ValueError when they differ (a paired comparison needs one grid)."""
    grids = {name: patch_grid(model)[0] for name, model in models.items()}
    if len(set(grids.values())) > 1:
        raise ValueError(f'The models have different patch grids {grids}; a paired comparison needs the same patches '
                         'in every model (same input size and patch size).')
    return next(iter(grids.values()))


def batch_generator(stream: str, seed: int, batch_index: int, device=None) -> torch.Generator:
    """The generator of one batch's random draws for one perturbation (``stream``, its name): the same for every
    model, so all see the same noise. The attention analysis draws from the ``noise_occlusion`` stream, so it sees
    exactly the images the sensitivity analysis scores under noise occlusion."""
    digest = hashlib.sha256(f'{stream}/{seed}/{batch_index}'.encode()).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest[:6], 'little'))


def pixel_keep_mask(keep: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """The (B, N) patch mask as a (B, 1, H, W) pixel mask for ``pixels`` (square patches tiling the image)."""
    height, width = pixels.shape[-2:]
    num_patches = keep.shape[1]
    patch_size = int(round((height * width / num_patches) ** 0.5))
    if patch_size < 1 or height % patch_size or width % patch_size or \
            (height // patch_size) * (width // patch_size) != num_patches:
        raise ValueError(f'A mask of {num_patches} patches does not tile {height}x{width} images with square patches.')
    return patch_mask_to_pixels(keep.to(pixels.dtype), (height // patch_size, width // patch_size), patch_size)


def _pixel_range(pixels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    zero = torch.zeros(1, 1, 1, 1, dtype=pixels.dtype, device=pixels.device)
    return zero, zero + 1


def _harm(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per image, how damaging a perturbed image is: misclassified first (+1), then the lower true-class
    probability."""
    probability = logits.float().softmax(-1).gather(1, targets[:, None]).squeeze(1)
    return (logits.argmax(-1) != targets).float() + (1 - probability)


def occlude_with_noise(pixels: torch.Tensor, keep: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    """RSPC's corruption in pixel space: the patches ``keep`` marks 0 become uniform [0, 1) noise."""
    lower, upper = _pixel_range(pixels)
    noise = draw_noise(pixels, 'pixel', lower, upper, generator=generator)
    return blend_noise(pixels, pixel_keep_mask(keep, pixels), noise, lower, upper)


@dataclass(frozen=True)
class NoiseOcclusion:
    name: str = 'noise_occlusion'

    def bind(self, model: PixelModel) -> BoundPerturbation:
        return lambda pixels, targets, keep, generator: occlude_with_noise(pixels, keep, generator)


@dataclass(frozen=True)
class PatchPGD:
    """L_inf PGD (Madry et al.) on the patches: ``steps`` signed-gradient steps of ``step_size`` on the
    cross-entropy of the true class, projected onto ``|delta| <= epsilon`` inside the patches (0 elsewhere) and onto
    the pixel range [0, 1]; a uniform random start in the budget when ``random_start``."""
    epsilon: float = 8 / 255
    step_size: float = 2 / 255
    steps: int = 10
    random_start: bool = True
    name: str = 'pgd'

    def __post_init__(self):
        if self.epsilon <= 0 or self.step_size <= 0 or self.steps < 1:
            raise ValueError(f'PGD needs epsilon > 0, step size > 0 and at least one step, got epsilon '
                             f'{self.epsilon}, step size {self.step_size}, steps {self.steps}.')

    def bind(self, model: PixelModel) -> BoundPerturbation:
        return lambda pixels, targets, keep, generator: self.attack(model, pixels, targets, keep, generator)

    def attack(self, model: PixelModel, pixels: torch.Tensor, targets: torch.Tensor, keep: torch.Tensor,
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
        inside = 1 - pixel_keep_mask(keep, pixels)  # 1 in the patches PGD may change
        pixels = pixels.detach()

        def project(delta: torch.Tensor) -> torch.Tensor:
            delta = delta.clamp(-self.epsilon, self.epsilon) * inside
            return (pixels + delta).clamp(0, 1) - pixels

        delta = torch.zeros_like(pixels)
        if self.random_start:
            start = torch.rand(pixels.shape, generator=generator, dtype=pixels.dtype, device=pixels.device)
            delta = project((2 * start - 1) * self.epsilon)
        was_training = model.training
        model.eval()
        try:
            for _ in range(self.steps):
                delta.requires_grad_(True)
                with torch.enable_grad():
                    loss = F.cross_entropy(model(pixels + delta), targets, reduction='sum')
                    grad, = torch.autograd.grad(loss, delta)
                delta = project(delta.detach() + self.step_size * grad.sign())
        finally:
            model.train(was_training)
        return pixels + delta


@dataclass(frozen=True)
class PatchCorruption:
    """A common corruption (see `corruptions`) at ``severity``, applied to the whole image and kept in the patches."""
    corruption: str
    severity: int = 3

    def __post_init__(self):
        if self.corruption not in CORRUPTIONS:
            raise ValueError(f'Unknown corruption {self.corruption!r}; choose from {", ".join(CORRUPTIONS)}.')
        if self.severity not in range(1, 6):
            raise ValueError(f'The corruption severity must be 1..5 (ImageNet-C levels), got {self.severity}.')

    @property
    def name(self) -> str:
        return self.corruption

    def bind(self, model: PixelModel) -> BoundPerturbation:
        def perturb(pixels, targets, keep, generator):
            corrupted = corrupt(self.corruption, pixels, self.severity, generator)
            return torch.where(pixel_keep_mask(keep, pixels) > 0, pixels, corrupted)
        return perturb


@dataclass
class WorstCasePatches:
    """The worse, per image, of two placements of the same noise: the random patches of the analysis (the
    ``noise_occlusion`` column's images exactly) and the patches a corruption model fitted against the frozen model on
    ``fit_images`` (pixels) scores lowest. "Worse" is misclassified first, then the lower true-class probability, so
    this column's accuracy is never above the random one's. ``fit_history``: the attacker's objective (RSPC's alignment
    loss on a fixed batch) before and after fitting, and ``chosen_fraction`` after evaluation: how often the fitted
    patches were the worse ones."""
    fit_images: torch.Tensor
    ratio: float = 0.1
    steps: int = 60
    lr: float = 0.01
    batch_size: int = 64
    seed: int = 0
    name: str = 'worst_case'
    noise_stream: str = NoiseOcclusion.name  # the random column's noise, so that its images are candidates as they are

    def __post_init__(self):
        self.fit_history = None

    def bind(self, model: PixelModel) -> BoundPerturbation:
        from .worst_case import fit_corruption_model
        generator = torch.Generator(device=self.fit_images.device).manual_seed(self.seed)
        corruption, history = fit_corruption_model(
            model, self.fit_images, self.ratio, occlude_with_noise, generator, steps=self.steps, lr=self.lr,
            batch_size=self.batch_size)
        corruption.requires_grad_(False)
        self.fit_history = history
        chosen_counts = [0, 0]  # images where the fitted patches were the worse ones, images seen
        history['chosen_fraction'] = None

        budget = num_occluded(corruption.grid_size, self.ratio)

        def perturb(pixels, targets, keep, generator):
            lower, upper = _pixel_range(pixels)
            noise = draw_noise(pixels, 'pixel', lower, upper, generator=generator)
            with torch.no_grad():
                scores = corruption.score(model.normalize(pixels))
                # C's lowest-scoring patches, exactly `budget` of them: C's own threshold would take every tied
                # patch (a C whose scores collapse to one value would occlude the whole image).
                lowest = scores.topk(budget, dim=1, largest=False).indices
                fitted = torch.ones_like(scores).scatter_(1, lowest, 0.)
                candidates = [blend_noise(pixels, pixel_keep_mask(k, pixels), noise, lower, upper)
                              for k in (keep, fitted)]
                harm = [_harm(model(c), targets) for c in candidates]
                use_fitted = harm[1] > harm[0]
            chosen_counts[0] += int(use_fitted.sum())
            chosen_counts[1] += pixels.shape[0]
            history['chosen_fraction'] = chosen_counts[0] / chosen_counts[1]
            return torch.where(use_fitted[:, None, None, None], candidates[1], candidates[0])
        return perturb
