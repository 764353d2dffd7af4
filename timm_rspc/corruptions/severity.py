"""ImageNet-C's five severity levels and the three sets of constants: one check each, so every corruption refuses a
bad level or an unknown set of constants with the same one-line message.

The reference has one set of severity constants per image size it was made for (hendrycks/robustness,
``ImageNet-C/create_c/``): ``'imagenet'`` (``make_imagenet_c.py`` and PyPI's ``imagenet_c``, 224 px, ImageNet-C),
``'cifar'`` (``make_cifar_c.py``, 32 px, CIFAR-10-C and CIFAR-100-C) and ``'tinyimagenet'`` (``make_tinyimagenet_c.py``,
64 px, Tiny-ImageNet-C; ``make_imagenet_64_c.py``, ImageNet 64x64-C, has the same corruption functions). Each
corruption module keeps its tables as ``SEVERITIES_BY_CONSTANTS``: {constants name: {corruption: five levels}}.
"""
from typing import Any, Mapping, Sequence

__all__ = ['LEVELS', 'CONSTANTS', 'NATIVE_SIZES', 'check_constants', 'constant']

LEVELS = range(1, 6)
# The sets of constants, each with the image side (px) its reference script corrupts.
NATIVE_SIZES = {'imagenet': 224, 'cifar': 32, 'tinyimagenet': 64}
CONSTANTS = tuple(NATIVE_SIZES)


def check_constants(constants: str) -> str:
    """``constants`` if it names a set of constants, else a one-line ``ValueError`` listing them."""
    if constants not in NATIVE_SIZES:
        raise ValueError(f'Unknown corruption constants {constants!r}; choose from {", ".join(CONSTANTS)} '
                         f'(ImageNet-C 224 px, CIFAR-10/100-C 32 px, Tiny-ImageNet-C 64 px).')
    return constants


def constant(severities: Mapping[str, Mapping[str, Sequence[Any]]], name: str, severity: int,
             constants: str = 'imagenet') -> Any:
    """The reference's constant of corruption ``name`` at ``severity`` (1..5) in the set ``constants`` of the tables
    ``severities`` ({constants name: {corruption: levels}})."""
    check_constants(constants)
    if severity not in LEVELS:
        raise ValueError(f'The corruption severity must be 1..5 (ImageNet-C levels), got {severity}.')
    return severities[constants][name][severity - 1]
