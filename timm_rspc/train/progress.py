"""Progress lines of a training or evaluation pass: position, metrics, throughput and time left.

One line every ``log_interval`` updates (and on the last one), written by the primary process only, e.g.::

    Train: 2 [  40/100 ( 41%)]  loss: 1.93 (2.11)  task_loss: 1.90 (2.08)  align_loss: 5.21 (5.88)
        occluded_fraction: 0.100  LR: 9.51e-04  812 img/s  ETA 0:00:07 epoch, 0:01:12 run
"""
import datetime
import logging
import time
from typing import Dict, Optional

_logger = logging.getLogger('timm_rspc.train')


def format_duration(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(max(seconds, 0))))


class ProgressLog:
    """Tracks time and samples of one pass and formats its log lines.

    ``num_epochs`` (training only) extends the estimate to the end of the run, assuming later epochs take as long
    as this one.
    """

    def __init__(self, name: str, epoch: Optional[int], num_steps: int, num_epochs: Optional[int],
                 enabled: bool, log_interval: int):
        self.name = name
        self.epoch = epoch
        self.num_steps = num_steps
        self.num_epochs = num_epochs
        self.enabled = enabled
        self.log_interval = max(1, log_interval)
        self.start_time = self.window_start = time.perf_counter()
        self.window_samples = 0

    def count_samples(self, num_samples: int) -> None:
        self.window_samples += num_samples

    def should_log(self, step_idx: int, is_last: bool) -> bool:
        return step_idx % self.log_interval == 0 or is_last

    def log(self, step_idx: int, latest: Optional[Dict[str, float]], averages: Dict[str, float],
            lr: Optional[float]) -> None:
        now = time.perf_counter()
        throughput = self.window_samples / max(now - self.window_start, 1e-9)
        self.window_start, self.window_samples = now, 0
        if not self.enabled:
            return
        done = step_idx + 1
        seconds_per_step = (now - self.start_time) / done
        eta_epoch = seconds_per_step * (self.num_steps - done)
        where = f'{self.name}:' + (f' {self.epoch}' if self.epoch is not None else '')
        parts = [f'{where} [{step_idx:>4d}/{self.num_steps} ({100. * done / self.num_steps:>3.0f}%)]']
        for key, avg in averages.items():
            if latest is not None and key in latest:
                parts.append(f'{key}: {latest[key]:#.4g} ({avg:#.4g})')
            else:
                parts.append(f'{key}: {avg:#.4g}')
        if lr is not None:
            parts.append(f'LR: {lr:.3e}')
        parts.append(f'{throughput:>7.1f} img/s')
        eta = f'ETA {format_duration(eta_epoch)}'
        if self.num_epochs is not None and self.epoch is not None:
            epochs_after = self.num_epochs - self.epoch - 1
            eta += f' epoch, {format_duration(eta_epoch + epochs_after * seconds_per_step * self.num_steps)} run'
        parts.append(eta)
        _logger.info('  '.join(parts))
