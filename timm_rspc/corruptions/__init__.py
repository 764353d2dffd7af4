"""Image corruptions of ImageNet-C in torch, batched, on any device, checked against the reference implementation.

``corrupt(name, pixels, severity, generator)`` on (B, 3, H, W) pixels in [0, 1]; ``CORRUPTIONS`` (name -> function
``f(pixels, severity=1, generator=None)``), ``CATEGORIES`` (noise / blur / weather / digital), ``EXTRA`` (ImageNet-C's
held-out corruptions), ``FIDELITY`` (*exact* or *in distribution*, see `imagenet_c`), ``SEVERITIES`` (the reference's
constants); ``constants`` picks the reference's set of severity constants: ``'imagenet'`` (default, ImageNet-C, 224
px), ``'cifar'`` (CIFAR-10-C / CIFAR-100-C, 32 px) or ``'tinyimagenet'`` (Tiny-ImageNet-C, 64 px), all in
``SEVERITIES_BY_CONSTANTS`` (checked against the 32 / 64 px scripts by ``tests/test_corruptions_small.py``);
``generator`` is one ``torch.Generator`` for the batch or one per image (`per_image_generators`: an image's corruption
is then the same in any batch). ``f(pixels, severity, generator, constants='imagenet')``. So far, each with a test
against the reference code (``tests/test_corruptions_reference.py``):

| corruption | category | fidelity |
|---|---|---|
| gaussian_noise | noise | in distribution |
| shot_noise | noise | in distribution |
| impulse_noise | noise | in distribution |
| speckle_noise | noise (extra) | in distribution |
| defocus_blur | blur | exact |
| zoom_blur | blur | exact |
| gaussian_blur | blur (extra) | exact |
| frost | weather | in distribution (exact given the same photograph and crop) |
| brightness | weather | exact |
| fog | weather | in distribution (exact given the same draws) |
| contrast | digital | exact |
| elastic_transform | digital | in distribution (exact given the same draws) |
| pixelate | digital | exact (bit-identical) |
| jpeg_compression | digital | exact (bit-identical) |
| saturate | digital (extra) | exact |
| glass_blur | blur | in distribution (exact given the same draws) |
| spatter | weather (extra) | in distribution (exact given the same draws) |
| motion_blur | blur | in distribution (bit-identical given the same angle; ImageMagick 6.9.11 Q16) |
| snow | weather | in distribution (exact given the same draws) |

motion_blur and snow are tested against the reference with ImageMagick through Wand
(``tests/test_corruptions_magick.py``). frost's photographs come from the reference's PyPI sdist, fetched once
(`reference_data`).

`primitives` holds the library operations the reference relies on (scikit-image's ``gaussian``, Pillow's BOX resize,
scipy.ndimage's linear zoom and ``map_coordinates``, OpenCV's ``filter2D`` and ``warpAffine`` sampling, ImageNet-C's
anti-aliased disk, the diamond-square plasma fractal); `jpeg` is Pillow's (libjpeg-turbo's) JPEG round trip;
`glass` is glass_blur's sequential pixel copies (pointer jumping); `spatter` holds OpenCV's Canny, chamfer
``distanceTransform``, ``equalizeHist`` and 3 x 3 ``blur`` with their exact semantics; `motion` is ImageMagick 6's
motion blur (``magick_motion_blur``) and the two corruptions made with it.
"""
from .imagenet_c import (
    CATEGORIES, CONSTANTS, CORRUPTIONS, EXTRA, FIDELITY, FROST_PHOTO_SCALES, NATIVE_SIZES, SEVERITIES,
    SEVERITIES_BY_CONSTANTS, brightness, contrast, corrupt, defocus_blur,
    elastic_transform, fog, frost, gaussian_blur, gaussian_noise, impulse_noise, jpeg_compression, pixelate, saturate,
    shot_noise, speckle_noise, zoom_blur,
)
from .glass import glass_blur, glass_shuffle
from .spatter import box_blur3, canny, distance_transform, equalize_hist, spatter
from .motion import magick_motion_blur, motion_blur, snow
from .draws import Generators, per_image_generators
from .jpeg import jpeg_round_trip
from .resize import frost_images_scaled, opencv_resize_linear
from .primitives import (
    border_index, box_resize, clipped_zoom, disk_kernel, filter2d, gaussian_filter, plasma_fractal, sample_bilinear,
)

__all__ = [
    'CORRUPTIONS', 'CATEGORIES', 'EXTRA', 'FIDELITY', 'SEVERITIES', 'SEVERITIES_BY_CONSTANTS', 'CONSTANTS',
    'NATIVE_SIZES', 'FROST_PHOTO_SCALES', 'opencv_resize_linear', 'frost_images_scaled', 'corrupt', 'gaussian_noise',
    'shot_noise',
    'impulse_noise', 'speckle_noise', 'defocus_blur', 'zoom_blur', 'gaussian_blur', 'frost', 'brightness', 'fog',
    'contrast', 'elastic_transform', 'pixelate', 'jpeg_compression', 'saturate', 'Generators', 'per_image_generators',
    'jpeg_round_trip', 'border_index', 'glass_blur', 'glass_shuffle', 'spatter', 'canny', 'distance_transform',
    'equalize_hist', 'box_blur3', 'motion_blur', 'snow', 'magick_motion_blur',
    'box_resize', 'clipped_zoom', 'disk_kernel', 'filter2d', 'gaussian_filter', 'plasma_fractal', 'sample_bilinear',
]
