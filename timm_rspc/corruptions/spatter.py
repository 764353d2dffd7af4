"""ImageNet-C's spatter (one of its four extra corruptions) in torch, with the OpenCV operations it relies on.

Why a module of its own: spatter is the only corruption built from OpenCV's 8-bit image-processing pipeline (Canny
edges, a chamfer distance transform, histogram equalisation, integer filters); each of those operations is
reproduced here with OpenCV's exact semantics, batched over images, so that ``spatter`` is exact given the same
normal draws. The reference (``spatter`` of ``imagenet_c/corruptions.py``, identical in ``make_imagenet_c.py``), with
(loc, scale, sigma, threshold, intensity, mode) = ``SEVERITIES['spatter']``:

- a liquid layer ``N(loc, scale)`` per pixel (float64), blurred by scikit-image's ``gaussian(sigma)``, values below
  the threshold set to 0;
- mode 0, water (severities 1-3): the layer to 8 bits (truncation); ``255 - Canny(layer, 50, 150)``;
  ``distanceTransform(DIST_L2, 5)`` truncated at 20 (``threshold(THRESH_TRUNC)``); ``blur`` 3 x 3 and truncation to
  8 bits; ``equalizeHist``; ``filter2D`` with ``[[-2, -1, 0], [-1, 1, 1], [0, 1, 2]]`` to 8 bits; ``blur`` 3 x 3; the
  layer times that, divided by its maximum over the image, times the intensity, is added to the image tinted pale
  turquoise (175, 238, 238) / 255 (float32 throughout, as OpenCV's ``cvtColor`` keeps float32);
- mode 1, mud (severities 4, 5): the mask ``layer > threshold`` blurred by ``gaussian(intensity)`` (float32), values
  below 0.8 set to 0, and the image mixed with mud brown (63, 42, 20) / 255: ``x (1 - m) + brown m``.

OpenCV semantics reproduced (read from OpenCV's ``canny.cpp``, ``distransform.cpp``, ``histogram.cpp`` and checked
against ``cv2`` by the tests):

- `canny`: 3 x 3 Sobel derivatives with ``BORDER_REPLICATE``; L1 magnitude ``|dx| + |dy|`` (or L2, squared
  thresholds); non-maximum suppression in four sectors decided in fixed point (``tan 22.5 = 13573 / 2^15``),
  horizontal and vertical sectors ``m > one neighbour and m >= the other``, diagonal ones strict on both, with
  magnitudes 0 outside the image; candidates ``m > low``, strong ``m > high``; hysteresis: candidates 8-connected to
  a strong pixel, computed as a dilation repeated until nothing changes (at most H W rounds);
- `distance_transform`: ``DIST_L2`` with the 5 x 5 mask is Borgefors' chamfer distance with steps 1 (axial), 1.4
  (diagonal) and 2.1969 (knight's move) to the nearest zero pixel, computed by two raster passes. OpenCV's own code
  adds the steps in 16.16 fixed point; the x86 wheels (built with Intel IPP, the default ``cv2`` on x86 and the
  one ImageNet-C was made with) run IPP's ``ippiDistanceTransform_5x5_8u32f``, which adds them in float32, so values
  differ by about 1e-6 and, after ``blur`` and truncation to 8 bits, by a grey level here and there. Both are
  reproduced (``fixed_point``): each pass is a minimum over monotone paths of the left-to-right sum of steps (the
  addition is monotone), computed by relaxation until no value changes (at most ``limit`` + 1 rounds when only
  distances up to ``limit`` are needed);
- `equalize_hist`: OpenCV's ``equalizeHist`` (LUT ``round(cumulative count above the lowest level x (255 / (N -
  count of the lowest level)))`` in float32, rounding half to even; a constant image unchanged);
- `box_blur3`: ``blur(ksize=(3, 3))`` (``BORDER_REFLECT_101``): on float32 the sum in double times 1/9, on 8 bits
  rounded to the nearest level.
"""
import math
from typing import Optional

import torch
import torch.nn.functional as F

from . import draws
from .draws import Generators
from .primitives import border_index, filter2d, gaussian_filter
from .severity import constant as severity_constant

__all__ = ['SEVERITIES', 'SEVERITIES_BY_CONSTANTS', 'spatter', 'canny', 'distance_transform', 'equalize_hist',
           'box_blur3']

# (loc, scale, sigma, threshold, intensity (mode 0) or mask sigma (mode 1), mode: 0 water, 1 mud): the reference's.
SEVERITIES = {'spatter': ((0.65, 0.3, 4, 0.69, 0.6, 0), (0.65, 0.3, 3, 0.68, 0.6, 0), (0.65, 0.3, 2, 0.68, 0.5, 0),
                          (0.65, 0.3, 1, 0.65, 1.5, 1), (0.67, 0.4, 1, 0.65, 1.5, 1))}
# The same per set of constants (`severity`): make_cifar_c.py's (32 px) and make_tinyimagenet_c.py's (64 px), the
# same code.
SEVERITIES_BY_CONSTANTS = {
    'imagenet': SEVERITIES,
    'cifar': {'spatter': ((0.62, 0.1, 0.7, 0.7, 0.5, 0), (0.65, 0.1, 0.8, 0.7, 0.5, 0), (0.65, 0.3, 1, 0.69, 0.5, 0),
                          (0.65, 0.1, 0.7, 0.69, 0.6, 1), (0.65, 0.1, 0.5, 0.68, 0.6, 1))},
    'tinyimagenet': {'spatter': ((0.62, 0.1, 0.7, 0.7, 0.6, 0), (0.65, 0.1, 0.8, 0.7, 0.6, 0),
                                 (0.65, 0.3, 1, 0.69, 0.6, 0), (0.65, 0.1, 0.7, 0.68, 0.6, 1),
                                 (0.65, 0.1, 0.5, 0.67, 0.6, 1))},
}
WATER = (175 / 255, 238 / 255, 238 / 255)      # pale turquoise, added in the image's channel order
MUD = (63 / 255, 42 / 255, 20 / 255)           # mud brown
EDGE_KERNEL = ((-2, -1, 0), (-1, 1, 1), (0, 1, 2))
CANNY_THRESHOLDS = (50, 150)
DISTANCE_CAP = 20
CHAMFER_STEPS = (1.0, 1.4, 2.1969)             # OpenCV's DIST_L2 5 x 5 mask: axial, diagonal, knight's move
_TG22 = int(0.4142135623730950488016887242097 * (1 << 15) + 0.5)   # tan(22.5 degrees) in units of 2^-15


def _wide(device) -> torch.dtype:
    return torch.float32 if torch.device(device).type == 'mps' else torch.float64


def _padded(x: torch.Tensor, radius: int, mode: str) -> torch.Tensor:
    """(B, H, W) extended by ``radius`` on each side (`border_index` modes), any dtype."""
    height, width = x.shape[-2:]
    rows = border_index(torch.arange(-radius, height + radius), height, mode).to(x.device)
    cols = border_index(torch.arange(-radius, width + radius), width, mode).to(x.device)
    return x.index_select(-2, rows).index_select(-1, cols)


def _shifted(padded: torch.Tensor, radius: int, drow: int, dcol: int, height: int, width: int) -> torch.Tensor:
    """The values at (row + drow, col + dcol) of each pixel, from a tensor padded by ``radius``."""
    return padded[..., radius + drow:radius + drow + height, radius + dcol:radius + dcol + width]


def canny(image: torch.Tensor, low: float, high: float, l2_gradient: bool = False) -> torch.Tensor:
    """OpenCV's ``Canny(image, low, high)`` (aperture 3) of (B, H, W) 8-bit images (integer or float tensors holding
    0..255): boolean edge maps (OpenCV's 255). See the module docstring for the semantics."""
    height, width = image.shape[-2:]
    low, high = min(low, high), max(low, high)             # OpenCV swaps them
    src = _padded(image.to(torch.int32), 1, 'nearest')   # BORDER_REPLICATE
    tap = lambda dr, dc: _shifted(src, 1, dr, dc, height, width)   # noqa: E731
    dx = (tap(-1, 1) - tap(-1, -1)) + 2 * (tap(0, 1) - tap(0, -1)) + (tap(1, 1) - tap(1, -1))
    dy = (tap(1, -1) - tap(-1, -1)) + 2 * (tap(1, 0) - tap(-1, 0)) + (tap(1, 1) - tap(-1, 1))
    if l2_gradient:
        low, high = (min(32767.0, t) ** 2 if t > 0 else t for t in (low, high))
        magnitude = dx * dx + dy * dy
    else:
        magnitude = dx.abs() + dy.abs()
    low, high = math.floor(low), math.floor(high)         # cvFloor
    mag = F.pad(magnitude, (1, 1, 1, 1))                          # 0 outside the image
    near = lambda dr, dc: _shifted(mag, 1, dr, dc, height, width)  # noqa: E731
    ax, ay = dx.abs(), dy.abs() << 15
    tg22x = ax * _TG22
    tg67x = tg22x + (ax << 16)
    horizontal = ay < tg22x
    vertical = ay > tg67x
    anti = (dx ^ dy) < 0                                          # signs differ: s = -1
    m = magnitude
    keep_h = (m > near(0, -1)) & (m >= near(0, 1))
    keep_v = (m > near(-1, 0)) & (m >= near(1, 0))
    keep_d = torch.where(anti, (m > near(-1, 1)) & (m > near(1, -1)), (m > near(-1, -1)) & (m > near(1, 1)))
    maximum = torch.where(horizontal, keep_h, torch.where(vertical, keep_v, keep_d))
    candidate = (m > low) & maximum
    edges = candidate & (m > high)
    for _ in range(height * width):    # hysteresis: grow the strong edges through 8-connected candidates
        grown = candidate & (F.max_pool2d(edges[:, None].float(), 3, 1, 1)[:, 0] > 0) | edges
        if torch.equal(grown, edges):
            break
        edges = grown
    return edges


def distance_transform(nonzero: torch.Tensor, limit: Optional[float] = None, fixed_point: bool = False) -> torch.Tensor:
    """OpenCV's ``distanceTransform(src, DIST_L2, 5)`` for (B, H, W) boolean maps of src's nonzero pixels: float32
    chamfer distances to the nearest zero pixel (steps 1, 1.4, 2.1969), added in float32 as IPP does (OpenCV's x86
    wheels) or, ``fixed_point``, in OpenCV's own 16.16 fixed point. With ``limit``, only distances up to ``limit`` are
    exact (larger ones come out larger than ``limit``), which bounds the work to ``limit`` + 2 rounds per pass. Pixels
    that no zero pixel reaches (a map without zeros) get OpenCV's initial value: FLT_MAX with IPP, ``(2^32 - 1 -
    143976) / 2^16`` = 65533.8 in fixed point (OpenCV 4's ``UINT_MAX - LONG_DIST``)."""
    height, width = nonzero.shape[-2:]
    if fixed_point:   # CV_FLT_TO_FIX: cvRound(step * 2^16); unsigned sums kept at most UINT_MAX - LONG_DIST
        dtype = torch.int64
        steps = [round(step * 65536) for step in CHAMFER_STEPS]
        far = 2 ** 32 - 1 - steps[2]
    else:             # IPP: float32 steps and sums, FLT_MAX where nothing reaches
        dtype, far = torch.float32, torch.finfo(torch.float32).max
        steps = list(CHAMFER_STEPS)
    axial, diagonal, knight = (torch.tensor(step, dtype=dtype) for step in steps)
    forward = ((-2, -1, knight), (-2, 1, knight), (-1, -2, knight), (-1, -1, diagonal), (-1, 0, axial),
               (-1, 1, diagonal), (-1, 2, knight), (0, -1, axial))
    dist = torch.where(nonzero, torch.tensor(far, dtype=dtype), torch.tensor(0, dtype=dtype)).to(nonzero.device)
    ceiling = torch.tensor(far, dtype=dtype, device=nonzero.device)
    rounds = height * width if limit is None else int(limit) + 2
    for sign in (1, -1):                # the forward pass, then the backward pass (mirrored neighbours)
        for _ in range(rounds):
            padded = F.pad(dist, (2, 2, 2, 2), value=far)
            relaxed = dist
            for drow, dcol, step in forward:
                relaxed = torch.minimum(relaxed, _shifted(padded, 2, sign * drow, sign * dcol, height, width)
                                        + step.to(dist.device))
            relaxed = torch.minimum(relaxed, ceiling)
            if torch.equal(relaxed, dist):
                break
            dist = relaxed
    return dist.float() / 65536 if fixed_point else dist


def equalize_hist(image: torch.Tensor) -> torch.Tensor:
    """OpenCV's ``equalizeHist`` of (B, H, W) 8-bit images (integer tensors), per image; int64 levels 0..255."""
    batch = image.shape[0]
    levels = image.reshape(batch, -1).long()
    total = levels.shape[1]
    hist = torch.zeros(batch, 256, dtype=torch.int64, device=image.device).scatter_add_(
        1, levels, torch.ones_like(levels))
    lowest = (hist > 0).long().argmax(dim=1, keepdim=True)             # the first level present
    lowest_count = hist.gather(1, lowest)
    scale = torch.tensor(255.0, dtype=torch.float32) / (total - lowest_count).float().clamp(min=1)
    above = (hist.cumsum(1) - lowest_count).clamp(min=0)               # pixels above the lowest level, up to each
    lut = (above.float() * scale).round().clamp(0, 255).long()        # float32 product, rounded half to even
    out = lut.gather(1, levels).view_as(image)
    constant = (lowest_count == total).view(batch, *([1] * (image.dim() - 1)))
    return torch.where(constant, image.long(), out)


def box_blur3(x: torch.Tensor) -> torch.Tensor:
    """OpenCV's ``blur(x, (3, 3))`` (``BORDER_REFLECT_101``) of (B, H, W): float32 in, float32 out (the sum in double
    times 1/9), or 8-bit integers in, int64 out (rounded to the nearest level; sums of 9 have no ties)."""
    height, width = x.shape[-2:]
    integer = not x.is_floating_point()
    padded = _padded(x.long() if integer else x.to(_wide(x.device)), 1, 'reflect101')
    total = sum(_shifted(padded, 1, dr, dc, height, width) for dr in (-1, 0, 1) for dc in (-1, 0, 1))
    if integer:
        return torch.div(2 * total + 9, 18, rounding_mode='floor')
    return (total * (1 / 9)).float()


def _water(x: torch.Tensor, liquid: torch.Tensor, intensity: float, fixed_point: bool) -> torch.Tensor:
    layer = (liquid * 255).floor().clamp(0, 255)                      # .astype(np.uint8)
    edges = canny(layer, *CANNY_THRESHOLDS)
    dist = distance_transform(~edges, limit=DISTANCE_CAP, fixed_point=fixed_point).clamp(max=DISTANCE_CAP)
    dist = box_blur3(dist).floor().long()                             # blur, .astype(np.uint8)
    dist = equalize_hist(dist)
    kernel = torch.tensor(EDGE_KERNEL, dtype=_wide(x.device))
    dist = filter2d(dist[:, None].to(_wide(x.device)), kernel)[:, 0].clamp(0, 255).long()   # filter2D to CV_8U
    dist = box_blur3(dist).float()
    spread = layer.float() * dist                                     # exact: integers below 2^16
    peak = spread.amax(dim=(1, 2), keepdim=True)
    # The reference divides by the maximum, 0 when no pixel passed the threshold (NaN there): no spatter then.
    m = torch.where(peak > 0, spread / peak.clamp(min=1), torch.zeros_like(spread)) * torch.tensor(
        intensity, dtype=torch.float32)
    colour = torch.tensor(WATER, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return (x + (m[:, None] * colour).to(x.dtype)).clamp(0, 1)


def _mud(x: torch.Tensor, liquid: torch.Tensor, threshold: float, sigma: float) -> torch.Tensor:
    mask = (liquid > threshold).float()
    m = gaussian_filter(mask[:, None].to(_wide(x.device)), sigma).float()
    m = torch.where(m < 0.8, torch.zeros_like(m), m)
    colour = torch.tensor(MUD, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return (x * (1 - m).to(x.dtype) + (colour * m).to(x.dtype)).clamp(0, 1)


def spatter(x: torch.Tensor, severity: int = 1, generator: Generators = None, fixed_point: bool = False,
            constants: str = 'imagenet') -> torch.Tensor:
    """Water drops (severities 1-3: a turquoise tint along the rims of blurred-noise blobs, shaded by OpenCV's Canny,
    distance transform, histogram equalisation and an emboss kernel) or mud (severities 4, 5: brown blobs), from one
    normal field per image (ImageNet-C's extra corruption; see the module docstring). ``fixed_point``: the distance
    transform as OpenCV computes it without IPP (non-x86 wheels) instead of IPP's float32. In distribution (exact
    given the same normal draws). ``constants``: the set of severity constants (`severity`: ``'imagenet'``,
    ``'cifar'``, ``'tinyimagenet'``)."""
    loc, scale, sigma, threshold, intensity, mode = severity_constant(SEVERITIES_BY_CONSTANTS, 'spatter', severity,
                                                                      constants)
    batch, _, height, width = x.shape
    wide = _wide(x.device)
    noise = draws.randn((batch, height, width), generator, dtype=wide, device=x.device)
    liquid = gaussian_filter((loc + scale * noise)[:, None], sigma)[:, 0]
    liquid = torch.where(liquid < threshold, torch.zeros_like(liquid), liquid)
    if mode == 0:
        return _water(x, liquid, intensity, fixed_point)
    return _mud(x, liquid, threshold, intensity)
