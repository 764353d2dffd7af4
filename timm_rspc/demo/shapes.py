"""A procedural 10-class image set: coloured shapes on textured backgrounds, generated offline and deterministically.

Each image shows one shape (the class) at a random position, scale, rotation and colour, on a background of random
low-contrast stripes plus pixel noise. A shape covers a few patches of a small ViT's grid, so occluding the right
patches can change the answer: the set is small enough to train on a CPU in minutes and still exposes patch
sensitivity. Images are drawn for all samples of a class at once from coordinate grids (no per-pixel loops).
"""
import hashlib
import json
import os
import shutil
from typing import Dict, Tuple

import numpy as np
import torch

CLASS_NAMES = (
    'circle', 'square', 'triangle', 'plus', 'ring', 'diamond', 'hbar', 'vbar', 'xcross', 'frame',
)
_ROTATION_INVARIANT = ('circle', 'ring')
_AXIS_ALIGNED = ('hbar', 'vbar', 'plus', 'frame', 'square')  # rotated only slightly, so hbar != vbar, plus != x


def _shape_mask(name: str, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Soft 0..1 mask of ``name`` in shape coordinates ``u, v`` (unit radius, shape centred at the origin)."""
    au, av = u.abs(), v.abs()
    if name == 'circle':
        dist = (u * u + v * v).sqrt() - 1
    elif name == 'ring':
        dist = ((u * u + v * v).sqrt() - 0.8).abs() - 0.22
    elif name == 'square':
        dist = torch.maximum(au, av) - 0.85
    elif name == 'frame':
        dist = (torch.maximum(au, av) - 0.8).abs() - 0.18
    elif name == 'diamond':
        dist = au + av - 1.1
    elif name == 'triangle':
        # Triangle with its apex up (image y grows downwards): above the base, inside the two slanted edges.
        dist = torch.maximum(v - 0.75, 0.866 * au - 0.5 * v - 0.45)
    elif name == 'plus':
        dist = torch.minimum(torch.maximum(au - 0.25, av - 1), torch.maximum(av - 0.25, au - 1))
    elif name == 'xcross':
        d1, d2 = (u + v).abs() / 1.414, (u - v).abs() / 1.414
        dist = torch.maximum(torch.minimum(d1, d2) - 0.2, torch.maximum(au, av) - 0.85)
    elif name == 'hbar':
        dist = torch.maximum(au - 1, av - 0.3)
    elif name == 'vbar':
        dist = torch.maximum(au - 0.3, av - 1)
    else:
        raise ValueError(f'unknown shape {name!r}')
    return (0.5 - dist * 8).clamp(0, 1)  # about one pixel of anti-aliasing at the typical scale


def render_class(name: str, count: int, img_size: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` uint8 images (count, img_size, img_size, 3) of shape ``name``."""
    g = generator

    def rand(*shape):
        return torch.rand(*shape, generator=g)

    coords = (torch.arange(img_size, dtype=torch.float32) + 0.5) / img_size * 2 - 1  # pixel centres in [-1, 1]
    y, x = coords.view(1, -1, 1), coords.view(1, 1, -1)
    scale = 0.36 + 0.2 * rand(count, 1, 1)                   # shape radius, as a fraction of the half-width
    cx = (rand(count, 1, 1) * 2 - 1) * (0.95 - scale)        # keep the shape inside the image
    cy = (rand(count, 1, 1) * 2 - 1) * (0.95 - scale)
    if name in _ROTATION_INVARIANT:
        angle = torch.zeros(count, 1, 1)
    elif name in _AXIS_ALIGNED:
        angle = (rand(count, 1, 1) - 0.5) * 0.5              # +-14 degrees
    else:
        angle = (rand(count, 1, 1) - 0.5) * 1.0              # +-29 degrees
    dx, dy = (x - cx) / scale, (y - cy) / scale
    cos, sin = angle.cos(), angle.sin()
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy
    mask = _shape_mask(name, u, v).unsqueeze(-1)                          # (N, H, W, 1)

    # Background: random-direction stripes between two dull colours, plus pixel noise.
    bg_a = rand(count, 1, 1, 3) * 0.5
    bg_b = (bg_a + (rand(count, 1, 1, 3) - 0.5) * 0.4).clamp(0, 1)       # a low-contrast second colour
    theta = rand(count, 1, 1) * np.pi
    freq = 2 + 6 * rand(count, 1, 1)
    stripes = 0.5 + 0.5 * torch.sin(freq * np.pi * (x * theta.cos() + y * theta.sin()) + 6.28 * rand(count, 1, 1))
    background = bg_a + (bg_b - bg_a) * stripes.unsqueeze(-1)
    foreground = 0.35 + 0.65 * rand(count, 1, 1, 3)                       # brighter than the background on average
    image = background * (1 - mask) + foreground * mask
    image = image + 0.06 * torch.randn(count, img_size, img_size, 3, generator=g)
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)


def dataset_fingerprint(num_train: int, num_val: int, img_size: int, seed: int) -> Dict:
    return {'generator': 'timm_rspc.demo.shapes/v2', 'classes': list(CLASS_NAMES), 'num_train_per_class': num_train,
            'num_val_per_class': num_val, 'img_size': img_size, 'seed': seed}


def write_image_folder(root: str, num_train: int, num_val: int, img_size: int, seed: int) -> Tuple[str, bool]:
    """Write ``root/train/<class>/*.png`` and ``root/validation/<class>/*.png``; returns ``(root, created)``.

    A folder already holding the same set (same fingerprint in ``shapes.json``) is reused as it is. Each split and
    class has its own seed, so growing one split does not change the other.
    """
    from PIL import Image
    fingerprint = dataset_fingerprint(num_train, num_val, img_size, seed)
    marker = os.path.join(root, 'shapes.json')
    if os.path.exists(marker):
        with open(marker) as f:
            if json.load(f) == fingerprint:
                return root, False
        raise FileExistsError(
            f"'{root}' holds a different generated data set ({marker}); choose another folder or delete it.")
    if os.path.exists(root) and os.listdir(root):
        raise FileExistsError(f"'{root}' is not empty and was not written by this generator; choose another folder.")
    existed = os.path.exists(root)
    try:
        for split, count in (('train', num_train), ('validation', num_val)):
            for class_idx, name in enumerate(CLASS_NAMES):
                folder = os.path.join(root, split, name)
                os.makedirs(folder, exist_ok=True)
                images = render_class(name, count, img_size, _generator(seed, split, class_idx)).numpy()
                for i, image in enumerate(images):
                    Image.fromarray(image).save(os.path.join(folder, f'{i:05d}.png'), compress_level=1)
        with open(marker, 'w') as f:
            json.dump(fingerprint, f, indent=1)
    except BaseException:
        # Ctrl-C or an error half-way: the folder was empty before, so remove what was written, or the next run
        # would refuse it as a folder not written by this generator.
        for split in ('train', 'validation'):
            shutil.rmtree(os.path.join(root, split), ignore_errors=True)
        if os.path.exists(marker):
            os.remove(marker)
        if not existed:
            shutil.rmtree(root, ignore_errors=True)
        raise
    return root, True


def _generator(seed: int, split: str, class_idx: int) -> torch.Generator:
    digest = hashlib.sha256(f'{seed}/{split}/{class_idx}'.encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], 'little'))
