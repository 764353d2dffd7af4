"""The run folder: claimed by one process, never clobbering an earlier run, written into atomically.

A timm user recognises the layout (``args.yaml``, ``summary.csv``, ``last.pth.tar``, ``checkpoint-N.pth.tar``,
``model_best.pth.tar``). Every file is written to a temporary name unique to the process (``NAME.partial-PID``),
flushed to disk and renamed over its target, so a kill at any moment leaves either the previous complete file or the
new complete file. A run holds an exclusive lock on its folder (``flock`` on ``.timm-rspc.lock``) from before its
first write to its end; the kernel drops the lock when the process dies, however it dies, so a second run into the
same folder is refused while the first lives and a crashed run never leaves a stale lock.
"""
import argparse
import csv
import glob
import io
import logging
import os
import shutil
import time
from typing import Callable, Dict, Optional, Tuple

import torch
from timm.models import safe_model_name
from timm.utils import CheckpointSaver

from timm_rspc import files
from timm_rspc.files import DiskFullError  # noqa: F401  (re-exported for train.main)
from timm_rspc.files import LOCK_NAME, PARTIAL_PATTERN, FolderBusy, FolderLock, fsync_dir, partial_path

from .args import ConfigError

_logger = logging.getLogger(__name__)

CHECKPOINT_EXTENSION = '.pth.tar'
# Files whose presence means a folder already holds a training run.
RUN_FILES = ('args.yaml', 'summary.csv', 'last' + CHECKPOINT_EXTENSION)


def holds_run(folder: str) -> bool:
    return any(os.path.exists(os.path.join(folder, name)) for name in RUN_FILES)


def default_experiment_name(model_name: str, img_size: int) -> str:
    return '-'.join([time.strftime('%Y%m%d-%H%M%S'), safe_model_name(model_name), str(img_size)])


# What a run writes; --output-exists overwrite removes these (and nothing else) from the folder it reuses.
RUN_FILE_PATTERNS = ('args.yaml', 'args-resume-*.yaml', 'summary.csv', 'last' + CHECKPOINT_EXTENSION,
                     'model_best' + CHECKPOINT_EXTENSION, 'checkpoint-*' + CHECKPOINT_EXTENSION,
                     'recovery-*' + CHECKPOINT_EXTENSION)


class RunFolderBusy(ConfigError):
    """Another live process holds the run folder."""


class RunFolder:
    """A run folder this process holds exclusively until :meth:`release` (or its death)."""

    def __init__(self, path: str):
        self.path = path
        self.created = False
        self._lock = FolderLock(path)

    def claim(self) -> 'RunFolder':
        """Create the folder if needed and take its lock (`files.FolderLock`); :class:`RunFolderBusy` if a live
        process holds it."""
        try:
            os.makedirs(self.path)
            self.created = True
        except FileExistsError:
            if not os.path.isdir(self.path):
                raise ConfigError(f"output path '{self.path}' exists and is not a folder.") from None
        except PermissionError:
            raise ConfigError(f"cannot create the output folder '{self.path}': permission denied; choose another "
                              "--output.") from None
        try:
            self._lock.acquire()
        except PermissionError:
            raise ConfigError(f"cannot write into the output folder '{self.path}': permission denied; choose "
                              "another --output.") from None
        except FolderBusy as e:
            raise RunFolderBusy(
                f"output folder '{self.path}' is in use by another training run ({e.owner}); wait for it to "
                "finish, or choose another --output / --experiment.") from None
        return self

    def release(self, remove_if_unused: bool = False) -> None:
        """Drop the lock; with ``remove_if_unused``, also remove a folder this run created but wrote nothing into."""
        if not self._lock.held:
            return
        lock_path = os.path.join(self.path, LOCK_NAME)
        if remove_if_unused and self.created and os.listdir(self.path) == [LOCK_NAME]:
            os.remove(lock_path)
            os.rmdir(self.path)
        self._lock.release()

    def remove_stale_partials(self) -> None:
        """Temp files (``*.partial-PID``) of earlier processes, killed mid-write: with the lock held, none is live."""
        for name in os.listdir(self.path):
            if PARTIAL_PATTERN.search(name):
                os.remove(os.path.join(self.path, name))
                _logger.info(f"Removed '{name}', a temporary file of an interrupted write.")

    def remove_run_files(self) -> None:
        removed = []
        for pattern in RUN_FILE_PATTERNS:
            for path in glob.glob(os.path.join(glob.escape(self.path), pattern)):
                os.remove(path)
                removed.append(os.path.basename(path))
        _logger.warning(f"--output-exists overwrite: removed the previous run's files from '{self.path}': "
                        f"{', '.join(sorted(removed))}.")


def resumes_in_place(resume: str, folder: str) -> bool:
    """Whether ``folder`` is the ``--resume`` checkpoint's own run folder (however either path is spelled)."""
    return bool(resume) and os.path.realpath(os.path.dirname(os.path.abspath(resume))) == os.path.realpath(folder)


def run_folder_path(args: argparse.Namespace, img_size: int) -> str:
    """The run folder these arguments name: ``<output>/<experiment>``, or, for a ``--resume`` without ``--output``
    and ``--experiment``, the checkpoint's own folder (the run it continues)."""
    if args.resume and not (args.output or args.experiment):
        return os.path.dirname(args.resume) or '.'
    root = args.output or os.path.join('.', 'output', 'train')
    return os.path.join(root, args.experiment or default_experiment_name(args.model, img_size))


def claim_output_dir(args: argparse.Namespace, img_size: int) -> RunFolder:
    """Claim the run folder (:func:`run_folder_path`), refusing to write into a folder that holds another run.

    A ``--resume`` continues in the checkpoint's folder. Any other folder holding a run (a ``--resume`` pointed by
    ``--output`` / ``--experiment`` at another run's folder included) is subject to ``--output-exists``: ``error``
    (default), ``increment`` (first free ``NAME-1``, ``NAME-2``, ...) or ``overwrite`` (the previous run's files are
    removed). The folder is claimed before it is inspected, so two runs started together cannot both pass the check.
    """
    folder = run_folder_path(args, img_size)
    continues = resumes_in_place(args.resume, folder)
    policy = getattr(args, 'output_exists', 'error')
    candidates = [folder]
    if policy == 'increment' and not continues:
        candidates += [f'{folder}-{count}' for count in range(1, 10000)]
    for candidate in candidates:
        if len(candidates) > 1 and holds_run(candidate):
            continue
        run_folder = RunFolder(candidate)
        try:
            run_folder.claim()
        except RunFolderBusy:
            if len(candidates) > 1:
                continue
            raise
        run_folder.remove_stale_partials()
        if continues or not holds_run(candidate):
            return run_folder
        if policy == 'overwrite':
            run_folder.remove_run_files()
            return run_folder
        run_folder.release()
        if policy == 'increment':
            continue  # filled by a run that finished between the check and the claim
        raise ConfigError(_holds_run_message(candidate, args.resume))
    raise ConfigError(f"no free run folder '{folder}-N' for --output-exists increment.")


def _holds_run_message(folder: str, resume: str) -> str:
    """Why ``folder`` cannot take this run, and the flags that can: resume it (when it has a checkpoint), reuse it,
    or go elsewhere."""
    present = ', '.join(n for n in RUN_FILES if os.path.exists(os.path.join(folder, n)))
    last = os.path.join(folder, 'last' + CHECKPOINT_EXTENSION)
    if resume:
        return (f"output folder '{folder}' already holds another training run ({present}): --resume continues in the "
                f"checkpoint's folder '{os.path.dirname(resume) or '.'}' without --output / --experiment, or in a "
                "new folder: choose another --experiment, or pass --output-exists increment (or overwrite, which "
                "deletes that run's files).")
    if not os.path.exists(last):
        return (f"output folder '{folder}' already holds a training run that stopped before its first checkpoint "
                f"({present}, no last{CHECKPOINT_EXTENSION}): there is nothing to resume. Pass --output-exists "
                "overwrite to reuse the folder, or choose another --experiment / --output-exists increment.")
    return (f"output folder '{folder}' already holds a training run ({present}). Resume it with --resume {last}, "
            "choose another --experiment, or pass --output-exists increment / overwrite.")


# What to do when the disk fills while a run writes: its previous checkpoint is intact.
_RESUME_HINT = "free some space, then resume from the run's last.pth.tar with --resume"


def atomic_write_text(path: str, text: str) -> None:
    files.atomic_write_text(path, text, on_disk_full=_RESUME_HINT)


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
        self._written: Dict[str, Tuple[str, int]] = {}  # timm's temp name -> (the file actually written, its epoch)
        self.last_epoch: Optional[int] = None  # the epoch last.pth.tar holds, once this saver has written it

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
        # timm writes to one fixed temp name (tmp.pth.tar) and renames it with _replace: write a name of this
        # process instead, which _replace renames straight onto the target.
        partial = partial_path(save_path)
        files.write_file(partial, lambda f: torch.save(state, f), what=f'the checkpoint of epoch {epoch}',
                         on_disk_full=_RESUME_HINT)
        self._written[save_path] = (partial, epoch)

    def _replace(self, src, dst):
        written, epoch = self._written.pop(src, (src, None))
        os.replace(written, dst)
        fsync_dir(os.path.dirname(dst))
        if os.path.basename(dst) == 'last' + self.extension:
            self.last_epoch = epoch

    def _duplicate(self, src, dst):
        partial = partial_path(dst)
        if os.path.exists(partial):
            os.remove(partial)
        try:
            os.link(src, partial)
        except (OSError, NotImplementedError):
            shutil.copy2(src, partial)
        os.replace(partial, dst)
        fsync_dir(os.path.dirname(dst))


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
