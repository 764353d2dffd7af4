"""Image corruptions of ImageNet-C in torch, batched, on any device, checked against the reference implementation.

``corrupt(name, pixels, severity, generator)`` on (B, 3, H, W) pixels in [0, 1]; ``CORRUPTIONS`` (name -> function),
``CATEGORIES`` (noise / blur / weather / digital), ``FIDELITY`` (*exact* or *in distribution*, see `imagenet_c`),
``SEVERITIES`` (the reference's constants). So far (each with a reference test):

| corruption | category | fidelity |
|---|---|---|
| gaussian_noise | noise | in distribution |
| impulse_noise | noise | in distribution |
| gaussian_blur | blur (ImageNet-C's extra) | exact |
| brightness | weather | exact |
| fog | weather | in distribution (exact given the same draws) |
| contrast | digital | exact |
| pixelate | digital | exact |

`primitives` holds the library operations the reference relies on (scikit-image's ``gaussian``, Pillow's BOX resize,
the diamond-square plasma fractal).
"""
from .imagenet_c import (
    CATEGORIES, CORRUPTIONS, FIDELITY, SEVERITIES, brightness, contrast, corrupt, fog, gaussian_blur, gaussian_noise,
    impulse_noise, pixelate,
)
from .primitives import box_resize, gaussian_filter, plasma_fractal

__all__ = [
    'CORRUPTIONS', 'CATEGORIES', 'FIDELITY', 'SEVERITIES', 'corrupt', 'gaussian_noise', 'impulse_noise',
    'gaussian_blur', 'brightness', 'fog', 'contrast', 'pixelate', 'box_resize', 'gaussian_filter', 'plasma_fractal',
]
