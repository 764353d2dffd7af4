"""The run folder: settings, one file per finished split (written at once, atomically), then the results.

A folder with ``results.json`` is finished and never written again (``resume=True`` with the same settings reads it).
A folder with splits but no results is an interrupted run: it is continued only with ``resume=True`` and only with
the same settings, so that its splits and the new ones describe the same evaluation. A folder whose run stopped
before its first split finished holds nothing to continue: it is started again, with or without ``resume``.
"""
import json
import os
from typing import Any, Dict

from timm_rspc.files import LOCK_NAME, FolderBusy, FolderLock, atomic_write_json

__all__ = ['BenchmarkFolder']

SETTINGS_FILE, RESULTS_FILE, SPLITS_DIR = 'settings.json', 'results.json', 'splits'


class BenchmarkFolder:
    """``path/settings.json``, ``path/splits/<dataset>__<split>.json``, ``path/results.json`` (+ csv, plot)."""

    def __init__(self, path: str, settings: Dict[str, Any], resume: bool = False):
        """Open (``resume``) or create the run folder (by one process: the others get its records from it) and hold
        its lock (`files.FolderLock`) until `close`: a second benchmark into the same folder is refused."""
        self.path = path
        self.splits_dir = os.path.join(path, SPLITS_DIR)
        self._lock = FolderLock(path)
        self.finished = os.path.exists(os.path.join(path, RESULTS_FILE))
        foreign = (os.path.isdir(path) and not os.path.exists(os.path.join(path, SETTINGS_FILE))
                   and set(os.listdir(path)) - {LOCK_NAME})
        if not self.finished and not foreign:  # a folder this run may write: claimed first (nothing else is)
            os.makedirs(path, exist_ok=True)
            try:
                self._lock.acquire()
            except FolderBusy as e:
                raise FileExistsError(f"'{path}' is in use by another benchmark run ({e.owner}); wait for it to "
                                      "finish, or choose another output folder (--output DIR).") from None
        try:
            self._open(settings, resume)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Drop the folder's lock (the kernel drops it too when the process ends)."""
        self._lock.release()

    def _open(self, settings: Dict[str, Any], resume: bool) -> None:
        path = self.path
        settings_path = os.path.join(path, SETTINGS_FILE)
        if self.finished and not resume:
            raise FileExistsError(f"'{path}' holds a finished benchmark ({RESULTS_FILE}); choose another output "
                                  "folder (--output DIR).")
        if os.path.exists(settings_path) and (self.finished or self.finished_splits()):
            if not resume:
                raise FileExistsError(f"'{path}' holds an unfinished benchmark; continue it with --resume, or choose "
                                      "another output folder (--output DIR).")
            with open(settings_path) as f:
                recorded = json.load(f)
            changed = sorted(k for k in set(recorded) | set(settings) if recorded.get(k) != settings.get(k))
            if changed:
                raise ValueError(f"--resume: the settings differ from those of the run in '{path}' "
                                 f"({', '.join(changed)}); resume with the same settings or start a new output folder.")
        elif os.path.exists(settings_path):
            # A run that stopped before its first split finished: nothing to continue, start it again.
            os.makedirs(self.splits_dir, exist_ok=True)
            atomic_write_json(settings_path, settings)
        else:
            if set(os.listdir(path)) - {LOCK_NAME}:
                raise FileExistsError(f"'{path}' exists and is not a benchmark run folder; choose another output "
                                      "folder (--output DIR).")
            os.makedirs(self.splits_dir, exist_ok=True)
            atomic_write_json(settings_path, settings)

    def _split_path(self, key: str) -> str:
        return os.path.join(self.splits_dir, key.replace('/', '__') + '.json')

    def finished_splits(self) -> Dict[str, Dict[str, Any]]:
        records = {}
        if os.path.isdir(self.splits_dir):
            for name in sorted(os.listdir(self.splits_dir)):
                if name.endswith('.json') and not name.startswith('.'):
                    with open(os.path.join(self.splits_dir, name)) as f:
                        records[name[:-len('.json')].replace('__', '/')] = json.load(f)
        return records

    def write_split(self, key: str, record: Dict[str, Any]) -> None:
        atomic_write_json(self._split_path(key), record)

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)
