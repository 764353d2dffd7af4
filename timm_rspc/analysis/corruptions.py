"""Common corruptions of ImageNet-C (Hendrycks and Dietterich, ICLR 2019), in torch, on batches of pixels in [0, 1].

The reference implementation (numpy, scikit-image, Wand, OpenCV) and its pip packaging no longer import on numpy 2,
so the analyses ship a representative set written in torch: one or two per ImageNet-C category, with ImageNet-C's
severity constants (severity 1..5):

- noise: ``gaussian_noise`` (additive N(0, c)), ``impulse_noise`` (salt-and-pepper on a fraction c of the values);
- blur: ``gaussian_blur`` (scikit-image's ``gaussian``: sigma c per channel, kernel cut at 4 sigmas, borders
  repeating the edge pixel, scikit-image's ``mode='nearest'``);
- weather: ``brightness`` (c added to the HSV value channel, hue and saturation kept), ``fog`` (smooth multi-octave
  noise added and the image rescaled, ImageNet-C's formula; the noise is bilinear value noise whose amplitude falls by
  the decay factor per octave, standing in for the diamond-square plasma fractal);
- digital: ``contrast`` (pulled towards the per-channel mean), ``pixelate`` (Pillow's BOX resize to ``int(c * side)``
  and back, on 8 bits as Pillow computes it).

Against the reference code itself (``tests/test_corruptions_reference.py``, on photographs at 224 px, severities 1-5):
``gaussian_blur``, ``pixelate``, ``brightness`` and ``contrast`` are within 1 grey level of it on 8-bit output
(pixelate bit-identical).

Each function corrupts whole images; the analyses keep the result only inside the chosen patches.
"""
import functools
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


def _gaussian_kernel(sigma: float, truncate: float, dtype, device) -> torch.Tensor:
    """scipy.ndimage's 1-D Gaussian: radius ``int(truncate * sigma + 0.5)``, weights normalised to sum 1."""
    radius = int(truncate * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 / sigma ** 2 * offsets ** 2)
    return (kernel / kernel.sum()).to(dtype=dtype, device=device)


def gaussian_filter(x: torch.Tensor, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """scikit-image's ``gaussian(x, sigma, channel_axis=-1)`` on (B, C, H, W): each channel blurred separately over
    H and W by scipy.ndimage's separable Gaussian (kernel cut at ``truncate`` sigmas), borders in scipy's
    ``mode='nearest'`` (the edge pixel repeated: scikit-image's default)."""
    kernel = _gaussian_kernel(sigma, truncate, x.dtype, x.device)
    radius, channels = kernel.numel() // 2, x.shape[1]
    rows = kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
    out = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode='replicate'), rows, groups=channels)
    return F.conv2d(F.pad(out, (0, 0, radius, radius), mode='replicate'), rows.transpose(2, 3), groups=channels)


def gaussian_blur(x: torch.Tensor, sigma: float, generator: Optional[torch.Generator]) -> torch.Tensor:
    """ImageNet-C's ``gaussian_blur``: scikit-image's ``gaussian`` with sigma ``c``, per channel, truncated at 4
    sigmas, nearest-edge borders. Exact (float32 arithmetic; the reference computes in float64)."""
    return gaussian_filter(x, sigma)


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


@functools.lru_cache(maxsize=64)
def _box_resize_matrix(in_size: int, out_size: int) -> torch.Tensor:
    """The (out_size, in_size) matrix of Pillow's BOX resampling of 8-bit images along one axis
    (``precompute_coeffs`` and ``normalize_coeffs_8bpc`` of Pillow's ``Resample.c``, the same double arithmetic).

    Output pixel ``o`` spans ``[o, o + 1) * scale`` of the input, ``scale = in_size / out_size``, and averages with
    equal weights the input pixels whose centre lies in ``(o * scale, (o + 1) * scale]``: a partly covered pixel
    counts fully or not at all. Enlarging (scale < 1) the support stays one input pixel, so output pixel ``o`` copies
    input pixel ``floor((o + 0.5) * scale)``. The weights are Pillow's fixed-point ones (multiples of 2**-22, exact in
    float32)."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    center = (torch.arange(out_size, dtype=torch.float64) + 0.5) * scale
    first = torch.floor(center - support + 0.5).clamp(min=0)          # C's (int) cast of a non-negative double
    stop = torch.floor(center + support + 0.5).clamp(max=in_size)
    pixel = torch.arange(in_size, dtype=torch.float64)
    arg = (pixel[None, :] - center[:, None] + 0.5) * (1.0 / filterscale)
    inside = (arg > -0.5) & (arg <= 0.5) & (pixel[None, :] >= first[:, None]) & (pixel[None, :] < stop[:, None])
    weights = inside.double()
    weights = weights / weights.sum(dim=1, keepdim=True).clamp(min=1)
    return torch.floor(0.5 + weights * 2 ** 22) / 2 ** 22


def _round_8bit(grey: torch.Tensor) -> torch.Tensor:
    """Grey levels rounded half up and clipped to 0..255 as Pillow stores each pass; the gradient passes straight
    through."""
    return grey + (torch.floor(grey + 0.5).clamp(0, 255) - grey).detach()


def box_resize(x: torch.Tensor, size) -> torch.Tensor:
    """Pillow's ``Image.resize((width, height), Image.BOX)`` of the 8-bit image ``x`` on (B, C, H, W) pixels in
    [0, 1], ``size = (height, width)``: rounded to 8 bits first (Pillow's input), resampled horizontally, rounded,
    resampled vertically, rounded (Pillow's two passes). Differentiable with straight-through rounding."""
    height, width = x.shape[-2:]
    rows = _box_resize_matrix(height, size[0]).to(dtype=x.dtype, device=x.device)
    cols = _box_resize_matrix(width, size[1]).to(dtype=x.dtype, device=x.device)
    grey = _round_8bit(x * 255)
    if size[1] != width:
        grey = _round_8bit(grey @ cols.T)
    if size[0] != height:
        grey = _round_8bit(rows @ grey)
    return grey / 255


def pixelate(x: torch.Tensor, c: float, generator: Optional[torch.Generator]) -> torch.Tensor:
    """ImageNet-C's ``pixelate``: Pillow BOX-resized to ``int(side * c)`` and BOX-resized back, on 8 bits as
    Pillow computes it. Exact."""
    height, width = x.shape[-2:]
    small = box_resize(x, (max(1, int(height * c)), max(1, int(width * c))))
    return box_resize(small, (height, width))


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
