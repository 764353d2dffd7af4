"""Which splits a benchmark run evaluates: every data set the user gave, cut into its published units.

A split is the unit that is evaluated, written to the run folder and resumed: one ImageNet-C corruption at one
severity, one ImageNet-P perturbation, one CIFAR-C corruption at one severity, one corruption at one severity of an
image folder corrupted on the fly (``corrupt``), one whole data set otherwise. All layouts are checked and all files
listed before the first image is evaluated.
"""
import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch
from torch.utils.data import Dataset

from . import datasets as ds
from .reference import (
    CIFAR_C_CORRUPTIONS, IMAGENET_C_CORRUPTIONS, IMAGENET_C_EXTRA, IMAGENET_C_SEVERITIES, IMAGENET_P_NOISE,
    IMAGENET_P_PERTURBATIONS,
)

__all__ = ['Split', 'DATASET_ROOTS', 'plan_splits']

# Data set key (the API's argument, `--<key>` on the command line) -> its name in messages and tables.
DATASET_ROOTS: Dict[str, str] = {
    'imagenet': 'ImageNet val', 'imagenet_c': 'ImageNet-C', 'imagenet_a': 'ImageNet-A', 'imagenet_r': 'ImageNet-R',
    'imagenet_p': 'ImageNet-P', 'imagenet_sketch': 'ImageNet-Sketch', 'imagenet_v2': 'ImageNet-V2',
    'cifar10_c': 'CIFAR-10-C', 'cifar100_c': 'CIFAR-100-C', 'corrupt': 'corrupted on the fly',
}
_NUM_CLASSES = {'cifar10_c': 10, 'cifar100_c': 100}


@dataclass
class Split:
    dataset: str  # key of DATASET_ROOTS
    name: str  # 'all', '<corruption>/<severity>' or '<perturbation>'
    build: Callable[[], Dataset]
    size: int
    logit_indices: Optional[torch.Tensor] = None  # ImageNet-A / -R: the 200 classes
    video_noise: Optional[bool] = None  # ImageNet-P: None for image splits
    corruption: Optional[Callable] = None  # corrupt: `on_the_fly.OnTheFlyCorruption`, applied on the device

    @property
    def key(self) -> str:
        return f'{self.dataset}/{self.name}'


def _image_split(dataset, name, samples, transform, logit_indices=None) -> Split:
    return Split(dataset, name, lambda: ds.ImageFiles(samples, transform), len(samples), logit_indices)


def _missing(what: str, path: str, allow_partial: bool, missing: List[str]) -> None:
    if not allow_partial:
        raise FileNotFoundError(f"{what}: '{path}' is missing; the benchmark needs it (or pass --allow-partial for "
                                f"a partial result, which is not comparable with published numbers).")
    missing.append(path)


def _imagenet_c_splits(root, transform, labels_file, allow_partial, missing) -> List[Split]:
    synsets = ds.imagenet_synsets()
    labels = ds.read_label_file(labels_file, len(synsets)) if labels_file else None
    splits = []
    ds.list_subfolders(root, 'ImageNet-C')  # the root itself must exist
    for corruption in IMAGENET_C_CORRUPTIONS + IMAGENET_C_EXTRA:
        folder = os.path.join(root, corruption)
        if not os.path.isdir(folder):
            if corruption not in IMAGENET_C_EXTRA:  # the extra corruptions are optional
                _missing('ImageNet-C', folder, allow_partial, missing)
            continue
        for severity in IMAGENET_C_SEVERITIES:
            split_dir = os.path.join(folder, str(severity))
            what = f'ImageNet-C {corruption} severity {severity}'
            if not os.path.isdir(split_dir):
                _missing('ImageNet-C', split_dir, allow_partial, missing)
                continue
            if ds.list_subfolders(split_dir, what):
                samples = ds.wnid_folder_samples(split_dir, synsets, what)
            elif labels is not None:
                samples = ds.flat_samples(split_dir, labels, what)
            else:
                raise ValueError(f"{what}: '{split_dir}' has no <wnid> class folders; for a flat layout "
                                 "(<corruption>/<severity>/<image>) pass the label file (--imagenet-c-labels FILE).")
            splits.append(_image_split('imagenet_c', f'{corruption}/{severity}', samples, transform))
    _same_size_or_partial(splits, allow_partial)
    return splits


def _same_size_or_partial(splits: List[Split], allow_partial: bool) -> None:
    """Every ImageNet-C split holds the same images corrupted differently: a smaller one is an incomplete copy."""
    sizes = [s.size for s in splits]
    if allow_partial or len(set(sizes)) <= 1:
        return
    usual = max(set(sizes), key=sizes.count)
    odd = [f'{s.name} ({s.size})' for s in splits if s.size != usual]
    raise ValueError(f'ImageNet-C: most splits hold {usual} images, but {", ".join(odd[:5])} do not: the copy is '
                     'incomplete; re-extract those folders (or pass --allow-partial for a partial result).')


def _imagenet_p_splits(root, crop, allow_partial, missing) -> List[Split]:
    ds.list_subfolders(root, 'ImageNet-P')
    ds.require_av()  # before any compute, not at the first video
    splits = []
    for perturbation in IMAGENET_P_PERTURBATIONS:
        folder = os.path.join(root, perturbation)
        if not os.path.isdir(folder):
            _missing('ImageNet-P', folder, allow_partial, missing)
            continue
        paths = ds.video_files(folder, f'ImageNet-P {perturbation}')
        splits.append(Split('imagenet_p', perturbation, lambda paths=paths: ds.Videos(paths, crop), len(paths),
                            video_noise=perturbation in IMAGENET_P_NOISE))
    return splits


def _cifar_c_splits(key, root, transform, allow_partial, missing) -> List[Split]:
    what = DATASET_ROOTS[key]
    ds.list_subfolders(root, what)
    splits = []
    for corruption in CIFAR_C_CORRUPTIONS:
        if not os.path.isfile(os.path.join(root, f'{corruption}.npy')):
            _missing(what, os.path.join(root, f'{corruption}.npy'), allow_partial, missing)
            continue
        images, labels = ds.cifar_c_arrays(root, corruption)
        for severity in IMAGENET_C_SEVERITIES:
            block = ds.severity_block(len(images), severity)

            def build(block=block, images=images, labels=labels):
                return ds.ArrayImages(images[block], labels[block], transform)
            splits.append(Split(key, f'{corruption}/{severity}', build, block.stop - block.start))
    return splits


def _corrupt_splits(labels, options, transform) -> List[Split]:
    """One split per corruption x severity of ``options`` (resolved `on_the_fly.CorruptOptions`), all over the same
    clean images (``labels``: (path, label) pairs) through the model's eval transform, corrupted on the device."""
    from .on_the_fly import OnTheFlyCorruption
    return [Split('corrupt', f'{name}/{severity}', lambda: ds.ImageFiles(labels, transform), len(labels),
                  corruption=OnTheFlyCorruption(name, severity, options.seed, options.jpeg_quality, options.constants))
            for name in options.names for severity in options.severities]


def plan_splits(
        roots: Dict[str, Optional[str]],
        num_classes: int,
        eval_transform: Callable,
        imagenet_c_transform: Callable,
        crop: tuple,
        imagenet_c_labels: Optional[str] = None,
        allow_partial: bool = False,
        corrupt: Optional[tuple] = None,
) -> tuple:
    """All splits of the data sets in ``roots`` (key -> folder or None), in evaluation order; and missing paths.

    ``corrupt``: (`on_the_fly.ImageFolder`, its (path, label) pairs, resolved `on_the_fly.CorruptOptions`) when
    ``roots['corrupt']`` is given."""
    unknown = sorted(set(roots) - set(DATASET_ROOTS))
    if unknown:
        raise ValueError(f'unknown data sets {unknown}; known: {", ".join(DATASET_ROOTS)}.')
    given = {k: v for k, v in roots.items() if v}
    if not given:
        raise ValueError(f'give at least one data set folder ({", ".join(DATASET_ROOTS)}).')
    for key in given:
        if key == 'corrupt':  # any image folder: its labels are checked against the model by `ImageFolder.labels`
            continue
        expected = _NUM_CLASSES.get(key, 1000)
        if num_classes != expected:
            raise ValueError(f'{DATASET_ROOTS[key]} needs a {expected}-class model; this model has {num_classes} '
                             f'classes.')
    splits: List[Split] = []
    missing: List[str] = []
    synsets = ds.imagenet_synsets()
    for key, root in given.items():
        what = DATASET_ROOTS[key]
        if key in ('imagenet', 'imagenet_sketch'):
            splits.append(_image_split(key, 'all', ds.wnid_folder_samples(root, synsets, what), eval_transform))
        elif key in ('imagenet_a', 'imagenet_r'):
            classes, indices = ds.subset_classes(key[-1])
            splits.append(_image_split(key, 'all', ds.wnid_folder_samples(root, classes, what), eval_transform,
                                       indices))
        elif key == 'imagenet_v2':
            splits.append(_image_split(key, 'all', ds.numbered_folder_samples(root, 1000, what), eval_transform))
        elif key == 'imagenet_c':
            splits += _imagenet_c_splits(root, imagenet_c_transform, imagenet_c_labels, allow_partial, missing)
        elif key == 'imagenet_p':
            splits += _imagenet_p_splits(root, crop, allow_partial, missing)
        elif key == 'corrupt':
            _, labels, options = corrupt
            splits += _corrupt_splits(labels, options, eval_transform)
        else:
            splits += _cifar_c_splits(key, root, eval_transform, allow_partial, missing)
    return splits, missing
