"""The run folder: choosing it without clobbering an earlier run, and writing into it atomically.

A timm user recognises the layout (``args.yaml``, ``summary.csv``, ``last.pth.tar``, ``checkpoint-N.pth.tar``,
``model_best.pth.tar``). Every file is written to a temporary name in the same folder, flushed to disk and renamed
over its target, so a kill at any moment leaves either the previous complete file or the new complete file.
"""
import argparse
import csv
import io
import logging
import os
import shutil
import time
from typing import Callable, Dict, Optional

import torch
from timm.models import safe_model_name
from timm.utils import CheckpointSaver

from .args import ConfigError

_logger = logging.getLogger(__name__)

CHECKPOINT_EXTENSION = '.pth.tar'
# Files whose presence means a folder already holds a training run.
RUN_FILES = ('args.yaml', 'summary.csv', 'last' + CHECKPOINT_EXTENSION)


def holds_run(folder: str) -> bool:
    return any(os.path.exists(os.path.join(folder, name)) for name in RUN_FILES)


def default_experiment_name(model_name: str, img_size: int) -> str:
    return '-'.join([time.strftime('%Y%m%d-%H%M%S'), safe_model_name(model_name), str(img_size)])


def choose_output_dir(args: argparse.Namespace, img_size: int) -> str:
    """The run folder ``<output>/<experiment>``, refusing to reuse a folder that holds a run unless told how.

    Resuming (``--resume``) continues into the folder. Otherwise ``--output-exists`` decides: ``error`` (default),
    ``increment`` (first free ``NAME-1``, ``NAME-2``, ...) or ``overwrite`` (explicit, logged).
    Does not create the folder; :func:`create_output_dir` does, once every check has passed.
    """
    root = args.output or os.path.join('.', 'output', 'train')
    folder = os.path.join(root, args.experiment or default_experiment_name(args.model, img_size))
    if not holds_run(folder) or args.resume:
        return folder
    policy = getattr(args, 'output_exists', 'error')
    if policy == 'increment':
        for count in range(1, 10000):
            candidate = f'{folder}-{count}'
            if not holds_run(candidate):
                return candidate
    if policy == 'overwrite':
        _logger.warning(f"Output folder '{folder}' holds a run; overwriting it as asked by --output-exists overwrite.")
        return folder
    present = ', '.join(n for n in RUN_FILES if os.path.exists(os.path.join(folder, n)))
    raise ConfigError(
        f"output folder '{folder}' already holds a training run ({present}). "
        f"Resume it with --resume {os.path.join(folder, 'last' + CHECKPOINT_EXTENSION)}, choose another --experiment, "
        "or pass --output-exists increment / overwrite.")


def create_output_dir(folder: str) -> str:
    os.makedirs(folder, exist_ok=True)
    return folder


def _fsync_dir(folder: str) -> None:
    """Make a rename in ``folder`` durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(folder or '.', os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _partial_path(path: str) -> str:
    return f'{path}.partial-{os.getpid()}'


def atomic_write_text(path: str, text: str) -> None:
    partial = _partial_path(path)
    with open(partial, 'w') as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, path)
    _fsync_dir(os.path.dirname(path))


def atomic_torch_save(obj, path: str) -> None:
    partial = _partial_path(path)
    try:
        with open(partial, 'wb') as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    _fsync_dir(os.path.dirname(path))


class AtomicCheckpointSaver(CheckpointSaver):
    """timm's ``CheckpointSaver`` (same files, history and best tracking) with crash-safe writes and extra state.

    timm's saver removes ``last`` / ``model_best`` before renaming or linking the new file over it, which leaves a
    window in which the file does not exist, and it does not flush to disk. Here every file appears by an atomic
    rename of a complete, fsync'ed file. ``extra_state`` adds entries (RNG states, scheduler state) that an exact
    resume needs and timm's checkpoint does not hold.
    """

    def __init__(self, *args, extra_state: Optional[Callable[[], Dict]] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.extra_state = extra_state

    def _save(self, save_path, epoch, metric=None):
        state = {
            'epoch': epoch,
            'arch': self.args.model if self.args is not None else type(self.model).__name__.lower(),
            'optimizer': self.optimizer.state_dict(),
            'version': 2,  # timm: the stored epoch is the last completed one, resume starts at epoch + 1
        }
        if self.args is not None:
            state['args'] = self.args
        if self.amp_scaler is not None:
            state[self.amp_scaler.state_dict_key] = self.amp_scaler.state_dict()
        state.update(self.task.get_checkpoint_state(unwrap_fn=self.unwrap_fn))
        state.update(self.task.get_checkpoint_state(ema=True, unwrap_fn=self.unwrap_fn))
        if metric is not None:
            state['metric'] = metric
        state['saver'] = self.state_dict(epoch, metric)
        if self.extra_state is not None:
            state.update(self.extra_state())
        atomic_torch_save(state, save_path)

    def _replace(self, src, dst):
        os.replace(src, dst)
        _fsync_dir(os.path.dirname(dst))

    def _duplicate(self, src, dst):
        partial = _partial_path(dst)
        if os.path.exists(partial):
            os.remove(partial)
        try:
            os.link(src, partial)
        except (OSError, NotImplementedError):
            shutil.copy2(src, partial)
        os.replace(partial, dst)
        _fsync_dir(os.path.dirname(dst))


def append_summary_row(path: str, epoch: int, train_metrics, eval_metrics, lr: Optional[float] = None) -> None:
    """Add one epoch to ``summary.csv`` in timm's column layout (``epoch``, ``train_*``, ``eval_*``, ``lr``).

    The file is rewritten atomically, so a kill never leaves a half-written row.
    """
    row = {'epoch': epoch}
    row.update({f'train_{k}': v for k, v in train_metrics.items()})
    row.update({f'eval_{k}': v for k, v in (eval_metrics or {}).items()})
    if lr is not None:
        row['lr'] = lr
    existing = ''
    if os.path.exists(path):
        with open(path, 'r', newline='') as f:
            existing = f.read()
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(row))
    if not existing.strip():
        existing = ''
        writer.writeheader()
    writer.writerow(row)
    atomic_write_text(path, existing + buffer.getvalue())
