"""Data that ImageNet-C's corruptions need and the package does not ship: the frost photographs.

They are package data of the reference's own PyPI release, ``imagenet_c`` 0.0.3 (Hendrycks), whose sdist is fetched
with pip on first use into a cache (``$TIMM_RSPC_CACHE``, else ``$XDG_CACHE_HOME/timm-rspc`` or
``~/.cache/timm-rspc``) and checked by its SHA-256; offline, ``$TIMM_RSPC_IMAGENET_C_SDIST`` names a local copy of
that file. Nothing of it is part of this package.
"""
import hashlib
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Tuple

import torch

from .constant_cache import constant_cache

__all__ = ['IMAGENET_C_SDIST', 'imagenet_c_sdist', 'frost_images']

# (distribution, version, SHA-256 of the sdist on PyPI)
IMAGENET_C_SDIST = ('imagenet_c', '0.0.3', '93f8ed69710615bdaf9e90805b01c2ba8790bba2095c91db874560eca79696f9')
FROST_FILES = ('frost1.png', 'frost2.png', 'frost3.png', 'frost4.jpg', 'frost5.jpg', 'frost6.jpg')


def _cache_dir() -> Path:
    if os.environ.get('TIMM_RSPC_CACHE'):
        return Path(os.environ['TIMM_RSPC_CACHE'])
    return Path(os.environ.get('XDG_CACHE_HOME', Path.home() / '.cache')) / 'timm-rspc'


def imagenet_c_sdist() -> Path:
    """The ``imagenet_c`` 0.0.3 sdist: ``$TIMM_RSPC_IMAGENET_C_SDIST``, else the cached copy, else fetched with pip."""
    name, version, sha256 = IMAGENET_C_SDIST
    if os.environ.get('TIMM_RSPC_IMAGENET_C_SDIST'):
        sdist = Path(os.environ['TIMM_RSPC_IMAGENET_C_SDIST'])
    else:
        sdist = _cache_dir() / f'{name}-{version}.tar.gz'
        if not sdist.is_file():
            sdist.parent.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, '-m', 'pip', 'download', '--no-deps', '--no-binary', ':all:', '--quiet',
                   f'{name}=={version}', '-d', str(sdist.parent)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0 or not sdist.is_file():
                raise RuntimeError(
                    f'The frost corruption needs the frost images of the {name} {version} sdist; '
                    f'`{" ".join(cmd)}` failed:\n{done.stderr.strip()}\n'
                    f'Offline: download {name}-{version}.tar.gz elsewhere and set TIMM_RSPC_IMAGENET_C_SDIST to it.')
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != sha256:
        raise RuntimeError(f"'{sdist}' is not the {name} {version} sdist (SHA-256 {digest}, expected {sha256}); "
                           'delete it and try again.')
    return sdist


@constant_cache(maxsize=1)
def _frost_images_cpu() -> Tuple[torch.Tensor, torch.Tensor]:
    from PIL import Image
    name, version, _ = IMAGENET_C_SDIST
    images = []
    with tarfile.open(imagenet_c_sdist()) as tar:
        for file in FROST_FILES:
            data = tar.extractfile(f'{name}-{version}/imagenet_c/frost/{file}').read()
            with Image.open(io.BytesIO(data)) as image:
                images.append(torch.frombuffer(bytearray(image.convert('RGB').tobytes()), dtype=torch.uint8)
                              .view(image.height, image.width, 3).permute(2, 0, 1))
    sizes = torch.tensor([image.shape[1:] for image in images])
    stack = torch.zeros(len(images), 3, *sizes.amax(dim=0).tolist(), dtype=torch.uint8)
    for index, image in enumerate(images):  # six files, once
        stack[index, :, :image.shape[1], :image.shape[2]] = image
    return stack, sizes


_ON_DEVICE = {}


def frost_images(device=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """The six frost photographs of ImageNet-C as one zero-padded (6, 3, H_max, W_max) uint8 RGB tensor and their
    (6, 2) sizes (height, width), decoded with Pillow (the same pixels as the reference's ``cv2.imread``); kept on
    each device they were asked for."""
    key = str(torch.device(device) if device is not None else torch.device('cpu'))
    if key not in _ON_DEVICE:
        stack, sizes = _frost_images_cpu()
        _ON_DEVICE[key] = (stack.to(key), sizes.to(key))
    return _ON_DEVICE[key]
