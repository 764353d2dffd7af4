"""ImageNet-C's corruptions (Hendrycks and Dietterich, ICLR 2019) in torch, with the reference's severity constants.

The reference is ``corruptions.py`` of hendrycks/robustness (``ImageNet-C/imagenet_c/imagenet_c/``, released on PyPI
as ``imagenet_c``; ``ImageNet-C/create_c/make_imagenet_c.py``, which made the data set, has the same definitions of
the corruptions here). Every function takes (B, 3, H, W) pixels in [0, 1] on any device, ``severity`` 1..5 and a
``torch.Generator`` (on the pixels' device; ``None``: torch's global one) and returns the corrupted pixels clipped to
[0, 1], as the reference clips. Random draws are independent per image, so a batch is corrupted as its images would
be one at a time (with other draws).

Fidelity classes (checked against the reference code itself by ``tests/test_corruptions_reference.py``):

- *exact*: deterministic, within 1 grey level of the reference on 8-bit output;
- *in distribution*: random, the same per-pixel distribution and the same dependence between pixels and channels
  as the reference, checked statistically (and, where the draws can be shared, exact given the same draws).

Sizes: every function takes ``constants``, the set of severity constants (`severity`): ``'imagenet'`` (the
default: ImageNet-C's, made for 224 px images), ``'cifar'`` (``make_cifar_c.py``: CIFAR-10-C / CIFAR-100-C, 32 px) or
``'tinyimagenet'`` (``make_tinyimagenet_c.py``: Tiny-ImageNet-C, 64 px; ``make_imagenet_64_c.py``, ImageNet
64x64-C, has the same functions). ``SEVERITIES`` is ImageNet-C's table, ``SEVERITIES_BY_CONSTANTS`` all three. The
32 / 64 px scripts differ from the 224 px one in their constants and in one procedure, frost's, whose photographs
they first shrink by ``cv2.resize`` (0.2 and 0.3, ``FROST_PHOTO_SCALES``; `resize`). Elsewhere the scripts' image
side is the image's here: glass_blur's loop, pixelate's ``int(side * c)``, fog's plasma map (the next power of two of
the larger side: 32, 64, 256 at the native sizes) and elastic_transform's affine points. Constants are in pixels: at
other sizes they are applied as they are.
"""
from typing import Callable, Dict

import torch

from . import draws
from .draws import Generators
from .primitives import (
    box_resize, clipped_zoom_sum, disk_filter, gaussian_filter, numpy_arange, plasma_fractal, sample_bilinear,
)
from .jpeg import jpeg_round_trip
from .glass import SEVERITIES as _GLASS_SEVERITIES, SEVERITIES_BY_CONSTANTS as _GLASS_BY_CONSTANTS, glass_blur
from .spatter import SEVERITIES as _SPATTER_SEVERITIES, SEVERITIES_BY_CONSTANTS as _SPATTER_BY_CONSTANTS, spatter
from .motion import SEVERITIES as _MOTION_SEVERITIES, SEVERITIES_BY_CONSTANTS as _MOTION_BY_CONSTANTS, motion_blur, snow
from .resize import frost_images_scaled
from .severity import CONSTANTS, NATIVE_SIZES, check_constants, constant as severity_constant

__all__ = [
    'CORRUPTIONS', 'CATEGORIES', 'EXTRA', 'FIDELITY', 'SEVERITIES', 'SEVERITIES_BY_CONSTANTS', 'CONSTANTS',
    'NATIVE_SIZES', 'FROST_PHOTO_SCALES', 'corrupt', 'gaussian_noise', 'shot_noise',
    'impulse_noise', 'speckle_noise', 'defocus_blur', 'zoom_blur', 'gaussian_blur', 'frost', 'brightness', 'fog',
    'contrast', 'elastic_transform', 'pixelate', 'jpeg_compression', 'saturate',
    'glass_blur', 'spatter', 'motion_blur', 'snow',
]

SEVERITIES = {
    'gaussian_noise': (.08, .12, .18, .26, .38),
    'shot_noise': (60, 25, 12, 5, 3),
    'impulse_noise': (.03, .06, .09, .17, .27),
    'speckle_noise': (.15, .2, .35, .45, .6),
    'defocus_blur': ((3, .1), (4, .5), (6, .5), (8, .5), (10, .5)),
    'zoom_blur': tuple(tuple(numpy_arange(1, stop, step))   # the reference's np.arange(1, stop, step)
                       for stop, step in ((1.11, .01), (1.16, .01), (1.21, .02), (1.26, .02), (1.31, .03))),
    'gaussian_blur': (1, 2, 3, 4, 6),
    'frost': ((1, .4), (.8, .6), (.7, .7), (.65, .7), (.6, .75)),
    'brightness': (.1, .2, .3, .4, .5),
    'fog': ((1.5, 2), (2., 2), (2.5, 1.7), (2.5, 1.5), (3., 1.4)),
    'contrast': (.4, .3, .2, .1, .05),
    'elastic_transform': ((244 * 2, 244 * .7, 244 * .1), (244 * 2, 244 * .08, 244 * .2),   # (alpha, sigma, affine)
                          (244 * .05, 244 * .01, 244 * .02), (244 * .07, 244 * .01, 244 * .02),
                          (244 * .12, 244 * .01, 244 * .02)),
    'pixelate': (.6, .5, .4, .3, .25),
    'jpeg_compression': (25, 18, 15, 10, 7),
    'saturate': ((.3, 0), (.1, 0), (2, 0), (5, .1), (20, .2)),
    **_GLASS_SEVERITIES,      # glass.py: (sigma, max_delta, passes)
    **_SPATTER_SEVERITIES,    # spatter.py: (loc, scale, sigma, threshold, intensity, mode)
    **_MOTION_SEVERITIES,     # motion.py: motion_blur (radius, sigma); snow (mean, std, zoom, threshold, radius,
                              # sigma, image weight)
}
_SMALL_ZOOMS = tuple(tuple(numpy_arange(1, stop, .01)) for stop in (1.06, 1.11, 1.16, 1.21, 1.26))   # 32 and 64 px
# The reference's 32 and 64 px constants (make_cifar_c.py, make_tinyimagenet_c.py), the same layout as SEVERITIES;
# elastic_transform's written as the scripts compute them (IMSIZE * c); at severity 1 alpha = sigma = 0: no
# displacement field, the random affine warp only.
SEVERITIES_BY_CONSTANTS = {
    'imagenet': SEVERITIES,
    'cifar': {
        'gaussian_noise': (.04, .06, .08, .09, .10),
        'shot_noise': (500, 250, 100, 75, 50),
        'impulse_noise': (.01, .02, .03, .05, .07),
        'speckle_noise': (.06, .1, .12, .16, .2),
        'defocus_blur': ((.3, .4), (.4, .5), (.5, .6), (1, .2), (1.5, .1)),
        'zoom_blur': _SMALL_ZOOMS,
        'gaussian_blur': (.4, .6, .7, .8, 1),
        'frost': ((1, .2), (1, .3), (.9, .4), (.85, .4), (.75, .45)),
        'brightness': (.05, .1, .15, .2, .3),
        'fog': ((.2, 3), (.5, 3), (.75, 2.5), (1, 2), (1.5, 1.75)),
        'contrast': (.75, .5, .4, .3, .15),
        'elastic_transform': ((32 * 0, 32 * 0, 32 * .08), (32 * .05, 32 * .2, 32 * .07), (32 * .08, 32 * .06, 32 * .06),
                              (32 * .1, 32 * .04, 32 * .05), (32 * .1, 32 * .03, 32 * .03)),
        'pixelate': (.95, .9, .85, .75, .65),
        'jpeg_compression': (80, 65, 58, 50, 40),
        'saturate': ((.3, 0), (.1, 0), (1.5, 0), (2, .1), (2.5, .2)),
        **_GLASS_BY_CONSTANTS['cifar'], **_SPATTER_BY_CONSTANTS['cifar'], **_MOTION_BY_CONSTANTS['cifar'],
    },
    'tinyimagenet': {
        'gaussian_noise': (.04, .08, .12, .15, .18),
        'shot_noise': (250, 100, 50, 30, 15),
        'impulse_noise': (.01, .02, .05, .08, .14),
        'speckle_noise': (.15, .2, .25, .3, .35),
        'defocus_blur': ((.5, .6), (1, .1), (1.5, .1), (2.5, .01), (3, .1)),
        'zoom_blur': _SMALL_ZOOMS,
        'gaussian_blur': (.5, .75, 1, 1.25, 1.5),
        'frost': ((1, .3), (.9, .4), (.8, .45), (.75, .5), (.7, .55)),
        'brightness': (.1, .2, .3, .4, .5),
        'fog': ((.4, 3), (.7, 3), (1, 2.5), (1.5, 2), (2, 1.75)),
        'contrast': (.4, .3, .2, .1, .05),
        'elastic_transform': ((64 * 0, 64 * 0, 64 * .08), (64 * .05, 64 * .3, 64 * .06), (64 * .1, 64 * .08, 64 * .06),
                              (64 * .1, 64 * .03, 64 * .03), (64 * .16, 64 * .03, 64 * .02)),
        'pixelate': (.9, .8, .7, .6, .5),
        'jpeg_compression': (65, 58, 50, 40, 25),
        'saturate': ((.3, 0), (.1, 0), (2, 0), (5, .1), (30, .2)),
        **_GLASS_BY_CONSTANTS['tinyimagenet'], **_SPATTER_BY_CONSTANTS['tinyimagenet'],
        **_MOTION_BY_CONSTANTS['tinyimagenet'],
    },
}
# frost's photographs shrunk by cv2.resize(fx=fy=s) before the crop: the 32 and 64 px scripts' one procedural
# difference (the 224 px one crops the photographs as they are).
FROST_PHOTO_SCALES = {'imagenet': 1, 'cifar': .2, 'tinyimagenet': .3}
CATEGORIES = {
    'gaussian_noise': 'noise', 'shot_noise': 'noise', 'impulse_noise': 'noise', 'speckle_noise': 'noise',
    'defocus_blur': 'blur', 'zoom_blur': 'blur', 'gaussian_blur': 'blur',
    'frost': 'weather', 'brightness': 'weather', 'fog': 'weather',
    'contrast': 'digital', 'elastic_transform': 'digital', 'pixelate': 'digital', 'jpeg_compression': 'digital',
    'saturate': 'digital',
    'glass_blur': 'blur', 'spatter': 'weather', 'motion_blur': 'blur', 'snow': 'weather',
}
# ImageNet-C's held-out corruptions (its "extra" release: speckle noise, Gaussian blur, spatter, saturate).
EXTRA = ('speckle_noise', 'gaussian_blur', 'saturate', 'spatter')
FIDELITY = {
    'gaussian_noise': 'in distribution', 'shot_noise': 'in distribution', 'impulse_noise': 'in distribution',
    'speckle_noise': 'in distribution', 'defocus_blur': 'exact', 'zoom_blur': 'exact', 'gaussian_blur': 'exact',
    'frost': 'in distribution', 'brightness': 'exact', 'fog': 'in distribution', 'contrast': 'exact',
    'elastic_transform': 'in distribution', 'pixelate': 'exact', 'jpeg_compression': 'exact', 'saturate': 'exact',
    'glass_blur': 'in distribution', 'spatter': 'in distribution',   # exact given the same draws
    'motion_blur': 'in distribution', 'snow': 'in distribution',     # bit-identical given the same draws
}


def _constant(name: str, severity: int, constants: str = 'imagenet'):
    return severity_constant(SEVERITIES_BY_CONSTANTS, name, severity, constants)


def gaussian_noise(x: torch.Tensor, severity: int = 1, generator: Generators = None,
                   constants: str = 'imagenet') -> torch.Tensor:
    """Independent N(0, c) added to every value (pixel and channel), c = 0.08 .. 0.38. In distribution."""
    c = _constant('gaussian_noise', severity, constants)
    noise = draws.randn(x.shape, generator, dtype=x.dtype, device=x.device)
    return noise.mul_(c).add_(x).clamp_(0, 1)   # in place on the fresh draw: x + c * noise


def shot_noise(x: torch.Tensor, severity: int = 1, generator: Generators = None,
               constants: str = 'imagenet') -> torch.Tensor:
    """Poisson photon noise: every value independently ``Poisson(c * x) / c``, c = 60, 25, 12, 5, 3 photons at full
    intensity. In distribution (not differentiable: a Poisson draw)."""
    c = _constant('shot_noise', severity, constants)
    rates = (x.clamp(0, 1) * c).float()
    return (draws.poisson(rates, generator).to(x.dtype) / c).clamp(0, 1)


def impulse_noise(x: torch.Tensor, severity: int = 1, generator: Generators = None,
                  constants: str = 'imagenet') -> torch.Tensor:
    """Salt and pepper (scikit-image's ``random_noise(mode='s&p')``): every value independently becomes 0 or 1, with
    probability c / 2 each, c = 0.03 .. 0.27. In distribution."""
    c = _constant('impulse_noise', severity, constants)
    draw = draws.rand(x.shape, generator, dtype=x.dtype, device=x.device)
    return x.clamp(0, 1).masked_fill_(draw < c, 1.).masked_fill_(draw < c / 2, 0.)


def speckle_noise(x: torch.Tensor, severity: int = 1, generator: Generators = None,
                  constants: str = 'imagenet') -> torch.Tensor:
    """Multiplicative noise ``x + x * N(0, c)``, independent per value, c = 0.15 .. 0.6 (ImageNet-C's extra
    corruption). In distribution."""
    c = _constant('speckle_noise', severity, constants)
    noise = draws.randn(x.shape, generator, dtype=x.dtype, device=x.device)
    return (x * c).mul_(noise).add_(x).clamp_(0, 1)   # x + (x * c) * noise


def defocus_blur(x: torch.Tensor, severity: int = 1, generator: Generators = None,
                 constants: str = 'imagenet') -> torch.Tensor:
    """Each channel correlated with ImageNet-C's anti-aliased disk (`disk_kernel`: radius 3, 4, 6, 8, 10 px, OpenCV
    Gaussian anti-aliasing with sigma 0.1, 0.5, ...) as OpenCV's ``filter2D`` does (``BORDER_REFLECT_101``),
    computed from the disk's structure (`disk_filter`: running sums of its rows, the small Gaussian). Exact."""
    radius, alias_blur = _constant('defocus_blur', severity, constants)
    return disk_filter(x, radius, alias_blur).clamp_(0, 1)


def zoom_blur(x: torch.Tensor, severity: int = 1, generator: Generators = None,
              constants: str = 'imagenet') -> torch.Tensor:
    """The image averaged with its centre zoomed by each factor of ``numpy.arange(1, 1 + z, step)`` (12, 16, 11, 13
    and 11 factors up to 1.11, 1.15, 1.2, 1.24, 1.3), each zoom the reference's ``clipped_zoom`` (`clipped_zoom`:
    scipy.ndimage's linear zoom of the centre crop). Exact."""
    factors = _constant('zoom_blur', severity, constants)
    total = clipped_zoom_sum(x, factors)   # a dozen zoom factors, each on the whole batch
    return total.add_(x).div_(len(factors) + 1).clamp_(0, 1)


def gaussian_blur(x: torch.Tensor, severity: int = 1, generator: Generators = None,
                  constants: str = 'imagenet') -> torch.Tensor:
    """scikit-image's ``gaussian`` with sigma c = 1, 2, 3, 4, 6 per channel: kernel cut at 4 sigmas, borders repeating
    the edge pixel (``mode='nearest'``). Exact."""
    return gaussian_filter(x, _constant('gaussian_blur', severity, constants)).clamp(0, 1)


def _frost_draws(batch: int, height: int, width: int, sizes: torch.Tensor, generator, device):
    """Per image: which frost photograph (uniform over the first five: the reference's ``np.random.randint(5)``
    never picks the sixth) and the top / left of the crop (uniform over ``0 .. frost side - image side - 1``, the
    reference's ``randint(0, side - 224)``)."""
    usable = sizes[:5]
    min_height, min_width = int(usable[:, 0].min()), int(usable[:, 1].min())
    if height >= min_height or width >= min_width:
        raise ValueError(f'frost crops the image out of its photographs, the smallest {min_height} x {min_width} px '
                         f'here: images up to {min_height - 1} x {min_width - 1} px, got {height} x {width}.')
    index = draws.randint(5, (batch,), generator, device=device)
    room = sizes[index].to(device) - torch.tensor([height, width], device=device)   # (B, 2) exclusive bounds
    unit = draws.rand((batch, 2), generator, device=device)
    offsets = torch.minimum((unit * room).floor().long(), room - 1)
    return index, offsets[:, 0], offsets[:, 1]


def frost(x: torch.Tensor, severity: int = 1, generator: Generators = None,
          constants: str = 'imagenet') -> torch.Tensor:
    """``a * x + b * frost`` with a random crop, the image's size, of one of ImageNet-C's frost photographs per image
    (fetched once from the reference's sdist: `reference_data`); (a, b) = (1, 0.4), (0.8, 0.6), (0.7, 0.7),
    (0.65, 0.7), (0.6, 0.75). Images up to 314 x 526 px (the crop must fit every photograph; with the 32 / 64 px
    constants, whose photographs are first shrunk by 0.2 / 0.3, up to 62 x 104 / 93 x 157 px). In distribution
    (exact given the same photograph and crop)."""
    scale, weight = _constant('frost', severity, constants)
    batch, _, height, width = x.shape
    stack, sizes = frost_images_scaled(x.device, FROST_PHOTO_SCALES[constants])   # shrunk for 32 / 64 px
    index, top, left = _frost_draws(batch, height, width, sizes, generator, x.device)
    # the crops as two gathers on 2-D views (fast): whole rows (photograph, channel, row), then each image's columns
    count, channels, stack_height, stack_width = stack.shape
    plane = (index[:, None] * channels + torch.arange(channels, device=x.device))[:, :, None] * stack_height
    rows = (plane + top[:, None, None] + torch.arange(height, device=x.device)).flatten()       # (B * 3 * H,)
    lines = stack.view(count * channels * stack_height, stack_width).index_select(0, rows)
    cols = (left[:, None] + torch.arange(width, device=x.device)).repeat_interleave(channels * height, dim=0)
    crops = lines.gather(1, cols).view(batch, channels, height, width)                         # (B, 3, H, W)
    return (x * scale).add_(crops.to(x.dtype).mul_(weight).div_(255)).clamp_(0, 1)   # scale * x + weight * crop / 255


def brightness(x: torch.Tensor, severity: int = 1, generator: Generators = None,
               constants: str = 'imagenet') -> torch.Tensor:
    """c = 0.1 .. 0.5 added to the HSV value, clipped to 1, hue and saturation kept (the reference's round trip
    through scikit-image's ``rgb2hsv`` / ``hsv2rgb``). Exact."""
    c = _constant('brightness', severity, constants)
    # With hue and saturation fixed, RGB is proportional to the HSV value V = max(R, G, B): scale by V' / V.
    value = x.amax(dim=1, keepdim=True)
    brighter = (value + c).clamp(max=1)
    return torch.where(value > 0, x * brighter / value.clamp(min=1e-12), brighter.expand_as(x)).clamp(0, 1)


def fog(x: torch.Tensor, severity: int = 1, generator: Generators = None,
        constants: str = 'imagenet') -> torch.Tensor:
    """``x + s * plasma``, rescaled by ``max / (max + s)`` with ``max`` the image's largest value; the plasma map is
    the reference's diamond-square fractal (`plasma_fractal`, decay d) of the next power of two of the larger side
    (256 for 224 px), one per image, the same in the three channels, cropped to the image; (s, d) = (1.5, 2) ..
    (3, 1.4). In distribution (exact given the same uniform draws)."""
    strength, decay = _constant('fog', severity, constants)
    batch, _, height, width = x.shape
    mapsize = 1 << max(1, (max(height, width) - 1).bit_length())
    plasma = plasma_fractal(batch, mapsize, decay, generator, x.device)[:, None, :height, :width].to(x.dtype)
    max_value = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x + strength * plasma).mul_(max_value).div_(max_value + strength).clamp_(0, 1)


def contrast(x: torch.Tensor, severity: int = 1, generator: Generators = None,
             constants: str = 'imagenet') -> torch.Tensor:
    """Pulled towards each channel's mean over the image: ``(x - mean) * c + mean``, c = 0.4 .. 0.05. Exact."""
    c = _constant('contrast', severity, constants)
    means = x.mean(dim=(2, 3), keepdim=True)
    return (x - means).mul_(c).add_(means).clamp_(0, 1)


def _uniform(low: float, high: float, shape, generator, device) -> torch.Tensor:
    """numpy's ``uniform(low, high, shape)`` from float32 ``torch.rand`` draws, in float64: ``low + (high - low) * u``
    (float64 where the device has it)."""
    unit = draws.rand(shape, generator, device=device)
    return low + (high - low) * unit.to(torch.float64 if unit.device.type != 'mps' else torch.float32)


def _warp_affine_positions(inverse: torch.Tensor, height: int, width: int, device):
    """Where OpenCV's ``warpAffine`` (``INTER_LINEAR``, OpenCV 3 and 4; ImageNet-C pinned ``opencv-python ~= 3.4``)
    reads each output pixel, for the (B, 2, 3) float64 inverse maps: in fixed point, ``round(m * 1024)`` per row and
    per column term plus a rounding 16, then ``>> 5``: source positions on a 1/32-pixel grid (``INTER_BITS = 5``).
    OpenCV 5 samples at the exact positions instead. Computed where ``inverse`` is (float64: the device, or the CPU
    for a device without float64). Returns (rows, columns), each (B, H, W), exact in float32."""
    y = torch.arange(height, dtype=torch.float64, device=inverse.device).view(1, -1, 1)
    x = torch.arange(width, dtype=torch.float64, device=inverse.device).view(1, 1, -1)
    coords = []
    for k in (0, 1):   # 0: column (X), 1: row (Y)
        per_row = torch.round((inverse[:, k, 1, None, None] * y + inverse[:, k, 2, None, None]) * 1024).long() + 16
        per_col = torch.round(inverse[:, k, 0, None, None] * x * 1024).long()
        coords.append(((per_row + per_col) >> 5).float() / 32)
    wide = torch.float32 if torch.device(device).type == 'mps' else torch.float64
    return coords[1].to(device, wide), coords[0].to(device, wide)


def elastic_transform(x: torch.Tensor, severity: int = 1, generator: Generators = None,
                      constants: str = 'imagenet') -> torch.Tensor:
    """A random affine warp, then a smooth random displacement (alpha, sigma, a) = (488, 170.8, 24.4), (488, 19.52,
    48.8), (12.2, 2.44, 4.88), (17.08, 2.44, 4.88), (29.28, 2.44, 4.88) (the reference's 244-based constants):

    - affine: the three points ``centre + (s, s)``, ``centre + (s, -s)``, ``centre - (s, s)`` (centre ``(H // 2,
      W // 2)``, ``s = min(H, W) // 3``, as (x, y) in the reference's order) each moved by ``U(-a, a)``; the image
      warped by the affine map that takes the points to the moved ones (OpenCV's ``getAffineTransform`` and
      ``warpAffine``: bilinear, ``BORDER_REFLECT_101``);
    - displacement: two fields ``U(-1, 1)`` per pixel, blurred by scikit-image's ``gaussian`` (sigma, ``truncate=3``,
      ``mode='reflect'``) and scaled by alpha, added to the row and column coordinates; the image read there by
      scipy.ndimage's ``map_coordinates(order=1, mode='reflect')``.

    In distribution (exact given the same uniform draws: six for the points, then the two fields, numpy's order).
    ``warpAffine`` as OpenCV 3 and 4 compute it (source positions on a 1/32-pixel grid, `_warp_affine_positions`);
    OpenCV 5 interpolates at exact positions, which moves results by up to 2-3 grey levels."""
    alpha, sigma, jitter = _constant('elastic_transform', severity, constants)
    batch, _, height, width = x.shape
    device = x.device
    centre = torch.tensor([height // 2, width // 2], dtype=torch.float32)
    side = min(height, width) // 3
    points = torch.stack([centre + side, torch.stack([centre[0] + side, centre[1] - side]), centre - side])
    moved = points.to(device) + _uniform(-jitter, jitter, (batch, 3, 2), generator, device).float()
    # getAffineTransform: M (2 x 3) with M [p, 1] = moved p (3 x 3 solves in float64, on the device unless it has no
    # float64; solve_ex does not check the result on the host, so no sync); warpAffine inverts it
    # (invertAffineTransform's formulas) and samples the source at M^-1 [x, y, 1].
    exact = torch.device('cpu') if device.type == 'mps' else device
    source = torch.cat([points.double(), torch.ones(3, 1, dtype=torch.float64)], dim=1).to(exact)
    forward = torch.linalg.solve_ex(source, moved.to(exact, torch.float64))[0].transpose(1, 2)   # (B, 2, 3)
    (m00, m01, m02), (m10, m11, m12) = (row.unbind(-1) for row in forward.unbind(1))
    det = m00 * m11 - m01 * m10
    det = torch.where(det != 0, 1 / det, torch.zeros_like(det))
    a00, a01, a10, a11 = m11 * det, -m01 * det, -m10 * det, m00 * det
    inverse = torch.stack([torch.stack([a00, a01, -a00 * m02 - a01 * m12], -1),
                           torch.stack([a10, a11, -a10 * m02 - a11 * m12], -1)], 1)
    src_row, src_col = _warp_affine_positions(inverse, height, width, device)
    warped = sample_bilinear(x, src_row, src_col, 'reflect101')
    # numpy's uniform(-1, 1) from the float32 draws: -1 + 2 u is exact in float32, so computed in x's dtype
    fields = draws.rand((batch, 2, height, width), generator, device=device).to(x.dtype).mul_(2).sub_(1)
    row = torch.arange(height, device=device, dtype=src_row.dtype).view(1, -1, 1)
    col = torch.arange(width, device=device, dtype=src_row.dtype).view(1, 1, -1)
    if sigma > 0:
        fields = gaussian_filter(fields, sigma, truncate=3, mode='reflect')
    shift_col, shift_row = (fields * alpha).unbind(1)   # sigma 0 (32 / 64 px, severity 1): scipy leaves the fields
    out = sample_bilinear(warped, row + shift_row, col + shift_col, 'reflect')
    return out.clamp(0, 1)


def pixelate(x: torch.Tensor, severity: int = 1, generator: Generators = None,
             constants: str = 'imagenet') -> torch.Tensor:
    """Pillow's BOX resize to ``int(side * c)`` (c = 0.6 .. 0.25) and BOX resize back, on 8 bits as Pillow computes
    it (`box_resize`; the output is a multiple of 1/255). Exact (bit-identical at 224 px)."""
    c = _constant('pixelate', severity, constants)
    height, width = x.shape[-2:]
    small = box_resize(x, (max(1, int(height * c)), max(1, int(width * c))))
    return box_resize(small, (height, width))


def jpeg_compression(x: torch.Tensor, severity: int = 1, generator: Generators = None,
                     constants: str = 'imagenet') -> torch.Tensor:
    """Saved by Pillow as a baseline JPEG of quality 25, 18, 15, 10, 7 and read back (`jpeg_round_trip`:
    libjpeg-turbo's 4:2:0 encoder and decoder with the accurate integer DCT, in torch integers). Exact (bit-identical,
    at any size); not differentiable."""
    return jpeg_round_trip(x, _constant('jpeg_compression', severity, constants))


def saturate(x: torch.Tensor, severity: int = 1, generator: Generators = None,
             constants: str = 'imagenet') -> torch.Tensor:
    """HSV saturation scaled and shifted, ``clip(s * a + b, 0, 1)``, hue and value kept, with (a, b) = (0.3, 0),
    (0.1, 0), (2, 0), (5, 0.1), (20, 0.2) (ImageNet-C's extra corruption; the reference's round trip through
    scikit-image's ``rgb2hsv`` / ``hsv2rgb``, where grey pixels have hue 0, red, so a shift b > 0 tints them red).
    Exact."""
    scale, shift = _constant('saturate', severity, constants)
    value = x.amax(dim=1, keepdim=True)
    delta = value - x.amin(dim=1, keepdim=True)
    grey = delta <= 0
    saturation = torch.where(grey, torch.zeros_like(delta), delta / value.clamp(min=1e-12))
    saturation = (saturation * scale + shift).clamp(0, 1)
    # With hue and value fixed, channel k is value * (1 - saturation * w_k): w = 0 for the largest channel, 1 for the
    # smallest, set by the hue in between; grey pixels (hue 0) get red's (0, 1, 1).
    red = torch.tensor([0., 1., 1.], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    weight = torch.where(grey, red, (value - x) / delta.clamp(min=1e-12))
    return (value * (1 - saturation * weight)).clamp(0, 1)


CORRUPTIONS: Dict[str, Callable] = {
    'gaussian_noise': gaussian_noise, 'shot_noise': shot_noise, 'impulse_noise': impulse_noise,
    'speckle_noise': speckle_noise, 'defocus_blur': defocus_blur, 'zoom_blur': zoom_blur,
    'gaussian_blur': gaussian_blur, 'frost': frost, 'brightness': brightness, 'fog': fog, 'contrast': contrast,
    'elastic_transform': elastic_transform, 'pixelate': pixelate, 'jpeg_compression': jpeg_compression,
    'saturate': saturate,
    'glass_blur': glass_blur, 'spatter': spatter, 'motion_blur': motion_blur, 'snow': snow,
}


def corrupt(name: str, pixels: torch.Tensor, severity: int = 3, generator: Generators = None,
            constants: str = 'imagenet'):
    """``pixels`` (B, C, H, W) in [0, 1] corrupted by ``name`` at ``severity`` (1..5) with the set of severity
    constants ``constants`` (``'imagenet'``, ``'cifar'``, ``'tinyimagenet'``: see the module docstring), clipped to
    [0, 1]."""
    if name not in CORRUPTIONS:
        raise ValueError(f'Unknown corruption {name!r}; choose from {", ".join(CORRUPTIONS)}.')
    check_constants(constants)
    return CORRUPTIONS[name](pixels, severity, generator, constants=constants)
