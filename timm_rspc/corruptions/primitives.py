"""The image operations the ImageNet-C reference takes from its libraries, in torch, with their semantics.

- `gaussian_filter`: scikit-image's ``gaussian`` (scipy.ndimage's separable Gaussian) per channel;
- `box_resize`: Pillow's ``Image.resize(..., Image.BOX)`` on 8-bit images;
- `plasma_fractal`: ImageNet-C's diamond-square height map (its ``plasma_fractal``), batched;
- `clipped_zoom`: ImageNet-C's ``clipped_zoom`` (a centre crop enlarged by scipy.ndimage's linear ``zoom`` and
  trimmed back to the image size);
- `numpy_arange`: ``numpy.arange``'s float values, which decide how many zooms ``zoom_blur`` averages;
- `disk_kernel`, `filter2d`: ImageNet-C's anti-aliased disk (its ``disk``: OpenCV's ``GaussianBlur`` of a binary
  disk) and OpenCV's ``filter2D`` (correlation, ``BORDER_REFLECT_101``);
- `sample_bilinear`, `border_index`: linear interpolation at arbitrary positions with scipy's / OpenCV's borders
  (scipy.ndimage's ``map_coordinates(order=1)``, OpenCV's ``warpAffine`` with ``INTER_LINEAR``).

All work on (B, C, H, W) tensors on any device; `gaussian_filter`, `box_resize`, `clipped_zoom`, `filter2d` and
`sample_bilinear` are differentiable in the image (`box_resize`'s rounding to 8 bits passes gradients straight
through).
"""
import math
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

from . import draws
from .constant_cache import constant_cache
from .draws import Generators

__all__ = [
    'gaussian_filter', 'box_resize', 'plasma_fractal', 'clipped_zoom', 'clipped_zoom_sum', 'numpy_arange',
    'disk_kernel', 'filter2d', 'disk_filter', 'border_index', 'sample_bilinear',
]


def _gaussian_kernel(sigma: float, truncate: float, dtype, device) -> torch.Tensor:
    """scipy.ndimage's 1-D Gaussian: radius ``int(truncate * sigma + 0.5)``, weights normalised to sum 1."""
    radius = int(truncate * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 / sigma ** 2 * offsets ** 2)
    return (kernel / kernel.sum()).to(dtype=dtype, device=device)


def border_index(index: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """Where index ``index`` of a line of ``size`` samples reads from, for a border ``mode``: scipy.ndimage's
    ``'nearest'`` (``a a a | a b c d | d d d``) and ``'reflect'`` (``c b a | a b c d | d c b``, half-sample
    symmetric), OpenCV's ``'reflect101'`` (``BORDER_REFLECT_101``, scipy's ``'mirror'``: ``d c b | a b c d | c b
    a``); reflected again as often as needed."""
    if mode == 'nearest':
        return index.clamp(0, size - 1)
    if mode == 'reflect':
        index = index.remainder(2 * size)
        return torch.where(index >= size, 2 * size - 1 - index, index)
    if mode == 'reflect101':
        if size == 1:
            return torch.zeros_like(index)
        index = index.remainder(2 * size - 2)
        return torch.where(index >= size, 2 * size - 2 - index, index)
    raise ValueError(f'Unknown border mode {mode!r}.')


@constant_cache(maxsize=64)
def _gaussian_matrix(size: int, sigma: float, truncate: float, mode: str) -> torch.Tensor:
    """(size, size) float64: scipy.ndimage's 1-D Gaussian filter along a line with the border folded in."""
    kernel = _gaussian_kernel(sigma, truncate, torch.float64, 'cpu')
    radius = kernel.numel() // 2
    out = torch.arange(size)[:, None].expand(size, kernel.numel())
    source = border_index(out + torch.arange(-radius, radius + 1)[None, :], size, mode)
    matrix = torch.zeros(size, size, dtype=torch.float64)
    return matrix.index_put_((out, source), kernel.expand(size, -1), accumulate=True)


def gaussian_filter(x: torch.Tensor, sigma: float, truncate: float = 4.0, mode: str = 'nearest') -> torch.Tensor:
    """scikit-image's ``gaussian(image, sigma, mode=mode, truncate=truncate, channel_axis=-1)`` on (B, C, H, W) (or
    ``gaussian(field, ...)`` of 2-D fields given as (B, 1, H, W)): each channel blurred over H and W by scipy.ndimage's
    separable Gaussian (radius ``int(truncate * sigma + 0.5)``), borders as scipy's ``mode`` (`border_index`; the
    default ``'nearest'`` repeats the edge pixel, scikit-image's default), at any radius, also one larger than the
    image. Computed as (H, H) and (W, W) matrices with the borders folded in: ``A_h @ x @ A_w^T``; for a radius up to
    `TAPS_RADIUS` (and smaller than the image) as the kernel's taps on the padded image instead (`_gaussian_taps`:
    fewer operations than the matrices' H and W multiply-adds per value; equal within float rounding)."""
    radius = int(truncate * sigma + 0.5)
    if radius <= min(TAPS_RADIUS, x.shape[-2] - 1, x.shape[-1] - 1):
        kernel = _gaussian_kernel(float(sigma), float(truncate), torch.float64, 'cpu').tolist()
        return _gaussian_taps(_gaussian_taps(x, kernel, -2, mode), kernel, -1, mode)
    rows = _gaussian_matrix(x.shape[-2], float(sigma), float(truncate), mode).to(dtype=x.dtype, device=x.device)
    cols = _gaussian_matrix(x.shape[-1], float(sigma), float(truncate), mode).to(dtype=x.dtype, device=x.device)
    return rows @ x @ cols.T


# Up to this radius `gaussian_filter` adds the taps (2 r + 1 whole-image operations per axis) rather than multiplying
# by (H, H) / (W, W) matrices (H, W multiply-adds per value): measured the faster way on a CPU for 224 px images.
TAPS_RADIUS = 12


def _gaussian_taps(x: torch.Tensor, kernel, dim: int, mode: str) -> torch.Tensor:
    """The symmetric 1-D ``kernel`` along ``dim`` (-2 or -1) of (..., H, W), borders as `border_index`'s ``mode``:
    the line padded by the radius (one gather on a 2-D / 3-D view, fast), then the taps added pairwise."""
    radius, size, shape = len(kernel) // 2, x.shape[dim], x.shape
    index = border_index(torch.arange(-radius, size + radius), size, mode).to(x.device)
    lines = x.reshape(-1, size) if dim == -1 else x.reshape(-1, size, shape[-1])
    padded = lines.index_select(1, index)
    out = padded.narrow(1, radius, size) * kernel[radius]
    for offset in range(1, radius + 1):
        out.add_(padded.narrow(1, radius - offset, size), alpha=kernel[radius - offset])
        out.add_(padded.narrow(1, radius + offset, size), alpha=kernel[radius + offset])
    return out.view(shape)


def sample_bilinear(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, mode: str) -> torch.Tensor:
    """(B, C, H, W) images read at (B, H', W') positions (row, column) by linear interpolation between the four
    neighbouring samples, samples outside the image as `border_index`'s ``mode`` (scipy.ndimage's ``map_coordinates``
    with ``order=1``, OpenCV's ``INTER_LINEAR``). Differentiable in ``x``."""
    batch, channels, height, width = x.shape
    top, left = rows.floor(), cols.floor()
    down, right = (rows - top).to(x.dtype)[:, None], (cols - left).to(x.dtype)[:, None]
    top, left = top.float(), left.float()   # whole numbers: the folding below is exact in float32
    upper, lower = _fold(top, height, mode).mul_(width), _fold(top.add_(1), height, mode).mul_(width)
    first, second = _fold(left, width, mode), _fold(left.add_(1), width, mode)
    flat = x.reshape(batch, channels, height * width)

    def tap(row_start, col):
        index = torch.add(row_start, col).long().reshape(batch, 1, -1).expand(-1, channels, -1)
        return flat.gather(2, index).view(batch, channels, *rows.shape[1:])
    # in place on the gathered copies (autograd needs none of the overwritten values)
    above = tap(upper, first).mul_(1 - right).addcmul_(tap(upper, second), right)
    below = tap(lower, first).mul_(1 - right).addcmul_(tap(lower, second), right)
    return above.mul_(1 - down).addcmul_(below, down)


def _fold(index: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """`border_index` on whole numbers held in a float tensor (exact below 2^24), without integer division: the
    reflections as a triangle wave."""
    if mode == 'nearest' or size == 1:
        return index.clamp(0, size - 1)
    if mode == 'reflect':        # period 2n, half-sample symmetric
        period, centre = 2 * size, size - 0.5
    elif mode == 'reflect101':   # period 2n - 2, about the edge samples
        period, centre = 2 * size - 2, size - 1.0
    else:
        raise ValueError(f'Unknown border mode {mode!r}.')
    phase = torch.div(index, period).floor_().mul_(-period).add_(index)   # index mod period
    return phase.sub_(centre).abs_().neg_().add_(centre)


@constant_cache(maxsize=64)
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


@constant_cache(maxsize=64)
def _box_windows(in_size: int, out_size: int):
    """Reducing: each output pixel's window of `_box_resize_matrix` as (first, stop) indices of its contiguous input
    pixels, its weight (a multiple of 2**-22) and that weight's fixed-point integer (Pillow's ``k``)."""
    matrix = _box_resize_matrix(in_size, out_size)
    inside = matrix > 0
    first = inside.double().argmax(dim=1)
    stop = first + inside.sum(dim=1)
    weight = matrix.amax(dim=1)
    return first, stop, weight, (weight * 2 ** 22).round().int()


def _box_reduce(grey: torch.Tensor, dim: int, in_size: int, out_size: int) -> torch.Tensor:
    """One reducing pass of Pillow's BOX resize on 8-bit ``grey`` (whole grey levels) along ``dim``: window sums S
    from a running sum (exact: integers below 2^24), then Pillow's fixed-point ``(S * k + 2^21) >> 22`` clipped to
    0..255 in int32 (below 2^31), exactly; the gradient is the window average's (straight through the rounding)."""
    first, stop, weight, fixed = (t.to(grey.device) for t in _box_windows(in_size, out_size))
    running = torch.cumsum(grey, dim)
    running = torch.cat([torch.zeros_like(running.narrow(dim, 0, 1)), running], dim)
    if bool((first[1:] == stop[:-1]).all()):   # adjacent windows (always, reducing): one gather of the boundaries
        bounds = running.index_select(dim, torch.cat([first[:1], stop]))
        sums = bounds.narrow(dim, 1, out_size) - bounds.narrow(dim, 0, out_size)
    else:
        sums = running.index_select(dim, stop) - running.index_select(dim, first)
    shape = [1] * grey.dim()
    shape[dim] = out_size
    exact = ((sums.detach().round().int() * fixed.view(shape) + (1 << 21)) >> 22).clamp_(0, 255).to(grey.dtype)
    if not (grey.requires_grad and torch.is_grad_enabled()):
        return exact
    average = sums * weight.to(grey.dtype).view(shape)
    return average + (exact - average).detach()


def _round_8bit(grey: torch.Tensor) -> torch.Tensor:
    """Grey levels rounded half up and clipped to 0..255, as Pillow stores each pass; the gradient passes straight
    through."""
    return grey + (torch.floor(grey + 0.5).clamp(0, 255) - grey).detach()


def box_resize(x: torch.Tensor, size) -> torch.Tensor:
    """Pillow's ``Image.resize((width, height), Image.BOX)`` of the 8-bit image ``x`` given as (B, C, H, W) pixels in
    [0, 1], ``size = (height, width)``: rounded to 8 bits first (Pillow's input), resampled horizontally, rounded,
    resampled vertically, rounded (Pillow's two passes; a pass whose size does not change is skipped, as Pillow does;
    an enlarging pass copies pixels, so it is a gather; a reducing one sums windows from a running sum and rounds with
    Pillow's integers, `_box_reduce`). The result is a multiple of 1/255."""
    height, width = x.shape[-2:]
    if x.requires_grad and torch.is_grad_enabled():
        grey = _round_8bit(x * 255)
    else:
        grey = x.mul(255).add_(0.5).floor_().clamp_(0, 255)
    for dim, old, new in ((-1, width, size[1]), (-2, height, size[0])):
        if new == old:
            continue
        if new > old:   # one weight 1 per output pixel
            grey = grey.index_select(dim, _box_resize_matrix(old, new).argmax(dim=1).to(x.device))
        else:
            grey = _box_reduce(grey, grey.dim() + dim, old, new)
    return grey / 255 if grey.requires_grad else grey.div_(255)   # without autograd grey is this function's own


def plasma_fractal(batch: int, mapsize: int = 256, wibbledecay: float = 3, generator: Generators = None,
                   device=None) -> torch.Tensor:
    """ImageNet-C's ``plasma_fractal``, one independent map per image: (batch, mapsize, mapsize) float32 in [0, 1].

    The diamond-square algorithm on a torus (the reference's ``np.roll``): at each of the log2(mapsize) levels the
    centres of the current squares, then the edge midpoints (left, then top), get the mean of their four neighbours
    plus ``wibble * U(-wibble, wibble)``; ``wibble`` starts at 100 and is divided by ``wibbledecay`` per level; the map
    is finally rescaled to [0, 1]. The uniform draws are ``torch.rand`` of shape (batch, n, n), three per level in the
    reference's order, so a map equals the reference's given the same draws."""
    if mapsize < 2 or mapsize & (mapsize - 1):
        raise ValueError(f'mapsize must be a power of two, got {mapsize}.')
    field = torch.zeros(batch, mapsize, mapsize, dtype=torch.float32, device=device)
    step, wibble = mapsize, 100.0

    def wibbled_mean(total):
        draw = draws.rand(total.shape, generator, dtype=torch.float32, device=device)
        return total / 4 + wibble * (-wibble + (2 * wibble) * draw)

    while step >= 2:
        half = step // 2
        corners = field[:, ::step, ::step]
        total = corners + corners.roll(-1, 1)
        field[:, half::step, half::step] = wibbled_mean(total + total.roll(-1, 2))
        centres, corners = field[:, half::step, half::step], field[:, ::step, ::step]
        field[:, ::step, half::step] = wibbled_mean(
            (centres + centres.roll(1, 1)) + (corners + corners.roll(-1, 2)))
        field[:, half::step, ::step] = wibbled_mean(
            (centres + centres.roll(1, 2)) + (corners + corners.roll(-1, 1)))
        step, wibble = half, wibble / wibbledecay
    field.sub_(field.amin(dim=(1, 2), keepdim=True))
    return field.div_(field.amax(dim=(1, 2), keepdim=True))


def numpy_arange(start: float, stop: float, step: float) -> List[float]:
    """The values of ``numpy.arange(start, stop, step)`` for floats: ``ceil((stop - start) / step)`` of them, the
    i-th ``start + i * ((start + step) - start)`` (numpy's fill rule). ``numpy.arange(1, 1.11, 0.01)`` has 12 values,
    the last 1.11."""
    count = math.ceil((stop - start) / step)
    delta = (start + step) - start
    return [float(start)] + [start + i * delta for i in range(1, count)]


@constant_cache(maxsize=256)
def _zoom_taps(size: int, zoom: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Along one axis of ``size`` pixels: ImageNet-C's ``clipped_zoom`` as two taps per output pixel (first index,
    second index, weight of the second). The centre crop of ``ceil(size / zoom)`` pixels (starting at
    ``(size - crop) // 2``) is enlarged to ``round(crop * zoom)`` by scipy.ndimage's ``zoom(order=1)`` (output pixel
    ``o`` reads the crop at ``o * (crop - 1) / (out - 1)``, linearly interpolated) and trimmed back to ``size`` from
    ``(out - size) // 2``; computed in double as scipy does."""
    crop = math.ceil(size / zoom)
    top = (size - crop) // 2
    out = int(round(crop * zoom))
    trim = (out - size) // 2
    step = (crop - 1) / (out - 1) if out > 1 else 1.0
    coordinate = (torch.arange(size, dtype=torch.float64) + trim) * step
    first = torch.floor(coordinate).clamp(0, crop - 1)
    weight = coordinate - first
    second = (first + 1).clamp(max=crop - 1)
    return (first.long() + top), (second.long() + top), weight


def clipped_zoom(x: torch.Tensor, zoom: float) -> torch.Tensor:
    """ImageNet-C's ``clipped_zoom`` of (B, C, H, W) images: the centre ``1 / zoom`` of each image enlarged back to
    (H, W) by linear interpolation, with scipy.ndimage's ``zoom`` sampling, separately along H and W (the reference
    assumes square images and uses H for both axes)."""
    shape = x.shape
    for dim, size in ((-1, x.shape[-1]), (-2, x.shape[-2])):
        first, second, weight = (t.to(x.device) for t in _zoom_taps(size, zoom))
        lines = x.reshape(-1, size) if dim == -1 else x.reshape(-1, size, shape[-1])   # fast index_select views
        weight = weight.to(x.dtype).view((size,) if dim == -1 else (size, 1))
        near = lines.index_select(1, first) * (1 - weight)
        x = torch.addcmul(near, lines.index_select(1, second), weight).view(shape)   # as clipped_zoom_sum computes
    return x


def clipped_zoom_sum(x: torch.Tensor, zooms) -> torch.Tensor:
    """``sum(clipped_zoom(x, zoom) for zoom in zooms)``, accumulated in that order. Without autograd the zooms are
    computed into buffers reused from one zoom to the next (large fresh tensors cost page faults on the CPU)."""
    total = torch.zeros_like(x)
    if x.requires_grad and torch.is_grad_enabled():
        for zoom in zooms:
            total = total + clipped_zoom(x, zoom)
        return total
    height, width = x.shape[-2:]
    lines = x.reshape(-1, width)     # as (images x channels x rows, columns): index_select is fast on 2-D / 3-D views
    buffers = [torch.empty_like(lines) for _ in range(4)]
    for zoom in zooms:
        (cols_first, cols_second, cols_weight), (rows_first, rows_second, rows_weight) = (
            [t.to(x.device) for t in _zoom_taps(size, zoom)] for size in (width, height))
        cols_weight, rows_weight = cols_weight.to(x.dtype), rows_weight.to(x.dtype).view(-1, 1)
        left = torch.index_select(lines, 1, cols_first, out=buffers[0])
        right = torch.index_select(lines, 1, cols_second, out=buffers[1])
        along = left.mul_(1 - cols_weight).addcmul_(right, cols_weight).view(-1, height, width)
        upper = torch.index_select(along, 1, rows_first, out=buffers[2].view(-1, height, width))
        lower = torch.index_select(along, 1, rows_second, out=buffers[3].view(-1, height, width))
        total.add_(upper.mul_(1 - rows_weight).addcmul_(lower, rows_weight).view_as(x))
    return total


def _pad_reflect101(x: torch.Tensor, radius_h: int, radius_w: int) -> torch.Tensor:
    if radius_h < x.shape[-2] and radius_w < x.shape[-1] and x.dim() == 4:   # reflected once: torch's own padding
        return F.pad(x, (radius_w, radius_w, radius_h, radius_h), mode='reflect')
    rows = border_index(torch.arange(-radius_h, x.shape[-2] + radius_h), x.shape[-2], 'reflect101').to(x.device)
    cols = border_index(torch.arange(-radius_w, x.shape[-1] + radius_w), x.shape[-1], 'reflect101').to(x.device)
    return x.index_select(-2, rows).index_select(-1, cols)


def filter2d(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """OpenCV's ``filter2D(channel, -1, kernel)`` on each channel of (B, C, H, W): correlation with the (k, k) kernel
    (odd k) anchored at its centre, borders ``BORDER_REFLECT_101``."""
    radius, channels = kernel.shape[-1] // 2, x.shape[1]
    weight = kernel.to(dtype=x.dtype, device=x.device).expand(channels, 1, *kernel.shape[-2:])
    return F.conv2d(_pad_reflect101(x, radius, radius), weight, groups=channels)


@constant_cache(maxsize=16)
def _disk_filter_plan(radius: float, alias_blur: float):
    """How `disk_filter` applies ImageNet-C's disk kernel K: ``K = (G * D) / area + R`` with D the binary disk, G
    OpenCV's 1-D Gaussian taps (outer product; taps below 1e-12, as for sigma 0.1, dropped) and R the remainder
    (float64): where the disk touches the kernel's edge (radius 8 and 10), ``GaussianBlur``'s reflected border and the
    grid's cut make K differ from G * D by up to ~1e-4 on a few taps; R's taps below 2e-9 (K's own float32 rounding)
    are dropped (at most 6e-7 on the output, below float32 noise of a direct correlation). Returns (half-width of the
    disk's row at each offset 0..r, the Gaussian's taps scaled by 1 / area, the padding, R's taps grouped by row
    distance: ((|dy|, ((|dx|, weight), ...)), ...))."""
    kernel = _disk_kernel(radius, alias_blur).double()
    half = kernel.shape[-1] // 2
    grid = torch.arange(-half, half + 1, dtype=torch.float64)
    disk = (grid[None, :] ** 2 + grid[:, None] ** 2) <= radius ** 2
    rows = int(disk.any(dim=1).nonzero().max()) - half                   # the disk's reach r
    widths = tuple(int(disk[half + dy].nonzero().max()) - half for dy in range(rows + 1))
    ksize = 3 if radius <= 8 else 5
    taps = torch.arange(ksize, dtype=torch.float64) - (ksize - 1) * 0.5
    gauss = torch.exp(-0.5 / alias_blur ** 2 * taps ** 2)
    gauss = gauss / gauss.sum()
    gauss = gauss[gauss > 1e-12]
    reach = gauss.numel() // 2
    pad = max(half, rows + reach)
    area = float(disk.sum())
    side = half + reach
    smooth = torch.zeros(2 * side + 1, 2 * side + 1, dtype=torch.float64)   # (G * D) / area, centred
    for i, gi in enumerate(gauss.tolist()):
        for j, gj in enumerate(gauss.tolist()):
            smooth[i:i + 2 * half + 1, j:j + 2 * half + 1] += gi * gj * disk.double() / area
    remainder = -smooth
    remainder[reach:reach + 2 * half + 1, reach:reach + 2 * half + 1] += kernel
    taps_r = [(int(i) - side, int(j) - side, float(remainder[i, j])) for i, j in (remainder.abs() > 2e-9).nonzero()]
    assert all(abs(dy) <= pad and abs(dx) <= pad for dy, dx, _ in taps_r)
    # R is symmetric in both axes (up to K's float32 rounding, ~1e-10): grouped by row distance |dy|, each group's
    # (|dx|, weight) applied once to horizontal pair sums and added at the rows +dy and -dy
    groups = {}
    for dy, dx, weight in taps_r:
        if dy >= 0 and dx >= 0:
            mirrored = [w for y, x, w in taps_r if abs(y) == dy and abs(x) == dx]
            groups.setdefault(dy, []).append((dx, sum(mirrored) / len(mirrored)))
    return widths, tuple((gauss / area ** 0.5).tolist()), pad, tuple(
        (dy, tuple(sorted(taps))) for dy, taps in sorted(groups.items()))


def _weighted_taps(x: torch.Tensor, taps, dim: int, length: int) -> torch.Tensor:
    """``sum_t taps[t] * x[..., t : t + length, ...]`` along ``dim`` (symmetric taps)."""
    reach = len(taps) // 2
    out = x.narrow(dim, reach, length) * taps[reach]
    for t in range(1, reach + 1):
        out.add_(x.narrow(dim, reach - t, length), alpha=taps[reach + t])
        out.add_(x.narrow(dim, reach + t, length), alpha=taps[reach + t])
    return out


def _fft_size(length: int) -> int:
    """The smallest size >= ``length`` with no prime factor above 5 (fast FFT lengths)."""
    size = length
    while True:
        rest = size
        for prime in (2, 3, 5):
            while rest % prime == 0:
                rest //= prime
        if rest == 1:
            return size
        size += 1


def _fft_correlate(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """``filter2d(x, kernel)`` through the FFT: the image padded (``BORDER_REFLECT_101``) and zero-filled to fast
    lengths, multiplied by the flipped kernel's spectrum; the outputs kept are those no wrap-around reaches."""
    radius = kernel.shape[-1] // 2
    height, width = x.shape[-2:]
    padded = _pad_reflect101(x, radius, radius)
    size = (_fft_size(padded.shape[-2]), _fft_size(padded.shape[-1]))
    flipped = torch.zeros(size, dtype=x.dtype, device=x.device)
    flipped[:kernel.shape[-2], :kernel.shape[-1]] = kernel.flip(-2, -1).to(dtype=x.dtype, device=x.device)
    spectrum = torch.fft.rfft2(padded, s=size).mul_(torch.fft.rfft2(flipped))
    return torch.fft.irfft2(spectrum, s=size)[..., 2 * radius:2 * radius + height, 2 * radius:2 * radius + width]


def disk_filter(x: torch.Tensor, radius: float, alias_blur: float) -> torch.Tensor:
    """``filter2d(x, disk_kernel(radius, alias_blur))`` computed from the kernel's structure (`_disk_filter_plan`):
    the binary disk as horizontal running sums of the widths its rows need (each a previous one plus two columns)
    added over the rows, then the small separable Gaussian, plus the few remainder taps; borders
    ``BORDER_REFLECT_101``. About 30 whole-image operations instead of 289 / 441 multiply-adds per pixel; equal to
    the direct correlation within float rounding. Where the disk touches the kernel's edge (radius 8 and 10) the
    remainder has 48 / 160 taps and the correlation goes through the FFT instead (`_fft_correlate`, equally precise
    in float32: 5e-7). Differentiable."""
    widths, gauss, pad, remainder = _disk_filter_plan(float(radius), float(alias_blur))
    height, width = x.shape[-2:]
    if remainder and x.dim() == 4 and x.dtype in (torch.float32, torch.float64) and x.device.type in ('cpu', 'cuda'):
        # the kernel touches its grid's edge (radius 8 and 10): too many remainder taps, the FFT is faster
        return _fft_correlate(x, _disk_kernel(float(radius), float(alias_blur)))
    rows, reach = len(widths) - 1, len(gauss) // 2
    padded = _pad_reflect101(x, pad, pad)
    extent = rows + reach                       # the disk and the Gaussian read this far from an output pixel
    region = padded[..., pad - extent:pad + height + extent, pad - extent:pad + width + extent]
    inner_h, inner_w = height + 2 * reach, width + 2 * reach    # where the disk's sums are needed
    box = region.narrow(-1, rows, inner_w).clone()
    disk = torch.zeros_like(box.narrow(-2, 0, inner_h))
    for half_width in range(max(widths) + 1):   # box: horizontal sums over 2 * half_width + 1 columns
        if half_width:
            box.add_(region.narrow(-1, rows - half_width, inner_w)).add_(region.narrow(-1, rows + half_width, inner_w))
        for dy in {dy for dy in range(rows + 1) if widths[dy] == half_width} | {
                -dy for dy in range(rows + 1) if widths[dy] == half_width}:   # the disk's rows of that width
            disk.add_(box.narrow(-2, rows + dy, inner_h))
    out = _weighted_taps(_weighted_taps(disk, gauss, -2, height), gauss, -1, width)
    if remainder:
        columns = padded[..., pad:pad + width]
        pair_sums = {}   # |dx| -> x[.., w - dx] + x[.., w + dx] on all padded rows
        for _, taps in remainder:
            for dx, _ in taps:
                if dx and dx not in pair_sums:
                    pair_sums[dx] = padded[..., pad - dx:pad - dx + width] + padded[..., pad + dx:pad + dx + width]
        for dy, taps in remainder:
            row = None
            for dx, weight in taps:
                term = pair_sums[dx] if dx else columns
                row = term * weight if row is None else row.add_(term, alpha=weight)
            out.add_(row.narrow(-2, pad + dy, height))
            if dy:
                out.add_(row.narrow(-2, pad - dy, height))
    return out


def disk_kernel(radius: float, alias_blur: float) -> torch.Tensor:
    """ImageNet-C's anti-aliased disk as a float32 (k, k) tensor (see `_disk_kernel`)."""
    return _disk_kernel(radius, alias_blur).clone()


@constant_cache(maxsize=16)
def _disk_kernel(radius: float, alias_blur: float) -> torch.Tensor:
    """ImageNet-C's ``disk(radius, alias_blur)``: the float32 binary disk ``x^2 + y^2 <= radius^2`` on the grid
    -8..8 (radius <= 8) or -radius..radius, normalised to sum 1, then blurred by OpenCV's ``GaussianBlur`` (3 x 3 for
    radius <= 8, else 5 x 5; sigma ``alias_blur``; ``BORDER_REFLECT_101``): OpenCV's Gaussian kernel
    ``exp(-x^2 / (2 sigma^2))`` in double, normalised, used in float32."""
    half, ksize = (8, 3) if radius <= 8 else (int(radius), 5)
    grid = torch.arange(-half, half + 1, dtype=torch.float64)
    disk = ((grid[None, :] ** 2 + grid[:, None] ** 2) <= radius ** 2).float()
    disk = disk / disk.sum()
    taps = torch.arange(ksize, dtype=torch.float64) - (ksize - 1) * 0.5
    gauss = torch.exp(-0.5 / alias_blur ** 2 * taps ** 2)
    gauss = (gauss / gauss.sum()).float()
    padded = _pad_reflect101(disk[None, None], ksize // 2, ksize // 2)
    rows = F.conv2d(padded, gauss.view(1, 1, 1, -1))
    blurred = F.conv2d(rows, gauss.view(1, 1, -1, 1))
    return blurred[0, 0]
