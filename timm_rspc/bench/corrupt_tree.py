"""``timm-rspc corrupt SRC DST``: a saved "-C" copy of an image folder in ImageNet-C's layout, for tools that read
files (and for ``bench --imagenet-c DST``).

``DST/<corruption>/<severity>/<class>/<file>`` as hendrycks/robustness ``ImageNet-C/create_c/make_imagenet_c.py``
made ImageNet-C: each image through ``Resize(256) + CenterCrop(224)`` (torchvision, bilinear; ``resize`` / ``crop``
for other sizes), corrupted (`on_the_fly`: on the device, whole batches, the image's own seeded generator, the same
pixels ``bench --corrupt`` evaluates for a model whose eval transform is that resize and crop), truncated to 8 bits
(``np.uint8``) and saved by Pillow as JPEG with ``quality=85, optimize=True``. A file keeps its name when it is a
JPEG name (``.JPEG`` / ``.jpg``), else it is named ``<stem>.JPEG``.

``DST/corrupt.json`` records what the tree is (source fingerprint, seed, sizes, quality, corruptions); a DST
holding another tree or other files is refused, never overwritten. Every file is written atomically
(`timm_rspc.files.atomic_write`), so an interrupted run leaves only complete files, and running the same command
again writes only the missing ones. All source images are decoded once before the first file is written: an
unreadable one stops the command with nothing written.
"""
import io
import json
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch.utils.data import DataLoader, Subset

from timm_rspc.files import LOCK_NAME, PARTIAL_PATTERN, FolderBusy, FolderLock, atomic_write, atomic_write_json

from .evaluate import WORKERS
from .on_the_fly import (
    DEFAULT_SEED, DEFAULT_SEVERITIES, JPEG_QUALITY, OnTheFlyCorruption, check_constants_option, check_frost_fits,
    constants_size_warning, read_image_folder, resolve_corruptions, resolve_severities,
)

__all__ = ['write_corrupted_tree', 'CorruptInterrupted', 'RESIZE', 'CROP', 'JPEG_QUALITY', 'BATCH_SIZE', 'WORKERS',
           'MANIFEST']

# ImageNet-C's preprocessing and file format (make_imagenet_c.py: trn.Resize(256), trn.CenterCrop(224);
# Image.fromarray(np.uint8(img)).save(save_path, quality=85, optimize=True)).
RESIZE, CROP = 256, 224
BATCH_SIZE = 32  # images per batch on the device
MANIFEST = 'corrupt.json'
_JPEG_NAMES = ('.jpeg', '.jpg')


class CorruptInterrupted(KeyboardInterrupt):
    """Ctrl-C while writing: ``written`` of ``total`` files are complete in ``output``."""

    def __init__(self, output: str, written: int, total: int):
        super().__init__(output, written, total)
        self.output, self.written, self.total = output, written, total


def _file_names(folder) -> List[str]:
    """``<class>/<file>`` of every source image in DST (JPEG names kept, others as ``<stem>.JPEG``)."""
    names = []
    for path, k in folder.samples:
        base = os.path.basename(path)
        stem, ext = os.path.splitext(base)
        names.append(f'{folder.classes[k]}/{base if ext.lower() in _JPEG_NAMES else stem + ".JPEG"}')
    seen: Dict[str, str] = {}
    for name, (path, _) in zip(names, folder.samples):
        if name in seen:
            raise ValueError(f"'{seen[name]}' and '{path}' would both be saved as '{name}'; rename one of them.")
        seen[name] = path
    return names


def _identity(folder, seed: int, resize: int, crop: int, quality: int, constants: str) -> Dict[str, Any]:
    return {'source': os.path.abspath(folder.root), 'images': len(folder.samples), 'fingerprint': folder.fingerprint,
            'seed': seed, 'resize': resize, 'crop': crop, 'jpeg_quality': quality, 'constants': constants}


# What a manifest written before a key existed meant by it: trees before --corruption-constants used ImageNet-C's.
_WRITTEN_BEFORE = {'constants': 'imagenet'}


def _check_destination(dst: str, src: str, identity: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The manifest of the tree already in DST (None: DST is new or empty); another tree or other files: one line."""
    if os.path.abspath(dst) == os.path.abspath(src) or \
            os.path.abspath(dst).startswith(os.path.abspath(src) + os.sep):
        raise ValueError(f"DST '{dst}' is inside SRC '{src}'; write the corrupted tree elsewhere.")
    if os.path.exists(dst) and not os.path.isdir(dst):
        raise NotADirectoryError(f"DST '{dst}' is a file; give a new or empty folder.")
    if not os.path.isdir(dst) or not set(os.listdir(dst)) - {LOCK_NAME}:
        return None
    manifest = os.path.join(dst, MANIFEST)
    if not os.path.isfile(manifest):
        raise FileExistsError(f"DST '{dst}' exists and holds files that 'timm-rspc corrupt' did not write; give a new "
                              "or empty folder (nothing was written).")
    with open(manifest) as f:
        recorded = json.load(f)
    changed = [k for k in identity if recorded.get(k, _WRITTEN_BEFORE.get(k)) != identity[k]]
    if changed:
        what = ', '.join(f'{k} {recorded.get(k, _WRITTEN_BEFORE.get(k))!r} (now {identity[k]!r})' for k in changed
                         if k != 'fingerprint') or 'the source images changed'
        raise FileExistsError(f"DST '{dst}' holds another corrupted tree ({what}); write to a new folder, or run the "
                              "command that made it (nothing was written).")
    return recorded


def _existing(dst: str, clean: bool = False) -> set:
    """Relative paths of the complete files under DST; ``clean`` (with DST's lock held) removes the temporary files
    of a killed run."""
    found = set()
    for folder, _, files in os.walk(dst):
        for name in files:
            if PARTIAL_PATTERN.search(name):
                if clean:
                    os.remove(os.path.join(folder, name))
            else:
                found.add(os.path.relpath(os.path.join(folder, name), dst).replace(os.sep, '/'))
    return found


def _encode(pixels, quality: int) -> bytes:
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format='JPEG', quality=quality, optimize=True)
    return buffer.getvalue()


def write_corrupted_tree(
        src: str,
        dst: str,
        corruptions: Optional[Sequence[str]] = None,
        extra: bool = False,
        severities: Sequence[int] = DEFAULT_SEVERITIES,
        seed: int = DEFAULT_SEED,
        constants: str = 'imagenet',
        resize: int = RESIZE,
        crop: int = CROP,
        quality: int = JPEG_QUALITY,
        device: Optional[str] = None,
        batch_size: int = BATCH_SIZE,
        workers: int = WORKERS,
        progress: bool = True,
        say=print,
) -> Dict[str, Any]:
    """Write ``dst/<corruption>/<severity>/<class>/<file>`` from the image folder ``src`` (``src/<class>/<image>``);
    returns the manifest plus ``written`` (files written now) and ``skipped`` (complete files already there).

    ``corruptions`` None: ImageNet-C's corruptions available in `timm_rspc.corruptions` (``extra`` adds the extra
    ones). ``constants``: the reference's severity constants (``'imagenet'``, ``'cifar'``, ``'tinyimagenet'``:
    `on_the_fly.CorruptOptions`; a crop far from their native size is said in one line). Every mistake that needs no
    decoding is raised before anything is read; an unreadable image before anything is written. Ctrl-C raises
    `CorruptInterrupted`.
    """
    from timm.data.transforms import MaybePILToTensor
    from torchvision import transforms
    from .runner import _check_run_values
    names = resolve_corruptions(corruptions, extra)
    levels = resolve_severities(severities)
    for value, flag, low in ((resize, '--resize', 1), (crop, '--crop', 1), (quality, '--quality', 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f'{flag} must be a whole number >= {low}, got {value!r}.')
    if crop > resize:
        raise ValueError(f'--crop {crop} is larger than --resize {resize}: the crop is taken from the resized image.')
    if quality > 100:
        raise ValueError(f'--quality must be 1..100 (ImageNet-C: 85), got {quality}.')
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f'--corruption-seed must be a whole number >= 0, got {seed!r}.')
    check_constants_option(constants)
    check_frost_fits(names, constants, (crop, crop))
    device = torch.device(_check_run_values(batch_size, workers, device, None))
    folder = read_image_folder(src, 'timm-rspc corrupt SRC')
    files = _file_names(folder)
    identity = _identity(folder, seed, resize, crop, quality, constants)
    _check_destination(dst, src, identity)
    splits = [(n, s) for n in names for s in levels]
    done = _existing(dst) if os.path.isdir(dst) else set()
    todo = {(n, s): [i for i, f in enumerate(files) if f'{n}/{s}/{f}' not in done] for n, s in splits}
    total = sum(len(v) for v in todo.values())
    needed = sorted({i for v in todo.values() for i in v})
    transform = transforms.Compose([transforms.Resize(resize, interpolation=transforms.InterpolationMode.BILINEAR),
                                    transforms.CenterCrop(crop), MaybePILToTensor()])
    from .datasets import ImageFiles
    dataset = ImageFiles([(path, i) for i, (path, _) in enumerate(folder.samples)], transform)  # target: the index
    from tqdm import tqdm
    from timm.data.loader import fast_collate
    from .evaluate import _worker_errors_named

    def batches(desc: str):
        loader = DataLoader(Subset(dataset, needed), batch_size=batch_size, num_workers=workers,
                            collate_fn=fast_collate)
        with _worker_errors_named():
            yield from tqdm(loader, desc=desc, unit='batch', leave=False, disable=not progress)
    if needed:  # every image decoded once before anything is written
        for _ in batches('checking the images'):
            pass
    os.makedirs(dst, exist_ok=True)
    lock = FolderLock(dst)
    try:
        lock.acquire()
    except FolderBusy as e:
        raise FileExistsError(f"DST '{dst}' is in use by another 'timm-rspc corrupt' ({e.owner}); wait for it to "
                              "finish.") from None
    written = 0
    try:
        manifest = _check_destination(dst, src, identity) or {}
        written_splits = sorted({f'{n}/{s}' for n, s in splits} | set(manifest.get('splits', [])),
                                key=lambda k: (k.split('/')[0], int(k.split('/')[1])))
        manifest = {**identity, 'format': 'ImageNet-C layout: <corruption>/<severity>/<class>/<file>, JPEG',
                    'splits': written_splits}
        atomic_write_json(os.path.join(dst, MANIFEST), manifest)
        done = _existing(dst, clean=True)
        todo = {(n, s): {i for i, f in enumerate(files) if f'{n}/{s}/{f}' not in done} for n, s in splits}
        total = sum(len(v) for v in todo.values())
        warning = constants_size_warning(constants, (crop, crop))
        if warning:
            say(f'timm-rspc corrupt: warning: {warning}')
        say(f"timm-rspc corrupt: {len(folder.samples)} images x {len(splits)} corruption x severity splits -> "
            f"'{dst}' ({total} files to write, {len(splits) * len(files) - total} already there)")
        bar = tqdm(total=total, desc='writing', unit='file', dynamic_ncols=True, disable=not progress)
        with bar, ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for images, indices in (batches('reading') if total else ()):
                indices = indices.tolist()
                pixels = images.to(device, non_blocking=True).float() / 255
                for name, severity in splits:
                    rows = [j for j, i in enumerate(indices) if i in todo[(name, severity)]]
                    if not rows:
                        continue
                    chosen = [indices[j] for j in rows]
                    out = OnTheFlyCorruption(name, severity, seed, constants=constants)(pixels[rows], chosen)
                    arrays = out.permute(0, 2, 3, 1).cpu().numpy()
                    paths = [os.path.join(dst, name, str(severity), *files[i].split('/')) for i in chosen]
                    for path in {os.path.dirname(p) for p in paths}:
                        os.makedirs(path, exist_ok=True)
                    jobs = [pool.submit(lambda p=p, a=a: atomic_write(p, lambda f: f.write(_encode(a, quality))))
                            for p, a in zip(paths, arrays)]
                    for job in jobs:
                        job.result()
                        written += 1
                    bar.update(len(jobs))
    except KeyboardInterrupt:
        raise CorruptInterrupted(dst, written, total) from None
    finally:
        lock.release()
    from .datasets import imagenet_synsets
    return {**manifest, 'written': written, 'skipped': len(splits) * len(files) - total,
            'imagenet_classes': all(c in imagenet_synsets() for c in folder.classes)}
