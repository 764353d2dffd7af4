"""Common corruptions of ImageNet-C (Hendrycks and Dietterich, ICLR 2019), in torch, on batches of pixels in [0, 1].

The reference implementation (numpy, scikit-image, Wand, OpenCV) and its pip packaging no longer import on numpy 2,
so the analyses ship a representative set written in torch: one or two per ImageNet-C category, with ImageNet-C's
severity constants (severity 1..5):

- noise: ``gaussian_noise`` (additive N(0, c)), ``impulse_noise`` (salt-and-pepper on a fraction c of the values);
- blur: ``gaussian_blur`` (sigma c, kernel truncated at 4 sigma as scikit-image does, reflected borders);
- weather: ``brightness`` (c added to the HSV value channel, hue and saturation kept), ``fog`` (smooth multi-octave
  noise added and the image rescaled, ImageNet-C's formula; the noise is bilinear value noise whose amplitude falls by
  the decay factor per octave, standing in for the diamond-square plasma fractal);
- digital: ``contrast`` (pulled towards the per-channel mean), ``pixelate`` (box-downsampled to c of the size and
  blown up again).

Each function corrupts whole images; the analyses keep the result only inside the chosen patches.
"""
from typing import Callable, Dict, Optional

import torch
import torch.nn.functional as F

__all__ = ['CORRUPTIONS', 'CORRUPTION_CATEGORIES', 'corrupt']

SEVERITIES = {
    'gaussian_noise': (.08, .12, .18, .26, .38),
    'impulse_noise': (.03, .06, .09, .17, .27),
    'gaussian_blur': (1, 2, 3, 4, 6),
    'brightness': (.1, .2, .3, .4, .5),
    'fog': ((1.5, 2), (2, 2), (2.5, 1.7), (2.5, 1.5), (3, 1.4)),
    'contrast': (.4, .3, .2, .1, .05),
    'pixelate': (.6, .5, .4, .3, .25),
}
CORRUPTION_CATEGORIES = {
    'gaussian_noise': 'noise', 'impulse_noise': 'noise', 'gaussian_blur': 'blur', 'brightness': 'weather',
    'fog': 'weather', 'contrast': 'digital', 'pixelate': 'digital',
}


def gaussian_noise(x: torch.Tensor, c: float, generator: Optional[torch.Generator]) -> torch.Tensor:
    return x + c * torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def impulse_noise(x: torch.Tensor, c: float, generator: Optional[torch.Generator]) -> torch.Tensor:
    draw = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    salt = torch.ones((), dtype=x.dtype, device=x.device)
    return torch.where(draw < c / 2, torch.zeros_like(salt), torch.where(draw < c, salt, x))


def gaussian_blur(x: torch.Tensor, sigma: float, generator: Optional[torch.Generator]) -> torch.Tensor:
    radius = min(int(4 * sigma + 0.5), min(x.shape[-2:]) - 1)  # reflect padding needs radius < side
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = x.shape[1]
    rows = kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
    out = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode='reflect'), rows, groups=channels)
    return F.conv2d(F.pad(out, (0, 0, radius, radius), mode='reflect'),
                    kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def brightness(x: torch.Tensor, c: float, generator: Optional[torch.Generator]) -> torch.Tensor:
    # With hue and saturation fixed, RGB is proportional to the HSV value V = max(R, G, B): scale by V' / V.
    value = x.amax(dim=1, keepdim=True)
    brighter = (value + c).clamp(max=1)
    return torch.where(value > 0, x * brighter / value.clamp(min=1e-12), brighter.expand_as(x))


def fog(x: torch.Tensor, c, generator: Optional[torch.Generator]) -> torch.Tensor:
    strength, decay = c
    batch, _, height, width = x.shape
    side = max(height, width)
    field = torch.zeros(batch, 1, height, width, dtype=x.dtype, device=x.device)
    amplitude, cells = 1., 2
    while cells <= side:
        coarse = torch.rand(batch, 1, cells + 1, cells + 1, generator=generator, dtype=x.dtype, device=x.device)
        field += amplitude * F.interpolate(coarse, size=(height, width), mode='bilinear', align_corners=True)
        amplitude, cells = amplitude / decay, cells * 2
    lo = field.amin(dim=(2, 3), keepdim=True)
    hi = field.amax(dim=(2, 3), keepdim=True)
    field = (field - lo) / (hi - lo).clamp(min=1e-12)
    max_value = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x + strength * field) * max_value / (max_value + strength)


def contrast(x: torch.Tensor, c: float, generator: Optional[torch.Generator]) -> torch.Tensor:
    means = x.mean(dim=(2, 3), keepdim=True)
    return (x - means) * c + means


def pixelate(x: torch.Tensor, c: float, generator: Optional[torch.Generator]) -> torch.Tensor:
    height, width = x.shape[-2:]
    small = F.interpolate(x, size=(max(1, int(height * c)), max(1, int(width * c))), mode='area')
    return F.interpolate(small, size=(height, width), mode='nearest')


CORRUPTIONS: Dict[str, Callable] = {
    'gaussian_noise': gaussian_noise, 'impulse_noise': impulse_noise, 'gaussian_blur': gaussian_blur,
    'brightness': brightness, 'fog': fog, 'contrast': contrast, 'pixelate': pixelate,
}


def corrupt(name: str, pixels: torch.Tensor, severity: int = 3, generator: Optional[torch.Generator] = None):
    """``pixels`` (B, C, H, W) in [0, 1] corrupted by ``name`` at ``severity`` (1..5), clipped to [0, 1]."""
    if name not in CORRUPTIONS:
        raise ValueError(f'Unknown corruption {name!r}; choose from {", ".join(CORRUPTIONS)}.')
    if severity not in range(1, 6):
        raise ValueError(f'The corruption severity must be 1..5 (ImageNet-C levels), got {severity}.')
    return CORRUPTIONS[name](pixels, SEVERITIES[name][severity - 1], generator).clamp(0, 1)
