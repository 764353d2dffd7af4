"""OpenCV's ``resize(INTER_LINEAR)`` of 8-bit images, bit for bit, and the frost photographs resized with it.

The reference's 32 and 64 px variants (``make_cifar_c.py``, ``make_tinyimagenet_c.py``) shrink each frost photograph
with ``cv2.resize(frost, (0, 0), fx=s, fy=s)`` (s = 0.2, 0.3; the default ``INTER_LINEAR``) before cropping the image
size out of it. On 8-bit images OpenCV computes that in fixed point (``imgproc/src/resize.cpp``: ``resizeGeneric_``
with ``HResizeLinear<uchar, int, short, INTER_RESIZE_COEF_SCALE>`` and ``VResizeLinear<..., FixedPtCast<int, uchar,
INTER_RESIZE_COEF_BITS * 2>>``, the same in OpenCV 3.4 and 4.x; IPP's resize is not used, it is not bit-exact):

- output size ``cvRound(side * s)`` (round half to even); ``scale = 1 / s`` in double;
- per output column dx (rows likewise): ``f = (float)((dx + 0.5) * scale - 0.5)``, ``sx = floor(f)``, ``f -= sx`` in
  float32; columns only: where ``sx < 0``, ``sx = 0, f = 0``, and where ``sx >= W - 1``, ``sx = W - 1, f = 0``; rows
  read rows ``sy`` and ``sy + 1`` clamped to the image with their weights unchanged;
- weights ``a0 = cvRound((1 - f) * 2048)``, ``a1 = cvRound(f * 2048)`` (``INTER_RESIZE_COEF_BITS = 11``, float32
  products rounded half to even);
- horizontal pass in int32: ``S[sx] a0 + S[sx + 1] a1``; vertical pass: ``((b0 (R0 >> 4)) >> 16) + ((b1 (R1 >> 4)) >>
  16) + 2 >> 2`` (arithmetic shifts), saturated to 0..255.

OpenCV 4's ARM wheels may route ``resize`` through a HAL (KleidiCV) with other arithmetic; the x86 wheels, and the
OpenCV 3 ImageNet-C was made with, compute the above.
"""
from typing import Tuple

import torch

from .constant_cache import constant_cache
from .reference_data import frost_images

__all__ = ['opencv_resize_linear', 'opencv_resize_size', 'frost_images_scaled']

_COEF_BITS = 11
_COEF_SCALE = 1 << _COEF_BITS


def opencv_resize_size(height: int, width: int, scale: float) -> Tuple[int, int]:
    """``cv2.resize(image, (0, 0), fx=scale, fy=scale)``'s output (height, width): ``cvRound(side * scale)``."""
    return round(height * scale), round(width * scale)   # Python's round is cvRound's: half to even


def _taps(in_size: int, out_size: int, scale: float, clamp_weights: bool):
    """(first index, second index, first weight, second weight) per output pixel along one axis, int64."""
    inverse = 1.0 / scale
    position = ((torch.arange(out_size, dtype=torch.float64) + 0.5) * inverse - 0.5).float()
    first = torch.floor(position)
    fraction = position - first                  # float32, as OpenCV's fx -= sx
    first = first.long()
    if clamp_weights:                            # columns: the border taps read one pixel with the full weight
        low, high = first < 0, first >= in_size - 1
        fraction = torch.where(low | high, torch.zeros_like(fraction), fraction)
        first = torch.where(low, torch.zeros_like(first), torch.where(high, torch.full_like(first, in_size - 1),
                                                                            first))
    weight0 = torch.round((1 - fraction) * _COEF_SCALE).long()   # saturate_cast<short>(float): half to even
    weight1 = torch.round(fraction * _COEF_SCALE).long()
    second = (first + 1).clamp(0, in_size - 1)
    return first.clamp(0, in_size - 1), second, weight0, weight1


def opencv_resize_linear(levels: torch.Tensor, scale: float) -> torch.Tensor:
    """``cv2.resize(image, (0, 0), fx=scale, fy=scale)`` (``INTER_LINEAR``) of 8-bit images: ``levels`` (..., H, W)
    grey levels 0..255 (uint8 or any integer dtype), each channel on its own; returns uint8 (..., H', W') equal to
    OpenCV's bit for bit (see the module docstring)."""
    if 1.0 / scale == 2.0:   # cv::resize's is_area_fast with iscale 2: INTER_AREA's 2 x 2 means instead
        raise ValueError('cv2.resize by exactly 0.5 computes INTER_AREA, which opencv_resize_linear does not.')
    height, width = levels.shape[-2:]
    out_h, out_w = opencv_resize_size(height, width, scale)
    device = levels.device
    c0, c1, a0, a1 = (t.to(device) for t in _taps(width, out_w, scale, clamp_weights=True))
    r0, r1, b0, b1 = (t.to(device) for t in _taps(height, out_h, scale, clamp_weights=False))
    source = levels.to(torch.int64)
    rows = source.index_select(-1, c0) * a0 + source.index_select(-1, c1) * a1        # (..., H, W') int32 range
    upper, lower = rows.index_select(-2, r0), rows.index_select(-2, r1)
    b0, b1 = b0.view(-1, 1), b1.view(-1, 1)
    out = ((b0 * (upper >> 4)) >> 16) + ((b1 * (lower >> 4)) >> 16)
    return ((out + 2) >> 2).clamp(0, 255).to(torch.uint8)


@constant_cache(maxsize=4)
def _scaled_cpu(scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
    stack, sizes = frost_images('cpu')
    photos = [opencv_resize_linear(stack[i, :, :h, :w], scale) for i, (h, w) in enumerate(sizes.tolist())]
    scaled = torch.tensor([photo.shape[1:] for photo in photos])
    out = torch.zeros(len(photos), 3, *scaled.amax(dim=0).tolist(), dtype=torch.uint8)
    for i, photo in enumerate(photos):   # six photographs, once per scale
        out[i, :, :photo.shape[1], :photo.shape[2]] = photo
    return out, scaled


_ON_DEVICE = {}


def frost_images_scaled(device=None, scale: float = 1.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """`frost_images` (the six photographs, zero-padded, and their sizes), each photograph shrunk by
    ``cv2.resize(fx=scale, fy=scale)`` as the reference's 32 / 64 px frost does (`opencv_resize_linear`); scale 1:
    the photographs as they are. Kept per device and scale."""
    if scale == 1:
        return frost_images(device)
    key = (str(torch.device(device) if device is not None else torch.device('cpu')), float(scale))
    if key not in _ON_DEVICE:
        stack, sizes = _scaled_cpu(float(scale))
        _ON_DEVICE[key] = (stack.to(key[0]), sizes.to(key[0]))
    return _ON_DEVICE[key]
