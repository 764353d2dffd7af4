"""The benchmark data sets, read in their published on-disk layouts, with labels in the model's class order.

Every reader checks the layout first and names the file or folder that is wrong, so that a long run never starts
on a broken copy; an image or video that cannot be decoded raises `UnreadableFile` naming it.

Layouts (``root`` is the folder the user passes):

* ImageNet val, ImageNet-Sketch, ImageNet-A, ImageNet-R: ``root/<wnid>/<image>``; labels come from the wnid (timm's
  synset lists), never from the position of a folder in a sorted listing.
* ImageNet-V2: ``root/<class index 0..999>/<image>``: folder names are numbers (a lexicographic sort would put
  ``10`` before ``2``), so the label is the folder name read as an integer.
* ImageNet-C: ``root/<corruption>/<severity>/<wnid>/<image>`` (the release), or ``root/<corruption>/<severity>/<image>``
  with a label file of ``<image file name> <class index>`` lines (one image per line, ImageNet val's format).
* ImageNet-P: ``root/<perturbation>/<wnid>/<video>.mp4``.
* CIFAR-10-C / CIFAR-100-C: ``root/<corruption>.npy`` (uint8, N x 32 x 32 x 3, severities 1..5 in blocks of N / 5)
  and ``root/labels.npy``.
"""
import os
import pkgutil
from functools import lru_cache
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

__all__ = [
    'UnreadableFile', 'ImageFiles', 'ArrayImages', 'Videos', 'imagenet_synsets', 'subset_classes',
    'wnid_folder_samples', 'numbered_folder_samples', 'flat_samples', 'read_label_file', 'list_subfolders',
    'cifar_c_arrays', 'severity_block', 'video_files', 'collate_videos', 'require_av',
]

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')
Sample = Tuple[str, int]


class UnreadableFile(ValueError):
    """An image or video of a benchmark set cannot be decoded; the message names the file."""


@lru_cache(maxsize=None)
def _timm_info_file(name: str) -> Tuple[str, ...]:
    return tuple(pkgutil.get_data('timm.data', f'_info/{name}').decode('utf-8').split())


def imagenet_synsets() -> Dict[str, int]:
    """wnid -> ImageNet-1k class index, from timm's synset list (the order of every ImageNet-1k classifier)."""
    return {wnid: i for i, wnid in enumerate(_timm_info_file('imagenet_synsets.txt'))}


def subset_classes(subset: str) -> Tuple[Dict[str, int], torch.Tensor]:
    """ImageNet-A / -R (``'a'`` / ``'r'``): wnid -> label in 0..199, and the 200 logit indices to keep, same order."""
    synsets = _timm_info_file(f'imagenet_{subset}_synsets.txt')
    indices = torch.tensor([int(i) for i in _timm_info_file(f'imagenet_{subset}_indices.txt')])
    return {wnid: i for i, wnid in enumerate(synsets)}, indices


def list_subfolders(root: str, what: str) -> List[str]:
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{what}: folder '{root}' does not exist.")
    return sorted(e.name for e in os.scandir(root) if e.is_dir())


def _images_in(folder: str) -> List[str]:
    return sorted(e.path for e in os.scandir(folder) if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))


def wnid_folder_samples(root: str, classes: Dict[str, int], what: str) -> List[Sample]:
    """``root/<wnid>/<image>`` -> (path, label); every subfolder must be one of ``classes``."""
    samples: List[Sample] = []
    for name in list_subfolders(root, what):
        if name not in classes:
            raise ValueError(f"{what}: '{os.path.join(root, name)}' is not a class folder (expected WordNet ids such "
                             f"as 'n01440764'); check the layout ({what} expects root/<wnid>/<image>).")
        samples += [(path, classes[name]) for path in _images_in(os.path.join(root, name))]
    if not samples:
        raise ValueError(f"{what}: no images found under '{root}' (expected root/<wnid>/<image>).")
    return samples


def numbered_folder_samples(root: str, num_classes: int, what: str) -> List[Sample]:
    """``root/<class index>/<image>`` (ImageNet-V2): the folder name, read as a number, is the label."""
    samples: List[Sample] = []
    for name in list_subfolders(root, what):
        if not name.isdigit() or int(name) >= num_classes:
            raise ValueError(f"{what}: '{os.path.join(root, name)}' is not a class folder; ImageNet-V2 folders are "
                             f"named by class index 0..{num_classes - 1}.")
        samples += [(path, int(name)) for path in _images_in(os.path.join(root, name))]
    if not samples:
        raise ValueError(f"{what}: no images found under '{root}' (expected root/<class index>/<image>).")
    return samples


def read_label_file(path: str, num_classes: int) -> Dict[str, int]:
    """``<image file name> <class index>`` per line -> {file name: label}."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"label file '{path}' does not exist.")
    labels: Dict[str, int] = {}
    with open(path) as f:
        for line_number, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or not parts[1].isdigit() or int(parts[1]) >= num_classes:
                raise ValueError(f"label file '{path}', line {line_number}: expected '<image file name> <class index "
                                 f"0..{num_classes - 1}>', got {line.strip()!r}.")
            labels[os.path.basename(parts[0])] = int(parts[1])
    return labels


def flat_samples(folder: str, labels: Dict[str, int], what: str) -> List[Sample]:
    """``folder/<image>`` with labels from a label file; every image needs a label."""
    samples: List[Sample] = []
    for path in _images_in(folder):
        name = os.path.basename(path)
        if name not in labels:
            raise ValueError(f"{what}: image '{path}' has no line in the label file.")
        samples.append((path, labels[name]))
    if not samples:
        raise ValueError(f"{what}: no images found in '{folder}'.")
    return samples


class ImageFiles(Dataset):
    """Images from (path, label) pairs through a PIL transform."""

    def __init__(self, samples: Sequence[Sample], transform: Callable):
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        try:
            with Image.open(path) as image:
                image = image.convert('RGB')
        except (OSError, ValueError) as e:
            raise UnreadableFile(f"cannot read image '{path}' ({e}); replace it with an intact copy.") from None
        return self.transform(image), label


def cifar_c_arrays(root: str, corruption: str) -> Tuple[np.ndarray, np.ndarray]:
    """Memory-mapped ``<corruption>.npy`` images and ``labels.npy`` of a CIFAR-C folder, layout checked."""
    labels_path, images_path = os.path.join(root, 'labels.npy'), os.path.join(root, f'{corruption}.npy')
    for path in (labels_path, images_path):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"CIFAR-C: '{path}' does not exist (expected <corruption>.npy and labels.npy).")
    try:
        images = np.load(images_path, mmap_mode='r')
        labels = np.load(labels_path)
    except (OSError, ValueError) as e:
        raise UnreadableFile(f"CIFAR-C: cannot read '{images_path}' or '{labels_path}' ({e}).") from None
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3 or len(images) % 5:
        raise ValueError(f"CIFAR-C: '{images_path}' must hold uint8 images N x H x W x 3 with N a multiple of 5 "
                         f"(severities 1..5 in equal blocks); got {images.dtype} {tuple(images.shape)}.")
    if labels.shape != (len(images),):
        raise ValueError(f"CIFAR-C: '{labels_path}' holds {labels.shape[0] if labels.ndim else 0} labels for "
                         f"{len(images)} images in '{images_path}'.")
    return images, labels


class ArrayImages(Dataset):
    """uint8 HWC images held in an array (a memory-mapped CIFAR-C block) through a PIL transform."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.transform(Image.fromarray(np.asarray(self.images[index]))), int(self.labels[index])


def severity_block(num_images: int, severity: int) -> slice:
    """Images of one CIFAR-C severity (1..5): the severities are stored one after another in equal blocks."""
    size = num_images // 5
    return slice((severity - 1) * size, severity * size)


def video_files(root: str, what: str) -> List[str]:
    """``root/<wnid>/<video>.mp4`` -> sorted paths."""
    synsets = imagenet_synsets()
    paths: List[str] = []
    for name in list_subfolders(root, what):
        if name not in synsets:
            raise ValueError(f"{what}: '{os.path.join(root, name)}' is not a class folder (expected WordNet ids).")
        folder = os.path.join(root, name)
        paths += sorted(e.path for e in os.scandir(folder) if e.is_file() and e.name.lower().endswith('.mp4'))
    if not paths:
        raise ValueError(f"{what}: no .mp4 videos found under '{root}' (expected root/<wnid>/<video>.mp4).")
    return paths


def require_av():
    try:
        import av
    except ImportError:
        raise ImportError("ImageNet-P videos are decoded with PyAV: pip install 'timm-rspc[video]'") from None
    return av


class Videos(Dataset):
    """ImageNet-P videos -> (frames x 3 x H x W uint8 tensor, number of frames), center-cropped to ``crop``."""

    def __init__(self, paths: Sequence[str], crop: Tuple[int, int]):
        self.paths = list(paths)
        self.crop = crop

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        av = require_av()
        path = self.paths[index]
        try:
            with av.open(path) as container:
                container.streams.video[0].thread_type = 'AUTO'
                frames = np.stack([f.to_ndarray(format='rgb24') for f in container.decode(video=0)])
        except (av.error.FFmpegError, ValueError, OSError) as e:  # ValueError: no frames to stack
            raise UnreadableFile(f"cannot decode video '{path}' ({e}); replace it with an intact copy.") from None
        video = torch.from_numpy(frames).permute(0, 3, 1, 2)
        height, width = self.crop
        top, left = int(round((video.shape[2] - height) / 2)), int(round((video.shape[3] - width) / 2))  # as CenterCrop
        if top < 0 or left < 0:
            raise ValueError(f"video '{path}' is {video.shape[2]}x{video.shape[3]}, smaller than the model's input "
                             f"{height}x{width}.")
        return video[:, :, top:top + height, left:left + width].contiguous(), video.shape[0]


def collate_videos(batch):
    """Videos of a batch concatenated frame after frame, with each video's frame count."""
    return torch.cat([v for v, _ in batch]), torch.tensor([n for _, n in batch])
