"""Checks of the command line that need no model and no data: run first, so mistakes fail in a second, not an hour.

Each check raises :class:`ConfigError` with what was wrong and what to do instead.
"""
import argparse
import importlib
import logging
import os

from .args import ConfigError

_logger = logging.getLogger(__name__)

# Dataset types whose data timm reads from ``--data-dir`` (and which cannot find it anywhere else).
_LOCAL_DATASET_TYPES = ('', 'folder', 'tar', 'tfds', 'wds')


def import_device_modules(args: argparse.Namespace) -> None:
    for module in args.device_modules or ():
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ConfigError(f"--device-modules: cannot import '{module}' ({e})") from None


def check_model_name(name: str) -> None:
    """The model must be registered with timm (after ``timm_rspc`` and ``--device-modules`` are imported)."""
    from timm_rspc.models.build import check_model_name as check
    try:
        check(name)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _dataset_type(dataset: str) -> str:
    return dataset.split('/', 1)[0].lower() if '/' in dataset else ''


def check_dataset(args: argparse.Namespace) -> None:
    """Local datasets need an existing ``--data-dir``; torchvision ones too unless ``--dataset-download`` is set."""
    if args.data and not args.data_dir:
        args.data_dir = args.data
    kind = _dataset_type(args.dataset)
    needs_dir = kind in _LOCAL_DATASET_TYPES or (kind == 'torch' and not args.dataset_download)
    if not needs_dir:
        return
    if not args.data_dir:
        raise ConfigError(f"--data-dir is required for dataset '{args.dataset or 'image folder'}'.")
    if not os.path.isdir(args.data_dir) and not (kind in ('', 'tar') and os.path.isfile(args.data_dir)):
        extra = ' (or pass --dataset-download)' if kind == 'torch' else ''
        raise ConfigError(f"dataset path '{args.data_dir}' does not exist{extra}.")
    if kind in ('', 'folder') and os.path.isdir(args.data_dir):
        for flag, split in (('--train-split', args.train_split), ('--val-split', args.val_split)):
            if split and not _has_split_folder(args.data_dir, split):
                _warn_missing_split(args.data_dir, flag, split)


def _has_split_folder(root: str, split: str) -> bool:
    # timm's image-folder reader also accepts 'val' for 'validation' and the other way round.
    aliases = {'validation': ('validation', 'val'), 'val': ('val', 'validation')}.get(split, (split,))
    return any(os.path.isdir(os.path.join(root, name)) for name in aliases)


def _warn_missing_split(root: str, flag: str, split: str) -> None:
    _logger.warning(
        f"No '{split}' folder in '{root}' ({flag}); timm then reads the whole folder as that split.")


def check_files(args: argparse.Namespace) -> None:
    for flag, path in (
            ('--resume', args.resume), ('--initial-checkpoint', args.initial_checkpoint),
            ('--pretrained-path', args.pretrained_path), ('--class-map', args.class_map)):
        if path and not os.path.isfile(path):
            raise ConfigError(f"{flag} file '{path}' does not exist.")


def check_values(args: argparse.Namespace) -> None:
    if args.batch_size < 1:
        raise ConfigError(f'--batch-size must be at least 1, got {args.batch_size}.')
    if args.epochs < 1:
        raise ConfigError(f'--epochs must be at least 1, got {args.epochs}.')
    if args.amp and args.amp_dtype not in ('float16', 'bfloat16'):
        raise ConfigError(f"--amp-dtype must be float16 or bfloat16, got '{args.amp_dtype}'.")
    if args.model_dtype and args.model_dtype not in ('float32', 'float16', 'bfloat16'):
        raise ConfigError(f"--model-dtype must be float32, float16 or bfloat16, got '{args.model_dtype}'.")
    if args.amp and args.model_dtype not in (None, 'float32'):
        raise ConfigError('--amp needs a float32 model; drop --model-dtype or --amp.')
    if getattr(args, 'rspc', False):
        # Values from a -c config file reach argparse as defaults, which it does not check: check them all here.
        from timm_rspc.method import RSPCSettings
        try:
            RSPCSettings.from_args(args)
        except ValueError as e:
            raise ConfigError(str(e)) from None


def check_device(args: argparse.Namespace) -> None:
    """``--device`` names a device this machine has (timm asserts it deep inside ``init_distributed_device``)."""
    if not args.device:
        return
    import torch
    try:
        device = torch.device(args.device)
    except RuntimeError as e:
        raise ConfigError(f"--device '{args.device}' is not a device name ({str(e).splitlines()[0]}).") from None
    backend = getattr(torch, device.type, None)
    if device.type == 'cpu' or not hasattr(backend, 'is_available'):
        return
    if not backend.is_available():
        raise ConfigError(f"--device {args.device}: no {device.type} device is available on this machine; use "
                          "--device cpu, or leave --device out (cuda when available, else cpu).")
    count = backend.device_count() if hasattr(backend, 'device_count') else None
    if device.index is not None and count is not None and device.index >= count:
        raise ConfigError(f"--device {args.device}: this machine has {count} {device.type} device(s), "
                          f"{device.type}:0 to {device.type}:{count - 1}.")


def run_preflight(args: argparse.Namespace) -> None:
    """All checks that need neither the model nor the data, in the order a user would fix them."""
    import timm_rspc  # noqa: F401  (registers this package's models)
    check_values(args)
    import_device_modules(args)  # may add a device type (--device-modules), so before the device check
    check_device(args)
    check_model_name(args.model)
    check_files(args)
    check_dataset(args)
