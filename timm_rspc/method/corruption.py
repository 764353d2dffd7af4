"""The patch corruption model C of RSPC and the noise blend that turns its mask into a corrupted image.

C scores every patch of the (normalised) input image and keeps all but the ``ratio`` lowest-scoring ones:

    Conv2d(in_chans -> 1, kernel = stride = patch_size, no bias) -> GELU -> flatten (B, N)
    -> Linear(N, N, no bias) -> straight-through top-rho binarisation -> keep mask (B, N), 1 = keep, 0 = corrupt

The corrupted image is ``clamp(mask * x + (1 - mask) * noise, lower, upper)`` with the mask upsampled to pixels and
``[lower, upper]`` the valid range of a normalised pixel, computed from the model's mean/std. As in the authors' code,
the clamp applies to the blended image, so it also clips clean pixels that augmentation pushed out of range.

C is trained adversarially (it ascends the feature alignment loss); `AdversarialPatchCorruption` bundles it with the
noise draw, the blend and the gradient reversal so that one backward pass trains both C and the backbone.
"""
import math
from typing import NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from timm_rspc.kernels import register_reference, use_kernels

from .gradient_reversal import reverse_gradient
from .settings import NOISE_MODES, RSPCSettings, check_setting

__all__ = [
    'NOISE_MODES', 'PatchCorruptionModel', 'AdversarialPatchCorruption', 'CorruptedBatch',
    'top_rho_straight_through', 'quantile_rank', 'patch_mask_to_pixels', 'normalized_pixel_range', 'draw_noise',
    'blend_noise',
]


def quantile_rank(ratio: float, num_patches: int) -> Tuple[int, float]:
    """Index ``i`` and weight ``w`` with ``torch.quantile(s, ratio) == lerp(sorted(s)[i], sorted(s)[i + 1], w)``.

    Computed in float32 exactly as ``torch.quantile`` does for float32 input (``rank = ratio * (N - 1)``), so that the
    rank-based threshold below reproduces its result bit for bit.
    """
    rank = np.float32(ratio) * np.float32(num_patches - 1)
    below = min(int(rank), num_patches - 1)
    return below, float(rank - np.float32(below))


class _TopRhoStraightThrough(torch.autograd.Function):
    """Forward: 1 for the scores above the per-sample ratio-quantile, else 0. Backward: hardtanh of the gradient."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, ratio: float) -> torch.Tensor:
        below, weight = quantile_rank(ratio, scores.shape[1])
        scores = scores.float()
        # The (below + 2) smallest scores of each sample, sorted: a partial sort instead of torch.quantile's full one.
        smallest = torch.topk(scores, min(below + 2, scores.shape[1]), dim=1, largest=False, sorted=True).values
        upper = smallest[:, min(below + 1, smallest.shape[1] - 1)]
        threshold = torch.lerp(smallest[:, below], upper, weight)
        return (scores > threshold.unsqueeze(1)).float()

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        return grad_output.clamp(-1., 1.), None


def top_rho_straight_through(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """Binarise patch scores (B, N): keep (1.) the patches scoring above the ``ratio``-quantile of their sample.

    Equals the authors' ``(scores > torch.quantile(scores.float(), ratio, dim=1)).float()`` exactly, ties included,
    but finds the threshold with a partial sort (``topk``) and no host-device synchronisation. About ``ratio * N``
    patches get 0 (``floor(ratio * (N - 1)) + 1`` when scores are distinct). The backward is the straight-through
    estimator of the paper: the incoming gradient, clipped to [-1, 1] (hardtanh).
    """
    if scores.ndim != 2:
        raise ValueError(f'Expected patch scores shaped (batch, num_patches), got {tuple(scores.shape)}.')
    return _TopRhoStraightThrough.apply(scores, ratio)


def patch_mask_to_pixels(mask: torch.Tensor, grid_size: Sequence[int], patch_size: int) -> torch.Tensor:
    """Upsample a patch mask (B, N), N = grid_h * grid_w in row-major order, to a pixel mask (B, 1, H, W)."""
    grid_h, grid_w = grid_size
    batch = mask.shape[0]
    return (
        mask.reshape(batch, 1, grid_h, 1, grid_w, 1)
        .expand(batch, 1, grid_h, patch_size, grid_w, patch_size)
        .reshape(batch, 1, grid_h * patch_size, grid_w * patch_size)
    )


def normalized_pixel_range(
        mean: Sequence[float],
        std: Sequence[float],
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Where pixel values 0 and 1 land after ``(x - mean) / std``: (lower, upper), each shaped (1, C, 1, 1)."""
    mean, std = [float(v) for v in mean], [float(v) for v in std]
    if not all(math.isfinite(v) for v in mean + std) or min(std) <= 0:
        raise ValueError(f'mean and std must be finite numbers, std positive, got mean={mean}, std={std}.')
    mean_t = torch.as_tensor(mean, device=device, dtype=dtype).reshape(1, -1, 1, 1)
    std_t = torch.as_tensor(std, device=device, dtype=dtype).reshape(1, -1, 1, 1)
    return (0 - mean_t) / std_t, (1 - mean_t) / std_t


def draw_noise(
        x: torch.Tensor,
        mode: str = RSPCSettings.noise,
        lower: Optional[torch.Tensor] = None,
        upper: Optional[torch.Tensor] = None,
        generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Uniform noise shaped like ``x``.

    ``normalized`` (the authors'): U[0, 1) drawn directly in the normalised input space. ``pixel``: U[0, 1) in pixel
    space, then normalised, i.e. ``lower + u * (upper - lower)`` with ``(lower, upper)`` from `normalized_pixel_range`.
    """
    noise = torch.rand(x.shape, dtype=x.dtype, device=x.device, generator=generator)
    if mode == 'normalized':
        return noise
    if mode == 'pixel':
        if lower is None or upper is None:
            raise ValueError("noise mode 'pixel' needs the normalised pixel range (lower, upper).")
        return torch.lerp(lower.to(x.dtype), upper.to(x.dtype), noise)
    raise ValueError(f'Unknown noise mode {mode!r}; choose one of {NOISE_MODES}.')


def blend_noise(
        x: torch.Tensor,
        pixel_mask: torch.Tensor,
        noise: torch.Tensor,
        lower: torch.Tensor,
        upper: torch.Tensor,
) -> torch.Tensor:
    """``clamp(mask * x + (1 - mask) * noise, lower, upper)``: exact for a binary mask, same gradient for the mask."""
    # lerp(noise, x, 1) is exactly x and lerp(noise, x, 0) exactly noise; d/dmask = x - noise, as for the product form.
    blended = torch.lerp(noise, x, pixel_mask.to(x.dtype))
    return torch.clamp(blended, lower.to(x.dtype), upper.to(x.dtype))


# The fused kernel's self-check and fallback compare with / run these (the kernels layer imports nothing above it).
register_reference('patch_noise', draw_noise=draw_noise, patch_mask_to_pixels=patch_mask_to_pixels,
                   blend_noise=blend_noise)


class PatchCorruptionModel(nn.Module):
    """The patch corruption model C: scores patches and keeps all but the ``ratio`` lowest-scoring ones per sample.

    Args:
        img_size: input (height, width) or a single int; C's linear layer is N x N with N the number of patches,
            so C works at this one resolution.
        patch_size: side of the square patches C corrupts (16 in the paper, the backbones' patch size).
        in_chans: input channels.
        ratio: fraction rho of patches to corrupt, in (0, 1) (0.1 in the paper).

    ``forward(x)`` returns the keep mask (B, N) as float32 (1 = keep, 0 = corrupt), straight-through differentiable.
    Parameters use PyTorch's default initialisation, as in the authors' code.
    """

    def __init__(
            self,
            img_size: Union[int, Sequence[int]] = 224,
            patch_size: int = 16,
            in_chans: int = 3,
            ratio: float = RSPCSettings.ratio,
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
    ):
        super().__init__()
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(int(s) for s in img_size)
        ratio = check_setting('ratio', ratio)
        if min(img_size) < 1 or patch_size < 1:
            raise ValueError(
                f'Image and patch sizes must be positive, got image {img_size[0]}x{img_size[1]}, patch {patch_size}.')
        if any(s % patch_size for s in img_size):
            raise ValueError(
                f'Image size {img_size[0]}x{img_size[1]} is not divisible by the patch size {patch_size}: '
                f'C corrupts whole patches. Use an image size that is a multiple of {patch_size}.')
        self.img_size = img_size
        self.patch_size = patch_size
        self.grid_size = (img_size[0] // patch_size, img_size[1] // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.ratio = ratio
        dd = dict(device=device, dtype=dtype)
        self.patch_embed = nn.Conv2d(in_chans, 1, kernel_size=patch_size, stride=patch_size, bias=False, **dd)
        self.act = nn.GELU()
        self.fc = nn.Linear(self.num_patches, self.num_patches, bias=False, **dd)

    def extra_repr(self) -> str:
        return f'img_size={self.img_size}, patch_size={self.patch_size}, ratio={self.ratio}'

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Per-patch scores (B, N); the lowest ``ratio`` of each row get corrupted."""
        if tuple(x.shape[-2:]) != self.img_size:
            raise ValueError(
                f'The corruption model was built for {self.img_size[0]}x{self.img_size[1]} inputs '
                f'(its linear layer mixes {self.num_patches} patches), got {x.shape[-2]}x{x.shape[-1]}. '
                f'Create the RSPC task / corruption model with img_size={tuple(x.shape[-2:])} (the training '
                f'resolution; --img-size / --input-size on the command line).')
        return self.fc(self.act(self.patch_embed(x)).flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return top_rho_straight_through(self.score(x), self.ratio)


class CorruptedBatch(NamedTuple):
    """What one corruption step produced: the corrupted images and the keep mask per patch (1 = kept)."""
    images: torch.Tensor
    patch_mask: torch.Tensor

    def occluded_fraction(self) -> torch.Tensor:
        """Fraction of patches replaced by noise, as a detached 0-dim tensor (no host sync)."""
        return 1. - self.patch_mask.detach().mean()


class AdversarialPatchCorruption(nn.Module):
    """C plus the noise blend, with C's gradient reversed so that it ascends what the backbone descends.

    Args:
        corruption_model: the `PatchCorruptionModel` C.
        mean, std: the normalisation of the model's inputs; they set the valid range the corrupted image is clamped to.
        noise: ``normalized`` (default, the authors': U[0, 1) in normalised space) or ``pixel`` (U[0, 1) pixels).

    ``forward(x, noise=None, generator=None)`` returns a `CorruptedBatch`. Pass ``noise`` (shaped like ``x``, in the
    normalised space) to reuse exact noise, or a ``torch.Generator`` to draw it reproducibly.
    """

    def __init__(
            self,
            corruption_model: PatchCorruptionModel,
            mean: Sequence[float],
            std: Sequence[float],
            noise: str = RSPCSettings.noise,
    ):
        super().__init__()
        check_setting('noise', noise)
        if len(mean) != len(std):
            raise ValueError(f'mean and std must have one value per channel, got {list(mean)} and {list(std)}.')
        self.corruption_model = corruption_model
        self.noise_mode = noise
        weight = corruption_model.patch_embed.weight
        lower, upper = normalized_pixel_range(mean, std, device=weight.device, dtype=torch.float32)
        self.register_buffer('lower', lower, persistent=False)
        self.register_buffer('upper', upper, persistent=False)

    def extra_repr(self) -> str:
        return f'noise={self.noise_mode!r}'

    def forward(
            self,
            x: torch.Tensor,
            noise: Optional[torch.Tensor] = None,
            generator: Optional[torch.Generator] = None,
    ) -> CorruptedBatch:
        if x.ndim != 4 or x.shape[1] != self.lower.shape[1]:
            raise ValueError(
                f'Expected images shaped (batch, {self.lower.shape[1]}, H, W) to corrupt, got {tuple(x.shape)}.')
        model = self.corruption_model
        # The reversal sits on C's output: the backbone sees the plain mask, C receives minus the gradient.
        patch_mask = reverse_gradient(model(x))
        if noise is not None and noise.shape != x.shape:
            raise ValueError(f'noise must be shaped like the images {tuple(x.shape)}, got {tuple(noise.shape)}.')
        if use_kernels(x, 'patch_noise'):
            # One fused pass on CUDA; without explicit noise, the kernel draws it (Philox) from a seed that the
            # generator supplies, so runs stay reproducible (the draws differ from the PyTorch path's torch.rand).
            from timm_rspc.kernels.patch_noise import draw_seed, fused_patch_noise
            seed = draw_seed(x.device, generator) if noise is None else None
            images = fused_patch_noise(x, patch_mask, model.patch_size, self.lower, self.upper, noise=noise,
                                       seed=seed, noise_mode=self.noise_mode)
            return CorruptedBatch(images, patch_mask)
        if noise is None:
            noise = draw_noise(x, self.noise_mode, self.lower, self.upper, generator=generator)
        pixel_mask = patch_mask_to_pixels(patch_mask, model.grid_size, model.patch_size)
        return CorruptedBatch(blend_noise(x, pixel_mask, noise.to(x.dtype), self.lower, self.upper), patch_mask)
