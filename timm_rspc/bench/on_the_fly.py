"""ImageNet-C's corruptions generated on the fly from any image folder: the corruption set, the per-image seeds, the
folder reader and the one function that turns clean pixels into corrupted 8-bit pixels.

Where the corruption is applied (the same for ``bench --corrupt`` and ``timm-rspc corrupt``): ImageNet-C corrupts
the 224 x 224 image that ``Resize(256) + CenterCrop(224)`` gives and saves it as 8 bits (``np.uint8``, which
truncates). Here the image is decoded and resized / cropped first (``bench --corrupt``: by the model's own eval
transform, so at the model's input size; ``corrupt``: ``Resize(256) + CenterCrop(224)`` or the sizes asked for), then
the uint8 pixels go to the device, become [0, 1] floats, are corrupted there by `timm_rspc.corruptions` on the whole
batch, and are truncated to 8 bits as ImageNet-C's files are (`to_8bit`); ``corrupt`` saves them as JPEG (quality 85,
as ImageNet-C's files), and ``bench`` gives them the same JPEG round trip on the device (`jpeg_round_trip`, Pillow's
libjpeg-turbo bit for bit; ``--corrupt-jpeg-quality``, 0 for none) before normalising with the model's mean / std, so
the model sees what it would read from the saved files.

Every image has its own random draws: its generator is seeded with a hash of (seed, corruption, severity, the
image's index in the data set), so an image is corrupted identically in any batch, at any batch size, on any rank,
in any run, and in both commands (the same folder gives the same sorted list of images).
"""
import hashlib
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

__all__ = [
    'CorruptOptions', 'DEFAULT_SEVERITIES', 'DEFAULT_SEED', 'available_corruptions', 'default_corruptions',
    'JPEG_QUALITY', 'resolve_corruptions', 'resolve_severities', 'parse_list', 'image_seed', 'to_8bit',
    'OnTheFlyCorruption', 'CONSTANTS_NAMES', 'check_constants_option', 'constants_size_warning', 'check_frost_fits',
    'ImageFolder', 'read_image_folder',
]

DEFAULT_SEVERITIES: Tuple[int, ...] = (1, 2, 3, 4, 5)
DEFAULT_SEED = 0
JPEG_QUALITY = 85   # ImageNet-C's files: make_imagenet_c.py saves with Pillow, quality=85
# The reference's sets of severity constants (`timm_rspc.corruptions.severity`) and the data set each made.
CONSTANTS_NAMES = {'imagenet': 'ImageNet-C', 'cifar': 'CIFAR-10-C / CIFAR-100-C', 'tinyimagenet': 'Tiny-ImageNet-C'}


@dataclass(frozen=True)
class CorruptOptions:
    """The settings of an on-the-fly corruption benchmark (``bench --corrupt DIR``), each with its default.

    ``corruptions``: names to evaluate (None: ImageNet-C's corruptions available in `timm_rspc.corruptions`, the
    registry minus its ``EXTRA``); ``extra``: add the registry's extra corruptions to the default set;
    ``severities``: levels 1..5; ``seed``: the corruption seed; ``reference_model`` (+ ``reference_checkpoint``,
    else its pretrained weights) is evaluated in the same run on the same corrupted images, or
    ``reference_results`` is the ``results.json`` of an earlier ``--corrupt`` run on the same folder: the CE / mCE
    are relative to that model. Neither: errors only. ``jpeg_quality``: the corrupted 8-bit images go through a
    JPEG round trip of this quality, as ImageNet-C's saved files did (None or 0: none). ``constants``: the reference's
    severity constants, ``'imagenet'`` (ImageNet-C's, made for 224 px images), ``'cifar'`` (CIFAR-10-C's, 32 px) or
    ``'tinyimagenet'`` (Tiny-ImageNet-C's, 64 px).
    """
    corruptions: Optional[Tuple[str, ...]] = None
    extra: bool = False
    severities: Tuple[int, ...] = DEFAULT_SEVERITIES
    seed: int = DEFAULT_SEED
    reference_model: Optional[str] = None
    reference_checkpoint: Optional[str] = None
    reference_results: Optional[str] = None
    jpeg_quality: Optional[int] = JPEG_QUALITY
    constants: str = 'imagenet'
    # resolved names (filled by `resolved`), in evaluation order
    names: Tuple[str, ...] = field(default=(), compare=False)

    def resolved(self) -> 'CorruptOptions':
        """The options checked (one-line ValueErrors) with the corruption names resolved."""
        if self.reference_model and self.reference_results:
            raise ValueError('give one reference: --reference-model NAME (evaluated in this run) or '
                             '--reference-results PATH (an earlier run), not both.')
        if self.reference_checkpoint and not self.reference_model:
            raise ValueError('--reference-checkpoint is the weights of --reference-model; give --reference-model.')
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f'--corruption-seed must be a whole number >= 0, got {self.seed!r}.')
        if self.jpeg_quality is not None and not (isinstance(self.jpeg_quality, int) and 0 <= self.jpeg_quality <= 100):
            raise ValueError(f'--corrupt-jpeg-quality must be 1..100 (ImageNet-C: {JPEG_QUALITY}) or 0 for no JPEG '
                             f'round trip, got {self.jpeg_quality!r}.')
        check_constants_option(self.constants)
        names = resolve_corruptions(self.corruptions, self.extra)
        severities = resolve_severities(self.severities)
        return CorruptOptions(**{**asdict(self), 'names': names, 'severities': severities,
                                 'jpeg_quality': self.jpeg_quality or None,
                                 'corruptions': tuple(self.corruptions) if self.corruptions else None})


def _registry():
    from timm_rspc import corruptions
    return corruptions


def available_corruptions() -> Tuple[str, ...]:
    """Every corruption `timm_rspc.corruptions` has now (new ones appear here when they are registered)."""
    return tuple(_registry().CORRUPTIONS)


def _published_order(names: Sequence[str]) -> Tuple[str, ...]:
    """ImageNet-C's order (noise, blur, weather, digital; then the extra ones), other names after, as registered."""
    from .reference import IMAGENET_C_CORRUPTIONS, IMAGENET_C_EXTRA
    order = {n: i for i, n in enumerate(IMAGENET_C_CORRUPTIONS + IMAGENET_C_EXTRA)}
    registered = {n: i for i, n in enumerate(available_corruptions())}
    return tuple(sorted(names, key=lambda n: (order.get(n, len(order)), registered.get(n, 0))))


def default_corruptions(extra: bool = False) -> Tuple[str, ...]:
    """ImageNet-C's corruptions that are available (the registry minus its extra ones); ``extra`` adds those."""
    registry = _registry()
    return _published_order([n for n in registry.CORRUPTIONS if extra or n not in registry.EXTRA])


def resolve_corruptions(names: Optional[Sequence[str]], extra: bool = False) -> Tuple[str, ...]:
    """The corruptions to evaluate, in ImageNet-C's order; an unknown or not yet available name is one line."""
    if names is None or len(names) == 0:
        return default_corruptions(extra)
    if extra:
        raise ValueError('give --corruptions NAME,... (exactly those) or --extra (the default set plus the extra '
                         'corruptions), not both.')
    available = available_corruptions()
    unknown = [n for n in names if n not in available]
    if unknown:
        from .reference import IMAGENET_C_CORRUPTIONS, IMAGENET_C_EXTRA
        later = [n for n in unknown if n in IMAGENET_C_CORRUPTIONS + IMAGENET_C_EXTRA]
        why = ' (an ImageNet-C corruption not yet implemented in timm_rspc.corruptions)' if later == unknown else ''
        raise ValueError(f"corruption {', '.join(repr(n) for n in unknown)} is not available{why}; available: "
                         f"{', '.join(_published_order(available))}.")
    if len(set(names)) != len(names):
        raise ValueError(f'--corruptions names a corruption twice: {",".join(names)}.')
    return _published_order(list(names))


def resolve_severities(severities: Sequence[Any]) -> Tuple[int, ...]:
    values = list(severities or ())
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, int) or v not in DEFAULT_SEVERITIES]
    if not values or bad:
        raise ValueError(f"--severities takes ImageNet-C's levels 1..5 (e.g. 1,3,5), got "
                         f"{','.join(str(v) for v in (bad or values)) or 'nothing'}.")
    if len(set(values)) != len(values):
        raise ValueError(f'--severities names a level twice: {",".join(str(v) for v in values)}.')
    return tuple(sorted(values))


def parse_list(text: str, flag: str, kind=str) -> Tuple:
    """``'a,b'`` -> ('a', 'b') (``kind`` int for severities), one line naming ``flag`` on a bad item."""
    items = [t.strip() for t in str(text).split(',') if t.strip()]
    if kind is int:
        bad = [t for t in items if not t.lstrip('-').isdigit()]
        if bad:
            raise ValueError(f"{flag} takes ImageNet-C's levels 1..5 separated by commas (e.g. 1,3,5), got '{text}'.")
        return tuple(int(t) for t in items)
    return tuple(items)


def image_seed(seed: int, corruption: str, severity: int, index: int) -> int:
    """The seed of image ``index`` (its position in the data set) under ``corruption`` at ``severity``: 63 bits of
    SHA-256, so seeds of neighbouring images, corruptions and severities are unrelated."""
    text = f'timm-rspc corrupt/{int(seed)}/{corruption}/{int(severity)}/{int(index)}'.encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], 'little') >> 1


def check_constants_option(constants: str) -> str:
    """``--corruption-constants``'s value, or a one-line ``ValueError`` naming the flag and its choices."""
    if constants not in CONSTANTS_NAMES:
        raise ValueError(f'--corruption-constants must be one of {", ".join(CONSTANTS_NAMES)}, got {constants!r}.')
    return constants


def constants_size_warning(constants: str, size: Sequence[int]) -> Optional[str]:
    """One line when the corrupted images' side (``size``: (..., H, W)) is more than twice or less than half the
    side the constants were made for (e.g. CIFAR-10-C's 32 px constants on 224 px images), else None: the constants
    are in pixels (blur radii, zooms, noise scales per image), so their severity means something else there."""
    from timm_rspc.corruptions import NATIVE_SIZES
    native, side = NATIVE_SIZES[constants], max(int(v) for v in tuple(size)[-2:])
    if native / 2 <= side <= native * 2:
        return None
    better = min(NATIVE_SIZES, key=lambda name: abs(NATIVE_SIZES[name] - side))
    return (f"the {constants} corruption constants are {CONSTANTS_NAMES[constants]}'s, made for {native} px images, "
            f"and these are {side} px: the severities are not the data set's"
            + (f"; --corruption-constants {better} is closer" if better != constants else '') + '.')


def check_frost_fits(names: Sequence[str], constants: str, size: Sequence[int]) -> None:
    """Before anything is evaluated or written: with frost among ``names``, images of ``size`` ((..., H, W)) must fit
    in its photographs (shrunk for the 32 / 64 px constants), else one line (frost would stop the run at its turn)."""
    if 'frost' not in names:
        return
    from timm_rspc.corruptions import FROST_PHOTO_SCALES, frost_images_scaled
    height, width = (int(v) for v in tuple(size)[-2:])
    _, sizes = frost_images_scaled('cpu', FROST_PHOTO_SCALES[constants])
    top, left = (int(v) - 1 for v in sizes[:5].amin(dim=0))   # the crop must fit the five photographs it draws from
    if height > top or width > left:
        raise ValueError(f'frost crops the image out of its photographs, at most {top} x {left} px with the '
                         f'{constants} corruption constants; these images are {height} x {width}: leave frost out '
                         f'(--corruptions) or use constants made for this size.')


def to_8bit(pixels: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats -> uint8 as ImageNet-C's files were made (``np.uint8(x * 255)``: truncation)."""
    return (pixels * 255).clamp_(0, 255).floor_().to(torch.uint8)


class OnTheFlyCorruption:
    """One corruption at one severity with its seed: ``(pixels in [0, 1], data set indices) -> corrupted 8-bit
    pixels`` (uint8, the whole batch on the pixels' device; one generator per image), then, with ``jpeg_quality``,
    the JPEG round trip of ImageNet-C's saved files (Pillow's, bit for bit, on the device)."""

    def __init__(self, name: str, severity: int, seed: int = DEFAULT_SEED, jpeg_quality: Optional[int] = None,
                 constants: str = 'imagenet'):
        self.name, self.severity, self.seed = name, int(severity), int(seed)
        self.jpeg_quality = jpeg_quality or None
        self.constants = constants

    def __call__(self, pixels: torch.Tensor, indices: Sequence[int]) -> torch.Tensor:
        from timm_rspc.corruptions import corrupt, jpeg_round_trip, per_image_generators
        seeds = [image_seed(self.seed, self.name, self.severity, i) for i in indices]
        generators = per_image_generators(seeds, pixels.device)
        corrupted = to_8bit(corrupt(self.name, pixels, self.severity, generators, constants=self.constants))
        if self.jpeg_quality is None:
            return corrupted
        decoded = jpeg_round_trip(corrupted.float().div_(255), self.jpeg_quality)
        return decoded.mul_(255).round_().to(torch.uint8)

    def __repr__(self) -> str:
        jpeg = f', jpeg_quality={self.jpeg_quality}' if self.jpeg_quality else ''
        constants = f', constants={self.constants!r}' if self.constants != 'imagenet' else ''
        return f'OnTheFlyCorruption({self.name!r}, {self.severity}, seed={self.seed}{jpeg}{constants})'


@dataclass
class ImageFolder:
    """A folder of class folders: ``root/<class>/<image>``, in sorted order (the order that indexes the seeds)."""
    root: str
    classes: List[str]  # sorted class folder names
    samples: List[Tuple[str, int]]  # (path, class position in ``classes``)
    fingerprint: str  # SHA-256 of the relative paths and sizes, in order

    def labels(self, num_classes: int) -> Tuple[List[Tuple[str, int]], str]:
        """(path, label) pairs for a ``num_classes`` classifier and how the labels were read: ImageNet class
        indices of WordNet-id folders for a 1000-class model, else the position of the folder in sorted order
        (torchvision's ImageFolder)."""
        from .datasets import imagenet_synsets
        synsets = imagenet_synsets()
        if num_classes == len(synsets) and all(c in synsets for c in self.classes):
            return [(p, synsets[self.classes[k]]) for p, k in self.samples], 'imagenet wnid'
        if len(self.classes) > num_classes:
            raise ValueError(f"'{self.root}' has {len(self.classes)} class folders but the model has {num_classes} "
                             "classes; folders that are not ImageNet WordNet ids are labelled by their position in "
                             "sorted order (torchvision's ImageFolder), so the model needs at least as many classes.")
        return list(self.samples), 'folder order'


def read_image_folder(root: str, what: str = '--corrupt') -> ImageFolder:
    """``root/<class>/<image>`` checked and listed (one-line errors naming the folder and the expected layout)."""
    from .datasets import IMAGE_EXTENSIONS
    layout = f'{what} expects DIR/<class>/<image> (an ImageNet val folder or any ImageFolder)'
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{what} folder '{root}' does not exist.")
    entries = sorted(os.scandir(root), key=lambda e: e.name)
    classes = [e.name for e in entries if e.is_dir() and not e.name.startswith('.')]
    loose = [e.name for e in entries if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)]
    if loose:
        raise ValueError(f"{what}: '{root}' holds images directly ({loose[0]}, ...); {layout}: put them in class "
                         "folders.")
    if not classes:
        raise ValueError(f"{what}: '{root}' has no class folders; {layout}.")
    samples: List[Tuple[str, int]] = []
    digest = hashlib.sha256()
    empty = []
    for k, name in enumerate(classes):
        folder = os.path.join(root, name)
        files = sorted((e for e in os.scandir(folder) if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)),
                       key=lambda e: e.name)
        if not files:
            empty.append(name)
        for e in files:
            samples.append((e.path, k))
            digest.update(f'{name}/{e.name}\t{e.stat().st_size}\n'.encode())
    if empty:
        nested = os.path.isdir(os.path.join(root, empty[0])) and any(
            e.is_dir() for e in os.scandir(os.path.join(root, empty[0])))
        hint = (' (it holds folders: is this an ImageNet-C tree? read one with --imagenet-c)' if nested else '')
        raise ValueError(f"{what}: class folder '{os.path.join(root, empty[0])}' holds no images{hint}; {layout}, "
                         f"with images ({', '.join(IMAGE_EXTENSIONS)}) in every class folder.")
    return ImageFolder(root, classes, samples, digest.hexdigest())


def corruption_plan(folder: ImageFolder, labels_kind: str, options: CorruptOptions, input_size) -> Dict[str, Any]:
    """What settings.json records of an on-the-fly corrupted folder (and the summary reads): the data set's identity,
    the corruptions, the seed, where the corruption is applied. The reference is added by the runner."""
    from .reference import IMAGENET_C_CORRUPTIONS
    registry = _registry()
    size = 'x'.join(str(v) for v in input_size)
    return {
        'folder': os.path.abspath(folder.root), 'images': len(folder.samples), 'fingerprint': folder.fingerprint,
        'labels': labels_kind, 'seed': options.seed, 'corruptions': list(options.names),
        'severities': list(options.severities),
        'extra': [n for n in options.names if n in registry.EXTRA],
        'noise': [n for n in options.names if registry.CATEGORIES.get(n) == 'noise'],
        'not_available': [n for n in IMAGENET_C_CORRUPTIONS if n not in registry.CORRUPTIONS],
        'jpeg_quality': options.jpeg_quality, 'constants': options.constants,
        'transform': f"the model's eval transform (decode, resize, crop to {size}), then corrupted in [0, 1] on the "
                     f"device with the severity constants of {CONSTANTS_NAMES[options.constants]}, truncated to 8 "
                     "bits (as ImageNet-C's files), "
                     + (f"JPEG quality {options.jpeg_quality} round trip (as ImageNet-C's files), "
                        if options.jpeg_quality else "no JPEG round trip, ") + "then normalised",
    }


def read_reference_results(path: str, plan: Dict[str, Any]) -> Dict[str, Any]:
    """An earlier ``bench --corrupt`` run's ``results.json`` as this run's reference: the same images (folder
    fingerprint), labels and seed, and every corruption x severity of this run; anything else is one line."""
    import json
    from timm_rspc.files import sha256_file
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--reference-results file '{path}' does not exist.")
    try:
        with open(path) as f:
            results = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"--reference-results '{path}' is not a results.json file ({e}).") from None
    theirs = (results.get('settings') or {}).get('corrupt') if isinstance(results, dict) else None
    if not isinstance(theirs, dict) or not isinstance(results.get('splits'), dict):
        raise ValueError(f"--reference-results '{path}' is not the results of a 'timm-rspc bench --corrupt' run; give "
                         f"the results.json of a --corrupt run on '{plan['folder']}'.")
    if theirs.get('fingerprint') != plan['fingerprint'] or theirs.get('labels') != plan['labels']:
        raise ValueError(f"--reference-results '{path}' is the results of another data set ({theirs.get('images')} "
                         f"images of '{theirs.get('folder')}', labels by {theirs.get('labels')}); this run's "
                         f"'{plan['folder']}' ({plan['images']} images, labels by {plan['labels']}) differs: give "
                         "the results of a --corrupt run on this folder.")
    if theirs.get('seed') != plan['seed']:
        raise ValueError(f"--reference-results '{path}' was corrupted with --corruption-seed {theirs.get('seed')}, "
                         f"this run with {plan['seed']}: other corrupted images; use the same seed.")
    if theirs.get('jpeg_quality') != plan['jpeg_quality']:
        raise ValueError(f"--reference-results '{path}' was evaluated with --corrupt-jpeg-quality "
                         f"{theirs.get('jpeg_quality') or 0}, this run with {plan['jpeg_quality'] or 0}: other "
                         "images; use the same JPEG quality.")
    if theirs.get('constants', 'imagenet') != plan['constants']:   # runs before the choice existed: ImageNet-C's
        raise ValueError(f"--reference-results '{path}' was corrupted with --corruption-constants "
                         f"{theirs.get('constants', 'imagenet')}, this run with {plan['constants']}: other "
                         "corruptions; use the same constants.")
    needed = [f'{n}/{s}' for n in plan['corruptions'] for s in plan['severities']]
    lacking = [k for k in needed if f'corrupt/{k}' not in results['splits']]
    if lacking:
        raise ValueError(f"--reference-results '{path}' is of another corruption set: it lacks "
                         f"{', '.join(lacking[:6])}{', ...' if len(lacking) > 6 else ''} of this run's corruptions "
                         f"({', '.join(theirs.get('corruptions') or [])} at severities "
                         f"{','.join(str(s) for s in theirs.get('severities') or [])}); give the results of a run "
                         "with at least this run's corruptions and severities.")
    splits = {k: {'correct': results['splits'][f'corrupt/{k}']['correct'],
                  'total': results['splits'][f'corrupt/{k}']['total']} for k in needed}
    return {'kind': 'results', 'model': str(results.get('model')), 'path': os.path.abspath(path),
            'sha256': sha256_file(path), 'splits': splits}
