"""The ImageNet-C corruptions of the sensitivity analysis: seven of `timm_rspc.corruptions`, one or two per category.

- noise: ``gaussian_noise``, ``impulse_noise`` (in distribution);
- blur: ``gaussian_blur`` (exact);
- weather: ``brightness`` (exact), ``fog`` (in distribution: the reference's diamond-square fractal);
- digital: ``contrast``, ``pixelate`` (exact).

*Exact*: within 1 grey level of the reference implementation on 8-bit output; *in distribution*: the same per-pixel
distribution (see `timm_rspc.corruptions` and ``tests/test_corruptions_reference.py``). Each function corrupts whole
images; the analyses keep the result only inside the chosen patches.
"""
from typing import Callable, Dict, Optional

import torch

from timm_rspc import corruptions as _corruptions

__all__ = ['CORRUPTIONS', 'CORRUPTION_CATEGORIES', 'corrupt']

_NAMES = ('gaussian_noise', 'impulse_noise', 'gaussian_blur', 'brightness', 'fog', 'contrast', 'pixelate')
CORRUPTIONS: Dict[str, Callable] = {name: _corruptions.CORRUPTIONS[name] for name in _NAMES}
CORRUPTION_CATEGORIES = {name: _corruptions.CATEGORIES[name] for name in _NAMES}


def corrupt(name: str, pixels: torch.Tensor, severity: int = 3, generator: Optional[torch.Generator] = None):
    """``pixels`` (B, C, H, W) in [0, 1] corrupted by ``name`` at ``severity`` (1..5), clipped to [0, 1]."""
    if name not in CORRUPTIONS:
        raise ValueError(f'Unknown corruption {name!r}; choose from {", ".join(CORRUPTIONS)}.')
    return _corruptions.corrupt(name, pixels, severity, generator)
