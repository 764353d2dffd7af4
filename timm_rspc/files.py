"""Writing files so that no kill, crash or full disk ever leaves a truncated one; reading their digests.

Every file the package writes (checkpoints, ``summary.csv``, ``args.yaml``, benchmark splits and results, analysis
JSON / CSV / figures, exports) goes through `atomic_write`: the content is written to a temporary name unique to the
process (``NAME.partial-PID``), flushed to disk and renamed over the target, and the rename is flushed too. A reader
sees either the previous complete file or the new complete file. A full disk is one `DiskFullError` that names what
was being written and says that the previous file is intact, whatever form the writer's own error took (torch.save
reports it as ``RuntimeError: [enforce fail at inline_container.cc] unexpected pos``).

The bottom layer of the package: it imports nothing from it.
"""
import csv
import errno
import hashlib
import io
import json
import os
import re
import shutil
import socket
import time
from typing import Any, Callable, Dict, Iterable, Optional

try:
    import fcntl
except ImportError:  # pragma: no cover  (Windows: no advisory locks; the folder checks alone remain)
    fcntl = None

__all__ = [
    'LOCK_NAME', 'FolderBusy', 'FolderLock', 'DiskFullError', 'PARTIAL_PATTERN', 'partial_path', 'fsync_dir', 'atomic_write', 'atomic_write_text',
    'atomic_write_json', 'write_csv', 'sha256_file',
]

PARTIAL_PATTERN = re.compile(r'\.partial-\d+$')
LOCK_NAME = '.timm-rspc.lock'


class FolderBusy(RuntimeError):
    """Another live process holds the folder's lock; ``owner`` is what it wrote into the lock file (its PID)."""

    def __init__(self, folder: str, owner: str):
        super().__init__(f"'{folder}' is in use by another process ({owner})")
        self.folder, self.owner = folder, owner


class FolderLock:
    """An output folder held by one process at a time: an exclusive ``flock`` on ``FOLDER/.timm-rspc.lock``.

    The one claim every command that writes a run folder takes (training runs, benchmark runs) before writing into
    it. The kernel drops the lock when the process dies, however it dies, so a crashed run never leaves a stale lock;
    the file keeps the holder's PID and host for the message a second process gets.
    """

    def __init__(self, folder: str):
        self.folder = folder
        self._fd: Optional[int] = None

    def acquire(self) -> 'FolderLock':
        """Take the lock (the folder must exist); `FolderBusy` if a live process holds it."""
        fd = os.open(os.path.join(self.folder, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                owner = _lock_owner(fd)
                os.close(fd)
                raise FolderBusy(self.folder, owner) from None
        os.ftruncate(fd, 0)
        os.write(fd, f'PID {os.getpid()} on {socket.gethostname()}'.encode())
        self._fd = fd
        return self

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _lock_owner(fd: int) -> str:
    """What the process holding the lock wrote into the lock file (its PID), waiting up to 0.2 s for it: the holder
    takes the lock first and writes its PID just after, so a second process can look in between."""
    for _ in range(20):
        owner = os.pread(fd, 200, 0).decode(errors='replace').strip()
        if owner:
            return owner
        time.sleep(0.01)
    return 'unknown process'


class DiskFullError(OSError):
    """The disk filled during a write; the file being replaced is untouched."""


def partial_path(path: str) -> str:
    """The temporary name this process writes ``path`` under before renaming it into place."""
    return f'{path}.partial-{os.getpid()}'


def fsync_dir(folder: str) -> None:
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


class _CountingWriter:
    """The file object writers write through: counts bytes, and keeps the OSError of a failed write, which some
    writers (torch.save) re-raise in another form."""

    def __init__(self, file):
        self.file = file
        self.written = 0
        self.error: Optional[OSError] = None

    def write(self, data) -> int:
        try:
            count = self.file.write(data)
        except OSError as e:
            self.error = e
            raise
        self.written += len(data)
        return count

    def flush(self) -> None:
        self.file.flush()


def _open_for_writing(path: str):
    return open(path, 'wb')


def write_file(path: str, write: Callable[[Any], None], what: Optional[str] = None,
               on_disk_full: str = 'free some space and run the command again') -> None:
    """``write(file)`` into ``path`` (a binary file object), flushed to disk; on failure ``path`` is removed, and a
    full disk raises `DiskFullError` naming ``what`` was written (default: the file name) and ``on_disk_full``, what
    the user should do."""
    writer = None
    try:
        with _open_for_writing(path) as f:
            writer = _CountingWriter(f)
            write(writer)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as e:
        if os.path.exists(path):
            os.remove(path)
        cause = writer.error if writer is not None and writer.error is not None else e
        if isinstance(cause, OSError) and cause.errno == errno.ENOSPC:
            target = PARTIAL_PATTERN.sub('', path)
            folder = os.path.dirname(os.path.abspath(target))
            free = shutil.disk_usage(folder).free
            raise DiskFullError(
                errno.ENOSPC,
                f"no space left on the disk of '{folder}' while writing {what or repr(os.path.basename(target))} "
                f"({writer.written / 2 ** 20 if writer else 0:.1f} MiB written, {free / 2 ** 20:.1f} MiB free); "
                f"the previous files are intact, nothing was lost: {on_disk_full}", target) from None
        raise


def atomic_write(path: str, write: Callable[[Any], None], what: Optional[str] = None, **kwargs) -> None:
    """``write(file)`` into ``path`` through a temporary file of this process, renamed into place (see the module
    docstring); ``what`` / ``on_disk_full`` word a full-disk error."""
    partial = partial_path(path)
    write_file(partial, write, what=what, **kwargs)
    os.replace(partial, path)
    fsync_dir(os.path.dirname(path))


def atomic_write_text(path: str, text: str, **kwargs) -> None:
    atomic_write(path, lambda f: f.write(text.encode()), **kwargs)


def atomic_write_json(path: str, data: Any, **kwargs) -> None:
    """JSON with two-space indentation and a final newline (NaN written as ``NaN``, as Python's json reads it)."""
    atomic_write_text(path, json.dumps(data, indent=2, allow_nan=True) + '\n', **kwargs)


def write_csv(path: str, rows: Iterable[Dict[str, Any]], **kwargs) -> str:
    """``rows`` (dicts with the same keys, in column order) as a CSV with a header line, written atomically."""
    rows = list(rows)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else [], lineterminator='\n')
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue(), **kwargs)
    return path


def sha256_file(path: str, chunk_size: int = 1 << 20) -> str:
    """The SHA-256 hex digest of a file, read in chunks (release checkpoints are hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(chunk_size), b''):
            digest.update(chunk)
    return digest.hexdigest()
