"""ImageNet-C's two corruptions made with ImageMagick (motion blur, snow): ImageMagick 6's motion blur in torch.

The reference (``corruptions.py`` of hendrycks/robustness, PyPI's ``imagenet_c``) saves the image as a PNG, blurs it
with ImageMagick through Wand (``MagickMotionBlurImage(wand, radius, sigma, angle)``) and decodes the PNG Wand returns
with OpenCV. `magick_motion_blur` is that round trip, as ImageMagick 6 (6.9.11, Q16, non-HDRI: Debian's and Ubuntu's
``libmagickwand-6.q16``) computes it in ``MotionBlurImageChannel`` (``magick/effect.c``):

- kernel: ``width = 2 * ceil(radius) + 1`` taps (``GetOptimalKernelWidth1D`` for a radius > 0), tap i (0 .. width - 1)
  weighing ``exp(-i^2 / (2 sigma^2))``, normalised to sum 1: a one-sided Gaussian that trails behind each pixel;
- offsets: tap i reads the pixel ``(ceil(i cos(a) - 1/2), ceil(i sin(a) - 1/2))`` columns and rows away (a in degrees,
  the exact double arithmetic of ``effect.c``), pixels outside the image repeating the nearest edge pixel (the
  default ``EdgeVirtualPixelMethod``);
- quantum: the 8-bit PNG read as ``257 v`` (Q16), the weighted sum in double rounded to 16 bits (``ClampToQuantum``),
  then written as an 8-bit PNG: the PNG writer first reduces the image to its depth, 8 (``SetImageDepth``, whose
  ``ScaleQuantumToAny`` truncates, ``(size_t) (255.0 * q / 65535)``), so the grey level is ``q // 257``: the result
  is a multiple of 1/255, bit-identical to ImageMagick's given the same angle.

Versions: ImageMagick 6.9.10-69 and later (Debian 11 and 12 and Ubuntu 22.04: 6.9.11-60) truncate so; earlier ones
(6.9.10-68 and before, e.g. Ubuntu 20.04's 6.9.10-23 and the versions of 2018, when ImageNet-C was made) round to
the nearest grey level instead (``ScaleQuantumToAny`` added 0.5), on average half a grey level brighter, at
most 1; ImageMagick 7 and HDRI builds skip the 16-bit rounding. The OpenCL path (unused by Wand here) computes in
float. Gradients pass straight through the roundings to the kernel's weighted sum.
"""
import math
from typing import Tuple

import torch

from . import draws
from .draws import Generators
from .primitives import clipped_zoom
from .severity import constant as severity_constant

__all__ = ['SEVERITIES', 'SEVERITIES_BY_CONSTANTS', 'motion_blur', 'snow', 'magick_motion_blur']

SEVERITIES = {
    'motion_blur': ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)),   # (radius, sigma) of ImageMagick's motion blur
    # (normal mean, normal std, zoom, threshold, blur radius, blur sigma, image weight)
    'snow': ((0.1, 0.3, 3, 0.5, 10, 4, 0.8), (0.2, 0.3, 2, 0.5, 12, 4, 0.7), (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
             (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65), (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55)),
}
# The same per set of constants (`severity`): make_cifar_c.py's (32 px) and make_tinyimagenet_c.py's (64 px), the
# same code (snow's zoom 1 at severities 1 and 2: ``clipped_zoom`` by 1 leaves the layer as it is).
SEVERITIES_BY_CONSTANTS = {
    'imagenet': SEVERITIES,
    'cifar': {
        'motion_blur': ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),
        'snow': ((0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
                 (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)),
    },
    'tinyimagenet': {
        'motion_blur': ((10, 1), (10, 1.5), (10, 2), (10, 2.5), (12, 3)),
        'snow': ((0.1, 0.2, 1, 0.6, 8, 3, 0.8), (0.1, 0.2, 1, 0.5, 10, 4, 0.8), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.7),
                 (0.25, 0.3, 2.25, 0.6, 12, 6, 0.65), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.6)),
    },
}

_SQ2PI = 2.50662827463100024161235523934010416269302368164062   # ImageMagick's MagickSQ2PI
_PI = 3.14159265358979323846264338327950288419716939937510      # MagickPI


def _wide(device) -> torch.dtype:
    """float64, ImageMagick's arithmetic, where the device has it (MPS has not: float32)."""
    return torch.float32 if torch.device(device).type == 'mps' else torch.float64


def _motion_kernel(radius: float, sigma: float) -> Tuple[float, ...]:
    """ImageMagick 6's ``GetMotionBlurKernel(GetOptimalKernelWidth1D(radius, sigma), sigma)`` for a radius > 0, in
    the same double arithmetic (Python's floats and ``math.exp`` are C's doubles and libm's ``exp``)."""
    if not radius > 1e-12:   # MagickEpsilon: below it ImageMagick picks a width from sigma, which no caller needs
        raise ValueError(f'the motion blur radius must be positive, got {radius}')
    sigma = sigma if abs(sigma) >= 1e-12 else 1e-12                  # MagickSigma
    width = int(2.0 * math.ceil(radius) + 1.0)
    weights = [math.exp(-(float(i) * i) / (2.0 * sigma * sigma)) / (_SQ2PI * sigma) for i in range(width)]
    normalize = 0.0
    for weight in weights:   # summed in ImageMagick's order
        normalize += weight
    return tuple(weight / normalize for weight in weights)


def _motion_offsets(width: int, angles: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per image (angles (B,) in degrees): the (B, width) column and row offsets of the taps, ``effect.c``'s
    ``ceil(i * point.y / hypot(point.x, point.y) - 0.5)`` (columns) and ``... point.x ...`` (rows), with ``point =
    width * (sin(a), cos(a))``."""
    radians = _PI * angles / 180.0
    point_x, point_y = width * torch.sin(radians), width * torch.cos(radians)
    norm = torch.hypot(point_x, point_y)[:, None]
    taps = torch.arange(width, dtype=angles.dtype, device=angles.device)[None, :]
    cols = torch.ceil(taps * point_y[:, None] / norm - 0.5).long()
    rows = torch.ceil(taps * point_x[:, None] / norm - 0.5).long()
    return cols, rows


def _straight_through(value: torch.Tensor, rounded: torch.Tensor) -> torch.Tensor:
    return value + (rounded - value).detach()


def magick_motion_blur(levels: torch.Tensor, radius: float, sigma: float, angles: torch.Tensor) -> torch.Tensor:
    """ImageMagick 6's ``MagickMotionBlurImage(radius, sigma, angle)`` of 8-bit images, each with its own angle, and
    its 8-bit PNG output: ``levels`` (B, C, H, W) grey levels 0..255 (whole numbers; the reference's PNG), ``angles``
    (B,) in degrees. Returns whole grey levels 0..255 in ``levels``' dtype (gradient: the kernel's weighted sum of
    ``levels``, straight through the roundings). A gather per tap (21 to 41 taps), on the whole batch."""
    batch, channels, height, width = levels.shape
    device, wide = levels.device, _wide(levels.device)
    kernel = _motion_kernel(radius, sigma)
    cols, rows = _motion_offsets(len(kernel), angles.to(device=device, dtype=wide))
    row = torch.arange(height, device=device).view(1, -1, 1)
    col = torch.arange(width, device=device).view(1, 1, -1)

    def weighted_sum(values: torch.Tensor, in_place: bool) -> torch.Tensor:
        """sum_i kernel[i] * values at tap i, in ImageMagick's order (so a double sum rounds the same way)."""
        flat = values.reshape(batch, channels, height * width)
        total, product = torch.zeros_like(flat), torch.empty_like(flat)
        for tap, weight in enumerate(kernel):
            source = ((row + rows[:, tap, None, None]).clamp(0, height - 1) * width
                      + (col + cols[:, tap, None, None]).clamp(0, width - 1))   # (B, H, W): edge pixels repeat
            tapped = flat.gather(2, source.view(batch, 1, -1).expand(-1, channels, -1))
            if in_place:
                total.add_(torch.mul(tapped, weight, out=product))
            else:
                total = total + weight * tapped
        return total.view(batch, channels, height, width)

    with torch.no_grad():
        total = weighted_sum(levels.to(wide) * 257, in_place=True)      # ScaleCharToQuantum: 8-bit PNG -> Q16
        quantum = torch.floor(total + 0.5).clamp(0, 65535).long()      # ClampToQuantum (non-HDRI)
        char = torch.div(quantum, 257, rounding_mode='floor').to(levels.dtype)   # the PNG writer's SetImageDepth(8)
    if not (torch.is_grad_enabled() and levels.requires_grad):
        return char
    return _straight_through(weighted_sum(levels, in_place=False), char)


def _uniform(low: float, high: float, batch: int, generator: Generators, device) -> torch.Tensor:
    """numpy's ``uniform(low, high)``, one per image: ``low + (high - low) * u`` in float64 from a float32
    ``torch.rand`` draw u (float32 on MPS)."""
    unit = draws.rand((batch,), generator, device=device)
    return low + (high - low) * unit.to(_wide(device))


def _to_8bit(x: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 1] as the whole grey levels of an 8-bit image (rounded; gradient straight through)."""
    levels = x * 255
    return _straight_through(levels, torch.floor(levels.detach() + 0.5).clamp(0, 255))


def motion_blur(x: torch.Tensor, severity: int = 1, generator: Generators = None, constants: str = 'imagenet'
                ) -> torch.Tensor:
    """ImageMagick's motion blur (`magick_motion_blur`) with (radius, sigma) = (10, 3), (15, 5), (15, 8), (15, 12),
    (20, 15) along an angle ``U(-45, 45)`` degrees per image (the reference's ``np.random.uniform(-45, 45)``, in
    float64 from one ``torch.rand`` draw): each pixel becomes a one-sided Gaussian average of itself and the 20 to 40
    pixels after it along the angle (per step ``cos a`` columns right and ``sin a`` rows down), edge pixels repeating.
    The image is taken as 8 bits (rounded: the reference's input is an 8-bit image) and the result is 8-bit, as the
    reference's PNG round trip. In distribution (exact, bit-identical, given the same angle); differentiable
    (straight through the roundings). ``constants``: the set of severity constants (`severity`)."""
    radius, sigma = severity_constant(SEVERITIES_BY_CONSTANTS, 'motion_blur', severity, constants)
    angles = _uniform(-45, 45, x.shape[0], generator, x.device)
    return (magick_motion_blur(_to_8bit(x), radius, sigma, angles) / 255).clamp(0, 1)


def _snow_layer(batch: int, height: int, width: int, severity: int, generator: Generators, device,
                constants: str = 'imagenet') -> torch.Tensor:
    """The reference's snow layer, (B, 1, H, W) whole grey levels 0..255 in float64: ``N(mean, std)`` per pixel
    (``np.random.normal``, from float32 ``torch.randn`` draws), enlarged by ``clipped_zoom`` (zoom 3, 2, 4, 4.5, 2.5),
    values below the threshold set to 0, clipped to [0, 1] and truncated to 8 bits (``astype(np.uint8)``), then
    motion-blurred by ImageMagick along an angle ``U(-135, -45)`` degrees (drawn after the normals, as numpy's)."""
    mean, std, zoom, threshold, radius, sigma, _ = severity_constant(SEVERITIES_BY_CONSTANTS, 'snow', severity,
                                                                     constants)
    wide = _wide(device)
    normal = draws.randn((batch, 1, height, width), generator, device=device)
    layer = clipped_zoom(mean + std * normal.to(wide), zoom)
    layer = torch.where(layer < threshold, torch.zeros_like(layer), layer)
    levels = torch.floor(layer.clamp(0, 1) * 255)
    angles = _uniform(-135, -45, batch, generator, device)
    return magick_motion_blur(levels, radius, sigma, angles)


def snow(x: torch.Tensor, severity: int = 1, generator: Generators = None, constants: str = 'imagenet'
         ) -> torch.Tensor:
    """Falling snow: the image whitened, ``w x + (1 - w) max(x, 1.5 grey + 0.5)`` in float32 (grey: OpenCV's
    ``RGB2GRAY``, ``0.299 R + 0.587 G + 0.114 B``, `_opencv_grey`; w = 0.8, 0.7, 0.7, 0.65, 0.55), plus a snow layer
    (`_snow_layer`: thresholded, zoomed Gaussian noise streaked by ImageMagick's motion blur, one per image, the same
    in the three channels) and the same layer rotated by 180 degrees, in float64. (mean, std, zoom, threshold, radius,
    sigma, w) are the reference's, e.g. (0.1, 0.3, 3, 0.5, 10, 4, 0.8) at severity 1. In distribution (exact given
    the same draws, the normals and then the angle: bit-identical for float64 pixels; float32 output may round a value
    just below a grey level up to it); differentiable in the image. ``constants``: the set of severity constants
    (`severity`)."""
    weight = severity_constant(SEVERITIES_BY_CONSTANTS, 'snow', severity, constants)[6]
    batch, _, height, width = x.shape
    layer = _snow_layer(batch, height, width, severity, generator, x.device, constants) / 255
    image = x.float()   # the reference's float32 image
    whitened = weight * image + (1 - weight) * torch.maximum(image, _opencv_grey(image) * 1.5 + 0.5)
    out = whitened.to(layer.dtype) + layer + layer.flip(-2, -1)
    return out.clamp(0, 1).to(x.dtype)


def _opencv_grey(image: torch.Tensor) -> torch.Tensor:
    """OpenCV's ``cvtColor(image, COLOR_RGB2GRAY)`` of a float32 image, (B, 1, H, W): ``0.299 R + 0.587 G +
    0.114 B`` with float32 weights, rounded as its SIMD loop (every x86-64 and ARM build) rounds:
    ``fma(B, 0.114, fma(R, 0.299, G * 0.587))``; the two fused steps are computed in float64 (the products of two
    float32 are exact there) and rounded to float32. (OpenCV's scalar loop, ``(R 0.299 + G 0.587) + B 0.114``, can
    differ in the last bit.)"""
    wide = _wide(image.device)
    red, green, blue = image.to(wide).unbind(1)
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float32).tolist()   # the float32 constants, exactly
    partial = (green * weights[1]).float().to(wide)
    partial = (red * weights[0] + partial).float().to(wide)
    return (blue * weights[2] + partial).float()[:, None]
