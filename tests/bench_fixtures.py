"""Tiny benchmark data sets in the published on-disk layouts, and a model whose predictions are known by design.

The model predicts from the mean pixel value: an image (or video frame) of uniform gray ``gray(k) = 10 k + 4``
makes it predict class ``k``, with its top-5 classes ``[k, k+1, k-1, k+2, k-2]`` (logits ``-|m - c|`` with
``m = mean / 10 - 0.2 = k + 0.2``). JPEG keeps uniform grays exactly, lossless H.264 within +-1, far from a bin edge.
"""
import os

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from timm.models import register_model

from timm_rspc.bench.datasets import imagenet_synsets

WNIDS = sorted(imagenet_synsets(), key=imagenet_synsets().get)  # wnid of class index i


def gray(k: int) -> int:
    return 10 * k + 4


class MeanPixelClassifier(nn.Module):
    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.num_classes = num_classes
        self.pretrained_cfg = dict(input_size=(3, 32, 32), mean=(0., 0., 0.), std=(1., 1., 1.), crop_pct=1.0,
                                   interpolation='bilinear', crop_mode='center', num_classes=num_classes)
        self.scale = nn.Parameter(torch.ones(()))  # the package's loaders expect a state dict

    def forward(self, x):  # x in [0, 1] after the prefetcher's normalisation (mean 0, std 1 on the 0..255 scale)
        m = x.mean(dim=(1, 2, 3)) * 255 / 10 - 0.2
        return -(m[:, None] - torch.arange(self.num_classes, device=x.device)).abs() * self.scale


@register_model
def bench_test_mean_pixel(pretrained=False, num_classes=1000, **kwargs):
    return MeanPixelClassifier(num_classes)


def save_gray(path: str, k: int, size: int = 32) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.full((size, size, 3), gray(k), np.uint8)).save(path, quality=95)


def write_wnid_folder(root: str, images):
    """images: list of (label class index, predicted class index)."""
    for i, (label, predicted) in enumerate(images):
        save_gray(os.path.join(root, WNIDS[label], f'img_{i:03d}.JPEG'), predicted)


def write_video(path: str, classes, size: int = 32) -> None:
    import av
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with av.open(path, 'w') as container:
        stream = container.add_stream('libx264', rate=10, options={'qp': '0'})
        stream.width = stream.height = size
        stream.pix_fmt = 'yuv420p'
        for k in classes:
            frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), gray(k), np.uint8), format='rgb24')
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_imagenet_c(root: str, skip=(), images=((2, 2), (2, 7))) -> None:
    """The official ImageNet-C layout (15 corruptions x 5 severities, 2 images each, one of them wrong) without the
    ``skip`` entries ('fog' or 'fog/3')."""
    from timm_rspc.bench.reference import IMAGENET_C_CORRUPTIONS
    for corruption in IMAGENET_C_CORRUPTIONS:
        for s in range(1, 6):
            if corruption not in skip and f'{corruption}/{s}' not in skip:
                write_wnid_folder(os.path.join(root, corruption, str(s)), list(images))


def timm_checkpoint(path: str, state_dict, args: dict = None, ema=None) -> None:
    """A checkpoint as timm's train.py / `timm-rspc train` save it: weights, EMA weights, the run's Namespace."""
    import argparse
    saved = {'epoch': 0, 'arch': (args or {}).get('model'), 'state_dict': state_dict}
    if ema is not None:
        saved['state_dict_ema'] = ema
    if args is not None:
        saved['args'] = argparse.Namespace(**args)
    torch.save(saved, path)


def interrupt_after(monkeypatch, method: str, calls: int):
    """Makes ``Evaluator.<method>`` (one call per split) raise KeyboardInterrupt from its ``calls + 1``-th call on, as
    a Ctrl-C after ``calls`` finished splits; returns the original method (to restore it for a resume)."""
    from timm_rspc.bench.evaluate import Evaluator
    original, made = getattr(Evaluator, method), {'n': 0}

    def interrupted(self, *args, **kwargs):
        made['n'] += 1
        if made['n'] > calls:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)
    monkeypatch.setattr(Evaluator, method, interrupted)
    return original
